//! The partitioned log (issue 13, item 2): appends cross partition boundaries, the reader
//! reads across them in the global order, and a stream's sequence stays unique across
//! partitions.

use crate::counter::{Counter, CounterCommand};
use domain::Role;
use std::sync::Arc;
use store::log::{read_batch, read_batch_of, read_live_batch, Payloads};
use store::{AppendError, BusError, CommandBus, Metrics, Position};
use testkit::TestDb;

fn meta() -> store::Metadata {
    testkit::meta("acme", Role::Operator)
}

async fn partitions_holding_events(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT tableoid) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn appends_fill_several_partitions_and_the_reader_reads_them_in_order() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    store::partitions::resize(bus.pool(), 10).await.unwrap();
    for i in 0..35 {
        store::partitions::ensure(bus.pool(), 0).await.unwrap();
        bus.execute::<Counter>(&format!("c{}", i % 4), CounterCommand::Add(1), &meta())
            .await
            .unwrap();
    }
    assert!(partitions_holding_events(bus.pool()).await >= 4);
    // Read in small batches, as a consumer does; other tests' open transactions on the
    // cluster can hold the reader's horizon back for a moment.
    let pool = bus.pool().clone();
    let read = testkit::eventually("every event read", testkit::CATCH_UP, || async {
        let mut conn = pool.acquire().await.unwrap();
        let mut after = Position::default();
        let mut read = Vec::new();
        loop {
            let batch = read_batch(&mut conn, after, 7).await.unwrap();
            let Some(last) = batch.last() else { break };
            after = last.position;
            read.extend(batch);
        }
        (read.len() == 35).then_some(read)
    })
    .await;
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    for stream in 0..4 {
        let sequences: Vec<i64> = read
            .iter()
            .filter(|e| e.aggregate_id == format!("c{stream}"))
            .map(|e| e.sequence)
            .collect();
        assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    }
    assert_eq!(bus.load::<Counter>("c0").await.unwrap().aggregate.value, 9);
}

/// Reads the log live after `after`, four events a batch, until a read comes back empty.
async fn read_live_to_end(
    conn: &mut sqlx::PgConnection,
    mut after: Position,
    payloads: Payloads,
) -> Vec<store::StoredEvent> {
    let mut read = Vec::new();
    loop {
        let batch = read_live_batch(conn, after, 4, payloads).await.unwrap();
        let Some(last) = batch.last() else {
            return read;
        };
        after = last.position;
        read.extend(batch);
    }
}

