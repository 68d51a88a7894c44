//! `tenantflow bench graphql`: a dashboard's list page (20 tenants) over HTTP — GraphQL,
//! keep-alive connections, the service's router in this process — against the same SQL
//! page read directly (the resolver's query in the same workspace-reader transaction), at
//! 1 and at 32 concurrent clients, in a scratch database.

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bench::{measure, PhaseResult};
use crate::config::Config;
use crate::serve::Database;

/// The page a tenant list screen asks for.
const LIST_PAGE: &str = "{ tenants(first: 20) { edges { node { id displayName primaryDomain status lastResyncedAt } } pageInfo { hasNextPage endCursor } } }";

/// The resolver's SQL for that page (api/src/graphql/query.rs, `tenants`).
const SQL_PAGE: &str =
    "SELECT tenant_key, entra_tenant_id, display_name, primary_domain, status, registered_at, \
     archived_at, last_resynced_at, intent_snapshot_id, intent_hash, intent_seeded_at \
     FROM rm_tenants WHERE workspace_id = $1 ORDER BY display_name, tenant_key LIMIT 21";

const WORKSPACE: &str = "bench";

#[derive(Debug, Serialize)]
struct AtConcurrency {
    concurrency: usize,
    graphql: PhaseResult,
    sql: PhaseResult,
    /// graphql.per_second / sql.per_second
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct GraphqlReport {
    benchmark: &'static str,
    tenants: usize,
    requests: usize,
    runs: Vec<AtConcurrency>,
    target_ratio: f64,
    /// The p99 the list page must stay under at 32 clients.
    target_p99_ms_at_32: f64,
}

pub async fn run(
    config: Config,
    tenants: usize,
    requests: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench_graphql").await?;
    let result = measure_on(&config, &db.pool, tenants, requests).await;
    db.close().await?;
    let report = result?;
    for r in &report.runs {
        tracing::info!(
            concurrency = r.concurrency,
            "GraphQL list page: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); same SQL page: {:.0}/s (p99 {:.2} ms); ratio {:.2} (target >= {:.1})",
            r.graphql.per_second,
            r.graphql.p50_ms,
            r.graphql.p99_ms,
            r.sql.per_second,
            r.sql.p99_ms,
            r.ratio,
            report.target_ratio,
        );
    }
    crate::bench::publish(&report, &json)
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
    let run: u32 = rand::random();
    for i in 0..tenants {
        let guid = format!("{run:08x}-0000-4000-8000-{i:012x}").parse()?;
        app::register_tenant(
            &bus,
            &owner,
            guid,
            &format!("Bench tenant {i:05}"),
            &format!("t{i}.bench.example"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    projections::rebuild(pool, &[&projections::Tenants], 1000, &crate::bench::Quiet)
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
        crate::serve::open_vault(config)?,
        crate::serve::ApiSettings {
            auth,
            persisted: api::graphql::PersistedQueries::open(),
            workflows: workflows::Registry::standard(),
            limits: api::Limits::default(),
            graph_endpoint: "simulator".to_owned(),
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
    let body = Arc::new(serde_json::json!({ "query": LIST_PAGE }));
    let page = {
        let (client, url, token, body) = (client.clone(), url.clone(), token.clone(), body.clone());
        move |_: usize| {
            let (client, url, token, body) =
                (client.clone(), url.clone(), token.clone(), body.clone());
            async move {
                let answer: serde_json::Value = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&*body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let edges = answer["data"]["tenants"]["edges"].as_array().map(Vec::len);
                anyhow::ensure!(
                    edges == Some(20.min(tenants)),
                    "unexpected answer: {answer}"
                );
                Ok(())
            }
        }
    };
    let sql = {
        let pool = pool.clone();
        move |_: usize| {
            let pool = pool.clone();
            async move {
                let mut tx = store::db::workspace_reader(&pool, WORKSPACE).await?;
                let rows = sqlx::query(SQL_PAGE)
                    .bind(WORKSPACE)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                anyhow::ensure!(rows.len() == 21.min(tenants), "unexpected page");
                Ok(())
            }
        }
    };

    let mut runs = Vec::new();
    for concurrency in [1, 32] {
        // Warm-up: connections opened, statements prepared.
        measure(200, concurrency, page.clone()).await?;
        measure(200, concurrency, sql.clone()).await?;
        let graphql = measure(requests, concurrency, page.clone()).await?;
        let sql = measure(requests, concurrency, sql.clone()).await?;
        runs.push(AtConcurrency {
            concurrency,
            ratio: graphql.per_second / sql.per_second,
            graphql,
            sql,
        });
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
        target_ratio: 0.5,
        target_p99_ms_at_32: 10.0,
    })
}
