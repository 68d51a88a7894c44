//! `tenantflow replay`: feeds finished runs' recorded histories back through today's
//! workflow decisions (R9.2) and reports where today's code would have decided otherwise.
//!
//! Each event the workflow decided is checked against what its plan's pure `decide` says
//! now for the run as it stood just before that event, at the time the event records: the
//! run's start, each step attempt performed, and the run's end (a cancellation, success,
//! partial success or failure, with the failed steps). Events that people or the start path
//! decided (queueing, blocking, a cancellation request, cancelling a queued run) are only
//! folded in. Nothing calls Graph and nothing is written.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::run::{OperationRun, RunEvent};
use domain::{Role, RunId};
use store::history::HistoryError;
use store::StoredEvent;
use workflows::{Decision, Plan, Registry};

use crate::config::Config;
use crate::serve::Database;
use crate::state::read_log;

/// Which runs to replay.
#[derive(Debug, Clone)]
pub enum Selection {
    One(RunId),
    /// Every finished run queued at or after the time (all without one).
    All {
        since: Option<DateTime<Utc>>,
    },
}

/// Where a run's history and today's decisions part ways: the first such event (after it,
/// the two no longer describe the same run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub run_id: String,
    pub run_type: String,
    pub global_position: i64,
    /// The step the history or today's decision is about, if any.
    pub step: Option<String>,
    /// What the history shows.
    pub recorded: String,
    /// What today's code decides at that point.
    pub decided: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} ({}) diverges at event #{}: the history shows {}, today's workflow decides {}",
            self.run_id, self.run_type, self.global_position, self.recorded, self.decided
        )
    }
}

/// Replays the selected runs; fails when any diverges.
pub async fn run(
    config: Config,
    selection: Selection,
    workspace: Option<String>,
) -> anyhow::Result<()> {
    let db = Database::open(&config, "tenantflow").await?;
    let registry = Registry::standard();
    let plans = |run_type: &str| registry.get(run_type).map(|w| *w.plan());
    let report = replay_selected(&db.pool, &selection, workspace.as_deref(), plans).await;
    db.close().await?;
    let report = report?;
    #[allow(clippy::print_stdout)]
    {
        for d in &report.divergences {
            println!("{d}");
        }
        println!(
            "replayed {} finished runs: {} diverge{}",
            report.replayed,
            report.divergences.len(),
            if report.skipped_active > 0 {
                format!(" ({} still active, not replayed)", report.skipped_active)
            } else {
                String::new()
            }
        );
    }
    anyhow::ensure!(
        report.divergences.is_empty(),
        "{} of {} runs diverge from today's workflow decisions",
        report.divergences.len(),
        report.replayed
    );
    Ok(())
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Report {
    pub replayed: usize,
    pub skipped_active: usize,
    pub divergences: Vec<Divergence>,
}

/// Replays the selected runs of the log (of `workspace` only, when given) against the
/// plans `plans` gives by run type.
pub async fn replay_selected(
    pool: &sqlx::PgPool,
    selection: &Selection,
    workspace: Option<&str>,
    plans: impl Fn(&str) -> Option<Plan>,
) -> anyhow::Result<Report> {
    let mut tx = read_log(pool, workspace).await?;
    let run_ids: Vec<String> = match selection {
        Selection::One(id) => vec![id.to_string()],
        Selection::All { since } => {
            sqlx::query_scalar(
                "SELECT aggregate_id FROM events WHERE aggregate_type = $1 \
                 AND event_type = 'RunQueued' AND ($2::timestamptz IS NULL OR recorded_at >= $2) \
                 ORDER BY global_position",
            )
            .bind(OperationRun::TYPE)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?
        }
    };
    let mut report = Report::default();
    for id in run_ids {
        let events = store::history::stream(&mut tx, OperationRun::TYPE, &id, None).await?;
        if events.is_empty() {
            anyhow::bail!("run {id} not found");
        }
        match replay_run(&plans, &id, &events)? {
            Replayed::Active if matches!(selection, Selection::One(_)) => {
                anyhow::bail!("run {id} is still active: only a finished run can be replayed")
            }
            Replayed::Active => report.skipped_active += 1,
            Replayed::Agrees => report.replayed += 1,
            Replayed::Diverges(d) => {
                report.replayed += 1;
                report.divergences.push(d);
            }
        }
    }
    Ok(report)
}

/// How one run's replay went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Today's decisions agree with every decision the history records.
    Agrees,
    Diverges(Divergence),
    /// The run has not finished: there is nothing final to compare.
    Active,
}

