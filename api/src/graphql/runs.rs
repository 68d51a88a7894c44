//! The run list's SQL: one statement per page over `rm_runs`, shaped so that each filter
//! reads an index in the list's order and stops at the page's end (migration
//! `20261204000001_run_list_indexes.sql`).
//!
//! - Statuses are the ones the API shows: a running run's row says `queued` until its end
//!   carries its start into the log, so "running" is read among the queued rows
//!   ([`RUN_STATUS`]). A filter on not-yet-ended statuses names them as literals, so
//!   PostgreSQL sees that the small index of active runs holds every row it wants.
//! - Outcomes that are not a success each have their rows together in one index, in order:
//!   several of them are read one by one and merged (`UNION ALL`), instead of reading all
//!   their rows to sort them. `pending` is read among the runs not yet ended.
//!
//! Statuses and outcomes are written into the statement as literals: they come only from
//! the domain's closed sets (`as_str`), and a literal, unlike a parameter, lets the planner
//! prove a partial index's condition in every plan it keeps.

use chrono::{DateTime, Utc};
use domain::run::{RunOutcome, RunStatus};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::page::PageRequest;
use super::types::{RUN_COLUMNS, RUN_STATUS};

/// Which runs a page lists, newest first, every filter already checked. Public for
/// `bench runs`, which asks PostgreSQL how many rows each page's statement reads.
#[derive(Debug, Default)]
pub struct RunList {
    pub workspace: String,
    pub tenant: Option<String>,
    pub run_type: Option<String>,
    /// The statuses shown; `None` for any. Empty matches nothing.
    pub statuses: Option<Vec<RunStatus>>,
    /// The outcomes; `None` for any. Empty matches nothing.
    pub outcomes: Option<Vec<RunOutcome>>,
    pub queued_after: Option<DateTime<Utc>>,
    pub queued_before: Option<DateTime<Utc>>,
    /// The last row of the page before: its queue time and id.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Rows to read: the page and one more.
    pub limit: i64,
}

/// The outcomes kept together in `rm_runs_unsuccessful`.
const UNSUCCESSFUL: [RunOutcome; 4] = [
    RunOutcome::PartiallySucceeded,
    RunOutcome::Failed,
    RunOutcome::Cancelled,
    RunOutcome::Blocked,
];

impl RunList {
    /// A page of `page.limit()` rows after `page`'s cursor.
    pub(crate) fn page(workspace: &str, page: &PageRequest) -> async_graphql::Result<Self> {
        Ok(Self {
            workspace: workspace.to_owned(),
            after: page.time_and_id("run")?,
            limit: page.limit(),
            ..Self::default()
        })
    }

    /// Keeps only the runs shown in one of `statuses` (with those kept before).
    pub fn status_in(&mut self, statuses: impl IntoIterator<Item = RunStatus>) {
        self.statuses = Some(narrowed(self.statuses.take(), statuses));
    }

    /// Keeps only the runs with one of `outcomes` (with those kept before).
    pub fn outcome_in(&mut self, outcomes: impl IntoIterator<Item = RunOutcome>) {
        self.outcomes = Some(narrowed(self.outcomes.take(), outcomes));
    }

