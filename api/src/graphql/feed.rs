//! Live run updates: the runs projection NOTIFYs `tenantflow_runs` after it writes a run
//! row; one listener per process fans the notices out to subscriptions.

use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The channel the runs projection notifies.
pub use projections::RUNS_CHANNEL;

/// A run row changed.
#[derive(Debug, Clone, Deserialize)]
pub struct RunNotice {
    pub run_id: uuid::Uuid,
    pub workspace: String,
    pub tenant_key: Option<String>,
}

/// Fan-out of run notices. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RunFeed(broadcast::Sender<RunNotice>);

impl RunFeed {
    /// Listens until `shutdown`, reconnecting after errors.
    pub fn listen(pool: PgPool, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let feed = Self(tx.clone());
        tokio::spawn(async move {
            loop {
                let run = async {
                    let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    l.listen(RUNS_CHANNEL).await?;
                    loop {
                        let n = l.recv().await?;
                        match serde_json::from_str::<RunNotice>(n.payload()) {
                            Ok(notice) => {
                                let _ = tx.send(notice);
                            }
                            Err(e) => tracing::warn!(error = %e, "malformed run notice"),
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = run => if let Err(e) = r {
                        tracing::warn!(error = %e, "run feed lost its connection; reconnecting");
                    },
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        });
        feed
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RunNotice> {
        self.0.subscribe()
    }
}
