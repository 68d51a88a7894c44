//! `tenantflow bench graphql`: what a dashboard reads over HTTP — GraphQL, keep-alive
//! connections, the service's router in this process — against the same SQL read directly
//! (the resolvers' queries in the same workspace-reader transaction), at 1 and at 32
//! concurrent clients, in a scratch database. Three pages: the tenant list (20 tenants), the
//! run list (20 runs) and one run with its steps.

use anyhow::Context;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bench::{measure, measure_in_turns, CpuPerOp, CpuReading, PhaseResult};
use crate::bench_graphql_floor::FloorPage;
use crate::config::Config;
use crate::serve::Database;

/// The page a tenant list screen asks for.
const TENANTS_PAGE: &str = "{ tenants(first: 20) { edges { node { id displayName primaryDomain status lastResyncedAt } } pageInfo { hasNextPage endCursor } } }";

/// The page a run list screen asks for.
const RUNS_PAGE: &str = "{ runs(first: 20) { edges { node { id type tenantId status outcome queuedAt completedAt reasonCode } } pageInfo { hasNextPage endCursor } } }";

/// The list pages' requests with none of their rows' fields: the same SQL through the same
/// HTTP, authentication, GraphQL and transaction, resolving nothing but `hasNextPage`.
const BARE_TENANTS_PAGE: &str = "{ tenants(first: 20) { pageInfo { hasNextPage } } }";
const BARE_RUNS_PAGE: &str = "{ runs(first: 20) { pageInfo { hasNextPage } } }";

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

pub(crate) const WORKSPACE: &str = "bench";

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
    /// graphql.per_second / sql.per_second, the two measured in turns
    /// (`bench::measure_in_turns`)
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
struct WithoutFieldsAt {
    /// `tenants` or `runs`: the list page whose request this is, without its rows' fields.
    page: &'static str,
    concurrency: usize,
    graphql: PhaseResult,
    graphql_cpu: CpuPerOp,
    /// The page's SQL, measured in turns with this request.
    page_sql: PhaseResult,
    /// graphql.per_second / page_sql.per_second
    ratio_to_page_sql: f64,
}

/// A page served by the JSON floor (`bench_graphql_floor`): HTTP, the token, the page's SQL
/// in the confined snapshot and the same answer written by `serde`, no GraphQL.
#[derive(Debug, Serialize)]
struct JsonFloorAt {
    /// `tenants`, `runs` or `run`.
    page: &'static str,
    concurrency: usize,
    http: PhaseResult,
    http_cpu: CpuPerOp,
    /// The page's SQL, measured in turns with the floor.
    page_sql: PhaseResult,
    /// http.per_second / page_sql.per_second: the most any GraphQL service could bring
    /// the page to in this harness.
    ratio_to_page_sql: f64,
}

#[derive(Debug, Serialize)]
struct GraphqlReport {
    benchmark: &'static str,
    tenants: usize,
    requests: usize,
    runs: Vec<AtConcurrency>,
    /// `{ __typename }` at the same concurrencies.
    floor: Vec<FloorAt>,
    /// The list pages' requests with none of their rows' fields, against each page's SQL:
    /// the most any change to how fields are resolved could bring those pages to.
    without_fields: Vec<WithoutFieldsAt>,
    /// The list pages served with no GraphQL at all, against each page's SQL.
    json_floor: Vec<JsonFloorAt>,
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
    for w in &report.without_fields {
        tracing::info!(
            page = w.page,
            concurrency = w.concurrency,
            "GraphQL, the page without its rows' fields: {:.0}/s (p99 {:.2} ms; {}); ratio to the page's SQL {:.2}",
            w.graphql.per_second,
            w.graphql.p99_ms,
            w.graphql_cpu,
            w.ratio_to_page_sql,
        );
    }
    for r in &report.runs {
        tracing::info!(
            page = r.page,
            concurrency = r.concurrency,
            "GraphQL: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms; {}); same SQL: {:.0}/s (p99 {:.2} ms; {}); ratio {:.2} (target >= {:.1})",
            r.graphql.per_second,
            r.graphql.p50_ms,
            r.graphql.p99_ms,
            r.graphql_cpu,
            r.sql.per_second,
            r.sql.p99_ms,
            r.sql_cpu,
            r.ratio,
            report.target_ratio,
        );
    }
    for f in &report.json_floor {
        tracing::info!(
            page = f.page,
            concurrency = f.concurrency,
            "the page without GraphQL (the JSON floor): {:.0}/s (p99 {:.2} ms; {}); ratio to the page's SQL {:.2}",
            f.http.per_second,
            f.http.p99_ms,
            f.http_cpu,
            f.ratio_to_page_sql,
        );
    }
    crate::bench::publish(&report, &json)
}

