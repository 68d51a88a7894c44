//! The read models against a history made through the real use cases: one test binary
//! (one embedded cluster), each test on its own fresh database.

mod archive;
mod contacts;
mod growth;
mod old_log;
mod read_models;
mod replay;
mod support;
