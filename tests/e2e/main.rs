//! End to end: the real `tenantflow` binary as a child process, against the Graph
//! simulator and a test database. One test binary, so one embedded cluster serves every
//! test's fresh database.

mod audit_chain;
mod bench;
mod chaos;
mod common;
mod console;
mod contacts;
mod crash;
mod embedded_serve;
mod graph_sim;
mod graphql_api;
mod health;
mod history;
mod hostile;
mod lifecycle;
mod mail;
mod mail_crash;
mod replica;
mod retry;
