//! GraphQL object types: rows of the read models. Secrets have no column to come from.

use async_graphql::{ComplexObject, Context, Enum, Interface, OneofObject, SimpleObject, ID};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use domain::run::NextStep;
use domain::RunId;

use super::enums::{stored, ConnectionStatus, HealthStatus, RunOutcome, RunStatus, TenantStatus};
use super::errors::internal;
use super::next_steps::{links, of_run};
use super::query::reader;

/// Anything with a global id, refetchable with `node(id:)` (the Relay convention). Ids are
/// the entities' own (a tenant key, a run's or connection's or snapshot's or client's or
/// contact's or mailbox's UUID, a schedule's `<workspace>:<run type>`, an inbound email's
/// `<mailbox id>/<Graph message id>`): unique across types, and the
/// same after any rebuild of the read models.
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID", desc = "The global id."))]
pub enum Node {
    Tenant(TenantNode),
    ProviderConnection(ConnectionNode),
    Run(RunNode),
    PolicySnapshot(SnapshotNode),
    Schedule(ScheduleNode),
    Client(super::contacts::ClientNode),
    Contact(super::contacts::ContactNode),
    Mailbox(super::mail::MailboxNode),
    InboundEmail(Box<super::mail::InboundEmailNode>),
}

#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex, name = "Tenant")]
pub struct TenantNode {
    /// The tenant key: `<workspace>:<entra tenant guid>` (shown as `id`).
    #[graphql(skip)]
    pub tenant_key: String,
    pub entra_tenant_id: Uuid,
    pub display_name: String,
    pub primary_domain: String,
    #[graphql(skip)]
    pub status: String,
    pub registered_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub last_resynced_at: Option<DateTime<Utc>>,
    #[graphql(skip)]
    pub intent_snapshot_id: Option<Uuid>,
    #[graphql(skip)]
    pub intent_hash: Option<String>,
    #[graphql(skip)]
    pub intent_seeded_at: Option<DateTime<Utc>>,
}

#[ComplexObject]
impl TenantNode {
    /// The tenant key, `<workspace>:<entra tenant guid>`: also its global id (`node`).
    async fn id(&self) -> ID {
        ID(self.tenant_key.clone())
    }

    async fn status(&self) -> async_graphql::Result<TenantStatus> {
        domain::tenant::TenantStatus::parse(&self.status)
            .map(TenantStatus::from)
            .ok_or_else(|| {
                internal(sqlx::Error::Decode(
                    format!("a tenant's stored status `{}`", self.status).into(),
                ))
            })
    }

    /// The tenant's intended Conditional Access policies, seeded by its latest import
    /// (`resyncTenant(source: IMPORT)`); null until one is imported.
    async fn policy_intent(&self) -> Option<PolicyIntent> {
        match (
            self.intent_snapshot_id,
            &self.intent_hash,
            self.intent_seeded_at,
        ) {
            (Some(snapshot_id), Some(hash), Some(seeded_at)) => Some(PolicyIntent {
                snapshot_id,
                hash: hash.clone(),
                seeded_at,
            }),
            _ => None,
        }
    }

    /// The tenant's provider connections.
    async fn connections(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ConnectionNode>> {
        let mut tx = reader(ctx).await?;
        sqlx::query_as::<_, ConnectionNode>(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM rm_connections WHERE tenant_key = $1 ORDER BY created_at, connection_id LIMIT 100"
        ))
        .bind(&self.tenant_key)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)
    }
}

