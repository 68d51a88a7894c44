//! Queries: answered from read models only, never from Microsoft (R2.5). Every read runs
//! in a transaction as `tenantflow_reader` with the caller's workspace set, so row-level
//! security filters rows even where a query's own filter is wrong (R8.3).

use async_graphql::connection::Connection;
use async_graphql::{Context, InputObject, Object, ID};
use chrono::{DateTime, Utc};
use domain::run::{RunOutcome, RunStatus};
use sqlx::{PgConnection, Postgres, QueryBuilder, Transaction};
use std::sync::Arc;
use store::history::{AggregateKind, HistoryError};
use uuid::Uuid;

use super::audit::AuditList;
use super::errors::{internal, invalid};
use super::page::{connection, Cursor, PageRequest};
use super::runs::RunList;
use super::types::*;
use crate::auth::Caller;
use crate::AppState;

/// The caller of this request (always present: the HTTP layer refuses anonymous ones).
pub(crate) fn caller<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a Caller> {
    ctx.data::<Caller>().map_err(|_| invalid("unauthenticated"))
}

pub(crate) fn state<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a AppState> {
    ctx.data::<AppState>()
}

/// A read transaction confined to the caller's workspace by row-level security: the
/// request's shared one when it has one (a query over HTTP, see [`RequestReader`]), else
/// one of its own.
pub(crate) async fn reader(ctx: &Context<'_>) -> async_graphql::Result<Reader> {
    let (pool, workspace) = (&state(ctx)?.pool, &caller(ctx)?.workspace);
    let Some(shared) = ctx.data_opt::<RequestReader>() else {
        return Ok(Reader::Own(reader_for(pool, workspace).await?));
    };
    let mut slot = shared.0.clone().lock_owned().await;
    if slot.is_none() {
        let tx = snapshot(state(ctx)?, caller(ctx)?)
            .await
            .map_err(internal)?;
        *slot = Some(tx);
    }
    Ok(Reader::Shared(slot))
}

/// The tenant list's statement: the workspace's tenants by display name, those `search`
/// finds (case-insensitive, in the display name, primary domain or Entra tenant id).
pub(crate) fn tenants_query(
    workspace: &str,
    search: Option<String>,
    page: &PageRequest,
) -> async_graphql::Result<QueryBuilder<'static, Postgres>> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {TENANT_COLUMNS} FROM rm_tenants WHERE workspace_id = "
    ));
    q.push_bind(workspace.to_owned());
    if let Some(search) = search.filter(|s| !s.trim().is_empty()) {
        if search.len() > 200 {
            return Err(invalid("`search` is at most 200 characters"));
        }
        let pattern = contains_pattern(&search);
        q.push(" AND (display_name ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR primary_domain ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR entra_tenant_id::text ILIKE ")
            .push_bind(pattern)
            .push(")");
    }
    if let (Some(name), Some(key)) = (page.key_str(0)?, page.key_str(1)?) {
        q.push(" AND (display_name, tenant_key) > (")
            .push_bind(name)
            .push(", ")
            .push_bind(key)
            .push(")");
    }
    q.push(" ORDER BY display_name, tenant_key LIMIT ")
        .push(page.limit());
    Ok(q)
}

/// A query request's read transaction: the caller's workspace in one snapshot, on the
/// replica when there is one and the caller has no write it may not have yet.
pub(crate) async fn snapshot(
    state: &AppState,
    caller: &Caller,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let pool = match &state.replica {
        Some(replica) => {
            let (pool, route) = replica.pool_for(&caller.key()).await;
            state.metrics.read_routed(route);
            pool
        }
        None => &state.pool,
    };
    store::db::workspace_snapshot(pool, &caller.workspace).await
}

/// One read transaction for every resolver of a query request, opened by the first read:
/// a list page whose rows each load more (a run's steps, a tenant's connections) costs one
/// `BEGIN` and workspace set-up instead of one per field, and sees one point of the log
/// throughout (`REPEATABLE READ`). Resolvers take it in turn. Mutations and subscriptions
/// do not get one: a mutation reads its own writes, and a subscription must not hold a
/// transaction open.
#[derive(Clone, Default)]
pub(crate) struct RequestReader(Arc<tokio::sync::Mutex<Option<Transaction<'static, Postgres>>>>);

/// A workspace-confined read transaction (see [`reader`]): use it as a connection.
pub(crate) enum Reader {
    Own(Transaction<'static, Postgres>),
    Shared(tokio::sync::OwnedMutexGuard<Option<Transaction<'static, Postgres>>>),
}

impl std::ops::Deref for Reader {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            Reader::Own(tx) => tx,
            Reader::Shared(slot) => slot.as_ref().expect("a shared reader is opened before use"),
        }
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Reader::Own(tx) => tx,
            Reader::Shared(slot) => slot.as_mut().expect("a shared reader is opened before use"),
        }
    }
}

