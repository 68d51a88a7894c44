//! The runs read model: `rm_runs` (one row per operation run) and `rm_run_steps` (one row
//! per step attempt). Each batch that changes a run ends with a notification on
//! [`RUNS_CHANNEL`], delivered when the batch commits, so subscribers follow runs live.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::run::{OperationRun, RunEvent, RunOutcome, RunStatus, StepStatus};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row};
use store::{Consumer, ConsumerError, Payloads, StoredEvent};
use uuid::Uuid;

use crate::event::{events_of, required_meta, serde_name, uuid_id, versioned};
use crate::Projection;

/// The channel the runs projection notifies on, once per run a batch changed (a rebuild
/// changes them all). The payload is a JSON object `{"run_id": "<uuid>", "workspace":
/// "<workspace id>", "tenant_key": "<workspace>:<entra guid>"}`; the run's state is in its
/// `rm_runs` row, committed before the notification is delivered.
pub use store::checkpoints::RUNS_CHANNEL;

/// Projects [`OperationRun`] events into `rm_runs` and `rm_run_steps`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Runs;

const NAME: &str = "runs";

const QUEUE: &str = "\
    INSERT INTO rm_runs AS r (run_id, version, workspace_id, run_type, tenant_key, status, \
        outcome, context, initiator, queued_at, updated_at, retry_of) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11) \
    ON CONFLICT (run_id) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, run_type = EXCLUDED.run_type, \
        tenant_key = EXCLUDED.tenant_key, status = EXCLUDED.status, \
        outcome = EXCLUDED.outcome, context = EXCLUDED.context, \
        initiator = EXCLUDED.initiator, queued_at = EXCLUDED.queued_at, \
        updated_at = EXCLUDED.updated_at, retry_of = EXCLUDED.retry_of \
    WHERE r.version < EXCLUDED.version \
    RETURNING run_id";
const START: &str = "UPDATE rm_runs SET version = $2, updated_at = $3, status = $4, \
    started_at = $3 WHERE run_id = $1 AND version < $2 RETURNING run_id";
/// A step event changes the run's step rows, and the run's version and time.
const TOUCH: &str = "UPDATE rm_runs SET version = $2, updated_at = $3 \
    WHERE run_id = $1 AND version < $2 RETURNING run_id";
const CANCEL_REQUESTED: &str = "UPDATE rm_runs SET version = $2, updated_at = $3, \
    cancel_requested = true WHERE run_id = $1 AND version < $2 RETURNING run_id";
/// Every way a run ends: its outcome and whatever the ending event reports (with the start
/// time its carried progress holds).
const COMPLETE: &str = "UPDATE rm_runs SET version = $2, updated_at = $3, status = $4, \
    completed_at = $3, outcome = $5, started_at = coalesce($10, started_at), \
    summary_counts = coalesce($6, summary_counts), \
    failure_summary = coalesce($7, failure_summary), \
    reason_code = coalesce($8, reason_code), \
    next_steps = coalesce($9, next_steps) \
    WHERE run_id = $1 AND version < $2 RETURNING run_id";
/// The upsert of a step attempt's row, rewritten by a version `$cmp` the row's.
macro_rules! step_upsert {
    ($cmp:literal) => {
        concat!(
            "INSERT INTO rm_run_steps AS s (run_id, version, step, attempt, workspace_id, status, \
                 reason_code, message, summary, retry_at, started_at, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (run_id, step, attempt) DO UPDATE SET version = EXCLUDED.version, \
                 workspace_id = EXCLUDED.workspace_id, status = EXCLUDED.status, \
                 reason_code = EXCLUDED.reason_code, message = EXCLUDED.message, \
                 summary = EXCLUDED.summary, retry_at = EXCLUDED.retry_at, \
                 started_at = coalesce(EXCLUDED.started_at, s.started_at), \
                 recorded_at = EXCLUDED.recorded_at \
             WHERE s.version ",
            $cmp,
            " EXCLUDED.version"
        )
    };
}
/// Each event of an attempt rewrites its row, except the start time it keeps.
const STEP: &str = step_upsert!("<");
/// The same for the attempts a run's end carries, all at the end's version: each is
/// written in order (an attempt's later event over its earlier one), and a replay of the
/// end writes them all again.
const CARRIED_STEP: &str = step_upsert!("<=");
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

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        let mut changed = BTreeSet::new();
        for decoded in events_of::<OperationRun>(NAME, events) {
            let (e, event) = decoded?;
            changed.extend(apply(tx, e, event).await?);
        }
        // A replay that changed nothing notifies nobody.
        if !changed.is_empty() {
            sqlx::query(NOTIFY)
                .bind(RUNS_CHANNEL)
                .bind(changed.into_iter().collect::<Vec<Uuid>>())
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

impl Projection for Runs {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_runs", "rm_run_steps"]
    }
}

