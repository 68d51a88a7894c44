//! The HTTP surface: GraphQL (queries, mutations, subscriptions), health, readiness and
//! metrics.

pub mod auth;
pub mod graphql;
mod http;
mod ops;

use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;
use store::{CommandBus, Metrics, Vault};

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
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::track_requests,
        ))
        .with_state(state)
}
