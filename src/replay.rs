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
        let event = store::history::decode::<OperationRun>(e)?;
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
