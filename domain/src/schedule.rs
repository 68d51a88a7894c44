//! The Schedule aggregate (R7.3): a workspace's recurring operation on its whole fleet, such
//! as a Conditional Access resync of every tenant once a day. Aggregate id:
//! [`schedule_key`], `{workspace}:{run_type}`: one schedule per workspace and operation type.
//!
//! A schedule is a grid of due times, `first_due_at + k * interval` (k = 0, 1, ...). Its
//! stream holds only what people set. Each firing is a [`ScheduleTick`](crate::ScheduleTick)
//! stream of its own, so this stream does not grow with every interval (the command bus
//! replays a whole stream for each command). The tick due at an instant is a pure function
//! of the settings, [`Schedule::due_at`]: after downtime only the latest due tick fires,
//! never a burst of the missed ones.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{is_machine_name, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The shortest interval: a whole fleet resynced more often would mostly meet Graph throttling.
pub const MIN_INTERVAL_MINUTES: u32 = 5;
/// The longest interval: a week.
pub const MAX_INTERVAL_MINUTES: u32 = 7 * 24 * 60;
/// How far from now (either way) a first run may be set.
pub const MAX_FIRST_RUN_OFFSET_DAYS: i64 = 366;

/// The aggregate id of `workspace`'s schedule of `run_type`.
pub fn schedule_key(workspace: &WorkspaceId, run_type: &str) -> String {
    format!("{workspace}:{run_type}")
}

/// The latest grid time at or before `now` (`None` before the first one).
pub fn due_at(
    first_due_at: DateTime<Utc>,
    interval_minutes: u32,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if now < first_due_at {
        return None;
    }
    let step = i64::from(interval_minutes.max(1)) * 60;
    let elapsed = (now - first_due_at).num_seconds();
    Some(first_due_at + Duration::seconds(elapsed / step * step))
}

/// The first grid time after `after`; the first one of all when `after` is `None` or
/// earlier than it.
pub fn next_due_after(
    first_due_at: DateTime<Utc>,
    interval_minutes: u32,
    after: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    match after {
        Some(t) if t >= first_due_at => {
            let step = i64::from(interval_minutes.max(1)) * 60;
            let k = (t - first_due_at).num_seconds() / step + 1;
            first_due_at + Duration::seconds(k * step)
        }
        _ => first_due_at,
    }
}

/// What can be asked of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleCommand {
    /// Creates or changes the schedule. `first_due_at` anchors the grid (whole seconds).
    /// Without it, a new, re-timed or re-enabled schedule first runs one interval from now,
    /// and one saved with its interval unchanged keeps its times. The same settings again
    /// write nothing.
    Set {
        workspace: WorkspaceId,
        run_type: String,
        interval_minutes: u32,
        enabled: bool,
        first_due_at: Option<DateTime<Utc>>,
    },
    /// Stops the schedule. Already disabled: no events.
    Disable,
}

impl Authorize for ScheduleCommand {
    fn permission(&self) -> Permission {
        Permission::ManageSchedules
    }
}

/// What happened to a schedule. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScheduleEvent {
    ScheduleSet {
        workspace: WorkspaceId,
        run_type: String,
        interval_minutes: u32,
        first_due_at: DateTime<Utc>,
        enabled: bool,
        set_at: DateTime<Utc>,
    },
    ScheduleDisabled {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ScheduleEvent {
    fn event_type(&self) -> String {
        match self {
            ScheduleEvent::ScheduleSet { .. } => "ScheduleSet",
            ScheduleEvent::ScheduleDisabled { .. } => "ScheduleDisabled",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a schedule command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the schedule does not exist")]
    NotFound,
    #[error(
        "the interval must be between {} minutes and {} minutes (7 days)",
        MIN_INTERVAL_MINUTES,
        MAX_INTERVAL_MINUTES
    )]
    InvalidInterval,
    #[error(
        "the first run must be within {} days of now",
        MAX_FIRST_RUN_OFFSET_DAYS
    )]
    InvalidFirstRun,
    #[error("the run type must be 1-64 characters of a-z, 0-9, '.', '_' and '-'")]
    InvalidRunType,
    #[error("a schedule's workspace and run type cannot change")]
    KeyMismatch,
}