/// A read transaction as `tenantflow_reader` with `app.workspace` set to `workspace`.
pub(crate) async fn reader_for(
    pool: &sqlx::PgPool,
    workspace: &str,
) -> async_graphql::Result<Transaction<'static, Postgres>> {
    store::db::workspace_reader(pool, workspace)
        .await
        .map_err(internal)
}

pub(crate) fn parse_uuid(s: &str, what: &str) -> async_graphql::Result<Uuid> {
    Uuid::try_parse(s.trim()).map_err(|_| {
        invalid(format!(
            "`{}` is not a valid {what} id",
            s.chars().take(40).collect::<String>()
        ))
    })
}

/// Which runs to list.
#[derive(InputObject, Default)]
pub struct RunFilter {
    #[graphql(name = "tenantId")]
    pub tenant_id: Option<String>,
    #[graphql(name = "type")]
    pub run_type: Option<String>,
    #[graphql(deprecation = "Use `statusIn`, typed by the RunStatus enum.")]
    pub status: Option<String>,
    #[graphql(deprecation = "Use `outcomeIn`, typed by the RunOutcome enum.")]
    pub outcome: Option<String>,
    /// Runs in any of these statuses.
    pub status_in: Option<Vec<super::enums::RunStatus>>,
    /// Runs with any of these outcomes (`[failed, blocked]`: the runs that need someone).
    pub outcome_in: Option<Vec<super::enums::RunOutcome>>,
    pub queued_after: Option<DateTime<Utc>>,
    pub queued_before: Option<DateTime<Utc>>,
}

#[derive(InputObject, Default)]
pub struct EventFilter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    #[graphql(name = "tenantId")]
    pub tenant_id: Option<String>,
    pub recorded_after: Option<DateTime<Utc>>,
    pub recorded_before: Option<DateTime<Utc>>,
    /// Who recorded the event (a person's subject, `workflow:<instance>`, ...).
    pub actor: Option<String>,
    /// The correlation id every event of one request (or one run's work) shares.
    pub correlation_id: Option<String>,
}

/// Which end of the log a list of events starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, async_graphql::Enum)]
pub enum EventOrder {
    /// The log's global order: the oldest first.
    #[default]
    OldestFirst,
    /// The newest first (the log's global order, reversed).
    NewestFirst,
}

/// Which audit log entries to list.
#[derive(InputObject, Default)]
pub struct AuditFilter {
    #[graphql(name = "tenantId")]
    pub tenant_id: Option<String>,
    /// Who acted: a person's subject, `workflow:<instance>`, `schedule:<id>`, ...
    pub actor: Option<String>,
    /// What happened: the event type (`RunFailed`, `ConnectionDisabled`, ...).
    pub action: Option<String>,
    pub recorded_after: Option<DateTime<Utc>>,
    pub recorded_before: Option<DateTime<Utc>>,
}

/// A time range: `after` inclusive, `before` exclusive; either may be left open.
#[derive(InputObject, Default, Clone, Copy)]
pub struct TimeRange {
    pub after: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
}

impl TimeRange {
    /// Appends ` AND column >= after AND column < before` for the ends given.
    pub(crate) fn push(&self, q: &mut QueryBuilder<'_, Postgres>, column: &str) {
        if let Some(t) = self.after {
            q.push(format!(" AND {column} >= ")).push_bind(t);
        }
        if let Some(t) = self.before {
            q.push(format!(" AND {column} < ")).push_bind(t);
        }
    }
}

