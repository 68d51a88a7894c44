//! `tenantflow bench verify`: how fast the audit chain is verified and sealed, over a
//! generated log in a scratch database. Verification is measured against a bare pass that
//! runs the same query and hashes each row's bytes as read (no JSON parsing, no canonical
//! form, no seals): the ratio says what the chain's own work costs over reading the log.

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use store::audit::{AuditSealer, VerifyOptions};
use store::{ConsumerRunner, Metrics, Progress, RunnerOptions};

use crate::config::Config;
use crate::serve::Database;

/// Events per generating INSERT (each its own transaction, as appends are).
const PER_TRANSACTION: usize = 100;

#[derive(Debug, Serialize)]
struct Rate {
    events: u64,
    seconds: f64,
    per_second: f64,
}

impl Rate {
    fn of(events: u64, started: Instant) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        Self {
            events,
            seconds,
            per_second: events as f64 / seconds.max(1e-9),
        }
    }
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    benchmark: &'static str,
    events: usize,
    workspaces: usize,
    /// Mean size of an event's canonical bytes.
    mean_event_bytes: f64,
    /// The sealer catching up on the whole log, batch by batch as in the service.
    sealer: Rate,
    sealer_batch_size: i64,
    /// Best of `rounds` full verifications (global chain and every workspace chain).
    verify: Rate,
    /// Best of `rounds` bare passes.
    bare_sha256: Rate,
    rounds: usize,
    /// verify.per_second / bare_sha256.per_second
    ratio: f64,
    target_ratio: f64,
}

pub async fn run(
    config: Config,
    events: usize,
    workspaces: usize,
    rounds: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench_verify").await?;
    let result = run_on(&db.pool, events, workspaces, rounds).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        events,
        "sealer catch-up: {:.0} events/s; verify: {:.0} events/s; bare SHA-256 pass: {:.0} events/s; ratio {:.2} (target >= {:.1})",
        report.sealer.per_second,
        report.verify.per_second,
        report.bare_sha256.per_second,
        report.ratio,
        report.target_ratio,
    );
    crate::bench::publish(&report, &json)
}

async fn run_on(
    pool: &PgPool,
    events: usize,
    workspaces: usize,
    rounds: usize,
) -> anyhow::Result<VerifyReport> {
    generate(pool, events, workspaces).await?;
    sqlx::query("ANALYZE events").execute(pool).await?;

    let options = RunnerOptions::default();
    let sealer_batch_size = options.batch_size;
    let runner = ConsumerRunner::new(pool.clone(), Arc::new(AuditSealer), options, Metrics::new());
    let started = Instant::now();
    loop {
        match runner.step().await? {
            Progress::Consumed(_) => {}
            Progress::Idle => break,
            Progress::Busy => anyhow::bail!("another process is sealing the scratch database"),
        }
    }
    let sealer = Rate::of(events as u64, started);
    tracing::info!("sealed {events} events at {:.0}/s", sealer.per_second);

    let mut verify: Option<Rate> = None;
    let mut bare: Option<Rate> = None;
    for round in 0..rounds {
        let started = Instant::now();
        let (rows, _) = store::audit::bare_pass(pool).await?;
        let b = Rate::of(rows, started);
        let started = Instant::now();
        let v = store::audit::verify(pool, &VerifyOptions::default(), &()).await?;
        anyhow::ensure!(
            v.ok(),
            "the generated log does not verify: {:?}",
            v.first_bad()
        );
        let v = Rate::of(v.checked(), started);
        tracing::info!(
            round,
            "bare pass {:.0}/s, verify {:.0}/s",
            b.per_second,
            v.per_second
        );
        if bare.as_ref().is_none_or(|x| b.per_second > x.per_second) {
            bare = Some(b);
        }
        if verify.as_ref().is_none_or(|x| v.per_second > x.per_second) {
            verify = Some(v);
        }
    }
    let (verify, bare) = verify.zip(bare).context("no round ran")?;
    let mean_event_bytes: f64 = sqlx::query_scalar(
        "SELECT COALESCE(avg(length(payload::text) + length(metadata::text) + length(aggregate_id) + 120), 0)::float8 FROM events",
    )
    .fetch_one(pool)
    .await?;
    Ok(VerifyReport {
        benchmark: "verify",
        events,
        workspaces,
        mean_event_bytes,
        sealer,
        sealer_batch_size,
        ratio: verify.per_second / bare.per_second,
        verify,
        bare_sha256: bare,
        rounds,
        target_ratio: 0.5,
    })
}

/// Fills the log with `events` events shaped like the service's (a tenant's events: streams
/// of ten, a payload with a nested object and a list, the full metadata), spread over
/// `workspaces` workspaces, by bulk INSERT ... SELECT generate_series, [`PER_TRANSACTION`]
/// events per transaction. (One huge transaction would be no log the service writes: with
/// only a few distinct transaction ids PostgreSQL misjudges the consumers' batch query and
/// scans the whole table for every batch.)
async fn generate(pool: &PgPool, events: usize, workspaces: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let transactions = events.div_ceil(PER_TRANSACTION);
    let pool = pool.clone();
    let workspaces = workspaces.max(1) as i64;
    crate::bench::measure(transactions, 4, move |t| {
        let pool = pool.clone();
        async move {
            let from = t * PER_TRANSACTION;
            let to = ((t + 1) * PER_TRANSACTION).min(events);
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 SELECT 'tenant', 'bench' || (s % $3) || ':' || md5(s::text)::uuid, i % 10 + 1, 'TenantRenamed', '1.0', \
                     jsonb_build_object('TenantRenamed', jsonb_build_object( \
                         'display_name', 'Bench tenant ' || s || ' (' || i % 10 || ')', \
                         'previous_name', 'Bench tenant ' || s, \
                         'renamed_at', now(), \
                         'counts', jsonb_build_array(i % 7, i % 13, i % 17))), \
                     jsonb_build_object('workspace', 'bench' || (s % $3), 'actor', 'bench-user', 'role', 'owner', \
                         'correlation_id', md5(i::text)::uuid::text, 'request_id', md5((i + 1)::text)::uuid::text) \
                 FROM generate_series($1::bigint, $2::bigint - 1) AS i, LATERAL (SELECT i / 10 AS s) st",
            )
            .bind(from as i64)
            .bind(to as i64)
            .bind(workspaces)
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await?;
    tracing::info!(
        "generated {events} events in {transactions} transactions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
