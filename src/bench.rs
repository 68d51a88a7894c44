//! `tenantflow bench`: performance figures printed and written as JSON.

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::serve::Database;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Command-bus append rate against plain single-row INSERTs of equally-shaped rows, at
    /// the same concurrency, in a scratch database (`tenantflow_bench`, recreated each run);
    /// also the same row inserted into the log itself, to split the gap into the log's
    /// share and the command path's.
    Append {
        /// Commands (and raw inserts) to execute.
        #[arg(long, default_value_t = 5000)]
        commands: usize,
        /// Concurrent tasks.
        #[arg(long, short = 'c', default_value_t = 4)]
        concurrency: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-append.json")]
        json: PathBuf,
    },
    /// Fleet resync throughput: every tenant of a simulated fleet resynced by the workflow
    /// engine, against a bare loop that fetches the same policy pages and inserts one row
    /// per tenant, at the same concurrency, in a scratch database; and a floor loop that
    /// makes the same fetches and writes a run's worth of the events the workflow wrote,
    /// with the audit sealer beside (what a run's log writes cost with no engine).
    Resync {
        /// Tenants in the simulated fleet.
        #[arg(long, default_value_t = 1000)]
        tenants: usize,
        /// Engine instances (and bare-loop tasks) working at once.
        #[arg(long, short = 'c', default_value_t = 4)]
        concurrency: usize,
        /// Partitions the scratch log has behind its first event, as a log grown for
        /// years has (docs/SCALING.md): empty, of 1,000 positions each. Every statement
        /// that reads a stream pays for each partition. 0: a young log; at most 1,000.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
        partitions: u32,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-resync.json")]
        json: PathBuf,
    },
    /// Contact sync throughput: one sync of every user of a simulated fleet (users delta,
    /// the rules, contact events and each tenant's result), against a bare loop reading the
    /// same pages and upserting one row per user, in a scratch database.
    Contacts {
        /// Tenants in the simulated fleet (each mapped to a client).
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        /// Users per tenant.
        #[arg(long, default_value_t = 500)]
        users: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-contacts.json")]
        json: PathBuf,
    },
    /// A dashboard's list page (20 tenants) over HTTP through GraphQL — the service's
    /// router in this process, keep-alive connections — against the same SQL page read
    /// directly, at 1 and 32 concurrent clients, in a scratch database.
    Graphql {
        /// Tenants in the workspace.
        #[arg(long, default_value_t = 200)]
        tenants: usize,
        /// Requests per measurement.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-graphql.json")]
        json: PathBuf,
    },
    /// The run list of a workspace that kept years of runs: each filter a dashboard offers
    /// (status, outcome, type, tenant, a time range) asked for over HTTP through GraphQL, at
    /// one client, its p50 and p99; and the bytes a run takes in the read model and each of
    /// its indexes. The runs are written into the run read model directly, in a scratch
    /// database.
    Runs {
        /// Runs in the read model (nine in ten in the bench's workspace).
        #[arg(long, default_value_t = 1_000_000)]
        runs: usize,
        /// Requests per page.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-runs.json")]
        json: PathBuf,
    },
    /// The audit log of a workspace that kept years of events: each filter an auditor has
    /// (tenant, actor, action, a time window) asked for over HTTP through GraphQL, at one
    /// client, its p50 and p99. The rows are written into the audit log directly, in a
    /// scratch database.
    Audit {
        /// Rows in the audit log (nine in ten in the bench's workspace).
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Requests per page.
        #[arg(long, default_value_t = 100)]
        requests: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-audit.json")]
        json: PathBuf,
    },
    /// Every read model rebuilt from a generated log (a template history made through the
    /// use cases, copied into many workspaces), against an ordered raw read of the same
    /// rows, in a scratch database.
    Catchup {
        /// Events in the generated log.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-catchup.json")]
        json: PathBuf,
    },
    /// `serve` started as a child process: time from start to ready, and its resident
    /// memory (without PostgreSQL) once idle.
    Idle {
        /// How long to let it idle before reading its memory.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-idle.json")]
        json: PathBuf,
    },
    /// Inbound mail: change notifications posted to the webhook until each became an
    /// enriched `InboundEmailReceived`, against a bare loop of the same message fetches
    /// and one insert each; the webhook's p99 acknowledgement, and the events and bytes
    /// per message. In a scratch database.
    Mail {
        /// Messages notified (and as many fetched by the bare loop).
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Concurrent webhook posts, fetches and bare-loop tasks.
        #[arg(long, short = 'c', default_value_t = 8)]
        concurrency: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-mail.json")]
        json: PathBuf,
    },
    /// Every bench above with its defaults, one after the other; each writes its JSON into
    /// DIR, and `DIR/bench-all.json` lists every figure with its target and whether it holds.
    All {
        /// Where the JSON files go.
        #[arg(long, default_value = "bench-results")]
        dir: PathBuf,
    },
    /// Audit chain: full verification rate (events/s) over a generated, sealed log, against
    /// a bare SHA-256 pass over the same rows read by the same query; and the sealer's
    /// catch-up rate. In a scratch database.
    Verify {
        /// Events in the generated log.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Workspaces the events are spread over (one chain each).
        #[arg(long, default_value_t = 10)]
        workspaces: usize,
        /// Rounds of bare pass and verification; the best of each is reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench-verify.json")]
        json: PathBuf,
    },
}

