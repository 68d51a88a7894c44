//! The OperationRun aggregate (R2): one operationally relevant action and its lifecycle.
//! Its events are also the workflow history (steps completed or failed, with attempts).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::sanitize::sanitize_message;
use crate::values::{ConnectionId, EntraTenantId, Provider, TenantKey, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// Where a run acts: provider, connection, target scope and module (R2.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunContext {
    pub provider: Provider,
    pub connection_id: Option<ConnectionId>,
    pub target_scope: EntraTenantId,
    pub tenant_key: TenantKey,
    pub module: String,
}

/// A link-only next step for a blocked run: a label and a path inside the product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextStep {
    pub label: String,
    pub href: String,
}

/// Why a run (or one of its parts) failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureSummary {
    pub reason: ReasonCode,
    pub message: String,
    pub step: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    Queue {
        workspace: WorkspaceId,
        run_type: String,
        context: RunContext,
        initiator: String,
    },
    Start,
    CompleteStep {
        step: String,
        attempt: u32,
        summary: serde_json::Value,
    },
    FailStep {
        step: String,
        attempt: u32,
        reason: ReasonCode,
        message: String,
        retry_at: Option<DateTime<Utc>>,
    },
    Succeed {
        summary_counts: BTreeMap<String, i64>,
    },
    PartiallySucceed {
        summary_counts: BTreeMap<String, i64>,
        failures: Vec<FailureSummary>,
    },
    Fail {
        failure: FailureSummary,
    },
    /// The run cannot start (R2.3): it is finalized as blocked with link-only next steps.
    Block {
        reason: ReasonCode,
        next_steps: Vec<NextStep>,
    },
    /// A person asks to stop the run: a queued run is cancelled at once, a running one at
    /// its next step.
    RequestCancel,
    /// The workflow stops a run whose cancellation was requested.
    Cancel,
}

