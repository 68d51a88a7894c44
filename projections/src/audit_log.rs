//! The audit log read model: `rm_audit_log`, one row per event of any aggregate — who did
//! what, when, to which tenant — from the event's metadata.
//!
//! The tenant of a row comes only from the log itself, so a rebuild finds the same one:
//! - a tenant's events: the tenant's key (its aggregate id);
//! - an event whose payload names a tenant key (`tenant_key` or `context.tenant_key`, as a
//!   connection's or a run's first event does): that key;
//! - an event whose payload names a run (`run_id`, as scope lock events do): the run's;
//! - any other event: the tenant of its aggregate's earlier rows, if any.
//!
//! A scope is acquired just before its run is queued, in the same transaction, so the
//! acquisition is recorded before its run's tenant is known; queueing the run fills it in.
//!
//! `details` holds the safe facts of the events an auditor asks about (see [`details`]):
//! what a run step reported, a run's summary counts (for a resync, `policy_count` and
//! `unchanged`, R3.6), a snapshot's id and size. Never policies, secrets or Graph payloads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use cqrs_es::Aggregate;
use domain::connection::{ConnectionEvent, ProviderConnection};
use domain::run::{OperationRun, RunEvent};
use domain::scope_lock::{scope_key, ScopeLock};
use domain::tenant::{Tenant, TenantEvent};
use serde_json::{json, Value};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgConnection};
use store::{Consumer, ConsumerError, StoredEvent};

use crate::event::required_meta;
use crate::rebuild::{Deferred, ShadowFiller};
use crate::Projection;

/// Records every event in `rm_audit_log`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLog;

const NAME: &str = "audit_log";

/// A batch's rows, one array per column, in one statement; with [`ON_CONFLICT`] live.
const INSERT: &str = "\
    INSERT INTO rm_audit_log (global_position, workspace_id, recorded_at, actor, role, \
        action, aggregate_type, aggregate_id, tenant_key, correlation_id, causation_id, \
        request_id, details) \
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], \
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
        $13::jsonb[])";
/// What makes a live batch idempotent: an event's row is written once. A rebuild applies
/// every event once, so it leaves the check out (a fifth of its inserts' time).
const ON_CONFLICT: &str = " ON CONFLICT (global_position) DO NOTHING";
/// For each aggregate a batch may ask about: the tenant of its first row already written
/// (which may have none), and the first tenant any of its rows has.
const EARLIER: &str = "\
    SELECT k.ord, f.tenant_key, n.tenant_key \
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, i, ord) \
    CROSS JOIN LATERAL (SELECT tenant_key FROM rm_audit_log a \
        WHERE a.aggregate_type = k.t AND a.aggregate_id = k.i \
        ORDER BY global_position LIMIT 1) f \
    LEFT JOIN LATERAL (SELECT tenant_key FROM rm_audit_log a \
        WHERE a.aggregate_type = k.t AND a.aggregate_id = k.i AND a.tenant_key IS NOT NULL \
        ORDER BY global_position LIMIT 1) n ON true";
/// Scopes whose rows recorded before their run's tenant was known get it.
const FILL_IN: &str = "\
    UPDATE rm_audit_log a SET tenant_key = f.tenant_key \
    FROM unnest($1::text[], $2::text[]) AS f(aggregate_id, tenant_key) \
    WHERE a.aggregate_type = $3 AND a.aggregate_id = f.aggregate_id AND a.tenant_key IS NULL";

/// The same, for rows a rebuild's filler knows by position.
const FILL_IN_AT: &str = "\
    UPDATE rm_audit_log a SET tenant_key = f.tenant_key \
    FROM unnest($1::bigint[], $2::text[]) AS f(global_position, tenant_key) \
    WHERE a.global_position = f.global_position AND a.tenant_key IS NULL";

#[async_trait::async_trait]
impl Consumer for AuditLog {
    fn name(&self) -> &str {
        NAME
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        apply(tx, events, Applied::Maybe).await
    }
}

/// Whether the events of a batch may have been applied before.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Applied {
    Maybe,
    /// A rebuild's: every event is applied once.
    Never,
}

async fn apply(
    tx: &mut PgConnection,
    events: &[StoredEvent],
    applied: Applied,
) -> Result<(), ConsumerError> {
    // The whole batch in three statements, with the rows it writes kept in memory
    // meanwhile: every answer below is the one applying the events one at a time
    // would give.
    let mut batch = Batch::prefetch(tx, events).await?;
    batch.build(events)?;
    batch.encode(FillIn::ByAggregate)?.write(tx, applied).await
}

