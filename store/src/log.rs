//! The gap-free global event log and checkpointed catch-up consumers.
//!
//! Global positions are handed out at insert time, so they are not in commit order: a
//! transaction that inserted position 10 may commit after one that inserted 11. A reader
//! that simply followed positions would skip 10. We read in `(transaction_id,
//! global_position)` order and only events whose transaction id is below the oldest
//! transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`): every such
//! transaction has finished, and every transaction that can still commit has a larger id,
//! so nothing can appear behind the checkpoint later.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ConsumerLabels, Metrics};

/// The channel appends are announced on (by the appending process, see the bus).
pub const EVENTS_CHANNEL: &str = "tenantflow_events";

/// The channel the task feed notifies when it made work due (new tasks, a cancellation):
/// the engines listen here, not on every append, so an append that gives them nothing to
/// do does not wake every idle engine of every instance into an empty claim.
pub const TASKS_CHANNEL: &str = "tenantflow_tasks";

/// The channel that tells mail workers that mail work was queued: announced after the
/// commit that queued it ([`CommandBus::announce_mail_work`](crate::CommandBus::announce_mail_work)).
pub const MAIL_CHANNEL: &str = "tenantflow_mail";

/// A place in the global order.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Position {
    pub transaction_id: i64,
    pub global_position: i64,
}

/// An event as stored, with its place in the global order.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The workspace the event belongs to (from its metadata).
    pub fn workspace(&self) -> Option<&str> {
        self.meta("workspace")
    }

    /// A metadata field.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(|v| v.as_str())
    }

    /// Decodes the payload as an aggregate's event type (from the parsed payload in place:
    /// a copy of it first was a tenth of a rebuild's time in the client).
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, ConsumerError> {
        E::deserialize(&self.payload).map_err(|source| ConsumerError::Decode {
            position: self.position,
            event_type: self.event_type.clone(),
            source,
        })
    }
}

/// Why a consumer could not apply a batch. The batch is rolled back and retried.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event {event_type} at {position:?} cannot be decoded: {source}")]
    Decode {
        position: Position,
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("event at {position:?} was refused: {message}")]
    Refused { position: Position, message: String },
    /// An event type of a known aggregate that this version does not know: written by a
    /// newer version. The consumer stops before it (its checkpoint stays) instead of
    /// skipping it, so a newer instance applies it and no read model misses it.
    #[error("event {aggregate_type}/{event_type} at {position:?} is of a type this version does not know (written by a newer version?); waiting for an instance that knows it")]
    UnknownEvent {
        position: Position,
        aggregate_type: String,
        event_type: String,
    },
}

pub(crate) type EventRow = (
    i64,
    i64,
    String,
    String,
    i64,
    String,
    String,
    serde_json::Value,
    serde_json::Value,
    DateTime<Utc>,
);

pub(crate) fn from_row(r: EventRow) -> StoredEvent {
    StoredEvent {
        position: Position {
            transaction_id: r.0,
            global_position: r.1,
        },
        aggregate_type: r.2,
        aggregate_id: r.3,
        sequence: r.4,
        event_type: r.5,
        event_version: r.6,
        payload: r.7,
        metadata: r.8,
        recorded_at: r.9,
    }
}

/// Reads up to `limit` events after `after` that no running transaction can precede.
pub async fn read_batch(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read_batch_of(conn, after, limit, Payloads::All).await
}

/// Which events of a batch carry their payload and metadata; the others come with a null
/// payload and empty metadata (every position is still read, so a checkpoint moves past
/// them). For consumers that care about a few kinds of events: large payloads they would
/// skip anyway are neither sent nor decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payloads {
    All,
    /// Events of these aggregate types.
    OfAggregates(&'static [&'static str]),
    /// Events of these event types.
    OfEvents(&'static [&'static str]),
}

/// Like [`read_batch`], with payloads only for the events `payloads` names.
pub async fn read_batch_of(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
    payloads: Payloads,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read_batch_for(conn, after, limit, &[payloads]).await
}