impl Authorize for RunCommand {
    fn permission(&self) -> Permission {
        match self {
            RunCommand::Queue { .. } | RunCommand::RequestCancel => Permission::StartOperations,
            _ => Permission::RecordProgress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunEvent {
    RunQueued {
        workspace: WorkspaceId,
        run_type: String,
        context: RunContext,
        initiator: String,
        queued_at: DateTime<Utc>,
    },
    RunStarted {
        at: DateTime<Utc>,
    },
    RunStepCompleted {
        step: String,
        attempt: u32,
        summary: serde_json::Value,
        at: DateTime<Utc>,
    },
    RunStepFailed {
        step: String,
        attempt: u32,
        reason: ReasonCode,
        message: String,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    RunSucceeded {
        summary_counts: BTreeMap<String, i64>,
        at: DateTime<Utc>,
    },
    RunPartiallySucceeded {
        summary_counts: BTreeMap<String, i64>,
        failures: Vec<FailureSummary>,
        at: DateTime<Utc>,
    },
    RunFailed {
        failure: FailureSummary,
        at: DateTime<Utc>,
    },
    RunBlocked {
        reason: ReasonCode,
        next_steps: Vec<NextStep>,
        at: DateTime<Utc>,
    },
    RunCancelRequested {
        at: DateTime<Utc>,
    },
    RunCancelled {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for RunEvent {
    fn event_type(&self) -> String {
        match self {
            RunEvent::RunQueued { .. } => "RunQueued",
            RunEvent::RunStarted { .. } => "RunStarted",
            RunEvent::RunStepCompleted { .. } => "RunStepCompleted",
            RunEvent::RunStepFailed { .. } => "RunStepFailed",
            RunEvent::RunSucceeded { .. } => "RunSucceeded",
            RunEvent::RunPartiallySucceeded { .. } => "RunPartiallySucceeded",
            RunEvent::RunFailed { .. } => "RunFailed",
            RunEvent::RunBlocked { .. } => "RunBlocked",
            RunEvent::RunCancelRequested { .. } => "RunCancelRequested",
            RunEvent::RunCancelled { .. } => "RunCancelled",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Queued,
    Running,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    #[default]
    Pending,
    Succeeded,
    PartiallySucceeded,
    Failed,
    Cancelled,
    Blocked,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("the run does not exist")]
    NotFound,
    #[error("the run already exists")]
    AlreadyExists,
    #[error("a run that is {status:?} cannot {action}")]
    InvalidTransition {
        status: RunStatus,
        action: &'static str,
    },
    #[error("the run type must be 1-64 characters of a-z, 0-9, '.' and '_'")]
    InvalidRunType,
    #[error("next steps are links inside the product: a label and a path starting with '/'")]
    InvalidNextStep,
    #[error("the run's target tenant belongs to another workspace")]
    WorkspaceMismatch,
}

impl DomainError for RunError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            RunError::NotFound => ReasonCode::NotFound,
            RunError::AlreadyExists => ReasonCode::AlreadyExists,
            RunError::InvalidTransition { .. } => ReasonCode::InvalidTransition,
            _ => ReasonCode::ValidationFailed,
        }
    }
}

/// A step's last recorded attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub step: String,
    pub attempt: u32,
    pub completed: bool,
    pub reason: Option<ReasonCode>,
    pub retry_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OperationRun {
    pub workspace: Option<WorkspaceId>,
    pub run_type: String,
    pub context: Option<RunContext>,
    pub initiator: String,
    pub status: RunStatus,
    pub outcome: RunOutcome,
    pub cancel_requested: bool,
    pub steps: Vec<StepState>,
    pub summary_counts: BTreeMap<String, i64>,
    pub failure_summary: Vec<FailureSummary>,
    pub blocked_reason: Option<ReasonCode>,
    pub next_steps: Vec<NextStep>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl OperationRun {
    pub fn exists(&self) -> bool {
        self.queued_at.is_some()
    }

    pub fn is_active(&self) -> bool {
        self.exists() && self.status != RunStatus::Completed
    }

    /// The last recorded attempt of `step`.
    pub fn step(&self, step: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.step == step)
    }

    fn require(&self, allowed: &[RunStatus], action: &'static str) -> Result<(), RunError> {
        if !self.exists() {
            return Err(RunError::NotFound);
        }
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(RunError::InvalidTransition {
                status: self.status,
                action,
            })
        }
    }

    fn record_step(&mut self, state: StepState) {
        match self.steps.iter_mut().find(|s| s.step == state.step) {
            Some(s) => *s = state,
            None => self.steps.push(state),
        }
    }

    fn complete(&mut self, outcome: RunOutcome, at: DateTime<Utc>) {
        self.status = RunStatus::Completed;
        self.outcome = outcome;
        self.completed_at = Some(at);
    }
}

fn valid_run_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
}

fn sanitize_failure(f: FailureSummary) -> FailureSummary {
    FailureSummary {
        reason: f.reason,
        message: sanitize_message(&f.message),
        step: f.step,
    }
}

impl Aggregate for OperationRun {
    const TYPE: &'static str = "operation_run";
    type Command = RunCommand;
    type Event = RunEvent;
    type Error = RunError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: RunCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), RunError> {
        use RunStatus::*;
        let at = services.clock.now();
        match command {
            RunCommand::Queue {
                workspace,
                run_type,
                context,
                initiator,
            } => {
                if self.exists() {
                    return Err(RunError::AlreadyExists);
                }
                if !valid_run_type(&run_type) {
                    return Err(RunError::InvalidRunType);
                }
                if context.tenant_key.workspace != workspace {
                    return Err(RunError::WorkspaceMismatch);
                }
                let event = RunEvent::RunQueued {
                    workspace,
                    run_type,
                    context,
                    initiator: initiator.chars().take(200).collect(),
                    queued_at: at,
                };
                sink.write(event, self).await;
            }
            RunCommand::Start => {
                self.require(&[Queued], "start")?;
                sink.write(RunEvent::RunStarted { at }, self).await;
            }
            RunCommand::CompleteStep {
                step,
                attempt,
                summary,
            } => {
                self.require(&[Running], "record a step")?;
                let event = RunEvent::RunStepCompleted {
                    step,
                    attempt,
                    summary,
                    at,
                };
                sink.write(event, self).await;
            }
            RunCommand::FailStep {
                step,
                attempt,
                reason,
                message,
                retry_at,
            } => {
                self.require(&[Running], "record a step")?;
                let event = RunEvent::RunStepFailed {
                    step,
                    attempt,
                    reason,
                    message: sanitize_message(&message),
                    retry_at,
                    at,
                };
                sink.write(event, self).await;
            }
            RunCommand::Succeed { summary_counts } => {
                self.require(&[Running], "succeed")?;
                sink.write(RunEvent::RunSucceeded { summary_counts, at }, self)
                    .await;
            }
            RunCommand::PartiallySucceed {
                summary_counts,
                failures,
            } => {
                self.require(&[Running], "partially succeed")?;
                let failures = failures.into_iter().map(sanitize_failure).collect();
                let event = RunEvent::RunPartiallySucceeded {
                    summary_counts,
                    failures,
                    at,
                };
                sink.write(event, self).await;
            }
            RunCommand::Fail { failure } => {
                self.require(&[Queued, Running], "fail")?;
                let event = RunEvent::RunFailed {
                    failure: sanitize_failure(failure),
                    at,
                };
                sink.write(event, self).await;
            }
            RunCommand::Block { reason, next_steps } => {
                self.require(&[Queued], "be blocked")?;
                let valid = next_steps.len() <= 10
                    && next_steps.iter().all(|s| {
                        !s.label.trim().is_empty()
                            && s.label.len() <= 200
                            && s.href.starts_with('/')
                            && !s.href.starts_with("//")
                            && s.href.len() <= 500
                            && !s.href.chars().any(|c| c.is_whitespace() || c.is_control())
                    });
                if !valid {
                    return Err(RunError::InvalidNextStep);
                }
                sink.write(
                    RunEvent::RunBlocked {
                        reason,
                        next_steps,
                        at,
                    },
                    self,
                )
                .await;
            }
            RunCommand::RequestCancel => {
                self.require(&[Queued, Running], "be cancelled")?;
                if self.status == Queued {
                    sink.write(RunEvent::RunCancelled { at }, self).await;
                } else if !self.cancel_requested {
                    sink.write(RunEvent::RunCancelRequested { at }, self).await;
                }
            }
            RunCommand::Cancel => {
                self.require(&[Queued, Running], "be cancelled")?;
                sink.write(RunEvent::RunCancelled { at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: RunEvent) {
        match event {
            RunEvent::RunQueued {
                workspace,
                run_type,
                context,
                initiator,
                queued_at,
            } => {
                self.workspace = Some(workspace);
                self.run_type = run_type;
                self.context = Some(context);
                self.initiator = initiator;
                self.queued_at = Some(queued_at);
            }
            RunEvent::RunStarted { at } => {
                self.status = RunStatus::Running;
                self.started_at = Some(at);
            }
            RunEvent::RunStepCompleted { step, attempt, .. } => self.record_step(StepState {
                step,
                attempt,
                completed: true,
                reason: None,
                retry_at: None,
            }),
            RunEvent::RunStepFailed {
                step,
                attempt,
                reason,
                retry_at,
                ..
            } => self.record_step(StepState {
                step,
                attempt,
                completed: false,
                reason: Some(reason),
                retry_at,
            }),
            RunEvent::RunSucceeded { summary_counts, at } => {
                self.summary_counts = summary_counts;
                self.complete(RunOutcome::Succeeded, at);
            }
            RunEvent::RunPartiallySucceeded {
                summary_counts,
                failures,
                at,
            } => {
                self.summary_counts = summary_counts;
                self.failure_summary = failures;
                self.complete(RunOutcome::PartiallySucceeded, at);
            }
            RunEvent::RunFailed { failure, at } => {
                self.failure_summary = vec![failure];
                self.complete(RunOutcome::Failed, at);
            }
            RunEvent::RunBlocked {
                reason,
                next_steps,
                at,
            } => {
                self.blocked_reason = Some(reason);
                self.next_steps = next_steps;
                self.complete(RunOutcome::Blocked, at);
            }
            RunEvent::RunCancelRequested { .. } => self.cancel_requested = true,
            RunEvent::RunCancelled { at } => self.complete(RunOutcome::Cancelled, at),
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

    type F = TestFramework<OperationRun>;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }
    fn services() -> Services {
        Services::new(Arc::new(FixedClock::at(now())))
    }
    fn context() -> RunContext {
        let guid: EntraTenantId = "72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap();
        RunContext {
            provider: Provider::Microsoft,
            connection_id: Some(ConnectionId(uuid::Uuid::from_u128(1))),
            target_scope: guid,
            tenant_key: format!("acme:{guid}").parse().unwrap(),
            module: "policies".into(),
        }
    }
    fn queued() -> RunEvent {
        RunEvent::RunQueued {
            workspace: "acme".parse().unwrap(),
            run_type: "policy.resync".into(),
            context: context(),
            initiator: "alice".into(),
            queued_at: now(),
        }
    }
    fn started() -> RunEvent {
        RunEvent::RunStarted { at: now() }
    }
    fn state(events: Vec<RunEvent>) -> OperationRun {
        let mut r = OperationRun::default();
        for e in events {
            r.apply(e);
        }
        r
    }

    #[test]
    fn a_run_is_queued_pending() {
        F::with(services())
            .given_no_previous_events()
            .when(RunCommand::Queue {
                workspace: "acme".parse().unwrap(),
                run_type: "policy.resync".into(),
                context: context(),
                initiator: "alice".into(),
            })
            .then_expect_events(vec![queued()]);
        let r = state(vec![queued()]);
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Queued, RunOutcome::Pending)
        );
        assert!(r.is_active());
    }

    #[test]
    fn a_malformed_run_type_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(RunCommand::Queue {
                workspace: "acme".parse().unwrap(),
                run_type: "Policy Resync!".into(),
                context: context(),
                initiator: "alice".into(),
            })
            .then_expect_error(RunError::InvalidRunType);
    }

    #[test]
    fn a_run_for_a_tenant_of_another_workspace_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(RunCommand::Queue {
                workspace: "other".parse().unwrap(),
                run_type: "policy.resync".into(),
                context: context(),
                initiator: "alice".into(),
            })
            .then_expect_error(RunError::WorkspaceMismatch);
    }

    #[test]
    fn a_run_goes_queued_running_completed_with_timestamps() {
        let r = state(vec![
            queued(),
            started(),
            RunEvent::RunSucceeded {
                summary_counts: BTreeMap::from([("policies".into(), 3)]),
                at: now(),
            },
        ]);
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Completed, RunOutcome::Succeeded)
        );
        assert_eq!(r.started_at, Some(now()));
        assert_eq!(r.completed_at, Some(now()));
        assert_eq!(r.summary_counts["policies"], 3);
        assert!(!r.is_active());
    }

