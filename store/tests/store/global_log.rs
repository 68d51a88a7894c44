//! The gap-free global log under concurrent writers whose transactions commit out of
//! order: a consumer running at the same time must see every committed event exactly once,
//! in order, and nothing from a rolled-back transaction.

use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::log::{ConsumerRunner, RunnerOptions, Wakeups};
use store::{Consumer, ConsumerError, Metrics, Position, StoredEvent};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(Position, String, i64)>>,
}

#[async_trait::async_trait]
impl Consumer for Recorder {
    fn name(&self) -> &str {
        "stress-recorder"
    }
    async fn handle(
        &self,
        _tx: &mut sqlx::PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(
            events
                .iter()
                .map(|e| (e.position, e.aggregate_id.clone(), e.sequence)),
        );
        Ok(())
    }
}

const WRITERS: usize = 6;
const TRANSACTIONS_PER_WRITER: usize = 60;

/// One writer: transactions of 1–3 events on its own aggregates, some held open for a
/// random short time (so later transactions commit first), some rolled back.
async fn writer(pool: sqlx::PgPool, id: usize) -> Vec<(String, i64)> {
    let mut committed = Vec::new();
    let mut next_seq: HashMap<String, i64> = HashMap::new();
    for t in 0..TRANSACTIONS_PER_WRITER {
        let (events, hold_ms, rollback, agg) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_range(1..=3),
                if rng.gen_bool(0.3) {
                    rng.gen_range(1..40)
                } else {
                    0
                },
                rng.gen_bool(0.1),
                format!("w{id}-a{}", t % 5),
            )
        };
        let mut tx = pool.begin().await.unwrap();
        let start = *next_seq.get(&agg).unwrap_or(&0);
        let mut rows = Vec::new();
        for i in 1..=events {
            let seq = start + i;
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 VALUES ('stress', $1, $2, 'Tick', '1.0', '{}'::jsonb, '{\"workspace\":\"w\"}'::jsonb)",
            )
            .bind(&agg)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .unwrap();
            rows.push((agg.clone(), seq));
        }
        if hold_ms > 0 {
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        if rollback {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            next_seq.insert(agg.clone(), start + events);
            committed.extend(rows);
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_consumer_sees_every_committed_event_exactly_once_in_order() {
    let db = TestDb::new().await;
    let pool = db.pool_of(WRITERS as u32 + 6).await;
    let shutdown = CancellationToken::new();
    let recorder = Arc::new(Recorder::default());
    let runner = ConsumerRunner::new(
        pool.clone(),
        recorder.clone(),
        RunnerOptions {
            // Small batches: many checkpoints while writers are still busy.
            batch_size: 7,
            poll_interval: Duration::from_millis(20),
            ..RunnerOptions::default()
        },
        Metrics::new(),
    );
    let consumer = tokio::spawn(runner.run(
        Wakeups::listen(pool.clone(), shutdown.clone()),
        shutdown.clone(),
    ));

    let writers: Vec<_> = (0..WRITERS)
        .map(|i| tokio::spawn(writer(pool.clone(), i)))
        .collect();
    let mut expected = BTreeSet::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    assert!(
        expected.len() > WRITERS * TRANSACTIONS_PER_WRITER,
        "the writers committed events"
    );

    // Bounded wait for the consumer to catch up with everything committed; if it does not,
    // the assertions below say what it missed.
    let everything = || async { recorder.seen.lock().unwrap().len() >= expected.len() };
    let _ = testkit::within(Duration::from_secs(60), everything).await;
    shutdown.cancel();
    consumer.await.unwrap();

    let seen = recorder.seen.lock().unwrap().clone();
    let seen_set: BTreeSet<(String, i64)> = seen.iter().map(|(_, a, s)| (a.clone(), *s)).collect();
    assert_eq!(seen_set.len(), seen.len(), "no event was delivered twice");
    let missing: Vec<_> = expected.difference(&seen_set).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} committed events never reached the consumer, e.g. {missing:?}",
        expected.len() - seen_set.len()
    );
    assert_eq!(seen_set, expected, "nothing uncommitted was delivered");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "delivered in global order"
    );
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, agg, seq) in &seen {
        let prev = last.insert(agg, *seq).unwrap_or(0);
        assert!(*seq > prev, "{agg}: sequence {seq} after {prev}");
    }

    let (consumed,): (i64,) = sqlx::query_as(
        "SELECT events_consumed FROM consumer_checkpoints WHERE name = 'stress-recorder'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        consumed as usize,
        expected.len(),
        "the checkpoint counted every event once"
    );
}

