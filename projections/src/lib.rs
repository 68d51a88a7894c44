//! Read models: named catch-up consumers of the global log that write plain tables
//! (defined in `migrations/`), and their rebuild from history (R8.1, R9.2).

mod runner;

pub use runner::{rebuild, spawn_all, Projection, RebuildProgress};
