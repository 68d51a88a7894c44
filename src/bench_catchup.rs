//! `tenantflow bench catchup`: every read model rebuilt from a large log, against an
//! ordered raw read of the same rows. The log is a template history made through the real
//! use cases (tenants registered and renamed, connections with credentials and consent,
//! resync runs queued and finished), copied until it holds the asked number of events: each
//! copy in a workspace of its own, with every UUID made unique by rewriting its last group,
//! so every copy is a history the read models take as new.

use serde::Serialize;
use sqlx::PgPool;
use std::path::PathBuf;
use std::time::Instant;

use crate::config::Config;
use crate::serve::{open_vault, Database};

const TEMPLATE_WORKSPACE: &str = "catchup";
const TEMPLATE_TENANTS: usize = 20;

#[derive(Debug, Serialize)]
struct CatchupReport {
    benchmark: &'static str,
    events: i64,
    /// The ordered raw read of every event (the rows a rebuild reads), per second.
    raw_read_events_per_second: f64,
    /// Rebuilt together, in one pass over the log.
    read_models: Vec<String>,
    rebuild_seconds: f64,
    /// The log applied to every read model: events / the one-pass rebuild's time.
    all_read_models_events_per_second: f64,
    /// all_read_models_events_per_second / raw_read_events_per_second
    ratio: f64,
    target_ratio: f64,
    target_events_per_second: f64,
}

pub async fn run(config: Config, events: usize, json: PathBuf) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench_catchup").await?;
    let result = measure(&config, &db.pool, events).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        events = report.events,
        "every read model in one pass: {:.1} s, {:.0} events/s; raw ordered read: {:.0} events/s; ratio {:.2} (target >= {:.1}, and >= {:.0} events/s)",
        report.rebuild_seconds,
        report.all_read_models_events_per_second,
        report.raw_read_events_per_second,
        report.ratio,
        report.target_ratio,
        report.target_events_per_second,
    );
    crate::bench::publish(&report, &json)
}

async fn measure(config: &Config, pool: &PgPool, events: usize) -> anyhow::Result<CatchupReport> {
    template(config, pool).await?;
    let (per_copy, template_end): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(global_position) FROM events")
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(per_copy > 0, "the template wrote no events");
    let copies = (events as i64 / per_copy).max(1);
    let started = Instant::now();
    // One statement (and transaction) per 20 copies, so the log has many transactions as
    // the service's does.
    for first in (1..=copies).step_by(20) {
        let last = (first + 19).min(copies);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT e.aggregate_type, \
                    bench_copy(e.aggregate_id, k), e.sequence, e.event_type, e.event_version, \
                    bench_copy(e.payload::text, k)::jsonb, bench_copy(e.metadata::text, k)::jsonb \
             FROM events e, generate_series($1::int, $2::int) AS k \
             WHERE e.global_position <= $3 \
             ORDER BY k, e.global_position",
        )
        .bind(first as i32)
        .bind(last as i32)
        .bind(template_end)
        .execute(pool)
        .await?;
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    tracing::info!(
        "copied a template of {per_copy} events {copies} times: {total} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sqlx::query("ANALYZE events").execute(pool).await?;

    // The rows a rebuild reads, in its order, read and counted.
    let started = Instant::now();
    let mut rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at \
         FROM events ORDER BY transaction_id, global_position",
    )
    .fetch(pool);
    let mut read = 0i64;
    use futures::TryStreamExt;
    while rows.try_next().await?.is_some() {
        read += 1;
    }
    drop(rows);
    let raw = read as f64 / started.elapsed().as_secs_f64();

    // Every read model, in one pass over the log.
    let all = projections::all();
    let started = Instant::now();
    let applied = projections::rebuild(pool, &all, crate::rebuild::BATCH, &crate::bench::Quiet)
        .await
        .map_err(|e| anyhow::anyhow!("rebuilding every read model: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        applied as i64 == total,
        "the rebuild read {applied} of {total} events"
    );
    let rate = total as f64 / seconds;
    Ok(CatchupReport {
        benchmark: "catchup",
        events: total,
        raw_read_events_per_second: raw,
        read_models: all.iter().map(|p| p.name().to_owned()).collect(),
        rebuild_seconds: seconds,
        all_read_models_events_per_second: rate,
        ratio: rate / raw,
        target_ratio: 0.5,
        target_events_per_second: 50_000.0,
    })
}

/// The template history, through the real use cases, and the SQL function that copies it.
async fn template(config: &Config, pool: &PgPool) -> anyhow::Result<()> {
    use domain::Role;
    // k-th copy: the workspace renamed, and the last group of every UUID led by k.
    sqlx::query(
        "CREATE OR REPLACE FUNCTION bench_copy(t text, k int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ \
           SELECT regexp_replace(replace(replace(t, '\"catchup\"', '\"catchup' || k || '\"'), 'catchup:', 'catchup' || k || ':'), \
             '([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-)([0-9a-f]{8})[0-9a-f]{4}', '\\1' || lpad(to_hex(k), 4, '0') || '\\2', 'g') $$",
    )
    .execute(pool)
    .await?;
    let bus = store::CommandBus::new(
        pool.clone(),
        domain::Services::system(),
        store::Metrics::new(),
    );
    let vault = open_vault(config)?;
    let owner = store::Metadata::new(TEMPLATE_WORKSPACE, "bench", Role::Owner);
    let engine = store::Metadata::new(TEMPLATE_WORKSPACE, "workflow:bench", Role::System);
    let err = |e: app::AppError| anyhow::anyhow!("{e}");
    for i in 0..TEMPLATE_TENANTS {
        let guid: domain::EntraTenantId = format!("{i:08x}-1111-4000-8000-000000000000").parse()?;
        let tenant = app::register_tenant(
            &bus,
            &owner,
            guid,
            &format!("Tenant {i}"),
            &format!("t{i}.example"),
        )
        .await
        .map_err(err)?;
        app::change_tenant(
            &bus,
            &owner,
            &tenant,
            domain::tenant::TenantCommand::Rename {
                display_name: format!("Tenant {i} (renamed)"),
            },
        )
        .await
        .map_err(err)?;
        crate::bench::connect_tenant(&bus, &vault, &owner, &tenant, guid).await?;
        for _ in 0..2 {
            crate::bench::finished_resync(&bus, &owner, &engine, &tenant).await?;
        }
    }
    Ok(())
}
