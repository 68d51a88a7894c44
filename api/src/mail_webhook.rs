//! `POST /webhooks/graph/mail` (R6.3): Graph's change notifications for mailboxes.
//!
//! Graph calls it without a token; what makes a notification genuine is the `clientState`
//! it echoes, compared in constant time with the hash kept for its subscription. The
//! validation handshake (`?validationToken=`) is answered in plain text before anything
//! else. A notification is acknowledged with `202` only once it is recorded (its event and
//! its fetch work committed); one for an unknown subscription or with a wrong
//! `clientState` changes nothing and is still acknowledged (Graph would only retry it),
//! logged and counted. A database failure answers `503`, so Graph delivers it again.
//!
//! Graph sends a busy mailbox's notifications over many connections at once. Concurrent
//! requests share their transaction (group commit, [`NotificationRecorder`]): a request
//! waits at most for the batch being written before its own, and the database does one
//! commit (one WAL flush) for the batch instead of one per request.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use store::Metrics;

use std::sync::{Arc, OnceLock};

use app::mailboxes::{record_notifications, Notification, Verdict};
use store::CommandBus;
use tokio::sync::{mpsc, oneshot, Mutex};

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
    let verdicts = match state
        .mail_recorder
        .record(&state.bus, notifications.clone())
        .await
    {
        Ok(verdicts) => verdicts,
        Err(()) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                domain::ReasonCode::InternalError,
                "internal error",
            );
        }
    };
    for (n, verdict) in notifications.iter().zip(&verdicts) {
        Metrics::by_outcome(&state.metrics.mail_notifications, verdict.as_str()).inc();
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

/// Notifications waiting for a batch, with where their verdicts go.
struct Pending {
    notifications: Vec<Notification>,
    reply: oneshot::Sender<Option<Vec<Verdict>>>,
}

/// Writers of batches; while one commits, the other gathers the next batch.
const WRITERS: usize = 2;

/// Records the webhook's notifications, batching concurrent requests into one transaction
/// each (see the module's docs). Its writers start with the first notification and end
/// when the recorder is dropped.
#[derive(Default)]
pub struct NotificationRecorder {
    queue: OnceLock<mpsc::Sender<Pending>>,
}

impl std::fmt::Debug for NotificationRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationRecorder")
            .field("started", &self.queue.get().is_some())
            .finish()
    }
}

impl NotificationRecorder {
    /// The verdict of each notification once it is durably recorded; `None` when the
    /// batch could not be written (logged by the writer).
    async fn record(
        &self,
        bus: &CommandBus,
        notifications: Vec<Notification>,
    ) -> Result<Vec<Verdict>, ()> {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..WRITERS {
                tokio::spawn(write_batches(bus.clone(), receiver.clone()));
            }
            sender
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending {
                notifications,
                reply,
            })
            .await
            .map_err(|_| ())?;
        answer.await.ok().flatten().ok_or(())
    }
}

/// Takes what is queued (up to [`MAX_BATCH`] notifications), records it in one
/// transaction, answers each request; until the queue closes.
async fn write_batches(bus: CommandBus, queue: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut size = first.notifications.len();
            let mut batch = vec![first];
            while size < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => {
                        size += next.notifications.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        let all: Vec<Notification> = batch
            .iter()
            .flat_map(|p| p.notifications.iter().cloned())
            .collect();
        match record_notifications(&bus, &all).await {
            Ok(verdicts) => {
                let mut verdicts = verdicts.into_iter();
                for pending in batch {
                    let own = verdicts
                        .by_ref()
                        .take(pending.notifications.len())
                        .collect();
                    // A request that gave up (its client went away) needs no answer.
                    let _ = pending.reply.send(Some(own));
                }
            }
            Err(error) => {
                tracing::error!(%error, notifications = all.len(), "notifications could not be recorded; Graph will deliver them again");
                for pending in batch {
                    let _ = pending.reply.send(None);
                }
            }
        }
    }
}
