//! `tenantflow runs show <run-id>`: a run's history as a timeline (R9.2), one line per
//! event of its stream, in the log's order.

use std::fmt::Write as _;

use domain::RunId;
use store::history::RunHistoryEntry;

use crate::config::Config;
use crate::serve::Database;
use crate::state::read_log;

/// `tenantflow runs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Print a run's history as a timeline: every event of the run in the log's order, with
    /// its time since the run was queued, step and attempt, reason code and who recorded it.
    Show {
        run_id: RunId,
        /// Only if the run belongs to this workspace (read as the API reads it).
        #[arg(long)]
        workspace: Option<String>,
    },
}

pub async fn run(config: Config, command: RunsCommand) -> anyhow::Result<()> {
    match command {
        RunsCommand::Show { run_id, workspace } => show(config, run_id, workspace).await,
    }
}

/// Prints the timeline of `run_id` (only if it belongs to `workspace`, when given).
pub async fn show(config: Config, run_id: RunId, workspace: Option<String>) -> anyhow::Result<()> {
    let db = Database::open(&config, "tenantflow").await?;
    let history = async {
        let mut tx = read_log(&db.pool, workspace.as_deref()).await?;
        store::history::run_history(&mut tx, run_id).await
    }
    .await;
    db.close().await?;
    let history = history?;
    anyhow::ensure!(!history.is_empty(), "run {run_id} not found");
    #[allow(clippy::print_stdout)]
    {
        print!("{}", timeline(run_id, &history));
    }
    Ok(())
}

/// The timeline as printed: a heading, then per event its time since the run's first
/// event, when it happened, its global position, type, step and attempt, reason, who
/// recorded it and the rest of it.
pub fn timeline(run_id: RunId, history: &[RunHistoryEntry]) -> String {
    let mut out = format!("run {run_id}: {} events\n", history.len());
    for e in history {
        let mut line = format!(
            "{:>+10.3}s  {}  #{:<8} {:<22}",
            e.elapsed_ms as f64 / 1000.0,
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            e.global_position,
            e.event_type,
        );
        if let Some(step) = &e.step {
            let _ = write!(line, " {step}");
        }
        if let Some(attempt) = e.attempt {
            let _ = write!(line, " attempt {attempt}");
        }
        if let Some(reason) = e.reason {
            let _ = write!(line, " [{reason}]");
        }
        if let Some(actor) = &e.actor {
            let _ = write!(line, " by {actor}");
            if let Some(role) = &e.role {
                let _ = write!(line, " ({role})");
            }
        }
        if let Some(details) = &e.details {
            let _ = write!(line, " {details}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use domain::ReasonCode;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_timeline_shows_each_event_with_its_timing_step_reason_and_author() {
        let queued = RunHistoryEntry {
            global_position: 3,
            sequence: 1,
            recorded_at: at("2026-11-23T09:00:00Z"),
            at: at("2026-11-23T09:00:00Z"),
            elapsed_ms: 0,
            event_type: "RunQueued".into(),
            step: None,
            attempt: None,
            reason: None,
            actor: Some("alice".into()),
            role: Some("owner".into()),
            details: None,
        };
        let failed = RunHistoryEntry {
            global_position: 7,
            sequence: 3,
            at: at("2026-11-23T09:00:01.250Z"),
            elapsed_ms: 1250,
            event_type: "RunStepFailed".into(),
            step: Some("snapshot_policies".into()),
            attempt: Some(1),
            reason: Some(ReasonCode::ProviderAuthFailed),
            actor: Some("engine".into()),
            role: Some("system".into()),
            details: Some(serde_json::json!({"message": "401"})),
            ..queued.clone()
        };
        let run = RunId(uuid::Uuid::from_u128(1));
        let printed = timeline(run, &[queued, failed]);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines[0], format!("run {run}: 2 events"));
        assert_eq!(
            lines[1],
            "    +0.000s  2026-11-23T09:00:00.000Z  #3        RunQueued              by alice (owner)"
        );
        assert_eq!(
            lines[2],
            "    +1.250s  2026-11-23T09:00:01.250Z  #7        RunStepFailed          snapshot_policies attempt 1 \
             [provider_auth_failed] by engine (system) {\"message\":\"401\"}"
        );
    }
}
