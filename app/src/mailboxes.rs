//! Inbound mail (R6): adding, renewing, testing and disabling a mailbox, and recording the
//! change notifications Graph posts to the webhook.
//!
//! Every use case writes its events and the mail worker's work row (`mail_work`) in one
//! transaction, so the work can neither be lost nor exist without its cause.

use base64::Engine;
use chrono::{DateTime, Utc};
use domain::inbound_email::{valid_message_id, InboundEmail, InboundEmailCommand};
use domain::mailbox::{Mailbox, MailboxCommand, MailboxId};
use domain::tenant::Tenant;
use domain::{Permission, TenantKey, WorkspaceId};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use store::vault::{DelegatedTokens, Vault};
use store::{CommandBus, Metadata, UnitOfWork};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::guard::{self, Owned};
use crate::retry::retrying;
use crate::AppError;

impl Owned for Mailbox {
    const NOUN: &'static str = "mailbox";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

/// What a client id the fingerprints of `clientState` values are keyed under.
const CLIENT_STATE_KEY: &str = "graph-client-state";

/// A new mailbox.
pub struct NewMailbox {
    pub tenant: TenantKey,
    pub address: String,
    /// Delegated tokens from the mailbox owner's consent, if the mailbox uses them.
    pub delegated: Option<DelegatedTokens>,
    /// One older `clientState` still accepted (with a warning), e.g. after a migration.
    pub legacy_client_state: Option<SecretString>,
}

impl std::fmt::Debug for NewMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMailbox")
            .field("tenant", &self.tenant)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A fresh verification token: 32 random bytes, base64url (43 characters; Graph takes 128).
fn verification_token() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of a `clientState`, as the subscription lookup keeps it.
pub fn client_state_hash(value: &str) -> Vec<u8> {
    Sha256::digest(value.as_bytes()).to_vec()
}

/// Inserts (or moves) a mailbox's work row in `uow`, whose commit then wakes the mail
/// workers ([`UnitOfWork::queued_mail_work`]).
pub async fn schedule_work(
    uow: &mut UnitOfWork,
    kind: &str,
    mailbox: MailboxId,
    workspace: &str,
    message_id: Option<&str>,
    due_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    schedule_works(uow, kind, &[(mailbox, workspace, message_id)], due_at).await
}

/// [`schedule_work`] for several rows of one kind (mailbox, workspace, message), in one
/// statement.
async fn schedule_works(
    uow: &mut UnitOfWork,
    kind: &str,
    rows: &[(MailboxId, &str, Option<&str>)],
    due_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    uow.queued_mail_work();
    let keys: Vec<String> = rows
        .iter()
        .map(|(mailbox, _, message)| work_key(kind, *mailbox, *message))
        .collect();
    let mailboxes: Vec<Uuid> = rows.iter().map(|(m, ..)| m.as_uuid()).collect();
    let workspaces: Vec<&str> = rows.iter().map(|(_, w, _)| *w).collect();
    let messages: Vec<Option<&str>> = rows.iter().map(|(.., m)| *m).collect();
    sqlx::query(
        "INSERT INTO mail_work (work_key, kind, mailbox_id, workspace_id, message_id, due_at) \
         SELECT k, $5, m, w, i, $6 FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[]) AS t(k, m, w, i) \
         ON CONFLICT (work_key) DO UPDATE SET due_at = LEAST(mail_work.due_at, EXCLUDED.due_at)",
    )
    .bind(&keys)
    .bind(&mailboxes)
    .bind(&workspaces)
    .bind(&messages)
    .bind(kind)
    .bind(due_at)
    .execute(uow.connection())
    .await?;
    Ok(())
}

/// The key of a work row: one subscription timer and one test per mailbox, one fetch per
/// message.
pub fn work_key(kind: &str, mailbox: MailboxId, message_id: Option<&str>) -> String {
    match message_id {
        Some(m) => format!("{kind}:{mailbox}:{m}"),
        None => format!("{kind}:{mailbox}"),
    }
}

/// Adds a mailbox of a tenant: its events, its verification token and delegated tokens in
/// the vault, and its subscription timer due now, in one transaction.
pub async fn add_mailbox(
    bus: &CommandBus,
    vault: &Vault,
    meta: &Metadata,
    new: NewMailbox,
) -> Result<MailboxId, AppError> {
    let id = MailboxId::new();
    let token = verification_token();
    let workspace = guard::caller_workspace(meta)?;
    let fingerprint = vault.fingerprint(workspace.as_str(), CLIENT_STATE_KEY, &token);
    let legacy = new
        .legacy_client_state
        .as_ref()
        .map(|l| vault.fingerprint(workspace.as_str(), CLIENT_STATE_KEY, l));
    let now = bus.services().clock.now();
    retrying(|| async {
        let mut uow = bus.begin().await?;
        guard::load::<Tenant>(&mut uow, meta, &new.tenant.to_string()).await?;
        uow.execute::<Mailbox>(
            &id.to_string(),
            MailboxCommand::Add {
                workspace: workspace.clone(),
                tenant: new.tenant.clone(),
                address: new.address.clone(),
                verification_fingerprint: fingerprint.clone(),
                legacy_fingerprint: legacy.clone(),
                delegated: new.delegated.is_some(),
            },
            meta,
        )
        .await?;
        vault
            .store_verification_token(uow.connection(), id.as_uuid(), &token)
            .await?;
        if let Some(tokens) = &new.delegated {
            vault
                .store_delegated_tokens(uow.connection(), id.as_uuid(), tokens)
                .await?;
        }
        if let Some(legacy) = &new.legacy_client_state {
            // Kept only as a hash, next to the subscription once there is one.
            sqlx::query(
                "INSERT INTO mail_subscriptions (subscription_id, mailbox_id, workspace_id, tenant_key, client_state_sha256, legacy_state_sha256) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(format!("pending:{id}"))
            .bind(id.as_uuid())
            .bind(workspace.as_str())
            .bind(new.tenant.to_string())
            .bind(client_state_hash(token.expose_secret()))
            .bind(client_state_hash(legacy.expose_secret()))
            .execute(uow.connection())
            .await?;
        }
        schedule_work(
            &mut uow,
            "subscription",
            id,
            workspace.as_str(),
            None,
            now,
        )
        .await?;
        uow.commit().await?;
        Ok(id)
    })
    .await
}

/// Asks for a renewal now: the mailbox shows `renewing` until the worker renewed it.
pub async fn renew_mailbox(
    bus: &CommandBus,
    meta: &Metadata,
    mailbox: MailboxId,
) -> Result<(), AppError> {
    command_with_timer(bus, meta, mailbox, MailboxCommand::RequestRenewal).await
}

/// Disables a mailbox: no notification is accepted any more; the worker deletes its
/// subscription at Graph.
pub async fn disable_mailbox(
    bus: &CommandBus,
    meta: &Metadata,
    mailbox: MailboxId,
) -> Result<(), AppError> {
    command_with_timer(bus, meta, mailbox, MailboxCommand::Disable).await
}

/// A person's command on a mailbox and its subscription timer due now, in one transaction.
/// A disabled mailbox's notifications are unknown from then on.
async fn command_with_timer(
    bus: &CommandBus,
    meta: &Metadata,
    mailbox: MailboxId,
    command: MailboxCommand,
) -> Result<(), AppError> {
    let now = bus.services().clock.now();
    let disabling = command == MailboxCommand::Disable;
    retrying(|| async {
        let mut uow = bus.begin().await?;
        guard::load::<Mailbox>(&mut uow, meta, &mailbox.to_string()).await?;
        uow.execute::<Mailbox>(&mailbox.to_string(), command.clone(), meta)
            .await?;
        if disabling {
            sqlx::query("DELETE FROM mail_subscriptions WHERE mailbox_id = $1")
                .bind(mailbox.as_uuid())
                .execute(uow.connection())
                .await?;
        }
        schedule_work(
            &mut uow,
            "subscription",
            mailbox,
            &meta.workspace,
            None,
            now,
        )
        .await?;
        uow.commit().await?;
        Ok(())
    })
    .await
}

/// Asks for a connection test; its finding is recorded on the mailbox (`MailboxTested`).
pub async fn test_mailbox(
    bus: &CommandBus,
    meta: &Metadata,
    mailbox: MailboxId,
) -> Result<(), AppError> {
    if !meta.role.allows(Permission::StartOperations) {
        return Err(AppError::Forbidden(meta.role));
    }
    let loaded = guard::load::<Mailbox>(bus, meta, &mailbox.to_string()).await?;
    if loaded.aggregate.status == domain::mailbox::MailboxStatus::Disabled {
        return Err(AppError::Refused {
            code: domain::ReasonCode::InvalidTransition,
            message: "the mailbox is disabled".into(),
        });
    }
    let now = bus.services().clock.now();
    let mut uow = bus.begin().await?;
    schedule_work(&mut uow, "test", mailbox, &meta.workspace, None, now).await?;
    uow.commit().await?;
    Ok(())
}

/// One change notification as the webhook read it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub subscription_id: String,
    /// Compared, never logged.
    pub client_state: Option<String>,
    pub message_id: Option<String>,
    pub lifecycle_event: Option<String>,
}

/// What the webhook did with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Recorded (or, for a lifecycle notification, its work scheduled).
    Accepted,
    /// Already recorded: nothing new.
    Duplicate,
    /// Accepted with the legacy `clientState`.
    AcceptedLegacy,
    UnknownSubscription,
    WrongClientState,
    /// No message id, or one that cannot be.
    Malformed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Duplicate => "duplicate",
            Verdict::AcceptedLegacy => "accepted_legacy",
            Verdict::UnknownSubscription => "unknown_subscription",
            Verdict::WrongClientState => "wrong_client_state",
            Verdict::Malformed => "malformed",
        }
    }
}

