//! The scheduler (R7.3): fires the schedules that are due and fans each tick out to one run
//! per tenant of the schedule's workspace.
//!
//! Due schedules are found in `rm_schedules` (a hint: the schedule loaded from its stream
//! decides which tick is due). A tick fires by appending the first event of its own stream
//! against version 0, so of several schedulers firing the same tick exactly one goes on to
//! fan it out. Each run the fan-out starts has an id derived from the tick and the tenant,
//! so a fan-out repeated after a crash between firing and recording it starts nothing
//! twice; a pass repeats the fan-out of any tick left unrecorded for [`FAN_OUT_GRACE`].

use app::{AppError, Started};
use chrono::{DateTime, Utc};
use domain::schedule::Schedule;
use domain::schedule_tick::{tick_key, tick_run_id, FanOutCounts, ScheduleTick, TickCommand};
use domain::{Role, TenantKey, WorkspaceId};
use sqlx::PgPool;
use std::time::Duration;
use store::{BusError, CommandBus, Metadata, Wakeups};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::workflow::Registry;

/// How long a fired tick may go without its fan-out recorded before a pass fans it out
/// again (its scheduler presumably died). Well beyond what a fan-out takes; a repeat that
/// came too early would still start no run twice.
pub const FAN_OUT_GRACE: chrono::Duration = chrono::Duration::minutes(2);

/// The shortest pause between two passes, however many events arrive.
const MIN_PAUSE: Duration = Duration::from_secs(1);

/// Schedules (or unfinished fan-outs) handled per pass at most; the rest wait for the next.
const BATCH: i64 = 100;

/// Fires due schedules.
pub struct Scheduler {
    pub bus: CommandBus,
    /// The workflows runs are started for (each schedule's run type names one).
    pub workflows: Registry,
    /// How often to look for due schedules when no event wakes the scheduler earlier.
    pub poll: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Ticks this pass fired.
    pub fired: Vec<String>,
    /// Ticks this pass fanned out (fired now or left unfinished earlier), with the counts.
    pub fanned_out: Vec<(String, FanOutCounts)>,
    /// Schedules whose firing or fan-out failed (logged; a later pass tries again).
    pub failed: usize,
}

/// Why a pass, or one schedule in it, failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    App(#[from] AppError),
}

const DUE: &str = "SELECT schedule_id, last_due_at FROM rm_schedules \
    WHERE enabled AND next_due_at <= $1 ORDER BY next_due_at LIMIT $2";
const UNFINISHED: &str = "SELECT schedule_id, last_due_at FROM rm_schedules \
    WHERE last_due_at IS NOT NULL AND last_fanned_out_at IS NULL AND last_fired_at <= $1 \
    ORDER BY last_fired_at LIMIT $2";
/// The workspace's tenants from the log, not from a read model that may lag: a tenant's
/// stream begins with its registration, and an archived tenant is not part of the fleet.
/// Literals, not parameters, so the planner can use the partial indexes made for this.
const TENANTS: &str = "SELECT e.aggregate_id FROM events e \
    WHERE e.aggregate_type = 'tenant' AND e.sequence = 1 AND e.metadata ->> 'workspace' = $1 \
      AND NOT EXISTS (SELECT 1 FROM events a WHERE a.aggregate_type = 'tenant' \
          AND a.event_type = 'TenantArchived' AND a.aggregate_id = e.aggregate_id) \
    ORDER BY e.aggregate_id";

impl Scheduler {
    fn pool(&self) -> &PgPool {
        self.bus.pool()
    }