/// The live consumers' read keeps its plan on the connection. Partitions made after that
/// plan must still be read, in the same order and with the same payload filter as the
/// direct read.
#[tokio::test]
async fn the_live_read_planned_before_new_partitions_reads_them_as_the_direct_read_does() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    store::partitions::resize(bus.pool(), 10).await.unwrap();
    // One connection throughout, so every read after the first uses its cached plan.
    let mut conn = bus.pool().acquire().await.unwrap();
    let (mut after, mut live) = (Position::default(), Vec::new());
    let only_counters = Payloads::OfAggregates(&["counter"]);
    for i in 0..35 {
        store::partitions::ensure(bus.pool(), 0).await.unwrap();
        bus.execute::<Counter>(&format!("c{}", i % 4), CounterCommand::Add(1), &meta())
            .await
            .unwrap();
        let batch = read_live_to_end(&mut conn, after, only_counters).await;
        if let Some(last) = batch.last() {
            after = last.position;
        }
        live.extend(batch);
    }
    assert!(partitions_holding_events(bus.pool()).await >= 4);
    // Other tests' open transactions can hold the reader's horizon back for a moment.
    let pool = bus.pool().clone();
    let read = live.len();
    let rest = testkit::eventually("every event read live", testkit::CATCH_UP, || async {
        let mut conn = pool.acquire().await.unwrap();
        let rest = read_live_to_end(&mut conn, after, only_counters).await;
        (read + rest.len() == 35).then_some(rest)
    })
    .await;
    live.extend(rest);
    let direct = read_batch(&mut conn, Position::default(), 100)
        .await
        .unwrap();
    assert_eq!(direct.len(), 35);
    let key = |e: &store::StoredEvent| {
        (
            e.position,
            e.aggregate_id.clone(),
            e.sequence,
            e.payload.clone(),
        )
    };
    assert_eq!(
        live.iter().map(key).collect::<Vec<_>>(),
        direct.iter().map(key).collect::<Vec<_>>()
    );
    // A filter that names nothing read here: positions without payloads or metadata.
    let bare = read_live_batch(
        &mut conn,
        Position::default(),
        100,
        Payloads::OfEvents(&["Other"]),
    )
    .await
    .unwrap();
    let bare_direct = read_batch_of(
        &mut conn,
        Position::default(),
        100,
        Payloads::OfEvents(&["Other"]),
    )
    .await
    .unwrap();
    assert_eq!(bare.len(), 35);
    assert!(bare
        .iter()
        .all(|e| e.payload.is_null() && e.metadata == serde_json::json!({})));
    assert_eq!(
        bare.iter().map(key).collect::<Vec<_>>(),
        bare_direct.iter().map(key).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn two_appends_of_one_sequence_in_different_partitions_have_one_winner() {
    let db = TestDb::new().await;
    let bus = Arc::new(db.bus().await);
    store::partitions::resize(bus.pool(), 5).await.unwrap();
    // The first append of stream x holds sequence 1 in the first partition, uncommitted.
    let mut first = bus.begin().await.unwrap();
    first
        .execute::<Counter>("x", CounterCommand::Add(1), &meta())
        .await
        .unwrap();
    // Others commit meanwhile, so the next position is in the next partition.
    for i in 0..5 {
        bus.execute::<Counter>(&format!("filler{i}"), CounterCommand::Add(1), &meta())
            .await
            .unwrap();
    }
    let next: i64 = sqlx::query_scalar(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('events', 'global_position')) + 1",
    )
    .fetch_one(bus.pool())
    .await
    .unwrap();
    let (first_partition, next_partition): (String, String) = sqlx::query_as(
        "SELECT (SELECT name FROM event_partitions WHERE 1 >= from_position AND 1 < to_position), \
                (SELECT name FROM event_partitions WHERE $1 >= from_position AND $1 < to_position)",
    )
    .bind(next)
    .fetch_one(bus.pool())
    .await
    .unwrap();
    assert_ne!(first_partition, next_partition);
    // The second append of sequence 1 waits for the first and loses when it commits.
    let second = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut uow = bus.begin().await.unwrap();
            let result = uow
                .execute::<Counter>("x", CounterCommand::Add(1), &meta())
                .await;
            if result.is_ok() {
                uow.commit().await.unwrap();
            }
            result
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    first.commit().await.unwrap();
    let result = second.await.unwrap();
    assert!(
        matches!(result, Err(BusError::Conflict { .. })),
        "{result:?}"
    );
    let sequences: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = 'x'")
            .fetch_all(bus.pool())
            .await
            .unwrap();
    assert_eq!(sequences, vec![1]);
}

#[tokio::test]
async fn an_append_beyond_the_last_partition_is_refused_with_a_named_error_and_writes_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let last: i64 = sqlx::query_scalar("SELECT max(to_position) FROM event_partitions")
        .fetch_one(&pool)
        .await
        .unwrap();
    let refused = sqlx::query(
        "INSERT INTO events (global_position, aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) OVERRIDING SYSTEM VALUE \
         VALUES ($1, 'counter', 'far', 1, 'Added', '1.0', '{}', '{}')",
    )
    .bind(last + 10)
    .execute(&pool)
    .await
    .unwrap_err();
    let error = AppendError::of_insert(refused);
    assert!(matches!(error, AppendError::NoPartition(_)), "{error}");
    assert!(error.to_string().contains("no partition"));
    assert_eq!(testkit::count_events(&pool, "Added").await, 0);
}

#[tokio::test]
async fn a_partition_size_that_is_not_positive_is_refused_and_changes_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let before = store::partitions::list(&pool).await.unwrap();
    let error = store::partitions::resize(&pool, 0).await.unwrap_err();
    assert!(matches!(
        error,
        store::partitions::PartitionError::BadSize(0)
    ));
    assert_eq!(store::partitions::list(&pool).await.unwrap(), before);
}

#[tokio::test]
async fn ordinary_updates_and_deletes_are_still_refused_in_every_partition() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    store::partitions::resize(bus.pool(), 3).await.unwrap();
    for i in 0..7 {
        store::partitions::ensure(bus.pool(), 0).await.unwrap();
        bus.execute::<Counter>(&format!("c{i}"), CounterCommand::Add(1), &meta())
            .await
            .unwrap();
    }
    assert!(partitions_holding_events(bus.pool()).await >= 3);
    for sql in ["DELETE FROM events", "UPDATE events SET payload = '{}'"] {
        let refused = sqlx::query(sql).execute(bus.pool()).await.unwrap_err();
        assert!(refused.to_string().contains("append-only"), "{refused}");
    }
    assert_eq!(testkit::count_events(bus.pool(), "Added").await, 7);
}

