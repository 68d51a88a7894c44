//! The audit log's SQL: one page of `rm_audit_log`, newest first by position.
//!
//! Each filter but time has an index in the page's order (`rm_audit_log_tenant`, and the
//! actor's and the action's of migration `20261204000002`), so its page reads its own rows. A time window cannot: positions and
//! times rise together, but PostgreSQL does not know it, and reads the workspace from its
//! newest row back to the window. So a window (both ends given) is first read by itself
//! through the block range index on `recorded_at` (`rm_audit_log_recorded`), up to
//! [`WINDOW_ROWS`] rows, which are then ordered; a window with more rows than that is read
//! in the page's order as before, where it costs what it did.

use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::query::TimeRange;
use super::types::AuditEntry;

/// The most rows of a time window read by themselves and ordered: about 5 ms of reading
/// (a day of a fleet that keeps 2,700,000 rows over three years is about 2,500). A window
/// with more is read in the page's order.
pub(crate) const WINDOW_ROWS: i64 = 10_000;

const COLUMNS: &str =
    "global_position, recorded_at, actor, role, action, aggregate_type, aggregate_id, \
     tenant_key, correlation_id, details";

/// Which audit rows a page lists, newest first, every filter already checked.
pub(crate) struct AuditList<'a> {
    pub workspace: &'a str,
    /// Every tenant named (the deprecated argument and the filter's): a row must be of all.
    pub tenants: Vec<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub recorded: TimeRange,
    /// The position of the last row of the page before.
    pub before_position: Option<i64>,
    /// Rows to read: the page and one more.
    pub limit: i64,
}

/// A row of a window read by itself, with how many rows the window read.
#[derive(sqlx::FromRow)]
struct Windowed {
    #[sqlx(flatten)]
    entry: AuditEntry,
    window_rows: i64,
}

impl AuditList<'_> {
    /// The page's rows.
    pub(crate) async fn fetch(
        &self,
        tx: &mut PgConnection,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        if let (Some(_), Some(_)) = (self.recorded.after, self.recorded.before) {
            let mut q = QueryBuilder::<Postgres>::new(format!(
                "SELECT w.*, count(*) OVER () AS window_rows FROM (SELECT {COLUMNS}"
            ));
            self.push_where(&mut q);
            q.push(" LIMIT ")
                .push_bind(WINDOW_ROWS + 1)
                .push(") w ORDER BY global_position DESC LIMIT ")
                .push_bind(self.limit);
            // Planned for this window's own ends (an unnamed statement is planned when its
            // values are bound): a plan kept for any window could read the table from its
            // start instead of the window's block ranges.
            let rows: Vec<Windowed> = q
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?;
            if rows.first().is_none_or(|r| r.window_rows <= WINDOW_ROWS) {
                return Ok(rows.into_iter().map(|r| r.entry).collect());
            }
        }
        let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS}"));
        self.push_where(&mut q);
        q.push(" ORDER BY global_position DESC LIMIT ")
            .push_bind(self.limit);
        q.build_query_as().fetch_all(&mut *tx).await
    }

    /// ` FROM rm_audit_log WHERE` every filter.
    fn push_where<'q>(&'q self, q: &mut QueryBuilder<'q, Postgres>) {
        q.push(" FROM rm_audit_log WHERE workspace_id = ")
            .push_bind(self.workspace);
        for t in &self.tenants {
            q.push(" AND tenant_key = ").push_bind(t);
        }
        if let Some(actor) = &self.actor {
            q.push(" AND actor = ").push_bind(actor);
        }
        if let Some(action) = &self.action {
            q.push(" AND action = ").push_bind(action);
        }
        self.recorded.push(q, "recorded_at");
        if let Some(p) = self.before_position {
            q.push(" AND global_position < ").push_bind(p);
        }
    }
}