/// `text` as a case-insensitive `LIKE` pattern that matches it anywhere (its own `%`, `_`
/// and `\` match only themselves).
fn contains_pattern(text: &str) -> String {
    let escaped = text
        .trim()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The queries over tenants, connections, runs, policies, schedules and the log.
#[derive(Default)]
pub struct CoreQuery;

#[Object]
impl CoreQuery {
    /// Mailboxes of the caller's workspace (inbound mail), oldest first.
    async fn mailboxes(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId")] tenant_id: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, super::mail::MailboxNode>> {
        super::mail::mailboxes(ctx, tenant_id, first, after).await
    }

    /// One mailbox by id.
    async fn mailbox(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<super::mail::MailboxNode>> {
        super::mail::mailbox(ctx, id).await
    }

    /// Inbound emails, newest first (by notification).
    async fn inbound_emails(
        &self,
        ctx: &Context<'_>,
        filter: Option<super::mail::InboundEmailFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, super::mail::InboundEmailNode>> {
        super::mail::inbound_emails(ctx, filter, first, after).await
    }

    /// Tenants of the caller's workspace, by display name. `search` keeps those whose
    /// display name, primary domain or Entra tenant id contains it (case-insensitive).
    async fn tenants(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<super::fast::Page<super::fast::ListedTenant>> {
        let page = PageRequest::parse(first, after)?;
        let mut q = tenants_query(&caller(ctx)?.workspace, search, &page)?;
        let mut tx = reader(ctx).await?;
        super::fast::Page::read(&mut q, &mut tx, &page)
            .await
            .map_err(internal)
    }

    /// One tenant by its key (`<workspace>:<guid>`).
    async fn tenant(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<TenantNode>> {
        let key: domain::TenantKey = id
            .parse()
            .map_err(|e: domain::ValueError| invalid(e.to_string()))?;
        let mut tx = reader(ctx).await?;
        sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM rm_tenants WHERE tenant_key = $1"
        ))
        .bind(key.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)
    }

    /// Provider connections of the caller's workspace (optionally of one tenant).
    async fn connections(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId")] tenant_id: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, ConnectionNode>> {
        let page = PageRequest::parse(first, after)?;
        let caller = caller(ctx)?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {CONNECTION_COLUMNS} FROM rm_connections WHERE workspace_id = "
        ));
        q.push_bind(&caller.workspace);
        if let Some(t) = tenant_id {
            q.push(" AND tenant_key = ").push_bind(t);
        }
        if let Some((at, id)) = page.time_and_id("connection")? {
            q.push(" AND (created_at, connection_id) > (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY created_at, connection_id LIMIT ")
            .push(page.limit());
        let mut tx = reader(ctx).await?;
        let rows: Vec<ConnectionNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |c| {
            vec![
                c.created_at.to_rfc3339().into(),
                c.connection_id.to_string().into(),
            ]
        }))
    }

    /// Operation runs, newest first, with filters.
    async fn runs(
        &self,
        ctx: &Context<'_>,
        filter: Option<RunFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<super::fast::Page<super::fast::ListedRun>> {
        let page = PageRequest::parse(first, after)?;
        let f = filter.unwrap_or_default();
        // The domain's enums are the one list of what a run's status and outcome can be.
        let listed = |all: &[&str]| all.join(", ");
        if let Some(s) = &f.status {
            if RunStatus::parse(s).is_none() {
                return Err(invalid(format!(
                    "unknown status; expected one of {}",
                    listed(&RunStatus::ALL.map(RunStatus::as_str))
                )));
            }
        }
        if let Some(o) = &f.outcome {
            if RunOutcome::parse(o).is_none() {
                return Err(invalid(format!(
                    "unknown outcome; expected one of {}",
                    listed(&RunOutcome::ALL.map(RunOutcome::as_str))
                )));
            }
        }
        let mut list = RunList::page(&caller(ctx)?.workspace, &page)?;
        list.tenant = f.tenant_id;
        list.run_type = f.run_type;
        list.queued_after = f.queued_after;
        list.queued_before = f.queued_before;
        // Checked above.
        if let Some(s) = f.status.as_deref().and_then(RunStatus::parse) {
            list.status_in([s]);
        }
        if let Some(o) = f.outcome.as_deref().and_then(RunOutcome::parse) {
            list.outcome_in([o]);
        }
        if let Some(statuses) = f.status_in {
            list.status_in(statuses.into_iter().map(RunStatus::from));
        }
        if let Some(outcomes) = f.outcome_in {
            list.outcome_in(outcomes.into_iter().map(RunOutcome::from));
        }
        let mut q = list.query();
        let mut tx = reader(ctx).await?;
        super::fast::Page::read(&mut q, &mut tx, &page)
            .await
            .map_err(internal)
    }

    /// One run with its steps.
    async fn run(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<Option<RunNode>> {
        let id = parse_uuid(&id, "run")?;
        let mut tx = reader(ctx).await?;
        sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM rm_runs WHERE run_id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)
    }

    /// The state a tenant had at an earlier point of the log; null when it had
    /// no events by then, or belongs to another workspace.
    async fn tenant_at(
        &self,
        ctx: &Context<'_>,
        id: String,
        as_of: AsOfInput,
    ) -> async_graphql::Result<Option<AggregateStateNode>> {
        let key: domain::TenantKey = id
            .parse()
            .map_err(|e: domain::ValueError| invalid(e.to_string()))?;
        state_at(ctx, AggregateKind::Tenant, &key.to_string(), as_of).await
    }

    /// The state a provider connection had at an earlier point of the log.
    async fn connection_at(
        &self,
        ctx: &Context<'_>,
        id: String,
        as_of: AsOfInput,
    ) -> async_graphql::Result<Option<AggregateStateNode>> {
        let id = parse_uuid(&id, "connection")?;
        state_at(ctx, AggregateKind::Connection, &id.to_string(), as_of).await
    }

    /// The state a run had at an earlier point of the log.
    async fn run_at(
        &self,
        ctx: &Context<'_>,
        id: String,
        as_of: AsOfInput,
    ) -> async_graphql::Result<Option<AggregateStateNode>> {
        let id = parse_uuid(&id, "run")?;
        state_at(ctx, AggregateKind::Run, &id.to_string(), as_of).await
    }

    /// Who did what, when, to which tenant: newest first. `tenantId` alone is kept for
    /// older clients; `filter` narrows by tenant, actor, action and time.
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId", deprecation = "Use `filter: {tenantId}`.")] tenant_id: Option<
            String,
        >,
        filter: Option<AuditFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, AuditEntry>> {
        let page = PageRequest::parse(first, after)?;
        let f = filter.unwrap_or_default();
        let caller = caller(ctx)?;
        let list = AuditList {
            workspace: &caller.workspace,
            tenants: [tenant_id, f.tenant_id].into_iter().flatten().collect(),
            actor: f.actor,
            action: f.action,
            recorded: TimeRange {
                after: f.recorded_after,
                before: f.recorded_before,
            },
            before_position: page.key_i64(0)?,
            limit: page.limit(),
        };
        let mut tx = reader(ctx).await?;
        let rows = list.fetch(&mut tx).await.map_err(internal)?;
        Ok(connection(&page, rows, |a| vec![a.global_position.into()]))
    }

    /// The event streams themselves, for auditors: in the log's global order, or newest
    /// first with `order: NEWEST_FIRST`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<EventFilter>,
        order: Option<EventOrder>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, EventNode>> {
        let page = PageRequest::parse(first, after)?;
        let f = filter.unwrap_or_default();
        let caller = caller(ctx)?;
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT e.global_position, e.transaction_id::text AS transaction_id, e.aggregate_type, e.aggregate_id, e.sequence, \
             e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at FROM events e WHERE e.metadata ->> 'workspace' = ",
        );
        q.push_bind(&caller.workspace);
        if let Some(t) = f.aggregate_type {
            q.push(" AND e.aggregate_type = ").push_bind(t);
        }
        if let Some(t) = f.aggregate_id {
            q.push(" AND e.aggregate_id = ").push_bind(t);
        }
        if let Some(t) = f.event_type {
            q.push(" AND e.event_type = ").push_bind(t);
        }
        if let Some(t) = f.tenant_id {
            q.push(" AND e.global_position IN (SELECT global_position FROM rm_audit_log WHERE tenant_key = ")
                .push_bind(t)
                .push(")");
        }
        TimeRange {
            after: f.recorded_after,
            before: f.recorded_before,
        }
        .push(&mut q, "e.recorded_at");
        if let Some(actor) = f.actor {
            q.push(" AND e.metadata ->> 'actor' = ").push_bind(actor);
        }
        if let Some(c) = f.correlation_id {
            q.push(" AND e.metadata ->> 'correlation_id' = ")
                .push_bind(c);
        }
        let (beyond, direction) = match order.unwrap_or_default() {
            EventOrder::OldestFirst => (">", "ASC"),
            EventOrder::NewestFirst => ("<", "DESC"),
        };
        if let (Some(tx_id), Some(pos)) = (page.key_i64(0)?, page.key_i64(1)?) {
            q.push(format!(
                " AND (e.transaction_id, e.global_position) {beyond} ("
            ))
            .push_bind(tx_id.to_string())
            .push("::text::xid8, ")
            .push_bind(pos)
            .push(")");
        }
        // Only what no running transaction can still precede: the order is final.
        q.push(" AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())");
        q.push(format!(
            " ORDER BY e.transaction_id {direction}, e.global_position {direction} LIMIT "
        ))
        // Bound, unlike the other lists' (`PageRequest::limit`): a time window's plan depends
        // on its ends, so this statement is best planned for each request's values.
        .push_bind(page.limit());
        let mut tx = reader(ctx).await?;
        let rows: Vec<EventNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |e| {
            vec![
                e.transaction_id.parse::<i64>().unwrap_or_default().into(),
                e.global_position.into(),
            ]
        }))
    }

    /// A tenant's policy snapshots, newest first, with their diffs; `taken` keeps those
    /// taken in a time range.
    async fn snapshots(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId")] tenant_id: String,
        taken: Option<TimeRange>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, SnapshotNode>> {
        let page = PageRequest::parse(first, after)?;
        let caller = caller(ctx)?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM rm_policy_snapshots WHERE workspace_id = "
        ));
        q.push_bind(&caller.workspace)
            .push(" AND tenant_key = ")
            .push_bind(tenant_id);
        taken.unwrap_or_default().push(&mut q, "taken_at");
        if let Some((at, id)) = page.time_and_id("snapshot")? {
            q.push(" AND (taken_at, snapshot_id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY taken_at DESC, snapshot_id DESC LIMIT ")
            .push(page.limit());
        let mut tx = reader(ctx).await?;
        let rows: Vec<SnapshotNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |s| {
            vec![
                s.taken_at.to_rfc3339().into(),
                s.snapshot_id.to_string().into(),
            ]
        }))
    }

    /// Drift alerts of the caller's workspace (optionally of one tenant), newest first;
    /// `raised` keeps those raised in a time range, `acknowledged` those acknowledged
    /// (`true`) or still open (`false`).
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId")] tenant_id: Option<String>,
        raised: Option<TimeRange>,
        acknowledged: Option<bool>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, Alert>> {
        let page = PageRequest::parse(first, after)?;
        let caller = caller(ctx)?;
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT snapshot_id, tenant_key, kind, raised_at, acknowledged_at, acknowledged_by \
             FROM rm_alerts WHERE workspace_id = ",
        );
        q.push_bind(&caller.workspace);
        if let Some(t) = tenant_id {
            q.push(" AND tenant_key = ").push_bind(t);
        }
        raised.unwrap_or_default().push(&mut q, "raised_at");
        match acknowledged {
            Some(true) => q.push(" AND acknowledged_at IS NOT NULL"),
            Some(false) => q.push(" AND acknowledged_at IS NULL"),
            None => &mut q,
        };
        if let (Some(at), Some(id)) = (page.key_str(0)?, page.key_str(1)?) {
            let at: DateTime<Utc> = at.parse().map_err(|_| invalid("invalid cursor"))?;
            q.push(" AND (raised_at, snapshot_id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(parse_uuid(&id, "alert")?)
                .push(")");
        }
        q.push(" ORDER BY raised_at DESC, snapshot_id DESC LIMIT ")
            .push(page.limit());
        let mut tx = reader(ctx).await?;
        let rows: Vec<Alert> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |a| {
            vec![
                a.raised_at.to_rfc3339().into(),
                a.snapshot_id.to_string().into(),
            ]
        }))
    }

    /// The caller's workspace's recurring schedules, by id.
    async fn schedules(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, ScheduleNode>> {
        let page = PageRequest::parse(first, after)?;
        let caller = caller(ctx)?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM rm_schedules WHERE workspace_id = "
        ));
        q.push_bind(&caller.workspace);
        if let Some(id) = page.key_str(0)? {
            q.push(" AND schedule_id > ").push_bind(id);
        }
        q.push(" ORDER BY schedule_id LIMIT ").push(page.limit());
        let mut tx = reader(ctx).await?;
        let rows: Vec<ScheduleNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |s| {
            vec![s.schedule_id.clone().into()]
        }))
    }

    /// A tenant's license capabilities, as of its last refresh.
    async fn licenses(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId")] tenant_id: String,
    ) -> async_graphql::Result<Option<Licenses>> {
        let mut tx = reader(ctx).await?;
        sqlx::query_as(
            "SELECT tenant_key, ca_p1, ca_p2, skus, refreshed_at FROM rm_licenses WHERE tenant_key = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)
    }

    /// The caller's workspace's audit hash chain: how far it is sealed, its head (a
    /// head kept elsewhere, `tenantflow verify --workspace W --expect <sealedPosition>:<headHash>`
    /// later checks that the history still leads to it), and the last verification of it.
    async fn audit_chain(&self, ctx: &Context<'_>) -> async_graphql::Result<AuditChain> {
        let caller = caller(ctx)?;
        let mut tx = reader(ctx).await?;
        let head: Option<(i64, i64, String)> = sqlx::query_as(
            "SELECT global_position, workspace_seq, encode(workspace_hash, 'hex') FROM audit_seals \
             WHERE workspace_id = $1 ORDER BY workspace_seq DESC LIMIT 1",
        )
        .bind(&caller.workspace)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        let last_verification: Option<AuditVerification> = sqlx::query_as(
            "SELECT verified_at, ok, first_bad, events_checked, through_position \
             FROM audit_verifications WHERE workspace_id = $1 \
             ORDER BY verified_at DESC, verification_id DESC LIMIT 1",
        )
        .bind(&caller.workspace)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        Ok(AuditChain {
            sealed_position: head.as_ref().map(|h| h.0),
            sealed_events: head.as_ref().map(|h| h.1).unwrap_or(0),
            head_hash: head.map(|h| h.2),
            last_verification,
        })
    }

    /// Any entity by its global id (Tenant, ProviderConnection, Run, PolicySnapshot,
    /// Schedule, Client, Contact, Mailbox, InboundEmail); null when none of the caller's workspace has it.
    async fn node(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Node>> {
        let id = id.0.trim().to_owned();
        let mut tx = reader(ctx).await?;
        if let Ok(key) = id.parse::<domain::TenantKey>() {
            let tenant: Option<TenantNode> = sqlx::query_as(&format!(
                "SELECT {TENANT_COLUMNS} FROM rm_tenants WHERE tenant_key = $1"
            ))
            .bind(key.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
            return Ok(tenant.map(Node::Tenant));
        }
        if let Ok(uuid) = Uuid::try_parse(&id) {
            let run: Option<RunNode> = sqlx::query_as(&format!(
                "SELECT {RUN_COLUMNS} FROM rm_runs WHERE run_id = $1"
            ))
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
            if let Some(run) = run {
                return Ok(Some(Node::Run(run)));
            }
            let connection: Option<ConnectionNode> = sqlx::query_as(&format!(
                "SELECT {CONNECTION_COLUMNS} FROM rm_connections WHERE connection_id = $1"
            ))
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
            if let Some(c) = connection {
                return Ok(Some(Node::ProviderConnection(c)));
            }
            let snapshot: Option<SnapshotNode> = sqlx::query_as(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM rm_policy_snapshots WHERE snapshot_id = $1"
            ))
            .bind(uuid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
            if let Some(s) = snapshot {
                return Ok(Some(Node::PolicySnapshot(s)));
            }
            if let Some(found) = super::contacts::node(ctx, &mut tx, uuid).await? {
                return Ok(Some(found));
            }
            let mailbox = super::mail::mailbox_node(&mut tx, uuid).await?;
            return Ok(mailbox.map(Node::Mailbox));
        }
        if super::mail::is_email_key(&id) {
            let email = super::mail::email_node(&mut tx, &id).await?;
            return Ok(email.map(|e| Node::InboundEmail(Box::new(e))));
        }
        if id.len() <= 200 && id.contains(':') {
            let schedule: Option<ScheduleNode> = sqlx::query_as(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM rm_schedules WHERE schedule_id = $1"
            ))
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
            return Ok(schedule.map(Node::Schedule));
        }
        Err(invalid("`id` is not the id of any kind of node"))
    }

    /// Who the caller is.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let c = caller(ctx)?;
        Ok(Me {
            subject: c.subject.clone(),
            workspace: c.workspace.clone(),
            role: c.role.as_str().to_owned(),
        })
    }
}

/// An aggregate's state at `as_of`, folded from the events the caller's workspace may read.
async fn state_at(
    ctx: &Context<'_>,
    kind: AggregateKind,
    id: &str,
    as_of: AsOfInput,
) -> async_graphql::Result<Option<AggregateStateNode>> {
    let mut tx = reader(ctx).await?;
    let state = store::history::state_json_at(&mut tx, kind, id, as_of.into())
        .await
        .map_err(history_error)?;
    Ok(state.map(AggregateStateNode::from))
}

/// A failure to read the log back is internal either way: the database's, or an event this
/// binary cannot decode (shown opaquely, its cause logged once).
fn history_error(e: HistoryError) -> async_graphql::Error {
    match e {
        HistoryError::Database(e) => internal(e),
        other => internal(sqlx::Error::Decode(Box::new(other))),
    }
}

#[derive(async_graphql::SimpleObject)]
pub struct Me {
    pub subject: String,
    pub workspace: String,
    pub role: String,
}
