//! `tenantflow bench audit`: the audit log of a workspace that has kept years of events
//! (`rm_audit_log` keeps a row per event, and one per archived run). Each filter an auditor
//! has is asked for over HTTP through GraphQL, one client, with its p50 and p99.
//!
//! The rows are written straight into the audit log, as its projection writes them, in one
//! statement (docs/SCALING.md, "The audit log's filters over years of events"). Every answer
//! is checked against a count made in SQL over the same rows. Two pages have no target: a
//! month's window (more rows than the API reads by themselves) and a range open at one end
//! far back, which read from the newest row back to the range (what is left, and why, is in
//! docs/SCALING.md).

use serde::Serialize;
use sqlx::PgPool;
use std::path::PathBuf;
use std::time::Instant;

use crate::bench::PhaseResult;
use crate::bench_graphql::{measure_page, Edges, Served, WORKSPACE};
use crate::config::Config;
use crate::serve::Database;

/// The page, with the fields an audit screen shows.
const AUDIT_PAGE: &str = "query($f: AuditFilter) { auditLog(filter: $f, first: 50) { edges { node { globalPosition recordedAt actor role action aggregateType aggregateId tenantId correlationId } } pageInfo { hasNextPage endCursor } } }";

/// The rows are spread over three years from here.
const FIRST_RECORDED: &str = "2024-01-01T00:00:00Z";
const TENANTS: i64 = 1000;

#[derive(Debug, Serialize)]
struct PageAt {
    page: &'static str,
    filter: serde_json::Value,
    /// The rows each answer had: as many as SQL counts over the same rows, up to 50.
    rows: usize,
    /// Whether the page is held to the target (see the module's comment for the two that
    /// are not).
    targeted: bool,
    graphql: PhaseResult,
}

#[derive(Debug, Serialize)]
struct AuditReport {
    benchmark: &'static str,
    /// Rows in the audit log, and in the bench's workspace (the rest are another's).
    rows: usize,
    workspace_rows: i64,
    requests: usize,
    fill_seconds: f64,
    pages: Vec<PageAt>,
    /// The p99 every targeted page must stay under.
    target_p99_ms: f64,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditData {
    audit_log: Edges,
}

pub async fn run(
    config: Config,
    rows: usize,
    requests: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench_audit").await?;
    let result = measure_on(&config, &db.pool, rows, requests).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        rows = report.rows,
        workspace_rows = report.workspace_rows,
        "{} rows written into the audit log in {:.1} s",
        report.rows,
        report.fill_seconds,
    );
    for p in &report.pages {
        tracing::info!(
            page = p.page,
            rows = p.rows,
            "{:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({})",
            p.graphql.per_second,
            p.graphql.p50_ms,
            p.graphql.p99_ms,
            if p.targeted {
                format!("target < {:.0}", report.target_p99_ms)
            } else {
                "no target".to_owned()
            },
        );
    }
    crate::bench::publish(&report, &json)
}

/// One filter: as an auditor asks for it, and the same rows in SQL on the stored columns.
struct Filter {
    page: &'static str,
    filter: serde_json::Value,
    counted: String,
    targeted: bool,
}

fn filters() -> Vec<Filter> {
    let tenant = tenant_key(7);
    let filter = |page, filter, counted: &str, targeted| Filter {
        page,
        filter,
        counted: counted.to_owned(),
        targeted,
    };
    let (day, next_day) = ("2025-06-01T00:00:00Z", "2025-06-02T00:00:00Z");
    let (three_days, after_three) = ("2024-12-01T00:00:00Z", "2024-12-04T00:00:00Z");
    let (month, next_month) = ("2025-06-01T00:00:00Z", "2025-07-01T00:00:00Z");
    let two_years_back = "2024-12-01T00:00:00Z";
    vec![
        filter("newest", serde_json::json!({}), "true", true),
        filter(
            "one person's actions",
            serde_json::json!({ "actor": "person-rare" }),
            "actor = 'person-rare'",
            true,
        ),
        filter(
            "a frequent actor",
            serde_json::json!({ "actor": "operator-3" }),
            "actor = 'operator-3'",
            true,
        ),
        filter(
            "a rare action",
            serde_json::json!({ "action": "ConnectionDisabled" }),
            "action = 'ConnectionDisabled'",
            true,
        ),
        filter(
            "one tenant",
            serde_json::json!({ "tenantId": tenant }),
            &format!("tenant_key = '{tenant}'"),
            true,
        ),
        filter(
            "a day, 1.5 years back",
            serde_json::json!({ "recordedAfter": day, "recordedBefore": next_day }),
            &format!("recorded_at >= '{day}' AND recorded_at < '{next_day}'"),
            true,
        ),
        filter(
            "three days, 2 years back",
            serde_json::json!({ "recordedAfter": three_days, "recordedBefore": after_three }),
            &format!("recorded_at >= '{three_days}' AND recorded_at < '{after_three}'"),
            true,
        ),
        filter(
            "a tenant's day",
            serde_json::json!({ "tenantId": tenant, "recordedAfter": day, "recordedBefore": next_day }),
            &format!(
                "tenant_key = '{tenant}' AND recorded_at >= '{day}' AND recorded_at < '{next_day}'"
            ),
            true,
        ),
        filter(
            "a month, 1.5 years back",
            serde_json::json!({ "recordedAfter": month, "recordedBefore": next_month }),
            &format!("recorded_at >= '{month}' AND recorded_at < '{next_month}'"),
            false,
        ),
        filter(
            "before 2 years back",
            serde_json::json!({ "recordedBefore": two_years_back }),
            &format!("recorded_at < '{two_years_back}'"),
            false,
        ),
    ]
}

