//! The InboundEmail aggregate (R6.3, R6.4, R6.6): one message Graph told us about, in one
//! mailbox. Aggregate id: [`InboundEmail::id`] (`<mailbox id>/<Graph message id>`), so a
//! message notified twice lands on the same stream, and the stream's first event can be
//! written only once: the duplicate is recognised by the event store itself.
//!
//! Two events per message: `NotificationRecorded` (written by the webhook before it answers
//! `202`) and `InboundEmailReceived` (written once the message was fetched and marked
//! processed, or, when the fetch failed for good, a minimal one with the reason).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::mailbox::MailboxId;
use crate::values::{TenantKey, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// Longest body text an event keeps (characters); the rest stays in the mailbox.
pub const MAX_BODY_CHARS: usize = 32 * 1024;
/// Most headers an event keeps, and the longest value of one.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_VALUE: usize = 2048;
/// Longest Graph message id accepted.
pub const MAX_MESSAGE_ID: usize = 512;

/// A sender or recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub address: String,
}

/// One internet message header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// What an attachment is (never its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub name: String,
    pub content_type: String,
    pub size: i64,
    #[serde(default)]
    pub inline: bool,
}

/// How the message was marked processed in the mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Processed {
    /// The category was added.
    Categorized { category: String },
    /// Marking failed (the event stands; the mark is cosmetic).
    NotMarked { reason: ReasonCode },
}

/// A fetched message, as the enriched event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailData {
    pub internet_message_id: Option<String>,
    pub subject: String,
    pub from: Option<Participant>,
    pub to: Vec<Participant>,
    pub cc: Vec<Participant>,
    pub received_at: Option<DateTime<Utc>>,
    /// Graph's conversation id: the thread.
    pub thread_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub body_text: String,
    #[serde(default)]
    pub body_truncated: bool,
    pub body_preview: String,
    pub headers: Vec<Header>,
    pub attachments: Vec<AttachmentInfo>,
}

impl EmailData {
    /// Bounds what an event keeps (body, headers) and derives the threading fields from
    /// the headers when the caller left them empty.
    pub fn bounded(mut self) -> Self {
        if self.body_text.chars().count() > MAX_BODY_CHARS {
            self.body_text = self.body_text.chars().take(MAX_BODY_CHARS).collect();
            self.body_truncated = true;
        }
        self.headers.truncate(MAX_HEADERS);
        for h in &mut self.headers {
            if h.value.len() > MAX_HEADER_VALUE {
                h.value = h.value.chars().take(MAX_HEADER_VALUE / 4).collect();
            }
        }
        let header = |name: &str| {
            self.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.trim().to_owned())
        };
        if self.internet_message_id.is_none() {
            self.internet_message_id = header("Message-ID");
        }
        if self.in_reply_to.is_none() {
            self.in_reply_to = header("In-Reply-To");
        }
        if self.references.is_empty() {
            self.references = header("References")
                .map(|r| r.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
        }
        self
    }
}

/// What can be asked of an inbound email.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundEmailCommand {
    /// The webhook accepted a notification for the message. Again: no events.
    RecordNotification {
        workspace: WorkspaceId,
        tenant: TenantKey,
        mailbox: MailboxId,
        message_id: String,
        subscription_id: String,
    },
    /// The message was fetched (`email`) or could not be (`failure`). Again: no events.
    Receive {
        email: Option<Box<EmailData>>,
        failure: Option<ReasonCode>,
        processed: Option<Processed>,
    },
}

impl Authorize for InboundEmailCommand {
    fn permission(&self) -> Permission {
        Permission::RecordProgress
    }
}