#[tokio::test]
async fn a_second_instance_of_a_consumer_waits_while_the_first_holds_it() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let recorder = Arc::new(Recorder::default());
    let runner = ConsumerRunner::new(
        pool.clone(),
        recorder.clone(),
        RunnerOptions::default(),
        Metrics::new(),
    );
    sqlx::query("INSERT INTO consumer_checkpoints (name) VALUES ('stress-recorder')")
        .execute(&pool)
        .await
        .unwrap();
    // Another instance holds the checkpoint row.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM consumer_checkpoints WHERE name = 'stress-recorder' FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(runner.step().await.unwrap(), store::Progress::Busy);
    other.rollback().await.unwrap();
    assert_eq!(runner.step().await.unwrap(), store::Progress::Idle);
}

/// Appends `n` events to one stream of its own in one transaction, and waits until a
/// consumer can read them.
async fn append_ticks(pool: &sqlx::PgPool, stream: &str, n: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'stress', $1, s, 'Tick', '1.0', '{}'::jsonb, '{\"workspace\":\"w\"}'::jsonb \
         FROM generate_series(1, $2) s",
    )
    .bind(stream)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    // Readable: a consumer reads only below the cluster's oldest running transaction.
    testkit::log_below_horizon(pool).await;
}

/// A runner catching up counts the events still ahead after its first full batch and then
/// at most every `lag_every`; in between, the lag metric goes down by what each batch read.
/// A partial batch means caught up: no lag.
#[tokio::test]
async fn a_catching_up_consumer_counts_its_lag_at_most_every_lag_every_and_estimates_between() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    append_ticks(&pool, "lagging", 50).await;
    let lag_of = |metrics: &Metrics| {
        let labels = store::metrics::ConsumerLabels {
            consumer: "stress-recorder".to_owned(),
        };
        metrics.consumer_lag.get_or_create(&labels).get()
    };
    let runner_with = |lag_every: Duration, metrics: &Metrics| {
        ConsumerRunner::new(
            pool.clone(),
            Arc::new(Recorder::default()),
            RunnerOptions {
                batch_size: 10,
                lag_every,
                ..RunnerOptions::default()
            },
            metrics.clone(),
        )
    };

    // Never counted again within the test: counted once, then estimated.
    let metrics = Metrics::new();
    let runner = runner_with(Duration::from_secs(3600), &metrics);
    runner.step().await.unwrap();
    assert_eq!(lag_of(&metrics), 40, "counted after the first full batch");
    append_ticks(&pool, "later", 5).await;
    runner.step().await.unwrap();
    assert_eq!(
        lag_of(&metrics),
        30,
        "estimated: the count less the batch (the later appends not yet seen)"
    );

    // Counted after every full batch: the later appends are seen. A new checkpoint row is
    // not involved: the second runner continues from the first one's checkpoint.
    let metrics = Metrics::new();
    let runner = runner_with(Duration::ZERO, &metrics);
    runner.step().await.unwrap();
    assert_eq!(lag_of(&metrics), 25, "35 ahead less this batch, counted");
    append_ticks(&pool, "latest", 3).await;
    runner.step().await.unwrap();
    assert_eq!(
        lag_of(&metrics),
        18,
        "counted again, the latest appends included"
    );
    runner.step().await.unwrap();
    assert_eq!(
        runner.step().await.unwrap(),
        store::Progress::Consumed(8),
        "the last, partial batch"
    );
    assert_eq!(lag_of(&metrics), 0, "caught up");
}