fn tenant_key(i: i64) -> String {
    format!("{WORKSPACE}:00000000-0000-4000-8000-{i:012x}")
}

async fn measure_on(
    config: &Config,
    pool: &PgPool,
    rows: usize,
    requests: usize,
) -> anyhow::Result<AuditReport> {
    let started = Instant::now();
    fill(pool, rows as i64).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let workspace_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_audit_log WHERE workspace_id = $1")
            .bind(WORKSPACE)
            .fetch_one(pool)
            .await?;

    let served = Served::start_on(config, pool).await?;
    let mut pages = Vec::new();
    for f in filters() {
        let counted: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM rm_audit_log WHERE workspace_id = $1 AND {}",
            f.counted
        ))
        .bind(WORKSPACE)
        .fetch_one(pool)
        .await?;
        let rows = counted.min(50) as usize;
        let graphql = measure_page(
            &served,
            f.page,
            AUDIT_PAGE,
            &f.filter,
            rows,
            (5, requests),
            |d: AuditData| d.audit_log.edges.len(),
        )
        .await?;
        pages.push(PageAt {
            page: f.page,
            filter: f.filter,
            rows,
            targeted: f.targeted,
            graphql,
        });
    }
    served.stop().await?;
    Ok(AuditReport {
        benchmark: "audit",
        rows,
        workspace_rows,
        requests,
        fill_seconds,
        pages,
        target_p99_ms: 10.0,
    })
}

/// `rows` audit rows over three years, one every few seconds as a fleet of [`TENANTS`]
/// tenants makes them: nine in ten in the bench's workspace, the rest in another; mostly
/// the workflows' own (`workflow:bench`), one in fifty by one of seven operators, ten by one
/// person; five common event types, and one in fifty thousand a connection disabled. Each
/// row's time is a second or two off its position's, as commits interleave. Then what
/// autovacuum would do after such a load.
async fn fill(pool: &PgPool, rows: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO rm_audit_log (global_position, workspace_id, recorded_at, actor, role, action, \
             aggregate_type, aggregate_id, tenant_key, correlation_id) \
         SELECT g, CASE WHEN g % 10 = 3 THEN 'other' ELSE $2 END, \
             $3::timestamptz + g * (interval '3 years' / $5) + (g % 7) * interval '300 milliseconds', \
             CASE WHEN g % ($1 / 10 + 1) = 1 THEN 'person-rare' \
                  WHEN g % 50 = 0 THEN 'operator-' || (g / 50 % 7) ELSE 'workflow:bench' END, \
             CASE WHEN g % 50 = 0 THEN 'operator' ELSE 'system' END, \
             CASE WHEN g % 50000 = 25000 THEN 'ConnectionDisabled' \
                  ELSE (ARRAY['RunQueued', 'RunStarted', 'StepCompleted', 'RunSucceeded', \
                              'PolicySnapshotted'])[1 + g % 5] END, \
             'OperationRun', md5(g::text), \
             $2 || ':00000000-0000-4000-8000-' || lpad(to_hex(g % $4), 12, '0'), md5((g / 5)::text) \
         FROM generate_series(1, $1) g",
    )
    .bind(rows)
    .bind(WORKSPACE)
    .bind(FIRST_RECORDED)
    .bind(TENANTS)
    .bind(rows as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // What autovacuum does after such a load: the block ranges filled are summarized (the
    // index asks for it as each range fills: `autosummarize`), and the statistics gathered.
    // A range not yet summarized is read by every window.
    sqlx::query("SELECT brin_summarize_new_values('rm_audit_log_recorded')")
        .execute(pool)
        .await?;
    sqlx::query("ANALYZE rm_audit_log").execute(pool).await?;
    Ok(())
}
