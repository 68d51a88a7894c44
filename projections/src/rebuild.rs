//! Rebuilding read models from the event log (issue 17, item 4).
//!
//! One pass over the log feeds every read model being rebuilt: each batch is read (and its
//! JSON parsed) once, with the payloads any of them asks for, and handed to fillers on up to
//! [`REBUILD_CONNECTIONS`] connections and tasks of their own, each writing shadow copies of
//! its read models' tables (a schema per read model) in one transaction, so PostgreSQL and
//! this process apply the read models in parallel. Once every filler has committed the whole
//! log, the shadows take the live tables' place in one short transaction, so readers keep
//! reading the live tables until then. Only one rebuild runs at a time (an advisory lock held by the transaction
//! that reads and swaps); its progress is recorded in `rebuild_status` for operators.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use store::log::read_batch_for;
use store::{ConsumerError, Payloads, Position, StoredEvent};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;

use crate::Projection;

/// The advisory lock a rebuild holds for its whole transaction (any instance, the CLI or
/// the API). Below 2^31, so `pg_locks` shows it as `classid = 0, objid = key`.
const REBUILD_LOCK: i64 = 0x5245_4255;

/// Why a rebuild did not happen or did not finish. Nothing of it was swapped in.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Another rebuild (on this or another instance) holds the lock.
    #[error("a rebuild is already running")]
    AlreadyRunning,
    #[error("unknown read model `{name}`; known: {known}")]
    UnknownReadModel { name: String, known: String },
    /// The background task ended before it could say whether it started (it panicked).
    #[error("the rebuild stopped before it started")]
    Stopped,
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

impl From<sqlx::Error> for RebuildError {
    fn from(e: sqlx::Error) -> Self {
        Self::Consumer(e.into())
    }
}

impl RebuildError {
    /// A short message for operators: what failed and where in the log, never a payload
    /// (a decode error's own text may quote one).
    fn summary(&self) -> String {
        match self {
            Self::Consumer(ConsumerError::Database(_)) => "database error".to_owned(),
            Self::Consumer(ConsumerError::Decode { position, .. }) => format!(
                "the event at global position {} cannot be decoded",
                position.global_position
            ),
            Self::Consumer(ConsumerError::Refused { position, .. }) => format!(
                "the event at global position {} was refused",
                position.global_position
            ),
            Self::Consumer(ConsumerError::UnknownEvent { position, .. }) => format!(
                "the event at global position {} is of a type this version does not know",
                position.global_position
            ),
            other => other.to_string(),
        }
    }
}

/// Reports rebuild progress: events applied to every read model so far, of the total.
pub trait RebuildProgress: Send + Sync {
    fn start(&self, read_models: &[&str], total: u64);
    fn advance(&self, applied: u64);
    fn finish(&self, applied: u64);
}

/// Time left at the rate so far, once there is a rate.
pub fn eta(applied: u64, total: u64, elapsed: Duration) -> Option<Duration> {
    if applied == 0 || elapsed.is_zero() {
        return None;
    }
    let left = total.saturating_sub(applied) as f64;
    Some(Duration::from_secs_f64(
        left * elapsed.as_secs_f64() / applied as f64,
    ))
}

/// The read models named (each once, in the order of `available`), or all of them.
pub fn choose(
    available: Vec<Arc<dyn Projection>>,
    names: &[String],
) -> Result<Vec<Arc<dyn Projection>>, RebuildError> {
    if let Some(name) = names
        .iter()
        .find(|n| !available.iter().any(|p| p.name() == n.as_str()))
    {
        let known: Vec<_> = available.iter().map(|p| p.name().to_owned()).collect();
        return Err(RebuildError::UnknownReadModel {
            name: name.clone(),
            known: known.join(", "),
        });
    }
    if names.is_empty() {
        return Ok(available);
    }
    Ok(available
        .into_iter()
        .filter(|p| names.iter().any(|n| n == p.name()))
        .collect())
}

