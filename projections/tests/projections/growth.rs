//! The growth scenario (issue 13, "Done when"): a log of a million events across
//! several partitions (TENANTFLOW_GROWTH_EVENTS sets another size): the reader, the read
//! models (a rebuild), the sealer and verify work across partitions; archiving the oldest
//! closed runs keeps verify (live and archive) green and the run list whole. Minutes long:
//! `cargo test -p tenantflow-projections --test projections growth -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use store::archive::{self, ArchiveOptions};
use store::audit::VerifyOptions;
use testkit::{History, TestDb};

use crate::support::*;

/// The k-th copy of the history: its workspaces renamed, the last group of every UUID led
/// by k, so each copy is a history of its own.
const COPY: &str = "CREATE FUNCTION pg_temp.growth_copy(t text, k int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ \
    SELECT regexp_replace(regexp_replace(t, '(\"|^)(acme|globex)(\"|:)', '\\1\\2' || k || '\\3', 'g'), \
      '([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-)([0-9a-f]{8})[0-9a-f]{4}', '\\1' || lpad(to_hex(k), 4, '0') || '\\2', 'g') $$";

#[allow(clippy::print_stderr)]
#[tokio::test]
#[ignore = "minutes long: run with --ignored"]
async fn a_large_log_across_partitions_archives_its_oldest_runs_and_stays_verifiable() {
    let target: i64 = std::env::var("TENANTFLOW_GROWTH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = db.pool_of(4).await;
    store::partitions::resize(&pool, (target / 5).max(100))
        .await
        .unwrap();
    History::complete(&bus).await;
    let (per_copy, template_end): (i64, i64) =
        sqlx::query_as("SELECT count(*), max(global_position) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
    let copies = (target / per_copy).max(1);
    store::partitions::ensure(&pool, target + per_copy)
        .await
        .unwrap();
    let started = Instant::now();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(COPY).execute(&mut *conn).await.unwrap();
    for first in (1..=copies).step_by(50) {
        let last = (first + 49).min(copies);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT e.aggregate_type, pg_temp.growth_copy(e.aggregate_id, k) || \
                        CASE WHEN pg_temp.growth_copy(e.aggregate_id, k) = e.aggregate_id THEN '~' || k ELSE '' END, \
                    e.sequence, e.event_type, e.event_version, \
                    pg_temp.growth_copy(e.payload::text, k)::jsonb, pg_temp.growth_copy(e.metadata::text, k)::jsonb \
             FROM events e, generate_series($1::int, $2::int) AS k \
             WHERE e.global_position <= $3 ORDER BY k, e.global_position",
        )
        .bind(first as i32)
        .bind(last as i32)
        .bind(template_end)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    drop(conn);
    sqlx::query("ANALYZE events").execute(&pool).await.unwrap();
    let events = log_length(&pool).await;
    let partitions: i64 = sqlx::query_scalar("SELECT count(DISTINCT tableoid) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    eprintln!(
        "log: {events} events ({copies} copies of {per_copy}) in {partitions} partitions, written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(partitions >= 3);

    // Every read model, in one pass over the partitions.
    let all = projections::all();
    log_below_horizon(&pool).await;
    let started = Instant::now();
    let applied = projections::rebuild(&pool, &all, 1000, &Quiet)
        .await
        .unwrap();
    assert_eq!(applied as i64, events);
    let rebuild = started.elapsed().as_secs_f64();
    eprintln!(
        "rebuild: {rebuild:.1} s, {:.0} events/s",
        events as f64 / rebuild
    );

    let started = Instant::now();
    catch_up(&pool, Arc::new(store::AuditSealer)).await;
    eprintln!("sealing: {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let verified = store::audit::verify(&pool, &VerifyOptions::default(), &())
        .await
        .unwrap();
    assert!(verified.ok(), "{:?}", verified.first_bad());
    let verify = started.elapsed().as_secs_f64();
    eprintln!(
        "verify: {verify:.1} s, {:.0} events/s",
        events as f64 / verify
    );

    // The oldest closed runs, past the default retention.
    let runs_before: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    let now: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(completed_at) + make_interval(days => $1 + 1) FROM rm_runs")
            .bind(archive::DEFAULT_RUN_RETENTION_DAYS)
            .fetch_one(&pool)
            .await
            .unwrap();
    let dir = std::env::temp_dir().join(format!("tenantflow-growth-{}", uuid::Uuid::new_v4()));
    let options = ArchiveOptions {
        dir: dir.clone(),
        dry_run: false,
        now,
        max_runs: 2_000,
    };
    let started = Instant::now();
    let done = archive::archive(&pool, &options).await.unwrap();
    assert!(done.runs > 0);
    eprintln!(
        "archive: {} runs, {} events, {} bytes ({} a run) in {:.1} s",
        done.runs,
        done.events,
        done.bytes,
        done.bytes / done.runs.max(1),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(log_length(&pool).await, events - done.events as i64);

    let started = Instant::now();
    let verified = store::audit::verify(&pool, &VerifyOptions::default(), &())
        .await
        .unwrap();
    assert!(verified.ok(), "{:?}", verified.first_bad());
    assert_eq!(verified.chains[0].archived, done.events);
    let checked = archive::verify_archives(&pool, &dir).await.unwrap();
    assert!(checked.ok(), "{:?}", checked.problems);
    eprintln!(
        "verify after archival (live and archive): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    log_below_horizon(&pool).await;
    let started = Instant::now();
    projections::rebuild(&pool, &all, 1000, &Quiet)
        .await
        .unwrap();
    eprintln!(
        "rebuild after archival: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let runs_after: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs_after, runs_before);
    let _ = std::fs::remove_dir_all(&dir);
}