/// A subscription as the webhook looks it up.
#[derive(sqlx::FromRow)]
struct Known {
    subscription_id: String,
    mailbox_id: Uuid,
    workspace_id: String,
    tenant_key: String,
    client_state_sha256: Vec<u8>,
    legacy_state_sha256: Option<Vec<u8>>,
}

impl Known {
    fn mailbox(&self) -> MailboxId {
        MailboxId(self.mailbox_id)
    }
}

/// Constant-time: how long the comparison takes says nothing about how much matched.
fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Records a batch of notifications: each valid one's `NotificationRecorded` event and its
/// fetch work, all in one short transaction (retried whole after a lost race, which finds
/// the winner's events and records nothing twice). Lifecycle notifications schedule the
/// mailbox's subscription work (and, after `missed`, an inbox catch-up). Returns one
/// verdict per notification, in order.
pub async fn record_notifications(
    bus: &CommandBus,
    notifications: &[Notification],
) -> Result<Vec<Verdict>, AppError> {
    let mut ids: Vec<&str> = notifications
        .iter()
        .map(|n| n.subscription_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<Known> = sqlx::query_as(
        "SELECT subscription_id, mailbox_id, workspace_id, tenant_key, client_state_sha256, legacy_state_sha256 \
         FROM mail_subscriptions WHERE subscription_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(bus.pool())
    .await?;
    let known: std::collections::HashMap<String, Known> = rows
        .into_iter()
        .map(|k| (k.subscription_id.clone(), k))
        .collect();
    let mut verdicts = Vec::with_capacity(notifications.len());
    for n in notifications {
        let Some(k) = known.get(&n.subscription_id) else {
            verdicts.push(Verdict::UnknownSubscription);
            continue;
        };
        let presented = client_state_hash(n.client_state.as_deref().unwrap_or(""));
        let current = same_hash(&presented, &k.client_state_sha256);
        let legacy = k
            .legacy_state_sha256
            .as_deref()
            .is_some_and(|l| same_hash(&presented, l));
        verdicts.push(if current {
            Verdict::Accepted
        } else if legacy {
            Verdict::AcceptedLegacy
        } else {
            Verdict::WrongClientState
        });
    }
    let now = bus.services().clock.now();
    retrying(|| async {
        let mut outcome = verdicts.clone();
        let mut uow = bus.begin().await?;
        let mut messages = Vec::new();
        for (index, (n, verdict)) in notifications.iter().zip(outcome.iter_mut()).enumerate() {
            if !matches!(verdict, Verdict::Accepted | Verdict::AcceptedLegacy) {
                continue;
            }
            let Some(k) = known.get(&n.subscription_id) else {
                continue;
            };
            if let Some(event) = &n.lifecycle_event {
                let kind = if event == "missed" {
                    "catch_up"
                } else {
                    "subscription"
                };
                schedule_work(&mut uow, kind, k.mailbox(), &k.workspace_id, None, now).await?;
                if let Some(e) = domain::mailbox::LifecycleEvent::parse_graph(event) {
                    let meta = system_meta(&k.workspace_id);
                    // A disabled mailbox ignores lifecycle notices; nothing to record.
                    let _ = uow
                        .execute::<Mailbox>(
                            &k.mailbox().to_string(),
                            MailboxCommand::RecordLifecycle { event: e },
                            &meta,
                        )
                        .await;
                }
                continue;
            }
            let Some(message_id) = n
                .message_id
                .as_deref()
                .filter(|m| valid_message_id(m).is_ok())
            else {
                *verdict = Verdict::Malformed;
                continue;
            };
            let (Ok(workspace), Ok(tenant)) = (
                k.workspace_id.parse::<WorkspaceId>(),
                k.tenant_key.parse::<TenantKey>(),
            ) else {
                *verdict = Verdict::Malformed;
                continue;
            };
            messages.push((
                index,
                Notified {
                    mailbox: k.mailbox(),
                    workspace,
                    tenant,
                    message_id: message_id.to_owned(),
                    subscription_id: n.subscription_id.clone(),
                },
            ));
        }
        let (at, notified): (Vec<usize>, Vec<Notified>) = messages.into_iter().unzip();
        let new = record_messages(bus, &mut uow, &notified, now).await?;
        for (i, new) in at.into_iter().zip(new) {
            if !new {
                outcome[i] = Verdict::Duplicate;
            }
        }
        uow.commit().await?;
        Ok(outcome)
    })
    .await
}

/// Records messages found in the inbox after a missed notification as if each had been
/// notified (one transaction; those already notified add nothing). Returns how many were new.
pub async fn record_missed(
    bus: &CommandBus,
    mailbox: MailboxId,
    state: &Mailbox,
    message_ids: &[String],
) -> Result<usize, AppError> {
    let (Some(workspace), Some(tenant)) = (&state.workspace, &state.tenant) else {
        return Err(AppError::NotFound("mailbox"));
    };
    let subscription = state
        .subscription_id
        .clone()
        .unwrap_or_else(|| "missed".to_owned());
    let now = bus.services().clock.now();
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let notified: Vec<Notified> = message_ids
            .iter()
            .filter(|m| valid_message_id(m).is_ok())
            .map(|message_id| Notified {
                mailbox,
                workspace: workspace.clone(),
                tenant: tenant.clone(),
                message_id: message_id.clone(),
                subscription_id: subscription.clone(),
            })
            .collect();
        let new = record_messages(bus, &mut uow, &notified, now)
            .await?
            .into_iter()
            .filter(|new| *new)
            .count();
        uow.commit().await?;
        Ok(new)
    })
    .await
}

