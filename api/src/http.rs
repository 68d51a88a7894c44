//! GraphQL over HTTP (POST, GraphiQL on GET) and WebSocket (graphql-transport-ws).

use async_graphql::http::{GraphiQLSource, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tracing::Instrument;

use crate::auth::AuthError;
use crate::graphql::RequestId;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(websocket))
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

async fn graphql(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: GraphQLRequest,
) -> Response {
    let caller = match state.auth.authenticate(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!("graphql", workspace = %caller.workspace, subject = %caller.subject, request_id = %request_id);
    let req = req
        .into_inner()
        .data(state.clone())
        .data(state.runs.clone())
        .data(caller)
        .data(RequestId(request_id));
    // The span follows the future (an entered guard would leak across awaits).
    GraphQLResponse::from(
        crate::graphql::execute(&state.schema, &state.persisted, req)
            .instrument(span)
            .await,
    )
    .into_response()
}

/// Subscriptions: the token comes in the `connection_init` payload, as
/// `{"Authorization": "Bearer <token>"}` (or `{"token": "<token>"}`).
async fn websocket(
    State(state): State<AppState>,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            let mut data = Data::default();
            data.insert(state.clone());
            data.insert(state.runs.clone());
            GraphQLWebSocket::new(socket, schema, protocol)
                .with_data(data)
                .on_connection_init(move |payload| async move {
                    let token = payload
                        .get("Authorization")
                        .or_else(|| payload.get("authorization"))
                        .and_then(|v| v.as_str())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .or_else(|| payload.get("token").and_then(|v| v.as_str()))
                        .ok_or_else(|| async_graphql::Error::new(AuthError::Missing.to_string()))?;
                    let caller = state
                        .auth
                        .verify(token)
                        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
                    let mut data = Data::default();
                    data.insert(caller);
                    Ok(data)
                })
                .serve()
        })
}
