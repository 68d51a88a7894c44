//! Fixtures the use-case tests share.
#![allow(dead_code)]

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const SECOND: &str = "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1";

/// An owner of the `acme` workspace.
pub fn owner() -> store::Metadata {
    store::Metadata::new("acme", "olivia@acme.example", domain::Role::Owner)
}