/// Applies one event; returns the run id when its `rm_runs` row changed.
async fn apply(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: RunEvent,
) -> Result<Option<Uuid>, ConsumerError> {
    let id = uuid_id(e)?;
    let query = match event {
        RunEvent::RunQueued {
            workspace,
            run_type,
            context,
            initiator,
            queued_at,
            retry_of,
            workspace_module,
            workspace_subject,
        } => versioned(QUEUE, id, e)
            .bind(workspace.to_string())
            .bind(run_type)
            .bind(context.as_ref().map(|c| c.tenant_key.to_string()))
            .bind(serde_name(e, &RunStatus::Queued)?)
            .bind(serde_name(e, &RunOutcome::Pending)?)
            // A run over the whole workspace has no tenant context: its module stands in.
            .bind(match context {
                Some(context) => {
                    serde_json::to_value(context).map_err(|err| ConsumerError::Refused {
                        position: e.position,
                        message: format!("run context cannot be written: {err}"),
                    })?
                }
                None => match workspace_subject {
                    Some(subject) => {
                        serde_json::json!({ "module": workspace_module, "subject": subject })
                    }
                    None => serde_json::json!({ "module": workspace_module }),
                },
            })
            .bind(initiator)
            .bind(queued_at)
            .bind(retry_of.map(|r| r.as_uuid())),
        RunEvent::RunStarted { at } => versioned(START, id, e)
            .bind(at)
            .bind(serde_name(e, &RunStatus::Running)?),
        RunEvent::RunStepStarted { .. }
        | RunEvent::RunStepCompleted { .. }
        | RunEvent::RunStepFailed { .. } => {
            let at = event.at();
            if let Some(row) = StepRow::of(event) {
                record_step(tx, e, id, row, STEP).await?;
            }
            versioned(TOUCH, id, e).bind(at)
        }
        RunEvent::RunCancelRequested { at } => versioned(CANCEL_REQUESTED, id, e).bind(at),
        RunEvent::RunSucceeded {
            summary_counts,
            at,
            progress,
        } => Ending {
            summary_counts: Some(to_json(e, &summary_counts)?),
            started_at: carry_in(tx, e, id, progress).await?,
            ..Ending::new(RunOutcome::Succeeded, at)
        }
        .query(e, id)?,
        RunEvent::RunPartiallySucceeded {
            summary_counts,
            failures,
            at,
            progress,
        } => Ending {
            summary_counts: Some(to_json(e, &summary_counts)?),
            failure_summary: Some(to_json(e, &failures)?),
            started_at: carry_in(tx, e, id, progress).await?,
            ..Ending::new(RunOutcome::PartiallySucceeded, at)
        }
        .query(e, id)?,
        RunEvent::RunFailed {
            failure,
            at,
            progress,
        } => Ending {
            reason_code: Some(failure.reason.as_str()),
            // A list, as the aggregate keeps it and as a partial success reports it.
            failure_summary: Some(to_json(e, &[failure])?),
            started_at: carry_in(tx, e, id, progress).await?,
            ..Ending::new(RunOutcome::Failed, at)
        }
        .query(e, id)?,
        RunEvent::RunBlocked {
            reason,
            next_steps,
            at,
        } => Ending {
            reason_code: Some(reason.as_str()),
            next_steps: Some(to_json(e, &next_steps)?),
            ..Ending::new(RunOutcome::Blocked, at)
        }
        .query(e, id)?,
        RunEvent::RunCancelled { at, progress } => Ending {
            started_at: carry_in(tx, e, id, progress).await?,
            ..Ending::new(RunOutcome::Cancelled, at)
        }
        .query(e, id)?,
    };
    let row = query.fetch_optional(&mut *tx).await?;
    Ok(row.map(|r| r.try_get("run_id")).transpose()?)
}

/// Writes the step attempts a run's end carries (issue 13: the engine kept them off the
/// log until the end); returns the start time it carries.
async fn carry_in(
    tx: &mut PgConnection,
    e: &StoredEvent,
    id: Uuid,
    progress: Vec<RunEvent>,
) -> Result<Option<DateTime<Utc>>, ConsumerError> {
    let mut started_at = None;
    for event in progress {
        if let RunEvent::RunStarted { at } = event {
            started_at = Some(at);
        } else if let Some(row) = StepRow::of(event) {
            record_step(tx, e, id, row, CARRIED_STEP).await?;
        }
    }
    Ok(started_at)
}

/// How a run ended. `None` leaves a column as it was.
struct Ending {
    outcome: RunOutcome,
    at: DateTime<Utc>,
    summary_counts: Option<serde_json::Value>,
    failure_summary: Option<serde_json::Value>,
    reason_code: Option<&'static str>,
    next_steps: Option<serde_json::Value>,
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

    fn query<'q>(
        self,
        e: &'q StoredEvent,
        id: Uuid,
    ) -> Result<Query<'q, Postgres, PgArguments>, ConsumerError> {
        Ok(versioned(COMPLETE, id, e)
            .bind(self.at)
            .bind(serde_name(e, &RunStatus::Completed)?)
            .bind(serde_name(e, &self.outcome)?)
            .bind(self.summary_counts)
            .bind(self.failure_summary)
            .bind(self.reason_code)
            .bind(self.next_steps)
            .bind(self.started_at))
    }
}

/// One attempt of a step, as `rm_run_steps` stores it.
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

async fn record_step(
    tx: &mut PgConnection,
    e: &StoredEvent,
    run_id: Uuid,
    row: StepRow,
    query: &'static str,
) -> Result<(), ConsumerError> {
    let attempt = i32::try_from(row.attempt).map_err(|_| ConsumerError::Refused {
        position: e.position,
        message: format!("step attempt {} is out of range", row.attempt),
    })?;
    versioned(query, run_id, e)
        .bind(row.step)
        .bind(attempt)
        .bind(required_meta(e, "workspace")?)
        .bind(serde_name(e, &row.status)?)
        .bind(row.reason_code)
        .bind(row.message)
        .bind(row.summary)
        .bind(row.retry_at)
        .bind(row.started_at)
        .bind(row.at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn to_json<T: serde::Serialize>(
    e: &StoredEvent,
    value: &T,
) -> Result<serde_json::Value, ConsumerError> {
    serde_json::to_value(value).map_err(|source| ConsumerError::Decode {
        position: e.position,
        event_type: e.event_type.clone(),
        source,
    })
}