    /// The page's statement.
    pub fn query(&self) -> QueryBuilder<'static, Postgres> {
        self.statement("")
    }

    /// The page's statement under `EXPLAIN (ANALYZE, FORMAT JSON)`: what it read.
    pub fn explained(&self) -> QueryBuilder<'static, Postgres> {
        self.statement("EXPLAIN (ANALYZE, FORMAT JSON) ")
    }

    fn statement(&self, prefix: &str) -> QueryBuilder<'static, Postgres> {
        let merged = self.outcomes.as_ref().filter(|o| {
            o.len() > 1
                && o.iter()
                    .all(|o| *o == RunOutcome::Pending || UNSUCCESSFUL.contains(o))
        });
        let Some(outcomes) = merged else {
            let mut q = QueryBuilder::new(prefix);
            self.push_select(&mut q, self.outcomes.as_deref());
            return q;
        };
        let mut q = QueryBuilder::new(prefix);
        q.push("SELECT * FROM (");
        for (i, outcome) in outcomes.iter().enumerate() {
            q.push(if i == 0 { "(" } else { " UNION ALL (" });
            self.push_select(&mut q, Some(std::slice::from_ref(outcome)));
            q.push(")");
        }
        q.push(") r ORDER BY queued_at DESC, run_id DESC LIMIT ")
            .push(self.limit);
        q
    }

    /// One `SELECT` of the page, with `outcomes` for the outcomes.
    fn push_select(
        &self,
        q: &mut QueryBuilder<'static, Postgres>,
        outcomes: Option<&[RunOutcome]>,
    ) {
        q.push(format!(
            "SELECT {RUN_COLUMNS} FROM rm_runs WHERE workspace_id = "
        ))
        .push_bind(self.workspace.clone());
        if let Some(t) = &self.tenant {
            q.push(" AND tenant_key = ").push_bind(t.clone());
        }
        if let Some(t) = &self.run_type {
            q.push(" AND run_type = ").push_bind(t.clone());
        }
        if let Some(statuses) = &self.statuses {
            push_statuses(q, statuses);
        }
        if let Some(outcomes) = outcomes {
            q.push(" AND outcome");
            push_literals(q, outcomes.iter().map(|o| o.as_str()));
            // A run's outcome is pending exactly while it has not ended: said so, the
            // planner reads the few runs not yet ended (`rm_runs_active`).
            if outcomes == [RunOutcome::Pending] {
                q.push(" AND status <> 'completed'");
            }
        }
        if let Some(t) = self.queued_after {
            q.push(" AND queued_at >= ").push_bind(t);
        }
        if let Some(t) = self.queued_before {
            q.push(" AND queued_at < ").push_bind(t);
        }
        if let Some((at, id)) = self.after {
            q.push(" AND (queued_at, run_id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY queued_at DESC, run_id DESC LIMIT ")
            .push(self.limit);
    }
}

/// `these`, each once, less what `kept` (if any) leaves out. A client may name a value many
/// times (a request body of 256 KB holds twenty thousand), and each outcome would be an arm
/// of the merge.
fn narrowed<T: PartialEq>(kept: Option<Vec<T>>, these: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut once: Vec<T> = Vec::new();
    for t in these {
        if !once.contains(&t) && kept.as_ref().is_none_or(|k| k.contains(&t)) {
            once.push(t);
        }
    }
    once
}

/// ` AND` the shown status is one of `statuses`.
fn push_statuses(q: &mut QueryBuilder<'static, Postgres>, statuses: &[RunStatus]) {
    let queued = statuses.contains(&RunStatus::Queued);
    let running = statuses.contains(&RunStatus::Running);
    // A running run's row says queued (or, written before its start moved to the
    // checkpoint, running).
    let mut stored: Vec<&'static str> = statuses.iter().map(|s| s.as_str()).collect();
    if running && !queued {
        stored.push(RunStatus::Queued.as_str());
    }
    q.push(" AND status");
    push_literals(q, stored);
    // Among the queued rows, which are queued and which running.
    if queued != running {
        q.push(format!(" AND {RUN_STATUS}"));
        push_literals(q, statuses.iter().map(|s| s.as_str()));
    }
}

