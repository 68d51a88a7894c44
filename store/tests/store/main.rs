//! The store against a real database: one test binary (one embedded cluster), each test on
//! its own fresh database.

mod audit_chain;
mod command_bus;
mod counter;
mod global_log;
mod history;
mod horizon;
mod partitions;
mod snapshots;
mod stream_index;