/// CPU time spent between two readings: this process's (user + system) and the whole
/// machine's (every process, PostgreSQL's included), from `/proc`. Figures where the
/// machine is the limit are compared by the CPU each operation costs, not only by rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuReading {
    process_ticks: u64,
    machine_ticks: u64,
}

/// CPU milliseconds per operation of a phase (see [`CpuReading`]); zeros where `/proc` is
/// not readable.
#[derive(Debug, Serialize, Default)]
pub struct CpuPerOp {
    pub process_ms: f64,
    pub machine_ms: f64,
}

/// As `bench graphql` logs it, in µs per operation.
impl std::fmt::Display for CpuPerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU {:.0} µs here, {:.0} µs machine",
            self.process_ms * 1000.0,
            self.machine_ms * 1000.0
        )
    }
}

impl CpuReading {
    /// Now. Unreadable counters read as zero (the figures are then zero, not wrong).
    pub fn now() -> Self {
        // utime and stime are fields 14 and 15 of /proc/self/stat; the command name
        // (field 2) may hold spaces, so fields are counted after its closing parenthesis.
        let process_ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        // The machine: user, nice, system, irq and softirq of the `cpu` line (not idle,
        // iowait, or steal: time the hypervisor gave to other machines).
        let machine_ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?;
                let f: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                Some([0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum())
            })
            .unwrap_or(0);
        Self {
            process_ticks,
            machine_ticks,
        }
    }

    /// The CPU spent since `self`, per operation of `operations`. Linux counts in
    /// hundredths of a second (`USER_HZ`).
    pub fn per_op(&self, operations: usize) -> CpuPerOp {
        self.since().per(operations)
    }

    /// The CPU spent since `self`.
    fn since(&self) -> CpuReading {
        let now = Self::now();
        CpuReading {
            process_ticks: now.process_ticks.saturating_sub(self.process_ticks),
            machine_ticks: now.machine_ticks.saturating_sub(self.machine_ticks),
        }
    }

    /// Adds CPU spent (from `since`).
    fn add(&mut self, spent: &CpuReading) {
        self.process_ticks += spent.process_ticks;
        self.machine_ticks += spent.machine_ticks;
    }

    /// CPU spent (from `since`), per operation of `operations`.
    fn per(&self, operations: usize) -> CpuPerOp {
        let ms = |ticks: u64| ticks as f64 * 10.0 / operations.max(1) as f64;
        CpuPerOp {
            process_ms: ms(self.process_ticks),
            machine_ms: ms(self.machine_ticks),
        }
    }
}

