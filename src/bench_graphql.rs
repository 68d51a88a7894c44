//! `tenantflow bench graphql`: what a dashboard reads over HTTP — GraphQL, keep-alive
//! connections, the service's router in this process — against the same SQL read directly
//! (the resolvers' queries in the same workspace-reader transaction), at 1 and at 32
//! concurrent clients, in a scratch database. Three pages: the tenant list (20 tenants), the
//! run list (20 runs) and one run with its steps.

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bench::{measure, CpuPerOp, CpuReading, PhaseResult};
use crate::config::Config;
use crate::serve::Database;

/// The page a tenant list screen asks for.
const TENANTS_PAGE: &str = "{ tenants(first: 20) { edges { node { id displayName primaryDomain status lastResyncedAt } } pageInfo { hasNextPage endCursor } } }";

/// The page a run list screen asks for.
const RUNS_PAGE: &str = "{ runs(first: 20) { edges { node { id type tenantId status outcome queuedAt completedAt reasonCode } } pageInfo { hasNextPage endCursor } } }";

/// A run's page: the run and every step attempt.
const RUN_PAGE: &str = "query($id: String!) { run(id: $id) { id type status outcome queuedAt completedAt steps { step attempt status recordedAt } } }";

/// The resolvers' SQL for each page, with the columns they read (`api::graphql`): the
/// tenant list (api/src/graphql/query.rs, `tenants`), the run list (`runs`), and the run
/// with its steps and its checkpoint.
fn page_sql() -> (String, String, [String; 3]) {
    use api::graphql::{RUN_COLUMNS, RUN_STEPS_SQL, TENANT_COLUMNS};
    (
        format!(
            "SELECT {TENANT_COLUMNS} FROM rm_tenants WHERE workspace_id = $1 \
             ORDER BY display_name, tenant_key LIMIT 21"
        ),
        format!(
            "SELECT {RUN_COLUMNS} FROM rm_runs WHERE workspace_id = $1 \
             ORDER BY queued_at DESC, run_id DESC LIMIT 21"
        ),
        [
            format!("SELECT {RUN_COLUMNS} FROM rm_runs WHERE run_id = $1"),
            RUN_STEPS_SQL.to_owned(),
            "SELECT progress FROM workflow_tasks WHERE run_id = $1".to_owned(),
        ],
    )
}

/// Tenants that get runs, and runs each.
const TENANTS_WITH_RUNS: usize = 20;
const RUNS_PER_TENANT: usize = 3;

const WORKSPACE: &str = "bench";

#[derive(Debug, Serialize)]
struct AtConcurrency {
    /// `tenants`, `runs` or `run`.
    page: &'static str,
    concurrency: usize,
    graphql: PhaseResult,
    sql: PhaseResult,
    /// CPU per request of each side: this process's (the server and the load generator
    /// together) and the machine's (PostgreSQL's too).
    graphql_cpu: CpuPerOp,
    sql_cpu: CpuPerOp,
    /// graphql.per_second / sql.per_second
    ratio: f64,
}

/// A request that reads nothing (`{ __typename }`) through the same HTTP, authentication and
/// GraphQL path: the most any page can do in this harness, whose load generator shares the
/// machine's cores with the server and PostgreSQL.
#[derive(Debug, Serialize)]
struct FloorAt {
    concurrency: usize,
    graphql: PhaseResult,
    graphql_cpu: CpuPerOp,
}

#[derive(Debug, Serialize)]
struct GraphqlReport {
    benchmark: &'static str,
    tenants: usize,
    requests: usize,
    runs: Vec<AtConcurrency>,
    /// `{ __typename }` at the same concurrencies.
    floor: Vec<FloorAt>,
    target_ratio: f64,
    /// The p99 every page must stay under at 32 clients.
    target_p99_ms_at_32: f64,
}

