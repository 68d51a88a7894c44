//! `tenantflow bench runs`: the run list of a workspace that has kept years of runs (the run
//! rows stay after archival, so `rm_runs` only grows). Each filter a dashboard offers is
//! asked for over HTTP through GraphQL, one client, and its page must stay as quick as the
//! newest page: a page reads its own rows, not the workspace's history.
//!
//! The runs are written straight into the run read model, as its projection writes them, in
//! one statement (a log of millions of runs would take the bench an hour to make through the
//! engine; the pages read only the read model). Every answer is checked against a count made
//! in SQL over the same rows.

use api::graphql::RunList;
use domain::run::{RunOutcome, RunStatus};
use serde::Serialize;
use sqlx::{PgPool, Row};
use std::path::PathBuf;
use std::time::Instant;

use crate::bench::PhaseResult;
use crate::bench_graphql::{measure_page, RunsData, Served, WORKSPACE};
use crate::config::Config;
use crate::serve::Database;

/// The page, with the fields the run list screen shows.
const RUNS_PAGE: &str = "query($f: RunFilter) { runs(filter: $f, first: 20) { edges { node { id type tenantId status outcome queuedAt completedAt reasonCode } } pageInfo { hasNextPage endCursor } } }";

/// The fixture's runs are spread over three years from here.
const FIRST_QUEUED: &str = "2024-01-01T00:00:00Z";
const TENANTS: i64 = 1000;
/// The newest runs are queued (not yet ended).
const QUEUED: i64 = 50;

#[derive(Debug, Serialize)]
struct PageAt {
    page: &'static str,
    filter: serde_json::Value,
    /// The rows each answer had: as many as SQL counts over the same rows, up to 20.
    rows: usize,
    /// The rows the page's statement read (returned or filtered out by its scans), by
    /// PostgreSQL's `EXPLAIN ANALYZE` of the API's own statement.
    rows_read: u64,
    graphql: PhaseResult,
}

#[derive(Debug, Serialize)]
struct Relation {
    name: String,
    bytes: i64,
    bytes_per_run: f64,
}

#[derive(Debug, Serialize)]
struct RunsReport {
    benchmark: &'static str,
    /// Runs in the read model, and in the bench's workspace (the rest are another's).
    runs: usize,
    workspace_runs: i64,
    requests: usize,
    fill_seconds: f64,
    pages: Vec<PageAt>,
    /// `rm_runs` and each of its indexes.
    sizes: Vec<Relation>,
    /// The p99 every page must stay under.
    target_p99_ms: f64,
}

pub async fn run(
    config: Config,
    runs: usize,
    requests: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench_runs").await?;
    let result = measure_on(&config, &db.pool, runs, requests).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        runs = report.runs,
        workspace_runs = report.workspace_runs,
        "{} runs written into the run list in {:.1} s",
        report.runs,
        report.fill_seconds,
    );
    for r in &report.sizes {
        tracing::info!(
            relation = r.name,
            "{:.1} MB, {:.0} bytes a run",
            r.bytes as f64 / 1e6,
            r.bytes_per_run
        );
    }
    for p in &report.pages {
        tracing::info!(
            page = p.page,
            rows = p.rows,
            rows_read = p.rows_read,
            "{:.0}/s, p50 {:.2} ms, p99 {:.2} ms (target < {:.0})",
            p.graphql.per_second,
            p.graphql.p50_ms,
            p.graphql.p99_ms,
            report.target_p99_ms,
        );
    }
    crate::bench::publish(&report, &json)
}

/// One filter of the run list: as a dashboard asks for it, as the API lists it, and the same
/// rows counted in SQL on the stored columns.
struct Filter {
    page: &'static str,
    filter: serde_json::Value,
    list: RunList,
    counted: String,
}

fn filters() -> anyhow::Result<Vec<Filter>> {
    let tenant = tenant_key(7);
    let filter = |page, filter, set: &dyn Fn(&mut RunList), counted: &str| {
        let mut list = RunList {
            workspace: WORKSPACE.to_owned(),
            limit: 21,
            ..RunList::default()
        };
        set(&mut list);
        Filter {
            page,
            filter,
            list,
            counted: counted.to_owned(),
        }
    };
    let year_back = "2026-01-01T00:00:00Z";
    let before = year_back.parse()?;
    Ok(vec![
        filter("newest", serde_json::json!({}), &|_| {}, "true"),
        filter(
            "a year back",
            serde_json::json!({ "queuedBefore": year_back }),
            &|l| l.queued_before = Some(before),
            &format!("queued_at < '{year_back}'"),
        ),
        // No engine runs in the bench: none is running, so the page proves there is none.
        filter(
            "running",
            serde_json::json!({ "statusIn": ["running"] }),
            &|l| l.status_in([RunStatus::Running]),
            "status = 'running'",
        ),
        filter(
            "queued",
            serde_json::json!({ "statusIn": ["queued"] }),
            &|l| l.status_in([RunStatus::Queued]),
            "status = 'queued'",
        ),
        filter(
            "pending",
            serde_json::json!({ "outcomeIn": ["pending"] }),
            &|l| l.outcome_in([RunOutcome::Pending]),
            "outcome = 'pending'",
        ),
        filter(
            "failed or blocked",
            serde_json::json!({ "outcomeIn": ["failed", "blocked"] }),
            &|l| l.outcome_in([RunOutcome::Failed, RunOutcome::Blocked]),
            "outcome IN ('failed', 'blocked')",
        ),
        filter(
            "cancelled",
            serde_json::json!({ "outcomeIn": ["cancelled"] }),
            &|l| l.outcome_in([RunOutcome::Cancelled]),
            "outcome = 'cancelled'",
        ),
        filter(
            "contact syncs",
            serde_json::json!({ "type": "contacts.sync" }),
            &|l| l.run_type = Some("contacts.sync".to_owned()),
            "run_type = 'contacts.sync'",
        ),
        filter(
            "one tenant",
            serde_json::json!({ "tenantId": tenant }),
            &|l| l.tenant = Some(tenant.clone()),
            &format!("tenant_key = '{tenant}'"),
        ),
        filter(
            "one tenant's failures",
            serde_json::json!({ "tenantId": tenant, "outcomeIn": ["failed"] }),
            &|l| {
                l.tenant = Some(tenant.clone());
                l.outcome_in([RunOutcome::Failed]);
            },
            &format!("tenant_key = '{tenant}' AND outcome = 'failed'"),
        ),
    ])
}