/// The service's router, as `serve` builds it, on a loopback port, and the load
/// generator's connections to it with a token of the bench workspace's (read-only).
pub(crate) struct Served {
    pub connections: Arc<Connections>,
    shutdown: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// An authenticator with a fresh secret, and a read-only token of the bench workspace it
/// accepts.
pub(crate) fn readonly_token() -> anyhow::Result<(api::auth::Authenticator, String)> {
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
    Ok((auth, token))
}

impl Served {
    pub(crate) async fn start(
        pool: &PgPool,
        bus: store::CommandBus,
        metrics: store::Metrics,
        vault: store::Vault,
    ) -> anyhow::Result<Self> {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (auth, token) = readonly_token()?;
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
        Self::serve(api::router(state), token, shutdown).await
    }

    /// Serves `router` on a loopback port until [`Served::stop`] cancels `shutdown`; the
    /// load generator's connections carry `token`.
    pub(crate) async fn serve(
        router: axum::Router,
        token: String,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let connections = Arc::new(Connections::new(listener.local_addr()?, token));
        let stop = shutdown.clone();
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .into_future(),
        );
        Ok(Self {
            connections,
            shutdown,
            server,
        })
    }

    /// [`Served::start`] with a bus and a vault of its own, for a bench whose fixture is
    /// written in SQL.
    pub(crate) async fn start_on(config: &Config, pool: &PgPool) -> anyhow::Result<Self> {
        let metrics = store::Metrics::new();
        let bus = store::CommandBus::new(pool.clone(), domain::Services::system(), metrics.clone());
        let vault = crate::serve::open_vault(config)?;
        Self::start(pool, bus, metrics, vault).await
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server
            .await
            .context("the bench's server panicked")?
            .context("the bench's server failed")
    }
}

/// The load generator's connections to the service: plain HTTP/1.1 with keep-alive, one per
/// client at a time, opened when no idle one is left. Lighter than a general HTTP client
/// (no pool keyed by host, no redirects, no body encoding per request), so that less of the
/// machine's two cores goes to the harness rather than to the service it measures.
pub(crate) struct Connections {
    addr: std::net::SocketAddr,
    token: String,
    idle: std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Connections {
    pub(crate) fn new(addr: std::net::SocketAddr, token: String) -> Self {
        Self {
            addr,
            token,
            idle: Default::default(),
        }
    }

    /// POSTs `body` to `/graphql`; the answer's status and body.
    pub(crate) async fn post(&self, body: Bytes) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut sender = match idle {
            Some(sender) => sender,
            None => {
                let stream = tokio::net::TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                sender
            }
        };
        sender.ready().await?;
        let request = hyper::Request::post("/graphql")
            .header(hyper::header::HOST, self.addr.to_string())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let answer = sender.send_request(request).await?;
        let status = answer.status();
        let body = answer.into_body().collect().await?.to_bytes();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sender);
        Ok((status, body))
    }
}

/// Posts `page` to the service and checks its answer: one operation of the load.
fn over_http(
    connections: &Arc<Connections>,
    page: &Page,
) -> impl Fn(usize) -> Op + Clone + Send + Sync + 'static {
    let connections = connections.clone();
    let (body, check) = (Bytes::from(page.body.to_string()), page.check);
    move |_: usize| {
        let (connections, body) = (connections.clone(), body.clone());
        Box::pin(async move {
            let (status, answer) = connections.post(body).await?;
            anyhow::ensure!(
                status == hyper::StatusCode::OK && check(&answer),
                "unexpected answer ({status}): {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
            Ok(())
        })
    }
}

