//! The runs read model: `rm_runs` (one row per operation run) and `rm_run_steps` (one row
//! per step attempt). Each batch that changes a run ends with a notification on
//! [`RUNS_CHANNEL`], delivered when the batch commits, so subscribers follow runs live.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::run::{OperationRun, RunEvent, RunOutcome, RunStatus, StepStatus};
use sqlx::PgConnection;
use store::{Consumer, ConsumerError, Payloads, Position, StoredEvent};
use uuid::Uuid;

use crate::event::{events_of, required_meta, serde_name, to_json, uuid_id};
use crate::Projection;

/// The channel the runs projection notifies on, once per run a batch changed (a rebuild,
/// once it has swapped its tables in, per run the live tables had not caught up with). The
/// payload is a JSON object `{"run_id": "<uuid>", "workspace": "<workspace id>",
/// "tenant_key": "<workspace>:<entra guid>"}`; the run's state is in its `rm_runs` row,
/// committed before the notification is delivered.
pub use store::checkpoints::RUNS_CHANNEL;

/// Projects [`OperationRun`] events into `rm_runs` and `rm_run_steps`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Runs;

const NAME: &str = "runs";

/// The columns of `rm_runs` this projection writes, in this order everywhere below.
const RUN_COLUMNS: &str = "run_id, version, workspace_id, run_type, tenant_key, status, \
    outcome, cancel_requested, context, initiator, summary_counts, failure_summary, \
    reason_code, next_steps, queued_at, started_at, completed_at, updated_at, retry_of";
const STEP_COLUMNS: &str = "run_id, step, attempt, version, workspace_id, status, \
    reason_code, message, summary, retry_at, started_at, recorded_at";
const NOTIFY: &str = "\
    SELECT pg_notify($1, json_build_object('run_id', run_id, 'workspace', workspace_id, \
        'tenant_key', tenant_key)::text) \
    FROM rm_runs WHERE run_id = ANY($2)";

#[async_trait::async_trait]
impl Consumer for Runs {
    fn name(&self) -> &str {
        NAME
    }

    fn payloads_of(&self) -> Payloads {
        Payloads::OfAggregates(&[OperationRun::TYPE])
    }

    /// The batch's runs and steps are read once, changed in memory event by event exactly
    /// as one statement per event would change them (the `version` guard included), and
    /// written back in one statement per table.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        apply(tx, events, Notify::ChangedRuns).await
    }
}

/// Whether a batch notifies [`RUNS_CHANNEL`] of the runs it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notify {
    ChangedRuns,
    /// A rebuild writes shadow tables that readers do not see until the swap; it notifies
    /// after it (see [`Projection::announce_rebuilt`]).
    Nothing,
}

async fn apply(
    tx: &mut PgConnection,
    events: &[StoredEvent],
    notify: Notify,
) -> Result<(), ConsumerError> {
    let ids: Vec<Uuid> = events
        .iter()
        .filter(|e| e.aggregate_type == OperationRun::TYPE)
        .filter_map(|e| e.aggregate_id.parse().ok())
        .collect::<BTreeSet<Uuid>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::load(tx, &ids).await?;
    for decoded in events_of::<OperationRun>(NAME, events) {
        let (e, event) = decoded?;
        batch.apply(e, event)?;
    }
    batch.write(tx, notify).await
}

#[async_trait::async_trait]
impl Projection for Runs {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_runs", "rm_run_steps"]
    }

    async fn rebuild_handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        apply(tx, events, Notify::Nothing).await
    }

    /// Notifies the runs whose events the live tables had not caught up with: to a
    /// subscriber, the rows the swap brought in that it has not been told of.
    async fn announce_rebuilt(
        &self,
        tx: &mut PgConnection,
        live_reached: Position,
        rebuilt_to: Position,
    ) -> Result<(), sqlx::Error> {
        let runs: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = $1 \
               AND (transaction_id, global_position) > ($2::text::xid8, $3) \
               AND (transaction_id, global_position) <= ($4::text::xid8, $5)",
        )
        .persistent(false)
        .bind(OperationRun::TYPE)
        .bind(live_reached.transaction_id.to_string())
        .bind(live_reached.global_position)
        .bind(rebuilt_to.transaction_id.to_string())
        .bind(rebuilt_to.global_position)
        .fetch_all(&mut *tx)
        .await?;
        let runs: Vec<Uuid> = runs.iter().filter_map(|id| id.parse().ok()).collect();
        if !runs.is_empty() {
            // The same notice a live batch sends.
            sqlx::query(NOTIFY)
                .persistent(false)
                .bind(RUNS_CHANNEL)
                .bind(runs)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    fn rebuild_weight(&self) -> u32 {
        2
    }

    /// The run lists' indexes (migration 20261204000001); the handler reads runs and steps
    /// by run id only.
    fn indexes_built_after_rebuild(&self) -> &'static [&'static str] {
        &[
            "rm_runs_newest",
            "rm_runs_tenant_newest",
            "rm_runs_type",
            "rm_runs_active",
            "rm_runs_unsuccessful",
        ]
    }
}