impl DomainError for ScheduleError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            ScheduleError::NotFound => ReasonCode::NotFound,
            ScheduleError::InvalidInterval
            | ScheduleError::InvalidFirstRun
            | ScheduleError::InvalidRunType
            | ScheduleError::KeyMismatch => ReasonCode::ValidationFailed,
        }
    }
}

/// A schedule's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// `None` until set.
    pub workspace: Option<WorkspaceId>,
    pub run_type: String,
    pub interval_minutes: u32,
    pub first_due_at: Option<DateTime<Utc>>,
    pub enabled: bool,
}

impl Schedule {
    /// Whether the schedule was ever set.
    pub fn exists(&self) -> bool {
        self.workspace.is_some()
    }

    /// The tick due at `now`: the latest grid time at or before it. `None` while disabled
    /// or before the first run.
    pub fn due_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.first_due_at.filter(|_| self.enabled)?;
        due_at(first, self.interval_minutes, now)
    }

    /// The first grid time after `after` (the tick last fired); `None` while disabled.
    pub fn next_due_after(&self, after: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let first = self.first_due_at.filter(|_| self.enabled)?;
        Some(next_due_after(first, self.interval_minutes, after))
    }
}

impl Aggregate for Schedule {
    const TYPE: &'static str = "schedule";
    type Command = ScheduleCommand;
    type Event = ScheduleEvent;
    type Error = ScheduleError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: ScheduleCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), ScheduleError> {
        let now = services.clock.now();
        match command {
            ScheduleCommand::Set {
                workspace,
                run_type,
                interval_minutes,
                enabled,
                first_due_at,
            } => {
                if !is_machine_name(&run_type) {
                    return Err(ScheduleError::InvalidRunType);
                }
                if !(MIN_INTERVAL_MINUTES..=MAX_INTERVAL_MINUTES).contains(&interval_minutes) {
                    return Err(ScheduleError::InvalidInterval);
                }
                if self.exists()
                    && (self.workspace.as_ref() != Some(&workspace) || self.run_type != run_type)
                {
                    return Err(ScheduleError::KeyMismatch);
                }
                let re_enabled = self.exists() && !self.enabled && enabled;
                let first_due_at = match (first_due_at, self.first_due_at) {
                    (Some(t), _) => {
                        if (t - now).num_days().abs() >= MAX_FIRST_RUN_OFFSET_DAYS {
                            return Err(ScheduleError::InvalidFirstRun);
                        }
                        t.trunc_subsecs(0)
                    }
                    (None, Some(current))
                        if self.interval_minutes == interval_minutes && !re_enabled =>
                    {
                        current
                    }
                    (None, _) => {
                        (now + Duration::minutes(i64::from(interval_minutes))).trunc_subsecs(0)
                    }
                };
                let unchanged = self.exists()
                    && self.interval_minutes == interval_minutes
                    && self.first_due_at == Some(first_due_at)
                    && self.enabled == enabled;
                if !unchanged {
                    let event = ScheduleEvent::ScheduleSet {
                        workspace,
                        run_type,
                        interval_minutes,
                        first_due_at,
                        enabled,
                        set_at: now,
                    };
                    sink.write(event, self).await;
                }
            }
            ScheduleCommand::Disable => {
                if !self.exists() {
                    return Err(ScheduleError::NotFound);
                }
                if self.enabled {
                    sink.write(ScheduleEvent::ScheduleDisabled { at: now }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ScheduleEvent) {
        match event {
            ScheduleEvent::ScheduleSet {
                workspace,
                run_type,
                interval_minutes,
                first_due_at,
                enabled,
                ..
            } => {
                self.workspace = Some(workspace);
                self.run_type = run_type;
                self.interval_minutes = interval_minutes;
                self.first_due_at = Some(first_due_at);
                self.enabled = enabled;
            }
            ScheduleEvent::ScheduleDisabled { .. } => self.enabled = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_event_types_match_payload_tags, now, services, workspace};
    use cqrs_es::test::TestFramework;

    type F = TestFramework<Schedule>;

    const RESYNC: &str = "policy.resync";

    fn minutes(m: i64) -> Duration {
        Duration::minutes(m)
    }
    fn set(interval_minutes: u32, first_due_at: Option<DateTime<Utc>>) -> ScheduleCommand {
        set_enabled(interval_minutes, true, first_due_at)
    }
    fn set_enabled(
        interval_minutes: u32,
        enabled: bool,
        first_due_at: Option<DateTime<Utc>>,
    ) -> ScheduleCommand {
        ScheduleCommand::Set {
            workspace: workspace(),
            run_type: RESYNC.into(),
            interval_minutes,
            enabled,
            first_due_at,
        }
    }
    fn was_set(interval_minutes: u32, first_due_at: DateTime<Utc>) -> ScheduleEvent {
        was_set_enabled(interval_minutes, true, first_due_at)
    }
    fn was_set_enabled(
        interval_minutes: u32,
        enabled: bool,
        first_due_at: DateTime<Utc>,
    ) -> ScheduleEvent {
        ScheduleEvent::ScheduleSet {
            workspace: workspace(),
            run_type: RESYNC.into(),
            interval_minutes,
            first_due_at,
            enabled,
            set_at: now(),
        }
    }
    fn disabled() -> ScheduleEvent {
        ScheduleEvent::ScheduleDisabled { at: now() }
    }
    fn state(events: Vec<ScheduleEvent>) -> Schedule {
        let mut s = Schedule::default();
        for e in events {
            s.apply(e);
        }
        s
    }
    /// Hourly from `now()`.
    fn hourly() -> Schedule {
        state(vec![was_set(60, now())])
    }

    #[test]
    fn the_schedule_key_is_the_workspace_and_the_run_type() {
        assert_eq!(schedule_key(&workspace(), RESYNC), "acme:policy.resync");
    }

    #[test]
    fn a_new_schedule_without_a_first_run_first_runs_one_interval_from_now() {
        F::with(services())
            .given_no_previous_events()
            .when(set(60, None))
            .then_expect_events(vec![was_set(60, now() + minutes(60))]);
    }

    #[test]
    fn a_first_run_anchors_the_grid_to_the_whole_second() {
        let at = now() + minutes(10) + Duration::milliseconds(750);
        F::with(services())
            .given_no_previous_events()
            .when(set(60, Some(at)))
            .then_expect_events(vec![was_set(60, now() + minutes(10))]);
    }

    #[test]
    fn a_first_run_in_the_recent_past_is_accepted() {
        F::with(services())
            .given_no_previous_events()
            .when(set(60, Some(now() - minutes(1))))
            .then_expect_events(vec![was_set(60, now() - minutes(1))]);
    }

    #[test]
    fn intervals_outside_five_minutes_to_seven_days_are_refused() {
        for bad in [
            0,
            1,
            MIN_INTERVAL_MINUTES - 1,
            MAX_INTERVAL_MINUTES + 1,
            u32::MAX,
        ] {
            F::with(services())
                .given_no_previous_events()
                .when(set(bad, None))
                .then_expect_error(ScheduleError::InvalidInterval);
        }
        for ok in [MIN_INTERVAL_MINUTES, MAX_INTERVAL_MINUTES] {
            F::with(services())
                .given_no_previous_events()
                .when(set(ok, None))
                .inspect_result()
                .unwrap();
        }
        assert_eq!(
            ScheduleError::InvalidInterval.to_string(),
            "the interval must be between 5 minutes and 10080 minutes (7 days)"
        );
    }

    #[test]
    fn a_first_run_more_than_a_year_away_is_refused() {
        for far in [now() + Duration::days(400), now() - Duration::days(400)] {
            F::with(services())
                .given_no_previous_events()
                .when(set(60, Some(far)))
                .then_expect_error(ScheduleError::InvalidFirstRun);
        }
    }

    #[test]
    fn a_malformed_run_type_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(ScheduleCommand::Set {
                workspace: workspace(),
                run_type: "Policy Resync".into(),
                interval_minutes: 60,
                enabled: true,
                first_due_at: None,
            })
            .then_expect_error(ScheduleError::InvalidRunType);
    }

    #[test]
    fn a_schedule_cannot_move_to_another_run_type() {
        F::with(services())
            .given(vec![was_set(60, now())])
            .when(ScheduleCommand::Set {
                workspace: workspace(),
                run_type: "license.refresh".into(),
                interval_minutes: 60,
                enabled: true,
                first_due_at: None,
            })
            .then_expect_error(ScheduleError::KeyMismatch);
    }

    #[test]
    fn saving_the_same_settings_again_writes_nothing() {
        F::with(services())
            .given(vec![was_set(60, now() - minutes(30))])
            .when(set(60, None))
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![was_set(60, now() - minutes(30))])
            .when(set(60, Some(now() - minutes(30))))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_new_interval_without_a_first_run_starts_one_interval_from_now() {
        F::with(services())
            .given(vec![was_set(60, now() - minutes(30))])
            .when(set(15, None))
            .then_expect_events(vec![was_set(15, now() + minutes(15))]);
    }

    #[test]
    fn re_enabling_without_a_first_run_starts_one_interval_from_now() {
        F::with(services())
            .given(vec![was_set(60, now() - minutes(300)), disabled()])
            .when(set(60, None))
            .then_expect_events(vec![was_set(60, now() + minutes(60))]);
    }

    #[test]
    fn a_schedule_can_be_set_disabled() {
        F::with(services())
            .given_no_previous_events()
            .when(set_enabled(60, false, Some(now())))
            .then_expect_events(vec![was_set_enabled(60, false, now())]);
        assert_eq!(
            state(vec![was_set_enabled(60, false, now())]).due_at(now()),
            None
        );
    }

    #[test]
    fn a_schedule_is_disabled_once() {
        F::with(services())
            .given(vec![was_set(60, now())])
            .when(ScheduleCommand::Disable)
            .then_expect_events(vec![disabled()]);
        F::with(services())
            .given(vec![was_set(60, now()), disabled()])
            .when(ScheduleCommand::Disable)
            .then_expect_events(vec![]);
    }

    #[test]
    fn disabling_a_schedule_that_was_never_set_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(ScheduleCommand::Disable)
            .then_expect_error(ScheduleError::NotFound);
    }

    #[test]
    fn nothing_is_due_before_the_first_run() {
        let s = state(vec![was_set(60, now() + minutes(10))]);
        assert_eq!(s.due_at(now()), None);
        assert_eq!(s.next_due_after(None), Some(now() + minutes(10)));
    }

    #[test]
    fn the_tick_due_is_the_latest_grid_time_at_or_before_now() {
        let s = hourly();
        assert_eq!(s.due_at(now()), Some(now()));
        assert_eq!(s.due_at(now() + minutes(59)), Some(now()));
        assert_eq!(s.due_at(now() + minutes(60)), Some(now() + minutes(60)));
        assert_eq!(
            s.due_at(now() + minutes(60) - Duration::milliseconds(1)),
            Some(now())
        );
    }

    #[test]
    fn after_downtime_only_the_latest_missed_tick_is_due_and_the_next_is_after_now() {
        let s = hourly();
        let back = now() + minutes(5 * 60 + 20);
        let due = s.due_at(back);
        assert_eq!(due, Some(now() + minutes(5 * 60)), "one tick, not five");
        let next = s.next_due_after(due).unwrap();
        assert_eq!(next, now() + minutes(6 * 60));
        assert!(next > back);
    }

    #[test]
    fn the_next_tick_follows_the_last_fired_one_on_the_grid() {
        let s = hourly();
        assert_eq!(s.next_due_after(None), Some(now()));
        assert_eq!(s.next_due_after(Some(now())), Some(now() + minutes(60)));
        // A tick of an earlier grid (before a change of settings) counts where it falls.
        assert_eq!(
            s.next_due_after(Some(now() + minutes(90))),
            Some(now() + minutes(120))
        );
        assert_eq!(s.next_due_after(Some(now() - minutes(90))), Some(now()));
    }

    #[test]
    fn a_disabled_schedule_has_nothing_due_and_no_next_tick() {
        let s = state(vec![was_set(60, now()), disabled()]);
        assert_eq!(s.due_at(now() + minutes(600)), None);
        assert_eq!(s.next_due_after(None), None);
        assert!(s.exists());
    }

    #[test]
    fn owners_and_managers_set_schedules() {
        assert_eq!(set(60, None).permission(), Permission::ManageSchedules);
        assert_eq!(
            ScheduleCommand::Disable.permission(),
            Permission::ManageSchedules
        );
    }

    #[test]
    fn refusals_map_to_stable_reason_codes() {
        assert_eq!(ScheduleError::NotFound.reason_code(), ReasonCode::NotFound);
        for e in [
            ScheduleError::InvalidInterval,
            ScheduleError::InvalidFirstRun,
            ScheduleError::InvalidRunType,
            ScheduleError::KeyMismatch,
        ] {
            assert_eq!(e.reason_code(), ReasonCode::ValidationFailed, "{e}");
        }
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        assert_event_types_match_payload_tags(&[was_set(60, now()), disabled()]);
    }
}