    /// One pass at `now`: first the fan-outs left unfinished (for longer than
    /// [`FAN_OUT_GRACE`]), then every schedule due. A schedule that fails is logged and
    /// left for a later pass; only a failure to list them fails the pass.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Pass, SchedulerError> {
        let mut pass = Pass::default();
        let unfinished: Vec<(String, DateTime<Utc>)> = sqlx::query_as(UNFINISHED)
            .bind(now - FAN_OUT_GRACE)
            .bind(BATCH)
            .fetch_all(self.pool())
            .await?;
        for (schedule_id, due_at) in unfinished {
            let tick = tick_key(&schedule_id, due_at);
            let span = tracing::info_span!("schedule", %schedule_id, tick);
            match self.resume(&tick).instrument(span).await {
                Ok(Some(counts)) => pass.fanned_out.push((tick, counts)),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(tick, error = %e, "repeating a schedule's fan-out failed");
                    pass.failed += 1;
                }
            }
        }
        let due: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(DUE)
            .bind(now)
            .bind(BATCH)
            .fetch_all(self.pool())
            .await?;
        for (schedule_id, last_due_at) in due {
            let span = tracing::info_span!("schedule", %schedule_id);
            match self
                .fire(&schedule_id, last_due_at, now, &mut pass)
                .instrument(span)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(schedule_id, error = %e, "firing a schedule failed");
                    pass.failed += 1;
                }
            }
        }
        Ok(pass)
    }

    /// Fires the schedule's tick due at `now` unless it fired already (here or elsewhere),
    /// then fans it out.
    async fn fire(
        &self,
        schedule_id: &str,
        last_due_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        pass: &mut Pass,
    ) -> Result<(), SchedulerError> {
        let schedule = self
            .bus
            .load::<Schedule>(schedule_id)
            .await
            .map_err(AppError::from)?
            .aggregate;
        let (Some(workspace), Some(due_at)) = (schedule.workspace.clone(), schedule.due_at(now))
        else {
            return Ok(());
        };
        // The read model may lag, but never shows a later tick than the one last fired.
        if last_due_at.is_some_and(|last| due_at <= last) {
            return Ok(());
        }
        let tick = tick_key(schedule_id, due_at);
        let meta = schedule_meta(&workspace, schedule_id, &tick);
        let target = Target {
            workspace: workspace.clone(),
            run_type: schedule.run_type.clone(),
        };
        let fire = TickCommand::Fire {
            workspace,
            schedule_id: schedule_id.to_owned(),
            run_type: schedule.run_type,
            due_at,
        };
        let mut uow = self.bus.begin().await?;
        match uow
            .execute_expecting::<ScheduleTick>(&tick, Some(0), fire, &meta)
            .await
        {
            Ok(_) => uow.commit().await?,
            // Another scheduler fired it first, and fans it out.
            Err(BusError::Conflict { .. }) => return Ok(()),
            Err(e) => return Err(AppError::from(e).into()),
        }
        tracing::info!(tick, "schedule fired");
        pass.fired.push(tick.clone());
        let counts = self.fan_out(&target, &tick, &meta).await?;
        pass.fanned_out.push((tick, counts));
        Ok(())
    }

    /// Fans out a fired tick whose fan-out is not recorded; `None` when there is nothing
    /// left to do.
    async fn resume(&self, tick: &str) -> Result<Option<FanOutCounts>, SchedulerError> {
        let state = self
            .bus
            .load::<ScheduleTick>(tick)
            .await
            .map_err(AppError::from)?
            .aggregate;
        let Some(workspace) = state.workspace.clone().filter(|_| state.needs_fan_out()) else {
            return Ok(None);
        };
        tracing::warn!(
            tick,
            "a fired tick has no recorded fan-out; fanning it out again"
        );
        let meta = schedule_meta(&workspace, &state.schedule_id, tick);
        let target = Target {
            workspace,
            run_type: state.run_type.clone(),
        };
        self.fan_out(&target, tick, &meta).await.map(Some)
    }

    /// Starts the tick's run on every tenant of the workspace (or finds it started), and
    /// records the counts. Any failure other than a tenant's own refusal leaves the tick
    /// unrecorded, for a later pass to repeat.
    async fn fan_out(
        &self,
        target: &Target,
        tick: &str,
        meta: &Metadata,
    ) -> Result<FanOutCounts, SchedulerError> {
        // A schedule saved for a type this binary no longer runs still starts its runs
        // (under the type's name as module); the engine then fails them as unknown.
        let workflow = self.workflows.get(&target.run_type);
        let module = workflow.map_or(target.run_type.as_str(), |w| w.module());
        let outcomes = if workflow.is_some_and(|w| w.over_workspace()) {
            // One run over the whole workspace (a contact sync), not one per tenant.
            vec![app::start_workspace_operation(&self.bus, meta, &target.run_type, module).await]
        } else {
            let tenants = workspace_tenants(self.pool(), &target.workspace).await?;
            // One fleet start: a few transactions per 64 tenants, each run id derived from
            // the tick, so a fan-out repeated after a crash starts nothing twice.
            let requests: Vec<app::StartRequest> = tenants
                .iter()
                .map(|tenant| app::StartRequest {
                    tenant: tenant.clone(),
                    run_id: Some(tick_run_id(tick, tenant)),
                })
                .collect();
            app::start_operations(&self.bus, meta, &requests, &target.run_type, module).await?
        };
        let mut counts = FanOutCounts::default();
        for outcome in outcomes {
            match outcome {
                Ok(Started::Queued(_)) => counts.started += 1,
                Ok(Started::Deduplicated(_)) => counts.deduplicated += 1,
                Ok(Started::Blocked(..)) => counts.blocked += 1,
                Err(AppError::ScopeBusy { .. }) => counts.busy += 1,
                Err(AppError::Refused { .. } | AppError::NotFound(_)) => counts.skipped += 1,
                Err(e) => return Err(e.into()),
            }
        }
        self.bus
            .execute::<ScheduleTick>(tick, TickCommand::CompleteFanOut { counts }, meta)
            .await
            .map_err(AppError::from)?;
        tracing::info!(
            tick,
            started = counts.started,
            deduplicated = counts.deduplicated,
            busy = counts.busy,
            blocked = counts.blocked,
            skipped = counts.skipped,
            "schedule fanned out"
        );
        Ok(counts)
    }

    /// Runs passes until `shutdown`: every `poll`, and sooner when events arrive (a
    /// schedule just set), but at most once per second.
    pub async fn run(self, mut wakeups: Wakeups, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            wakeups.mark_seen();
            let now = self.bus.services().clock.now();
            if let Err(e) = self.tick(now).await {
                tracing::error!(error = %e, "a scheduler pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MIN_PAUSE) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wakeups.wait(self.poll.saturating_sub(MIN_PAUSE)) => {}
            }
        }
    }
}

/// Where a tick's runs go: the schedule's workspace and operation.
struct Target {
    workspace: WorkspaceId,
    run_type: String,
}

/// The scheduler acting for a schedule: runs name the schedule as their initiator, and
/// everything a tick causes shares its correlation id.
fn schedule_meta(workspace: &WorkspaceId, schedule_id: &str, tick: &str) -> Metadata {
    let mut meta = Metadata::new(
        workspace.as_str(),
        format!("schedule:{schedule_id}"),
        Role::System,
    );
    meta.correlation_id = tick.to_owned();
    meta
}

/// The workspace's tenants that are not archived, in key order.
async fn workspace_tenants(
    pool: &PgPool,
    workspace: &WorkspaceId,
) -> Result<Vec<TenantKey>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(TENANTS)
        .bind(workspace.as_str())
        .fetch_all(pool)
        .await?;
    Ok(ids
        .into_iter()
        .filter_map(|id| match id.parse() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(aggregate_id = %id, error = %e, "a tenant stream's id is not a tenant key; left out of the fan-out");
                None
            }
        })
        .collect())
}