/// Like [`read_batch`], with payloads for the events any of `wanted` names: one read of the
/// log for several consumers (a rebuild of several read models).
pub async fn read_batch_for(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
    wanted: &[Payloads],
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read_with(
        conn,
        "SELECT transaction_id::text::bigint, global_position, aggregate_type, aggregate_id, \
             sequence, event_type, event_version, \
             CASE WHEN $6 OR aggregate_type = ANY($4) OR event_type = ANY($5) \
                  THEN payload ELSE 'null'::jsonb END, \
             CASE WHEN $6 OR aggregate_type = ANY($4) OR event_type = ANY($5) \
                  THEN metadata ELSE '{}'::jsonb END, \
             recorded_at FROM events \
         WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
           AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY events.transaction_id, events.global_position LIMIT $3",
        // Planned at every call (once per batch): a plan cached while `events` was small
        // would keep scanning it whole after it has grown (until the next ANALYZE). ORDER BY
        // names the table's columns: a bare `transaction_id` is the bigint output column
        // above, which no index has, so PostgreSQL sorted everything after the checkpoint
        // for every batch (90 ms a batch at 100,000 events, growing with the log). A
        // rebuild's batches are large enough for the planning not to matter; live consumers
        // read through [`read_live_batch`].
        false,
        after,
        limit,
        wanted,
    )
    .await
}

/// Like [`read_batch_of`], for the small batches of a live consumer: the same statement in
/// a function (`tenantflow_read_log`, migration 20261203000010) planned once per
/// connection, always as the ordered index scan, instead of at every call. Its rows pass
/// through a tuplestore, so large batches (a rebuild's) read with [`read_batch_for`].
pub async fn read_live_batch(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
    payloads: Payloads,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read_with(
        conn,
        "SELECT * FROM tenantflow_read_log($1, $2, $3, $4, $5, $6)",
        true,
        after,
        limit,
        &[payloads],
    )
    .await
}

/// Runs one of the log's reads: `statement` takes the position after which to read ($1
/// and $2), the limit ($3) and the payload filter: aggregate types ($4), event types ($5),
/// every payload ($6).
async fn read_with(
    conn: &mut PgConnection,
    statement: &'static str,
    persistent: bool,
    after: Position,
    limit: i64,
    wanted: &[Payloads],
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let all = wanted.contains(&Payloads::All);
    let mut aggregates: Vec<&str> = Vec::new();
    let mut event_types: Vec<&str> = Vec::new();
    for payloads in wanted {
        match payloads {
            Payloads::All => {}
            Payloads::OfAggregates(types) => aggregates.extend_from_slice(types),
            Payloads::OfEvents(types) => event_types.extend_from_slice(types),
        }
    }
    let rows: Vec<EventRow> = sqlx::query_as(statement)
        .persistent(persistent)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .bind(aggregates)
        .bind(event_types)
        .bind(all)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// A named catch-up consumer of the global log (a projection, the workflow task feed, the
/// audit sealer). `handle` runs inside the transaction that also advances the checkpoint,
/// so a batch's effects and the checkpoint commit together; it must be idempotent anyway.
#[async_trait::async_trait]
pub trait Consumer: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The events whose payload and metadata this consumer reads; the others reach
    /// `handle` with a null payload and empty metadata. Default: all of them.
    fn payloads_of(&self) -> Payloads {
        Payloads::All
    }
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError>;
}

/// Wakes consumers when events are committed (LISTEN/NOTIFY), or engines when work came
/// due. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Wakeups(watch::Receiver<u64>);

impl Wakeups {
    /// Listens on [`EVENTS_CHANNEL`] until `shutdown`; reconnects after errors.
    pub fn listen(pool: PgPool, shutdown: CancellationToken) -> Self {
        Self::listen_on(pool, EVENTS_CHANNEL, shutdown)
    }

