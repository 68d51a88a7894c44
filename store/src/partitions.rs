//! The partitioned event log (issue 13, item 2): `events` is partitioned by ranges of
//! global positions (migration 000090). Partitions are created ahead of the appends that
//! fill them: at every start (after the migrations), every few minutes while serving, and
//! before a large append (a bench's bulk insert). An append beyond the last partition
//! fails with [`AppendError::NoPartition`](crate::AppendError::NoPartition): there is no
//! default partition, whose rows would have to move when their range is created.

use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a serving instance checks that partitions are ready ahead.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(300);

/// Why partitions could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("a partition size must be a positive number of events, not {0}")]
    BadSize(i64),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A partition of the log: the positions `[from_position, to_position)`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Partition {
    pub name: String,
    pub from_position: i64,
    pub to_position: i64,
}

/// Makes partitions cover every position handed out so far, `room` more, and the
/// configured number of partitions ahead. Returns how many it created.
pub async fn ensure(pool: &PgPool, room: i64) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT tenantflow_ensure_event_partitions($1)")
        .bind(room.max(0))
        .fetch_one(pool)
        .await
}

/// Makes every partition from now on `size` positions (events), the same for all (no
/// growth, see [`grow`]), and cuts the empty partitions ahead again at that size.
/// Partitions that hold events keep theirs. Takes a short exclusive lock on `events` when
/// it drops an empty partition ahead.
pub async fn resize(pool: &PgPool, size: i64) -> Result<i32, PartitionError> {
    set_rule(pool, size, false).await
}

/// Makes each partition from now on as large as every position before it, and at least
/// `min_size` (the default rule, with 5,000,000): the number of partitions grows with the
/// logarithm of the log, where every partition costs each statement that reads by stream
/// or in the global order (docs/SCALING.md). Cuts the empty partitions ahead again.
pub async fn grow(pool: &PgPool, min_size: i64) -> Result<i32, PartitionError> {
    set_rule(pool, min_size, true).await
}

/// [`grow`] when `grows`, else [`resize`]: sets the rule that [`rule`] reads back.
pub async fn set_rule(pool: &PgPool, size: i64, grows: bool) -> Result<i32, PartitionError> {
    if size <= 0 {
        return Err(PartitionError::BadSize(size));
    }
    Ok(
        sqlx::query_scalar("SELECT tenantflow_ensure_event_partitions(0, $1, $2)")
            .bind(size)
            .bind(grows)
            .fetch_one(pool)
            .await?,
    )
}

/// Whether new partitions grow with the log ([`grow`]) and their (least) size.
pub async fn rule(pool: &PgPool) -> Result<(i64, bool), sqlx::Error> {
    sqlx::query_as("SELECT partition_size, grows FROM event_partitioning")
        .fetch_one(pool)
        .await
}

/// The partitions, in the order of their ranges.
pub async fn list(pool: &PgPool) -> Result<Vec<Partition>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, from_position, to_position FROM event_partitions ORDER BY from_position",
    )
    .fetch_all(pool)
    .await
}

/// Keeps partitions ready ahead until `shutdown`, checking every [`MAINTAIN_EVERY`], and
/// counts them into `tenantflow_event_partitions`. A failed check is logged and tried again
/// at the next.
pub fn maintain(
    pool: PgPool,
    metrics: crate::Metrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match ensure(&pool, 0).await {
                Ok(0) => {}
                Ok(created) => tracing::info!(created, "event log partitions created ahead"),
                Err(error) => {
                    tracing::warn!(%error, "event log partitions could not be created ahead")
                }
            }
            match count(&pool).await {
                Ok(n) => {
                    metrics.event_partitions.set(n);
                }
                Err(error) => tracing::warn!(%error, "event log partitions could not be counted"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
            }
        }
    })
}

/// How many partitions the log has, empty ones ahead included.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM event_partitions")
        .fetch_one(pool)
        .await
}
