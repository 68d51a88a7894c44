//! tenantflow workflows crate.
