//! Inbound mail's durable work (R6, R7.3): the message fetches the webhook recorded, each
//! mailbox's subscription timer (create, renew before expiry, recreate when gone, delete
//! when disabled), connection tests and inbox catch-ups after a missed notification.
//!
//! The work lives in `mail_work`, written in the same transaction as its cause (the
//! notification's event, the mailbox's), claimed with `FOR UPDATE SKIP LOCKED` under a
//! lease and deleted in the same transaction as its result's events: a crash anywhere
//! repeats a Graph call at worst, never an event (each message's stream takes one
//! `InboundEmailReceived`). Due times are read on the service's clock, so a test moves
//! time and the timer follows; the timer row is the renewal's only state, so a restart
//! finds it where it was.
//!
//! A message costs two events: `NotificationRecorded` (the webhook) and
//! `InboundEmailReceived` (here), not an operation run per message: a fleet of help desk
//! mailboxes receives far more mail than any other work, and a run's lifecycle would
//! multiply its events by four.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::inbound_email::{
    AttachmentInfo, EmailData, Header, InboundEmail, InboundEmailCommand, Participant, Processed,
};
use domain::mailbox::{
    Mailbox, MailboxCommand, MailboxId, MailboxStatus, SubscriptionLoss, TestOutcome,
};
use domain::tenant::Tenant;
use domain::{ConnectionId, Provider, ReasonCode};
use graph::models::{Message, MoveDestination, NewSubscription, Recipient};
use graph::{AppCredentials, GraphApi, GraphError};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use store::{CommandBus, Metrics, Vault, Wakeups};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;
use uuid::Uuid;

use crate::Backoff;

/// How the mail worker behaves.
#[derive(Clone)]
pub struct MailSettings {
    /// Where Graph posts notifications (`{public base}/webhooks/graph/mail`); without it,
    /// no subscription can be created (the mailbox is degraded, `validation_failed`).
    pub notification_url: Option<Url>,
    /// Where Graph posts lifecycle notifications (usually the same URL).
    pub lifecycle_url: Option<Url>,
    /// The category added to a message once it was received.
    pub category: String,
    /// A folder (id, or a well-known name such as `archive`) a received message is moved
    /// to once its event is recorded; `None` leaves it in the inbox.
    pub move_to: Option<String>,
    /// App client id and secret from the environment; `None`: each tenant's stored
    /// credential (its default Microsoft connection's).
    pub app_client: Option<(String, SecretString)>,
    /// Lifetime asked for a subscription (Graph's mail limit is 4,230 minutes).
    pub subscription_minutes: i64,
    /// Renew this long before expiry (plus up to a quarter more, at random, so a fleet's
    /// renewals spread out).
    pub renew_before: chrono::Duration,
    /// Attempts of a fetch before the minimal event is written.
    pub fetch_attempts: i32,
    pub backoff: Backoff,
    /// How often to look for due work when nothing wakes the worker.
    pub poll: Duration,
    pub lease: Duration,
    /// Most work items claimed at once, and worked on concurrently.
    pub batch: i64,
    pub concurrency: usize,
}

impl std::fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailSettings")
            .field(
                "notification_url",
                &self.notification_url.as_ref().map(Url::as_str),
            )
            .field("category", &self.category)
            .field("move_to", &self.move_to)
            .field("app_client", &self.app_client.as_ref().map(|(id, _)| id))
            .field("subscription_minutes", &self.subscription_minutes)
            .finish_non_exhaustive()
    }
}

impl Default for MailSettings {
    fn default() -> Self {
        Self {
            notification_url: None,
            lifecycle_url: None,
            category: "tenantflow/processed".to_owned(),
            move_to: None,
            app_client: None,
            subscription_minutes: 4200,
            renew_before: chrono::Duration::hours(12),
            fetch_attempts: 5,
            backoff: Backoff {
                base: Duration::from_secs(2),
                max: Duration::from_secs(600),
            },
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(15),
            batch: 64,
            concurrency: 8,
        }
    }
}

/// Why the worker could not work.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    App(#[from] app::AppError),
}

/// One claimed work item.
#[derive(Debug, Clone)]
struct Work {
    key: String,
    kind: String,
    mailbox: MailboxId,
    workspace: String,
    message_id: Option<String>,
    attempts: i32,
}