/// Latency and throughput of one phase.
#[derive(Debug, Serialize)]
pub struct PhaseResult {
    pub operations: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct AppendReport {
    benchmark: &'static str,
    concurrency: usize,
    /// Command appends with the audit chain's sealer running beside them, as in the
    /// service (the sealer reads, hashes and seals every event on the same cores).
    command_append: PhaseResult,
    /// The same command appends with nothing beside them: the append path alone.
    command_append_alone: PhaseResult,
    raw_insert: PhaseResult,
    /// The raw baseline's row inserted into the log itself (`events`: its partitions, its
    /// indexes, the trigger that claims stream sequences), no command around it: what any
    /// append to this log costs.
    log_insert: PhaseResult,
    /// log_insert.per_second / raw_insert.per_second: what the log's guarantees cost.
    log_ratio: f64,
    /// command_append_alone.per_second / log_insert.per_second: what the command path
    /// (loading the stream, deciding, serializing, announcing) adds to the log's insert.
    path_ratio: f64,
    /// command_append.per_second / raw_insert.per_second
    ratio: f64,
    /// command_append_alone.per_second / raw_insert.per_second
    ratio_alone: f64,
    target_ratio: f64,
    /// The audit chain's sealer, running beside the command appends as in the service.
    sealer: SealerLag,
}

/// How far the audit sealer fell behind the command appends (events appended but not yet
/// sealed, sampled every 20 ms), and how long it took to seal the rest once they stopped.
#[derive(Debug, Serialize)]
pub(crate) struct SealerLag {
    samples: usize,
    max_lag_events: i64,
    mean_lag_events: f64,
    catch_up_ms: f64,
}

pub async fn run(config: Config, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append {
            commands,
            concurrency,
            json,
        } => append(config, commands, concurrency.max(1), json).await,
        BenchCommand::Resync {
            tenants,
            concurrency,
            partitions,
            json,
        } => {
            let shape = crate::bench_resync::Shape {
                tenants: tenants.max(1),
                concurrency: concurrency.max(1),
                partitions,
            };
            crate::bench_resync::run(config, shape, json).await
        }
        BenchCommand::Contacts {
            tenants,
            users,
            json,
        } => crate::bench_contacts::run(config, tenants.max(1), users.max(1), json).await,
        BenchCommand::Graphql {
            tenants,
            requests,
            json,
        } => crate::bench_graphql::run(config, tenants.max(1), requests.max(1), json).await,
        BenchCommand::Runs {
            runs,
            requests,
            json,
        } => crate::bench_runs::run(config, runs.max(1), requests.max(1), json).await,
        BenchCommand::Audit {
            rows,
            requests,
            json,
        } => crate::bench_audit::run(config, rows.max(1), requests.max(1), json).await,
        BenchCommand::Catchup { events, json } => {
            crate::bench_catchup::run(config, events.max(1), json).await
        }
        BenchCommand::Idle { seconds, json } => {
            crate::bench_idle::run(Duration::from_secs(seconds), json).await
        }
        BenchCommand::Mail {
            messages,
            concurrency,
            json,
        } => crate::bench_mail::run(config, messages.max(1), concurrency.max(1), json).await,
        BenchCommand::All { dir } => all(config, dir).await,
        BenchCommand::Verify {
            events,
            workspaces,
            rounds,
            json,
        } => {
            crate::bench_verify::run(
                config,
                events.max(1),
                workspaces.max(1),
                rounds.max(1),
                json,
            )
            .await
        }
    }
}

/// One figure of `bench all`: its value, its target and whether it holds.
#[derive(Debug, Serialize)]
struct Figure {
    bench: &'static str,
    figure: String,
    value: f64,
    target: String,
    holds: bool,
}

