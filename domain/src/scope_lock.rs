//! The ScopeLock aggregate (R2.2): at most one active run per target scope. Aggregate id:
//! [`scope_key`], `{workspace}:{entra tenant guid}`.
//!
//! Starting the same operation type again returns the active run (dedupe, no events);
//! another type is refused as scope busy, naming the active run. The caller writes
//! `Acquire` and the run's `Queue` in one transaction, so exactly one of many concurrent
//! starts gets through. Since issue 13 a lock's decisions are written as its row of
//! `scope_locks` (`store::scope_locks`), not appended as events; the events of earlier
//! locks stay readable.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{is_machine_name, EntraTenantId, RunId, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The aggregate id of the scope lock of `scope` in `workspace`.
pub fn scope_key(workspace: &WorkspaceId, scope: EntraTenantId) -> String {
    format!("{workspace}:{scope}")
}

/// The scope lock id of a module's runs over a whole workspace (`acme:contacts`). Module
/// names are machine names, never GUIDs, so these never meet a tenant's scope.
pub fn workspace_scope_key(workspace: &WorkspaceId, module: &str) -> String {
    format!("{workspace}:{module}")
}

/// What can be asked of a scope lock.
#[derive(Debug, Clone, PartialEq)]
pub enum ScopeCommand {
    /// Takes the scope for `run_id`. Held by a run of the same type: no events, and the
    /// caller reads [`ScopeLock::active`] for the run to return.
    Acquire { run_id: RunId, run_type: String },
    /// Frees the scope if `run_id` holds it; otherwise nothing (idempotent).
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

/// What happened to a scope lock. Persisted: variants and fields are never renamed.
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

/// Why a scope lock command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Another operation type is active for the scope.
    #[error("scope busy: run {active_run_id} ({active_run_type}) is active for this scope")]
    Busy {
        active_run_id: RunId,
        active_run_type: String,
    },
    #[error("the run type must be 1-64 characters of a-z, 0-9, '.', '_' and '-'")]
    InvalidRunType,
}

impl DomainError for ScopeError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            ScopeError::Busy { .. } => ReasonCode::ScopeBusy,
            ScopeError::InvalidRunType => ReasonCode::ValidationFailed,
        }
    }
}

/// The run holding a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveRun {
    pub run_id: RunId,
    pub run_type: String,
}

/// A scope lock's state, folded from its events.
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
            ScopeCommand::Acquire { run_id, run_type } => {
                if !is_machine_name(&run_type) {
                    return Err(ScopeError::InvalidRunType);
                }
                match &self.active {
                    None => {
                        let event = ScopeEvent::ScopeAcquired {
                            run_id,
                            run_type,
                            at,
                        };
                        sink.write(event, self).await;
                    }
                    // Same type: dedupe, the caller reads the active run from the state.
                    Some(active) if active.run_type == run_type => {}
                    Some(active) => {
                        return Err(ScopeError::Busy {
                            active_run_id: active.run_id,
                            active_run_type: active.run_type.clone(),
                        })
                    }
                }
            }
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
    use crate::testing::{assert_event_types_match_payload_tags, guid, now, services, workspace};
    use cqrs_es::test::TestFramework;

    type F = TestFramework<ScopeLock>;

    fn run(n: u128) -> RunId {
        RunId(uuid::Uuid::from_u128(n))
    }
    fn acquire(n: u128, run_type: &str) -> ScopeCommand {
        ScopeCommand::Acquire {
            run_id: run(n),
            run_type: run_type.into(),
        }
    }
    fn acquired(n: u128, run_type: &str) -> ScopeEvent {
        ScopeEvent::ScopeAcquired {
            run_id: run(n),
            run_type: run_type.into(),
            at: now(),
        }
    }
    fn released(n: u128) -> ScopeEvent {
        ScopeEvent::ScopeReleased {
            run_id: run(n),
            at: now(),
        }
    }
    fn state(events: Vec<ScopeEvent>) -> ScopeLock {
        let mut l = ScopeLock::default();
        for e in events {
            l.apply(e);
        }
        l
    }

    #[test]
    fn the_scope_key_is_the_workspace_and_the_entra_tenant() {
        assert_eq!(
            scope_key(&workspace(), guid()),
            "acme:72f988bf-86f1-41af-91ab-2d7cd011db47"
        );
    }

    #[test]
    fn a_free_scope_is_acquired() {
        F::with(services())
            .given_no_previous_events()
            .when(acquire(1, "policy.resync"))
            .then_expect_events(vec![acquired(1, "policy.resync")]);
        let active = state(vec![acquired(1, "policy.resync")]).active().cloned();
        assert_eq!(active.map(|a| a.run_id), Some(run(1)));
    }

    #[test]
    fn the_same_type_dedupes_to_the_active_run_without_events() {
        F::with(services())
            .given(vec![acquired(1, "policy.resync")])
            .when(acquire(2, "policy.resync"))
            .then_expect_events(vec![]);
        // What the caller returns: the run already holding the scope.
        let lock = state(vec![acquired(1, "policy.resync")]);
        assert_eq!(lock.active().map(|a| a.run_id), Some(run(1)));
    }

    #[test]
    fn another_type_is_refused_as_scope_busy_naming_the_active_run() {
        let busy = ScopeError::Busy {
            active_run_id: run(1),
            active_run_type: "policy.resync".into(),
        };
        F::with(services())
            .given(vec![acquired(1, "policy.resync")])
            .when(acquire(2, "license.refresh"))
            .then_expect_error(busy.clone());
        assert_eq!(
            busy.to_string(),
            format!(
                "scope busy: run {} (policy.resync) is active for this scope",
                run(1)
            )
        );
        assert_eq!(busy.reason_code(), ReasonCode::ScopeBusy);
    }

    #[test]
    fn a_malformed_run_type_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(acquire(1, "Policy Resync"))
            .then_expect_error(ScopeError::InvalidRunType);
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
            .then_expect_events(vec![released(1)]);
        F::with(services())
            .given(vec![acquired(1, "policy.resync"), released(1)])
            .when(ScopeCommand::Release { run_id: run(1) })
            .then_expect_events(vec![]);
        assert_eq!(
            state(vec![acquired(1, "policy.resync"), released(1)]).active(),
            None
        );
    }

    #[test]
    fn a_released_scope_can_be_acquired_by_another_type() {
        F::with(services())
            .given(vec![acquired(1, "policy.resync"), released(1)])
            .when(acquire(2, "license.refresh"))
            .then_expect_events(vec![acquired(2, "license.refresh")]);
    }

    #[test]
    fn people_acquire_scopes_and_the_engine_releases_them() {
        assert_eq!(acquire(1, "x").permission(), Permission::StartOperations);
        assert_eq!(
            ScopeCommand::Release { run_id: run(1) }.permission(),
            Permission::RecordProgress
        );
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        assert_event_types_match_payload_tags(&[acquired(1, "x"), released(1)]);
    }
}
