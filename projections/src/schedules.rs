//! The schedules read model: `rm_schedules`, one row per schedule with its settings, its
//! next due time and its latest tick's fan-out, from schedule and schedule tick events.
//!
//! A row hears from two kinds of stream: the schedule's own (settings, guarded by the
//! schedule's `version`) and its ticks' (each a stream of its own, guarded by `last_due_at`,
//! which only moves forward). `next_due_at` is recomputed from the row after every event by
//! the domain's grid rule, so it depends only on the row and replays leave it unchanged.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::schedule::{next_due_after, Schedule, ScheduleEvent};
use domain::schedule_tick::{ScheduleTick, TickEvent};
use sqlx::PgConnection;
use store::{Consumer, ConsumerError, Payloads, StoredEvent};

use crate::event::{events_of, required_meta, versioned};
use crate::Projection;

/// Projects [`Schedule`] and [`ScheduleTick`] events into `rm_schedules`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Schedules;

const NAME: &str = "schedules";

const SET: &str = "\
    INSERT INTO rm_schedules AS s (schedule_id, version, workspace_id, run_type, interval_minutes, \
        first_due_at, enabled, set_at, set_by) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (schedule_id) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, run_type = EXCLUDED.run_type, \
        interval_minutes = EXCLUDED.interval_minutes, first_due_at = EXCLUDED.first_due_at, \
        enabled = EXCLUDED.enabled, set_at = EXCLUDED.set_at, set_by = EXCLUDED.set_by \
    WHERE s.version < EXCLUDED.version";
const DISABLE: &str = "UPDATE rm_schedules SET version = $2, enabled = false \
    WHERE schedule_id = $1 AND version < $2";
/// A later tick replaces the latest one; its fan-out is not recorded yet.
const FIRED: &str = "UPDATE rm_schedules SET last_due_at = $2, last_fired_at = $3, \
        last_fanned_out_at = NULL, last_fan_out = NULL \
    WHERE schedule_id = $1 AND (last_due_at IS NULL OR last_due_at < $2)";
/// Only the latest tick's fan-out is shown.
const FANNED_OUT: &str = "UPDATE rm_schedules SET last_fanned_out_at = $3, last_fan_out = $4 \
    WHERE schedule_id = $1 AND last_due_at = $2";
const TIMING: &str = "SELECT interval_minutes, first_due_at, enabled, last_due_at \
    FROM rm_schedules WHERE schedule_id = $1";
const NEXT_DUE: &str = "UPDATE rm_schedules SET next_due_at = $2 \
    WHERE schedule_id = $1 AND next_due_at IS DISTINCT FROM $2";

#[async_trait::async_trait]
impl Consumer for Schedules {
    fn name(&self) -> &str {
        NAME
    }

    fn payloads_of(&self) -> Payloads {
        Payloads::OfAggregates(&[Schedule::TYPE, ScheduleTick::TYPE])
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        // Settings and ticks change separate columns under separate guards, and the next
        // due time depends only on the row, so the two kinds need not interleave; settings
        // go first because a schedule's row is created by its first setting, which commits
        // before any of its ticks can fire.
        for decoded in events_of::<Schedule>(NAME, events) {
            let (e, event) = decoded?;
            apply_settings(tx, e, event).await?;
        }
        for decoded in events_of::<ScheduleTick>(NAME, events) {
            let (_, event) = decoded?;
            apply_tick(tx, event).await?;
        }
        Ok(())
    }
}

impl Projection for Schedules {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_schedules"]
    }
}

async fn apply_settings(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: ScheduleEvent,
) -> Result<(), ConsumerError> {
    let id = e.aggregate_id.as_str();
    match event {
        ScheduleEvent::ScheduleSet {
            workspace,
            run_type,
            interval_minutes,
            first_due_at,
            enabled,
            set_at,
        } => {
            versioned(SET, id, e)
                .bind(workspace.as_str())
                .bind(run_type)
                .bind(i32::try_from(interval_minutes).unwrap_or(i32::MAX))
                .bind(first_due_at)
                .bind(enabled)
                .bind(set_at)
                .bind(required_meta(e, "actor")?)
                .execute(&mut *tx)
                .await?;
        }
        ScheduleEvent::ScheduleDisabled { .. } => {
            versioned(DISABLE, id, e).execute(&mut *tx).await?;
        }
    }
    refresh_next_due(tx, id).await
}

async fn apply_tick(tx: &mut PgConnection, event: TickEvent) -> Result<(), ConsumerError> {
    let id = match event {
        TickEvent::ScheduleFired {
            schedule_id,
            due_at,
            fired_at,
            ..
        } => {
            sqlx::query(FIRED)
                .bind(&schedule_id)
                .bind(due_at)
                .bind(fired_at)
                .execute(&mut *tx)
                .await?;
            schedule_id
        }
        TickEvent::ScheduleFannedOut {
            schedule_id,
            due_at,
            counts,
            completed_at,
        } => {
            sqlx::query(FANNED_OUT)
                .bind(&schedule_id)
                .bind(due_at)
                .bind(completed_at)
                .bind(sqlx::types::Json(counts))
                .execute(&mut *tx)
                .await?;
            schedule_id
        }
    };
    refresh_next_due(tx, &id).await
}

/// What the next due time follows from.
#[derive(sqlx::FromRow)]
struct Timing {
    interval_minutes: i32,
    first_due_at: DateTime<Utc>,
    enabled: bool,
    last_due_at: Option<DateTime<Utc>>,
}

/// Sets `next_due_at` from the row: the first grid time after the latest tick, or none
/// while disabled.
async fn refresh_next_due(tx: &mut PgConnection, id: &str) -> Result<(), ConsumerError> {
    let Some(t) = sqlx::query_as::<_, Timing>(TIMING)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(());
    };
    let interval_minutes = u32::try_from(t.interval_minutes).unwrap_or(1);
    let next = t
        .enabled
        .then(|| next_due_after(t.first_due_at, interval_minutes, t.last_due_at));
    sqlx::query(NEXT_DUE)
        .bind(id)
        .bind(next)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