#[tokio::test]
async fn the_migration_moves_an_existing_log_into_the_first_partition_and_keeps_its_keys() {
    let db = TestDb::unmigrated().await;
    let pool = db.pool().await;
    let before_partitioning = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            store::MIGRATOR
                .iter()
                .filter(|m| m.version < 20261202000090)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before_partitioning.run(&pool).await.unwrap();
    // A log as the previous version wrote it: three streams of ten events.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'counter', 'c' || (i % 3), i / 3 + 1, 'Added', '1.0', \
             jsonb_build_object('Added', jsonb_build_object('by', 1)), '{\"workspace\": \"acme\"}' \
         FROM generate_series(0, 29) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let log = "SELECT global_position, aggregate_id, sequence, transaction_id::text FROM events \
               ORDER BY transaction_id, global_position";
    let old: Vec<(i64, String, i64, String)> = sqlx::query_as(log).fetch_all(&pool).await.unwrap();

    store::migrate(&pool).await.unwrap();

    let moved: Vec<(i64, String, i64, String)> =
        sqlx::query_as(log).fetch_all(&pool).await.unwrap();
    assert_eq!(moved, old);
    let holding: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM events")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(holding, vec!["events_moved".to_owned()]);
    // Every index of the old table serves the partitioned one (none is left behind as the
    // old table's own, which new partitions would lack).
    let own_indexes: Vec<String> = sqlx::query_scalar(
        "SELECT i.indexrelid::regclass::text FROM pg_index i \
         WHERE i.indrelid = 'events_moved'::regclass \
           AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(own_indexes, Vec::<String>::new());
    // The moved streams' sequences are still taken; new events continue after the old log,
    // in the partitions made ahead.
    let bus = CommandBus::new(pool.clone(), domain::Services::system(), Metrics::new());
    let done = bus
        .execute::<Counter>("c0", CounterCommand::Add(1), &meta())
        .await
        .unwrap();
    assert_eq!((done.version, done.aggregate.value), (11, 11));
    let (position, partition): (i64, String) = sqlx::query_as(
        "SELECT global_position, tableoid::regclass::text FROM events \
         WHERE aggregate_id = 'c0' AND sequence = 11",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        position > 30 && partition != "events_moved",
        "{position} {partition}"
    );
    let again = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('counter', 'c1', 5, 'Added', '1.0', '{}', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(matches!(
        AppendError::of_insert(again),
        AppendError::Conflict
    ));
}

/// By default each new partition is as large as every position before it (and at least the
/// configured size), so the number of partitions grows with the logarithm of the log; a
/// fixed size, as `resize` sets, makes one partition per `size` events.
#[tokio::test]
async fn growing_partitions_double_with_the_log_and_fixed_ones_do_not() {
    let db = TestDb::new().await;
    let bus = db.bus().await;
    let pool = bus.pool();
    assert_eq!(
        store::partitions::rule(pool).await.unwrap(),
        (5_000_000, true),
        "the default rule"
    );
    store::partitions::grow(pool, 10).await.unwrap();
    for i in 0..100 {
        store::partitions::ensure(pool, 0).await.unwrap();
        bus.execute::<Counter>(&format!("c{}", i % 7), CounterCommand::Add(1), &meta())
            .await
            .unwrap();
    }
    let parts = store::partitions::list(pool).await.unwrap();
    let sizes: Vec<i64> = parts
        .iter()
        .map(|p| p.to_position - p.from_position)
        .collect();
    // From position 1: 10, 10, 20, 40, 80, ... (each the positions before it).
    let parts: Vec<_> = parts.iter().filter(|p| p.from_position >= 1).collect();
    assert_eq!(parts[0].from_position, 1, "{parts:?}");
    for p in &parts {
        assert_eq!(
            p.to_position - p.from_position,
            (p.from_position - 1).max(10),
            "{parts:?}"
        );
    }
    assert!(
        partitions_holding_events(pool).await <= 5,
        "100 events in at most 5 partitions: {sizes:?}"
    );

    // Fixed: the empty ones ahead are recut at 10 each, and stay so.
    let handed_out = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence('events', 'global_position'))",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let at_resize = handed_out().await;
    store::partitions::resize(pool, 10).await.unwrap();
    for i in 0..150 {
        store::partitions::ensure(pool, 0).await.unwrap();
        bus.execute::<Counter>(&format!("d{i}"), CounterCommand::Add(1), &meta())
            .await
            .unwrap();
    }
    let fixed: Vec<i64> = store::partitions::list(pool)
        .await
        .unwrap()
        .iter()
        .filter(|p| p.from_position > at_resize)
        .map(|p| p.to_position - p.from_position)
        .collect();
    assert!(fixed.len() >= 4, "{fixed:?}");
    assert!(fixed.iter().all(|&s| s == 10), "{fixed:?}");
}