/// `FromRow` for a node whose fields are its statement's columns, in order (its `*_COLUMNS`):
/// each read by position. sqlx's derived one finds each column by its name, hashing it, on
/// every row: about a third of a tenant list page's decoding, a tenth of its request's CPU
/// in this process at 32 clients (docs/BENCHMARKS.md). The columns' names are checked
/// against the fields' first, on each row, so a statement with other columns fails rather
/// than fill the wrong fields. A field marked `json` is read from a JSON column.
macro_rules! from_row_by_position {
    ($node:ident { $($field:ident $(: $json:ident)?),+ $(,)? }) => {
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $node {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
                use sqlx::{Column as _, Row as _};
                const NAMES: &[&str] = &[$(stringify!($field)),+];
                let columns = row.columns();
                if columns.len() != NAMES.len()
                    || columns.iter().zip(NAMES).any(|(c, name)| c.name() != *name)
                {
                    return Err(sqlx::Error::ColumnNotFound(format!(
                        "{} reads the columns {}",
                        stringify!($node),
                        NAMES.join(", ")
                    )));
                }
                let mut next = 0..;
                let mut at = || next.next().unwrap_or_default();
                Ok(Self {
                    $($field: from_row_by_position!(@read row, at() $(, $json)?)),+
                })
            }
        }
    };
    (@read $row:ident, $at:expr) => { $row.try_get($at)? };
    (@read $row:ident, $at:expr, json) => { $row.try_get::<sqlx::types::Json<_>, _>($at)?.0 };
}

from_row_by_position!(TenantNode {
    tenant_key,
    entra_tenant_id,
    display_name,
    primary_domain,
    status,
    registered_at,
    archived_at,
    last_resynced_at,
    intent_snapshot_id,
    intent_hash,
    intent_seeded_at,
});

pub const TENANT_COLUMNS: &str =
    "tenant_key, entra_tenant_id, display_name, primary_domain, status, registered_at, archived_at, last_resynced_at, \
     intent_snapshot_id, intent_hash, intent_seeded_at";

/// A tenant's policy intent: the imported snapshot whose policies are the intended state.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex)]
pub struct PolicyIntent {
    /// The imported snapshot (see `snapshots`).
    pub snapshot_id: Uuid,
    /// The snapshot's hash.
    pub hash: String,
    pub seeded_at: DateTime<Utc>,
}

#[ComplexObject]
impl PolicyIntent {
    /// The imported snapshot itself, with its policies.
    async fn snapshot(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<SnapshotNode>> {
        let mut tx = reader(ctx).await?;
        sqlx::query_as(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM rm_policy_snapshots WHERE snapshot_id = $1"
        ))
        .bind(self.snapshot_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)
    }
}

/// A tenant's connection to a provider (Microsoft): how tenantflow reaches the tenant.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "ProviderConnection")]
pub struct ConnectionNode {
    #[graphql(skip)]
    pub connection_id: Uuid,
    #[graphql(name = "tenantId")]
    pub tenant_key: String,
    pub provider: String,
    pub entra_tenant_id: Uuid,
    pub display_name: String,
    pub is_default: bool,
    #[graphql(skip)]
    pub status: String,
    #[graphql(skip)]
    pub health_status: String,
    pub consent_granted: bool,
    pub scopes_granted: serde_json::Value,
    /// A keyed fingerprint of the current credential (never the secret).
    pub credential_fingerprint: Option<String>,
    pub credential_set_at: Option<DateTime<Utc>>,
    pub credential_set_by: Option<String>,
    pub last_health_check_at: Option<DateTime<Utc>>,
    pub last_error_reason_code: Option<String>,
    pub last_error_message: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[ComplexObject]
impl ConnectionNode {
    /// The connection id: also its global id (`node`).
    async fn id(&self) -> ID {
        ID(self.connection_id.to_string())
    }

    async fn status(&self) -> async_graphql::Result<ConnectionStatus> {
        stored::<domain::connection::ConnectionStatus, _>(&self.status)
    }

    async fn health_status(&self) -> async_graphql::Result<HealthStatus> {
        stored::<domain::connection::HealthStatus, _>(&self.health_status)
    }

