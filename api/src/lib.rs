//! The HTTP surface: GraphQL (queries, mutations, subscriptions), health, readiness,
//! metrics and the operator console.

pub mod auth;
pub mod console;
pub mod graphql;
mod http;
mod mail_webhook;
mod ops;
pub mod security;

use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;
use store::{CommandBus, Metrics, Vault};

pub use mail_webhook::NotificationRecorder;

/// Everything a request handler may reach.
pub struct App {
    pub pool: PgPool,
    pub bus: CommandBus,
    pub metrics: Metrics,
    pub vault: Vault,
    pub auth: auth::Authenticator,
    pub runs: graphql::RunFeed,
    pub schema: graphql::TenantflowSchema,
    /// Persisted queries: learnt from clients (APQ), or only the known ones.
    pub persisted: graphql::PersistedQueries,
    /// The workflows runs may be started for (the engines run the same registry).
    pub workflows: workflows::Registry,
    /// What one request may cost.
    pub limits: Limits,
    /// Which Graph the workflows call (a base URL, or `simulator` in the demo), shown on
    /// every connection.
    pub graph_endpoint: String,
    /// Batches the mail webhook's concurrent notifications into shared transactions.
    pub mail_recorder: NotificationRecorder,
    /// A streaming replica that queries read from (`database_read_url`), if any.
    pub replica: Option<store::ReadReplica>,
}

/// What one HTTP request may cost: checked before the work they bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body read, in bytes; read only after the token was checked.
    pub body_bytes: usize,
    /// The query's own limits (size, expanded selections), checked before validation.
    pub query: graphql::QueryLimits,
    /// Longest a GraphQL request may run before it is answered with a timeout.
    pub request_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 256 * 1024,
            query: graphql::QueryLimits::default(),
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Shared application state.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The service's router.
pub fn router(state: AppState) -> Router {
    ops::routes()
        .merge(http::routes())
        .merge(mail_webhook::routes())
        .merge(console::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::track_requests,
        ))
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(state)
}
