//! The API crate's tests: the committed schema, the service served in this process, and
//! the API as dashboard toolchains see it.

mod graphql_js;
mod schema;
mod service;
mod toolchain;
