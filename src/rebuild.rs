//! `tenantflow rebuild`: replays read models from the event log with a progress bar.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;

use crate::config::Config;
use crate::serve::Database;

struct Bar(ProgressBar);

impl projections::RebuildProgress for Bar {
    fn start(&self, name: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(name.to_owned());
    }
    fn advance(&self, replayed: u64) {
        self.0.set_position(replayed);
    }
    fn finish(&self, replayed: u64) {
        self.0.set_position(replayed);
    }
}

/// Rebuilds the named read models (or all of them).
pub async fn run(config: Config, names: Vec<String>, all: bool) -> anyhow::Result<()> {
    let available = projections::all();
    let chosen: Vec<Arc<dyn projections::Projection>> = if all {
        available
    } else {
        anyhow::ensure!(
            !names.is_empty(),
            "name a read model to rebuild, or pass --all"
        );
        let mut chosen = Vec::new();
        for n in &names {
            let p = available
                .iter()
                .find(|p| p.name() == n)
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<_> = available.iter().map(|p| p.name().to_owned()).collect();
                    anyhow::anyhow!("unknown read model `{n}`; known: {}", known.join(", "))
                })?;
            chosen.push(p);
        }
        chosen
    };
    let db = Database::open(&config, "tenantflow").await?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = Bar(bar.clone());
    let mut result = Ok(());
    for p in &chosen {
        match projections::rebuild(&db.pool, p.as_ref(), 1000, &progress).await {
            Ok(n) => tracing::info!(
                read_model = p.name(),
                events = n,
                "rebuilt: replayed {n} events"
            ),
            Err(e) => {
                result = Err(anyhow::anyhow!("rebuilding {} failed: {e}", p.name()));
                break;
            }
        }
    }
    bar.finish_and_clear();
    db.close().await?;
    result
}
