//! The ScheduleTick aggregate (R7.3): one firing of a [`Schedule`](crate::Schedule), the
//! tick due at one grid time, and the fan-out of its runs to the workspace's tenants.
//! Aggregate id: [`tick_key`], `{schedule id}@{due time}`.
//!
//! A tick fires once: two schedulers firing the same tick append the same stream's first
//! event, and optimistic concurrency lets one through. The runs a tick starts have ids
//! derived from the tick and the tenant ([`tick_run_id`]), so a fan-out repeated after a
//! crash between firing and completing it starts each run once.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::values::{is_machine_name, RunId, TenantKey, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The aggregate id of the tick of schedule `schedule_id` due at `due_at` (whole seconds).
pub fn tick_key(schedule_id: &str, due_at: DateTime<Utc>) -> String {
    format!("{schedule_id}@{}", due_at.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// Namespace of the name-based run ids of ticks.
const RUN_NAMESPACE: Uuid = Uuid::from_u128(0x5c1ed01e_4e7a_4b1d_9f0e_7a6bc3d2e1f0);

/// The run tick `tick_key` starts for `tenant`: always the same id, so starting it again
/// finds the run instead of starting another. A name-based UUID (RFC 9562 version 8 with
/// SHA-256, as its appendix B.2 shows).
pub fn tick_run_id(tick_key: &str, tenant: &TenantKey) -> RunId {
    let digest = Sha256::new()
        .chain_update(RUN_NAMESPACE.as_bytes())
        .chain_update(tick_key.as_bytes())
        .chain_update(b"/")
        .chain_update(tenant.to_string().as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    RunId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// What a fan-out did with each tenant of the workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOutCounts {
    /// Runs this tick started (or had started before a crash).
    pub started: u32,
    /// Tenants with a run of the same type already active: that run stands (R2.2).
    pub deduplicated: u32,
    /// Tenants busy with a run of another type (R2.2).
    pub busy: u32,
    /// Tenants that cannot run it (no connection, credential or consent): a blocked run
    /// is recorded for each (R2.3).
    pub blocked: u32,
    /// Tenants refused for another reason, such as archived since they were listed.
    pub skipped: u32,
}

impl FanOutCounts {
    /// Tenants the fan-out went through.
    pub fn tenants(&self) -> u32 {
        self.started + self.deduplicated + self.busy + self.blocked + self.skipped
    }
}

/// What can be asked of a tick. Only the scheduler (role System) fires ticks.
#[derive(Debug, Clone, PartialEq)]
pub enum TickCommand {
    /// Fires the tick due at `due_at`. Already fired: no events (the caller that fired it
    /// fans it out).
    Fire {
        workspace: WorkspaceId,
        schedule_id: String,
        run_type: String,
        due_at: DateTime<Utc>,
    },
    /// Records what the fan-out did. Already recorded: no events.
    CompleteFanOut { counts: FanOutCounts },
}

impl Authorize for TickCommand {
    fn permission(&self) -> Permission {
        Permission::RecordProgress
    }
}

/// What happened to a tick. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TickEvent {
    ScheduleFired {
        workspace: WorkspaceId,
        schedule_id: String,
        run_type: String,
        due_at: DateTime<Utc>,
        fired_at: DateTime<Utc>,
    },
    ScheduleFannedOut {
        schedule_id: String,
        due_at: DateTime<Utc>,
        counts: FanOutCounts,
        completed_at: DateTime<Utc>,
    },
}

impl DomainEvent for TickEvent {
    fn event_type(&self) -> String {
        match self {
            TickEvent::ScheduleFired { .. } => "ScheduleFired",
            TickEvent::ScheduleFannedOut { .. } => "ScheduleFannedOut",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a tick command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TickError {
    #[error("the tick due at {0} is not due yet")]
    NotDue(DateTime<Utc>),
    #[error("the tick has not fired")]
    NotFired,
    #[error("the run type must be 1-64 characters of a-z, 0-9, '.', '_' and '-'")]
    InvalidRunType,
}

impl DomainError for TickError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            TickError::NotDue(_) | TickError::NotFired => ReasonCode::InvalidTransition,
            TickError::InvalidRunType => ReasonCode::ValidationFailed,
        }
    }
}

/// A tick's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleTick {
    pub workspace: Option<WorkspaceId>,
    pub schedule_id: String,
    pub run_type: String,
    pub due_at: Option<DateTime<Utc>>,
    pub fired_at: Option<DateTime<Utc>>,
    /// `None` until the fan-out completed.
    pub fan_out: Option<FanOutCounts>,
}

impl ScheduleTick {
    pub fn fired(&self) -> bool {
        self.fired_at.is_some()
    }

    /// Fired, but its fan-out not recorded (it is under way, or its scheduler crashed).
    pub fn needs_fan_out(&self) -> bool {
        self.fired() && self.fan_out.is_none()
    }
}

impl Aggregate for ScheduleTick {
    const TYPE: &'static str = "schedule_tick";
    type Command = TickCommand;
    type Event = TickEvent;
    type Error = TickError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: TickCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), TickError> {
        let now = services.clock.now();
        match command {
            TickCommand::Fire {
                workspace,
                schedule_id,
                run_type,
                due_at,
            } => {
                if self.fired() {
                    return Ok(());
                }
                if !is_machine_name(&run_type) {
                    return Err(TickError::InvalidRunType);
                }
                if due_at > now {
                    return Err(TickError::NotDue(due_at));
                }
                let event = TickEvent::ScheduleFired {
                    workspace,
                    schedule_id,
                    run_type,
                    due_at,
                    fired_at: now,
                };
                sink.write(event, self).await;
            }
            TickCommand::CompleteFanOut { counts } => {
                let Some(due_at) = self.due_at.filter(|_| self.fired()) else {
                    return Err(TickError::NotFired);
                };
                if self.fan_out.is_none() {
                    let event = TickEvent::ScheduleFannedOut {
                        schedule_id: self.schedule_id.clone(),
                        due_at,
                        counts,
                        completed_at: now,
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: TickEvent) {
        match event {
            TickEvent::ScheduleFired {
                workspace,
                schedule_id,
                run_type,
                due_at,
                fired_at,
            } => {
                self.workspace = Some(workspace);
                self.schedule_id = schedule_id;
                self.run_type = run_type;
                self.due_at = Some(due_at);
                self.fired_at = Some(fired_at);
            }
            TickEvent::ScheduleFannedOut { counts, .. } => self.fan_out = Some(counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_event_types_match_payload_tags, guid, now, other_guid, services, tenant_key,
        workspace,
    };
    use chrono::Duration;
    use cqrs_es::test::TestFramework;

    type F = TestFramework<ScheduleTick>;

    const SCHEDULE: &str = "acme:policy.resync";

    fn fire(due_at: DateTime<Utc>) -> TickCommand {
        TickCommand::Fire {
            workspace: workspace(),
            schedule_id: SCHEDULE.into(),
            run_type: "policy.resync".into(),
            due_at,
        }
    }
    fn fired(due_at: DateTime<Utc>) -> TickEvent {
        TickEvent::ScheduleFired {
            workspace: workspace(),
            schedule_id: SCHEDULE.into(),
            run_type: "policy.resync".into(),
            due_at,
            fired_at: now(),
        }
    }
    fn counts() -> FanOutCounts {
        FanOutCounts {
            started: 3,
            deduplicated: 1,
            busy: 1,
            blocked: 2,
            skipped: 0,
        }
    }
    fn fanned_out(due_at: DateTime<Utc>) -> TickEvent {
        TickEvent::ScheduleFannedOut {
            schedule_id: SCHEDULE.into(),
            due_at,
            counts: counts(),
            completed_at: now(),
        }
    }
    fn earlier() -> DateTime<Utc> {
        now() - Duration::minutes(3)
    }

    #[test]
    fn a_tick_key_names_the_schedule_and_the_due_time() {
        assert_eq!(
            tick_key(SCHEDULE, now()),
            "acme:policy.resync@2026-11-23T09:00:00Z"
        );
    }

    #[test]
    fn a_due_tick_fires() {
        F::with(services())
            .given_no_previous_events()
            .when(fire(earlier()))
            .then_expect_events(vec![fired(earlier())]);
        F::with(services())
            .given_no_previous_events()
            .when(fire(now()))
            .then_expect_events(vec![fired(now())]);
    }

    #[test]
    fn a_tick_fires_once() {
        F::with(services())
            .given(vec![fired(earlier())])
            .when(fire(earlier()))
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![fired(earlier()), fanned_out(earlier())])
            .when(fire(earlier()))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_tick_is_not_fired_before_it_is_due() {
        let later = now() + Duration::seconds(1);
        F::with(services())
            .given_no_previous_events()
            .when(fire(later))
            .then_expect_error(TickError::NotDue(later));
    }

    #[test]
    fn a_malformed_run_type_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(TickCommand::Fire {
                workspace: workspace(),
                schedule_id: SCHEDULE.into(),
                run_type: "Resync!".into(),
                due_at: earlier(),
            })
            .then_expect_error(TickError::InvalidRunType);
    }

    #[test]
    fn a_fired_tick_records_its_fan_out_once() {
        F::with(services())
            .given(vec![fired(earlier())])
            .when(TickCommand::CompleteFanOut { counts: counts() })
            .then_expect_events(vec![fanned_out(earlier())]);
        F::with(services())
            .given(vec![fired(earlier()), fanned_out(earlier())])
            .when(TickCommand::CompleteFanOut {
                counts: FanOutCounts::default(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_fan_out_of_a_tick_that_never_fired_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(TickCommand::CompleteFanOut { counts: counts() })
            .then_expect_error(TickError::NotFired);
    }

    #[test]
    fn a_fired_tick_needs_its_fan_out_until_it_is_recorded() {
        let mut t = ScheduleTick::default();
        assert!(!t.needs_fan_out());
        t.apply(fired(earlier()));
        assert!(t.needs_fan_out());
        t.apply(fanned_out(earlier()));
        assert!(!t.needs_fan_out());
        assert_eq!(t.fan_out.map(|c| c.tenants()), Some(7));
    }

    #[test]
    fn run_ids_are_the_same_for_a_tick_and_tenant_and_differ_otherwise() {
        let tick = tick_key(SCHEDULE, now());
        let a = tick_run_id(&tick, &tenant_key());
        assert_eq!(a, tick_run_id(&tick, &tenant_key()));
        assert_eq!(a.as_uuid().get_version_num(), 8);
        let other_tenant = TenantKey::new(workspace(), other_guid());
        assert_ne!(a, tick_run_id(&tick, &other_tenant));
        let next_tick = tick_key(SCHEDULE, now() + Duration::minutes(60));
        assert_ne!(a, tick_run_id(&next_tick, &tenant_key()));
        let elsewhere = TenantKey::new("globex".parse().unwrap(), guid());
        assert_ne!(a, tick_run_id(&tick, &elsewhere));
    }

    #[test]
    fn only_the_engine_fires_ticks() {
        assert_eq!(fire(now()).permission(), Permission::RecordProgress);
        assert_eq!(
            TickCommand::CompleteFanOut { counts: counts() }.permission(),
            Permission::RecordProgress
        );
    }

    #[test]
    fn refusals_map_to_stable_reason_codes() {
        assert_eq!(
            TickError::NotDue(now()).reason_code(),
            ReasonCode::InvalidTransition
        );
        assert_eq!(
            TickError::NotFired.reason_code(),
            ReasonCode::InvalidTransition
        );
        assert_eq!(
            TickError::InvalidRunType.reason_code(),
            ReasonCode::ValidationFailed
        );
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        assert_event_types_match_payload_tags(&[fired(now()), fanned_out(now())]);
    }
}
