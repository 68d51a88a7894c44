//! The inbound mail read models (R8.1): `rm_mailboxes` (status, subscription, last
//! notification, counters) and `rm_inbound_emails` (one row per notified message, filled in
//! when it is received), from mailbox and inbound email events.
//!
//! Idempotent: mailbox rows carry the mailbox stream's version; an email row is inserted
//! once (its key is its stream) and updated only from a lower version, and the mailbox's
//! counters move only when that insert or update happened, so an event seen twice counts
//! once.

use domain::inbound_email::{InboundEmail, InboundEmailEvent};
use domain::mailbox::{Mailbox, MailboxEvent, MailboxStatus};
use sqlx::types::Json;
use sqlx::PgConnection;
use store::{ConsumerError, StoredEvent};

use crate::event::{events_of, required_meta, serde_name, uuid_id, versioned};

/// Projects mailbox and inbound email events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mailboxes;

const NAME: &str = "mailboxes";

const ADDED: &str = "\
    INSERT INTO rm_mailboxes AS m (mailbox_id, version, workspace_id, tenant_key, address, status, added_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT (mailbox_id) DO NOTHING";
const SUBSCRIBED: &str = "UPDATE rm_mailboxes SET version = $2, status = 'active', \
    degraded_reason = NULL, subscription_id = $3, subscription_expires_at = $4, last_renewed_at = $5 \
    WHERE mailbox_id = $1 AND version < $2";
const STATUS: &str = "UPDATE rm_mailboxes SET version = $2, status = $3 \
    WHERE mailbox_id = $1 AND version < $2";
const LOST: &str = "UPDATE rm_mailboxes SET version = $2, status = 'connecting', \
    subscription_id = NULL, subscription_expires_at = NULL \
    WHERE mailbox_id = $1 AND version < $2";
const DEGRADED: &str = "UPDATE rm_mailboxes SET version = $2, status = 'degraded', \
    degraded_reason = $3 WHERE mailbox_id = $1 AND version < $2";
const TESTED: &str = "UPDATE rm_mailboxes SET version = $2, last_test_reason = $3, \
    last_test_message = $4, last_tested_at = $5 WHERE mailbox_id = $1 AND version < $2";
const VERSION_ONLY: &str =
    "UPDATE rm_mailboxes SET version = $2 WHERE mailbox_id = $1 AND version < $2";

const NOTIFIED: &str = "\
    WITH inserted AS ( \
        INSERT INTO rm_inbound_emails (email_key, version, workspace_id, tenant_key, mailbox_id, \
            message_id, status, notified_at, seq) \
        VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8) \
        ON CONFLICT (email_key) DO NOTHING RETURNING mailbox_id) \
    UPDATE rm_mailboxes SET notifications = notifications + 1, \
        last_notification_at = GREATEST(last_notification_at, $7) \
    WHERE mailbox_id IN (SELECT mailbox_id FROM inserted)";
const RECEIVED: &str = "\
    WITH updated AS ( \
        UPDATE rm_inbound_emails SET version = $2, status = $3, failure_reason = $4, \
            subject = $5, from_address = $6, thread_id = $7, internet_message_id = $8, \
            received_at = $9, email = $10, processed = $11 \
        WHERE email_key = $1 AND version < $2 RETURNING mailbox_id) \
    UPDATE rm_mailboxes SET received = received + 1, \
        fetch_failures = fetch_failures + CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END \
    WHERE mailbox_id IN (SELECT mailbox_id FROM updated)";

#[async_trait::async_trait]
impl store::Consumer for Mailboxes {
    fn name(&self) -> &str {
        NAME
    }