/// A message Graph told of (or that was found after a missed notification).
struct Notified {
    mailbox: MailboxId,
    workspace: WorkspaceId,
    tenant: TenantKey,
    message_id: String,
    subscription_id: String,
}

/// Records each message as notified, with its fetch work, in `uow`: one read of all their
/// streams, one append, one insert of the work rows, however many messages. Returns for
/// each whether it was new (a message notified before, or twice in `messages`, is not).
async fn record_messages(
    bus: &CommandBus,
    uow: &mut store::UnitOfWork,
    messages: &[Notified],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, AppError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<(&'static str, String)> = messages
        .iter()
        .map(|m| {
            (
                <InboundEmail as cqrs_es::Aggregate>::TYPE,
                InboundEmail::id(m.mailbox, &m.message_id),
            )
        })
        .collect();
    let mut streams = uow.fetch_streams(&ids).await?;
    let mut staged: std::collections::HashMap<String, store::Staged<InboundEmail>> =
        std::collections::HashMap::new();
    let mut new = Vec::with_capacity(messages.len());
    for (m, (_, id)) in messages.iter().zip(&ids) {
        let stream = match staged.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(streams.stage::<InboundEmail>(id)?)
            }
        };
        let decided = stream
            .decide(
                bus.services(),
                InboundEmailCommand::RecordNotification {
                    workspace: m.workspace.clone(),
                    tenant: m.tenant.clone(),
                    mailbox: m.mailbox,
                    message_id: m.message_id.clone(),
                    subscription_id: m.subscription_id.clone(),
                },
                &system_meta(m.workspace.as_str()),
            )
            .await?;
        new.push(!decided.event_types.is_empty());
    }
    let mut appending: Vec<&mut dyn store::StagedStream> = staged
        .values_mut()
        .map(|s| s as &mut dyn store::StagedStream)
        .collect();
    uow.append_all(&mut appending).await?;
    let fetches: Vec<(MailboxId, &str, Option<&str>)> = messages
        .iter()
        .zip(&new)
        .filter(|(_, new)| **new)
        .map(|(m, _)| (m.mailbox, m.workspace.as_str(), Some(m.message_id.as_str())))
        .collect();
    if !fetches.is_empty() {
        schedule_works(uow, "fetch", &fetches, now).await?;
    }
    Ok(new)
}

/// The engine's metadata in a workspace.
pub fn system_meta(workspace: &str) -> Metadata {
    Metadata::new(workspace, "mail-worker", domain::Role::System)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_hashes_match_and_others_do_not() {
        let a = client_state_hash("token");
        assert!(same_hash(&a, &client_state_hash("token")));
        assert!(!same_hash(&a, &client_state_hash("tokem")));
        assert!(!same_hash(&a, &a[..16]));
    }

    #[test]
    fn verification_tokens_are_long_and_fresh() {
        let (a, b) = (verification_token(), verification_token());
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