/// An `rm_runs` row.
#[derive(Debug, Clone, sqlx::FromRow)]
struct RunRow {
    run_id: Uuid,
    version: i64,
    workspace_id: String,
    run_type: String,
    tenant_key: Option<String>,
    status: String,
    outcome: String,
    cancel_requested: bool,
    context: serde_json::Value,
    initiator: String,
    summary_counts: serde_json::Value,
    failure_summary: Option<serde_json::Value>,
    reason_code: Option<String>,
    next_steps: serde_json::Value,
    queued_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    retry_of: Option<Uuid>,
}

/// An `rm_run_steps` row: one attempt of a step.
#[derive(Debug, Clone, sqlx::FromRow)]
struct StepRecord {
    run_id: Uuid,
    step: String,
    attempt: i32,
    version: i64,
    workspace_id: String,
    status: String,
    reason_code: Option<String>,
    message: Option<String>,
    summary: Option<serde_json::Value>,
    retry_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
}

type StepKey = (Uuid, String, i32);

/// The rows of one batch's runs, as they are at each point of the batch.
struct Batch {
    runs: HashMap<Uuid, RunRow>,
    steps: HashMap<StepKey, StepRecord>,
    /// Runs whose row an event changed (written back and notified).
    changed: BTreeSet<Uuid>,
    changed_steps: BTreeSet<StepKey>,
}

