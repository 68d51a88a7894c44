//! Inbound mail in the API (R6, R8.1): mailboxes and inbound emails (read models), the
//! mutations that add, test, renew and disable a mailbox, and a live feed of received
//! email. The roots delegate here with one line per field.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use domain::inbound_email::EmailData;
use domain::mailbox::MailboxId;
use secrecy::SecretString;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::errors::{app_error, internal, invalid};
use super::page::{connection, Cursor, PageRequest};
use super::query::{caller, reader, reader_for, state};

/// Where a mailbox stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MailboxStatus {
    Connecting,
    Active,
    Renewing,
    Degraded,
    Disabled,
}

impl MailboxStatus {
    fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "renewing" => Self::Renewing,
            "degraded" => Self::Degraded,
            "disabled" => Self::Disabled,
            _ => Self::Connecting,
        }
    }
}

pub(crate) const MAILBOX_COLUMNS: &str = "mailbox_id, tenant_key, address, status, degraded_reason, \
    subscription_id, subscription_expires_at, last_renewed_at, last_notification_at, notifications, \
    received, fetch_failures, last_test_reason, last_test_message, last_tested_at, added_at";

/// A mailbox whose new mail reaches tenantflow.
#[derive(sqlx::FromRow, Clone)]
pub struct MailboxNode {
    mailbox_id: Uuid,
    tenant_key: String,
    address: String,
    status: String,
    degraded_reason: Option<String>,
    subscription_id: Option<String>,
    subscription_expires_at: Option<DateTime<Utc>>,
    last_renewed_at: Option<DateTime<Utc>>,
    last_notification_at: Option<DateTime<Utc>>,
    notifications: i64,
    received: i64,
    fetch_failures: i64,
    last_test_reason: Option<String>,
    last_test_message: Option<String>,
    last_tested_at: Option<DateTime<Utc>>,
    added_at: DateTime<Utc>,
}

/// What the last connection test found.
#[derive(SimpleObject, Clone)]
pub struct MailboxTest {
    /// `true` when the mailbox answers and is the configured one.
    pub ok: bool,
    /// Why not (`mailbox_mismatch`, `provider_auth_failed`, ...).
    pub reason_code: Option<String>,
    pub message: Option<String>,
    pub tested_at: DateTime<Utc>,
}

#[Object(name = "Mailbox")]
impl MailboxNode {
    pub(crate) async fn id(&self) -> ID {
        ID(self.mailbox_id.to_string())
    }
    #[graphql(name = "tenantId")]
    async fn tenant_id(&self) -> &str {
        &self.tenant_key
    }
    async fn address(&self) -> &str {
        &self.address
    }
    async fn status(&self) -> MailboxStatus {
        MailboxStatus::parse(&self.status)
    }
    /// Why the mailbox is degraded.
    async fn degraded_reason_code(&self) -> Option<&str> {
        self.degraded_reason.as_deref()
    }
    async fn subscription_id(&self) -> Option<&str> {
        self.subscription_id.as_deref()
    }
    async fn subscription_expires_at(&self) -> Option<DateTime<Utc>> {
        self.subscription_expires_at
    }
    async fn last_renewed_at(&self) -> Option<DateTime<Utc>> {
        self.last_renewed_at
    }
    async fn last_notification_at(&self) -> Option<DateTime<Utc>> {
        self.last_notification_at
    }
    /// Notifications recorded (each message once).
    async fn notifications(&self) -> i64 {
        self.notifications
    }
    /// Messages received (enriched or minimal).
    async fn received(&self) -> i64 {
        self.received
    }
    /// Messages that could not be fetched (minimal events).
    async fn fetch_failures(&self) -> i64 {
        self.fetch_failures
    }
    async fn last_test(&self) -> Option<MailboxTest> {
        self.last_tested_at.map(|at| MailboxTest {
            ok: self.last_test_reason.is_none(),
            reason_code: self.last_test_reason.clone(),
            message: self.last_test_message.clone(),
            tested_at: at,
        })
    }
    async fn added_at(&self) -> DateTime<Utc> {
        self.added_at
    }
}

pub(crate) const EMAIL_COLUMNS: &str = "email_key, mailbox_id, tenant_key, message_id, status, \
    failure_reason, subject, from_address, thread_id, internet_message_id, received_at, notified_at, \
    email, processed, seq";

