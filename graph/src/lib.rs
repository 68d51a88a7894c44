//! The one way tenantflow talks to Microsoft (R4), and a simulator that stands in for it.
//!
//! - [`GraphClient`] implements [`GraphApi`]: app-only tokens cached per connection, retries
//!   with backoff, jitter and `Retry-After`, `@odata.nextLink` paging, timeouts, and failures
//!   mapped to [`domain::ReasonCode`] through [`GraphError`]. It can only call what the
//!   [`Endpoint`] registry lists.
//! - [`sim`] is a real HTTP server speaking Graph's wire formats for a seeded fleet of tenants,
//!   with fault injection; tests and the demo point a [`GraphConfig`] at it.

mod api;
mod calls;
mod client;
mod config;
mod endpoint;
mod error;
pub mod models;
pub mod sim;
mod token;

pub use api::GraphApi;
pub use client::GraphClient;
pub use config::{AppCredentials, CippCredentials, GraphConfig, RetryPolicy};
pub use endpoint::{Endpoint, Host, Method};
pub use error::GraphError;