    fn payloads_of(&self) -> store::Payloads {
        store::Payloads::OfAggregates(&[
            <Mailbox as cqrs_es::Aggregate>::TYPE,
            <InboundEmail as cqrs_es::Aggregate>::TYPE,
        ])
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        // In log order across both aggregates: an email's notification may follow its
        // mailbox's creation in the same batch.
        for e in events {
            if e.aggregate_type == <Mailbox as cqrs_es::Aggregate>::TYPE {
                for decoded in events_of::<Mailbox>(NAME, std::slice::from_ref(e)) {
                    let (e, event) = decoded?;
                    apply_mailbox(tx, e, event).await?;
                }
            } else if e.aggregate_type == <InboundEmail as cqrs_es::Aggregate>::TYPE {
                for decoded in events_of::<InboundEmail>(NAME, std::slice::from_ref(e)) {
                    let (e, event) = decoded?;
                    apply_email(tx, e, event).await?;
                }
            }
        }
        Ok(())
    }
}

impl crate::Projection for Mailboxes {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_mailboxes", "rm_inbound_emails"]
    }
}

async fn apply_mailbox(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: MailboxEvent,
) -> Result<(), ConsumerError> {
    let id = uuid_id(e)?;
    let query = match event {
        MailboxEvent::MailboxAdded {
            workspace,
            tenant_key: tenant,
            address,
            added_at,
            ..
        } => versioned(ADDED, id, e)
            .bind(workspace.to_string())
            .bind(tenant.to_string())
            .bind(address)
            .bind(serde_name(e, &MailboxStatus::Connecting)?)
            .bind(added_at),
        MailboxEvent::SubscriptionCreated {
            subscription_id,
            expires_at,
            at,
        }
        | MailboxEvent::SubscriptionRenewed {
            subscription_id,
            expires_at,
            at,
        } => versioned(SUBSCRIBED, id, e)
            .bind(subscription_id)
            .bind(expires_at)
            .bind(at),
        MailboxEvent::RenewalRequested { .. } => {
            versioned(STATUS, id, e).bind(serde_name(e, &MailboxStatus::Renewing)?)
        }
        MailboxEvent::SubscriptionLost { .. } => versioned(LOST, id, e),
        MailboxEvent::LifecycleNotified { .. } => versioned(VERSION_ONLY, id, e),
        MailboxEvent::MailboxDegraded { reason, .. } => {
            versioned(DEGRADED, id, e).bind(reason.as_str())
        }
        MailboxEvent::MailboxTested { outcome, at } => versioned(TESTED, id, e)
            .bind(outcome.reason.map(|r| r.as_str()))
            .bind(outcome.message)
            .bind(at),
        MailboxEvent::MailboxDisabled { .. } => {
            versioned(STATUS, id, e).bind(serde_name(e, &MailboxStatus::Disabled)?)
        }
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

async fn apply_email(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: InboundEmailEvent,
) -> Result<(), ConsumerError> {
    let key = e.aggregate_id.clone();
    let query = match event {
        InboundEmailEvent::NotificationRecorded {
            workspace,
            tenant_key: tenant,
            mailbox,
            message_id,
            at,
            ..
        } => {
            // The workspace in the payload is the one the metadata names.
            let _ = required_meta(e, "workspace")?;
            versioned(NOTIFIED, key, e)
                .bind(workspace.to_string())
                .bind(tenant.to_string())
                .bind(mailbox.as_uuid())
                .bind(message_id)
                .bind(at)
                .bind(e.position.global_position)
        }
        InboundEmailEvent::InboundEmailReceived {
            email,
            failure,
            processed,
            ..
        } => {
            let status = if email.is_some() {
                "received"
            } else {
                "failed"
            };
            let (subject, from, thread, internet_id, received_at) = match &email {
                Some(m) => (
                    Some(m.subject.clone()),
                    m.from.as_ref().map(|f| f.address.clone()),
                    m.thread_id.clone(),
                    m.internet_message_id.clone(),
                    m.received_at,
                ),
                None => (None, None, None, None, None),
            };
            versioned(RECEIVED, key, e)
                .bind(status)
                .bind(failure.map(|f| f.as_str()))
                .bind(subject)
                .bind(from)
                .bind(thread)
                .bind(internet_id)
                .bind(received_at)
                .bind(email.map(Json))
                .bind(processed.map(Json))
        }
    };
    query.execute(&mut *tx).await?;
    Ok(())
}