/// A message a mailbox received.
#[derive(sqlx::FromRow, Clone)]
pub struct InboundEmailNode {
    email_key: String,
    mailbox_id: Uuid,
    tenant_key: String,
    message_id: String,
    status: String,
    failure_reason: Option<String>,
    subject: Option<String>,
    from_address: Option<String>,
    thread_id: Option<String>,
    internet_message_id: Option<String>,
    received_at: Option<DateTime<Utc>>,
    notified_at: DateTime<Utc>,
    email: Option<Json<EmailData>>,
    processed: Option<Json<serde_json::Value>>,
    seq: i64,
}

/// A sender or recipient.
#[derive(SimpleObject, Clone)]
pub struct EmailParticipant {
    pub name: String,
    pub address: String,
}

/// An internet message header.
#[derive(SimpleObject, Clone)]
pub struct EmailHeader {
    pub name: String,
    pub value: String,
}

/// What an attachment is (its content stays in the mailbox).
#[derive(SimpleObject, Clone)]
pub struct EmailAttachment {
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub inline: bool,
}

fn participant(p: &domain::inbound_email::Participant) -> EmailParticipant {
    EmailParticipant {
        name: p.name.clone(),
        address: p.address.clone(),
    }
}

#[Object(name = "InboundEmail")]
impl InboundEmailNode {
    pub(crate) async fn id(&self) -> ID {
        ID(self.email_key.clone())
    }
    async fn mailbox_id(&self) -> ID {
        ID(self.mailbox_id.to_string())
    }
    #[graphql(name = "tenantId")]
    async fn tenant_id(&self) -> &str {
        &self.tenant_key
    }
    /// Graph's message id.
    async fn message_id(&self) -> &str {
        &self.message_id
    }
    /// `pending` (notified, not fetched yet), `received` or `failed` (minimal event).
    async fn status(&self) -> &str {
        &self.status
    }
    async fn failure_reason_code(&self) -> Option<&str> {
        self.failure_reason.as_deref()
    }
    async fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    async fn from_address(&self) -> Option<&str> {
        self.from_address.as_deref()
    }
    /// The conversation (Graph's conversationId).
    async fn thread_id(&self) -> Option<&str> {
        self.thread_id.as_deref()
    }
    /// The `Message-ID` header.
    async fn internet_message_id(&self) -> Option<&str> {
        self.internet_message_id.as_deref()
    }
    async fn in_reply_to(&self) -> Option<String> {
        self.email.as_ref().and_then(|e| e.in_reply_to.clone())
    }
    async fn references(&self) -> Vec<String> {
        self.email
            .as_ref()
            .map(|e| e.references.clone())
            .unwrap_or_default()
    }
    async fn to(&self) -> Vec<EmailParticipant> {
        self.email
            .as_ref()
            .map(|e| e.to.iter().map(participant).collect())
            .unwrap_or_default()
    }
    async fn cc(&self) -> Vec<EmailParticipant> {
        self.email
            .as_ref()
            .map(|e| e.cc.iter().map(participant).collect())
            .unwrap_or_default()
    }
    async fn body_text(&self) -> Option<String> {
        self.email.as_ref().map(|e| e.body_text.clone())
    }
    async fn body_preview(&self) -> Option<String> {
        self.email.as_ref().map(|e| e.body_preview.clone())
    }
    async fn headers(&self) -> Vec<EmailHeader> {
        self.email
            .as_ref()
            .map(|e| {
                e.headers
                    .iter()
                    .map(|h| EmailHeader {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    async fn attachments(&self) -> Vec<EmailAttachment> {
        self.email
            .as_ref()
            .map(|e| {
                e.attachments
                    .iter()
                    .map(|a| EmailAttachment {
                        name: a.name.clone(),
                        content_type: a.content_type.clone(),
                        size: a.size,
                        inline: a.inline,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    /// The category it was marked with, once received.
    async fn processed_category(&self) -> Option<String> {
        self.processed
            .as_ref()
            .and_then(|p| p.0.get("categorized"))
            .and_then(|c| c.get("category"))
            .and_then(|c| c.as_str())
            .map(str::to_owned)
    }
    async fn received_at(&self) -> Option<DateTime<Utc>> {
        self.received_at
    }
    async fn notified_at(&self) -> DateTime<Utc> {
        self.notified_at
    }
}

/// Which inbound emails to list.
#[derive(InputObject, Default)]
pub struct InboundEmailFilter {
    pub mailbox_id: Option<ID>,
    #[graphql(name = "tenantId")]
    pub tenant_id: Option<String>,
    pub thread_id: Option<String>,
    /// Received at or after.
    pub received_after: Option<DateTime<Utc>>,
    /// Received before.
    pub received_before: Option<DateTime<Utc>>,
}

/// A mailbox (by its UUID) for `node(id:)`.
pub(crate) async fn mailbox_node(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
) -> async_graphql::Result<Option<MailboxNode>> {
    sqlx::query_as(&format!(
        "SELECT {MAILBOX_COLUMNS} FROM rm_mailboxes WHERE mailbox_id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)
}

/// Whether `id` has the shape of an inbound email's key, `<mailbox id>/<Graph message id>`.
pub(crate) fn is_email_key(id: &str) -> bool {
    id.split_once('/').is_some_and(|(mailbox, message)| {
        Uuid::try_parse(mailbox).is_ok() && domain::inbound_email::valid_message_id(message).is_ok()
    })
}

/// An inbound email by its key, for `node(id:)`.
pub(crate) async fn email_node(
    tx: &mut sqlx::PgConnection,
    key: &str,
) -> async_graphql::Result<Option<InboundEmailNode>> {
    sqlx::query_as(&format!(
        "SELECT {EMAIL_COLUMNS} FROM rm_inbound_emails WHERE email_key = $1"
    ))
    .bind(key)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)
}

fn mailbox_id(id: &str) -> async_graphql::Result<MailboxId> {
    id.trim()
        .parse()
        .map_err(|_| invalid("not a valid mailbox id"))
}

fn bounded<'a>(s: &'a str, what: &str) -> async_graphql::Result<&'a str> {
    if s.len() > 512 {
        return Err(invalid(format!("`{what}` is at most 512 characters")));
    }
    Ok(s)
}

/// `mailboxes`: the workspace's mailboxes, oldest first.
pub(crate) async fn mailboxes(
    ctx: &Context<'_>,
    tenant_id: Option<String>,
    first: Option<i32>,
    after: Option<String>,
) -> async_graphql::Result<Connection<Cursor, MailboxNode>> {
    let page = PageRequest::parse(first, after)?;
    let caller = caller(ctx)?;
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {MAILBOX_COLUMNS} FROM rm_mailboxes WHERE workspace_id = "
    ));
    q.push_bind(&caller.workspace);
    if let Some(t) = &tenant_id {
        q.push(" AND tenant_key = ")
            .push_bind(bounded(t, "tenantId")?.to_owned());
    }
    if let Some(id) = page.key_str(0)? {
        q.push(" AND mailbox_id > ")
            .push_bind(mailbox_id(&id)?.as_uuid());
    }
    q.push(" ORDER BY mailbox_id LIMIT ").push(page.limit());
    let mut tx = reader(ctx).await?;
    let rows: Vec<MailboxNode> = q
        .build_query_as()
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
    Ok(connection(&page, rows, |m| {
        vec![m.mailbox_id.to_string().into()]
    }))
}

/// `mailbox(id:)`.
pub(crate) async fn mailbox(
    ctx: &Context<'_>,
    id: ID,
) -> async_graphql::Result<Option<MailboxNode>> {
    let id = mailbox_id(&id)?;
    let mut tx = reader(ctx).await?;
    mailbox_node(&mut tx, id.as_uuid()).await
}

/// `inboundEmails`: newest first.
pub(crate) async fn inbound_emails(
    ctx: &Context<'_>,
    filter: Option<InboundEmailFilter>,
    first: Option<i32>,
    after: Option<String>,
) -> async_graphql::Result<Connection<Cursor, InboundEmailNode>> {
    let page = PageRequest::parse(first, after)?;
    let filter = filter.unwrap_or_default();
    let caller = caller(ctx)?;
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {EMAIL_COLUMNS} FROM rm_inbound_emails WHERE workspace_id = "
    ));
    q.push_bind(&caller.workspace);
    if let Some(m) = &filter.mailbox_id {
        q.push(" AND mailbox_id = ")
            .push_bind(mailbox_id(m)?.as_uuid());
    }
    if let Some(t) = &filter.tenant_id {
        q.push(" AND tenant_key = ")
            .push_bind(bounded(t, "tenantId")?.to_owned());
    }
    if let Some(t) = &filter.thread_id {
        q.push(" AND thread_id = ")
            .push_bind(bounded(t, "threadId")?.to_owned());
    }
    if let Some(t) = filter.received_after {
        q.push(" AND received_at >= ").push_bind(t);
    }
    if let Some(t) = filter.received_before {
        q.push(" AND received_at < ").push_bind(t);
    }
    if let Some(seq) = page.key_i64(0)? {
        q.push(" AND seq < ").push_bind(seq);
    }
    q.push(" ORDER BY seq DESC LIMIT ").push(page.limit());
    let mut tx = reader(ctx).await?;
    let rows: Vec<InboundEmailNode> = q
        .build_query_as()
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
    Ok(connection(&page, rows, |e| vec![e.seq.into()]))
}

/// A new mailbox.
#[derive(InputObject)]
pub struct AddMailboxInput {
    #[graphql(name = "tenantId")]
    pub tenant_id: String,
    pub address: String,
    /// The mailbox owner's delegated refresh token, if the mailbox uses delegated access;
    /// sealed in the vault, never returned.
    #[graphql(secret)]
    pub refresh_token: Option<String>,
    /// An older `clientState` still accepted (with a warning) until the subscription is
    /// recreated.
    #[graphql(secret)]
    pub legacy_client_state: Option<String>,
}

/// The mailbox a mutation acted on.
#[derive(SimpleObject)]
pub struct MailboxPayload {
    pub mailbox_id: ID,
}

pub(crate) async fn add_mailbox(
    ctx: &Context<'_>,
    meta: store::Metadata,
    input: AddMailboxInput,
) -> async_graphql::Result<MailboxPayload> {
    let tenant: domain::TenantKey = input
        .tenant_id
        .parse()
        .map_err(|e: domain::ValueError| invalid(e.to_string()))?;
    let st = state(ctx)?;
    let delegated = input.refresh_token.map(|r| store::DelegatedTokens {
        access_token: SecretString::from(String::new()),
        refresh_token: SecretString::from(r),
        // Expired: the first use refreshes it.
        expires_at: DateTime::<Utc>::MIN_UTC,
    });
    let id = app::mailboxes::add_mailbox(
        &st.bus,
        &st.vault,
        &meta,
        app::mailboxes::NewMailbox {
            tenant,
            address: input.address,
            delegated,
            legacy_client_state: input.legacy_client_state.map(SecretString::from),
        },
    )
    .await
    .map_err(app_error)?;
    Ok(MailboxPayload {
        mailbox_id: ID(id.to_string()),
    })
}

/// Which mailbox use case a mutation runs.
pub(crate) enum MailboxAction {
    Test,
    Renew,
    Disable,
}

pub(crate) async fn act(
    ctx: &Context<'_>,
    meta: store::Metadata,
    id: ID,
    action: MailboxAction,
) -> async_graphql::Result<MailboxPayload> {
    let mailbox = mailbox_id(&id)?;
    let bus = &state(ctx)?.bus;
    match action {
        MailboxAction::Test => app::mailboxes::test_mailbox(bus, &meta, mailbox).await,
        MailboxAction::Renew => app::mailboxes::renew_mailbox(bus, &meta, mailbox).await,
        MailboxAction::Disable => app::mailboxes::disable_mailbox(bus, &meta, mailbox).await,
    }
    .map_err(app_error)?;
    Ok(MailboxPayload { mailbox_id: id })
}

/// How often the live feed looks for newly received email.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// `inboundEmailReceived`: each email of the workspace (or of one mailbox) once it is
/// received, from the moment of subscribing.
pub(crate) async fn received_feed(
    ctx: &Context<'_>,
    mailbox: Option<ID>,
) -> async_graphql::Result<impl futures::Stream<Item = async_graphql::Result<InboundEmailNode>>> {
    let mailbox = mailbox.map(|m| mailbox_id(&m)).transpose()?;
    let workspace = caller(ctx)?.workspace.clone();
    let pool = state(ctx)?.pool.clone();
    let start: i64 = {
        let mut tx = reader_for(&pool, &workspace).await?;
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM rm_inbound_emails")
            .fetch_one(&mut *tx)
            .await
            .map_err(internal)?
    };
    Ok(async_stream::stream! {
        // Emails notified before subscribing but received after are not pending anymore
        // when seen; the feed follows notification order and waits on pending ones.
        let mut next = start;
        loop {
            tokio::time::sleep(FEED_POLL).await;
            let rows: Result<Vec<InboundEmailNode>, _> = async {
                let mut tx = reader_for(&pool, &workspace).await?;
                let mut q = QueryBuilder::<Postgres>::new(format!(
                    "SELECT {EMAIL_COLUMNS} FROM rm_inbound_emails WHERE seq > "
                ));
                q.push_bind(next);
                if let Some(m) = mailbox {
                    q.push(" AND mailbox_id = ").push_bind(m.as_uuid());
                }
                q.push(" ORDER BY seq LIMIT 100");
                q.build_query_as().fetch_all(&mut *tx).await.map_err(internal)
            }
            .await;
            match rows {
                Ok(rows) => {
                    for row in rows {
                        if row.status == "pending" {
                            break;
                        }
                        next = row.seq;
                        yield Ok(row);
                    }
                }
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
    })
}