    /// Which Microsoft Graph this connection's workflows call: the service's Graph base
    /// URL, or `simulator` while the service runs the demo (never real tenants' data).
    async fn graph_endpoint(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(super::query::state(ctx)?.graph_endpoint.clone())
    }
}

pub(crate) const CONNECTION_COLUMNS: &str = "connection_id, tenant_key, provider, entra_tenant_id, display_name, is_default, \
     status, health_status, consent_granted, scopes_granted, credential_fingerprint, credential_set_at, credential_set_by, \
     last_health_check_at, last_error_reason_code, last_error_message, created_at";

#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex, name = "Run")]
pub struct RunNode {
    #[graphql(skip)]
    pub run_id: Uuid,
    #[graphql(name = "type")]
    pub run_type: String,
    #[graphql(name = "tenantId")]
    pub tenant_key: Option<String>,
    #[graphql(skip)]
    pub status: String,
    #[graphql(skip)]
    pub outcome: String,
    /// A cancellation was asked for while the run was running: it stops at its next step.
    pub cancel_requested: bool,
    // The JSON columns stay text until their field is asked for: a list page of runs does
    // not ask for them, and parsing them for every row cost the run list about a tenth of
    // its pages at 32 clients (docs/BENCHMARKS.md).
    #[graphql(skip)]
    pub context: LazyJson,
    pub initiator: String,
    #[graphql(skip)]
    pub summary_counts: LazyJson,
    #[graphql(skip)]
    pub failure_summary: Option<LazyJson>,
    pub reason_code: Option<String>,
    /// Rendered as links by the `nextSteps` field.
    #[graphql(skip)]
    pub next_steps: Vec<NextStep>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The failed, blocked or cancelled run this one starts again (see `retryRun`).
    pub retry_of: Option<Uuid>,
}

/// A run's status as the API shows it, over `rm_runs`: one literal for [`RUN_COLUMNS`] and
/// [`RUN_STATUS`], so the column shown and the filter on it cannot differ.
macro_rules! run_status {
    () => {
        "CASE WHEN status = 'queued' THEN tenantflow_run_status(run_id, status) ELSE status END"
    };
}

/// A run's columns, from `rm_runs`. A running run's start and steps are in its checkpoint
/// until its end carries them into the log (issue 13), so its status and start time come
/// from there while its row says queued (see [`RUN_STATUS`]). The functions that look
/// there are called only for the rows that need them (a queued status, no start time): a
/// call per row, even one that returns its argument, tripled the cost of a page of ended
/// runs (0.72 ms against 0.26 ms in `pgbench`).
pub const RUN_COLUMNS: &str = concat!(
    "run_id, run_type, tenant_key, ",
    run_status!(),
    " AS status, outcome, cancel_requested, context, initiator, summary_counts, failure_summary, \
     reason_code, next_steps, queued_at, \
     coalesce(started_at, tenantflow_run_started_at(run_id, NULL)) AS started_at, completed_at, retry_of"
);

from_row_by_position!(RunNode {
    run_id,
    run_type,
    tenant_key,
    status,
    outcome,
    cancel_requested,
    context,
    initiator,
    summary_counts,
    failure_summary,
    reason_code,
    next_steps: json,
    queued_at,
    started_at,
    completed_at,
    retry_of,
});

/// A run's status as the API shows it, for filters over `rm_runs` (as in [`RUN_COLUMNS`]).
pub(crate) const RUN_STATUS: &str = run_status!();

/// A run's recorded step attempts, in order (a running run's newer ones are in its
/// checkpoint).
pub const RUN_STEPS_SQL: &str =
    "SELECT step, attempt, status, reason_code, message, summary, retry_at, started_at, recorded_at \
     FROM rm_run_steps WHERE run_id = $1 ORDER BY recorded_at, step, attempt LIMIT 500";

/// A `json`/`jsonb` column's text as the database sent it, parsed when a resolver asks for
/// it. PostgreSQL checked it when it was written, so a row is not read through twice for a
/// field a list page does not show (sqlx's `Json<RawValue>` parses every value to check it).
#[derive(Debug, Clone)]
pub struct LazyJson(Box<str>);

impl LazyJson {
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl sqlx::Type<sqlx::Postgres> for LazyJson {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <serde_json::Value as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <serde_json::Value as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for LazyJson {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef;
        let jsonb_binary = value.format() == sqlx::postgres::PgValueFormat::Binary
            && *value.type_info() == <serde_json::Value as sqlx::Type<sqlx::Postgres>>::type_info();
        let mut text = value.as_bytes()?;
        if jsonb_binary {
            // jsonb's binary form is a version byte, then the text.
            text = match text.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("an unknown jsonb format version".into()),
            };
        }
        Ok(Self(std::str::from_utf8(text)?.into()))
    }
}

fn parsed(json: &LazyJson) -> async_graphql::Result<serde_json::Value> {
    serde_json::from_str(json.get()).map_err(|e| internal(sqlx::Error::Decode(Box::new(e))))
}

#[ComplexObject]
impl RunNode {
    /// The run id: also its global id (`node`).
    async fn id(&self) -> ID {
        ID(self.run_id.to_string())
    }

