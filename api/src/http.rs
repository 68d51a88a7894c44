//! GraphQL over HTTP (POST; a browser's GET gets the console's query page) and WebSocket
//! (graphql-transport-ws).

use async_graphql::http::{WebSocketProtocols, WsMessage, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::Data;
use async_graphql_axum::GraphQLResponse;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::Instrument;

use crate::auth::AuthError;
use crate::graphql::RequestId;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        // A person who opens the API in a browser gets the console's query page (GraphiQL
        // loaded its code from a CDN, into a page that holds a bearer token).
        .route("/graphql", get(crate::console::index).post(graphql))
        .route("/graphql/ws", get(websocket))
}

/// `POST /graphql`. The token is checked before the body is read, and the body is read
/// only up to the configured limit: an unauthenticated or oversized request costs no
/// memory. The request then runs under the configured deadline.
async fn graphql(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let caller = match state.auth.authenticate(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let limit = state.limits.body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {limit} bytes"),
            )
        }
    };
    let req: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(req) => req,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("the body is not a GraphQL request in JSON: {e}"),
            )
        }
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!("graphql", workspace = %caller.workspace, subject = %caller.subject, request_id = %request_id);
    let writer = state.replica.as_ref().map(|r| (r, caller.key()));
    let workspace = caller.workspace.to_string();
    let req = req
        .data(state.clone())
        .data(state.runs.clone())
        .data(caller)
        .data(RequestId(request_id));
    let deadline = state.limits.request_timeout;
    // The span follows the future (an entered guard would leak across awaits).
    let work = crate::graphql::execute(
        &state.schema,
        &state.persisted,
        &state.limits.query,
        req,
        &workspace,
        writer,
    )
    .instrument(span);
    match tokio::time::timeout(deadline, work).await {
        Ok(crate::graphql::Answer::Executed(response)) => {
            GraphQLResponse::from(response).into_response()
        }
        // As async-graphql-axum answers a response without errors, cache control or headers.
        Ok(crate::graphql::Answer::Page(json)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/graphql-response+json",
            )],
            json,
        )
            .into_response(),
        Err(_) => {
            tracing::warn!(
                deadline_s = deadline.as_secs(),
                "a GraphQL request ran past its deadline"
            );
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the request took longer than {} s", deadline.as_secs()),
            )
        }
    }
}

/// A refusal before (or instead of) execution, in GraphQL's error shape.
fn refused(status: StatusCode, message: String) -> Response {
    let code = if status == StatusCode::SERVICE_UNAVAILABLE {
        domain::ReasonCode::RequestTimeout
    } else {
        domain::ReasonCode::ValidationFailed
    }
    .as_str();
    (
        status,
        axum::Json(serde_json::json!({
            "errors": [{ "message": message, "extensions": { "code": code } }]
        })),
    )
        .into_response()
}

/// graphql-transport-ws's close code for a refused `connection_init` (async-graphql closes
/// with 1002, a protocol error, which clients treat as a bug rather than as "log in again").
const FORBIDDEN: u16 = 4403;

/// Subscriptions: the token comes in the `connection_init` payload, as
/// `{"Authorization": "Bearer <token>"}` (or `{"token": "<token>"}`). A missing or bad
/// token closes the socket with 4403 Forbidden, as the protocol says.
async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The subprotocol the client offers first that we speak (as async-graphql-axum's
    // extractor picks it).
    let protocol = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|offered| {
            offered
                .split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        return refused(
            StatusCode::BAD_REQUEST,
            "offer the graphql-transport-ws (or graphql-ws) subprotocol".to_owned(),
        );
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_socket(state, protocol, socket))
}

async fn serve_socket(state: AppState, protocol: WebSocketProtocols, socket: WebSocket) {
    use futures::{SinkExt, StreamExt};
    let (mut sink, incoming) = socket.split();
    let input = incoming
        .take_while(|res| std::future::ready(res.is_ok()))
        .filter_map(|msg| {
            std::future::ready(match msg {
                Ok(Message::Text(text)) => Some(axum::body::Bytes::from(text.as_str().to_owned())),
                Ok(Message::Binary(bytes)) => Some(bytes),
                _ => None,
            })
        });
    let mut data = Data::default();
    data.insert(state.clone());
    data.insert(state.runs.clone());
    let refused = Arc::new(AtomicBool::new(false));
    let on_refusal = refused.clone();
    let auth_state = state.clone();
    let executor = Bounded {
        state: state.clone(),
        limits: state.limits.query,
    };
    let stream = async_graphql::http::WebSocket::new(executor, input, protocol)
        .connection_data(data)
        .on_connection_init(move |payload| async move {
            let caller = authenticate_init(&auth_state, &payload).inspect_err(|_| {
                on_refusal.store(true, Ordering::SeqCst);
            })?;
            let mut data = Data::default();
            data.insert(caller);
            Ok(data)
        });
    futures::pin_mut!(stream);
    while let Some(message) = stream.next().await {
        let message = match message {
            WsMessage::Text(text) => Message::Text(text.into()),
            WsMessage::Close(code, reason) => {
                let code = if refused.load(Ordering::SeqCst) {
                    FORBIDDEN
                } else {
                    code
                };
                Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
            }
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
}

/// The schema behind the WebSocket: each subscription's persisted query (a hash instead
/// of its text, as over HTTP) is resolved first, and its document put through the same
/// linear checks as a POST's (size, fragment fan-out, NUL, variable types).
#[derive(Clone)]
struct Bounded {
    state: AppState,
    limits: crate::graphql::QueryLimits,
}

impl Bounded {
    fn admitted(
        &self,
        request: async_graphql::Request,
    ) -> Result<async_graphql::Request, Box<async_graphql::Response>> {
        let mut request = self.state.persisted.resolve(request)?;
        crate::graphql::checked(&mut request, &self.limits)?;
        Ok(request)
    }
}

impl async_graphql::Executor for Bounded {
    async fn execute(&self, request: async_graphql::Request) -> async_graphql::Response {
        match self.admitted(request) {
            Ok(request) => self.state.schema.execute(request).await,
            Err(refused) => *refused,
        }
    }

    fn execute_stream(
        &self,
        request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> futures::stream::BoxStream<'static, async_graphql::Response> {
        use futures::StreamExt;
        match self.admitted(request) {
            Ok(request) => {
                async_graphql::Executor::execute_stream(&self.state.schema, request, session_data)
            }
            Err(refused) => futures::stream::once(async move { *refused }).boxed(),
        }
    }
}

/// The caller named by a `connection_init` payload's token.
fn authenticate_init(
    state: &AppState,
    payload: &serde_json::Value,
) -> async_graphql::Result<crate::auth::Caller> {
    let token = payload
        .get("Authorization")
        .or_else(|| payload.get("authorization"))
        .and_then(|v| v.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| payload.get("token").and_then(|v| v.as_str()))
        .ok_or_else(|| async_graphql::Error::new(AuthError::Missing.to_string()))?;
    state
        .auth
        .verify(token)
        .map_err(|e| async_graphql::Error::new(e.to_string()))
}