#[async_trait::async_trait]
impl Projection for AuditLog {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_audit_log"]
    }

    /// A row per event: over half of a whole rebuild's time in PostgreSQL.
    fn rebuild_weight(&self) -> u32 {
        4
    }

    /// The auditors' lookups, and the aggregates' index, which only [`Consumer::handle`]
    /// reads through: a rebuild's filler remembers what it wrote instead (and builds the
    /// index early if the log has more aggregates than it remembers).
    fn indexes_built_after_rebuild(&self) -> &'static [&'static str] {
        &[
            "rm_audit_log_workspace",
            "rm_audit_log_tenant",
            "rm_audit_log_actor",
            "rm_audit_log_action",
            "rm_audit_log_recorded",
            AGGREGATE_INDEX,
        ]
    }

    fn shadow_filler(&self) -> Option<Box<dyn ShadowFiller>> {
        Some(Self::filler_remembering_at_most(REMEMBERED_AGGREGATES))
    }
}

/// The index `EARLIER` and `FILL_IN` read through.
const AGGREGATE_INDEX: &str = "rm_audit_log_aggregate";

/// How many aggregates a rebuild's filler remembers the tenants of (about 150 bytes each,
/// so at most some 60 MB). Keeping `rm_audit_log_aggregate` row by row was a third of the
/// filler's insert, and reading it back for each batch (`EARLIER`) one more statement
/// per batch; built once at the end it costs a fraction of that. A log with more
/// aggregates than this has the index built when the filler reaches the limit, and is
/// filled from there on as the live handler does.
const REMEMBERED_AGGREGATES: usize = 400_000;

impl AuditLog {
    /// A rebuild's filler that remembers the tenants of at most `aggregates` aggregates
    /// before it falls back to reading the rows it wrote (the default is
    /// [`REMEMBERED_AGGREGATES`]); for tests of that fallback.
    pub fn filler_remembering_at_most(aggregates: usize) -> Box<dyn ShadowFiller> {
        Box::new(Filler {
            limit: aggregates,
            phase: Phase::Unstarted,
            unsent: None,
        })
    }
}

/// Fills `rm_audit_log`'s shadow in a rebuild. While it remembers every aggregate it wrote
/// rows of, it asks its memory what `EARLIER` would answer, and fills scopes in by the
/// positions of their rows; from the limit on (or when the archived runs' summaries it
/// starts with are more than the limit), it builds the aggregates' index and applies each
/// batch as [`Consumer::handle`] does, without `ON CONFLICT`.
///
/// While it remembers, each batch's rows are made (and their parameters encoded) on a
/// thread of their own while the batch before is written: nothing in them waits on what
/// PostgreSQL answers, so this process's work on a batch and PostgreSQL's on the last
/// overlap instead of taking turns.
struct Filler {
    limit: usize,
    phase: Phase,
    /// The last batch's statements, made but not sent yet.
    unsent: Option<Encoded>,
}

/// Where a [`Filler`] is.
enum Phase {
    /// Before its first batch: it has not read the shadow's seeded rows yet.
    Unstarted,
    /// It remembers every aggregate it wrote rows of.
    Remembering(Memory),
    /// Past its limit: it reads earlier rows back through the aggregates' index.
    Reading,
}

#[async_trait::async_trait]
impl ShadowFiller for Filler {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &Arc<Vec<StoredEvent>>,
        deferred: &mut Deferred,
    ) -> Result<(), ConsumerError> {
        if matches!(self.phase, Phase::Unstarted) {
            self.phase = match Memory::of_seeds(tx, self.limit).await? {
                Some(memory) => Phase::Remembering(memory),
                None => Phase::Reading,
            };
        }
        // Taken out for the thread that makes the batch; put back unless past the limit.
        let Phase::Remembering(mut memory) = std::mem::replace(&mut self.phase, Phase::Reading)
        else {
            self.finish(tx).await?;
            deferred.build_now(tx, AGGREGATE_INDEX).await?;
            return apply(tx, events, Applied::Never).await;
        };
        let batch = events.clone();
        let made = tokio::task::spawn_blocking(move || {
            let encoded = memory.make(&batch);
            (memory, encoded)
        });
        let (sent, made) = tokio::join!(self.finish(tx), made);
        // Making a batch never fails but by a bug: its panic is the filler's own.
        let (memory, encoded) = match made {
            Ok(made) => made,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => std::panic::resume_unwind(Box::new(e.to_string())),
        };
        sent?;
        self.unsent = Some(encoded?);
        if memory.aggregates > self.limit {
            tracing::info!(
                aggregates = memory.aggregates,
                "the audit log's rebuild remembers no more aggregates: building their index now"
            );
            self.finish(tx).await?;
            deferred.build_now(tx, AGGREGATE_INDEX).await?;
        } else {
            self.phase = Phase::Remembering(memory);
        }
        Ok(())
    }

    async fn finish(&mut self, tx: &mut PgConnection) -> Result<(), ConsumerError> {
        match self.unsent.take() {
            Some(encoded) => encoded.write(tx, Applied::Never).await,
            None => Ok(()),
        }
    }
}