    #[test]
    fn a_completed_run_cannot_start_again() {
        F::with(services())
            .given(vec![
                queued(),
                started(),
                RunEvent::RunCancelled { at: now() },
            ])
            .when(RunCommand::Start)
            .then_expect_error(RunError::InvalidTransition {
                status: RunStatus::Completed,
                action: "start",
            });
    }

    #[test]
    fn steps_are_only_recorded_while_running() {
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::CompleteStep {
                step: "token".into(),
                attempt: 1,
                summary: serde_json::json!({}),
            })
            .then_expect_error(RunError::InvalidTransition {
                status: RunStatus::Queued,
                action: "record a step",
            });
    }

    #[test]
    fn a_failed_step_keeps_its_reason_retry_time_and_a_sanitized_message() {
        let retry = now() + chrono::Duration::seconds(5);
        F::with(services())
            .given(vec![queued(), started()])
            .when(RunCommand::FailStep {
                step: "fetch".into(),
                attempt: 2,
                reason: ReasonCode::GraphThrottled,
                message: "429 with Bearer eyJtoken".into(),
                retry_at: Some(retry),
            })
            .then_expect_events(vec![RunEvent::RunStepFailed {
                step: "fetch".into(),
                attempt: 2,
                reason: ReasonCode::GraphThrottled,
                message: "429 with Bearer [redacted]".into(),
                retry_at: Some(retry),
                at: now(),
            }]);
    }

    #[test]
    fn a_queued_run_is_blocked_with_a_reason_and_link_only_next_steps() {
        let steps = vec![NextStep {
            label: "Add a Microsoft connection".into(),
            href: "/tenants/acme/connections/new".into(),
        }];
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::Block {
                reason: ReasonCode::ProviderConnectionMissing,
                next_steps: steps.clone(),
            })
            .then_expect_events(vec![RunEvent::RunBlocked {
                reason: ReasonCode::ProviderConnectionMissing,
                next_steps: steps.clone(),
                at: now(),
            }]);
        let r = state(vec![
            queued(),
            RunEvent::RunBlocked {
                reason: ReasonCode::ProviderConnectionMissing,
                next_steps: steps,
                at: now(),
            },
        ]);
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Completed, RunOutcome::Blocked)
        );
        assert_eq!(
            r.blocked_reason,
            Some(ReasonCode::ProviderConnectionMissing)
        );
    }

    #[test]
    fn next_steps_that_leave_the_product_are_refused() {
        for href in [
            "https://evil.example/",
            "//evil.example",
            "javascript:alert(1)",
            "/a b",
        ] {
            F::with(services())
                .given(vec![queued()])
                .when(RunCommand::Block {
                    reason: ReasonCode::ProviderConsentMissing,
                    next_steps: vec![NextStep {
                        label: "x".into(),
                        href: href.into(),
                    }],
                })
                .then_expect_error(RunError::InvalidNextStep);
        }
    }

    #[test]
    fn a_running_run_cannot_be_blocked() {
        F::with(services())
            .given(vec![queued(), started()])
            .when(RunCommand::Block {
                reason: ReasonCode::ProviderConsentMissing,
                next_steps: vec![],
            })
            .then_expect_error(RunError::InvalidTransition {
                status: RunStatus::Running,
                action: "be blocked",
            });
    }

    #[test]
    fn cancelling_a_queued_run_cancels_it_at_once() {
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::RequestCancel)
            .then_expect_events(vec![RunEvent::RunCancelled { at: now() }]);
    }

    #[test]
    fn cancelling_a_running_run_is_a_request_recorded_once() {
        F::with(services())
            .given(vec![queued(), started()])
            .when(RunCommand::RequestCancel)
            .then_expect_events(vec![RunEvent::RunCancelRequested { at: now() }]);
        F::with(services())
            .given(vec![
                queued(),
                started(),
                RunEvent::RunCancelRequested { at: now() },
            ])
            .when(RunCommand::RequestCancel)
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_failed_run_keeps_a_sanitized_failure_summary() {
        F::with(services())
            .given(vec![queued(), started()])
            .when(RunCommand::Fail {
                failure: FailureSummary {
                    reason: ReasonCode::GraphUnavailable,
                    message: "502 from graph, secret=abc".into(),
                    step: Some("fetch".into()),
                },
            })
            .then_expect_events(vec![RunEvent::RunFailed {
                failure: FailureSummary {
                    reason: ReasonCode::GraphUnavailable,
                    message: "502 from graph, secret=[redacted]".into(),
                    step: Some("fetch".into()),
                },
                at: now(),
            }]);
    }

    #[test]
    fn people_queue_and_cancel_runs_only_the_engine_records_progress() {
        assert_eq!(
            RunCommand::RequestCancel.permission(),
            Permission::StartOperations
        );
        assert_eq!(RunCommand::Start.permission(), Permission::RecordProgress);
        assert_eq!(
            RunCommand::Block {
                reason: ReasonCode::ProviderConnectionMissing,
                next_steps: vec![]
            }
            .permission(),
            Permission::RecordProgress
        );
    }
}
