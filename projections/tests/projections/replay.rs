//! Replays: applying events again changes nothing, a rebuild reproduces the live tables,
//! and a bad event stops its projection without losing its place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;
use store::log::{read_batch, ConsumerRunner, RunnerOptions};
use store::{ConsumerError, Metrics, Position, Progress};
use testkit::CATCH_UP;
use testkit::NORTHWIND;

use crate::support::*;

#[derive(Default)]
struct Counted {
    total: AtomicU64,
    finished: AtomicU64,
}

impl projections::RebuildProgress for Counted {
    fn start(&self, _read_models: &[&str], total: u64) {
        self.total.store(total, Ordering::SeqCst);
    }
    fn advance(&self, _replayed: u64) {}
    fn finish(&self, replayed: u64) {
        self.finished.store(replayed, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn applying_events_again_in_any_order_or_twice_over_leaves_identical_rows() {
    let (_db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let live = snapshot_of(&pool).await;

    let mut tx = pool.begin().await.unwrap();
    let events = read_batch(&mut tx, Position::default(), 10_000)
        .await
        .unwrap();
    assert_eq!(events.len() as i64, log_length(&pool).await);
    // Old events over up-to-date rows: nothing moves backwards, whether the whole log is
    // applied again or each event alone, newest first.
    for consumer in consumers() {
        consumer.handle(&mut tx, &events).await.unwrap();
        for event in events.iter().rev() {
            let one = std::slice::from_ref(event);
            consumer.handle(&mut tx, one).await.unwrap();
        }
    }
    assert_eq!(snapshot(&mut tx).await, live);
    // From empty tables, the same batch applied twice in one transaction.
    for p in projections::all() {
        let tables = p.tables().join(", ");
        sqlx::query(&format!("TRUNCATE {tables}"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    for consumer in consumers() {
        consumer.handle(&mut tx, &events).await.unwrap();
        consumer.handle(&mut tx, &events).await.unwrap();
    }
    assert_eq!(snapshot(&mut tx).await, live);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn rebuilding_every_read_model_reproduces_the_tables_built_live() {
    let (db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let live = snapshot_of(&pool).await;
    let events = log_length(&pool).await as u64;
    let indexes = every_index(&pool).await;

    // One pass over the log feeds them all. One event per batch puts a batch boundary
    // between every two events, including those of one transaction (a scope acquired,
    // then its run queued).
    let all = projections::all();
    log_below_horizon(&pool).await;
    for batch_size in [1, 1000] {
        let progress = Counted::default();
        let replayed = projections::rebuild(&pool, &all, batch_size, &progress)
            .await
            .unwrap();
        assert_eq!(replayed, events);
        assert_eq!(progress.total.load(Ordering::SeqCst), events);
        assert_eq!(progress.finished.load(Ordering::SeqCst), events);
        for p in &all {
            assert_eq!(
                consumed(&pool, p.name()).await as u64,
                events,
                "{}",
                p.name()
            );
        }
        assert_eq!(snapshot_of(&pool).await, live, "batches of {batch_size}");
    }
    // A subset, and each alone, the same.
    let runs_and_audit: [Arc<dyn projections::Projection>; 2] =
        [Arc::new(projections::Runs), Arc::new(projections::AuditLog)];
    log_below_horizon(&pool).await;
    projections::rebuild(&pool, &runs_and_audit, 7, &Quiet)
        .await
        .unwrap();
    for p in &all {
        projections::rebuild(&pool, std::slice::from_ref(p), 1000, &Quiet)
            .await
            .unwrap();
    }
    assert_eq!(snapshot_of(&pool).await, live, "a subset, and each alone");
    // A pool too small for a filler per group fills them all on one connection.
    let small = db.pool_of(3).await;
    projections::rebuild(&small, &all, 1000, &Quiet)
        .await
        .unwrap();
    small.close().await;
    assert_eq!(
        snapshot_of(&pool).await,
        live,
        "on a pool of three connections"
    );
    // Indexes built after the fill (the audit log's and the run list's) are back as they
    // were, under their names.
    assert_eq!(every_index(&pool).await, indexes);
    // The live runners continue where the rebuild stopped: nothing is applied again.
    for consumer in consumers() {
        let runner = ConsumerRunner::new(
            pool.clone(),
            consumer,
            RunnerOptions::default(),
            Metrics::new(),
        );
        assert_eq!(runner.step().await.unwrap(), Progress::Idle);
    }
}

#[tokio::test]
async fn an_audit_log_rebuild_past_what_its_filler_remembers_reads_its_rows_back_and_ends_equal() {
    let (_db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let live = snapshot_of(&pool).await;
    let indexes = every_index(&pool).await;
    let aggregates: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT (aggregate_type, aggregate_id)) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(aggregates > 4, "a history of {aggregates} aggregates");
    log_below_horizon(&pool).await;
    // Nothing remembered (the index is built before the second batch), a few aggregates
    // (built part way, with batches of one and of seven), and all of them.
    for (limit, batch_size) in [(0, 7), (3, 1), (3, 7), (aggregates as usize, 7)] {
        let audit: [Arc<dyn projections::Projection>; 1] =
            [Arc::new(AuditLogRemembering { limit })];
        projections::rebuild(&pool, &audit, batch_size, &Quiet)
            .await
            .unwrap();
        assert_eq!(
            snapshot_of(&pool).await,
            live,
            "remembering {limit} aggregates, batches of {batch_size}"
        );
        // The aggregates' index is there once, under its name, whether it was built part
        // way or at the end.
        assert_eq!(every_index(&pool).await, indexes, "remembering {limit}");
    }
}

/// Holds a rebuild after its first batch until the test lets it go on.
struct Paused {
    started: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl projections::RebuildProgress for Paused {
    fn start(&self, _read_models: &[&str], _total: u64) {}
    fn advance(&self, _replayed: u64) {
        if let Some(started) = self.started.lock().unwrap().take() {
            started.send(()).unwrap();
            // Blocks the rebuild's own thread until the readers are done.
            self.go.lock().unwrap().recv().unwrap();
        }
    }
    fn finish(&self, _replayed: u64) {}
}

/// The rows of `rm_tenants` a reader of workspace `acme` sees, through the API's role.
async fn acme_reads(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '3s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL ROLE tenantflow_reader")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('app.workspace', 'acme', true)")
        .execute(&mut *tx)
        .await?;
    let n = sqlx::query_scalar("SELECT count(*) FROM rm_tenants")
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(n)
}

/// Every read model table's indexes: name and definition.
async fn every_index(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' \
         AND tablename LIKE 'rm\\_%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn index_names(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1 ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn readers_are_served_during_a_rebuild_which_swaps_in_equal_tables() {
    let (db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let live = snapshot_of(&pool).await;
    let acme = acme_reads(&pool).await.unwrap();
    assert!(acme > 0);
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_tenants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        all > acme,
        "the history has another workspace's tenants too"
    );
    let indexes = index_names(&pool, "rm_tenants").await;

    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let paused = Arc::new(Paused {
        started: std::sync::Mutex::new(Some(started_tx)),
        go: std::sync::Mutex::new(go_rx),
    });
    // The rebuild runs on a thread and runtime of its own, which its paused progress may
    // block while this runtime reads.
    let (url, progress) = (db.url(), paused.clone());
    let rebuild = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let pool = PgPool::connect(&url).await.unwrap();
            projections::rebuild(
                &pool,
                &[Arc::new(projections::Tenants)],
                1,
                progress.as_ref(),
            )
            .await
        })
    });
    tokio::task::spawn_blocking(move || started.recv().unwrap())
        .await
        .unwrap();
    // Mid-rebuild: the live table answers at once (a lock would hit the 3 s timeout).
    assert_eq!(acme_reads(&pool).await.unwrap(), acme);
    go.send(()).unwrap();
    tokio::task::spawn_blocking(move || rebuild.join().unwrap())
        .await
        .unwrap()
        .unwrap();

    assert_eq!(
        snapshot_of(&pool).await,
        live,
        "the swapped-in tables equal the live ones"
    );
    // The swapped-in table keeps the live one's row-level security and index names.
    assert_eq!(acme_reads(&pool).await.unwrap(), acme);
    assert_eq!(index_names(&pool, "rm_tenants").await, indexes);
    let shadows: i64 =
        sqlx::query_scalar(r"SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild\_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shadows, 0, "the shadow schema is gone");
}

/// A rebuild of every read model (recorded, as the CLI and the API run it), one event per
/// batch, held after its first batch on a thread and runtime of its own until `go`.
fn paused_rebuild(
    url: String,
) -> (
    std::thread::JoinHandle<Result<u64, projections::RebuildError>>,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let paused = Paused {
        started: std::sync::Mutex::new(Some(started_tx)),
        go: std::sync::Mutex::new(go_rx),
    };
    let rebuild = std::thread::spawn(move || {
        // Two workers: the paused one, and one that records the progress meanwhile.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let pool = PgPool::connect(&url).await.unwrap();
            let all = projections::all();
            projections::rebuild_recorded(&pool, &all, 1, &paused).await
        })
    });
    (rebuild, started, go)
}

#[tokio::test]
async fn a_second_rebuild_is_refused_while_one_runs_and_its_progress_is_recorded() {
    let (db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let live = snapshot_of(&pool).await;
    let events = log_length(&pool).await;
    assert!(projections::rebuild_status(&pool).await.unwrap().is_none());

    let (rebuild, started, go) = paused_rebuild(db.url());
    tokio::task::spawn_blocking(move || started.recv().unwrap())
        .await
        .unwrap();
    let running = testkit::eventually("the rebuild to be recorded", CATCH_UP, || async {
        projections::rebuild_status(&pool)
            .await
            .unwrap()
            .filter(|s| s.events_applied == 1)
    })
    .await;
    assert_eq!(running.state, projections::RebuildState::Running);
    assert_eq!(running.events_total, events);
    let names: Vec<String> = projections::all()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(running.read_models, names);
    assert!(running.eta().is_some(), "{running:?}");

    // Another rebuild, of any read model and by either way in, is refused and records
    // nothing over the running one's row.
    let refused =
        projections::rebuild(&pool, &[Arc::new(projections::Tenants)], 1000, &Quiet).await;
    assert!(
        matches!(refused, Err(projections::RebuildError::AlreadyRunning)),
        "{refused:?}"
    );
    let refused = projections::start_rebuild(pool.clone(), projections::all(), 1000).await;
    assert!(
        matches!(refused, Err(projections::RebuildError::AlreadyRunning)),
        "{refused:?}"
    );
    let still = projections::rebuild_status(&pool).await.unwrap().unwrap();
    assert_eq!(still.state, projections::RebuildState::Running);
    assert_eq!(still.read_models, names);

    go.send(()).unwrap();
    let applied = tokio::task::spawn_blocking(move || rebuild.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(applied as i64, events);
    let done = projections::rebuild_status(&pool).await.unwrap().unwrap();
    assert_eq!(done.state, projections::RebuildState::Succeeded);
    assert_eq!((done.events_applied, done.events_total), (events, events));
    assert!(done.finished_at.is_some() && done.error.is_none() && done.eta().is_none());
    assert_eq!(snapshot_of(&pool).await, live);

    // Once it is done, the next one starts (in the background) and ends the same way.
    projections::start_rebuild(pool.clone(), projections::all(), 1000)
        .await
        .unwrap();
    let again = testkit::eventually("the second rebuild to end", CATCH_UP, || async {
        projections::rebuild_status(&pool)
            .await
            .unwrap()
            .filter(|s| s.state != projections::RebuildState::Running)
    })
    .await;
    assert_eq!(again.state, projections::RebuildState::Succeeded);
    assert_eq!(snapshot_of(&pool).await, live);
}

/// Appends an event straight to the log (the command bus would never write these).
async fn append_raw(
    pool: &PgPool,
    aggregate_id: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> i64 {
    let metadata = json!({
        "workspace": "acme", "actor": "mallory", "role": "owner",
        "correlation_id": "c-1", "request_id": "r-1",
    });
    sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) VALUES ('tenant', $1, 1, $2, '1.0', $3, $4) RETURNING global_position",
    )
    .bind(aggregate_id)
    .bind(event_type)
    .bind(payload)
    .bind(metadata)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Appends a tenant rename whose name is a number: the tenants read model cannot decode
/// it (the audit log records events without decoding them). Returns its position.
async fn append_undecodable_rename(pool: &PgPool) -> i64 {
    append_raw(
        pool,
        &format!("acme:{NORTHWIND}-x"),
        "TenantRenamed",
        json!({ "TenantRenamed": { "display_name": 42 } }),
    )
    .await
}

async fn checkpoint(pool: &PgPool, name: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT transaction_id::text::bigint, global_position, events_consumed \
         FROM consumer_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_event_that_cannot_be_decoded_stops_its_projection_without_advancing_its_checkpoint() {
    let (_db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let before = checkpoint(&pool, "tenants").await;
    let tenants_before = snapshot_of(&pool).await["rm_tenants"].clone();

    let bad = append_undecodable_rename(&pool).await;

    let runner = ConsumerRunner::new(
        pool.clone(),
        Arc::new(projections::Tenants),
        RunnerOptions::default(),
        Metrics::new(),
    );
    // Bounded: other tests' open transactions may hold the new event back for a moment.
    let error = testkit::eventually("the bad event to be read", CATCH_UP, || async {
        match runner.step().await {
            Err(e) => Some(e),
            Ok(progress) => {
                assert_eq!(progress, Progress::Idle);
                None
            }
        }
    })
    .await;
    match error {
        ConsumerError::Decode {
            position,
            event_type,
            ..
        } => {
            assert_eq!(position.global_position, bad);
            assert_eq!(event_type, "TenantRenamed");
        }
        other => panic!("expected a decode error, got {other}"),
    }
    assert_eq!(checkpoint(&pool, "tenants").await, before);
    assert_eq!(snapshot_of(&pool).await["rm_tenants"], tenants_before);
    // It fails the same way on every retry, and holds no other projection up.
    assert!(runner.step().await.is_err());
    assert_eq!(checkpoint(&pool, "tenants").await, before);
    catch_up(&pool, Arc::new(projections::Connections)).await;
    catch_up(&pool, Arc::new(projections::AuditLog)).await;
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm_audit_log WHERE global_position = $1")
            .bind(bad)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, 1, "the audit log records it without decoding it");
}

#[tokio::test]
async fn a_rebuild_that_fails_on_one_connection_swaps_nothing_in_and_leaves_no_shadows() {
    let (_db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let live = snapshot_of(&pool).await;
    // The tenants read model's filler fails at this event; the audit log's, on another
    // connection, has applied it (it records events without decoding them).
    let bad = append_undecodable_rename(&pool).await;
    let all = projections::all();
    log_below_horizon(&pool).await;
    let failed = projections::rebuild(&pool, &all, 3, &Quiet).await;
    match failed {
        Err(projections::RebuildError::Consumer(ConsumerError::Decode { position, .. })) => {
            assert_eq!(position.global_position, bad)
        }
        other => panic!("expected the tenants filler's decode error, got {other:?}"),
    }
    assert_eq!(snapshot_of(&pool).await, live, "nothing was swapped in");
    let shadows: i64 =
        sqlx::query_scalar(r"SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild\_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shadows, 0, "the fillers' shadows are gone");
    // The lock was let go: a rebuild of the others goes through.
    projections::rebuild(
        &pool,
        &[Arc::new(projections::Runs), Arc::new(projections::AuditLog)],
        3,
        &Quiet,
    )
    .await
    .unwrap();
}

/// A newer version's `tenants` projection, as far as this test needs one: it knows every
/// event type (it records how many it was handed).
struct NewerTenants {
    handed: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl store::Consumer for NewerTenants {
    fn name(&self) -> &str {
        "tenants"
    }
    async fn handle(
        &self,
        _tx: &mut sqlx::PgConnection,
        events: &[store::StoredEvent],
    ) -> Result<(), ConsumerError> {
        self.handed
            .fetch_add(events.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::test]
async fn an_event_type_only_a_newer_version_knows_stops_the_projection_until_one_applies_it() {
    let (_db, bus, _) = projected_history().await;
    let pool = bus.pool().clone();
    let before = checkpoint(&pool, "tenants").await;
    let tenants_before = snapshot_of(&pool).await["rm_tenants"].clone();

    let merged = append_raw(
        &pool,
        &format!("acme:{NORTHWIND}-y"),
        "TenantMerged",
        json!({ "TenantMerged": { "into": "elsewhere" } }),
    )
    .await;

    // This version stops before it: no skip, checkpoint kept, metric and readiness say so.
    let metrics = Metrics::new();
    let runner = ConsumerRunner::new(
        pool.clone(),
        Arc::new(projections::Tenants),
        RunnerOptions::default(),
        metrics.clone(),
    );
    let error = testkit::eventually("the unknown event to be read", CATCH_UP, || async {
        runner.step().await.err()
    })
    .await;
    match &error {
        ConsumerError::UnknownEvent {
            position,
            aggregate_type,
            event_type,
        } => {
            assert_eq!(position.global_position, merged);
            assert_eq!(
                (aggregate_type.as_str(), event_type.as_str()),
                ("tenant", "TenantMerged")
            );
        }
        other => panic!("expected an unknown event type, got {other}"),
    }
    assert_eq!(checkpoint(&pool, "tenants").await, before);
    assert_eq!(snapshot_of(&pool).await["rm_tenants"], tenants_before);
    assert!(
        runner.step().await.is_err(),
        "it stays stopped on every retry"
    );

    // The service's runner records why (readiness reads it) and clears it once it moves.
    metrics.block("tenants", error.to_string());
    assert_eq!(metrics.blocked()[0].0, "tenants");
    assert!(metrics
        .render()
        .contains("tenantflow_consumer_blocked{consumer=\"tenants\"} 1"));

    // A newer instance's projection of the same name takes over from the same checkpoint
    // and is handed the event.
    let newer = Arc::new(NewerTenants {
        handed: std::sync::atomic::AtomicUsize::new(0),
    });
    catch_up(&pool, newer.clone()).await;
    assert!(newer.handed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(consumed(&pool, "tenants").await, log_length(&pool).await);
    metrics.unblock("tenants");
    assert!(metrics.blocked().is_empty());
}

/// Records, for every event it is handed, its type and whether its payload came along.
struct PayloadProbe {
    seen: std::sync::Mutex<Vec<(String, bool)>>,
}

#[async_trait::async_trait]
impl store::Consumer for PayloadProbe {
    fn name(&self) -> &str {
        "payload_probe"
    }
    fn payloads_of(&self) -> store::Payloads {
        store::Payloads::OfAggregates(&["Tenant"])
    }
    async fn handle(
        &self,
        _tx: &mut sqlx::PgConnection,
        events: &[store::StoredEvent],
    ) -> Result<(), ConsumerError> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(
            events
                .iter()
                .map(|e| (e.aggregate_type.clone(), !e.payload.is_null())),
        );
        Ok(())
    }
}

impl projections::Projection for PayloadProbe {
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }
}

#[tokio::test]
async fn a_live_projection_reads_only_the_payloads_it_asks_for() {
    let db = testkit::TestDb::new().await;
    let pool = db.pool().await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('Tenant', 't', 1, 'TenantRegistered', '1', '{\"TenantRegistered\": {}}', '{}'), \
                ('OperationRun', 'r', 1, 'RunQueued', '1', '{\"RunQueued\": {}}', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let probe = Arc::new(PayloadProbe {
        seen: Default::default(),
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let wakeups = store::Wakeups::listen(pool.clone(), shutdown.clone());
    projections::spawn_all(
        &pool,
        vec![probe.clone() as Arc<dyn projections::Projection>],
        &wakeups,
        &Metrics::new(),
        &RunnerOptions::default(),
        &shutdown,
        &mut tasks,
    );
    let both = || async { probe.seen.lock().unwrap().len() >= 2 };
    testkit::eventually("the probe to see both events", CATCH_UP, both).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("Tenant".to_owned(), true),
            ("OperationRun".to_owned(), false)
        ]
    );
}

#[tokio::test]
async fn a_rebuild_left_running_without_its_lock_reads_as_interrupted_once_it_stops_recording() {
    let db = testkit::TestDb::new().await;
    let pool = db.pool().await;
    // What a process killed mid-rebuild leaves: its row says running, nobody holds the lock.
    let left = |seconds_ago: f64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO rebuild_status (id, state, read_models, events_applied, events_total, \
                     started_at, updated_at) \
                 VALUES (true, 'running', ARRAY['runs'], 10, 100, now() - make_interval(secs => $1), \
                     now() - make_interval(secs => $1)) \
                 ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at",
            )
            .bind(seconds_ago)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // Just recorded: a rebuild between its commit and its last record looks like this.
    left(0.0).await;
    let fresh = projections::rebuild_status(&pool).await.unwrap().unwrap();
    assert_eq!(fresh.state, projections::RebuildState::Running);
    // Silent for a minute: its process is gone.
    left(60.0).await;
    let stale = projections::rebuild_status(&pool).await.unwrap().unwrap();
    assert_eq!(stale.state, projections::RebuildState::Interrupted);
}