/// What a rebuild's filler knows of the rows it wrote: for each aggregate, what `EARLIER`
/// would read from them, and the scope rows without a tenant (which a later run's queueing
/// fills in).
#[derive(Default)]
struct Memory {
    /// By aggregate type, then id.
    earlier: HashMap<Box<str>, HashMap<Box<str>, Remembered>>,
    aggregates: usize,
    /// Each scope's rows without a tenant, by their positions.
    unfilled: HashMap<Box<str>, Vec<i64>>,
    /// Each tenant key once.
    tenants: HashSet<Arc<str>>,
}

/// An aggregate's [`Earlier`], its tenant keys shared.
struct Remembered {
    first: Option<Arc<str>>,
    known: Option<Arc<str>>,
}

impl Memory {
    /// The memory of the shadow's first rows (archived runs' summaries), or `None` when they
    /// are more than `limit`.
    async fn of_seeds(tx: &mut PgConnection, limit: usize) -> Result<Option<Self>, ConsumerError> {
        let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_audit_log")
            .fetch_one(&mut *tx)
            .await?;
        if usize::try_from(seeded).map_or(true, |seeded| seeded > limit) {
            return Ok(None);
        }
        let rows: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, tenant_key, global_position \
             FROM rm_audit_log ORDER BY global_position",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut memory = Self::default();
        for (aggregate_type, aggregate_id, tenant_key, position) in &rows {
            memory.row(
                aggregate_type,
                aggregate_id,
                tenant_key.as_deref(),
                *position,
            );
        }
        Ok(Some(memory))
    }

    /// Makes a batch's statements from what it remembers, and learns what they write.
    fn make(&mut self, events: &[StoredEvent]) -> Result<Encoded, ConsumerError> {
        let mut batch = Batch::recalled(self, events);
        batch.build(events)?;
        let fill_in = self.learn(&batch);
        batch.encode(fill_in)
    }

    /// Learns what `batch` writes: its scopes filled in, then its rows. Returns the earlier
    /// rows to fill in, by position.
    fn learn(&mut self, batch: &Batch) -> FillIn {
        let mut positions = Vec::new();
        let mut tenants = Vec::new();
        for (scope, tenant) in &batch.filled {
            if let Some(rows) = self.unfilled.remove(scope.as_str()) {
                tenants.extend(std::iter::repeat_n(tenant.clone(), rows.len()));
                positions.extend(rows);
            }
            let tenant = intern(&mut self.tenants, tenant);
            let remembered = self
                .earlier
                .get_mut(ScopeLock::TYPE)
                .and_then(|scopes| scopes.get_mut(scope.as_str()));
            if let Some(remembered) = remembered {
                // Every row without a tenant got this one, the first row too.
                let first = remembered.first.take().unwrap_or(tenant);
                remembered.known = Some(first.clone());
                remembered.first = Some(first);
            }
        }
        let rows = &batch.rows;
        for r in 0..rows.global_position.len() {
            self.row(
                rows.aggregate_type[r],
                rows.aggregate_id[r],
                rows.tenant_key[r].as_deref(),
                rows.global_position[r],
            );
        }
        FillIn::ByPosition { positions, tenants }
    }

    /// Learns of one row written.
    fn row(&mut self, aggregate_type: &str, aggregate_id: &str, tenant: Option<&str>, at: i64) {
        let tenant = tenant.map(|t| intern(&mut self.tenants, t));
        if aggregate_type == ScopeLock::TYPE && tenant.is_none() {
            self.unfilled
                .entry(aggregate_id.into())
                .or_default()
                .push(at);
        }
        if !self.earlier.contains_key(aggregate_type) {
            self.earlier.insert(aggregate_type.into(), HashMap::new());
        }
        let Some(of_type) = self.earlier.get_mut(aggregate_type) else {
            return;
        };
        match of_type.get_mut(aggregate_id) {
            Some(remembered) => {
                if remembered.known.is_none() {
                    remembered.known = tenant;
                }
            }
            None => {
                of_type.insert(
                    aggregate_id.into(),
                    Remembered {
                        first: tenant.clone(),
                        known: tenant,
                    },
                );
                self.aggregates += 1;
            }
        }
    }

    fn recall(&self, aggregate_type: &str, aggregate_id: &str) -> Option<Earlier> {
        let remembered = self.earlier.get(aggregate_type)?.get(aggregate_id)?;
        Some(Earlier {
            first: remembered.first.as_deref().map(str::to_owned),
            known: remembered.known.as_deref().map(str::to_owned),
        })
    }
}