/// Runs every bench with its defaults, then lists every figure against its target.
async fn all(config: Config, dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = |name: &str| dir.join(format!("bench-{name}.json"));
    append(config.clone(), 5000, 4, file("append")).await?;
    let shape = crate::bench_resync::Shape {
        tenants: 1000,
        concurrency: 4,
        partitions: 0,
    };
    crate::bench_resync::run(config.clone(), shape, file("resync")).await?;
    crate::bench_verify::run(config.clone(), 1_000_000, 10, 2, file("verify")).await?;
    crate::bench_contacts::run(config.clone(), 100, 500, file("contacts")).await?;
    crate::bench_catchup::run(config.clone(), 1_000_000, file("catchup")).await?;
    crate::bench_graphql::run(config.clone(), 200, 5000, file("graphql")).await?;
    crate::bench_runs::run(config.clone(), 1_000_000, 200, file("runs")).await?;
    crate::bench_audit::run(config.clone(), 1_000_000, 100, file("audit")).await?;
    crate::bench_idle::run(Duration::from_secs(5), file("idle")).await?;
    crate::bench_mail::run(config.clone(), 2000, 8, file("mail")).await?;

    let read = |name: &str| -> anyhow::Result<serde_json::Value> {
        let path = file(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let at_least = |bench, figure: &str, value: f64, target: f64| Figure {
        bench,
        figure: figure.to_owned(),
        value,
        target: format!(">= {target}"),
        holds: value >= target,
    };
    let below = |bench, figure: &str, value: f64, target: f64| Figure {
        bench,
        figure: figure.to_owned(),
        value,
        target: format!("< {target}"),
        holds: value < target,
    };
    let mut figures = Vec::new();
    for name in ["append", "resync", "verify", "contacts"] {
        let r = read(name)?;
        figures.push(at_least(
            name,
            "ratio",
            number(&r["ratio"]),
            number(&r["target_ratio"]),
        ));
        if name == "append" {
            figures.push(at_least(
                name,
                "ratio, sealer off",
                number(&r["ratio_alone"]),
                number(&r["target_ratio"]),
            ));
            // The same target for the row inserted into the log with no command around it:
            // whether a command path that cost nothing could hold it.
            figures.push(at_least(
                name,
                "log ratio (bound)",
                number(&r["log_ratio"]),
                number(&r["target_ratio"]),
            ));
        }
        if name == "resync" {
            // The same target for the floor loop: whether an engine that cost nothing
            // beyond writing a run's events could hold it.
            figures.push(at_least(
                name,
                "floor ratio (bound)",
                number(&r["floor_ratio"]),
                number(&r["target_ratio"]),
            ));
            // And for the floor with R7's lease: whether an engine that cost nothing beyond
            // those writes and the least claim R7.1 and R7.2 allow could hold it.
            figures.push(at_least(
                name,
                "leased floor ratio (bound)",
                number(&r["leased_floor_ratio"]),
                number(&r["target_ratio"]),
            ));
        }
    }
    let c = read("catchup")?;
    figures.push(at_least(
        "catchup",
        "ratio",
        number(&c["ratio"]),
        number(&c["target_ratio"]),
    ));
    figures.push(at_least(
        "catchup",
        "events/s",
        number(&c["all_read_models_events_per_second"]),
        number(&c["target_events_per_second"]),
    ));
    let m = read("mail")?;
    figures.push(at_least(
        "mail",
        "ratio",
        number(&m["ratio"]),
        number(&m["target_ratio"]),
    ));
    figures.push(below(
        "mail",
        "webhook ack p99 ms",
        number(&m["webhook_ack"]["p99_ms"]),
        number(&m["target_ack_p99_ms"]),
    ));
    let g = read("graphql")?;
    for run in g["runs"].as_array().cloned().unwrap_or_default() {
        let page = run["page"].as_str().unwrap_or("tenants");
        let at = &run["concurrency"];
        figures.push(at_least(
            "graphql",
            &format!("{page} ratio at {at}"),
            number(&run["ratio"]),
            number(&g["target_ratio"]),
        ));
        if at == 32 {
            figures.push(below(
                "graphql",
                &format!("{page} p99 ms at 32"),
                number(&run["graphql"]["p99_ms"]),
                number(&g["target_p99_ms_at_32"]),
            ));
        }
    }
    // The same target for the list pages served with no GraphQL (the JSON floor): whether
    // a GraphQL layer that cost nothing could hold it.
    for floor in g["json_floor"].as_array().cloned().unwrap_or_default() {
        figures.push(at_least(
            "graphql",
            &format!(
                "{} JSON floor ratio at {} (bound)",
                floor["page"].as_str().unwrap_or("?"),
                floor["concurrency"]
            ),
            number(&floor["ratio_to_page_sql"]),
            number(&g["target_ratio"]),
        ));
        // And the p99's target: in a closed loop the p99 follows the rate, so a page served
        // without GraphQL that misses it says no GraphQL layer could hold it.
        if floor["concurrency"] == 32 {
            figures.push(below(
                "graphql",
                &format!(
                    "{} JSON floor p99 ms at 32 (bound)",
                    floor["page"].as_str().unwrap_or("?")
                ),
                number(&floor["http"]["p99_ms"]),
                number(&g["target_p99_ms_at_32"]),
            ));
        }
    }
    let r = read("runs")?;
    for page in r["pages"].as_array().cloned().unwrap_or_default() {
        figures.push(below(
            "runs",
            &format!("{} p99 ms", page["page"].as_str().unwrap_or("?")),
            number(&page["graphql"]["p99_ms"]),
            number(&r["target_p99_ms"]),
        ));
    }
    let a = read("audit")?;
    for page in a["pages"].as_array().cloned().unwrap_or_default() {
        if page["targeted"] == true {
            figures.push(below(
                "audit",
                &format!("{} p99 ms", page["page"].as_str().unwrap_or("?")),
                number(&page["graphql"]["p99_ms"]),
                number(&a["target_p99_ms"]),
            ));
        }
    }
    let idle = read("idle")?;
    figures.push(below(
        "idle",
        "idle RSS MB",
        number(&idle["idle_rss_mb"]),
        number(&idle["target_idle_rss_mb"]),
    ));
    for f in &figures {
        tracing::info!(
            "{:8} {:22} {:>10.2}  target {:8}  {}",
            f.bench,
            f.figure,
            f.value,
            f.target,
            if f.holds { "holds" } else { "MISSES" }
        );
    }
    publish(
        &serde_json::json!({
            "benchmark": "all",
            "figures": figures,
            "cold_start_to_ready_ms": idle["cold_start_to_ready_ms"],
        }),
        &file("all"),
    )
}

/// The runtime as `serve` starts it, less the read models and the scheduler: the task
/// feed, the snapshot writer and `workers` engines calling `graph`.
pub(crate) fn engines(
    config: &Config,
    bus: &store::CommandBus,
    vault: &store::Vault,
    graph: Arc<dyn graph::GraphApi>,
    metrics: &store::Metrics,
    workers: usize,
) -> runtime::Running {
    let parts = runtime::Parts {
        bus: bus.clone(),
        vault: vault.clone(),
        graph,
        metrics: metrics.clone(),
        workflows: workflows::Registry::standard(),
    };
    let options = runtime::Options {
        owner: "bench".to_owned(),
        workers,
        write_window: Duration::from_millis(config.workflow_write_window_ms),
        scheduler_poll: None,
        projections: false,
        ..runtime::Options::default()
    };
    runtime::start(&parts, &options, tokio_util::sync::CancellationToken::new())
}

/// Waits (polling, at most `within`) until the run `run_id` has ended; returns it.
pub(crate) async fn run_ended(
    bus: &store::CommandBus,
    run_id: domain::RunId,
    within: Duration,
) -> anyhow::Result<domain::run::OperationRun> {
    let deadline = Instant::now() + within;
    loop {
        let run = bus
            .load::<domain::run::OperationRun>(&run_id.to_string())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .aggregate;
        if !run.is_active() {
            return Ok(run);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "run {run_id} did not end within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A rebuild that reports nothing (the benches print their own figures).
pub(crate) struct Quiet;

impl projections::RebuildProgress for Quiet {
    fn start(&self, _: &[&str], _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self, _: u64) {}
}

/// Prints a bench's results as JSON and writes them to `json`.
pub fn publish(report: &impl Serialize, json: &std::path::Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(json, &text).with_context(|| format!("cannot write {}", json.display()))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
    tracing::info!(path = %json.display(), "results written");
    Ok(())
}

/// Runs `total` operations over `concurrency` tasks; `op(i)` performs operation `i`.
pub async fn measure<F, Fut>(total: usize, concurrency: usize, op: F) -> anyhow::Result<PhaseResult>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    Ok(timed(total, concurrency, Arc::new(op)).await?.result())
}

/// How many turns [`measure_in_turns`] takes.
const TURNS: usize = 5;

/// Two operations' phases measured in turns, for a ratio of their rates: [`TURNS`] turns of
/// `total / TURNS` operations a side, the side that goes first alternating (A B, B A, A B,
/// ...). On a shared machine whose speed drifts over seconds (other guests of its host,
/// PostgreSQL's background work), two phases run one after the other each see a different
/// machine, and a phase of a second is easily caught by a slow moment; in turns both see
/// the same mix. Ramping up and down at each turn's ends costs both sides the same share of
/// their rate (about `concurrency / 2` operations' time out of `total / TURNS`), so the
/// ratio keeps no trace of it. Each side's result and CPU per operation, over its turns.
pub async fn measure_in_turns<A, FA, B, FB>(
    total: usize,
    concurrency: usize,
    a: A,
    b: B,
) -> anyhow::Result<[(PhaseResult, CpuPerOp); 2]>
where
    A: Fn(usize) -> FA + Send + Sync + 'static,
    FA: std::future::Future<Output = anyhow::Result<()>> + Send,
    B: Fn(usize) -> FB + Send + Sync + 'static,
    FB: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut sides: [(Timed, CpuReading); 2] = Default::default();
    for turn in 0..TURNS {
        let n = total / TURNS + usize::from(turn < total % TURNS);
        for side in if turn % 2 == 0 { [0, 1] } else { [1, 0] } {
            let cpu = CpuReading::now();
            let phase = if side == 0 {
                timed(n, concurrency, a.clone()).await?
            } else {
                timed(n, concurrency, b.clone()).await?
            };
            let (sum, spent) = &mut sides[side];
            spent.add(&cpu.since());
            sum.latencies.extend(phase.latencies);
            sum.seconds += phase.seconds;
        }
    }
    Ok(sides.map(|(timed, spent)| {
        let cpu = spent.per(timed.latencies.len());
        (timed.result(), cpu)
    }))
}

/// A phase's latencies and how long it took.
#[derive(Default)]
struct Timed {
    latencies: Vec<Duration>,
    seconds: f64,
}

impl Timed {
    fn result(mut self) -> PhaseResult {
        let latencies = &mut self.latencies;
        latencies.sort();
        let pct = |p: f64| {
            let idx =
                ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
            latencies
                .get(idx)
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0)
        };
        let operations = latencies.len();
        PhaseResult {
            operations,
            seconds: self.seconds,
            per_second: operations as f64 / self.seconds,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }
}

async fn timed<F, Fut>(total: usize, concurrency: usize, op: Arc<F>) -> anyhow::Result<Timed>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let op = op.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let t = Instant::now();
                    op(i).await?;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.context("benchmark task panicked")??);
    }
    Ok(Timed {
        latencies,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A workspace-valid Entra tenant GUID for bench item `i` of `run`.
fn bench_guid(run: u32, i: usize) -> String {
    format!("{run:08x}-0000-4000-8000-{i:012x}")
}

async fn append(
    config: Config,
    total: usize,
    concurrency: usize,
    json: PathBuf,
) -> anyhow::Result<()> {
    let db = Database::open_scratch(&config, "tenantflow_bench").await?;
    let pool = db.pool.clone();
    let result = append_on(&pool, total, concurrency).await;
    db.close().await?;
    let report = result?;
    tracing::info!(
        max_lag = report.sealer.max_lag_events,
        mean_lag = report.sealer.mean_lag_events,
        catch_up_ms = report.sealer.catch_up_ms,
        "audit sealer beside the command appends"
    );
    tracing::info!(
        concurrency,
        "command append: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), alone {:.0}/s (p50 {:.2} ms, ratio {:.2}); raw insert: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); ratio {:.2} (target >= {:.1}); the same row into the log: {:.0}/s, log ÷ raw {:.2}, command alone ÷ log {:.2}",
        report.command_append.per_second,
        report.command_append.p50_ms,
        report.command_append.p99_ms,
        report.command_append_alone.per_second,
        report.command_append_alone.p50_ms,
        report.ratio_alone,
        report.raw_insert.per_second,
        report.raw_insert.p50_ms,
        report.raw_insert.p99_ms,
        report.ratio,
        report.target_ratio,
        report.log_insert.per_second,
        report.log_ratio,
        report.path_ratio,
    );
    publish(&report, &json)
}

async fn append_on(
    pool: &PgPool,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<AppendReport> {
    use domain::tenant::{Tenant, TenantCommand};
    use domain::Role;
    use store::{CommandBus, Metadata, Metrics};

    let bus = CommandBus::new(pool.clone(), domain::Services::system(), Metrics::new());
    let run: u32 = rand::random();
    let register = move |bus: CommandBus, i: usize| async move {
        let guid = bench_guid(run, i);
        let key = format!("bench:{guid}");
        let command = TenantCommand::Register {
            workspace: "bench".parse()?,
            entra_tenant_id: guid.parse()?,
            display_name: format!("Bench tenant {i}"),
            primary_domain: format!("t{i}.bench.example"),
        };
        bus.execute::<Tenant>(&key, command, &Metadata::new("bench", "bench", Role::Owner))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    };

    // The raw baseline inserts rows shaped like the command's event, with its metadata.
    let sample_payload = serde_json::json!({"TenantRegistered": {
        "workspace": "bench", "entra_tenant_id": bench_guid(0, 0),
        "display_name": "Bench tenant 0", "primary_domain": "t0.bench.example",
        "registered_at": chrono::Utc::now()}});
    let sample_meta = serde_json::to_value(Metadata::new("bench", "bench", Role::Owner))?;
    // The statement's text is made once per table, not in the measured operation.
    let into = move |table: &'static str| {
        let sql: Arc<str> = format!(
            "INSERT INTO {table} (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('tenant', $1, 1, 'TenantRegistered', '1.0', $2, $3)"
        )
        .into();
        move |pool: PgPool, i: usize, payload: serde_json::Value, meta: serde_json::Value| {
            let sql = sql.clone();
            async move {
                sqlx::query(&sql)
                    .bind(format!("{table}:{run}:{i}"))
                    .bind(payload)
                    .bind(meta)
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        }
    };
    let raw = into("bench_raw_inserts");
    let log = into("events");

    let warmup = (total / 10).clamp(10, 500);
    let (b, p, pl, m) = (
        bus.clone(),
        pool.clone(),
        sample_payload.clone(),
        sample_meta.clone(),
    );
    let warm = raw.clone();
    measure(warmup, concurrency, move |i| {
        warm(p.clone(), total + i, pl.clone(), m.clone())
    })
    .await?;
    measure(warmup, concurrency, move |i| register(b.clone(), total + i)).await?;

    let (p, pl, m) = (pool.clone(), sample_payload.clone(), sample_meta.clone());
    let raw_insert = measure(total, concurrency, move |i| {
        raw(p.clone(), i, pl.clone(), m.clone())
    })
    .await?;
    let (p, pl, m) = (pool.clone(), sample_payload, sample_meta);
    let log_insert = measure(total, concurrency, move |i| {
        log(p.clone(), i, pl.clone(), m.clone())
    })
    .await?;
    let b = bus.clone();
    let command_append_alone = measure(total, concurrency, move |i| {
        register(b.clone(), 2 * total + i)
    })
    .await?;
    let b = bus.clone();
    // The sealer starts caught up (the warm-up's and the first phase's events sealed), then
    // runs beside the appends as it does in the service.
    let sealer = Sealer::start(pool).await?;
    let command_append = measure(total, concurrency, move |i| register(b.clone(), i)).await?;
    let sealer = sealer.finish().await?;
    let ratio = command_append.per_second / raw_insert.per_second;
    Ok(AppendReport {
        benchmark: "append",
        concurrency,
        ratio_alone: command_append_alone.per_second / raw_insert.per_second,
        log_ratio: log_insert.per_second / raw_insert.per_second,
        path_ratio: command_append_alone.per_second / log_insert.per_second,
        log_insert,
        command_append,
        command_append_alone,
        raw_insert,
        ratio,
        target_ratio: 0.8,
        sealer,
    })
}

/// The audit sealer running beside a load as it runs in the service (woken by the appends'
/// notifications, letting events gather between batches), with a sampler of its lag.
pub(crate) struct Sealer {
    pool: PgPool,
    stop: tokio_util::sync::CancellationToken,
    runner: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<anyhow::Result<Vec<i64>>>,
}

impl Sealer {
    pub(crate) async fn start(pool: &PgPool) -> anyhow::Result<Self> {
        let runner = store::ConsumerRunner::new(
            pool.clone(),
            Arc::new(store::AuditSealer),
            store::RunnerOptions::default(),
            store::Metrics::new(),
        );
        seal_all(&runner).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let wakeups = store::log::Wakeups::listen(pool.clone(), stop.clone());
        let runner = tokio::spawn(runner.run(wakeups, stop.clone()));
        let (p, s) = (pool.clone(), stop.clone());
        let sampler = tokio::spawn(async move {
            let mut lags = Vec::new();
            while !s.is_cancelled() {
                lags.push(sealer_lag(&p).await?);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(lags)
        });
        Ok(Self {
            pool: pool.clone(),
            stop,
            runner,
            sampler,
        })
    }

    /// Stops sampling, then times the sealer sealing what is left.
    pub(crate) async fn finish(self) -> anyhow::Result<SealerLag> {
        let stopped = Instant::now();
        self.stop.cancel();
        self.runner.await.context("sealer task panicked")?;
        let lags = self.sampler.await.context("sampler task panicked")??;
        let runner = store::ConsumerRunner::new(
            self.pool.clone(),
            Arc::new(store::AuditSealer),
            store::RunnerOptions::default(),
            store::Metrics::new(),
        );
        seal_all(&runner).await?;
        anyhow::ensure!(
            unsealed(&self.pool).await? == 0,
            "the sealer did not catch up"
        );
        let catch_up_ms = stopped.elapsed().as_secs_f64() * 1000.0;
        Ok(SealerLag {
            samples: lags.len(),
            max_lag_events: lags.iter().copied().max().unwrap_or(0),
            mean_lag_events: lags.iter().sum::<i64>() as f64 / lags.len().max(1) as f64,
            catch_up_ms,
        })
    }
}

/// Seals batches until the sealer is caught up; returns how many events it sealed.
async fn seal_all(runner: &store::ConsumerRunner) -> anyhow::Result<usize> {
    let mut sealed = 0;
    loop {
        match runner.step().await? {
            store::Progress::Consumed(n) => sealed += n,
            store::Progress::Idle => return Ok(sealed),
            store::Progress::Busy => {
                anyhow::bail!("another process is sealing the scratch database")
            }
        }
    }
}

/// Events appended after the sealer's checkpoint: what it has still to read. Counted
/// through the log's order index from the checkpoint on, so sampling it costs in proportion
/// to the lag, not to the log (counting the whole log every 20 ms took a share of the
/// cores the appends are measured on).
async fn sealer_lag(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM events e, consumer_checkpoints c \
         WHERE c.name = $1 AND (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)",
    )
    .bind(store::audit::SEALER)
    .fetch_one(pool)
    .await?)
}

/// Events appended and not yet sealed.
async fn unsealed(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events) - (SELECT count(*) FROM audit_seals)",
    )
    .fetch_one(pool)
    .await?)
}