/// What happened to an inbound email. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboundEmailEvent {
    NotificationRecorded {
        workspace: WorkspaceId,
        tenant_key: TenantKey,
        mailbox: MailboxId,
        message_id: String,
        subscription_id: String,
        at: DateTime<Utc>,
    },
    /// Enriched (`email`) or minimal (`failure`): either way, one per message.
    InboundEmailReceived {
        mailbox: MailboxId,
        message_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<Box<EmailData>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<ReasonCode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        processed: Option<Processed>,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for InboundEmailEvent {
    fn event_type(&self) -> String {
        match self {
            InboundEmailEvent::NotificationRecorded { .. } => "NotificationRecorded",
            InboundEmailEvent::InboundEmailReceived { .. } => "InboundEmailReceived",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why an inbound email command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundEmailError {
    #[error("no notification was recorded for this message")]
    NotNotified,
    #[error("the message id must be 1-512 visible characters")]
    InvalidMessageId,
    #[error("a received message is either fetched or failed, not both or neither")]
    Ambiguous,
}

impl DomainError for InboundEmailError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            InboundEmailError::NotNotified => ReasonCode::NotFound,
            InboundEmailError::InvalidMessageId | InboundEmailError::Ambiguous => {
                ReasonCode::ValidationFailed
            }
        }
    }
}

/// An inbound email, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct InboundEmail {
    pub mailbox: Option<MailboxId>,
    pub message_id: String,
    pub received: bool,
}

impl InboundEmail {
    /// The stream id of `message_id` in `mailbox`.
    pub fn id(mailbox: MailboxId, message_id: &str) -> String {
        format!("{mailbox}/{message_id}")
    }
}

/// A Graph message id: printable, bounded (it becomes part of a stream id).
pub fn valid_message_id(id: &str) -> Result<(), InboundEmailError> {
    if id.is_empty()
        || id.len() > MAX_MESSAGE_ID
        || id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(InboundEmailError::InvalidMessageId);
    }
    Ok(())
}