/// Rebuilds `projections` in one pass over the log: shadow tables filled batch by batch
/// (see [`fill_shadows`]), then swapped in by the transaction that holds the rebuild's lock.
/// Readers keep the live tables until the swap, which waits only for the queries running
/// at that moment; the live runners of these projections (on any instance) wait on their
/// checkpoint rows meanwhile and continue from where the rebuild ended. Returns the number
/// of events read (each applied to every read model that handles it).
pub async fn rebuild(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    batch_size: i64,
    progress: &dyn RebuildProgress,
) -> Result<u64, RebuildError> {
    let mut chosen: Vec<Arc<dyn Projection>> = Vec::new();
    for p in projections {
        if !chosen.iter().any(|c| c.name() == p.name()) {
            chosen.push(p.clone());
        }
    }
    let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Err(RebuildError::AlreadyRunning);
    }
    // Where each live runner was: it waits on its row until the swap.
    let mut live_reached = Vec::with_capacity(names.len());
    for name in &names {
        sqlx::query(
            "INSERT INTO consumer_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let (transaction_id, global_position): (i64, i64) = sqlx::query_as(
            "SELECT transaction_id::text::bigint, global_position FROM consumer_checkpoints \
             WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        live_reached.push(Position {
            transaction_id,
            global_position,
        });
    }
    // What the batches will read as of now (as they do: below every running transaction);
    // events committed meanwhile may add a few.
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
    )
    .fetch_one(&mut *tx)
    .await?;
    progress.start(&names, total.max(0) as u64);
    let shadows: Vec<String> = names.iter().map(|n| shadow_schema(n)).collect();
    let filled = fill_shadows(pool, &chosen, &shadows, batch_size, progress).await;
    let began = Instant::now();
    let filled = match filled {
        Ok(reached) => swap_in(&mut tx, &chosen, &shadows)
            .await
            .map(|()| reached)
            .map_err(RebuildError::from),
        Err(e) => Err(e),
    };
    let swapped = began.elapsed();
    let (position, applied) = match filled {
        Ok(reached) => reached,
        Err(e) => {
            // Nothing was swapped in; the filled shadows are dropped (or by the next
            // rebuild, which drops what a crashed one left).
            let _ = tx.rollback().await;
            drop_shadows(pool, &shadows).await;
            return Err(e);
        }
    };
    sqlx::query(
        "UPDATE consumer_checkpoints SET transaction_id = $2::text::xid8, global_position = $3, \
         events_consumed = $4, updated_at = now() WHERE name = ANY($1)",
    )
    .bind(&names)
    .bind(position.transaction_id.to_string())
    .bind(position.global_position)
    .bind(applied as i64)
    .execute(&mut *tx)
    .await?;
    let began = Instant::now();
    for (p, reached) in chosen.iter().zip(live_reached) {
        p.announce_rebuilt(&mut tx, reached, position).await?;
    }
    let announced = began.elapsed();
    tx.commit().await?;
    tracing::debug!(
        swap_seconds = swapped.as_secs_f64(),
        announce_seconds = announced.as_secs_f64(),
        "rebuilt read models swapped in"
    );
    progress.finish(applied);
    Ok(applied)
}

/// The most connections a rebuild fills shadows on, besides the one that reads the log and
/// swaps them in. Read models are spread over them by [`Projection::rebuild_weight`].
pub const REBUILD_CONNECTIONS: usize = 3;

/// A batch for the fillers, or the end of the log (commit what you filled).
#[derive(Clone)]
enum ToFill {
    Batch(Arc<Vec<StoredEvent>>),
    End,
}

