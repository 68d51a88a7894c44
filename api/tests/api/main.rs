//! The API crate's tests: the committed schema, and the service served in this process.

mod schema;
mod service;
