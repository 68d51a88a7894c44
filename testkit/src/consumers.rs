//! Consumers of the log as tests see them: advanced by the test itself, or running in the
//! background until they have read every event.

use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use store::{Consumer, ConsumerError, ConsumerRunner, Metrics, Progress, RunnerOptions};

use crate::wait::eventually;

/// How long a consumer may take to read what the log holds. Other tests' open
/// transactions on the shared cluster may hold the readable log back for a moment.
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// A consumer the test advances itself, batch by batch (no background task).
pub struct SteppedConsumer {
    runner: ConsumerRunner,
    name: String,
    pool: PgPool,
}

impl SteppedConsumer {
    pub fn new(pool: &PgPool, consumer: Arc<dyn Consumer>) -> Self {
        let name = consumer.name().to_owned();
        let runner = ConsumerRunner::new(
            pool.clone(),
            consumer,
            RunnerOptions::default(),
            Metrics::new(),
        );
        Self {
            runner,
            name,
            pool: pool.clone(),
        }
    }

    /// Applies at most one batch.
    pub async fn step(&self) -> Result<Progress, ConsumerError> {
        self.runner.step().await
    }

    /// Applies batches until none is readable right now. That is not necessarily every
    /// event: see [`catch_up`](Self::catch_up).
    pub async fn drain(&self) {
        while self.step().await.expect("a batch applies") != Progress::Idle {}
    }

    /// Applies batches until the consumer has read every event in the log (bounded).
    pub async fn catch_up(&self) {
        let what = format!("{} to read every event", self.name);
        eventually(&what, CATCH_UP, || async {
            self.drain().await;
            has_read_everything(&self.pool, &self.name).await
        })
        .await
    }
}

/// Waits (bounded) until the consumer `name`, running elsewhere (a runtime, a server),
/// has read every event in the log.
pub async fn caught_up(pool: &PgPool, name: &str) {
    let what = format!("{name} to read every event");
    eventually(&what, CATCH_UP, || has_read_everything(pool, name)).await
}

/// Whether the consumer `name` has read as many events as the log holds.
pub async fn has_read_everything(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar(
        "SELECT COALESCE((SELECT events_consumed FROM consumer_checkpoints WHERE name = $1), 0) \
                >= (SELECT count(*) FROM events)",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("read a consumer's checkpoint")
}

/// Waits (at most 30 s) until every event in the log is below the oldest running
/// transaction, which is where a rebuild stops reading. Transaction ids are the whole
/// cluster's, so another test's open transaction in another database (a rebuild's fillers
/// hold theirs for the whole rebuild) can keep this database's latest events above it for a
/// while; once below, they stay below (newer transactions get newer ids).
pub async fn log_below_horizon(pool: &PgPool) {
    eventually(
        "the log's latest events below the oldest running transaction",
        CATCH_UP,
        || async {
            let above: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events \
                 WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot()))",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            !above
        },
    )
    .await;
}
