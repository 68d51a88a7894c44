//! The log's visibility horizon. Consumers read only events of transactions older than
//! every transaction still running (that is what makes the global order gap-free), so one
//! transaction left open anywhere in the cluster stalls every read model, the task feed
//! and the sealer. This watch finds the oldest such transaction and says who holds it.

use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// The oldest running transaction that holds the horizon back.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub pid: i32,
    pub user: Option<String>,
    pub application: Option<String>,
    pub state: Option<String>,
    /// How long its transaction has been open.
    pub age: Duration,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backend pid {} (user {}, application {:?}, {}) has held a transaction open for {} s; events committed since are not visible to consumers until it ends",
            self.pid,
            self.user.as_deref().unwrap_or("?"),
            self.application.as_deref().unwrap_or(""),
            self.state.as_deref().unwrap_or("?"),
            self.age.as_secs()
        )
    }
}

/// The oldest transaction with a transaction id (one that wrote, or asked for its id), other
/// than the caller's, open for at least `threshold`. Only such transactions hold back
/// `pg_snapshot_xmin`, which the log reader waits for.
pub async fn oldest_holder(
    pool: &PgPool,
    threshold: Duration,
) -> Result<Option<Holder>, sqlx::Error> {
    Ok(holders(pool, threshold).await?.into_iter().next())
}

/// pid, user, application, state, age in seconds.
type HolderRow = (i32, Option<String>, Option<String>, Option<String>, f64);

/// The (at most ten) oldest such transactions, oldest first.
pub async fn holders(pool: &PgPool, threshold: Duration) -> Result<Vec<Holder>, sqlx::Error> {
    let rows: Vec<HolderRow> = sqlx::query_as(
        "SELECT pid, usename::text, application_name, state, \
                extract(epoch FROM (clock_timestamp() - xact_start))::float8 \
         FROM pg_stat_activity \
         WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND xact_start IS NOT NULL \
           AND clock_timestamp() - xact_start >= make_interval(secs => $1) \
         ORDER BY xact_start LIMIT 10",
    )
    .bind(threshold.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(pid, user, application, state, age)| Holder {
            pid,
            user,
            application,
            state,
            age: Duration::from_secs_f64(age.max(0.0)),
        })
        .collect())
}

/// Looks every `every` for a transaction older than `threshold`; while there is one, the
/// `tenantflow_log_horizon_held_seconds` gauge shows its age and readiness carries a
/// warning naming it (logged once when it starts and once when it ends).
pub async fn watch(
    pool: PgPool,
    metrics: Metrics,
    threshold: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut held = false;
    loop {
        match oldest_holder(&pool, threshold).await {
            Ok(Some(holder)) => {
                metrics.log_horizon_held.set(holder.age.as_secs() as i64);
                if !held {
                    tracing::warn!(
                        pid = holder.pid,
                        age_s = holder.age.as_secs(),
                        "the log's visibility horizon is held back: {holder}"
                    );
                }
                metrics.set_horizon_warning(Some(holder.to_string()));
                held = true;
            }
            Ok(None) => {
                metrics.log_horizon_held.set(0);
                metrics.set_horizon_warning(None);
                if held {
                    tracing::info!("the log's visibility horizon moves again");
                }
                held = false;
            }
            Err(error) => tracing::debug!(%error, "cannot look at the log's horizon"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
