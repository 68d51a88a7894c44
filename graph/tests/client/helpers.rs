//! Shared set-up: a fresh simulator per test, a client with quick retries, a webhook receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use graph::models::ChangeNotificationBatch;
use graph::sim::{self, SimConfig, SimHandle, SimTenant};
use graph::{GraphClient, GraphConfig, RetryPolicy};
use url::Url;

/// A simulator with four customer tenants, so every license profile occurs once.
pub async fn simulator() -> SimHandle {
    sim::spawn(SimConfig {
        tenants: 4,
        ..SimConfig::default()
    })
    .await
}

/// Settings against the simulator with short timeouts and backoffs, so tests stay fast.
pub fn quick_config(sim: &SimHandle) -> GraphConfig {
    GraphConfig {
        request_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 4,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            budget: Duration::from_secs(10),
        },
        ..sim.graph_config()
    }
}

pub fn client_for(config: GraphConfig) -> GraphClient {
    GraphClient::new(config).expect("client builds")
}

pub fn client(sim: &SimHandle) -> GraphClient {
    client_for(quick_config(sim))
}

/// The statuses the simulator answered to one endpoint, oldest first.
pub fn statuses(sim: &SimHandle, endpoint: graph::Endpoint) -> Vec<u16> {
    sim.requests_to(endpoint).iter().map(|r| r.status).collect()
}

/// The n-th customer tenant of the fleet.
pub fn tenant(sim: &SimHandle, index: usize) -> SimTenant {
    sim.tenants().swap_remove(index)
}

/// How a webhook receiver answers Graph's validation request.
#[derive(Clone, Copy)]
pub enum Handshake {
    /// Echo the token as text/plain, as required.
    Echo,
    /// Answer 200 with a different body.
    WrongToken,
}

/// A notificationUrl endpoint that records the notifications it receives.
pub struct Receiver {
    pub url: Url,
    pub notifications: Arc<Mutex<Vec<ChangeNotificationBatch>>>,
}

#[derive(Clone)]
struct ReceiverState {
    handshake: Handshake,
    notifications: Arc<Mutex<Vec<ChangeNotificationBatch>>>,
}

#[derive(serde::Deserialize)]
struct Validation {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

async fn hook(
    State(state): State<ReceiverState>,
    Query(query): Query<Validation>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(token) = query.validation_token {
        let answer = match state.handshake {
            Handshake::Echo => token,
            Handshake::WrongToken => "nope".to_owned(),
        };
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            answer,
        )
            .into_response();
    }
    match serde_json::from_slice::<ChangeNotificationBatch>(&body) {
        Ok(batch) => {
            state.notifications.lock().unwrap().push(batch);
            StatusCode::ACCEPTED.into_response()
        }
        Err(_) => (StatusCode::BAD_REQUEST, Json("not a notification")).into_response(),
    }
}

pub async fn receiver(handshake: Handshake) -> Receiver {
    let notifications = Arc::new(Mutex::new(Vec::new()));
    let state = ReceiverState {
        handshake,
        notifications: notifications.clone(),
    };
    let app = Router::new()
        .route("/hooks/graph", post(hook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: Url::parse(&format!("http://{address}/hooks/graph")).unwrap(),
        notifications,
    }
}