/// `page` through `connections` at `concurrency`: a warm-up, then `requests` timed in turns
/// with the page's SQL (`sql`): its result, the CPU it cost, and the SQL's result.
async fn beside_page_sql(
    connections: &Arc<Connections>,
    page: &Page,
    sql: impl Fn(usize) -> Op + Send + Sync + 'static,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<(PhaseResult, CpuPerOp, PhaseResult)> {
    let request = over_http(connections, page);
    measure(200, concurrency, request.clone()).await?;
    let [(result, cpu), (sql, _)] = measure_in_turns(requests, concurrency, request, sql).await?;
    Ok((result, cpu, sql))
}

/// One operation of a page's SQL, or of its request over HTTP.
type Op = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// The page `name`'s SQL run directly on `pool`, in the confined transaction the service
/// reads in: what the page's GraphQL is measured against.
fn page_sql_op(
    pool: &PgPool,
    name: &'static str,
    last_run: uuid::Uuid,
) -> impl Fn(usize) -> Op + Clone + Send + Sync + 'static {
    let pool = pool.clone();
    let statements = Arc::new(page_sql());
    move |_: usize| -> Op {
        let (pool, statements) = (pool.clone(), statements.clone());
        Box::pin(async move {
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
        })
    }
}

/// An answer's `data`, if it has no `errors`. The checks read only what they need: the rest
/// is parsed (a malformed answer still fails) but not kept.
pub(crate) fn data<D: serde::de::DeserializeOwned>(answer: &[u8]) -> Option<D> {
    #[derive(Deserialize)]
    struct Answer<D> {
        data: Option<D>,
        errors: Option<IgnoredAny>,
    }
    let answer: Answer<D> = serde_json::from_slice(answer).ok()?;
    answer.errors.is_none().then_some(answer.data).flatten()
}