fn intern(tenants: &mut HashSet<Arc<str>>, tenant: &str) -> Arc<str> {
    if let Some(known) = tenants.get(tenant) {
        return known.clone();
    }
    let tenant: Arc<str> = tenant.into();
    tenants.insert(tenant.clone());
    tenant
}

/// How a batch fills in the rows written before it of the scopes it filled in.
enum FillIn {
    /// Every row of the scope without a tenant (through `rm_audit_log_aggregate`).
    ByAggregate,
    /// These rows (a rebuild's filler knows them).
    ByPosition {
        positions: Vec<i64>,
        tenants: Vec<String>,
    },
}

/// The facts of `e` an auditor needs beyond who/what/when, or `None` for an event that
/// has none. Each fact is named here, so nothing else of a payload is ever copied:
/// - `RunStepCompleted`: `step`, `attempt` and the step's `summary` (sanitized and at most
///   4 KiB by the run aggregate; a resync's snapshot step reports `snapshot_id`,
///   `policy_count` and `unchanged`);
/// - `RunSucceeded`, `RunPartiallySucceeded`: the run's `summary_counts` (a resync's carry
///   `policy_count` and `unchanged` as 0 or 1), and the failed steps' reason codes;
/// - a run's end that carries its progress (issue 13: the engine keeps a run's step
///   attempts off the log until its end): `steps`, each attempt's facts as its own
///   `RunStepCompleted` or `RunStepFailed` gave them before;
/// - `PolicySnapshotted`: `snapshot_id`, `policy_count`, `source` and how many policies
///   were added, removed or modified (never the policies);
/// - `PolicyIntentSeeded`: `snapshot_id`;
/// - failures: `RunStepFailed` (`step`, `attempt`, `reason`, `message`, `retry_at`),
///   `RunFailed` (`reason`, `message`, `step`), `RunBlocked` (`reason`, `next_steps`),
///   `ConnectionErrored` (`reason`, `message`); their messages are sanitized (no secrets,
///   no payloads) by the aggregates that record them.
///
/// A pure function of the event, so replays and rebuilds write the same details. An event
/// that does not decode is still recorded, without details (and the skip is logged).
fn details(e: &StoredEvent) -> Option<Value> {
    let wanted = matches!(
        (e.aggregate_type.as_str(), e.event_type.as_str()),
        (
            OperationRun::TYPE,
            "RunStepCompleted"
                | "RunStepFailed"
                | "RunSucceeded"
                | "RunPartiallySucceeded"
                | "RunFailed"
                | "RunBlocked"
                | "RunCancelled"
        ) | (Tenant::TYPE, "PolicySnapshotted" | "PolicyIntentSeeded")
            | (ProviderConnection::TYPE, "ConnectionErrored")
    );
    if !wanted {
        return None;
    }
    let decoded = if e.aggregate_type == Tenant::TYPE {
        e.decode::<TenantEvent>().map(tenant_details)
    } else if e.aggregate_type == ProviderConnection::TYPE {
        e.decode::<ConnectionEvent>().map(connection_details)
    } else {
        e.decode::<RunEvent>().map(run_details)
    };
    decoded.unwrap_or_else(|err| {
        tracing::warn!(
            consumer = NAME,
            global_position = e.position.global_position,
            error = %err,
            "recording an event without details: its payload does not decode"
        );
        None
    })
}

fn run_details(mut event: RunEvent) -> Option<Value> {
    // Taken out of the end, not copied: a step's summary is a JSON object of its own.
    let carried = match &mut event {
        RunEvent::RunSucceeded { progress, .. }
        | RunEvent::RunPartiallySucceeded { progress, .. }
        | RunEvent::RunFailed { progress, .. }
        | RunEvent::RunCancelled { progress, .. } => std::mem::take(progress),
        _ => Vec::new(),
    };
    // A cancelled run reports nothing of its own, but what it carries.
    let cancelled_carrying = matches!(event, RunEvent::RunCancelled { .. }) && !carried.is_empty();
    let steps: Vec<Value> = carried.into_iter().filter_map(run_details).collect();
    let mut details = if cancelled_carrying {
        json!({})
    } else {
        step_or_end_details(event)?
    };
    if let (Value::Object(fields), false) = (&mut details, steps.is_empty()) {
        fields.insert("steps".to_owned(), Value::Array(steps));
    }
    Some(details)
}

