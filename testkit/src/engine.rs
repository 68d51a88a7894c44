//! A workflow engine the test drives by hand, on a clock only the test moves.

use app::Started;
use domain::run::OperationRun;
use domain::{FixedClock, RunId, TenantKey};
use std::sync::Arc;
use std::time::Duration;
use store::{CommandBus, Metadata};
use workflows::{Backoff, Engine, TaskFeed};

use crate::consumers::{SteppedConsumer, CATCH_UP};
use crate::wait::eventually;

/// An engine and its task feed, advanced only by the test; the engine's clock (and the
/// aggregates', when the bus was made with [`TestDb::bus_on`](crate::TestDb::bus_on))
/// moves only when the test moves it, or when [`drive`](Self::drive) finds nothing due.
pub struct SteppedEngine {
    pub clock: FixedClock,
    pub bus: CommandBus,
    /// Public so a test can change its write window or register a workflow.
    pub engine: Engine,
    pub feed: SteppedConsumer,
}

impl SteppedEngine {
    /// An engine calling the Graph simulator `sim` (without the client's own retries: the
    /// engine's are under test), with short backoffs.
    pub fn against(sim: &graph::sim::SimHandle, bus: &CommandBus, clock: &FixedClock) -> Self {
        let mut config = sim.graph_config();
        config.retry = graph::RetryPolicy::none();
        let graph = graph::GraphClient::new(config).expect("a Graph client for the simulator");
        let engine = Engine {
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            ..Engine::new(bus.clone(), crate::vault(), Arc::new(graph), "test-runner")
        };
        Self {
            clock: clock.clone(),
            bus: bus.clone(),
            engine,
            feed: SteppedConsumer::new(bus.pool(), Arc::new(TaskFeed)),
        }
    }

    /// Starts a run of `run_type` on `tenant` as `by`, and drives it to its end.
    pub async fn run(&self, by: &Metadata, tenant: &TenantKey, run_type: &str) -> OperationRun {
        let run_id = self.start(by, tenant, run_type).await;
        self.drive(run_id).await
    }

    /// Starts a run that must be queued; returns its id once the feed has made its task.
    pub async fn queue(&self, by: &Metadata, tenant: &TenantKey, run_type: &str) -> RunId {
        let run_id = self.start(by, tenant, run_type).await;
        let what = format!("a task for run {run_id}");
        eventually(&what, CATCH_UP, || async {
            self.feed.drain().await;
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM workflow_tasks WHERE run_id = $1)",
            )
            .bind(run_id.0)
            .fetch_one(self.bus.pool())
            .await
            .expect("look for a task")
        })
        .await;
        run_id
    }

    async fn start(&self, by: &Metadata, tenant: &TenantKey, run_type: &str) -> RunId {
        match app::start_operation(&self.bus, by, tenant, run_type, "ca").await {
            Ok(Started::Queued(run_id)) => run_id,
            other => panic!("expected a queued {run_type} run: {other:?}"),
        }
    }

    /// Drives feed and engine until the run ends (bounded); when nothing is due, the clock
    /// moves a second ahead, so retries come due without waiting for them.
    pub async fn drive(&self, run_id: RunId) -> OperationRun {
        let what = format!("run {run_id} to end");
        eventually(&what, CATCH_UP, || async {
            self.feed.drain().await;
            if !matches!(self.engine.tick().await, Ok(true)) {
                self.clock.advance(chrono::Duration::seconds(1));
            }
            let run = self
                .bus
                .load::<OperationRun>(&run_id.to_string())
                .await
                .expect("load the run")
                .aggregate;
            (!run.is_active()).then_some(run)
        })
        .await
    }
}

/// A fresh database with one of the simulator's tenants registered, ready (a default
/// connection with its real simulated credentials and consent), and an engine stepped by
/// the test against the simulator, on a clock only the test (or `drive`) moves.
pub struct OneTenant {
    pub db: crate::TestDb,
    pub stepped: SteppedEngine,
    pub sim: graph::sim::SimHandle,
    pub tenant: TenantKey,
    pub connection: domain::ConnectionId,
    /// The tenant's Entra id in the simulator.
    pub entra: uuid::Uuid,
}

impl OneTenant {
    /// The world of a fleet of one simulated tenant made from `seed`.
    pub async fn new(seed: u64) -> Self {
        let db = crate::TestDb::new().await;
        let clock = FixedClock::at(chrono::Utc::now());
        let bus = db.bus_on(&clock).await;
        let sim = graph::sim::spawn(graph::sim::SimConfig {
            tenants: 1,
            seed,
            ..graph::sim::SimConfig::default()
        })
        .await;
        let t = sim.tenants().remove(0);
        let (tenant, connection) = crate::ReadyTenant::simulated(&bus, &t).build().await;
        Self {
            stepped: SteppedEngine::against(&sim, &bus, &clock),
            db,
            sim,
            tenant,
            connection,
            entra: t.tenant_id,
        }
    }
}
