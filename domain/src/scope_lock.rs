//! The ScopeLock aggregate (R2.2): at most one active run per target scope. Starting the
//! same operation type again returns the active run (dedupe); another type is refused as
//! scope busy, naming the active run. The caller appends `Acquire` and the run's `Queue`
//! in one transaction, so optimistic concurrency on this stream serializes starts.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{EntraTenantId, RunId, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The aggregate id of a scope lock.
pub fn scope_key(workspace: &WorkspaceId, scope: EntraTenantId) -> String {
    format!("{workspace}:{scope}")
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScopeCommand {
    Acquire { run_id: RunId, run_type: String },
    Release { run_id: RunId },
}

impl Authorize for ScopeCommand {
    fn permission(&self) -> Permission {
        match self {
            ScopeCommand::Acquire { .. } => Permission::StartOperations,
            ScopeCommand::Release { .. } => Permission::RecordProgress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScopeEvent {
    ScopeAcquired {
        run_id: RunId,
        run_type: String,
        at: DateTime<Utc>,
    },
    ScopeReleased {
        run_id: RunId,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ScopeEvent {
    fn event_type(&self) -> String {
        match self {
            ScopeEvent::ScopeAcquired { .. } => "ScopeAcquired",
            ScopeEvent::ScopeReleased { .. } => "ScopeReleased",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope busy: run {active_run_id} ({active_run_type}) is active for this scope")]
    Busy {
        active_run_id: RunId,
        active_run_type: String,
    },
}

impl DomainError for ScopeError {
    fn reason_code(&self) -> ReasonCode {
        ReasonCode::ScopeBusy
    }
}

/// The run holding a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveRun {
    pub run_id: RunId,
    pub run_type: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ScopeLock {
    pub active: Option<ActiveRun>,
}

impl ScopeLock {
    /// The run holding the scope, if any.
    pub fn active(&self) -> Option<&ActiveRun> {
        self.active.as_ref()
    }
}

impl Aggregate for ScopeLock {
    const TYPE: &'static str = "scope_lock";
    type Command = ScopeCommand;
    type Event = ScopeEvent;
    type Error = ScopeError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: ScopeCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), ScopeError> {
        let at = services.clock.now();
        match command {
            ScopeCommand::Acquire { run_id, run_type } => match &self.active {
                None => {
                    sink.write(
                        ScopeEvent::ScopeAcquired {
                            run_id,
                            run_type,
                            at,
                        },
                        self,
                    )
                    .await
                }
                // Same type: dedupe, the caller reads the active run from the state.
                Some(active) if active.run_type == run_type => {}
                Some(active) => {
                    return Err(ScopeError::Busy {
                        active_run_id: active.run_id,
                        active_run_type: active.run_type.clone(),
                    })
                }
            },
            ScopeCommand::Release { run_id } => {
                if self.active.as_ref().is_some_and(|a| a.run_id == run_id) {
                    sink.write(ScopeEvent::ScopeReleased { run_id, at }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ScopeEvent) {
        match event {
            ScopeEvent::ScopeAcquired {
                run_id, run_type, ..
            } => self.active = Some(ActiveRun { run_id, run_type }),
            ScopeEvent::ScopeReleased { .. } => self.active = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use std::sync::Arc;

    type F = TestFramework<ScopeLock>;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }
    fn services() -> Services {
        Services::new(Arc::new(FixedClock::at(now())))
    }
    fn run(n: u128) -> RunId {
        RunId(uuid::Uuid::from_u128(n))
    }
    fn acquired(n: u128, t: &str) -> ScopeEvent {
        ScopeEvent::ScopeAcquired {
            run_id: run(n),
            run_type: t.into(),
            at: now(),
        }
    }

    #[test]
    fn a_free_scope_is_acquired() {
        F::with(services())
            .given_no_previous_events()
            .when(ScopeCommand::Acquire {
                run_id: run(1),
                run_type: "policy.resync".into(),
            })
            .then_expect_events(vec![acquired(1, "policy.resync")]);
    }

    #[test]
    fn the_same_type_dedupes_to_the_active_run_without_events() {
        F::with(services())
            .given(vec![acquired(1, "policy.resync")])
            .when(ScopeCommand::Acquire {
                run_id: run(2),
                run_type: "policy.resync".into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn another_type_is_refused_as_scope_busy_naming_the_active_run() {
        F::with(services())
            .given(vec![acquired(1, "policy.resync")])
            .when(ScopeCommand::Acquire {
                run_id: run(2),
                run_type: "license.refresh".into(),
            })
            .then_expect_error(ScopeError::Busy {
                active_run_id: run(1),
                active_run_type: "policy.resync".into(),
            });
        let e = ScopeError::Busy {
            active_run_id: run(1),
            active_run_type: "policy.resync".into(),
        };
        assert!(e.to_string().contains(&run(1).to_string()));
        assert_eq!(e.reason_code(), ReasonCode::ScopeBusy);
    }

    #[test]
    fn only_the_holder_releases_and_releasing_twice_is_harmless() {
        F::with(services())
            .given(vec![acquired(1, "policy.resync")])
            .when(ScopeCommand::Release { run_id: run(2) })
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![acquired(1, "policy.resync")])
            .when(ScopeCommand::Release { run_id: run(1) })
            .then_expect_events(vec![ScopeEvent::ScopeReleased {
                run_id: run(1),
                at: now(),
            }]);
        F::with(services())
            .given(vec![
                acquired(1, "policy.resync"),
                ScopeEvent::ScopeReleased {
                    run_id: run(1),
                    at: now(),
                },
            ])
            .when(ScopeCommand::Release { run_id: run(1) })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_released_scope_can_be_acquired_by_another_type() {
        F::with(services())
            .given(vec![
                acquired(1, "policy.resync"),
                ScopeEvent::ScopeReleased {
                    run_id: run(1),
                    at: now(),
                },
            ])
            .when(ScopeCommand::Acquire {
                run_id: run(2),
                run_type: "license.refresh".into(),
            })
            .then_expect_events(vec![acquired(2, "license.refresh")]);
    }
}
