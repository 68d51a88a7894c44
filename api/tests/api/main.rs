//! The API crate's tests: the committed schema, the service served in this process, and
//! the API as dashboard screens and toolchains see it.

mod connections;
mod contacts;
mod dashboard;
mod filters;
mod graphql_js;
mod mail;
mod persisted;
mod rebuild;
mod relay;
mod schema;
mod service;
mod toolchain;
