//! How much of the log a run costs (issue 13, event economy): events and bytes per
//! unchanged and per changed resync, and the fixture of a log written by an earlier
//! version that the projections' tests rebuild from.

use domain::run::RunOutcome;
use graph::sim::Fault;
use graph::Endpoint;
use sqlx::PgPool;
use testkit::{owner, OneTenant};

/// The most events an unchanged resync may append.
const UNCHANGED_BUDGET: i64 = 3;
/// The most events a resync that found changed policies may append.
const CHANGED_BUDGET: i64 = 5;

/// What the log holds: events, and bytes of payload and metadata as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct LogSize {
    events: i64,
    bytes: i64,
}

impl std::ops::Sub for LogSize {
    type Output = LogSize;
    fn sub(self, before: LogSize) -> LogSize {
        LogSize {
            events: self.events - before.events,
            bytes: self.bytes - before.bytes,
        }
    }
}

async fn log_size(pool: &PgPool) -> LogSize {
    let (events, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(octet_length(payload::text) + octet_length(metadata::text)), 0)::bigint FROM events",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    LogSize { events, bytes }
}

/// A resync of the world's tenant, and what it appended to the log.
async fn measured_resync(w: &OneTenant) -> (RunOutcome, LogSize, Vec<String>) {
    let pool = w.stepped.bus.pool();
    let before = log_size(pool).await;
    let last: i64 = sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    let run = w
        .stepped
        .run(&owner(), &w.tenant, workflows::resync::RUN_TYPE)
        .await;
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE global_position > $1 ORDER BY global_position",
    )
    .bind(last)
    .fetch_all(pool)
    .await
    .unwrap();
    (run.outcome, log_size(pool).await - before, types)
}

/// Edits one of the tenant's policies in the simulated portal.
fn edit_a_policy(w: &OneTenant) {
    let mut p = w.sim.policies(w.entra).unwrap().remove(0);
    p["displayName"] = serde_json::json!(format!("{} (edited)", p["displayName"]));
    w.sim.upsert_policy(w.entra, p).unwrap();
}

#[tokio::test]
// The figures it measured are printed for docs/SCALING.md (`--nocapture`).
#[allow(clippy::print_stderr)]
async fn an_unchanged_resync_writes_at_most_three_events_and_a_changed_one_at_most_five() {
    let w = OneTenant::new(3).await;
    let (outcome, first, first_types) = measured_resync(&w).await;
    assert_eq!(outcome, RunOutcome::Succeeded);
    let (outcome, unchanged, unchanged_types) = measured_resync(&w).await;
    assert_eq!(outcome, RunOutcome::Succeeded);
    edit_a_policy(&w);
    let (outcome, changed, changed_types) = measured_resync(&w).await;
    assert_eq!(outcome, RunOutcome::Succeeded);
    // The figures docs/SCALING.md quotes.
    eprintln!("first resync: {first:?} {first_types:?}");
    eprintln!("unchanged resync: {unchanged:?} {unchanged_types:?}");
    eprintln!("changed resync: {changed:?} {changed_types:?}");
    assert!(
        unchanged.events <= UNCHANGED_BUDGET,
        "an unchanged resync wrote {unchanged_types:?}"
    );
    assert!(
        changed.events <= CHANGED_BUDGET,
        "a changed resync wrote {changed_types:?}"
    );
    assert!(
        first.events <= CHANGED_BUDGET,
        "a first resync wrote {first_types:?}"
    );
}