/// Replays one run's events (its stream, in order) against the plan `plans` gives for its
/// type.
pub fn replay_run(
    plans: &impl Fn(&str) -> Option<Plan>,
    run_id: &str,
    events: &[StoredEvent],
) -> Result<Replayed, HistoryError> {
    let mut run = OperationRun::default();
    for e in events {
        let end = store::history::decode::<OperationRun>(e)?;
        // A run's end may carry the run's progress (issue 13): each carried event was
        // decided by the workflow in its turn, before the end.
        let mut decided: Vec<RunEvent> = end.carried().to_vec();
        decided.push(end);
        for event in decided {
            if decided_by_workflow(e, &event) {
                let diverged = |decided: String, step: Option<&str>| Divergence {
                    run_id: run_id.to_owned(),
                    run_type: run.run_type.clone(),
                    global_position: e.position.global_position,
                    step: event.step().or(step).map(str::to_owned),
                    recorded: describe_event(&event),
                    decided,
                };
                match plans(&run.run_type) {
                    Some(plan) => {
                        let decision = plan.decide(&run, event.at());
                        if !agrees(&event, &decision) {
                            let step = match &decision {
                                Decision::Perform { step, .. } | Decision::Fail { step, .. } => {
                                    Some(*step)
                                }
                                _ => None,
                            };
                            return Ok(Replayed::Diverges(diverged(describe(&decision), step)));
                        }
                    }
                    // Today's engine fails a run no workflow runs, and so did this history.
                    None if is_unknown_type_failure(&event) => {}
                    None => {
                        let decided = format!("nothing: no workflow runs `{}` today", run.run_type);
                        return Ok(Replayed::Diverges(diverged(decided, None)));
                    }
                }
            }
            run.apply(event);
        }
    }
    Ok(if run.is_active() {
        Replayed::Active
    } else {
        Replayed::Agrees
    })
}

/// Whether the workflow decided `event` (as opposed to a person or the start path).
fn decided_by_workflow(e: &StoredEvent, event: &RunEvent) -> bool {
    match event {
        RunEvent::RunQueued { .. }
        | RunEvent::RunBlocked { .. }
        | RunEvent::RunCancelRequested { .. } => false,
        // A person cancels a queued run at once; the workflow cancels a running one.
        RunEvent::RunCancelled { .. } => e.meta("role") == Some(Role::System.as_str()),
        _ => true,
    }
}

fn is_unknown_type_failure(event: &RunEvent) -> bool {
    matches!(
        event,
        RunEvent::RunFailed { failure, .. }
            if failure.step.is_none() && failure.reason == domain::ReasonCode::ValidationFailed
    )
}

/// Whether `event` is what `decision` would record.
fn agrees(event: &RunEvent, decision: &Decision) -> bool {
    match (event, decision) {
        (RunEvent::RunStarted { .. }, Decision::Start)
        | (RunEvent::RunSucceeded { .. }, Decision::Succeed)
        | (RunEvent::RunCancelled { .. }, Decision::Cancel) => true,
        (
            RunEvent::RunStepStarted { step, attempt, .. }
            | RunEvent::RunStepCompleted { step, attempt, .. }
            | RunEvent::RunStepFailed { step, attempt, .. },
            Decision::Perform {
                step: s,
                attempt: a,
            },
        ) => step == s && attempt == a,
        (RunEvent::RunFailed { failure, .. }, Decision::Fail { step, reason }) => {
            failure.step.as_deref() == Some(*step) && failure.reason == *reason
        }
        (
            RunEvent::RunPartiallySucceeded { failures, .. },
            Decision::PartiallySucceed { failed_steps },
        ) => {
            failures.len() == failed_steps.len()
                && failures
                    .iter()
                    .zip(failed_steps)
                    .all(|(f, (step, reason))| {
                        f.step.as_deref() == Some(*step) && f.reason == *reason
                    })
        }
        _ => false,
    }
}