    // Fields of the row, without descriptions (as when they were plain fields).
    async fn context(&self) -> async_graphql::Result<serde_json::Value> {
        parsed(&self.context)
    }

    async fn summary_counts(&self) -> async_graphql::Result<serde_json::Value> {
        parsed(&self.summary_counts)
    }

    async fn failure_summary(&self) -> async_graphql::Result<Option<serde_json::Value>> {
        self.failure_summary.as_ref().map(parsed).transpose()
    }

    async fn status(&self) -> async_graphql::Result<RunStatus> {
        stored::<domain::run::RunStatus, _>(&self.status)
    }

    async fn outcome(&self) -> async_graphql::Result<RunOutcome> {
        stored::<domain::run::RunOutcome, _>(&self.outcome)
    }

    /// What a person can do about a blocked or failed run: links into the product,
    /// `[{ "label": ..., "href": ... }]`, one per step its reason calls for (check the
    /// service status, fix permissions, grant consent again, provide a new secret, ...).
    /// Empty for other runs.
    async fn next_steps(&self) -> serde_json::Value {
        let steps = of_run(&self.next_steps, &self.outcome, self.reason_code.as_deref());
        links(&steps, self.tenant_key.as_deref())
    }

    /// Every recorded step attempt, in order.
    // Those of the read model, and a running run's from its checkpoint (the read model
    // learns them at the run's end: issue 13).
    async fn steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunStep>> {
        let mut tx = reader(ctx).await?;
        let mut steps = sqlx::query_as::<_, RunStep>(RUN_STEPS_SQL)
            .bind(self.run_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        let progress = store::checkpoints::progress(&mut tx, RunId(self.run_id))
            .await
            .map_err(internal)?;
        for event in progress {
            let Some(attempt) = RunStep::of(event) else {
                continue;
            };
            match steps
                .iter_mut()
                .find(|s| s.step == attempt.step && s.attempt == attempt.attempt)
            {
                // An attempt logged before the checkpoint held its later events.
                Some(known) if known.recorded_at < attempt.recorded_at => {
                    let started_at = known.started_at.or(attempt.started_at);
                    *known = RunStep {
                        started_at,
                        ..attempt
                    };
                }
                Some(_) => {}
                None => steps.push(attempt),
            }
        }
        steps.sort_by(|a, b| {
            (a.recorded_at, &a.step, a.attempt).cmp(&(b.recorded_at, &b.step, b.attempt))
        });
        Ok(steps)
    }

    /// The policy snapshot a resync or import ended with: the one it wrote, or the
    /// existing one when the policies were unchanged. Null for other runs and before the
    /// snapshot step has completed.
    async fn snapshot_id(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Uuid>> {
        let steps = self.steps(ctx).await?;
        Ok(steps
            .iter()
            .rev()
            .filter(|s| s.status == "completed")
            .find_map(|s| s.summary.as_ref()?.get("snapshot_id")?.as_str())
            .and_then(|s| Uuid::try_parse(s).ok()))
    }

    /// The snapshot of `snapshotId`, with its policies and diff.
    async fn snapshot(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<SnapshotNode>> {
        let Some(id) = self.snapshot_id(ctx).await? else {
            return Ok(None);
        };
        let mut tx = reader(ctx).await?;
        sqlx::query_as(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM rm_policy_snapshots WHERE snapshot_id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)
    }

    /// Every event of the run, in the log's order, with its timing: read from the
    /// event log itself, so it is complete even while the read models catch up.
    async fn history(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunHistoryEvent>> {
        let mut tx = reader(ctx).await?;
        let entries = store::history::run_history(&mut tx, RunId(self.run_id))
            .await
            .map_err(internal)?;
        Ok(entries.into_iter().map(RunHistoryEvent::from).collect())
    }
}

/// One event of a run's history.
#[derive(Debug, Clone, SimpleObject)]
pub struct RunHistoryEvent {
    /// The event's global position.
    pub position: i64,
    /// When the event was committed.
    pub recorded_at: DateTime<Utc>,
    /// When it happened, by the clock of whoever decided it (events decided one after
    /// another may be committed together).
    pub at: DateTime<Utc>,
    /// Milliseconds from the run's first event to this one (by `at`).
    pub elapsed_ms: i64,
    /// The event type (`RunQueued`, `RunStepCompleted`, ...).
    #[graphql(name = "type")]
    pub event_type: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    pub reason_code: Option<String>,
    /// Who recorded it (`workflow:<instance>` for the workflow's progress).
    pub actor: Option<String>,
    pub role: Option<String>,
    /// The rest of the event: a step's summary, a failure's message and retry time, a
    /// run's counts or context. Sanitized when recorded; never secrets or payloads.
    pub details: Option<serde_json::Value>,
}

impl From<store::history::RunHistoryEntry> for RunHistoryEvent {
    fn from(e: store::history::RunHistoryEntry) -> Self {
        Self {
            position: e.global_position,
            recorded_at: e.recorded_at,
            at: e.at,
            elapsed_ms: e.elapsed_ms,
            event_type: e.event_type,
            step: e.step,
            attempt: e.attempt.map(|a| i32::try_from(a).unwrap_or(i32::MAX)),
            reason_code: e.reason.map(|r| r.as_str().to_owned()),
            actor: e.actor,
            role: e.role,
            details: e.details,
        }
    }
}

/// A point of the log to look back at: exactly one of a global position (the events at
/// or before it) or a time (the events recorded at or before it).
#[derive(Debug, Clone, Copy, OneofObject)]
#[graphql(name = "AsOf")]
pub enum AsOfInput {
    Position(i64),
    Time(DateTime<Utc>),
}

impl From<AsOfInput> for store::history::AsOf {
    fn from(a: AsOfInput) -> Self {
        match a {
            AsOfInput::Position(p) => Self::Position(p),
            AsOfInput::Time(t) => Self::Time(t),
        }
    }
}

/// An aggregate's state as it was at an earlier point of the log, folded from its
/// events up to that point. The state is the aggregate's own (as JSON), not a read
/// model's row: read models hold fields no aggregate keeps (such as when a tenant was
/// registered) and their nested lists show the present.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(name = "AggregateState")]
pub struct AggregateStateNode {
    /// `tenant`, `provider_connection` or `operation_run`.
    pub aggregate_type: String,
    #[graphql(name = "id")]
    pub aggregate_id: String,
    /// The sequence of the last event folded in: the aggregate's version then.
    pub version: i64,
    /// The global position of the last event folded in.
    pub position: i64,
    /// When the last event folded in was committed.
    pub recorded_at: DateTime<Utc>,
    pub state: serde_json::Value,
}

impl From<store::history::StateAt<serde_json::Value>> for AggregateStateNode {
    fn from(s: store::history::StateAt<serde_json::Value>) -> Self {
        Self {
            aggregate_type: s.aggregate_type,
            aggregate_id: s.aggregate_id,
            version: s.version,
            position: s.global_position,
            recorded_at: s.recorded_at,
            state: s.state,
        }
    }
}

#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct RunStep {
    pub step: String,
    pub attempt: i32,
    pub status: String,
    pub reason_code: Option<String>,
    pub message: Option<String>,
    /// What a completed step reports (a resync's snapshot step: `snapshot_id`,
    /// `policy_count`, `unchanged`); never policies or secrets.
    pub summary: Option<serde_json::Value>,
    pub retry_at: Option<DateTime<Utc>>,
    /// When the attempt began; null when it was recorded without a start.
    pub started_at: Option<DateTime<Utc>>,
    /// When the attempt's last event happened.
    pub recorded_at: DateTime<Utc>,
}

impl RunStep {
    /// The attempt a step event of a run's checkpoint records; `None` for other events.
    fn of(event: domain::run::RunEvent) -> Option<Self> {
        use domain::run::{RunEvent, StepStatus};
        let step = |step: String, attempt: u32, status: StepStatus, at| RunStep {
            step,
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
            status: status.as_str().to_owned(),
            reason_code: None,
            message: None,
            summary: None,
            retry_at: None,
            started_at: None,
            recorded_at: at,
        };
        Some(match event {
            RunEvent::RunStepStarted {
                step: s,
                attempt,
                at,
            } => RunStep {
                started_at: Some(at),
                ..step(s, attempt, StepStatus::Started, at)
            },
            RunEvent::RunStepCompleted {
                step: s,
                attempt,
                summary,
                at,
            } => RunStep {
                summary: Some(summary),
                ..step(s, attempt, StepStatus::Completed, at)
            },
            RunEvent::RunStepFailed {
                step: s,
                attempt,
                reason,
                message,
                retry_at,
                at,
            } => RunStep {
                reason_code: Some(reason.as_str().to_owned()),
                message: Some(message),
                retry_at,
                ..step(s, attempt, StepStatus::Failed, at)
            },
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct AuditEntry {
    pub global_position: i64,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    #[graphql(name = "tenantId")]
    pub tenant_key: Option<String>,
    pub correlation_id: Option<String>,
    /// Facts of the event beyond who, what and when; null for most events. A run step's
    /// `summary`; a run's `summary_counts` (for a resync, `policy_count` and `unchanged`
    /// as 0 or 1) and `failed_steps`; a snapshot's `snapshot_id`, `policy_count`,
    /// `source` and `changes`. Never policies, secrets or Graph responses.
    pub details: Option<serde_json::Value>,
}

/// An event as stored, for auditors.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(name = "Event")]
pub struct EventNode {
    pub global_position: i64,
    /// The committing transaction; with `globalPosition`, the global order.
    pub transaction_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// What a start request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum StartStatus {
    /// A new run was queued.
    Queued,
    /// A run of this type was already active for the tenant: that run is returned.
    Deduplicated,
    /// The run could not start and was recorded as blocked.
    Blocked,
}

#[derive(Debug, Clone, SimpleObject)]
pub struct StartRunPayload {
    pub run_id: Uuid,
    pub status: StartStatus,
    pub reason_code: Option<String>,
}

#[derive(Debug, Clone, SimpleObject)]
pub struct TenantPayload {
    /// The tenant key.
    pub id: String,
}

#[derive(Debug, Clone, SimpleObject)]
pub struct ConnectionPayload {
    pub id: Uuid,
}

#[derive(Debug, Clone, SimpleObject)]
pub struct CredentialPayload {
    pub connection_id: Uuid,
    /// The new credential's fingerprint.
    pub fingerprint: String,
}

#[derive(Debug, Clone, SimpleObject)]
pub struct CancelRunPayload {
    pub run_id: Uuid,
    /// The run was queued and is now cancelled.
    pub cancelled: bool,
    /// The run is running and stops at its next step.
    pub cancel_requested: bool,
}

/// A snapshot of a tenant's curated Conditional Access policies (never the raw response).
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "PolicySnapshot")]
pub struct SnapshotNode {
    #[graphql(skip)]
    pub snapshot_id: Uuid,
    #[graphql(name = "tenantId")]
    pub tenant_key: String,
    /// SHA-256 of the RFC 8785 canonical JSON of the policies.
    pub hash: String,
    pub policy_count: i32,
    pub policies: serde_json::Value,
    /// Policies added, removed and modified (with the fields that changed) since the
    /// previous snapshot; null for the first.
    pub diff: Option<serde_json::Value>,
    pub source: String,
    pub taken_at: DateTime<Utc>,
    /// The run that took it.
    pub run_id: Option<String>,
}

#[ComplexObject]
impl SnapshotNode {
    /// The snapshot id: also its global id (`node`).
    async fn id(&self) -> ID {
        ID(self.snapshot_id.to_string())
    }
}

pub(crate) const SNAPSHOT_COLUMNS: &str =
    "snapshot_id, tenant_key, hash, policy_count, policies, diff, source, taken_at, run_id";

/// A `policy.changed_in_portal` alert (at most one per tenant per hour).
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct Alert {
    /// The snapshot that revealed the change.
    pub snapshot_id: Uuid,
    #[graphql(name = "tenantId")]
    pub tenant_key: String,
    pub kind: String,
    pub raised_at: DateTime<Utc>,
    /// When someone acknowledged it (see `acknowledgeAlert`); null while open.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
}

/// What `acknowledgeAlert` did.
#[derive(Debug, Clone, SimpleObject)]
pub struct AlertPayload {
    /// The alert, by the snapshot that raised it.
    pub snapshot_id: Uuid,
}

/// What a tenant's licenses allow (capability gating).
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct Licenses {
    #[graphql(name = "tenantId")]
    pub tenant_key: String,
    /// Entra ID P1: Conditional Access.
    pub ca_p1: bool,
    /// Entra ID P2: risk-based Conditional Access.
    pub ca_p2: bool,
    pub skus: serde_json::Value,
    pub refreshed_at: DateTime<Utc>,
}

/// A workspace's recurring operation on its whole fleet (see `setSchedule`).
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "Schedule")]
pub struct ScheduleNode {
    /// `<workspace>:<run type>` (shown as `id`).
    #[graphql(skip)]
    pub schedule_id: String,
    pub run_type: String,
    pub interval_minutes: i32,
    pub enabled: bool,
    /// The first run; later ones follow every `intervalMinutes` from it.
    #[graphql(name = "firstRunAt")]
    pub first_due_at: DateTime<Utc>,
    /// When the next run is due; null while disabled.
    pub next_due_at: Option<DateTime<Utc>>,
    pub set_at: DateTime<Utc>,
    pub set_by: String,
    /// When the latest run was due.
    pub last_due_at: Option<DateTime<Utc>>,
    /// When the latest run fired.
    pub last_fired_at: Option<DateTime<Utc>>,
    /// When the latest run had started its tenants' runs.
    pub last_fanned_out_at: Option<DateTime<Utc>>,
    #[graphql(skip)]
    pub last_fan_out: Option<sqlx::types::Json<domain::schedule_tick::FanOutCounts>>,
}

#[ComplexObject]
impl ScheduleNode {
    /// `<workspace>:<run type>`: also its global id (`node`).
    async fn id(&self) -> ID {
        ID(self.schedule_id.clone())
    }

    /// What the latest run did with each tenant; null until it has started them all.
    async fn last_fan_out(&self) -> Option<FanOut> {
        self.last_fan_out.as_ref().map(|c| FanOut::from(c.0))
    }
}

pub(crate) const SCHEDULE_COLUMNS: &str =
    "schedule_id, run_type, interval_minutes, enabled, first_due_at, next_due_at, \
     set_at, set_by, last_due_at, last_fired_at, last_fanned_out_at, last_fan_out";

/// What one scheduled run did with the workspace's tenants.
#[derive(Debug, Clone, SimpleObject)]
pub struct FanOut {
    /// Tenants whose run it started.
    pub started: i32,
    /// Tenants that already had a run of this type active: that run stands.
    pub deduplicated: i32,
    /// Tenants busy with a run of another type.
    pub busy: i32,
    /// Tenants that cannot run it (no usable connection): a blocked run was recorded.
    pub blocked: i32,
    /// Tenants refused for another reason (e.g. archived meanwhile).
    pub skipped: i32,
    /// All tenants it went through.
    pub tenants: i32,
}

impl From<domain::schedule_tick::FanOutCounts> for FanOut {
    fn from(c: domain::schedule_tick::FanOutCounts) -> Self {
        let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        Self {
            started: int(c.started),
            deduplicated: int(c.deduplicated),
            busy: int(c.busy),
            blocked: int(c.blocked),
            skipped: int(c.skipped),
            tenants: int(c.tenants()),
        }
    }
}

#[derive(Debug, Clone, SimpleObject)]
pub struct SchedulePayload {
    /// The schedule id.
    pub id: String,
}

/// A workspace's audit hash chain.
#[derive(Debug, Clone, SimpleObject)]
pub struct AuditChain {
    /// The global position of the workspace's last sealed event (null: none yet).
    pub sealed_position: Option<i64>,
    /// How many of the workspace's events are sealed.
    pub sealed_events: i64,
    /// The chain's hash at `sealedPosition`, lowercase hex: a head to keep.
    pub head_hash: Option<String>,
    /// The latest `tenantflow verify` of this chain.
    pub last_verification: Option<AuditVerification>,
}

/// The outcome of a verification of a workspace's chain.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
pub struct AuditVerification {
    #[graphql(name = "at")]
    pub verified_at: DateTime<Utc>,
    pub ok: bool,
    /// The first bad event: what is wrong, its position and stream.
    pub first_bad: Option<String>,
    pub events_checked: i64,
    /// The last position found good.
    pub through_position: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node read by position reads its own statement's row whole, and refuses a row of
    /// other columns (one fewer, or two swapped) instead of filling the wrong fields.
    #[tokio::test]
    async fn a_node_read_by_position_refuses_other_columns() {
        let db = testkit::TestDb::new().await;
        let pool = db.pool().await;
        let row = "SELECT 'acme:t' AS tenant_key, gen_random_uuid() AS entra_tenant_id, \
                   'Contoso' AS display_name, 'contoso.example' AS primary_domain, \
                   'active' AS status, now() AS registered_at, NULL::timestamptz AS archived_at, \
                   now() AS last_resynced_at, NULL::uuid AS intent_snapshot_id, \
                   'h' AS intent_hash, NULL::timestamptz AS intent_seeded_at";
        let tenant: TenantNode = sqlx::query_as(row).fetch_one(&pool).await.unwrap();
        assert_eq!(
            (
                tenant.tenant_key.as_str(),
                tenant.display_name.as_str(),
                tenant.primary_domain.as_str(),
                tenant.status.as_str(),
                tenant.intent_hash.as_deref()
            ),
            ("acme:t", "Contoso", "contoso.example", "active", Some("h"))
        );
        assert!(tenant.archived_at.is_none() && tenant.last_resynced_at.is_some());
        let swapped = row
            .replace("AS display_name", "AS tmp")
            .replace("AS primary_domain", "AS display_name")
            .replace("AS tmp", "AS primary_domain");
        let fewer = row.replace(", NULL::timestamptz AS intent_seeded_at", "");
        for other in [swapped, fewer] {
            let refused = sqlx::query_as::<_, TenantNode>(&other)
                .fetch_one(&pool)
                .await
                .expect_err("other columns");
            assert!(
                refused
                    .to_string()
                    .contains("TenantNode reads the columns tenant_key, "),
                "{refused}"
            );
        }
    }
}