/// Writes the log of a few runs of every kind, as this version writes them, to the
/// projections' fixtures (`projections/tests/fixtures/log_v1.ndjson`): the rebuild test
/// there checks that a later version reads such a log into the same read models. Run by
/// hand, only to make the fixture: `cargo test -p tenantflow-workflows --test workflows
/// write_the_log_fixture -- --ignored` (with `TENANTFLOW_FIXTURE_OUT=<file>`, to that file
/// instead).
#[tokio::test]
#[ignore = "writes a fixture; run by hand"]
async fn write_the_log_fixture() {
    let w = OneTenant::new(3).await;
    let by = owner();
    let run = |run_type: &'static str| w.stepped.run(&by, &w.tenant, run_type);
    // A first resync, an unchanged one, a changed one with its alert, an import.
    run(workflows::resync::RUN_TYPE).await;
    run(workflows::resync::RUN_TYPE).await;
    edit_a_policy(&w);
    run(workflows::resync::RUN_TYPE).await;
    run(workflows::resync::IMPORT_RUN_TYPE).await;
    // A throttled snapshot retried, then a partial success, then a failure.
    w.sim.inject(
        Fault::Throttled {
            retry_after_secs: Some(5),
        }
        .on(Endpoint::ListConditionalAccessPolicies)
        .times(1),
    );
    run(workflows::resync::RUN_TYPE).await;
    w.sim
        .inject(Fault::Forbidden.on(Endpoint::ListSubscribedSkus).times(1));
    run(workflows::resync::RUN_TYPE).await;
    w.sim
        .inject(Fault::MissingValue.on(Endpoint::ListConditionalAccessPolicies));
    run(workflows::resync::RUN_TYPE).await;
    // A run cancelled while queued.
    let queued = w
        .stepped
        .queue(&owner(), &w.tenant, workflows::resync::RUN_TYPE)
        .await;
    app::cancel_run(&w.stepped.bus, &owner(), queued)
        .await
        .unwrap();

    let rows: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('tx', dense_rank() OVER (ORDER BY transaction_id), \
             'global_position', global_position, 'aggregate_type', aggregate_type, \
             'aggregate_id', aggregate_id, 'sequence', sequence, 'event_type', event_type, \
             'event_version', event_version, 'payload', payload, 'metadata', metadata, \
             'recorded_at', recorded_at) \
         FROM events ORDER BY transaction_id, global_position",
    )
    .fetch_all(w.stepped.bus.pool())
    .await
    .unwrap();
    let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    // Elsewhere to compare what this version writes with the fixture (docs/SCALING.md).
    let path = std::env::var("TENANTFLOW_FIXTURE_OUT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../projections/tests/fixtures/log_v1.ndjson"
        )
        .to_owned()
    });
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn a_running_runs_steps_are_announced_live_though_they_are_off_the_log() {
    let w = OneTenant::new(4).await;
    let pool = w.db.pool().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen(store::checkpoints::RUNS_CHANNEL)
        .await
        .unwrap();
    // Throttled once: the failed attempt and its retry time are written while the run is
    // still going (a run that goes straight through writes its steps with its end).
    w.sim.inject(
        Fault::Throttled {
            retry_after_secs: Some(5),
        }
        .on(Endpoint::ListConditionalAccessPolicies)
        .times(1),
    );
    let run_id = w
        .stepped
        .queue(&owner(), &w.tenant, workflows::resync::RUN_TYPE)
        .await;
    let run = w.stepped.drive(run_id).await;
    assert_eq!(run.outcome, RunOutcome::Succeeded);

    // No projection runs here: every notice is the engine's, one per checkpoint written
    // while the run was going. Notices arrive in commit order: one sent now ends the list.
    sqlx::query("SELECT pg_notify($1, 'end')")
        .bind(store::checkpoints::RUNS_CHANNEL)
        .execute(&pool)
        .await
        .unwrap();
    let mut notices = Vec::new();
    loop {
        let n = listener.recv().await.unwrap();
        if n.payload() == "end" {
            break;
        }
        notices.push(serde_json::from_str::<serde_json::Value>(n.payload()).unwrap());
    }
    assert!(!notices.is_empty(), "the throttled attempt was announced");
    for notice in &notices {
        assert_eq!(notice["run_id"], run_id.to_string());
        assert_eq!(notice["workspace"], w.tenant.workspace.as_str());
        assert_eq!(notice["tenant_key"], w.tenant.to_string());
    }
}
