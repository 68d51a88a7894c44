//! Retention and archival over a log spanning several partitions (issue 13, item 3):
//! archived runs leave the hot log, verify stays green (live and archive), the run list and
//! the audit log keep a summary of each, a rebuild keeps them, and a tampered segment is
//! named.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use store::archive::{self, ArchiveOptions};
use store::audit::VerifyOptions;
use testkit::{History, TestDb};

use crate::support::*;

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Re-writes a segment with one event's payload changed, as someone covering tracks would.
fn tamper(segment: &Path) {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(segment).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["payload"] = serde_json::json!({"forged": true});
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(segment).unwrap(),
        flate2::Compression::default(),
    );
    for line in &lines {
        writeln!(gz, "{line}").unwrap();
    }
    gz.finish().unwrap();
}

// The sizes it measured are printed for docs/SCALING.md (`--nocapture`).
#[allow(clippy::print_stderr)]
#[tokio::test]
async fn archiving_closed_runs_keeps_verify_the_run_list_and_a_rebuild_whole() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool().clone();
    // Small partitions, so that the history spans several.
    store::partitions::resize(&pool, 16).await.unwrap();
    store::partitions::ensure(&pool, 2_000).await.unwrap();
    History::complete(&bus).await;
    for consumer in consumers() {
        catch_up(&pool, consumer).await;
    }
    catch_up(&pool, Arc::new(store::AuditSealer)).await;
    assert!(scalar(&pool, "SELECT count(DISTINCT tableoid) FROM events").await >= 3);

    // One workspace keeps closed runs 0 days; the other keeps the default 90.
    let (workspace, now): (String, DateTime<Utc>) = sqlx::query_as(
        "SELECT min(workspace_id), max(completed_at) + interval '1 second' FROM rm_runs \
         WHERE completed_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    archive::set_retention(&pool, &workspace, 0).await.unwrap();
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rm_runs WHERE completed_at IS NOT NULL AND workspace_id = $1",
    )
    .bind(&workspace)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(expired > 0);
    let hot_bytes: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(octet_length(e.payload::text) + octet_length(e.metadata::text)), 0)::bigint \
         FROM events e JOIN rm_runs r ON e.aggregate_type = 'operation_run' AND e.aggregate_id = r.run_id::text \
         WHERE r.completed_at IS NOT NULL AND r.workspace_id = $1",
    )
    .bind(&workspace)
    .fetch_one(&pool)
    .await
    .unwrap();
    let runs_before = snapshot_of(&pool).await["rm_runs"].clone();
    let log_before = log_length(&pool).await;
    let dir = std::env::temp_dir().join(format!("tenantflow-archive-{}", uuid::Uuid::new_v4()));
    let mut options = ArchiveOptions {
        dir: dir.clone(),
        dry_run: true,
        now,
        max_runs: 1_000,
    };

    let dry = archive::archive(&pool, &options).await.unwrap();
    assert_eq!(dry.runs as i64, expired);
    assert!(dry.segment.is_none() && !dir.exists());
    assert_eq!(log_length(&pool).await, log_before);

    options.dry_run = false;
    let done = archive::archive(&pool, &options).await.unwrap();
    assert_eq!(done.runs as i64, expired);
    assert!(done.events > 0 && done.bytes > 0);
    assert_eq!(log_length(&pool).await, log_before - done.events as i64);
    eprintln!(
        "archived {} runs, {} events: segment {} bytes ({} a run, {} an event); \
         their payload and metadata in the hot log were {} bytes",
        done.runs,
        done.events,
        done.bytes,
        done.bytes / done.runs,
        done.bytes / done.events,
        hot_bytes
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM events e JOIN archived_streams a USING (aggregate_type, aggregate_id)"
        )
        .await,
        0
    );
    // Only the workspace whose retention had passed lost runs from the hot log.
    let other: i64 =
        sqlx::query_scalar("SELECT count(*) FROM archived_runs WHERE workspace_id <> $1")
            .bind(&workspace)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(other, 0);
    // Nothing more has expired.
    assert_eq!(archive::archive(&pool, &options).await.unwrap().runs, 0);

    // The live chain verifies past the archived events on their seals, and the segment
    // links into it.
    let verified = store::audit::verify(&pool, &VerifyOptions::default(), &())
        .await
        .unwrap();
    assert!(verified.ok(), "{:?}", verified.first_bad());
    assert_eq!(verified.chains[0].archived, done.events);
    let checked = archive::verify_archives(&pool, &dir).await.unwrap();
    assert!(checked.ok(), "{:?}", checked.problems);
    assert_eq!((checked.segments, checked.events), (1, done.events));

    // The run list still shows every run; the audit log has one summary row per run.
    assert_eq!(snapshot_of(&pool).await["rm_runs"], runs_before);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM rm_audit_log WHERE action = 'RunArchived'"
        )
        .await,
        expired
    );

    // A rebuild from the shorter log keeps them.
    let live = snapshot_of(&pool).await;
    let all = projections::all();
    log_below_horizon(&pool).await;
    projections::rebuild(&pool, &all, 5, &Quiet).await.unwrap();
    assert_eq!(snapshot_of(&pool).await, live);

    // Archival's exception is for the archived streams only.
    let mut tx = pool.begin().await.unwrap();
    let archive_id: uuid::Uuid = sqlx::query_scalar("SELECT archive_id FROM event_archives")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('tenantflow.archive', $1, true)")
        .bind(archive_id.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query("DELETE FROM events WHERE aggregate_type = 'tenant'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    drop(tx);

    // A tampered segment is named, with the event changed in it.
    let segment = done.segment.unwrap();
    tamper(&segment);
    let checked = archive::verify_archives(&pool, &dir).await.unwrap();
    assert!(!checked.ok());
    let file = segment.file_name().unwrap().to_string_lossy().to_string();
    assert!(checked.problems.iter().all(|p| p.file == file));
    let details: Vec<&str> = checked.problems.iter().map(|p| p.detail.as_str()).collect();
    assert!(details.iter().any(|d| d.contains("SHA-256")), "{details:?}");
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("altered event at position")),
        "{details:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