/// The rows a plan's scans read: those they returned and those their filters removed (a
/// bitmap's index side and a subquery's scan are counted in the nodes they feed).
fn rows_read(plan: &serde_json::Value) -> u64 {
    let count = |key: &str| plan[key].as_f64().unwrap_or(0.0);
    let mut read = 0.0;
    let node = plan["Node Type"].as_str().unwrap_or_default();
    if node.ends_with("Scan") && node != "Bitmap Index Scan" && node != "Subquery Scan" {
        read = (count("Actual Rows")
            + count("Rows Removed by Filter")
            + count("Rows Removed by Index Recheck"))
            * count("Actual Loops").max(1.0);
    }
    read as u64
        + plan["Plans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(rows_read)
            .sum::<u64>()
}

fn tenant_key(i: i64) -> String {
    format!("{WORKSPACE}:00000000-0000-4000-8000-{i:012x}")
}

async fn measure_on(
    config: &Config,
    pool: &PgPool,
    runs: usize,
    requests: usize,
) -> anyhow::Result<RunsReport> {
    let started = Instant::now();
    fill(pool, runs as i64).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let workspace_runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_runs WHERE workspace_id = $1")
            .bind(WORKSPACE)
            .fetch_one(pool)
            .await?;
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_relation_size(c.oid) FROM pg_class c \
         WHERE c.oid = 'rm_runs'::regclass \
            OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'rm_runs'::regclass) \
         ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let sizes = sizes
        .into_iter()
        .map(|(name, bytes)| Relation {
            name,
            bytes,
            bytes_per_run: bytes as f64 / runs.max(1) as f64,
        })
        .collect();

    let served = Served::start_on(config, pool).await?;
    let mut pages = Vec::new();
    for f in filters()? {
        let counted: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM rm_runs WHERE workspace_id = $1 AND {}",
            f.counted
        ))
        .bind(WORKSPACE)
        .fetch_one(pool)
        .await?;
        let rows = counted.min(20) as usize;
        let graphql = measure_page(
            &served,
            f.page,
            RUNS_PAGE,
            &f.filter,
            rows,
            (20, requests),
            |d: RunsData| d.runs.edges.len(),
        )
        .await?;
        let mut tx = store::db::workspace_reader(pool, WORKSPACE).await?;
        let explained: serde_json::Value = f
            .list
            .explained()
            .build()
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.rollback().await?;
        pages.push(PageAt {
            page: f.page,
            filter: f.filter,
            rows,
            rows_read: rows_read(&explained[0]["Plan"]),
            graphql,
        });
    }
    served.stop().await?;
    Ok(RunsReport {
        benchmark: "runs",
        runs,
        workspace_runs,
        requests,
        fill_seconds,
        pages,
        sizes,
        target_p99_ms: 10.0,
    })
}

/// `runs` runs over three years, as a fleet of [`TENANTS`] tenants makes them: nine in ten
/// in the bench's workspace, the rest in another; mostly daily resyncs, a license refresh
/// in seven, a contact sync in two hundred; 1.5% failed, 0.5% blocked, a few partly
/// succeeded or cancelled; the newest [`QUEUED`] not yet ended. Then `ANALYZE`, as
/// autovacuum would after such a load.
async fn fill(pool: &PgPool, runs: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO rm_runs (run_id, workspace_id, run_type, tenant_key, status, outcome, \
             context, initiator, queued_at, started_at, completed_at, updated_at, version) \
         SELECT gen_random_uuid(), ws, \
             CASE WHEN g % 200 = 0 THEN 'contacts.sync' WHEN g % 7 = 0 THEN 'license.refresh' \
                  ELSE 'policy.resync' END, \
             ws || ':00000000-0000-4000-8000-' || lpad(to_hex(g % $2), 12, '0'), \
             CASE WHEN g > $1 - $3 THEN 'queued' ELSE 'completed' END, \
             CASE WHEN g > $1 - $3 THEN 'pending' WHEN g % 67 = 0 THEN 'failed' \
                  WHEN g % 211 = 0 THEN 'blocked' WHEN g % 997 = 0 THEN 'partially_succeeded' \
                  WHEN g % 4999 = 0 THEN 'cancelled' ELSE 'succeeded' END, \
             '{}', 'schedule:bench', at, \
             CASE WHEN g > $1 - $3 THEN NULL ELSE at + interval '1 second' END, \
             CASE WHEN g > $1 - $3 THEN NULL ELSE at + interval '9 seconds' END, at, 1 \
         FROM generate_series(1, $1) g, \
             LATERAL (SELECT CASE WHEN g % 10 = 3 THEN 'other' ELSE $4 END AS ws, \
                 $5::timestamptz + g * (interval '3 years' / $6) AS at) r",
    )
    .bind(runs)
    .bind(TENANTS)
    .bind(QUEUED)
    .bind(WORKSPACE)
    .bind(FIRST_QUEUED)
    .bind(runs as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE rm_runs").execute(pool).await?;
    Ok(())
}
