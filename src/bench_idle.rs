//! `tenantflow bench idle`: how long `serve` takes from start to ready, and how much memory
//! it holds (resident, without PostgreSQL's processes) once idle. The binary is started as
//! a child process, as an operator would start it: with `DATABASE_URL` it uses that server,
//! otherwise an embedded cluster in a fresh data directory (whose creation then counts).

use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Serialize)]
struct IdleReport {
    benchmark: &'static str,
    /// Whether the cold start included creating an embedded PostgreSQL cluster.
    embedded_cluster_created: bool,
    cold_start_to_ready_ms: f64,
    idle_seconds: u64,
    idle_rss_mb: f64,
    target_idle_rss_mb: f64,
}

pub async fn run(idle: Duration, json: PathBuf) -> anyhow::Result<()> {
    let report = measure(idle).await?;
    tracing::info!(
        "cold start to ready: {:.0} ms (embedded cluster created: {}); idle RSS after {} s: {:.1} MB (target < {:.0} MB)",
        report.cold_start_to_ready_ms,
        report.embedded_cluster_created,
        report.idle_seconds,
        report.idle_rss_mb,
        report.target_idle_rss_mb,
    );
    crate::bench::publish(&report, &json)
}

async fn measure(idle: Duration) -> anyhow::Result<IdleReport> {
    let dir = std::env::temp_dir().join(format!("tenantflow-bench-idle-{}", std::process::id()));
    let embedded = std::env::var_os("DATABASE_URL").is_none();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--data-dir"])
        .arg(&dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("TENANTFLOW_DEMO", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start tenantflow serve")?;
    let pid = child.id().context("serve exited at once")?;
    let result = async {
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.find("listening on http://") {
                    let rest = &line[i + "listening on ".len()..];
                    let url: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = tx.send(url).await;
                }
            }
        });
        let base = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .ok()
            .flatten()
            .context("serve did not start within 120 s")?;
        let client = reqwest::Client::new();
        let ready = loop {
            let answer = client.get(format!("{base}/readyz")).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                break started.elapsed();
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "serve was not ready within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        tokio::time::sleep(idle).await;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("cannot read the process's memory")?;
        let rss_kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")?;
        Ok(IdleReport {
            benchmark: "idle",
            embedded_cluster_created: embedded,
            cold_start_to_ready_ms: ready.as_secs_f64() * 1000.0,
            idle_seconds: idle.as_secs(),
            idle_rss_mb: rss_kb / 1024.0,
            target_idle_rss_mb: 60.0,
        })
    }
    .await;
    // A clean stop, so an embedded cluster is shut down before its directory goes.
    let _ = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