/// One filtered page at one client: `warm_up` requests (a connection opened, the statement
/// prepared), then `requests` timed. Every answer must be `200 OK` with `rows` rows, as
/// `found` counts them in its `data`.
pub(crate) async fn measure_page<D: serde::de::DeserializeOwned + 'static>(
    served: &Served,
    page: &'static str,
    query: &str,
    filter: &serde_json::Value,
    rows: usize,
    (warm_up, requests): (usize, usize),
    found: fn(D) -> usize,
) -> anyhow::Result<PhaseResult> {
    let body = Bytes::from(
        serde_json::json!({ "query": query, "variables": { "f": filter } }).to_string(),
    );
    let connections = served.connections.clone();
    let request = move |_: usize| {
        let (connections, body) = (connections.clone(), body.clone());
        async move {
            let (status, answer) = connections.post(body).await?;
            let shown = data::<D>(&answer).map(found);
            anyhow::ensure!(
                status == hyper::StatusCode::OK && shown == Some(rows),
                "{page}: {rows} rows expected, the answer ({status}): {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
            Ok(())
        }
    };
    measure(warm_up, 1, request.clone()).await?;
    measure(requests, 1, request).await
}

#[derive(Deserialize)]
pub(crate) struct Edges {
    pub edges: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
struct Steps {
    steps: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
struct TenantsData {
    tenants: Edges,
}

#[derive(Deserialize)]
pub(crate) struct RunsData {
    pub runs: Edges,
}

#[derive(Deserialize)]
struct RunData {
    run: Option<Steps>,
}

#[derive(Deserialize)]
struct Typename {
    #[serde(rename = "__typename")]
    typename: String,
}

#[derive(Deserialize)]
struct BareTenantsData {
    tenants: BarePage,
}

#[derive(Deserialize)]
struct BareRunsData {
    runs: BarePage,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BarePage {
    page_info: PageInfo,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    has_next_page: bool,
}

/// One page as a dashboard asks for it, and the rows the SQL side must find.
struct Page {
    name: &'static str,
    body: serde_json::Value,
    /// Checks the GraphQL answer (its body).
    check: fn(&[u8]) -> bool,
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

    let served = Served::start(pool, bus, metrics, vault).await?;
    let connections = served.connections.clone();
    let pages = [
        Page {
            name: "tenants",
            body: serde_json::json!({ "query": TENANTS_PAGE }),
            check: |a| data::<TenantsData>(a).is_some_and(|d| d.tenants.edges.len() == 20),
        },
        Page {
            name: "runs",
            body: serde_json::json!({ "query": RUNS_PAGE }),
            check: |a| data::<RunsData>(a).is_some_and(|d| d.runs.edges.len() == 20),
        },
        Page {
            name: "run",
            body: serde_json::json!({ "query": RUN_PAGE, "variables": { "id": last_run.to_string() } }),
            check: |a| {
                data::<RunData>(a).is_some_and(|d| d.run.is_some_and(|r| !r.steps.is_empty()))
            },
        },
    ];
    let floor_page = Page {
        name: "floor",
        body: serde_json::json!({ "query": "{ __typename }" }),
        check: |a| data::<Typename>(a).is_some_and(|d| d.typename == "QueryRoot"),
    };
    // The list pages' SQL, with none of their rows' fields asked for.
    let bare_pages = [
        Page {
            name: "tenants",
            body: serde_json::json!({ "query": BARE_TENANTS_PAGE }),
            check: |a| {
                data::<BareTenantsData>(a).is_some_and(|d| d.tenants.page_info.has_next_page)
            },
        },
        Page {
            name: "runs",
            body: serde_json::json!({ "query": BARE_RUNS_PAGE }),
            check: |a| data::<BareRunsData>(a).is_some_and(|d| d.runs.page_info.has_next_page),
        },
    ];
    let mut floor = Vec::new();
    for concurrency in [1, 32] {
        let request = over_http(&connections, &floor_page);
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
    for page in &pages {
        let graphql = over_http(&connections, page);
        let sql = page_sql_op(pool, page.name, last_run);
        for concurrency in [1, 32] {
            // Warm-up: connections opened, statements prepared.
            measure(200, concurrency, graphql.clone()).await?;
            measure(200, concurrency, sql.clone()).await?;
            let [(graphql, graphql_cpu), (sql, sql_cpu)] =
                measure_in_turns(requests, concurrency, graphql.clone(), sql.clone()).await?;
            runs.push(AtConcurrency {
                page: page.name,
                concurrency,
                ratio: graphql.per_second / sql.per_second,
                graphql,
                sql,
                graphql_cpu,
                sql_cpu,
            });
        }
    }
    let mut without_fields = Vec::new();
    for page in &bare_pages {
        let sql = page_sql_op(pool, page.name, last_run);
        for concurrency in [1, 32] {
            let (graphql, graphql_cpu, page_sql) =
                beside_page_sql(&connections, page, sql.clone(), concurrency, requests).await?;
            without_fields.push(WithoutFieldsAt {
                page: page.name,
                concurrency,
                ratio_to_page_sql: graphql.per_second / page_sql.per_second,
                graphql,
                graphql_cpu,
                page_sql,
            });
        }
    }
    let (tenants_sql, runs_sql, run_sql) = page_sql();
    let mut json_floor = Vec::new();
    for (page, kind, sql) in [
        (&pages[0], FloorPage::Tenants, vec![tenants_sql]),
        (&pages[1], FloorPage::Runs, vec![runs_sql]),
        (&pages[2], FloorPage::Run(last_run), run_sql.to_vec()),
    ] {
        let floor = crate::bench_graphql_floor::serve(pool, kind, sql).await?;
        // The floor answers what the service answers: the same JSON, field for field.
        let body = Bytes::from(page.body.to_string());
        let (_, ours) = connections.post(body.clone()).await?;
        let (_, floors) = floor.connections.post(body).await?;
        let (ours, floors): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&ours)?,
            serde_json::from_slice(&floors)?,
        );
        if ours != floors {
            let start = |v: &serde_json::Value| v.to_string().chars().take(600).collect::<String>();
            anyhow::bail!(
                "the JSON floor's {} page differs from the service's: {} against {}",
                page.name,
                start(&floors),
                start(&ours)
            );
        }
        let sql = page_sql_op(pool, page.name, last_run);
        for concurrency in [1, 32] {
            let (http, http_cpu, page_sql) =
                beside_page_sql(&floor.connections, page, sql.clone(), concurrency, requests)
                    .await?;
            json_floor.push(JsonFloorAt {
                page: page.name,
                concurrency,
                ratio_to_page_sql: http.per_second / page_sql.per_second,
                http,
                http_cpu,
                page_sql,
            });
        }
        floor.stop().await?;
    }
    served.stop().await?;
    Ok(GraphqlReport {
        benchmark: "graphql",
        tenants,
        requests,
        runs,
        floor,
        without_fields,
        json_floor,
        target_ratio: 0.5,
        target_p99_ms_at_32: 10.0,
    })
}
