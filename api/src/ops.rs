//! Operations endpoints (R10.3): liveness, readiness and Prometheus metrics, plus the
//! request metrics middleware.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::time::Instant;
use store::metrics::HttpLabels;

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is up and serving HTTP.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The database answers, every migration this binary knows is applied, and no read model
/// of this instance waits before an event type only a newer version knows (during a
/// rolling deploy such an instance serves stale read models: take it out of rotation).
async fn readyz(State(state): State<AppState>) -> Response {
    let blocked = state.metrics.blocked();
    if !blocked.is_empty() {
        let consumers: Vec<_> = blocked
            .into_iter()
            .map(|(consumer, why)| json!({ "consumer": consumer, "why": why }))
            .collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "reason": "read models wait for a newer version",
                "consumers": consumers,
            })),
        )
            .into_response();
    }
    match store::db::migrations_current(&state.pool).await {
        // A transaction elsewhere holding the log back stalls every instance alike:
        // a warning, not a reason to take this one out of rotation.
        Ok(true) => match state.metrics.horizon_warning() {
            Some(warning) => {
                Json(json!({ "status": "ready", "warnings": [warning] })).into_response()
            }
            None => Json(json!({ "status": "ready" })).into_response(),
        },
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": "migrations pending" })),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "reason": "database unreachable" })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Counts and times every request, labelled by route template (not raw path, so ids do
/// not explode the label set).
pub(crate) async fn track_requests(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let labels = HttpLabels {
        method,
        path,
        status: response.status().as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    state
        .metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