/// ` IN ('a', 'b')`, or ` IS NULL AND false` for none: `values` are the domain's own
/// spellings, never a client's text.
fn push_literals(
    q: &mut QueryBuilder<'static, Postgres>,
    values: impl IntoIterator<Item = &'static str>,
) {
    let values: Vec<&str> = values.into_iter().collect();
    if values.is_empty() {
        q.push(" IS NULL AND false");
        return;
    }
    let quoted: Vec<String> = values
        .iter()
        .map(|v| {
            assert!(
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "`{v}` is not a domain spelling"
            );
            format!("'{v}'")
        })
        .collect();
    q.push(format!(" IN ({})", quoted.join(", ")));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(list: &RunList) -> String {
        list.query().sql().to_owned()
    }

    fn list() -> RunList {
        RunList {
            workspace: "acme".into(),
            limit: 21,
            ..RunList::default()
        }
    }

    #[test]
    fn a_running_filter_reads_the_queued_rows_for_the_running_ones() {
        let mut l = list();
        l.status_in([RunStatus::Running]);
        let s = sql(&l);
        assert!(
            s.contains(" AND status IN ('running', 'queued') AND CASE"),
            "{s}"
        );
        assert!(
            s.ends_with(" IN ('running') ORDER BY queued_at DESC, run_id DESC LIMIT 21"),
            "{s}"
        );
    }

    #[test]
    fn queued_and_running_together_need_no_check_of_the_checkpoint() {
        let mut l = list();
        l.status_in([RunStatus::Queued, RunStatus::Running]);
        let s = sql(&l);
        let filter = &s[s.find(" FROM rm_runs").unwrap()..];
        assert_eq!(
            filter,
            " FROM rm_runs WHERE workspace_id = $1 AND status IN ('queued', 'running') \
             ORDER BY queued_at DESC, run_id DESC LIMIT 21"
        );
    }

    #[test]
    fn two_status_filters_keep_what_both_name_and_none_keeps_nothing() {
        let mut l = list();
        l.status_in([RunStatus::Queued, RunStatus::Completed]);
        l.status_in([RunStatus::Completed]);
        assert_eq!(l.statuses, Some(vec![RunStatus::Completed]));
        l.status_in([RunStatus::Running]);
        assert_eq!(l.statuses, Some(vec![]));
        assert!(sql(&l).contains(" AND status IS NULL AND false ORDER BY"));
    }

    #[test]
    fn several_unsuccessful_outcomes_are_read_one_by_one_and_merged() {
        let mut l = list();
        l.tenant = Some("acme:t".into());
        l.outcome_in([RunOutcome::Failed, RunOutcome::Blocked]);
        let s = sql(&l);
        assert!(s.starts_with("SELECT * FROM ((SELECT run_id,"), "{s}");
        assert!(s.contains(" AND outcome IN ('failed') ORDER BY"), "{s}");
        assert!(s.contains(") UNION ALL (SELECT run_id,"), "{s}");
        assert!(s.contains(" AND outcome IN ('blocked') ORDER BY"), "{s}");
        // Each arm binds its own workspace and tenant; the limit is written in (a bound
        // one would have the statement planned again on every execution).
        assert!(s.contains(" AND tenant_key = $4 AND outcome"), "{s}");
        assert!(
            s.ends_with(") r ORDER BY queued_at DESC, run_id DESC LIMIT 21"),
            "{s}"
        );
    }

    #[test]
    fn a_value_named_many_times_is_read_once() {
        let mut l = list();
        l.outcome_in([RunOutcome::Failed, RunOutcome::Blocked].repeat(5_000));
        l.status_in([RunStatus::Completed].repeat(5_000));
        assert_eq!(
            l.outcomes,
            Some(vec![RunOutcome::Failed, RunOutcome::Blocked])
        );
        assert_eq!(l.statuses, Some(vec![RunStatus::Completed]));
        let s = sql(&l);
        assert_eq!(s.matches(" UNION ALL ").count(), 1, "{s}");
    }

    #[test]
    fn pending_is_read_among_the_runs_not_yet_ended_and_merged_with_failures() {
        let mut l = list();
        l.outcome_in([RunOutcome::Pending]);
        let s = sql(&l);
        assert!(
            s.contains(" AND outcome IN ('pending') AND status <> 'completed' ORDER BY"),
            "{s}"
        );
        l.outcomes = None;
        l.outcome_in([RunOutcome::Pending, RunOutcome::Failed]);
        let s = sql(&l);
        assert!(
            s.contains(" AND outcome IN ('pending') AND status <> 'completed' ORDER BY"),
            "{s}"
        );
        assert!(s.contains(") UNION ALL (SELECT run_id,"), "{s}");
        assert!(s.contains(" AND outcome IN ('failed') ORDER BY"), "{s}");
    }

    #[test]
    fn a_success_among_the_outcomes_is_one_filter() {
        let mut l = list();
        l.outcome_in([RunOutcome::Succeeded, RunOutcome::Failed]);
        let s = sql(&l);
        assert!(s.starts_with("SELECT run_id,"), "{s}");
        assert!(
            s.contains(" AND outcome IN ('succeeded', 'failed') ORDER BY"),
            "{s}"
        );
    }

    #[test]
    fn every_status_and_outcome_is_a_plain_literal() {
        let mut l = list();
        l.status_in(RunStatus::ALL);
        l.outcome_in(RunOutcome::ALL);
        let s = sql(&l);
        assert!(s.contains("'partially_succeeded'"), "{s}");
    }
}
