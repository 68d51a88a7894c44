//! The workflows against a real database: one test binary (one embedded cluster), each
//! test on its own fresh database.

mod contacts;
mod economy;
mod health;
mod resync;
mod schedule;
mod tasks;
mod workspace;