/// What a work item came to.
enum Done {
    /// Finished: the row is deleted (with the events, when there are any).
    Finished,
    /// Again at this time (a renewal timer, or a retry when true).
    Again(DateTime<Utc>, bool),
    /// Finished, its row deleted with its events already.
    Recorded,
}

/// A mailbox and the app credentials its Graph calls use.
struct Target {
    mailbox: Mailbox,
    app: Result<AppCredentials, (ReasonCode, String)>,
}

/// The mail worker. Several may run against one database (leases).
pub struct MailWorker {
    pub bus: CommandBus,
    pub vault: Vault,
    pub graph: Arc<dyn GraphApi>,
    pub metrics: Metrics,
    pub settings: MailSettings,
    pub owner: String,
    credentials: Mutex<HashMap<MailboxId, (std::time::Instant, Arc<Target>)>>,
}

/// How long a mailbox's credentials are reused before they are read again.
const CREDENTIALS_TTL: Duration = Duration::from_secs(30);

impl MailWorker {
    pub fn new(
        bus: CommandBus,
        vault: Vault,
        graph: Arc<dyn GraphApi>,
        metrics: Metrics,
        settings: MailSettings,
        owner: String,
    ) -> Self {
        Self {
            bus,
            vault,
            graph,
            metrics,
            settings,
            owner,
            credentials: Mutex::default(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.bus.services().clock.now()
    }

    /// Works until `shutdown`: whenever `wakeups` fire (the runtime passes those of
    /// [`store::log::MAIL_CHANNEL`], announced after every commit that queued mail work)
    /// and at least every `poll`.
    pub async fn run(self, mut wakeups: Wakeups, shutdown: CancellationToken) {
        let this = Arc::new(self);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            wakeups.mark_seen();
            let worked = tokio::select! {
                worked = this.clone().step() => worked,
                () = shutdown.cancelled() => return,
            };
            match worked {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "mail worker step failed; retrying"),
            }
            tokio::select! {
                () = wakeups.wait(this.settings.poll) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Claims the due work and does it; returns how many items were done.
    pub async fn step(self: Arc<Self>) -> Result<usize, MailError> {
        use futures::StreamExt;
        let claimed = self.claim().await?;
        let n = claimed.len();
        let results: Vec<Result<(), MailError>> = futures::stream::iter(claimed)
            .map(|work| {
                let this = self.clone();
                async move { this.work(work).await }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            r?;
        }
        Ok(n)
    }

    /// Works until nothing is due (tests and benches).
    pub async fn drain(self: &Arc<Self>) -> Result<usize, MailError> {
        let mut total = 0;
        loop {
            let n = self.clone().step().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    async fn claim(&self) -> Result<Vec<Work>, MailError> {
        let now = self.now();
        let lease_until = now + chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
        let rows: Vec<(String, String, Uuid, String, Option<String>, i32)> = sqlx::query_as(
            "WITH due AS ( \
                SELECT work_key FROM mail_work \
                WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < $1) \
                ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE mail_work w SET lease_owner = $3, lease_until = $4 \
             FROM due WHERE w.work_key = due.work_key \
             RETURNING w.work_key, w.kind, w.mailbox_id, w.workspace_id, w.message_id, w.attempts",
        )
        .bind(now)
        .bind(self.settings.batch)
        .bind(&self.owner)
        .bind(lease_until)
        .fetch_all(self.bus.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(key, kind, mailbox, workspace, message_id, attempts)| Work {
                    key,
                    kind,
                    mailbox: MailboxId(mailbox),
                    workspace,
                    message_id,
                    attempts,
                },
            )
            .collect())
    }

    async fn work(&self, work: Work) -> Result<(), MailError> {
        let span = tracing::debug_span!("mail_work", kind = %work.kind, mailbox = %work.mailbox, workspace = %work.workspace);
        let done = async {
            Ok::<_, MailError>(match work.kind.as_str() {
                "fetch" => self.fetch(&work).await?,
                "subscription" => self.subscription(&work).await?,
                "test" => self.test(&work).await?,
                "catch_up" => self.catch_up(&work).await?,
                "move" => self.move_processed(&work).await?,
                other => {
                    tracing::warn!(kind = other, "unknown mail work: dropped");
                    Done::Finished
                }
            })
        }
        .instrument(span)
        .await?;
        let outcome = match &done {
            Done::Finished | Done::Recorded => "done",
            Done::Again(_, true) => "retry",
            Done::Again(_, false) => "scheduled",
        };
        Metrics::by_outcome(&self.metrics.mail_work, &format!("{}_{outcome}", work.kind)).inc();
        match done {
            Done::Recorded => {}
            Done::Finished => finish(&mut *self.bus.pool().acquire().await?, &work).await?,
            Done::Again(at, retry) => {
                sqlx::query(
                    "UPDATE mail_work SET due_at = $2, attempts = CASE WHEN $3 THEN attempts + 1 ELSE 0 END, \
                     lease_owner = NULL, lease_until = NULL WHERE work_key = $1 AND lease_owner = $4",
                )
                .bind(&work.key)
                .bind(at)
                .bind(retry)
                .bind(&self.owner)
                .execute(self.bus.pool())
                .await?;
            }
        }
        Ok(())
    }

    /// The mailbox and its app credentials: from the environment first, else the tenant's
    /// default Microsoft connection's stored credential.
    async fn target(&self, mailbox: MailboxId, fresh: bool) -> Result<Arc<Target>, MailError> {
        if !fresh {
            if let Some((at, t)) = self
                .credentials
                .lock()
                .ok()
                .and_then(|c| c.get(&mailbox).cloned())
            {
                if at.elapsed() < CREDENTIALS_TTL {
                    return Ok(t);
                }
            }
        }
        let loaded = self
            .bus
            .load::<Mailbox>(&mailbox.to_string())
            .await
            .map_err(app::AppError::from)?;
        let mailbox_state = loaded.aggregate;
        let app = self.app_credentials(&mailbox_state).await?;
        let target = Arc::new(Target {
            mailbox: mailbox_state,
            app,
        });
        if let Ok(mut c) = self.credentials.lock() {
            c.insert(mailbox, (std::time::Instant::now(), target.clone()));
        }
        Ok(target)
    }

    async fn app_credentials(
        &self,
        mailbox: &Mailbox,
    ) -> Result<Result<AppCredentials, (ReasonCode, String)>, MailError> {
        let (Some(tenant), Some(entra)) = (&mailbox.tenant, &mailbox.entra_tenant_id) else {
            return Ok(Err((
                ReasonCode::NotFound,
                "the mailbox does not exist".into(),
            )));
        };
        if let Some((client_id, secret)) = &self.settings.app_client {
            return Ok(Ok(AppCredentials::new(
                entra.as_uuid(),
                client_id.clone(),
                secret.clone(),
            )));
        }
        let missing = |m: &str| Ok(Err((ReasonCode::MailboxCredentialMissing, m.to_owned())));
        let tenant_state = self
            .bus
            .load::<Tenant>(&tenant.to_string())
            .await
            .map_err(app::AppError::from)?
            .aggregate;
        let Some(connection) = tenant_state.default_connection(Provider::Microsoft) else {
            return missing("the tenant has no default Microsoft connection");
        };
        let connection = self
            .bus
            .load::<domain::connection::ProviderConnection>(&ConnectionId::to_string(&connection))
            .await
            .map_err(app::AppError::from)?
            .aggregate;
        let Some(credential) = &connection.credential else {
            return missing("the tenant's connection has no credential");
        };
        match self
            .vault
            .fetch(self.bus.pool(), credential.credential_ref)
            .await
        {
            Ok(c) => Ok(Ok(AppCredentials::new(
                entra.as_uuid(),
                c.client_id,
                c.client_secret,
            ))),
            Err(error) => {
                tracing::warn!(%error, "the mailbox's credential cannot be read");
                missing("the tenant's credential cannot be read")
            }
        }
    }

    /// A usable delegated access token of the mailbox: the sealed one while it lives, else
    /// one redeemed with the refresh token (both re-sealed in the vault right away, since
    /// the old refresh token may no longer work).
    async fn delegated_access(
        &self,
        mailbox: MailboxId,
        app: &AppCredentials,
    ) -> Result<SecretString, GraphError> {
        let missing = || GraphError {
            reason: ReasonCode::MailboxCredentialMissing,
            status: None,
            graph_code: None,
            message: "the mailbox has no delegated tokens".into(),
            retry_after: None,
        };
        let internal = |_| GraphError {
            reason: ReasonCode::InternalError,
            status: None,
            graph_code: None,
            message: "the vault could not be read or written".into(),
            retry_after: None,
        };
        let tokens = self
            .vault
            .delegated_tokens(self.bus.pool(), mailbox.as_uuid())
            .await
            .map_err(internal)?
            .ok_or_else(missing)?;
        let now = self.now();
        let fresh = |t: &store::DelegatedTokens| {
            t.expires_at > now + chrono::Duration::minutes(5)
                && !t.access_token.expose_secret().is_empty()
        };
        if fresh(&tokens) {
            return Ok(tokens.access_token);
        }
        // One refresh at a time per mailbox: the row stays locked until the new tokens
        // are stored, and whoever waited finds them fresh.
        let mut tx = self
            .bus
            .pool()
            .begin()
            .await
            .map_err(|e| internal(e.into()))?;
        let tokens = self
            .vault
            .delegated_tokens_for_refresh(&mut tx, mailbox.as_uuid())
            .await
            .map_err(internal)?
            .ok_or_else(missing)?;
        if fresh(&tokens) {
            return Ok(tokens.access_token);
        }
        let grant = self
            .graph
            .refresh_delegated_token(app, &tokens.refresh_token)
            .await?;
        let renewed = store::DelegatedTokens {
            access_token: grant.access_token.clone(),
            refresh_token: grant.refresh_token.unwrap_or(tokens.refresh_token),
            expires_at: now + chrono::Duration::seconds(grant.expires_in as i64),
        };
        self.vault
            .store_delegated_tokens(&mut tx, mailbox.as_uuid(), &renewed)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(|e| internal(e.into()))?;
        Ok(grant.access_token)
    }

    /// When to try again after a failed attempt.
    fn retry_at(&self, attempts: i32, error: &GraphError) -> DateTime<Utc> {
        let unit: f64 = rand::thread_rng().gen();
        let delay =
            self.settings
                .backoff
                .delay(attempts.max(0) as u32 + 1, error.retry_after, unit);
        self.now() + chrono::Duration::from_std(delay).unwrap_or_default()
    }

    // ---- message retrieval (R6.4, R6.6) ----

    async fn fetch(&self, work: &Work) -> Result<Done, MailError> {
        let Some(message_id) = work.message_id.as_deref() else {
            return Ok(Done::Finished);
        };
        let target = self.target(work.mailbox, false).await?;
        let fetched = match &target.app {
            Ok(app) => {
                self.fetch_message(app, &target.mailbox.address, message_id)
                    .await
            }
            Err((reason, message)) => Err(GraphError {
                reason: *reason,
                status: None,
                graph_code: None,
                message: message.clone(),
                retry_after: None,
            }),
        };
        let fetched_whole = fetched.is_ok();
        let (email, failure, processed) = match fetched {
            Ok((email, processed)) => (Some(Box::new(email)), None, processed),
            Err(e) if e.is_transient() && work.attempts + 1 < self.settings.fetch_attempts => {
                return Ok(Done::Again(self.retry_at(work.attempts, &e), true));
            }
            Err(e) => {
                tracing::warn!(reason = %e.reason, attempts = work.attempts + 1, "message fetch failed for good: recording the minimal event");
                (None, Some(e.reason), None)
            }
        };
        let meta = app::mailboxes::system_meta(&work.workspace);
        let mut uow = self.bus.begin().await?;
        let received = uow
            .execute::<InboundEmail>(
                &InboundEmail::id(work.mailbox, message_id),
                InboundEmailCommand::Receive {
                    email,
                    failure,
                    processed,
                },
                &meta,
            )
            .await;
        match received {
            Ok(_) => {}
            Err(store::BusError::Conflict { .. }) => {
                // Another worker wrote it first: its row went with its events.
                return Ok(Done::Recorded);
            }
            Err(e) => return Err(app::AppError::from(e).into()),
        }
        finish(uow.connection(), work).await?;
        // The move comes after the event: a moved message has a new id, so a fetch
        // retried after a crash mid-move could not find it. Its own work row, committed
        // with the event, makes the move survive a crash too.
        if fetched_whole && self.settings.move_to.is_some() {
            app::mailboxes::schedule_work(
                &mut uow,
                "move",
                work.mailbox,
                &work.workspace,
                Some(message_id),
                self.now(),
            )
            .await?;
        }
        uow.commit().await?;
        Ok(Done::Recorded)
    }

    /// Moves a received message to the configured folder. Graph's `404` means it is
    /// gone already (moved or deleted by someone); a lasting failure leaves it in place,
    /// logged and counted: its event stands either way.
    async fn move_processed(&self, work: &Work) -> Result<Done, MailError> {
        let (Some(message_id), Some(folder)) =
            (work.message_id.as_deref(), self.settings.move_to.as_deref())
        else {
            return Ok(Done::Finished);
        };
        let target = self.target(work.mailbox, false).await?;
        let Ok(app) = &target.app else {
            return Ok(Done::Finished);
        };
        let destination = match folder.to_ascii_lowercase().as_str() {
            "inbox" => MoveDestination::Inbox,
            "deleteditems" => MoveDestination::DeletedItems,
            "junkemail" => MoveDestination::JunkEmail,
            "archive" => MoveDestination::Archive,
            _ => MoveDestination::Folder(folder.to_owned()),
        };
        match self
            .graph
            .move_message(app, &target.mailbox.address, message_id, &destination)
            .await
        {
            Ok(_) => Ok(Done::Finished),
            Err(e) if e.is_transient() && work.attempts + 1 < self.settings.fetch_attempts => {
                Ok(Done::Again(self.retry_at(work.attempts, &e), true))
            }
            Err(e) => {
                tracing::warn!(reason = %e.reason, "a received message could not be moved to its folder; it stays in the inbox");
                Ok(Done::Finished)
            }
        }
    }

    async fn fetch_message(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
    ) -> Result<(EmailData, Option<Processed>), GraphError> {
        let message = self.graph.get_message(app, user, message_id).await?;
        // Expanded with the message; listed separately only when Graph did not expand them.
        let attachments = match (&message.attachments, message.has_attachments) {
            (Some(expanded), _) => expanded.clone(),
            (None, Some(false)) => Vec::new(),
            (None, _) => self.graph.list_attachments(app, user, message_id).await?,
        };
        let mut email = email_data(&message);
        email.attachments = attachments
            .into_iter()
            .map(|a| AttachmentInfo {
                name: a.name.unwrap_or_default(),
                content_type: a.content_type.unwrap_or_default(),
                size: a.size,
                inline: a.is_inline,
            })
            .collect();
        let processed = self.mark_processed(app, user, &message).await;
        Ok((email, Some(processed)))
    }

    /// Adds the category (Graph replaces the list, so the old ones are sent along). A
    /// failure leaves the message unmarked; the event stands.
    async fn mark_processed(
        &self,
        app: &AppCredentials,
        user: &str,
        message: &Message,
    ) -> Processed {
        let category = self.settings.category.clone();
        if message.categories.contains(&category) {
            return Processed::Categorized { category };
        }
        let mut categories = message.categories.clone();
        categories.push(category.clone());
        match self
            .graph
            .set_message_categories(app, user, &message.id, &categories)
            .await
        {
            Ok(_) => Processed::Categorized { category },
            Err(e) => {
                tracing::warn!(reason = %e.reason, "the message could not be marked processed");
                Processed::NotMarked { reason: e.reason }
            }
        }
    }

    // ---- subscription lifecycle (R6.2) ----

    async fn subscription(&self, work: &Work) -> Result<Done, MailError> {
        let target = self.target(work.mailbox, true).await?;
        let mailbox = &target.mailbox;
        let id = work.mailbox.to_string();
        let meta = app::mailboxes::system_meta(&work.workspace);
        let now = self.now();
        if !mailbox.exists() {
            return Ok(Done::Finished);
        }
        if mailbox.status == MailboxStatus::Disabled {
            if let (Some(sub), Ok(app)) = (&mailbox.subscription_id, &target.app) {
                if let Err(e) = self.graph.delete_subscription(app, sub).await {
                    tracing::debug!(reason = %e.reason, "the disabled mailbox's subscription could not be deleted");
                }
            }
            sqlx::query("DELETE FROM mail_subscriptions WHERE mailbox_id = $1")
                .bind(work.mailbox.as_uuid())
                .execute(self.bus.pool())
                .await?;
            return Ok(Done::Finished);
        }
        if mailbox.status == MailboxStatus::Degraded {
            // Blocked until someone fixes it and asks for a renewal.
            return Ok(Done::Finished);
        }
        let app = match &target.app {
            Ok(app) => app,
            Err((reason, message)) => {
                self.degrade(&id, &meta, *reason, message).await?;
                return Ok(Done::Finished);
            }
        };
        if mailbox.delegated {
            // The owner's consent must still stand: a revoked refresh token blocks.
            if let Err(e) = self.delegated_access(work.mailbox, app).await {
                return self.lifecycle_failure(&id, &meta, work, e).await;
            }
        }
        let Some(url) = self.settings.notification_url.clone() else {
            self.degrade(
                &id,
                &meta,
                ReasonCode::ValidationFailed,
                "no public webhook URL is configured",
            )
            .await?;
            return Ok(Done::Finished);
        };
        let expiration = now + chrono::Duration::minutes(self.settings.subscription_minutes);
        // Renew the one we hold; a subscription that expired meanwhile or that Graph no
        // longer knows is recorded lost and created again.
        if let Some(sub) = mailbox.subscription_id.clone() {
            let expired = mailbox.subscription_expires_at.is_some_and(|e| e <= now);
            let loss = if expired {
                Some(SubscriptionLoss::Expired)
            } else {
                match self.graph.renew_subscription(app, &sub, expiration).await {
                    Ok(renewed) => {
                        self.bus
                            .execute::<Mailbox>(
                                &id,
                                MailboxCommand::RecordRenewal {
                                    subscription_id: renewed.id,
                                    expires_at: renewed.expiration_date_time,
                                },
                                &meta,
                            )
                            .await
                            .map_err(app::AppError::from)?;
                        return Ok(Done::Again(
                            self.renew_at(renewed.expiration_date_time),
                            false,
                        ));
                    }
                    Err(e) if e.reason == ReasonCode::GraphNotFound => {
                        Some(SubscriptionLoss::NotFound)
                    }
                    Err(e) => return self.lifecycle_failure(&id, &meta, work, e).await,
                }
            };
            if let Some(loss) = loss {
                self.bus
                    .execute::<Mailbox>(
                        &id,
                        MailboxCommand::RecordLoss {
                            subscription_id: sub.clone(),
                            loss,
                        },
                        &meta,
                    )
                    .await
                    .map_err(app::AppError::from)?;
                sqlx::query("DELETE FROM mail_subscriptions WHERE subscription_id = $1")
                    .bind(&sub)
                    .execute(self.bus.pool())
                    .await?;
            }
        }
        let Some(token) = self
            .vault
            .verification_token(self.bus.pool(), work.mailbox.as_uuid())
            .await
            .map_err(app::AppError::from)?
        else {
            self.degrade(
                &id,
                &meta,
                ReasonCode::MailboxCredentialMissing,
                "the mailbox has no verification token",
            )
            .await?;
            return Ok(Done::Finished);
        };
        let mut request =
            NewSubscription::inbox_messages(&mailbox.address, url, expiration, token.clone());
        request.lifecycle_notification_url = self.settings.lifecycle_url.clone();
        let created = match self.graph.create_subscription(app, &request).await {
            Ok(created) => created,
            Err(e) => return self.lifecycle_failure(&id, &meta, work, e).await,
        };
        // The lookup row first: a notification may arrive before the event commits.
        sqlx::query(
            "INSERT INTO mail_subscriptions (subscription_id, mailbox_id, workspace_id, tenant_key, client_state_sha256, legacy_state_sha256) \
             VALUES ($1, $2, $3, $4, $5, (SELECT legacy_state_sha256 FROM mail_subscriptions WHERE mailbox_id = $2 AND legacy_state_sha256 IS NOT NULL LIMIT 1)) \
             ON CONFLICT (subscription_id) DO NOTHING",
        )
        .bind(&created.id)
        .bind(work.mailbox.as_uuid())
        .bind(&work.workspace)
        .bind(mailbox.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default())
        .bind(app::mailboxes::client_state_hash(token.expose_secret()))
        .execute(self.bus.pool())
        .await?;
        self.bus
            .execute::<Mailbox>(
                &id,
                MailboxCommand::RecordSubscription {
                    subscription_id: created.id,
                    expires_at: created.expiration_date_time,
                },
                &meta,
            )
            .await
            .map_err(app::AppError::from)?;
        Ok(Done::Again(
            self.renew_at(created.expiration_date_time),
            false,
        ))
    }

    /// The renewal time of a subscription expiring at `expires`: `renew_before` ahead,
    /// jittered by up to a quarter of it more, never in the past.
    fn renew_at(&self, expires: DateTime<Utc>) -> DateTime<Utc> {
        let spread = self.settings.renew_before.num_seconds().max(4) / 4;
        let jitter = rand::thread_rng().gen_range(0..=spread);
        let at = expires - self.settings.renew_before - chrono::Duration::seconds(jitter);
        at.max(self.now() + chrono::Duration::seconds(1))
    }

    /// Throttling and outages back off and try again; refused credentials or consent block
    /// the mailbox with their reason.
    async fn lifecycle_failure(
        &self,
        id: &str,
        meta: &store::Metadata,
        work: &Work,
        e: GraphError,
    ) -> Result<Done, MailError> {
        if e.is_transient() {
            return Ok(Done::Again(self.retry_at(work.attempts, &e), true));
        }
        self.degrade(id, meta, e.reason, &e.message).await?;
        Ok(Done::Finished)
    }

    async fn degrade(
        &self,
        id: &str,
        meta: &store::Metadata,
        reason: ReasonCode,
        message: &str,
    ) -> Result<(), MailError> {
        tracing::warn!(mailbox = id, %reason, "mailbox blocked");
        match self
            .bus
            .execute::<Mailbox>(
                id,
                MailboxCommand::Degrade {
                    reason,
                    message: message.to_owned(),
                },
                meta,
            )
            .await
        {
            Ok(_) | Err(store::BusError::Domain(_)) => Ok(()),
            Err(e) => Err(app::AppError::from(e).into()),
        }
    }

    // ---- connection test (R6.5) ----

    async fn test(&self, work: &Work) -> Result<Done, MailError> {
        let target = self.target(work.mailbox, true).await?;
        let outcome = match &target.app {
            Err((reason, message)) => TestOutcome {
                reason: Some(*reason),
                message: message.clone(),
            },
            Ok(app) => {
                let configured = &target.mailbox.address;
                let user = if target.mailbox.delegated {
                    match self.delegated_access(work.mailbox, app).await {
                        Ok(access) => self.graph.get_me(app.tenant_id, &access).await,
                        Err(e) => Err(e),
                    }
                } else {
                    self.graph.get_user(app, configured).await
                };
                match user {
                    Ok(user) => mailbox_match(
                        configured,
                        user.mail.as_deref(),
                        user.user_principal_name.as_deref(),
                    ),
                    Err(e) if e.is_transient() && work.attempts + 1 < 3 => {
                        return Ok(Done::Again(self.retry_at(work.attempts, &e), true));
                    }
                    Err(e) => TestOutcome {
                        reason: Some(e.reason),
                        message: e.message,
                    },
                }
            }
        };
        let meta = app::mailboxes::system_meta(&work.workspace);
        match self
            .bus
            .execute::<Mailbox>(
                &work.mailbox.to_string(),
                MailboxCommand::RecordTest { outcome },
                &meta,
            )
            .await
        {
            Ok(_) | Err(store::BusError::Domain(_)) => Ok(Done::Finished),
            Err(e) => Err(app::AppError::from(e).into()),
        }
    }

    // ---- after a missed notification ----

    /// Graph dropped notifications: read the inbox since the last message received (or
    /// the last three days), record what nobody was told about, and renew the subscription
    /// (which proves it still stands).
    async fn catch_up(&self, work: &Work) -> Result<Done, MailError> {
        let target = self.target(work.mailbox, true).await?;
        let Ok(app) = &target.app else {
            return Ok(Done::Finished);
        };
        let last: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT max(received_at) FROM rm_inbound_emails WHERE mailbox_id = $1",
        )
        .bind(work.mailbox.as_uuid())
        .fetch_one(self.bus.pool())
        .await?;
        let now = self.now();
        let since = last
            .map(|l| l - chrono::Duration::minutes(10))
            .unwrap_or(now - chrono::Duration::days(3));
        let listed = match self
            .graph
            .list_inbox_messages(app, &target.mailbox.address, since)
            .await
        {
            Ok(listed) => listed,
            Err(e) if e.is_transient() && work.attempts + 1 < self.settings.fetch_attempts => {
                return Ok(Done::Again(self.retry_at(work.attempts, &e), true));
            }
            Err(e) => {
                tracing::warn!(reason = %e.reason, "the inbox could not be read after a missed notification");
                return Ok(Done::Finished);
            }
        };
        let ids: Vec<String> = listed.into_iter().map(|m| m.id).collect();
        let new =
            app::mailboxes::record_missed(&self.bus, work.mailbox, &target.mailbox, &ids).await?;
        tracing::info!(
            listed = ids.len(),
            new,
            "caught up after a missed notification"
        );
        let mut uow = self.bus.begin().await?;
        app::mailboxes::schedule_work(
            &mut uow,
            "subscription",
            work.mailbox,
            &work.workspace,
            None,
            now,
        )
        .await?;
        uow.commit().await?;
        Ok(Done::Finished)
    }
}

async fn finish(conn: &mut PgConnection, work: &Work) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM mail_work WHERE work_key = $1")
        .bind(&work.key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `/me` (or the user read by address) is the configured mailbox: its `mail` or
/// its `userPrincipalName`, case-insensitively.
pub fn mailbox_match(configured: &str, mail: Option<&str>, upn: Option<&str>) -> TestOutcome {
    let same = |a: &str| a.trim().eq_ignore_ascii_case(configured.trim());
    if mail.is_some_and(same) || upn.is_some_and(same) {
        TestOutcome {
            reason: None,
            message: "the mailbox answers".into(),
        }
    } else {
        TestOutcome {
            reason: Some(ReasonCode::MailboxMismatch),
            message: format!(
                "the credentials reach {} instead of the configured mailbox",
                mail.or(upn).unwrap_or("another mailbox")
            ),
        }
    }
}

fn participant(r: &Recipient) -> Option<Participant> {
    Some(Participant {
        name: r.email_address.name.clone().unwrap_or_default(),
        address: r.email_address.address.clone()?,
    })
}

/// The enriched event's fields from Graph's message (threading from the headers).
pub fn email_data(m: &Message) -> EmailData {
    EmailData {
        internet_message_id: m.internet_message_id.clone(),
        subject: m.subject.clone().unwrap_or_default(),
        from: m.from.as_ref().and_then(participant),
        to: m.to_recipients.iter().filter_map(participant).collect(),
        cc: m.cc_recipients.iter().filter_map(participant).collect(),
        received_at: m.received_date_time,
        thread_id: m.conversation_id.clone(),
        in_reply_to: None,
        references: Vec::new(),
        body_text: m
            .body
            .as_ref()
            .map(|b| b.content.clone())
            .unwrap_or_default(),
        body_truncated: false,
        body_preview: m.body_preview.clone().unwrap_or_default(),
        headers: m
            .internet_message_headers
            .iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
        attachments: Vec::new(),
    }
    .bounded()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_mailbox_matches_by_mail_or_principal_name() {
        assert_eq!(
            mailbox_match("Help@Contoso.com", Some("help@contoso.com"), Some("x@y")).reason,
            None
        );
        assert_eq!(
            mailbox_match("help@contoso.com", None, Some("HELP@contoso.com")).reason,
            None
        );
        assert_eq!(
            mailbox_match(
                "help@contoso.com",
                Some("adele@contoso.com"),
                Some("adele@contoso.com")
            )
            .reason,
            Some(ReasonCode::MailboxMismatch)
        );
    }
}