impl Batch {
    async fn load(tx: &mut PgConnection, ids: &[Uuid]) -> Result<Self, ConsumerError> {
        // Planned for every batch: a plan cached while the table was small (a rebuild's
        // shadow starts empty) scans it whole for every batch once it has grown.
        let runs: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM rm_runs WHERE run_id = ANY($1)"
        ))
        .persistent(false)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        let steps: Vec<StepRecord> = sqlx::query_as(&format!(
            "SELECT {STEP_COLUMNS} FROM rm_run_steps WHERE run_id = ANY($1)"
        ))
        .persistent(false)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Self {
            runs: runs.into_iter().map(|r| (r.run_id, r)).collect(),
            steps: steps
                .into_iter()
                .map(|s| ((s.run_id, s.step.clone(), s.attempt), s))
                .collect(),
            changed: BTreeSet::new(),
            changed_steps: BTreeSet::new(),
        })
    }

    /// The run's row if `e` is newer than it: what `WHERE version < $2` selects.
    fn newer(&mut self, id: Uuid, e: &StoredEvent) -> Option<&mut RunRow> {
        let row = self.runs.get_mut(&id).filter(|r| r.version < e.sequence)?;
        row.version = e.sequence;
        self.changed.insert(id);
        Some(row)
    }

    fn apply(&mut self, e: &StoredEvent, event: RunEvent) -> Result<(), ConsumerError> {
        let id = uuid_id(e)?;
        match event {
            RunEvent::RunQueued {
                workspace,
                run_type,
                context,
                initiator,
                queued_at,
                retry_of,
                workspace_module,
                workspace_subject,
            } => {
                let tenant_key = context.as_ref().map(|c| c.tenant_key.to_string());
                // A run over the whole workspace has no tenant context: its module stands
                // in.
                let context = match context {
                    Some(context) => to_json(e, &context)?,
                    None => match workspace_subject {
                        Some(subject) => {
                            serde_json::json!({ "module": workspace_module, "subject": subject })
                        }
                        None => serde_json::json!({ "module": workspace_module }),
                    },
                };
                let queued = RunRow {
                    run_id: id,
                    version: e.sequence,
                    workspace_id: workspace.to_string(),
                    run_type,
                    tenant_key,
                    status: serde_name(e, &RunStatus::Queued)?,
                    outcome: serde_name(e, &RunOutcome::Pending)?,
                    cancel_requested: false,
                    context,
                    initiator,
                    summary_counts: serde_json::json!({}),
                    failure_summary: None,
                    reason_code: None,
                    next_steps: serde_json::json!([]),
                    queued_at,
                    started_at: None,
                    completed_at: None,
                    updated_at: queued_at,
                    retry_of: retry_of.map(|r| r.as_uuid()),
                };
                match self.runs.get_mut(&id) {
                    None => {
                        self.runs.insert(id, queued);
                        self.changed.insert(id);
                    }
                    Some(row) if row.version < e.sequence => {
                        // What the queueing says; the rest of the row stays.
                        *row = RunRow {
                            cancel_requested: row.cancel_requested,
                            summary_counts: row.summary_counts.clone(),
                            failure_summary: row.failure_summary.take(),
                            reason_code: row.reason_code.take(),
                            next_steps: row.next_steps.clone(),
                            started_at: row.started_at,
                            completed_at: row.completed_at,
                            ..queued
                        };
                        self.changed.insert(id);
                    }
                    Some(_) => {}
                }
            }
            RunEvent::RunStarted { at } => {
                let running = serde_name(e, &RunStatus::Running)?;
                if let Some(row) = self.newer(id, e) {
                    row.updated_at = at;
                    row.status = running;
                    row.started_at = Some(at);
                }
            }
            RunEvent::RunStepStarted { .. }
            | RunEvent::RunStepCompleted { .. }
            | RunEvent::RunStepFailed { .. } => {
                let at = event.at();
                if let Some(row) = StepRow::of(event) {
                    self.record_step(e, id, row, false)?;
                }
                self.touch(id, e, at);
            }
            RunEvent::RunCancelRequested { at } => {
                if let Some(row) = self.newer(id, e) {
                    row.updated_at = at;
                    row.cancel_requested = true;
                }
            }
            RunEvent::RunSucceeded {
                summary_counts,
                at,
                progress,
            } => {
                let ending = Ending {
                    summary_counts: Some(to_json(e, &summary_counts)?),
                    started_at: self.carry_in(e, id, progress)?,
                    ..Ending::new(RunOutcome::Succeeded, at)
                };
                self.end(id, e, ending)?;
            }
            RunEvent::RunPartiallySucceeded {
                summary_counts,
                failures,
                at,
                progress,
            } => {
                let ending = Ending {
                    summary_counts: Some(to_json(e, &summary_counts)?),
                    failure_summary: Some(to_json(e, &failures)?),
                    started_at: self.carry_in(e, id, progress)?,
                    ..Ending::new(RunOutcome::PartiallySucceeded, at)
                };
                self.end(id, e, ending)?;
            }
            RunEvent::RunFailed {
                failure,
                at,
                progress,
            } => {
                let ending = Ending {
                    started_at: self.carry_in(e, id, progress)?,
                    reason_code: Some(failure.reason.as_str()),
                    // A list, as the aggregate keeps it and as a partial success reports it.
                    failure_summary: Some(to_json(e, &[failure])?),
                    ..Ending::new(RunOutcome::Failed, at)
                };
                self.end(id, e, ending)?;
            }
            RunEvent::RunBlocked {
                reason,
                next_steps,
                at,
            } => {
                let ending = Ending {
                    reason_code: Some(reason.as_str()),
                    next_steps: Some(to_json(e, &next_steps)?),
                    ..Ending::new(RunOutcome::Blocked, at)
                };
                self.end(id, e, ending)?;
            }
            RunEvent::RunCancelled { at, progress } => {
                let ending = Ending {
                    started_at: self.carry_in(e, id, progress)?,
                    ..Ending::new(RunOutcome::Cancelled, at)
                };
                self.end(id, e, ending)?;
            }
        }
        Ok(())
    }

    /// Writes the step attempts a run's end carries (issue 13: the engine kept them off
    /// the log until the end); returns the start time it carries.
    fn carry_in(
        &mut self,
        e: &StoredEvent,
        id: Uuid,
        progress: Vec<RunEvent>,
    ) -> Result<Option<DateTime<Utc>>, ConsumerError> {
        let mut started_at = None;
        for event in progress {
            if let RunEvent::RunStarted { at } = event {
                started_at = Some(at);
            } else if let Some(row) = StepRow::of(event) {
                self.record_step(e, id, row, true)?;
            }
        }
        Ok(started_at)
    }

    /// A step event changes the run's step rows, and the run's version and time.
    fn touch(&mut self, id: Uuid, e: &StoredEvent, at: DateTime<Utc>) {
        if let Some(row) = self.newer(id, e) {
            row.updated_at = at;
        }
    }

    /// Every way a run ends: its outcome and whatever the ending event reports (what it
    /// does not report stays as it was).
    fn end(&mut self, id: Uuid, e: &StoredEvent, ending: Ending) -> Result<(), ConsumerError> {
        let completed = serde_name(e, &RunStatus::Completed)?;
        let outcome = serde_name(e, &ending.outcome)?;
        if let Some(row) = self.newer(id, e) {
            row.updated_at = ending.at;
            row.status = completed;
            row.completed_at = Some(ending.at);
            row.outcome = outcome;
            if let Some(counts) = ending.summary_counts {
                row.summary_counts = counts;
            }
            if let Some(failures) = ending.failure_summary {
                row.failure_summary = Some(failures);
            }
            if let Some(reason) = ending.reason_code {
                row.reason_code = Some(reason.to_owned());
            }
            if let Some(next_steps) = ending.next_steps {
                row.next_steps = next_steps;
            }
            if let Some(started_at) = ending.started_at {
                row.started_at = Some(started_at);
            }
        }
        Ok(())
    }

    /// Each event of an attempt rewrites its row, except the start time it keeps. The
    /// attempts a run's end `carried` are all at the end's version: each is written in
    /// order (an attempt's later event over its earlier one), and a replay of the end
    /// writes them all again.
    fn record_step(
        &mut self,
        e: &StoredEvent,
        run_id: Uuid,
        row: StepRow,
        carried: bool,
    ) -> Result<(), ConsumerError> {
        let attempt = i32::try_from(row.attempt).map_err(|_| ConsumerError::Refused {
            position: e.position,
            message: format!("step attempt {} is out of range", row.attempt),
        })?;
        let record = StepRecord {
            run_id,
            step: row.step,
            attempt,
            version: e.sequence,
            workspace_id: required_meta(e, "workspace")?.to_owned(),
            status: serde_name(e, &row.status)?,
            reason_code: row.reason_code.map(str::to_owned),
            message: row.message,
            summary: row.summary,
            retry_at: row.retry_at,
            started_at: row.started_at,
            recorded_at: row.at,
        };
        let key = (run_id, record.step.clone(), attempt);
        match self.steps.get_mut(&key) {
            Some(old) if old.version > e.sequence || (old.version == e.sequence && !carried) => {
                return Ok(())
            }
            Some(old) => {
                let started_at = record.started_at.or(old.started_at);
                *old = StepRecord {
                    started_at,
                    ..record
                };
            }
            None => {
                self.steps.insert(key.clone(), record);
            }
        }
        self.changed_steps.insert(key);
        Ok(())
    }

    /// Writes the changed rows back, then notifies their runs (delivered on commit). A
    /// replay that changed nothing writes and notifies nothing.
    async fn write(mut self, tx: &mut PgConnection, notify: Notify) -> Result<(), ConsumerError> {
        if !self.changed.is_empty() {
            let rows: Vec<RunRow> = self
                .changed
                .iter()
                .filter_map(|id| self.runs.remove(id))
                .collect();
            upsert_runs(tx, rows).await?;
        }
        if !self.changed_steps.is_empty() {
            let rows: Vec<StepRecord> = self
                .changed_steps
                .iter()
                .filter_map(|key| self.steps.remove(key))
                .collect();
            upsert_steps(tx, rows).await?;
        }
        if notify == Notify::ChangedRuns && !self.changed.is_empty() {
            sqlx::query(NOTIFY)
                .persistent(false)
                .bind(RUNS_CHANNEL)
                .bind(self.changed.into_iter().collect::<Vec<Uuid>>())
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

async fn upsert_runs(tx: &mut PgConnection, rows: Vec<RunRow>) -> Result<(), sqlx::Error> {
    let mut c = RunColumns::default();
    for r in rows {
        c.run_id.push(r.run_id);
        c.version.push(r.version);
        c.workspace_id.push(r.workspace_id);
        c.run_type.push(r.run_type);
        c.tenant_key.push(r.tenant_key);
        c.status.push(r.status);
        c.outcome.push(r.outcome);
        c.cancel_requested.push(r.cancel_requested);
        c.context.push(r.context);
        c.initiator.push(r.initiator);
        c.summary_counts.push(r.summary_counts);
        c.failure_summary.push(r.failure_summary);
        c.reason_code.push(r.reason_code);
        c.next_steps.push(r.next_steps);
        c.queued_at.push(r.queued_at);
        c.started_at.push(r.started_at);
        c.completed_at.push(r.completed_at);
        c.updated_at.push(r.updated_at);
        c.retry_of.push(r.retry_of);
    }
    sqlx::query(&format!(
        "INSERT INTO rm_runs AS r ({RUN_COLUMNS}) \
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::bool[], $9::jsonb[], $10::text[], $11::jsonb[], \
             $12::jsonb[], $13::text[], $14::jsonb[], $15::timestamptz[], $16::timestamptz[], \
             $17::timestamptz[], $18::timestamptz[], $19::uuid[]) \
         ON CONFLICT (run_id) DO UPDATE SET version = EXCLUDED.version, \
             workspace_id = EXCLUDED.workspace_id, run_type = EXCLUDED.run_type, \
             tenant_key = EXCLUDED.tenant_key, status = EXCLUDED.status, \
             outcome = EXCLUDED.outcome, cancel_requested = EXCLUDED.cancel_requested, \
             context = EXCLUDED.context, initiator = EXCLUDED.initiator, \
             summary_counts = EXCLUDED.summary_counts, \
             failure_summary = EXCLUDED.failure_summary, reason_code = EXCLUDED.reason_code, \
             next_steps = EXCLUDED.next_steps, queued_at = EXCLUDED.queued_at, \
             started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at, \
             updated_at = EXCLUDED.updated_at, retry_of = EXCLUDED.retry_of \
         WHERE r.version < EXCLUDED.version"
    ))
    .bind(c.run_id)
    .bind(c.version)
    .bind(c.workspace_id)
    .bind(c.run_type)
    .bind(c.tenant_key)
    .bind(c.status)
    .bind(c.outcome)
    .bind(c.cancel_requested)
    .bind(c.context)
    .bind(c.initiator)
    .bind(c.summary_counts)
    .bind(c.failure_summary)
    .bind(c.reason_code)
    .bind(c.next_steps)
    .bind(c.queued_at)
    .bind(c.started_at)
    .bind(c.completed_at)
    .bind(c.updated_at)
    .bind(c.retry_of)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `rm_runs` rows, a column each (for `unnest`).
#[derive(Default)]
struct RunColumns {
    run_id: Vec<Uuid>,
    version: Vec<i64>,
    workspace_id: Vec<String>,
    run_type: Vec<String>,
    tenant_key: Vec<Option<String>>,
    status: Vec<String>,
    outcome: Vec<String>,
    cancel_requested: Vec<bool>,
    context: Vec<serde_json::Value>,
    initiator: Vec<String>,
    summary_counts: Vec<serde_json::Value>,
    failure_summary: Vec<Option<serde_json::Value>>,
    reason_code: Vec<Option<String>>,
    next_steps: Vec<serde_json::Value>,
    queued_at: Vec<DateTime<Utc>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    completed_at: Vec<Option<DateTime<Utc>>>,
    updated_at: Vec<DateTime<Utc>>,
    retry_of: Vec<Option<Uuid>>,
}

async fn upsert_steps(tx: &mut PgConnection, rows: Vec<StepRecord>) -> Result<(), sqlx::Error> {
    let mut c = StepColumns::default();
    for s in rows {
        c.run_id.push(s.run_id);
        c.step.push(s.step);
        c.attempt.push(s.attempt);
        c.version.push(s.version);
        c.workspace_id.push(s.workspace_id);
        c.status.push(s.status);
        c.reason_code.push(s.reason_code);
        c.message.push(s.message);
        c.summary.push(s.summary);
        c.retry_at.push(s.retry_at);
        c.started_at.push(s.started_at);
        c.recorded_at.push(s.recorded_at);
    }
    sqlx::query(&format!(
        "INSERT INTO rm_run_steps AS s ({STEP_COLUMNS}) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::timestamptz[], \
             $11::timestamptz[], $12::timestamptz[]) \
         ON CONFLICT (run_id, step, attempt) DO UPDATE SET version = EXCLUDED.version, \
             workspace_id = EXCLUDED.workspace_id, status = EXCLUDED.status, \
             reason_code = EXCLUDED.reason_code, message = EXCLUDED.message, \
             summary = EXCLUDED.summary, retry_at = EXCLUDED.retry_at, \
             started_at = EXCLUDED.started_at, recorded_at = EXCLUDED.recorded_at \
         WHERE s.version < EXCLUDED.version"
    ))
    .bind(c.run_id)
    .bind(c.step)
    .bind(c.attempt)
    .bind(c.version)
    .bind(c.workspace_id)
    .bind(c.status)
    .bind(c.reason_code)
    .bind(c.message)
    .bind(c.summary)
    .bind(c.retry_at)
    .bind(c.started_at)
    .bind(c.recorded_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// `rm_run_steps` rows, a column each (for `unnest`).
#[derive(Default)]
struct StepColumns {
    run_id: Vec<Uuid>,
    step: Vec<String>,
    attempt: Vec<i32>,
    version: Vec<i64>,
    workspace_id: Vec<String>,
    status: Vec<String>,
    reason_code: Vec<Option<String>>,
    message: Vec<Option<String>>,
    summary: Vec<Option<serde_json::Value>>,
    retry_at: Vec<Option<DateTime<Utc>>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    recorded_at: Vec<DateTime<Utc>>,
}

/// How a run ended. `None` leaves a column as it was.
struct Ending {
    outcome: RunOutcome,
    at: DateTime<Utc>,
    summary_counts: Option<serde_json::Value>,
    failure_summary: Option<serde_json::Value>,
    reason_code: Option<&'static str>,
    next_steps: Option<serde_json::Value>,
    /// The start a run's end carries.
    started_at: Option<DateTime<Utc>>,
}

impl Ending {
    fn new(outcome: RunOutcome, at: DateTime<Utc>) -> Self {
        Self {
            outcome,
            at,
            summary_counts: None,
            failure_summary: None,
            reason_code: None,
            next_steps: None,
            started_at: None,
        }
    }
}

/// One attempt of a step, as an event reports it.
struct StepRow {
    step: String,
    attempt: u32,
    status: StepStatus,
    reason_code: Option<&'static str>,
    message: Option<String>,
    summary: Option<serde_json::Value>,
    retry_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
}

impl StepRow {
    /// The row a step event writes; `None` for other events.
    fn of(event: RunEvent) -> Option<Self> {
        Some(match event {
            RunEvent::RunStepStarted { step, attempt, at } => StepRow {
                started_at: Some(at),
                ..StepRow::new(step, attempt, StepStatus::Started, at)
            },
            RunEvent::RunStepCompleted {
                step,
                attempt,
                summary,
                at,
            } => StepRow {
                summary: Some(summary),
                ..StepRow::new(step, attempt, StepStatus::Completed, at)
            },
            RunEvent::RunStepFailed {
                step,
                attempt,
                reason,
                message,
                retry_at,
                at,
            } => StepRow {
                reason_code: Some(reason.as_str()),
                message: Some(message),
                retry_at,
                ..StepRow::new(step, attempt, StepStatus::Failed, at)
            },
            _ => return None,
        })
    }

    fn new(step: String, attempt: u32, status: StepStatus, at: DateTime<Utc>) -> Self {
        Self {
            step,
            attempt,
            status,
            reason_code: None,
            message: None,
            summary: None,
            retry_at: None,
            started_at: None,
            at,
        }
    }
}