pub async fn run(
    config: Config,
    tenants: usize,
    requests: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench_graphql").await?;
    let result = measure_on(&config, &db.pool, tenants.max(TENANTS_WITH_RUNS), requests).await;
    db.close().await?;
    let report = result?;
    for f in &report.floor {
        tracing::info!(
            concurrency = f.concurrency,
            "GraphQL reading nothing ({{ __typename }}): {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            f.graphql.per_second,
            f.graphql.p50_ms,
            f.graphql.p99_ms,
        );
    }
    for r in &report.runs {
        tracing::info!(
            page = r.page,
            concurrency = r.concurrency,
            "GraphQL: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms; CPU {:.0} µs here, {:.0} µs machine); same SQL: {:.0}/s (p99 {:.2} ms; CPU {:.0} µs here, {:.0} µs machine); ratio {:.2} (target >= {:.1})",
            r.graphql.per_second,
            r.graphql.p50_ms,
            r.graphql.p99_ms,
            r.graphql_cpu.process_ms * 1000.0,
            r.graphql_cpu.machine_ms * 1000.0,
            r.sql.per_second,
            r.sql.p99_ms,
            r.sql_cpu.process_ms * 1000.0,
            r.sql_cpu.machine_ms * 1000.0,
            r.ratio,
            report.target_ratio,
        );
    }
    crate::bench::publish(&report, &json)
}