/// A recorded event, as the report names it.
fn describe_event(event: &RunEvent) -> String {
    let mut s = cqrs_es::DomainEvent::event_type(event);
    if let Some(step) = event.step() {
        s.push_str(&format!(" {step}"));
    }
    if let Some(attempt) = event.attempt() {
        s.push_str(&format!(" attempt {attempt}"));
    }
    if let Some(reason) = event.reason() {
        s.push_str(&format!(" ({reason})"));
    }
    s
}

/// A decision, as the report names it.
fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Start => "to start the run".to_owned(),
        Decision::Perform { step, attempt } => format!("to perform {step} attempt {attempt}"),
        Decision::WaitUntil(at) => format!("to wait until {}", at.to_rfc3339()),
        Decision::Cancel => "to cancel the run".to_owned(),
        Decision::Succeed => "that the run succeeded".to_owned(),
        Decision::PartiallySucceed { failed_steps } => {
            let steps: Vec<String> = failed_steps
                .iter()
                .map(|(step, reason)| format!("{step} ({reason})"))
                .collect();
            format!(
                "that the run partially succeeded ({} gave up)",
                steps.join(", ")
            )
        }
        Decision::Fail { step, reason } => format!("that the run failed at {step} ({reason})"),
        Decision::Done => "nothing: the run is over".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::FixedClock;
    use graph::sim::{self, Fault, SimConfig};
    use graph::Endpoint;
    use testkit::{owner, ReadyTenant, SteppedEngine, TestDb};
    use workflows::resync::{LICENSES, RECORD, RUN_TYPE, SNAPSHOT};
    use workflows::StepDef;

    fn standard(run_type: &str) -> Option<Plan> {
        Registry::standard().get(run_type).map(|w| *w.plan())
    }

    const fn step(name: &'static str, max_attempts: u32, fatal: bool) -> StepDef {
        StepDef {
            name,
            max_attempts,
            fatal,
            calls_out: true,
        }
    }

    /// The resync with its first two steps swapped.
    fn reordered(run_type: &str) -> Option<Plan> {
        const STEPS: &[StepDef] = &[
            step(LICENSES, 3, false),
            step(SNAPSHOT, 5, true),
            step(RECORD, 5, true),
        ];
        (run_type == RUN_TYPE).then_some(Plan {
            run_type: RUN_TYPE,
            steps: STEPS,
        })
    }

    /// The resync giving its snapshot a single attempt.
    fn impatient(run_type: &str) -> Option<Plan> {
        const STEPS: &[StepDef] = &[
            step(SNAPSHOT, 1, true),
            step(LICENSES, 3, false),
            step(RECORD, 5, true),
        ];
        (run_type == RUN_TYPE).then_some(Plan {
            run_type: RUN_TYPE,
            steps: STEPS,
        })
    }

    /// Resyncs of every kind the engine finishes: a plain one, one retried after
    /// throttling, one whose license refresh gave up, one failed, and one cancelled while
    /// queued; then one left queued. Returns the database and the runs, in that order.
    async fn finished_resyncs() -> (TestDb, Vec<RunId>) {
        let db = TestDb::new().await;
        let clock = FixedClock::at(chrono::Utc::now());
        let bus = db.bus_on(&clock).await;
        let sim = sim::spawn(SimConfig {
            tenants: 1,
            seed: 5,
            ..SimConfig::default()
        })
        .await;
        let t = sim.tenants().remove(0);
        let (tenant, _) = ReadyTenant::simulated(&bus, &t).build().await;
        let engine = SteppedEngine::against(&sim, &bus, &clock);
        let by = owner();
        let resync = || engine.run(&by, &tenant, RUN_TYPE);
        let plain = resync().await;
        sim.inject(
            Fault::Throttled {
                retry_after_secs: None,
            }
            .on(Endpoint::ListConditionalAccessPolicies)
            .times(2),
        );
        let throttled = resync().await;
        sim.inject(Fault::Forbidden.on(Endpoint::ListSubscribedSkus));
        let partial = resync().await;
        sim.clear_faults();
        sim.inject(Fault::MissingValue.on(Endpoint::ListConditionalAccessPolicies));
        let failed = resync().await;
        sim.clear_faults();
        let cancelled = engine.queue(&owner(), &tenant, RUN_TYPE).await;
        app::cancel_run(&bus, &owner(), cancelled).await.unwrap();
        engine.queue(&owner(), &tenant, RUN_TYPE).await;
        for (run, outcome) in [
            (&plain, "succeeded"),
            (&throttled, "succeeded"),
            (&partial, "partially_succeeded"),
            (&failed, "failed"),
        ] {
            assert_eq!(run.outcome.as_str(), outcome, "{run:?}");
        }
        assert_eq!(throttled.step(SNAPSHOT).map(|s| s.attempt), Some(3));
        let runs: Vec<RunId> = sqlx::query_scalar::<_, String>(
            "SELECT aggregate_id FROM events WHERE event_type = 'RunQueued' ORDER BY global_position",
        )
        .fetch_all(bus.pool())
        .await
        .unwrap()
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
        assert_eq!(runs.len(), 6);
        (db, runs)
    }

    #[tokio::test]
    async fn every_finished_resync_replays_without_divergence_and_a_changed_plan_is_reported() {
        let (db, runs) = finished_resyncs().await;
        let pool = db.pool().await;
        let all = Selection::All { since: None };

        let report = replay_selected(&pool, &all, None, standard).await.unwrap();
        assert_eq!(
            report.divergences,
            vec![],
            "today's plans agree with the log"
        );
        assert_eq!((report.replayed, report.skipped_active), (5, 1));

        // Steps reordered: every run that performed a step diverges at its first one.
        let report = replay_selected(&pool, &all, None, reordered).await.unwrap();
        let diverged: Vec<&str> = report
            .divergences
            .iter()
            .map(|d| d.run_id.as_str())
            .collect();
        let expected: Vec<String> = runs[..4].iter().map(RunId::to_string).collect();
        assert_eq!(diverged, expected, "the cancelled run decided nothing");
        let first = &report.divergences[0];
        assert_eq!(first.step.as_deref(), Some(SNAPSHOT));
        assert_eq!(
            first.recorded,
            "RunStepCompleted snapshot_policies attempt 1"
        );
        assert_eq!(first.decided, "to perform refresh_licenses attempt 1");
        assert!(
            first.to_string().starts_with(&format!(
                "run {} (policy.resync) diverges at event #",
                runs[0]
            )),
            "{first}"
        );

        // One attempt fewer: only the throttled run, at its second attempt.
        let one = Selection::One(runs[1]);
        let report = replay_selected(&pool, &one, None, impatient).await.unwrap();
        let [d] = report.divergences.as_slice() else {
            panic!("{:?}", report.divergences)
        };
        assert_eq!(d.run_id, runs[1].to_string());
        assert_eq!(d.step.as_deref(), Some(SNAPSHOT));
        assert_eq!(
            d.recorded,
            "RunStepFailed snapshot_policies attempt 2 (graph_throttled)"
        );
        assert_eq!(
            d.decided,
            "that the run failed at snapshot_policies (graph_throttled)"
        );
    }

    #[tokio::test]
    async fn an_active_run_or_another_workspaces_run_is_not_replayed() {
        let (db, runs) = finished_resyncs().await;
        let pool = db.pool().await;
        let active = Selection::One(runs[5]);
        let refused = replay_selected(&pool, &active, None, standard).await;
        assert!(refused.unwrap_err().to_string().contains("still active"));
        let mine = Selection::One(runs[0]);
        let theirs = replay_selected(&pool, &mine, Some("globex"), standard).await;
        assert!(theirs.unwrap_err().to_string().contains("not found"));
        let ours = replay_selected(&pool, &mine, Some("acme"), standard)
            .await
            .unwrap();
        assert_eq!((ours.replayed, ours.divergences.len()), (1, 0));
    }
}
