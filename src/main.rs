//! `tenantflow`: the one binary. Parses the command line and calls into the crates.

mod architecture;
mod archive;
mod bench;
mod bench_audit;
mod bench_catchup;
mod bench_contacts;
mod bench_graphql;
mod bench_graphql_floor;
mod bench_idle;
mod bench_mail;
mod bench_resync;
mod bench_runs;
mod bench_verify;
mod chaos;
mod config;
mod demo;
mod demo_contacts;
mod export;
mod rebuild;
mod replay;
mod runs_cmd;
mod serve;
mod state;
mod telemetry;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use config::{Config, LogFormat, Overrides};

/// mimalloc instead of the system allocator: the service allocates many small, short-lived
/// buffers (JSON, rows, HTTP) on several threads, where glibc's malloc spent about a tenth of
/// the process's time in `bench resync`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An event-sourced workflow engine for MSPs who govern many Microsoft 365 tenants.
///
/// Without DATABASE_URL, tenantflow runs an embedded PostgreSQL cluster from the system's
/// PostgreSQL binaries in its data directory. Configuration comes from defaults, then
/// `--config FILE` (or ./tenantflow.toml), then TENANTFLOW_* environment variables, then
/// these flags.
#[derive(Debug, Parser)]
#[command(name = "tenantflow", version, about, long_about)]
struct Cli {
    /// A TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory for the embedded PostgreSQL cluster and keys [default: .tenantflow].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log format [default: pretty].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: database, migrations, projections, workflows and the HTTP API
    /// (the default).
    Serve {
        /// HTTP listen address [default: 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Rebuild read models from the event log in one pass, into shadow tables swapped in at
    /// the end (readers keep the live ones meanwhile); logs progress with an ETA.
    Rebuild {
        /// Read models to rebuild (tenants, connections, runs, audit_log, policies, schedules,
        /// contacts, mailboxes).
        names: Vec<String>,
        /// Rebuild every read model.
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
    /// Recompute the audit hash chains from the event log and compare them with their
    /// seals (R9.4); names the first altered, deleted, inserted or reordered event and exits
    /// non-zero when a chain is broken. The outcome is recorded for `auditChain`.
    Verify {
        /// Verify only this workspace's chain (else the global chain and every workspace's).
        #[arg(long)]
        workspace: Option<String>,
        /// Verify only what follows a kept head, `<position>:<hex hash>` (of the global
        /// chain, or of --workspace's).
        #[arg(long, value_name = "POSITION:HASH")]
        from: Option<store::audit::KeptHead>,
        /// Also check that the recomputed chain has this kept head's hash at its position
        /// (the history before it is the one the head was taken from).
        #[arg(long, value_name = "POSITION:HASH")]
        expect: Option<store::audit::KeptHead>,
        /// Also check the archived segments in this directory (`tenantflow archive`): their
        /// hashes, manifests and links into the live chain.
        #[arg(long, value_name = "DIR")]
        archive: Option<PathBuf>,
    },
    /// Archive closed run histories past their workspace's retention (default 90 days):
    /// each segment is written as gzip-compressed NDJSON with a manifest, fsynced, read back
    /// and checked against the audit chain, and only then are its events removed from the
    /// hot log. Run summaries stay in the run list and the audit log.
    Archive {
        /// The archive directory.
        #[arg(long, value_name = "DIR", default_value = "archive")]
        dir: PathBuf,
        /// Only report what would be archived.
        #[arg(long)]
        dry_run: bool,
        /// First set a workspace's retention of closed runs, `WORKSPACE=DAYS`.
        #[arg(long, value_name = "WORKSPACE=DAYS", value_parser = archive::parse_retention)]
        retention: Option<(String, i64)>,
    },
    /// Write a workspace's sealed events with their chain hashes as NDJSON, for auditors who
    /// check the chain with their own tools (see README, "Audit chain").
    Export {
        #[arg(long)]
        workspace: String,
        /// From the first event recorded at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// To the last event recorded before this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Output file (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Run the Microsoft Graph simulator alone: a seeded fleet of fake tenants speaking
    /// Graph's wire formats, with fault injection (admin API under /_sim).
    GraphSim {
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8081)]
        port: u16,
        /// Customer tenants in the fleet.
        #[arg(long, default_value_t = 5)]
        tenants: usize,
        /// Seed of the fleet (same seed, same fleet).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Chaos test: two `serve` instances on a scratch database (`tenantflow_chaos`), killed
    /// with SIGKILL and restarted at random while the Graph simulator injects faults (429,
    /// 5xx, slow answers, 401) and a workload of every workflow runs; then checks that every
    /// run ended once, no effect was applied twice or lost, and the read models equal a
    /// rebuild. Prints the figures, writes JSON, exits 1 on any violation.
    Chaos {
        /// How long the kills, faults and workload go on (then everything settles).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Simulated tenants (half of them are also mapped for contact sync).
        #[arg(long, default_value_t = 12)]
        tenants: usize,
        /// Chance per workload tick (5 per second) that a fault is injected.
        #[arg(long, default_value_t = 0.3)]
        fault_rate: f64,
        /// Mean seconds between kills.
        #[arg(long, default_value_t = 6)]
        kill_every: u64,
        /// Seed of the fleet and of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write the JSON results.
        #[arg(long, default_value = "chaos.json")]
        json: PathBuf,
    },
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Mint an API bearer token for local use (printed to stdout).
    Token {
        /// The MSP workspace the token is scoped to.
        #[arg(long)]
        workspace: String,
        /// owner, manager, operator, readonly or auditor.
        #[arg(long)]
        role: domain::Role,
        /// Who the token speaks for.
        #[arg(long, default_value = "local-admin")]
        subject: String,
        /// Validity in hours.
        #[arg(long, default_value_t = 12)]
        ttl_hours: i64,
    },
    /// Look at operation runs (`runs show <run-id>`: a run's history as a timeline).
    #[command(subcommand)]
    Runs(runs_cmd::RunsCommand),
    /// Print an aggregate's state as it was at an earlier point of the log, as JSON,
    /// folded from its events up to that point: `state tenant/<workspace>:<guid> --at 1234`.
    State {
        /// `<aggregate type>/<id>`: tenant, connection, run, scope_lock, schedule or
        /// schedule_tick (or the stored type, such as provider_connection).
        aggregate: state::AggregateRef,
        /// A global position (the events at or before it) or an RFC 3339 time (the events
        /// recorded at or before it).
        #[arg(long)]
        at: store::history::AsOf,
        /// Only if the aggregate belongs to this workspace (read as the API reads it).
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Replay finished runs' recorded histories through today's workflow decisions, without
    /// calling Graph or writing anything; exits non-zero when today's code decides
    /// differently anywhere.
    Replay {
        /// The run to replay.
        #[arg(required_unless_present = "all")]
        run_id: Option<domain::RunId>,
        /// Replay every finished run.
        #[arg(long, conflicts_with = "run_id")]
        all: bool,
        /// With --all: only runs queued at or after this RFC 3339 time.
        #[arg(long, requires = "all")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only runs of this workspace (read as the API reads them).
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Measure performance; prints figures and writes them as JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let listen = match &cli.command {
        Some(Command::Serve { listen }) => *listen,
        _ => None,
    };
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        listen,
        log_format: cli.log_format,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("tenantflow: {e}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, &config.log_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve { listen: None }) {
            Command::Serve { .. } => serve::serve(config).await,
            Command::Migrate => serve::migrate_only(config).await,
            Command::Bench(cmd) => bench::run(config, cmd).await,
            Command::Chaos {
                seconds,
                tenants,
                fault_rate,
                kill_every,
                seed,
                json,
            } => {
                let options = chaos::ChaosOptions {
                    seconds,
                    tenants: tenants.max(2),
                    fault_rate,
                    kill_every,
                    seed,
                    json,
                };
                chaos::run(config, options).await
            }
            Command::Rebuild { names, all } => rebuild::run(config, names, all).await,
            Command::Verify {
                workspace,
                from,
                expect,
                archive,
            } => verify::run(config, workspace, from, expect, archive).await,
            Command::Archive {
                dir,
                dry_run,
                retention,
            } => {
                let request = archive::ArchiveRequest {
                    dir,
                    dry_run,
                    retention,
                };
                archive::run(config, request).await
            }
            Command::Export {
                workspace,
                since,
                until,
                out,
            } => export::run(config, workspace, since, until, out).await,
            Command::Runs(command) => runs_cmd::run(config, command).await,
            Command::State {
                aggregate,
                at,
                workspace,
            } => state::run(config, aggregate, at, workspace).await,
            Command::Replay {
                run_id,
                since,
                workspace,
                ..
            } => {
                let selection = match run_id {
                    Some(id) => replay::Selection::One(id),
                    None => replay::Selection::All { since },
                };
                replay::run(config, selection, workspace).await
            }
            Command::GraphSim {
                port,
                tenants,
                seed,
            } => graph::sim::run_standalone(graph::sim::StandaloneOptions {
                port,
                tenants,
                seed,
            })
            .await
            .map_err(anyhow::Error::from),
            Command::Schema => {
                #[allow(clippy::print_stdout)]
                {
                    print!("{}", api::graphql::sdl());
                }
                Ok(())
            }
            Command::Token {
                workspace,
                role,
                subject,
                ttl_hours,
            } => serve::print_token(&config, &workspace, role, &subject, ttl_hours),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