impl Aggregate for InboundEmail {
    const TYPE: &'static str = "inbound_email";
    type Command = InboundEmailCommand;
    type Event = InboundEmailEvent;
    type Error = InboundEmailError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: InboundEmailCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), InboundEmailError> {
        let at = services.clock.now();
        let event = match command {
            InboundEmailCommand::RecordNotification {
                workspace,
                tenant,
                mailbox,
                message_id,
                subscription_id,
            } => {
                valid_message_id(&message_id)?;
                self.mailbox
                    .is_none()
                    .then_some(InboundEmailEvent::NotificationRecorded {
                        workspace,
                        tenant_key: tenant,
                        mailbox,
                        message_id,
                        subscription_id,
                        at,
                    })
            }
            InboundEmailCommand::Receive {
                email,
                failure,
                processed,
            } => {
                let mailbox = self.mailbox.ok_or(InboundEmailError::NotNotified)?;
                if email.is_some() == failure.is_some() {
                    return Err(InboundEmailError::Ambiguous);
                }
                (!self.received).then(|| InboundEmailEvent::InboundEmailReceived {
                    mailbox,
                    message_id: self.message_id.clone(),
                    email: email.map(|e| Box::new(e.bounded())),
                    failure,
                    processed,
                    at,
                })
            }
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: InboundEmailEvent) {
        match event {
            InboundEmailEvent::NotificationRecorded {
                mailbox,
                message_id,
                ..
            } => {
                self.mailbox = Some(mailbox);
                self.message_id = message_id;
            }
            InboundEmailEvent::InboundEmailReceived { .. } => self.received = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_event_types_match_payload_tags, now, services, tenant_key};
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<InboundEmail>;

    fn mailbox() -> MailboxId {
        MailboxId(uuid::Uuid::from_u128(7))
    }

    fn notified() -> InboundEmailEvent {
        InboundEmailEvent::NotificationRecorded {
            workspace: crate::testing::workspace(),
            tenant_key: tenant_key(),
            mailbox: mailbox(),
            message_id: "AAMkADm1".into(),
            subscription_id: "sub-1".into(),
            at: now(),
        }
    }

    fn notify() -> InboundEmailCommand {
        InboundEmailCommand::RecordNotification {
            workspace: crate::testing::workspace(),
            tenant: tenant_key(),
            mailbox: mailbox(),
            message_id: "AAMkADm1".into(),
            subscription_id: "sub-1".into(),
        }
    }

    fn email() -> EmailData {
        EmailData {
            internet_message_id: None,
            subject: "Printer".into(),
            from: Some(Participant {
                name: "Pat".into(),
                address: "pat@customer.example".into(),
            }),
            to: vec![],
            cc: vec![],
            received_at: Some(now()),
            thread_id: Some("conv-1".into()),
            in_reply_to: None,
            references: vec![],
            body_text: "jammed".into(),
            body_truncated: false,
            body_preview: "jammed".into(),
            headers: vec![
                Header {
                    name: "Message-ID".into(),
                    value: "<m2@customer.example>".into(),
                },
                Header {
                    name: "In-Reply-To".into(),
                    value: "<m1@customer.example>".into(),
                },
                Header {
                    name: "References".into(),
                    value: "<m0@customer.example> <m1@customer.example>".into(),
                },
            ],
            attachments: vec![],
        }
    }

    #[tokio::test]
    async fn a_first_notification_is_recorded() {
        Given::with(services())
            .given_no_previous_events()
            .when_async(notify())
            .await
            .then_expect_events(vec![notified()]);
    }

    #[tokio::test]
    async fn a_repeated_notification_records_nothing() {
        Given::with(services())
            .given(vec![notified()])
            .when_async(notify())
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn a_fetched_message_takes_its_thread_fields_from_the_headers() {
        let events = Given::with(services())
            .given(vec![notified()])
            .when_async(InboundEmailCommand::Receive {
                email: Some(Box::new(email())),
                failure: None,
                processed: Some(Processed::Categorized {
                    category: "tenantflow".into(),
                }),
            })
            .await
            .inspect_result()
            .unwrap();
        let [InboundEmailEvent::InboundEmailReceived {
            email: Some(email), ..
        }] = &events[..]
        else {
            panic!("{events:?}")
        };
        assert_eq!(
            email.internet_message_id.as_deref(),
            Some("<m2@customer.example>")
        );
        assert_eq!(email.in_reply_to.as_deref(), Some("<m1@customer.example>"));
        assert_eq!(email.references.len(), 2);
    }

    #[tokio::test]
    async fn a_message_is_received_once() {
        let received = InboundEmailEvent::InboundEmailReceived {
            mailbox: mailbox(),
            message_id: "AAMkADm1".into(),
            email: None,
            failure: Some(ReasonCode::MailFetchFailed),
            processed: None,
            at: now(),
        };
        Given::with(services())
            .given(vec![notified(), received])
            .when_async(InboundEmailCommand::Receive {
                email: Some(Box::new(email())),
                failure: None,
                processed: None,
            })
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn a_message_nobody_was_notified_of_cannot_be_received() {
        Given::with(services())
            .given_no_previous_events()
            .when_async(InboundEmailCommand::Receive {
                email: None,
                failure: Some(ReasonCode::MailFetchFailed),
                processed: None,
            })
            .await
            .then_expect_error(InboundEmailError::NotNotified);
    }

    #[tokio::test]
    async fn a_message_id_with_spaces_is_refused() {
        let mut command = notify();
        if let InboundEmailCommand::RecordNotification { message_id, .. } = &mut command {
            *message_id = "a b".into();
        }
        Given::with(services())
            .given_no_previous_events()
            .when_async(command)
            .await
            .then_expect_error(InboundEmailError::InvalidMessageId);
    }

    #[test]
    fn long_bodies_are_cut_and_flagged() {
        let mut e = email();
        e.body_text = "x".repeat(MAX_BODY_CHARS + 10);
        let e = e.bounded();
        assert!(e.body_truncated);
        assert_eq!(e.body_text.len(), MAX_BODY_CHARS);
    }

    #[test]
    fn event_types_match_their_payload_tags() {
        assert_event_types_match_payload_tags(&[notified()]);
    }
}