/// A resync run of `tenant`, queued, started, its snapshot step done and succeeded, its
/// scope released: what the engine leaves for an unchanged resync.
pub(crate) async fn finished_resync(
    bus: &store::CommandBus,
    owner: &store::Metadata,
    engine: &store::Metadata,
    tenant: &domain::TenantKey,
) -> anyhow::Result<uuid::Uuid> {
    use domain::run::{OperationRun, RunCommand};
    let err = |e: app::AppError| anyhow::anyhow!("{e}");
    let started = app::start_operation(bus, owner, tenant, "policy.resync", "conditional_access")
        .await
        .map_err(err)?;
    let run_id = started.run_id();
    let id = run_id.to_string();
    for command in [
        RunCommand::Start,
        RunCommand::CompleteStep {
            step: "snapshot_policies".into(),
            attempt: 1,
            summary: serde_json::json!({ "policy_count": 12, "unchanged": true }),
        },
        RunCommand::Succeed {
            summary_counts: [("policy_count".to_owned(), 12)].into(),
        },
    ] {
        bus.execute::<OperationRun>(&id, command, engine)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut uow = bus.begin().await?;
    let run = uow
        .load::<OperationRun>(&id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .aggregate;
    app::release_scope(&mut uow, &run, run_id)
        .await
        .map_err(err)?;
    uow.commit().await?;
    Ok(run_id.as_uuid())
}

/// Gives `tenant` a Microsoft connection with a credential and consent, so its runs start.
pub(crate) async fn connect_tenant(
    bus: &store::CommandBus,
    vault: &store::Vault,
    owner: &store::Metadata,
    tenant: &domain::TenantKey,
    guid: domain::EntraTenantId,
) -> anyhow::Result<()> {
    let err = |e: app::AppError| anyhow::anyhow!("{e}");
    let connection = app::create_connection(
        bus,
        owner,
        tenant,
        domain::Provider::Microsoft,
        guid,
        "Graph",
    )
    .await
    .map_err(err)?;
    let secret = secrecy::SecretString::from(format!("bench-secret-{guid}"));
    app::set_credential(bus, vault, owner, connection, "app", &secret, None)
        .await
        .map_err(err)?;
    app::change_connection(
        bus,
        owner,
        connection,
        domain::connection::ConnectionCommand::GrantConsent {
            scopes: vec!["Policy.Read.All".into()],
        },
    )
    .await
    .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each side gets its share of the operations, in turns whose first side alternates,
    /// and its result counts only its own.
    #[tokio::test]
    async fn phases_in_turns_alternate_and_keep_their_own_counts() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let side = |name: char| {
            let order = order.clone();
            move |_: usize| {
                let order = order.clone();
                async move {
                    let mut order = order.lock().unwrap();
                    if order.last() != Some(&name) {
                        order.push(name);
                    }
                    Ok(())
                }
            }
        };
        let [(a, _), (b, _)] = measure_in_turns(23, 1, side('a'), side('b')).await.unwrap();
        assert_eq!((a.operations, b.operations), (23, 23));
        assert!(a.per_second > 0.0 && b.per_second > 0.0);
        // A B, B A, A B, B A, A B: one side's turns run on where two turns meet (with A B
        // every time this would read "ababababab").
        let order: String = order.lock().unwrap().iter().collect();
        assert_eq!(order, "ababab");
    }
}