/// Reads the log in batches (once, with the payloads any read model asks for) and hands
/// each batch to fillers on connections of their own, each applying it to its read
/// models' shadow tables in a transaction that commits at the end of the log. PostgreSQL
/// applies the read models in parallel, the next batch is read meanwhile, and no filler
/// commits unless the whole log was read and applied. Returns where the log ended and how
/// many events were read.
async fn fill_shadows(
    pool: &PgPool,
    chosen: &[Arc<dyn Projection>],
    shadows: &[String],
    batch_size: i64,
    progress: &dyn RebuildProgress,
) -> Result<(Position, u64), RebuildError> {
    // The swapping transaction and the reader hold a connection each; a small pool gets
    // fewer fillers rather than a rebuild that waits for connections it holds itself.
    let spare = (pool.options().get_max_connections() as usize).saturating_sub(2);
    let groups = spread(chosen, REBUILD_CONNECTIONS.min(spare).max(1));
    let mut senders = Vec::with_capacity(groups.len());
    // Aborted if the rebuild is dropped, as the fillers were while they were its futures:
    // none goes on to commit a shadow nobody will swap in.
    let mut fillers = JoinSet::new();
    // Every batch is let go of here, on a task of its own: freeing a batch's parsed
    // payloads took a tenth of the process's time, and fell on whichever filler let go of
    // it last, most often the audit log's, the slowest.
    let (done_with, mut to_free) = mpsc::unbounded_channel::<Arc<Vec<StoredEvent>>>();
    tokio::spawn(async move { while to_free.recv().await.is_some() {} });
    for group in groups {
        let (send, receive) = mpsc::channel::<ToFill>(2);
        senders.push(send);
        let group: Vec<(Arc<dyn Projection>, String)> = group
            .into_iter()
            .map(|i| (chosen[i].clone(), shadows[i].clone()))
            .collect();
        // A task each, so their work in this process (decoding events, building rows,
        // encoding parameters) runs on as many threads as there are, and the heaviest
        // read model's filler never waits for the others' turns on one.
        fillers.spawn(fill(pool.clone(), group, receive, done_with.clone()));
    }
    // The payloads any of them reads; each projection decodes only its own events.
    let wanted: Vec<Payloads> = chosen.iter().map(|p| p.payloads_of()).collect();
    let mut read = read_ahead(pool, wanted, batch_size);
    let hand_out = async move {
        let mut position = Position::default();
        let mut applied = 0u64;
        while let Some(events) = read.recv().await {
            let events = events?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            applied += events.len() as u64;
            let events = Arc::new(events);
            for send in &senders {
                if send.send(ToFill::Batch(events.clone())).await.is_err() {
                    // That filler failed; its error is the one to report.
                    return Ok(None);
                }
            }
            let _ = done_with.send(events);
            position = last;
            progress.advance(applied);
        }
        for send in &senders {
            if send.send(ToFill::End).await.is_err() {
                return Ok(None);
            }
        }
        Ok::<_, RebuildError>(Some((position, applied)))
    };
    let all_filled = async {
        let mut filled = Vec::new();
        while let Some(one) = fillers.join_next().await {
            // A filler that panicked stopped the rebuild.
            filled.push(one.unwrap_or(Err(RebuildError::Stopped)));
        }
        filled
    };
    let (read, filled) = tokio::join!(hand_out, all_filled);
    // A filler's own error first: the reader only saw that it stopped listening.
    filled.into_iter().collect::<Result<Vec<()>, _>>()?;
    read?.ok_or(RebuildError::Stopped)
}

/// Reads the log from the start in batches, on a connection and task of its own (decoding
/// a batch's JSON overlaps with applying the one before), until a batch comes back empty;
/// the empty batch is sent too. Stops when nobody listens.
fn read_ahead(
    pool: &PgPool,
    wanted: Vec<Payloads>,
    batch_size: i64,
) -> mpsc::Receiver<Result<Vec<StoredEvent>, sqlx::Error>> {
    let (send, receive) = mpsc::channel(2);
    let pool = pool.clone();
    tokio::spawn(async move {
        let read = async {
            let mut conn = pool.acquire().await?;
            let mut position = Position::default();
            loop {
                let events = read_batch_for(&mut conn, position, batch_size, &wanted).await?;
                let last = events.last().map(|e| e.position);
                if send.send(Ok(events)).await.is_err() {
                    return Ok(());
                }
                match last {
                    Some(last) => position = last,
                    None => return Ok(()),
                }
            }
        };
        if let Err(e) = read.await {
            let _ = send.send(Err(e)).await;
        }
    });
    receive
}

