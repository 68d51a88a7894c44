//! `tenantflow export`: one workspace's sealed events as NDJSON, with the canonical bytes
//! and chain hashes an auditor needs to check the chain without tenantflow (R9.4).

use anyhow::Context;
use chrono::{DateTime, Utc};
use std::io::Write;
use std::path::PathBuf;
use store::audit::ExportOptions;

use crate::config::Config;
use crate::serve::Database;

pub async fn run(
    config: Config,
    workspace: String,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut writer: Box<dyn Write + Send> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let db = Database::open(&config, "tenantflow").await?;
    let options = ExportOptions {
        workspace,
        since,
        until,
    };
    let result = store::audit::export(&db.pool, &options, &mut *writer).await;
    db.close().await?;
    let exported = result.context("cannot export the audit chain")?;
    tracing::info!(
        workspace = %options.workspace,
        lines = exported.lines,
        first_seq = exported.first_seq,
        last_seq = exported.last_seq,
        head = exported.head.map(|h| h.to_string()),
        path = out.as_ref().map(|p| p.display().to_string()),
        "exported"
    );
    Ok(())
}