    /// Listens on `channel` until `shutdown`; reconnects after errors (and wakes once
    /// then, for what was notified while it was not listening).
    pub fn listen_on(pool: PgPool, channel: &'static str, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let listener = async {
                    let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    l.listen(channel).await?;
                    // Anything committed while we were not listening is picked up now.
                    tx.send_modify(|v| *v += 1);
                    loop {
                        l.recv().await?;
                        tx.send_modify(|v| *v += 1);
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "event listener lost its connection; reconnecting");
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Self(rx)
    }

    /// Marks everything so far as seen.
    pub fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    /// Waits for a notification newer than the last [`mark_seen`](Self::mark_seen), or
    /// `timeout`, whichever comes first.
    pub async fn wait(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.0.changed()).await;
    }
}

/// How a consumer runner paces itself.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub batch_size: i64,
    /// Polling fallback when no notification arrives.
    pub poll_interval: Duration,
    /// Longest pause between retries of a failing batch.
    pub max_backoff: Duration,
    /// How long to let events gather before reading a batch that would not be full (after
    /// a notification, or after a partial batch). Under load this turns a transaction per
    /// commit into one per few dozen events; it adds at most this much to a read model's
    /// delay.
    pub coalesce: Duration,
    /// How often a runner reading full batches (catching up) counts the events still ahead
    /// of it for the lag metric. Between counts the metric goes down by what each batch
    /// read. Counting after every batch cost more than the batch: up to 100,000 index
    /// entries for each 500 events read.
    pub lag_every: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            coalesce: Duration::from_millis(10),
            lag_every: Duration::from_secs(1),
        }
    }
}

/// What one step of a consumer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Applied this many events.
    Consumed(usize),
    /// Caught up.
    Idle,
    /// Another instance is advancing this consumer right now.
    Busy,
}

