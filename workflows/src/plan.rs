//! Workflow definitions as data plus one pure `decide` function: given a run's history
//! (folded into `OperationRun`) and the time, what happens next. No database, no clock of
//! its own, so every path is tested directly.

use chrono::{DateTime, Utc};
use domain::run::{OperationRun, RunStatus, StepStatus};
use domain::ReasonCode;

/// One step of a sequential workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDef {
    pub name: &'static str,
    /// Attempts before the step gives up.
    pub max_attempts: u32,
    /// Whether the run fails when this step gives up (otherwise it ends partially
    /// succeeded, e.g. a license refresh after a good snapshot).
    pub fatal: bool,
    /// Whether the step calls outside systems (Graph). A step that does not is performed
    /// in the same transaction as the step before it: one commit fewer per run.
    pub calls_out: bool,
}

/// A sequential workflow: its run type and steps, in order.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub run_type: &'static str,
    pub steps: &'static [StepDef],
}

/// What the runner should do next with a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Move the run from queued to running.
    Start,
    /// Perform `step`, attempt `attempt` (a started attempt is performed again after a
    /// crash: its effects are idempotent).
    Perform { step: &'static str, attempt: u32 },
    /// Nothing to do before `until` (a retry's backoff).
    WaitUntil(DateTime<Utc>),
    /// Stop: cancellation was requested.
    Cancel,
    /// Every step is done.
    Succeed,
    /// Done, but non-fatal steps gave up.
    PartiallySucceed {
        failed_steps: Vec<(&'static str, ReasonCode)>,
    },
    /// A fatal step gave up.
    Fail {
        step: &'static str,
        reason: ReasonCode,
    },
    /// The run is already completed: nothing to do.
    Done,
}

impl Plan {
    /// Decides the next action for `run` at `now`.
    pub fn decide(&self, run: &OperationRun, now: DateTime<Utc>) -> Decision {
        if !run.is_active() {
            return Decision::Done;
        }
        if run.cancel_requested {
            return Decision::Cancel;
        }
        if run.status == RunStatus::Queued {
            return Decision::Start;
        }
        let mut gave_up = Vec::new();
        for def in self.steps {
            let Some(state) = run.step(def.name) else {
                return Decision::Perform {
                    step: def.name,
                    attempt: 1,
                };
            };
            match state.status {
                StepStatus::Completed => continue,
                StepStatus::Started => {
                    return Decision::Perform {
                        step: def.name,
                        attempt: state.attempt,
                    }
                }
                StepStatus::Failed => {
                    let reason = state.reason.unwrap_or(ReasonCode::InternalError);
                    match state.retry_at {
                        Some(at) if state.attempt < def.max_attempts => {
                            if at > now {
                                return Decision::WaitUntil(at);
                            }
                            return Decision::Perform {
                                step: def.name,
                                attempt: state.attempt + 1,
                            };
                        }
                        // No retry planned, or out of attempts: the step gave up.
                        _ if def.fatal => {
                            return Decision::Fail {
                                step: def.name,
                                reason,
                            }
                        }
                        _ => gave_up.push((def.name, reason)),
                    }
                }
            }
        }
        if gave_up.is_empty() {
            Decision::Succeed
        } else {
            Decision::PartiallySucceed {
                failed_steps: gave_up,
            }
        }
    }

    /// The definition of a step of this plan.
    pub fn step(&self, name: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::run::{RunContext, RunEvent};
    use domain::Provider;

    const PLAN: Plan = Plan {
        run_type: "test.flow",
        steps: &[
            StepDef {
                name: "fetch",
                max_attempts: 3,
                fatal: true,
                calls_out: true,
            },
            StepDef {
                name: "extras",
                max_attempts: 2,
                fatal: false,
                calls_out: true,
            },
        ],
    };

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }

    fn run(events: Vec<RunEvent>) -> OperationRun {
        let guid: domain::EntraTenantId = "72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap();
        let mut r = OperationRun::default();
        let queued = RunEvent::RunQueued {
            workspace: "acme".parse().unwrap(),
            run_type: "test.flow".into(),
            context: Some(RunContext {
                provider: Provider::Microsoft,
                connection_id: None,
                target_scope: guid,
                tenant_key: format!("acme:{guid}").parse().unwrap(),
                module: "m".into(),
            }),
            initiator: "alice".into(),
            queued_at: now(),
            retry_of: None,
            workspace_module: None,
            workspace_subject: None,
        };
        for e in std::iter::once(queued).chain(events) {
            cqrs_es::Aggregate::apply(&mut r, e);
        }
        r
    }

    fn started() -> RunEvent {
        RunEvent::RunStarted { at: now() }
    }
    fn step_started(step: &str, attempt: u32) -> RunEvent {
        RunEvent::RunStepStarted {
            step: step.into(),
            attempt,
            at: now(),
        }
    }
    fn completed(step: &str, attempt: u32) -> RunEvent {
        RunEvent::RunStepCompleted {
            step: step.into(),
            attempt,
            summary: serde_json::json!({}),
            at: now(),
        }
    }
    fn failed(step: &str, attempt: u32, retry_in: Option<i64>) -> RunEvent {
        RunEvent::RunStepFailed {
            step: step.into(),
            attempt,
            reason: ReasonCode::GraphThrottled,
            message: "429".into(),
            retry_at: retry_in.map(|s| now() + chrono::Duration::seconds(s)),
            at: now(),
        }
    }

    #[test]
    fn a_queued_run_starts() {
        assert_eq!(PLAN.decide(&run(vec![]), now()), Decision::Start);
    }

    #[test]
    fn a_started_run_performs_its_first_step() {
        assert_eq!(
            PLAN.decide(&run(vec![started()]), now()),
            Decision::Perform {
                step: "fetch",
                attempt: 1
            }
        );
    }

    #[test]
    fn a_step_interrupted_by_a_crash_is_performed_again_with_the_same_attempt() {
        let r = run(vec![started(), step_started("fetch", 1)]);
        assert_eq!(
            PLAN.decide(&r, now()),
            Decision::Perform {
                step: "fetch",
                attempt: 1
            }
        );
    }

    #[test]
    fn a_failed_step_waits_for_its_retry_time_then_tries_again() {
        let r = run(vec![started(), failed("fetch", 1, Some(30))]);
        assert_eq!(
            PLAN.decide(&r, now()),
            Decision::WaitUntil(now() + chrono::Duration::seconds(30))
        );
        let later = now() + chrono::Duration::seconds(31);
        assert_eq!(
            PLAN.decide(&r, later),
            Decision::Perform {
                step: "fetch",
                attempt: 2
            }
        );
    }

    #[test]
    fn a_fatal_step_out_of_attempts_fails_the_run_with_its_reason() {
        let r = run(vec![started(), failed("fetch", 3, Some(30))]);
        assert_eq!(
            PLAN.decide(&r, now() + chrono::Duration::hours(1)),
            Decision::Fail {
                step: "fetch",
                reason: ReasonCode::GraphThrottled
            }
        );
        let permanent = run(vec![started(), failed("fetch", 1, None)]);
        assert!(matches!(
            PLAN.decide(&permanent, now()),
            Decision::Fail { .. }
        ));
    }

    #[test]
    fn a_non_fatal_step_that_gives_up_ends_the_run_partially_succeeded() {
        let r = run(vec![
            started(),
            completed("fetch", 1),
            failed("extras", 1, None),
        ]);
        assert_eq!(
            PLAN.decide(&r, now()),
            Decision::PartiallySucceed {
                failed_steps: vec![("extras", ReasonCode::GraphThrottled)]
            }
        );
    }

    #[test]
    fn all_steps_completed_succeeds() {
        let r = run(vec![
            started(),
            completed("fetch", 2),
            completed("extras", 1),
        ]);
        assert_eq!(PLAN.decide(&r, now()), Decision::Succeed);
    }

    #[test]
    fn cancellation_wins_over_any_step() {
        let r = run(vec![started(), RunEvent::RunCancelRequested { at: now() }]);
        assert_eq!(PLAN.decide(&r, now()), Decision::Cancel);
    }

    #[test]
    fn a_completed_run_needs_nothing() {
        let r = run(vec![RunEvent::RunCancelled {
            at: now(),
            progress: vec![],
        }]);
        assert_eq!(PLAN.decide(&r, now()), Decision::Done);
    }
}
