//! tenantflow graph crate.
