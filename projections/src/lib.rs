//! tenantflow projections crate.