fn step_or_end_details(event: RunEvent) -> Option<Value> {
    match event {
        RunEvent::RunStepCompleted {
            step,
            attempt,
            summary,
            ..
        } => Some(json!({ "step": step, "attempt": attempt, "summary": summary })),
        // Messages of failures are sanitized when they are recorded.
        RunEvent::RunStepFailed {
            step,
            attempt,
            reason,
            message,
            retry_at,
            ..
        } => Some(json!({
            "step": step, "attempt": attempt, "reason": reason, "message": message,
            "retry_at": retry_at,
        })),
        RunEvent::RunFailed { failure, .. } => Some(json!({
            "reason": failure.reason, "message": failure.message, "step": failure.step,
        })),
        RunEvent::RunBlocked {
            reason, next_steps, ..
        } => Some(json!({ "reason": reason, "next_steps": next_steps })),
        RunEvent::RunSucceeded { summary_counts, .. } => {
            Some(json!({ "summary_counts": summary_counts }))
        }
        RunEvent::RunPartiallySucceeded {
            summary_counts,
            failures,
            ..
        } => {
            let failed: Vec<Value> = failures
                .iter()
                .map(|f| json!({ "step": f.step, "reason": f.reason }))
                .collect();
            Some(json!({ "summary_counts": summary_counts, "failed_steps": failed }))
        }
        _ => None,
    }
}

fn connection_details(event: ConnectionEvent) -> Option<Value> {
    match event {
        ConnectionEvent::ConnectionErrored {
            reason, message, ..
        } => Some(json!({ "reason": reason, "message": message })),
        _ => None,
    }
}

fn tenant_details(event: TenantEvent) -> Option<Value> {
    match event {
        TenantEvent::PolicySnapshotted {
            snapshot_id,
            policies,
            diff,
            source,
            ..
        } => Some(json!({
            "snapshot_id": snapshot_id,
            "policy_count": policies.len(),
            "source": source,
            "changes": diff.map(|d| json!({
                "added": d.added.len(),
                "removed": d.removed.len(),
                "modified": d.modified.len(),
            })),
        })),
        TenantEvent::PolicyIntentSeeded { snapshot_id, .. } => {
            Some(json!({ "snapshot_id": snapshot_id }))
        }
        _ => None,
    }
}

/// An aggregate, by its type and id as the batch's events name it.
type AggregateRef<'e> = (&'e str, &'e str);

/// What an aggregate's rows written before this batch say about its tenant.
struct Earlier {
    /// The tenant of its first row (`None`: that row has none).
    first: Option<String>,
    /// The tenant of its first row that has one.
    known: Option<String>,
}

/// One batch of the audit log: the rows it writes, in memory until the end, and what it
/// knows of the rows written before it.
///
/// Its rows borrow their text from the batch's events (no copy of each field of each event
/// before it is encoded: copying them was a third of a rebuild's audit log filler in this
/// process).
#[derive(Default)]
struct Batch<'e> {
    /// The tenant of each aggregate seen so far in the batch (`None`: it has none yet).
    known: HashMap<AggregateRef<'e>, Option<String>>,
    /// The rows written before this batch, of the aggregates the batch may ask about.
    earlier: HashMap<AggregateRef<'e>, Earlier>,
    /// Scopes filled in by this batch, with the first tenant each got.
    filled: HashMap<String, String>,
    rows: Rows<'e>,
}

/// The batch's rows, a column each.
#[derive(Default)]
struct Rows<'e> {
    global_position: Vec<i64>,
    workspace_id: Vec<&'e str>,
    recorded_at: Vec<DateTime<Utc>>,
    actor: Vec<&'e str>,
    role: Vec<&'e str>,
    action: Vec<&'e str>,
    aggregate_type: Vec<&'e str>,
    aggregate_id: Vec<&'e str>,
    tenant_key: Vec<Option<String>>,
    correlation_id: Vec<Option<&'e str>>,
    causation_id: Vec<Option<&'e str>>,
    request_id: Vec<Option<&'e str>>,
    details: Vec<Option<Value>>,
}

/// The fields of an event's payload (inside its variant) that name its tenant, or the run
/// that has it.
fn payload_field<'e>(e: &'e StoredEvent, path: &[&str]) -> Option<&'e str> {
    let fields = e.payload.as_object().and_then(|p| p.values().next());
    path.iter()
        .try_fold(fields?, |v, k| v.get(k))
        .and_then(Value::as_str)
}

impl<'e> Batch<'e> {
    /// Reads what the rows already written say about the aggregates of `events` (and the
    /// runs their payloads name), in one statement.
    async fn prefetch(
        tx: &mut PgConnection,
        events: &'e [StoredEvent],
    ) -> Result<Self, ConsumerError> {
        let (types, ids): (Vec<&str>, Vec<&str>) = Self::asked_about(events).into_iter().unzip();
        let found: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(EARLIER)
            // Planned for every batch (see the runs projection).
            .persistent(false)
            .bind(&types)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        // Each row answers the pair at its (1-based) ordinal.
        let earlier = found
            .into_iter()
            .filter_map(|(ord, first, known)| {
                let at = usize::try_from(ord).ok()?.checked_sub(1)?;
                Some(((*types.get(at)?, *ids.get(at)?), Earlier { first, known }))
            })
            .collect();
        Ok(Self {
            earlier,
            ..Self::default()
        })
    }

