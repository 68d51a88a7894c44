//! Running projections live and rebuilding them from the event log.

use sqlx::PgPool;
use std::sync::Arc;
use store::log::{read_batch_of, ConsumerRunner, RunnerOptions, Wakeups};
use store::{Consumer, ConsumerError, Metrics, Position};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A read model: a consumer plus the tables it owns (truncated on rebuild). Handlers must
/// be idempotent: applying an event twice leaves the same rows.
pub trait Projection: Consumer {
    fn tables(&self) -> &'static [&'static str];
}

/// Starts one runner per projection. A failing projection retries with backoff without
/// holding up the others.
pub fn spawn_all(
    pool: &PgPool,
    projections: Vec<Arc<dyn Projection>>,
    wakeups: &Wakeups,
    metrics: &Metrics,
    options: &RunnerOptions,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    for p in projections {
        // The projection is its own consumer (upcast): its payload filter and everything
        // else it says about itself reach the runner unchanged.
        let consumer: Arc<dyn Consumer> = p;
        let runner = ConsumerRunner::new(pool.clone(), consumer, options.clone(), metrics.clone());
        tasks.spawn(runner.run(wakeups.clone(), shutdown.clone()));
    }
}

/// Reports rebuild progress: events replayed so far, and the total to replay.
pub trait RebuildProgress: Send + Sync {
    fn start(&self, name: &str, total: u64);
    fn advance(&self, replayed: u64);
    fn finish(&self, replayed: u64);
}

/// Replays a projection from the start of the log into shadow copies of its tables (in a
/// schema of their own), then swaps them in for the live tables, all in one transaction.
/// Readers keep reading the live tables until the swap, which only waits for the queries
/// running at that moment; the live runner of this projection (on any instance) waits on
/// the checkpoint row meanwhile, and continues from where the rebuild ended. Returns the
/// number of events replayed.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    batch_size: i64,
    progress: &dyn RebuildProgress,
) -> Result<u64, ConsumerError> {
    let name = projection.name();
    let shadow = format!(
        "rebuild_{}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO consumer_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT 1 FROM consumer_checkpoints WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    progress.start(name, total.max(0) as u64);
    // A rebuild cut short (a crash) left its schema behind; nothing else uses it.
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {shadow}"))
        .execute(&mut *tx)
        .await?;
    for table in projection.tables() {
        sqlx::query(&format!(
            "CREATE TABLE {shadow}.{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    // The projection's statements name its tables unqualified: they now write the shadows.
    sqlx::query(&format!("SET LOCAL search_path = {shadow}, public"))
        .execute(&mut *tx)
        .await?;
    let mut position = Position::default();
    let mut replayed = 0u64;
    loop {
        // Only the payloads the projection reads, as in live catch-up.
        let events = read_batch_of(&mut tx, position, batch_size, projection.payloads_of()).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        projection.handle(&mut tx, &events).await?;
        replayed += events.len() as u64;
        position = last;
        progress.advance(replayed);
    }
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await?;
    for table in projection.tables() {
        sqlx::query("SELECT tenantflow_swap_in_shadow($1, $2)")
            .bind(&shadow)
            .bind(table)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!("DROP SCHEMA {shadow}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE consumer_checkpoints SET transaction_id = $2::text::xid8, global_position = $3, \
         events_consumed = $4, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(position.transaction_id.to_string())
    .bind(position.global_position)
    .bind(replayed as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    progress.finish(replayed);
    Ok(replayed)
}
