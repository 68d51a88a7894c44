//! `tenantflow archive`: writes expired closed run histories to compressed segments in an
//! archive directory, verifies them, then removes their events from the hot log (issue 13,
//! item 3; `store::archive`). `--dry-run` says what would be archived and changes nothing.

use anyhow::Context;
use std::path::PathBuf;
use store::archive::{ArchiveOptions, ArchiveOutcome};

use crate::config::Config;
use crate::serve::Database;

/// Runs per segment: a segment is written, read back and checked in memory.
const RUNS_PER_SEGMENT: i64 = 10_000;

/// What `tenantflow archive` was asked to do.
#[derive(Debug)]
pub struct ArchiveRequest {
    pub dir: PathBuf,
    pub dry_run: bool,
    /// `(workspace, days)`: set a workspace's retention first.
    pub retention: Option<(String, i64)>,
}

pub async fn run(config: Config, request: ArchiveRequest) -> anyhow::Result<()> {
    let db = Database::open(&config, "tenantflow").await?;
    let result = archive(&db, &request).await;
    db.close().await?;
    let totals = result?;
    let verb = if request.dry_run {
        "would archive"
    } else {
        "archived"
    };
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{verb} {} runs ({} events) in {} segments, {} bytes, in {}",
            totals.runs,
            totals.events,
            totals.segments,
            totals.bytes,
            request.dir.display()
        );
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    events: u64,
    segments: u64,
    bytes: u64,
}

async fn archive(db: &Database, request: &ArchiveRequest) -> anyhow::Result<Totals> {
    if let Some((workspace, days)) = &request.retention {
        store::archive::set_retention(&db.pool, workspace, *days)
            .await
            .context("cannot set the retention")?;
    }
    let options = ArchiveOptions {
        dir: request.dir.clone(),
        dry_run: request.dry_run,
        now: chrono::Utc::now(),
        max_runs: RUNS_PER_SEGMENT,
    };
    let mut totals = Totals::default();
    loop {
        let ArchiveOutcome {
            runs,
            events,
            bytes,
            segment,
            ..
        } = store::archive::archive(&db.pool, &options)
            .await
            .context("cannot archive")?;
        totals.runs += runs;
        totals.events += events;
        totals.bytes += bytes;
        totals.segments += u64::from(segment.is_some());
        // A dry run looks once; a real one until nothing has expired.
        if request.dry_run || segment.is_none() || (runs as i64) < RUNS_PER_SEGMENT {
            return Ok(totals);
        }
    }
}

/// Parses `WORKSPACE=DAYS`.
pub fn parse_retention(s: &str) -> Result<(String, i64), String> {
    let (workspace, days) = s
        .split_once('=')
        .ok_or_else(|| "expected WORKSPACE=DAYS".to_owned())?;
    let days: i64 = days
        .trim()
        .parse()
        .map_err(|_| format!("`{days}` is not a number of days"))?;
    if days < 0 {
        return Err("a retention is 0 days or more".to_owned());
    }
    Ok((workspace.trim().to_owned(), days))
}