    /// Like [`Batch::prefetch`], from a rebuild filler's memory of the rows it wrote.
    fn recalled(memory: &Memory, events: &'e [StoredEvent]) -> Self {
        let earlier = Self::asked_about(events)
            .into_iter()
            .filter_map(|id| Some((id, memory.recall(id.0, id.1)?)))
            .collect();
        Self {
            earlier,
            ..Self::default()
        }
    }

    /// The aggregates a batch may ask about: its events' own, and the runs their payloads
    /// name.
    fn asked_about(events: &'e [StoredEvent]) -> HashSet<AggregateRef<'e>> {
        let mut wanted: HashSet<AggregateRef<'e>> = HashSet::new();
        for e in events {
            wanted.insert((&e.aggregate_type, &e.aggregate_id));
            if let Some(run_id) = payload_field(e, &["run_id"]) {
                wanted.insert((OperationRun::TYPE, run_id));
            }
        }
        wanted
    }

    /// The batch's rows, each event's tenant found as applying the events one at a time
    /// would find it.
    fn build(&mut self, events: &'e [StoredEvent]) -> Result<(), ConsumerError> {
        for e in events {
            let tenant_key = self.tenant_of(e);
            self.push(e, tenant_key.clone())?;
            if let Some(key) = tenant_key {
                if let Some(scope) = scope_filled_in_by(e)? {
                    self.fill_in(scope, &key);
                }
                self.remember(e, key);
            }
        }
        Ok(())
    }

    /// The tenant of `e`: from the event itself, or its aggregate's (or run's) rows.
    fn tenant_of(&mut self, e: &'e StoredEvent) -> Option<String> {
        if e.aggregate_type == Tenant::TYPE {
            return Some(e.aggregate_id.clone());
        }
        let key = payload_field(e, &["tenant_key"])
            .or_else(|| payload_field(e, &["context", "tenant_key"]));
        if let Some(key) = key {
            return Some(key.to_owned());
        }
        match payload_field(e, &["run_id"]) {
            Some(run_id) => self.lookup(OperationRun::TYPE, run_id),
            None => self.lookup(&e.aggregate_type, &e.aggregate_id),
        }
    }

    /// The first tenant of an aggregate's rows, as a query would find it at this point of
    /// the batch (earlier rows first, then this batch's); remembered for the batch.
    fn lookup(&mut self, aggregate_type: &'e str, aggregate_id: &'e str) -> Option<String> {
        let id = (aggregate_type, aggregate_id);
        if let Some(known) = self.known.get(&id) {
            return known.clone();
        }
        let filled = (aggregate_type == ScopeLock::TYPE)
            .then(|| self.filled.get(aggregate_id))
            .flatten();
        let earlier = self.earlier.get(&id).and_then(|rows| match filled {
            // Filling in gave every row without a tenant this one, the first row too.
            Some(tenant) => Some(rows.first.clone().unwrap_or_else(|| tenant.clone())),
            None => rows.known.clone(),
        });
        let found = earlier.or_else(|| {
            let rows = &self.rows;
            (0..rows.global_position.len())
                .find(|&r| {
                    rows.aggregate_type[r] == aggregate_type
                        && rows.aggregate_id[r] == aggregate_id
                        && rows.tenant_key[r].is_some()
                })
                .and_then(|r| rows.tenant_key[r].clone())
        });
        self.known.insert(id, found.clone());
        found
    }

    fn remember(&mut self, e: &'e StoredEvent, tenant_key: String) {
        let id = (e.aggregate_type.as_str(), e.aggregate_id.as_str());
        self.known.insert(id, Some(tenant_key));
    }

    fn push(
        &mut self,
        e: &'e StoredEvent,
        tenant_key: Option<String>,
    ) -> Result<(), ConsumerError> {
        let rows = &mut self.rows;
        rows.workspace_id.push(required_meta(e, "workspace")?);
        rows.actor.push(required_meta(e, "actor")?);
        rows.role.push(required_meta(e, "role")?);
        rows.global_position.push(e.position.global_position);
        rows.recorded_at.push(e.recorded_at);
        rows.action.push(&e.event_type);
        rows.aggregate_type.push(&e.aggregate_type);
        rows.aggregate_id.push(&e.aggregate_id);
        rows.tenant_key.push(tenant_key);
        rows.correlation_id.push(e.meta("correlation_id"));
        rows.causation_id.push(e.meta("causation_id"));
        rows.request_id.push(e.meta("request_id"));
        rows.details.push(details(e));
        Ok(())
    }

    /// The scope's rows without a tenant get `tenant_key`: this batch's now, the earlier
    /// ones when the batch is written.
    fn fill_in(&mut self, scope: String, tenant_key: &str) {
        let rows = &mut self.rows;
        for r in 0..rows.global_position.len() {
            if rows.tenant_key[r].is_none()
                && rows.aggregate_type[r] == ScopeLock::TYPE
                && rows.aggregate_id[r] == scope
            {
                rows.tenant_key[r] = Some(tenant_key.to_owned());
            }
        }
        // Once filled, the earlier rows have none left without a tenant.
        self.filled
            .entry(scope)
            .or_insert_with(|| tenant_key.to_owned());
    }

    /// The batch's statements, their parameters encoded (owning nothing of the events):
    /// what fills in the earlier rows' scopes, and the rows.
    fn encode(self, fill_in: FillIn) -> Result<Encoded, ConsumerError> {
        let mut filling = PgArguments::default();
        let fill_in = match fill_in {
            FillIn::ByAggregate if !self.filled.is_empty() => {
                let (scopes, tenants): (Vec<String>, Vec<String>) = self.filled.into_iter().unzip();
                filling.add(scopes).map_err(sqlx::Error::Encode)?;
                filling.add(tenants).map_err(sqlx::Error::Encode)?;
                filling.add(ScopeLock::TYPE).map_err(sqlx::Error::Encode)?;
                Some((FILL_IN, filling))
            }
            FillIn::ByPosition { positions, tenants } if !positions.is_empty() => {
                filling.add(positions).map_err(sqlx::Error::Encode)?;
                filling.add(tenants).map_err(sqlx::Error::Encode)?;
                Some((FILL_IN_AT, filling))
            }
            _ => None,
        };
        let rows = self.rows;
        if rows.global_position.is_empty() {
            return Ok(Encoded {
                fill_in,
                rows: None,
            });
        }
        let mut args = PgArguments::default();
        let add =
            |result: Result<(), sqlx::error::BoxDynError>| result.map_err(sqlx::Error::Encode);
        add(args.add(rows.global_position))?;
        add(args.add(rows.workspace_id))?;
        add(args.add(rows.recorded_at))?;
        add(args.add(rows.actor))?;
        add(args.add(rows.role))?;
        add(args.add(rows.action))?;
        add(args.add(rows.aggregate_type))?;
        add(args.add(rows.aggregate_id))?;
        add(args.add(rows.tenant_key))?;
        add(args.add(rows.correlation_id))?;
        add(args.add(rows.causation_id))?;
        add(args.add(rows.request_id))?;
        add(args.add(rows.details))?;
        Ok(Encoded {
            fill_in,
            rows: Some(args),
        })
    }
}

/// A batch's statements with their parameters encoded, ready to send.
struct Encoded {
    fill_in: Option<(&'static str, PgArguments)>,
    rows: Option<PgArguments>,
}

impl Encoded {
    /// Fills in the earlier rows' scopes, then writes the batch's rows.
    async fn write(self, tx: &mut PgConnection, applied: Applied) -> Result<(), ConsumerError> {
        if let Some((statement, args)) = self.fill_in {
            sqlx::query_with(statement, args)
                .persistent(false)
                .execute(&mut *tx)
                .await?;
        }
        let Some(rows) = self.rows else {
            return Ok(());
        };
        let insert = match applied {
            Applied::Maybe => format!("{INSERT}{ON_CONFLICT}"),
            Applied::Never => INSERT.to_owned(),
        };
        sqlx::query_with(&insert, rows).execute(&mut *tx).await?;
        Ok(())
    }
}

/// The scope whose rows a run's queueing fills in with the run's tenant: a scope is
/// acquired just before its run is queued, when the run's tenant is not known yet.
fn scope_filled_in_by(e: &StoredEvent) -> Result<Option<String>, ConsumerError> {
    if e.aggregate_type != OperationRun::TYPE || e.event_type != "RunQueued" {
        return Ok(None);
    }
    let RunEvent::RunQueued {
        workspace,
        context: Some(context),
        ..
    } = e.decode::<RunEvent>()?
    else {
        return Ok(None);
    };
    Ok(Some(scope_key(&workspace, context.target_scope)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::run::FailureSummary;
    use domain::tenant::SnapshotSource;
    use domain::ReasonCode;
    use std::collections::BTreeMap;

    fn stored<E: serde::Serialize + cqrs_es::DomainEvent>(
        aggregate_type: &str,
        event: E,
    ) -> StoredEvent {
        StoredEvent {
            position: store::Position::default(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: "a".into(),
            sequence: 1,
            event_type: event.event_type(),
            event_version: "1.0".into(),
            payload: serde_json::to_value(&event).unwrap(),
            metadata: Value::Null,
            recorded_at: chrono::Utc::now(),
        }
    }

    fn counts(policy_count: i64, unchanged: i64) -> BTreeMap<String, i64> {
        BTreeMap::from([
            ("steps_completed".to_owned(), 3),
            ("policy_count".to_owned(), policy_count),
            ("unchanged".to_owned(), unchanged),
        ])
    }

    #[test]
    fn a_resyncs_end_carries_its_policy_count_and_unchanged_flag() {
        let succeeded = RunEvent::RunSucceeded {
            summary_counts: counts(4, 1),
            at: chrono::Utc::now(),
            progress: vec![],
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, succeeded)),
            Some(
                json!({"summary_counts": {"steps_completed": 3, "policy_count": 4, "unchanged": 1}})
            )
        );
        let partial = RunEvent::RunPartiallySucceeded {
            summary_counts: counts(4, 0),
            failures: vec![FailureSummary {
                reason: ReasonCode::LicensePermissionMissing,
                message: "step refresh_licenses gave up".into(),
                step: Some("refresh_licenses".into()),
            }],
            at: chrono::Utc::now(),
            progress: vec![],
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, partial)),
            Some(json!({
                "summary_counts": {"steps_completed": 3, "policy_count": 4, "unchanged": 0},
                "failed_steps": [{"step": "refresh_licenses", "reason": "license_permission_missing"}],
            }))
        );
    }

