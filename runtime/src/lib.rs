//! The one runtime wiring: everything that works behind the event log in a running
//! service — the read-model projections, the workflow task feed, the aggregate snapshot
//! writer, the audit chain's sealer, the workflow engines and the scheduler — started
//! together, woken by the same notifications, and stopped together. `tenantflow serve`,
//! the benches and the tests all start it here, so what is tested is what runs.

use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use store::{CommandBus, Consumer, ConsumerRunner, Metrics, RunnerOptions, Vault, Wakeups};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use workflows::{Backoff, Engine, Registry, Scheduler};

/// What the runtime works with.
#[derive(Clone)]
pub struct Parts {
    pub bus: CommandBus,
    pub vault: Vault,
    pub graph: Arc<dyn graph::GraphApi>,
    pub metrics: Metrics,
    /// The workflows the engines run and the scheduler starts.
    pub workflows: Registry,
}

/// How much of the runtime to start, and how it paces itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// This instance's name on task leases (each engine adds its number).
    pub owner: String,
    /// Engines advancing runs at once (0: none, e.g. a read-only instance).
    pub workers: usize,
    pub lease: Duration,
    pub backoff: Backoff,
    pub write_window: Duration,
    /// How often the scheduler looks for due schedules without an event waking it;
    /// `None`: no scheduler.
    pub scheduler_poll: Option<Duration>,
    /// Whether to run the read-model projections.
    pub projections: bool,
    pub consumers: RunnerOptions,
    /// A transaction open longer than this holding back the log is reported (metric,
    /// readiness warning, log); `None`: not watched.
    pub horizon_threshold: Option<Duration>,
    /// Inbound mail's worker (fetches, subscription timers, tests); `None`: not run here.
    pub mail: Option<workflows::mail::MailSettings>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            owner: "tenantflow".to_owned(),
            workers: 4,
            lease: Engine::DEFAULT_LEASE,
            backoff: Backoff::default(),
            write_window: Engine::DEFAULT_WRITE_WINDOW,
            scheduler_poll: Some(Duration::from_secs(15)),
            projections: true,
            consumers: RunnerOptions::default(),
            horizon_threshold: Some(Duration::from_secs(30)),
            mail: Some(workflows::mail::MailSettings::default()),
        }
    }
}

/// The catch-up consumers a service runs: the projections (if asked for), the workflow
/// task feed, the aggregate snapshot writer and the audit chain's sealer.
pub fn consumers(projections: bool) -> Vec<Arc<dyn Consumer>> {
    let mut all: Vec<Arc<dyn Consumer>> = Vec::new();
    if projections {
        // Each projection is its own consumer (upcast), payload filter and all.
        all.extend(
            projections::all()
                .into_iter()
                .map(|p| p as Arc<dyn Consumer>),
        );
    }
    all.push(Arc::new(workflows::TaskFeed));
    all.push(Arc::new(store::SnapshotWriter));
    all.push(Arc::new(store::AuditSealer));
    all
}

/// The runtime's background tasks, running until [`Running::stop`] (or until `shutdown`
/// is cancelled by someone else).
pub struct Running {
    pub shutdown: CancellationToken,
    /// Woken whenever events are committed; for callers that wait on the log too.
    pub wakeups: Wakeups,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops every background task and waits for them to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the consumers, the engines and the scheduler. They stop when `shutdown` is
/// cancelled.
pub fn start(parts: &Parts, options: &Options, shutdown: CancellationToken) -> Running {
    let pool: &PgPool = parts.bus.pool();
    let wakeups = Wakeups::listen(pool.clone(), shutdown.clone());
    let mut tasks = JoinSet::new();
    for consumer in consumers(options.projections) {
        let runner = ConsumerRunner::new(
            pool.clone(),
            consumer,
            options.consumers.clone(),
            parts.metrics.clone(),
        );
        tasks.spawn(runner.run(wakeups.clone(), shutdown.clone()));
    }
    // Engines wake when the task feed made work due, not on every append (and listen
    // only where there are engines).
    if options.workers > 0 {
        let task_wakeups =
            Wakeups::listen_on(pool.clone(), store::log::TASKS_CHANNEL, shutdown.clone());
        for i in 0..options.workers {
            let engine = Engine {
                lease: options.lease,
                backoff: options.backoff,
                write_window: options.write_window,
                workflows: parts.workflows.clone(),
                ..Engine::new(
                    parts.bus.clone(),
                    parts.vault.clone(),
                    parts.graph.clone(),
                    format!("{}-{i}", options.owner),
                )
            };
            tasks.spawn(engine.run(task_wakeups.clone(), shutdown.clone()));
        }
    }
    if let (Some(settings), true) = (&options.mail, options.workers > 0) {
        let worker = workflows::mail::MailWorker::new(
            parts.bus.clone(),
            parts.vault.clone(),
            parts.graph.clone(),
            parts.metrics.clone(),
            settings.clone(),
            format!("{}-mail", options.owner),
        );
        // It wakes when mail work was committed, not on every append.
        let mail_wakeups =
            Wakeups::listen_on(pool.clone(), store::log::MAIL_CHANNEL, shutdown.clone());
        tasks.spawn(worker.run(mail_wakeups, shutdown.clone()));
    }
    if let Some(poll) = options.scheduler_poll {
        // Every instance runs a scheduler; each tick fires once across them.
        let scheduler = Scheduler {
            bus: parts.bus.clone(),
            workflows: parts.workflows.clone(),
            poll,
        };
        tasks.spawn(scheduler.run(wakeups.clone(), shutdown.clone()));
    }
    if let Some(threshold) = options.horizon_threshold {
        tasks.spawn(store::horizon::watch(
            pool.clone(),
            parts.metrics.clone(),
            threshold,
            (threshold / 3).clamp(Duration::from_secs(1), Duration::from_secs(10)),
            shutdown.clone(),
        ));
    }
    Running {
        shutdown,
        wakeups,
        tasks,
    }
}
