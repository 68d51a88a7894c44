//! `tenantflow verify`: recomputes the audit hash chains from the event log (R9.4), names
//! the first bad event of each broken chain, records the outcome for `auditChain`, and
//! fails when a chain is broken.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use store::archive::ArchiveVerification;
use store::audit::{KeptHead, Verification, VerifyOptions, VerifyProgress};

use crate::config::Config;
use crate::serve::Database;

struct Bar(ProgressBar);

impl VerifyProgress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn advance(&self, done: u64) {
        self.0.set_position(done);
    }
}

/// Verifies the global chain and every workspace chain, or one workspace's chain, from the
/// start or from a kept head, and optionally that it passes through a kept head.
pub async fn run(
    config: Config,
    workspace: Option<String>,
    from: Option<KeptHead>,
    expect: Option<KeptHead>,
    archive: Option<PathBuf>,
) -> anyhow::Result<()> {
    let db = Database::open(&config, "tenantflow").await?;
    let result = verify(&db, workspace, from, expect).await;
    let archives = match (&result, &archive) {
        (Ok(_), Some(dir)) => Some(
            store::archive::verify_archives(&db.pool, dir)
                .await
                .context("cannot check the archive"),
        ),
        _ => None,
    };
    db.close().await?;
    let verification = result?;
    let archives = archives.transpose()?;
    print(&verification, archives.as_ref());
    if let Some(first) = verification.first_bad() {
        return Err(anyhow::anyhow!("the audit chain is broken: {first}"));
    }
    match archives.as_ref().and_then(|a| a.problems.first()) {
        None => Ok(()),
        Some(first) => Err(anyhow::anyhow!("the archive is broken: {first}")),
    }
}

async fn verify(
    db: &Database,
    workspace: Option<String>,
    from: Option<KeptHead>,
    expect: Option<KeptHead>,
) -> anyhow::Result<Verification> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("verify [{bar:40}] {pos}/{len} seals ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let options = VerifyOptions {
        workspace,
        from,
        expect,
    };
    let verification = store::audit::verify(&db.pool, &options, &Bar(bar.clone())).await;
    bar.finish_and_clear();
    let verification = verification.context("cannot verify the audit chain")?;
    store::audit::record(&db.pool, &verification)
        .await
        .context("cannot record the verification")?;
    let unsealed = store::audit::unsealed(&db.pool).await?;
    if unsealed > 0 {
        tracing::info!(
            unsealed,
            "events after the last seal are not in the chain yet (the service seals them)"
        );
    }
    Ok(verification)
}

fn print(v: &Verification, archives: Option<&ArchiveVerification>) {
    let mut lines = Vec::new();
    match v.sealed_through {
        None => lines.push("nothing is sealed yet".to_owned()),
        Some(through) => {
            let from = v
                .options
                .from
                .map(|h| format!(" after the kept head at position {}", h.position))
                .unwrap_or_default();
            lines.push(format!(
                "sealed through position {through}; verified{from}:"
            ));
        }
    }
    for chain in &v.chains {
        let name = match &chain.workspace {
            None => "global chain".to_owned(),
            Some(w) => format!("workspace {w:?}"),
        };
        let archived = match chain.archived {
            0 => String::new(),
            n => format!(" ({n} archived, linked on their seals)"),
        };
        match &chain.first_bad {
            None => lines.push(format!(
                "  ok      {name}: {} events{archived}",
                chain.checked
            )),
            Some(b) => lines.push(format!(
                "  BROKEN  {name}: {} good events, then {b}",
                chain.checked
            )),
        }
    }
    if let Some(head) = v.head {
        let workspace = v
            .options
            .workspace
            .as_ref()
            .map(|w| format!(" --workspace {w}"))
            .unwrap_or_default();
        lines.push(format!(
            "head: {head}\n  (keep it elsewhere; `tenantflow verify{workspace} --expect {head}` \
             later checks the history still leads to it, `--from {head}` checks what follows)"
        ));
    }
    if let Some(a) = archives {
        match a.problems.is_empty() {
            true => lines.push(format!(
                "  ok      archive: {} segments, {} events, linked into the live chain",
                a.segments, a.events
            )),
            false => {
                for p in &a.problems {
                    lines.push(format!("  BROKEN  archive {p}"));
                }
            }
        }
    }
    #[allow(clippy::print_stdout)]
    {
        println!("{}", lines.join("\n"));
    }
}
