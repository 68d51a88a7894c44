//! `POST /webhooks/graph/mail` (R6.3): Graph's change notifications for mailboxes.
//!
//! Graph calls it without a token; what makes a notification genuine is the `clientState`
//! it echoes, compared in constant time with the hash kept for its subscription. The
//! validation handshake (`?validationToken=`) is answered in plain text before anything
//! else. A notification is acknowledged with `202` only once it is recorded (its event and
//! its fetch work committed); one for an unknown subscription or with a wrong
//! `clientState` changes nothing and is still acknowledged (Graph would only retry it),
//! logged and counted. A database failure answers `503`, so Graph delivers it again.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use store::metrics::MailLabels;

use app::mailboxes::{record_notifications, Notification, Verdict};

use crate::AppState;

/// Longest validation token echoed.
const MAX_VALIDATION_TOKEN: usize = 1024;
/// Most notifications one POST may carry.
const MAX_BATCH: usize = 1000;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/graph/mail", post(notify))
}

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    value: Vec<Incoming>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Incoming {
    subscription_id: String,
    #[serde(default)]
    client_state: Option<String>,
    #[serde(default)]
    resource_data: Option<ResourceData>,
    #[serde(default)]
    lifecycle_event: Option<String>,
}

#[derive(Deserialize)]
struct ResourceData {
    #[serde(default)]
    id: Option<String>,
}

fn refused(status: StatusCode, code: domain::ReasonCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": { "code": code.as_str(), "message": message } })),
    )
        .into_response()
}

async fn notify(
    State(state): State<AppState>,
    Query(handshake): Query<Handshake>,
    body: Body,
) -> Response {
    if let Some(token) = handshake.validation_token {
        if token.len() > MAX_VALIDATION_TOKEN {
            return refused(
                StatusCode::BAD_REQUEST,
                domain::ReasonCode::ValidationFailed,
                "the validation token is too long",
            );
        }
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            token,
        )
            .into_response();
    }
    let limit = state.limits.body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            domain::ReasonCode::ValidationFailed,
            "the notification body is too large",
        );
    };
    let batch: Batch = match serde_json::from_slice(&bytes) {
        Ok(batch) => batch,
        Err(_) => {
            return refused(
                StatusCode::BAD_REQUEST,
                domain::ReasonCode::ValidationFailed,
                "the body is not a change notification batch",
            )
        }
    };
    if batch.value.len() > MAX_BATCH {
        return refused(
            StatusCode::BAD_REQUEST,
            domain::ReasonCode::ValidationFailed,
            "too many notifications in one request",
        );
    }
    let notifications: Vec<Notification> = batch
        .value
        .into_iter()
        .map(|n| Notification {
            subscription_id: n.subscription_id.chars().take(128).collect(),
            client_state: n.client_state,
            message_id: n.resource_data.and_then(|r| r.id),
            lifecycle_event: n.lifecycle_event,
        })
        .collect();
    let verdicts = match record_notifications(&state.bus, &notifications).await {
        Ok(verdicts) => verdicts,
        Err(error) => {
            tracing::error!(%error, "notifications could not be recorded; Graph will deliver them again");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                domain::ReasonCode::InternalError,
                "internal error",
            );
        }
    };
    for (n, verdict) in notifications.iter().zip(&verdicts) {
        state
            .metrics
            .mail_notifications
            .get_or_create(&MailLabels {
                outcome: verdict.as_str().to_owned(),
            })
            .inc();
        match verdict {
            Verdict::UnknownSubscription | Verdict::WrongClientState | Verdict::Malformed => {
                tracing::warn!(subscription = %n.subscription_id, verdict = verdict.as_str(), "change notification ignored");
            }
            Verdict::AcceptedLegacy => {
                tracing::warn!(subscription = %n.subscription_id, "change notification accepted with the legacy clientState; recreate the subscription to retire it");
            }
            Verdict::Accepted | Verdict::Duplicate => {}
        }
    }
    StatusCode::ACCEPTED.into_response()
}