/// Drives one consumer: batches from its checkpoint, one transaction per batch.
pub struct ConsumerRunner {
    pool: PgPool,
    consumer: Arc<dyn Consumer>,
    options: RunnerOptions,
    metrics: Metrics,
    /// Whether this runner has made sure its checkpoint row exists (rows are never
    /// deleted), so later batches skip that insert: one round trip less a batch.
    checkpoint_exists: AtomicBool,
    /// When the events ahead were last counted (see [`RunnerOptions::lag_every`]).
    lag_counted: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl ConsumerRunner {
    pub fn new(
        pool: PgPool,
        consumer: Arc<dyn Consumer>,
        options: RunnerOptions,
        metrics: Metrics,
    ) -> Self {
        Self {
            pool,
            consumer,
            options,
            metrics,
            checkpoint_exists: AtomicBool::new(false),
            lag_counted: std::sync::Mutex::new(None),
        }
    }

    fn labels(&self) -> ConsumerLabels {
        ConsumerLabels {
            consumer: self.consumer.name().to_owned(),
        }
    }

    /// Applies at most one batch.
    pub async fn step(&self) -> Result<Progress, ConsumerError> {
        let name = self.consumer.name();
        if !self.checkpoint_exists.load(Ordering::Relaxed) {
            // Committed on its own, so it stands whatever the batch below does.
            sqlx::query(
                "INSERT INTO consumer_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .execute(&self.pool)
            .await?;
            self.checkpoint_exists.store(true, Ordering::Relaxed);
        }
        let mut tx = self.pool.begin().await?;
        // The row lock makes this instance the only one advancing the consumer; others skip.
        let checkpoint: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id::text::bigint, global_position FROM consumer_checkpoints \
             WHERE name = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((transaction_id, global_position)) = checkpoint else {
            return Ok(Progress::Busy);
        };
        let after = Position {
            transaction_id,
            global_position,
        };
        let payloads = self.consumer.payloads_of();
        let events = read_live_batch(&mut tx, after, self.options.batch_size, payloads).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            tx.rollback().await?;
            self.metrics
                .consumer_lag
                .get_or_create(&self.labels())
                .set(0);
            return Ok(Progress::Idle);
        };
        self.consumer.handle(&mut tx, &events).await?;
        sqlx::query(
            "UPDATE consumer_checkpoints SET transaction_id = $2::text::xid8, global_position = $3, \
             events_consumed = events_consumed + $4, updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(last.transaction_id.to_string())
        .bind(last.global_position)
        .bind(events.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.metrics
            .consumer_events
            .get_or_create(&self.labels())
            .inc_by(events.len() as u64);
        self.record_lag(last, events.len()).await;
        Ok(Progress::Consumed(events.len()))
    }

    /// Runs until `shutdown`: applies batches while there are any, then waits for a
    /// notification (or the poll interval). A failing batch is logged with its position
    /// and retried with exponential backoff; other consumers are not affected.
    pub async fn run(self, mut wakeups: Wakeups, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let name = self.consumer.name().to_owned();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            wakeups.mark_seen();
            let pause = match self.step().await {
                Ok(Progress::Consumed(n)) => {
                    backoff = Duration::from_millis(100);
                    self.metrics.unblock(&name);
                    if (n as i64) < self.options.batch_size {
                        self.gather(&shutdown).await;
                    }
                    continue;
                }
                Ok(Progress::Idle) | Ok(Progress::Busy) => None,
                Err(error @ ConsumerError::UnknownEvent { .. }) => {
                    // Not a failure of this instance: it waits (retrying, with backoff)
                    // for a newer one to apply the event, and says so.
                    self.metrics.block(&name, error.to_string());
                    tracing::warn!(consumer = %name, %error, retry_in = ?backoff, "consumer stopped before an unknown event type");
                    let b = backoff;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    Some(b)
                }
                Err(error) => {
                    self.metrics
                        .consumer_failures
                        .get_or_create(&self.labels())
                        .inc();
                    tracing::error!(consumer = %name, %error, retry_in = ?backoff, "consumer batch failed");
                    let b = backoff;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    Some(b)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async {
                    match pause {
                        Some(b) => tokio::time::sleep(b).await,
                        None => wakeups.wait(self.options.poll_interval).await,
                    }
                } => {}
            }
            self.gather(&shutdown).await;
        }
    }

    /// Sets the lag metric after a batch of `read` events ending at `last`. A partial batch
    /// read everything readable: no lag. After a full batch the events ahead are counted at
    /// most every [`RunnerOptions::lag_every`]; in between, the last count goes down by what
    /// was read (appends since are seen at the next count).
    async fn record_lag(&self, last: Position, read: usize) {
        let labels = self.labels();
        let lag = if (read as i64) < self.options.batch_size {
            0
        } else {
            let now = tokio::time::Instant::now();
            let due = self
                .lag_counted
                .lock()
                .expect("lag clock poisoned")
                .is_none_or(|at| now.duration_since(at) >= self.options.lag_every);
            if due {
                let lag = lag_after(&self.pool, last).await.unwrap_or(0);
                *self.lag_counted.lock().expect("lag clock poisoned") = Some(now);
                lag
            } else {
                let before = self.metrics.consumer_lag.get_or_create(&labels).get();
                (before - read as i64).max(0)
            }
        };
        self.metrics.consumer_lag.get_or_create(&labels).set(lag);
    }

    /// Lets events gather for [`RunnerOptions::coalesce`] (or until shutdown).
    async fn gather(&self, shutdown: &CancellationToken) {
        if self.options.coalesce.is_zero() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.options.coalesce) => {}
        }
    }
}

/// Committed events after `position` (bounded count, for the lag metric). Ordered so that
/// PostgreSQL walks the global-order index from `position`: unordered, it often scanned the
/// table from its start up to the 100,000th match instead (931 of the 2000 batches of a
/// consumer catching up on a million events in `bench verify`).
async fn lag_after(pool: &PgPool, position: Position) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
         ORDER BY events.transaction_id, events.global_position LIMIT 100000) t",
    )
    .bind(position.transaction_id.to_string())
    .bind(position.global_position)
    .fetch_one(pool)
    .await
}