/// Posts `page` to the service and checks its answer: one operation of the load.
fn over_http(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    page: &Page,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let (client, url, token) = (client.clone(), url.to_owned(), token.to_owned());
    let (body, check) = (Arc::new(page.body.clone()), page.check);
    move |_: usize| {
        let (client, url, token, body) = (client.clone(), url.clone(), token.clone(), body.clone());
        Box::pin(async move {
            let answer: serde_json::Value = client
                .post(&url)
                .bearer_auth(&token)
                .json(&*body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::ensure!(check(&answer), "unexpected answer: {answer}");
            Ok(())
        })
    }
}

/// One page as a dashboard asks for it, and the rows the SQL side must find.
struct Page {
    name: &'static str,
    body: serde_json::Value,
    /// Checks the GraphQL answer.
    check: fn(&serde_json::Value) -> bool,
}

async fn measure_on(
    config: &Config,
    pool: &PgPool,
    tenants: usize,
    requests: usize,
) -> anyhow::Result<GraphqlReport> {
    let metrics = store::Metrics::new();
    let bus = store::CommandBus::new(pool.clone(), domain::Services::system(), metrics.clone());
    let owner = store::Metadata::new(WORKSPACE, "bench", domain::Role::Owner);
    let engine = store::Metadata::new(WORKSPACE, "workflow:bench", domain::Role::System);
    let vault = crate::serve::open_vault(config)?;
    let run: u32 = rand::random();
    let mut last_run = None;
    for i in 0..tenants {
        let guid: domain::EntraTenantId = format!("{run:08x}-0000-4000-8000-{i:012x}").parse()?;
        let tenant = app::register_tenant(
            &bus,
            &owner,
            guid,
            &format!("Bench tenant {i:05}"),
            &format!("t{i}.bench.example"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        if i < TENANTS_WITH_RUNS {
            crate::bench::connect_tenant(&bus, &vault, &owner, &tenant, guid).await?;
            for _ in 0..RUNS_PER_TENANT {
                last_run =
                    Some(crate::bench::finished_resync(&bus, &owner, &engine, &tenant).await?);
            }
        }
    }
    let last_run = last_run.context("no run was made")?;
    projections::rebuild(
        pool,
        &[Arc::new(projections::Tenants), Arc::new(projections::Runs)],
        1000,
        &crate::bench::Quiet,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    // The service's router, as `serve` builds it, on a loopback port.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let secret = secrecy::SecretString::from(format!("{:032x}", rand::random::<u128>()));
    let auth = api::auth::Authenticator::new(&secret);
    let token = auth
        .mint(
            "bench",
            WORKSPACE,
            domain::Role::Readonly,
            chrono::Duration::hours(1),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = crate::serve::app_state(
        pool,
        bus,
        metrics,
        vault,
        crate::serve::ApiSettings {
            auth,
            persisted: api::graphql::PersistedQueries::open(),
            workflows: workflows::Registry::standard(),
            limits: api::Limits::default(),
            graph_endpoint: "simulator".to_owned(),
            replica: None,
        },
        &shutdown,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/graphql", listener.local_addr()?);
    let stop = shutdown.clone();
    let server = tokio::spawn(
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future(),
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let pages = [
        Page {
            name: "tenants",
            body: serde_json::json!({ "query": TENANTS_PAGE }),
            check: |a| a["data"]["tenants"]["edges"].as_array().map(Vec::len) == Some(20),
        },
        Page {
            name: "runs",
            body: serde_json::json!({ "query": RUNS_PAGE }),
            check: |a| a["data"]["runs"]["edges"].as_array().map(Vec::len) == Some(20),
        },
        Page {
            name: "run",
            body: serde_json::json!({ "query": RUN_PAGE, "variables": { "id": last_run.to_string() } }),
            check: |a| {
                a["data"]["run"]["steps"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
            },
        },
    ];
    let floor_page = Page {
        name: "floor",
        body: serde_json::json!({ "query": "{ __typename }" }),
        check: |a| a["data"]["__typename"] == "QueryRoot",
    };
    let mut floor = Vec::new();
    for concurrency in [1, 32] {
        let request = over_http(&client, &url, &token, &floor_page);
        measure(200, concurrency, request.clone()).await?;
        let cpu = CpuReading::now();
        let graphql = measure(requests, concurrency, request).await?;
        floor.push(FloorAt {
            concurrency,
            graphql,
            graphql_cpu: cpu.per_op(requests),
        });
    }
    let mut runs = Vec::new();
    for page in pages {
        let graphql = over_http(&client, &url, &token, &page);
        let name = page.name;
        let sql = {
            let pool = pool.clone();
            let statements = Arc::new(page_sql());
            move |_: usize| {
                let (pool, statements) = (pool.clone(), statements.clone());
                async move {
                    let (tenants_sql, runs_sql, run_sql) = &*statements;
                    let mut tx = store::db::workspace_reader(&pool, WORKSPACE).await?;
                    let found = match name {
                        "tenants" => sqlx::query(tenants_sql)
                            .bind(WORKSPACE)
                            .fetch_all(&mut *tx)
                            .await?
                            .len(),
                        "runs" => sqlx::query(runs_sql)
                            .bind(WORKSPACE)
                            .fetch_all(&mut *tx)
                            .await?
                            .len(),
                        _ => {
                            let mut rows = 0;
                            for sql in run_sql {
                                rows += sqlx::query(sql)
                                    .bind(last_run)
                                    .fetch_all(&mut *tx)
                                    .await?
                                    .len();
                            }
                            rows
                        }
                    };
                    tx.commit().await?;
                    anyhow::ensure!(found > 1, "unexpected page");
                    Ok(())
                }
            }
        };
        for concurrency in [1, 32] {
            // Warm-up: connections opened, statements prepared.
            measure(200, concurrency, graphql.clone()).await?;
            measure(200, concurrency, sql.clone()).await?;
            let cpu = CpuReading::now();
            let graphql = measure(requests, concurrency, graphql.clone()).await?;
            let graphql_cpu = cpu.per_op(requests);
            let cpu = CpuReading::now();
            let sql = measure(requests, concurrency, sql.clone()).await?;
            let sql_cpu = cpu.per_op(requests);
            runs.push(AtConcurrency {
                page: name,
                concurrency,
                ratio: graphql.per_second / sql.per_second,
                graphql,
                sql,
                graphql_cpu,
                sql_cpu,
            });
        }
    }
    shutdown.cancel();
    server
        .await
        .context("the bench's server panicked")?
        .context("the bench's server failed")?;
    Ok(GraphqlReport {
        benchmark: "graphql",
        tenants,
        requests,
        runs,
        floor,
        target_ratio: 0.5,
        target_p99_ms_at_32: 10.0,
    })
}