/// Spreads read models (by index) over at most `connections` groups, heaviest first onto
/// the lightest group so far.
fn spread(chosen: &[Arc<dyn Projection>], connections: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(chosen[i].rebuild_weight()));
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for i in order {
        if groups.len() < connections.max(1) {
            groups.push((chosen[i].rebuild_weight(), vec![i]));
        } else if let Some(lightest) = groups.iter_mut().min_by_key(|(weight, _)| *weight) {
            lightest.0 += chosen[i].rebuild_weight();
            lightest.1.push(i);
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// One filler: makes its read models' shadow tables (dropping what a crashed rebuild left),
/// applies every batch it is handed, builds the indexes it deferred and commits at the end.
/// A closed channel before the end (the reader failed) rolls everything back.
async fn fill(
    pool: PgPool,
    group: Vec<(Arc<dyn Projection>, String)>,
    mut batches: mpsc::Receiver<ToFill>,
    done_with: mpsc::UnboundedSender<Arc<Vec<StoredEvent>>>,
) -> Result<(), RebuildError> {
    // A crashed rebuild's schemas are seldom there: no notice each time they are not.
    // The shadow tables are never analysed (autovacuum cannot see them before the commit),
    // so the planner does not know they grow: it scanned a whole shadow table for each
    // batch's lookup of the rows its events already have (`run_id = ANY($1)`), 20 ms at
    // 125,000 runs' steps against 0.65 ms through the key's index, and a cost that grows
    // with the square of the log. Every lookup a filler makes is by a key it has an index
    // for; building the deferred indexes scans the table whatever this says.
    let mut tx = pool
        .begin_with(
            "BEGIN; SET LOCAL client_min_messages = warning; SET LOCAL enable_seqscan = off",
        )
        .await?;
    let mut deferred = Deferred::default();
    // Time each read model spent applying batches, for the log.
    let mut applying = vec![Duration::ZERO; group.len()];
    // Those that keep state from batch to batch fill through it.
    let mut fillers: Vec<Option<Box<dyn ShadowFiller>>> =
        group.iter().map(|(p, _)| p.shadow_filler()).collect();
    for (p, shadow) in &group {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {shadow}"))
            .execute(&mut *tx)
            .await?;
        for table in p.tables() {
            sqlx::query(&format!(
                "CREATE TABLE {shadow}.{table} (LIKE public.{table} INCLUDING ALL)"
            ))
            .execute(&mut *tx)
            .await?;
            // Archived runs' summaries (their events are no longer in the log): the runs
            // and audit log read models start from them (migration 000091).
            sqlx::query("SELECT tenantflow_seed_archived_runs($1, $2)")
                .bind(shadow)
                .bind(table)
                .execute(&mut *tx)
                .await?;
        }
        for index in p.indexes_built_after_rebuild() {
            if let Some(build) = defer_index(&mut tx, shadow, index).await? {
                deferred.0.push((*index, build));
            }
        }
    }
    loop {
        match batches.recv().await {
            Some(ToFill::Batch(events)) => {
                for (((p, shadow), spent), filler) in
                    group.iter().zip(&mut applying).zip(&mut fillers)
                {
                    let began = Instant::now();
                    write_into(&mut tx, shadow).await?;
                    match filler {
                        Some(filler) => filler.apply(&mut tx, &events, &mut deferred).await?,
                        None => p.rebuild_handle(&mut tx, &events).await?,
                    }
                    *spent += began.elapsed();
                }
                let _ = done_with.send(events);
            }
            Some(ToFill::End) => break,
            None => return Err(RebuildError::Stopped),
        }
    }
    for ((_, shadow), filler) in group.iter().zip(&mut fillers) {
        if let Some(filler) = filler {
            write_into(&mut tx, shadow).await?;
            filler.finish(&mut tx).await?;
        }
    }
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await?;
    let began = Instant::now();
    for (_, build) in deferred.0 {
        sqlx::query(&build).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    for ((p, _), spent) in group.iter().zip(applying) {
        tracing::debug!(
            read_model = p.name(),
            seconds = spent.as_secs_f64(),
            "shadow filled"
        );
    }
    tracing::debug!(
        read_models = ?group.iter().map(|(p, _)| p.name()).collect::<Vec<_>>(),
        index_seconds = began.elapsed().as_secs_f64(),
        "deferred indexes built and shadows committed"
    );
    Ok(())
}

/// Puts the read model's shadow schema first on the `search_path`: its statements name its
/// tables unqualified, so they write its shadows.
async fn write_into(tx: &mut sqlx::PgConnection, shadow: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SET LOCAL search_path = {shadow}, public"))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The indexes of a filler's shadow tables that are built once they are filled (by the
/// live index's name), with the statements that build them.
#[derive(Default)]
pub struct Deferred(Vec<(&'static str, String)>);

impl Deferred {
    /// Builds the deferred index `index` (its live name) now, for a filler that goes on to
    /// read through it; false when it was not deferred (it is there already).
    pub async fn build_now(
        &mut self,
        tx: &mut sqlx::PgConnection,
        index: &str,
    ) -> Result<bool, sqlx::Error> {
        let Some(at) = self.0.iter().position(|(name, _)| *name == index) else {
            return Ok(false);
        };
        let (_, build) = self.0.remove(at);
        sqlx::query(&build).execute(&mut *tx).await?;
        Ok(true)
    }
}

/// A read model's own filling of its shadow tables in a rebuild (see
/// [`Projection::shadow_filler`]): one per rebuild, handed every batch of the log in order,
/// in the filler's transaction with the read model's shadow schema first on the
/// `search_path`, so it may keep what it learns of the rows it wrote instead of reading
/// them back.
#[async_trait::async_trait]
pub trait ShadowFiller: Send {
    /// Applies the next batch; `deferred` holds the indexes not there yet (it may build
    /// one it needs). It may hold back writes until the next batch or [`Self::finish`].
    async fn apply(
        &mut self,
        tx: &mut sqlx::PgConnection,
        events: &Arc<Vec<StoredEvent>>,
        deferred: &mut Deferred,
    ) -> Result<(), ConsumerError>;

    /// Writes what it held back, after the log's last batch and before the deferred
    /// indexes are built and the shadows committed.
    async fn finish(&mut self, tx: &mut sqlx::PgConnection) -> Result<(), ConsumerError>;
}

/// Drops the shadow copy of the live index named `index` (a filled table's index is built
/// faster at once than row by row); returns the statement that builds it again. Nothing
/// when there is no such live index.
async fn defer_index(
    tx: &mut sqlx::PgConnection,
    shadow: &str,
    index: &str,
) -> Result<Option<String>, sqlx::Error> {
    // Live and shadow indexes match by their definition with the name and table left out
    // (as the swap matches them to rename the shadow's).
    let found: Option<(String, String)> = sqlx::query_as(
        r"SELECT s.indexname::text, s.indexdef FROM pg_indexes l JOIN pg_indexes s
             ON s.schemaname = $1 AND s.tablename = l.tablename
            AND regexp_replace(s.indexdef, ' INDEX \S+ ON \S+ ', ' INDEX ON ')
              = regexp_replace(l.indexdef, ' INDEX \S+ ON \S+ ', ' INDEX ON ')
          WHERE l.schemaname = 'public' AND l.indexname = $2",
    )
    .bind(shadow)
    .bind(index)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((name, build)) = found else {
        return Ok(None);
    };
    sqlx::query(&format!("DROP INDEX {shadow}.{name}"))
        .execute(&mut *tx)
        .await?;
    Ok(Some(build))
}

/// Swaps every filled shadow table in for its live table and drops the emptied schemas.
async fn swap_in(
    tx: &mut sqlx::PgConnection,
    chosen: &[Arc<dyn Projection>],
    shadows: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await?;
    for (p, shadow) in chosen.iter().zip(shadows) {
        for table in p.tables() {
            sqlx::query("SELECT tenantflow_swap_in_shadow($1, $2)")
                .bind(shadow)
                .bind(table)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!("DROP SCHEMA {shadow}"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Drops a failed rebuild's shadows, unless another rebuild has started meanwhile (they
/// are its own now; it dropped ours when it made them).
async fn drop_shadows(pool: &PgPool, shadows: &[String]) {
    let dropped = async {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(REBUILD_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if locked {
            for shadow in shadows {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await
    };
    if let Err(error) = dropped.await {
        tracing::warn!(%error, "cannot drop a failed rebuild's shadow tables; the next rebuild will");
    }
}

fn shadow_schema(name: &str) -> String {
    format!(
        "rebuild_{}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// Where a rebuild is, as last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildState {
    Running,
    Succeeded,
    Failed,
    /// Recorded as running, but no rebuild holds the lock: its process ended mid-way
    /// (nothing of it was swapped in).
    Interrupted,
}

/// The latest rebuild, as recorded in `rebuild_status`.
#[derive(Debug, Clone)]
pub struct RebuildStatus {
    pub state: RebuildState,
    pub read_models: Vec<String>,
    pub events_applied: i64,
    pub events_total: i64,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Short and sanitized: where in the log it failed, never a payload.
    pub error: Option<String>,
}

impl RebuildStatus {
    /// Time left while running, at the rate so far.
    pub fn eta(&self) -> Option<Duration> {
        if self.state != RebuildState::Running {
            return None;
        }
        let elapsed = (self.updated_at - self.started_at).to_std().ok()?;
        eta(
            self.events_applied.max(0) as u64,
            self.events_total.max(0) as u64,
            elapsed,
        )
    }
}

type StatusRow = (
    String,
    Vec<String>,
    i64,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// The latest rebuild, if there was one.
pub async fn rebuild_status(pool: &PgPool) -> Result<Option<RebuildStatus>, sqlx::Error> {
    let row: Option<StatusRow> = sqlx::query_as(
        "SELECT CASE WHEN state = 'running' AND updated_at < now() - make_interval(secs => $2) \
                  AND NOT EXISTS (SELECT 1 FROM pg_locks \
                  WHERE locktype = 'advisory' AND granted AND classid = 0 \
                    AND objid = $1::bigint::oid AND objsubid = 1 \
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) \
                THEN 'interrupted' ELSE state END, \
             read_models, events_applied, events_total, started_at, updated_at, finished_at, error \
         FROM rebuild_status",
    )
    .bind(REBUILD_LOCK)
    // A running rebuild records itself every second; between its commit and its last
    // record it holds no lock for a moment, which is not an interruption.
    .bind(STALE_AFTER.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| RebuildStatus {
        state: match r.0.as_str() {
            "running" => RebuildState::Running,
            "succeeded" => RebuildState::Succeeded,
            "failed" => RebuildState::Failed,
            _ => RebuildState::Interrupted,
        },
        read_models: r.1,
        events_applied: r.2,
        events_total: r.3,
        started_at: r.4,
        updated_at: r.5,
        finished_at: r.6,
        error: r.7,
    }))
}

/// How often a running rebuild records how far it is.
const RECORD_EVERY: Duration = Duration::from_secs(1);
/// A row that says `running` without a rebuild holding the lock is an interrupted rebuild
/// once it has not been recorded for this long.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// What the rebuild has told its progress so far, shared with the task that records it.
#[derive(Default)]
struct Tally {
    /// The read models and when it started: set once it holds the lock.
    begun: Mutex<Option<(Vec<String>, DateTime<Utc>)>>,
    total: AtomicU64,
    applied: AtomicU64,
    started: Notify,
    /// Asks the recording task to end (between records, never in the middle of one).
    stop: Notify,
    /// Told once the rebuild's row says it runs (taken then).
    told: Mutex<Option<oneshot::Sender<()>>>,
}

impl Tally {
    fn begun(&self) -> Option<(Vec<String>, DateTime<Utc>)> {
        self.begun.lock().ok().and_then(|b| b.clone())
    }

    fn tell(&self) {
        if let Some(told) = self.told.lock().ok().and_then(|mut t| t.take()) {
            // The caller may have stopped waiting; the rebuild goes on.
            let _ = told.send(());
        }
    }

    /// Writes the whole row: the state, and everything known so far.
    async fn record(
        &self,
        pool: &PgPool,
        state: &str,
        error: Option<String>,
    ) -> Result<(), sqlx::Error> {
        let Some((read_models, started_at)) = self.begun() else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO rebuild_status (id, state, read_models, events_applied, events_total, \
                 started_at, updated_at, finished_at, error) \
             VALUES (true, $1, $2, $3, $4, $5, now(), \
                 CASE WHEN $1 = 'running' THEN NULL ELSE now() END, $6) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, \
                 read_models = EXCLUDED.read_models, events_applied = EXCLUDED.events_applied, \
                 events_total = EXCLUDED.events_total, started_at = EXCLUDED.started_at, \
                 updated_at = EXCLUDED.updated_at, finished_at = EXCLUDED.finished_at, \
                 error = EXCLUDED.error",
        )
        .bind(state)
        .bind(read_models)
        .bind(self.applied.load(Ordering::Relaxed) as i64)
        .bind(self.total.load(Ordering::Relaxed) as i64)
        .bind(started_at)
        .bind(error)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Records the running rebuild once it starts, then every [`RECORD_EVERY`]. A failed
    /// record is logged and tried again: the rebuild does not depend on it.
    async fn keep_recording(&self, pool: &PgPool) {
        tokio::select! {
            () = self.started.notified() => {}
            () = self.stop.notified() => return,
        }
        loop {
            match self.record(pool, "running", None).await {
                Ok(()) => self.tell(),
                Err(error) => tracing::warn!(%error, "cannot record the rebuild's progress"),
            }
            tokio::select! {
                () = self.stop.notified() => return,
                () = tokio::time::sleep(RECORD_EVERY) => {}
            }
        }
    }
}

/// Passes progress on to `inner` and keeps the tally that [`rebuild_recorded`] records.
struct Recorder<'a> {
    tally: &'a Tally,
    inner: &'a dyn RebuildProgress,
}

impl RebuildProgress for Recorder<'_> {
    fn start(&self, read_models: &[&str], total: u64) {
        self.tally.total.store(total, Ordering::Relaxed);
        if let Ok(mut begun) = self.tally.begun.lock() {
            let names = read_models.iter().map(|n| (*n).to_owned()).collect();
            *begun = Some((names, Utc::now()));
        }
        self.tally.started.notify_one();
        self.inner.start(read_models, total);
    }
    fn advance(&self, applied: u64) {
        self.tally.applied.store(applied, Ordering::Relaxed);
        self.inner.advance(applied);
    }
    fn finish(&self, applied: u64) {
        self.tally.applied.store(applied, Ordering::Relaxed);
        // Events committed during the rebuild may have joined the ones counted at the start
        // (or ones counted may not yet have been readable): what it read is the total.
        self.tally.total.store(applied, Ordering::Relaxed);
        self.inner.finish(applied);
    }
}

/// [`rebuild`], recording its progress in `rebuild_status` (from a task and connections of
/// its own, so operators see it while the rebuild's transaction is open). A rebuild refused
/// because another one runs records nothing: the row is the running one's.
pub async fn rebuild_recorded(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    batch_size: i64,
    progress: &dyn RebuildProgress,
) -> Result<u64, RebuildError> {
    recorded(pool, projections, batch_size, progress, None)
        .await
        .0
}

/// [`rebuild_recorded`]; `told` is told once the rebuild holds the lock and its row says
/// so. Also returns whether it got that far.
async fn recorded(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
    batch_size: i64,
    progress: &dyn RebuildProgress,
    told: Option<oneshot::Sender<()>>,
) -> (Result<u64, RebuildError>, bool) {
    let tally = Arc::new(Tally {
        told: Mutex::new(told),
        ..Tally::default()
    });
    let recording = tokio::spawn({
        let (tally, pool) = (tally.clone(), pool.clone());
        async move { tally.keep_recording(&pool).await }
    });
    let recorder = Recorder {
        tally: &tally,
        inner: progress,
    };
    let outcome = rebuild(pool, projections, batch_size, &recorder).await;
    // Stopped between records: a `running` record still in flight could land after the
    // last one and undo it.
    tally.stop.notify_one();
    let _ = recording.await;
    let begun = tally.begun().is_some();
    if !begun || matches!(outcome, Err(RebuildError::AlreadyRunning)) {
        return (outcome, false);
    }
    let (state, error) = match &outcome {
        Ok(_) => ("succeeded", None),
        Err(e) => ("failed", Some(e.summary())),
    };
    if let Err(error) = tally.record(pool, state, error).await {
        tracing::warn!(%error, "cannot record the rebuild's end");
    }
    // A rebuild quicker than its first record is started (and done) now.
    tally.tell();
    (outcome, true)
}

/// Progress nobody follows (the API's rebuilds are followed through `rebuild_status`).
struct Unwatched;

impl RebuildProgress for Unwatched {
    fn start(&self, _read_models: &[&str], _total: u64) {}
    fn advance(&self, _applied: u64) {}
    fn finish(&self, _applied: u64) {}
}

/// Starts a recorded rebuild of `projections` in the background; returns once it holds the
/// lock, or with why it did not start ([`RebuildError::AlreadyRunning`]). Its end is in
/// `rebuild_status`, and a failure after the start is logged here, where nobody else sees
/// it.
pub async fn start_rebuild(
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    batch_size: i64,
) -> Result<(), RebuildError> {
    let (started_tx, started_rx) = oneshot::channel();
    let (refused_tx, refused_rx) = oneshot::channel();
    tokio::spawn(async move {
        let began = Instant::now();
        match recorded(
            &pool,
            &projections,
            batch_size,
            &Unwatched,
            Some(started_tx),
        )
        .await
        {
            (Ok(applied), _) => tracing::info!(
                events = applied,
                seconds = began.elapsed().as_secs_f64(),
                "read models rebuilt"
            ),
            (Err(error), false) => {
                // The caller is still waiting (for one of the two).
                let _ = refused_tx.send(error);
            }
            (Err(error), true) => tracing::error!(%error, "rebuilding read models failed"),
        }
    });
    tokio::select! {
        biased;
        Ok(()) = started_rx => Ok(()),
        Ok(error) = refused_rx => Err(error),
        else => Err(RebuildError::Stopped),
    }
}