    #[test]
    fn failures_carry_their_reason_message_and_next_steps() {
        let failed = RunEvent::RunFailed {
            failure: FailureSummary {
                reason: ReasonCode::ProviderAuthFailed,
                message: "token request refused".into(),
                step: Some("fetch_policies".into()),
            },
            at: chrono::Utc::now(),
            progress: vec![],
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, failed)),
            Some(json!({
                "reason": "provider_auth_failed", "message": "token request refused",
                "step": "fetch_policies",
            }))
        );
        let blocked = RunEvent::RunBlocked {
            reason: ReasonCode::ProviderConsentMissing,
            next_steps: vec![domain::run::NextStep::GrantConsent],
            at: chrono::Utc::now(),
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, blocked)),
            Some(json!({ "reason": "provider_consent_missing", "next_steps": ["grant_consent"] }))
        );
        let errored = ConnectionEvent::ConnectionErrored {
            reason: ReasonCode::GraphUnavailable,
            message: "service unavailable".into(),
            at: chrono::Utc::now(),
        };
        assert_eq!(
            details(&stored(ProviderConnection::TYPE, errored)),
            Some(json!({ "reason": "graph_unavailable", "message": "service unavailable" }))
        );
    }

    #[test]
    fn a_completed_step_carries_its_summary() {
        let summary = json!({"snapshot_id": null, "policy_count": 2, "unchanged": true});
        let completed = RunEvent::RunStepCompleted {
            step: "snapshot_policies".into(),
            attempt: 1,
            summary: summary.clone(),
            at: chrono::Utc::now(),
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, completed)),
            Some(json!({"step": "snapshot_policies", "attempt": 1, "summary": summary}))
        );
    }

    #[test]
    fn a_snapshot_carries_its_id_and_size_but_never_its_policies() {
        let raw = json!({"id": "p1", "displayName": "Secret-looking policy name", "state": "enabled",
            "conditions": {}, "grantControls": null, "sessionControls": null});
        let policies = domain::policy::curate(&[raw]).unwrap();
        let id = uuid::Uuid::now_v7();
        let snapshotted = TenantEvent::PolicySnapshotted {
            snapshot_id: id,
            hash: "h".into(),
            policies,
            diff: None,
            source: SnapshotSource::Import,
            taken_at: chrono::Utc::now(),
        };
        let found = details(&stored(Tenant::TYPE, snapshotted)).unwrap();
        assert_eq!(
            found,
            json!({"snapshot_id": id, "policy_count": 1, "source": "import", "changes": null})
        );
        assert!(!found.to_string().contains("Secret-looking"));
    }

    #[test]
    fn other_events_and_undecodable_ones_have_no_details() {
        let started = RunEvent::RunStarted {
            at: chrono::Utc::now(),
        };
        assert_eq!(details(&stored(OperationRun::TYPE, started)), None);
        let mut broken = stored(
            OperationRun::TYPE,
            RunEvent::RunSucceeded {
                summary_counts: counts(1, 0),
                at: chrono::Utc::now(),
                progress: vec![],
            },
        );
        broken.payload = json!({"RunSucceeded": {"summary_counts": "many"}});
        assert_eq!(details(&broken), None);
    }
}
