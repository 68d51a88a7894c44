//! `tenantflow rebuild`: rebuilds read models from the event log in one pass, logging its
//! progress with an ETA (and recording it for `rebuildStatus`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::serve::Database;

/// How often progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// Logs how far the rebuild is, at most every [`LOG_EVERY`].
struct Logged {
    began: Instant,
    total: Mutex<u64>,
    last: Mutex<Instant>,
}

impl projections::RebuildProgress for Logged {
    fn start(&self, read_models: &[&str], total: u64) {
        if let Ok(mut t) = self.total.lock() {
            *t = total;
        }
        tracing::info!(
            read_models = read_models.join(", "),
            events = total,
            "rebuilding in one pass over the log"
        );
    }

    fn advance(&self, applied: u64) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.elapsed() < LOG_EVERY {
            return;
        }
        *last = Instant::now();
        let total = self.total.lock().map(|t| *t).unwrap_or(0);
        let elapsed = self.began.elapsed();
        let eta = projections::eta(applied, total, elapsed).unwrap_or_default();
        tracing::info!(
            applied,
            total,
            "{:.0}% ({:.0} events/s, eta {} s)",
            100.0 * applied as f64 / total.max(1) as f64,
            applied as f64 / elapsed.as_secs_f64(),
            eta.as_secs()
        );
    }

    fn finish(&self, applied: u64) {
        let seconds = self.began.elapsed().as_secs_f64();
        tracing::info!(
            applied,
            "rebuilt in {seconds:.1} s ({:.0} events/s); swapped in",
            applied as f64 / seconds
        );
    }
}

/// Rebuilds the named read models (or all of them) in one pass.
pub async fn run(config: Config, names: Vec<String>, all: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        all || !names.is_empty(),
        "name a read model to rebuild, or pass --all"
    );
    let chosen = projections::choose(projections::all(), &names)?;
    let db = Database::open(&config, "tenantflow").await?;
    let progress = Logged {
        began: Instant::now(),
        total: Mutex::new(0),
        last: Mutex::new(Instant::now()),
    };
    let result = projections::rebuild_recorded(&db.pool, &chosen, BATCH, &progress).await;
    db.close().await?;
    result?;
    Ok(())
}

/// Events per batch of a rebuild: large, as each batch costs a few round trips per read
/// model whatever its size.
pub(crate) const BATCH: i64 = 5000;
