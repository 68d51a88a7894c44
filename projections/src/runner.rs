//! Running projections live.

use sqlx::PgConnection;
use sqlx::PgPool;
use std::sync::Arc;
use store::log::{ConsumerRunner, RunnerOptions, Wakeups};
use store::{Consumer, ConsumerError, Metrics, Position, StoredEvent};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::rebuild::ShadowFiller;

/// A read model: a consumer plus the tables it owns (truncated on rebuild). Handlers must
/// be idempotent: applying an event twice leaves the same rows.
#[async_trait::async_trait]
pub trait Projection: Consumer {
    fn tables(&self) -> &'static [&'static str];

    /// Roughly how much database time this read model takes in a rebuild, relative to the
    /// others (default 1): a rebuild spreads read models over its connections by it.
    fn rebuild_weight(&self) -> u32 {
        1
    }

    /// Indexes of its tables (by their live names) that its handler never reads through:
    /// a rebuild builds them once its shadow tables are filled, which is quicker than
    /// keeping them row by row.
    fn indexes_built_after_rebuild(&self) -> &'static [&'static str] {
        &[]
    }

    /// Applies a batch in a rebuild: to shadow tables that start with nothing but archived
    /// runs' summaries, every event of the log once, in order. A projection may leave out
    /// here what makes [`Consumer::handle`] idempotent where that costs; by default it is
    /// `handle`.
    async fn rebuild_handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        self.handle(tx, events).await
    }

    /// Its own filler for a rebuild, when it keeps state from one batch to the next (and
    /// may do without indexes its [`Consumer::handle`] reads through). `None`, the default:
    /// every batch goes to [`Projection::rebuild_handle`].
    fn shadow_filler(&self) -> Option<Box<dyn ShadowFiller>> {
        None
    }

    /// Tells readers, in the transaction that swapped the rebuilt tables in, what the
    /// rebuild brought in that the live tables had not caught up with: the events after
    /// `live_reached` (where the live runner was), up to `rebuilt_to`. Nothing by default.
    async fn announce_rebuilt(
        &self,
        _tx: &mut PgConnection,
        _live_reached: Position,
        _rebuilt_to: Position,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }
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
