//! The service in this process: the Graph simulator, the runtime (projections, task feed,
//! snapshot writer, engines, scheduler) and the API on a free loopback port, wired as
//! `tenantflow serve` wires them. For tests of the API and of the runtime as a whole; the
//! end-to-end tests run the real binary instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use domain::Role;
use graph::sim::{SimConfig, SimHandle};
use secrecy::SecretString;
use sqlx::PgPool;
use store::{CommandBus, Metrics, Vault};
use tokio_util::sync::CancellationToken;

use crate::db::TestDb;
use crate::graphql::GraphqlClient;
use crate::tenants::{vault, JWT_SECRET};

/// A running service on its own fresh database. Stops on [`stop`](Self::stop), or (without
/// waiting for its tasks) when dropped.
pub struct TestApp {
    pub db: TestDb,
    pub pool: PgPool,
    pub bus: CommandBus,
    pub vault: Vault,
    addr: SocketAddr,
    sim: SimHandle,
    shutdown: CancellationToken,
    background: Option<runtime::Running>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// The runtime options of [`start`](Self::start): two engines, and a scheduler that
    /// looks for due schedules every second.
    pub fn options() -> runtime::Options {
        runtime::Options {
            owner: "test-app".into(),
            workers: 2,
            scheduler_poll: Some(Duration::from_secs(1)),
            ..runtime::Options::default()
        }
    }

    /// Starts the service against a simulated fleet of two tenants.
    pub async fn start() -> Self {
        let fleet = SimConfig {
            tenants: 2,
            seed: 11,
            ..SimConfig::default()
        };
        Self::start_with(fleet, Self::options()).await
    }

    /// Starts the service against a simulator started with `fleet`, its runtime with
    /// `options`.
    pub async fn start_with(fleet: SimConfig, options: runtime::Options) -> Self {
        Self::serve(fleet, options, api::graphql::PersistedQueries::open()).await
    }

    /// Starts the service as [`start`](Self::start) does, accepting only the persisted
    /// queries `persisted` allows.
    pub async fn start_with_persisted(persisted: api::graphql::PersistedQueries) -> Self {
        let fleet = SimConfig {
            tenants: 2,
            seed: 11,
            ..SimConfig::default()
        };
        Self::serve(fleet, Self::options(), persisted).await
    }

    async fn serve(
        fleet: SimConfig,
        options: runtime::Options,
        persisted: api::graphql::PersistedQueries,
    ) -> Self {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let metrics = Metrics::new();
        let bus = CommandBus::new(pool.clone(), domain::Services::system(), metrics.clone());
        let sim = graph::sim::spawn(fleet).await;
        let graph = graph::GraphClient::new(sim.graph_config()).expect("a Graph client");
        let parts = runtime::Parts {
            bus: bus.clone(),
            vault: vault(),
            graph: Arc::new(graph),
            metrics: metrics.clone(),
            workflows: workflows::Registry::standard(),
        };
        let shutdown = CancellationToken::new();
        let state = api::AppState(Arc::new(api::App {
            pool: pool.clone(),
            bus: bus.clone(),
            metrics,
            vault: vault(),
            auth: api::auth::Authenticator::new(&SecretString::from(JWT_SECRET.to_owned())),
            runs: api::graphql::RunFeed::listen(pool.clone(), shutdown.clone()),
            schema: api::graphql::schema(),
            persisted,
            workflows: parts.workflows.clone(),
            limits: api::Limits::default(),
            graph_endpoint: "simulator".to_owned(),
            mail_recorder: Default::default(),
            replica: None,
        }));
        let background = runtime::start(&parts, &options, shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("the port bound");
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .expect("the API serves");
        });
        Self {
            db,
            pool,
            bus,
            vault: vault(),
            addr,
            sim,
            shutdown,
            background: Some(background),
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The Graph simulator the service calls.
    pub fn sim(&self) -> &SimHandle {
        &self.sim
    }

    /// A bearer token for someone with `role` in `workspace`, valid for an hour.
    pub fn token(&self, workspace: &str, role: Role) -> String {
        crate::graphql::token(workspace, role)
    }

    /// A GraphQL client for someone with `role` in `workspace`.
    pub fn client(&self, workspace: &str, role: Role) -> GraphqlClient {
        GraphqlClient::new(&self.url(), workspace, role)
    }

    /// Stops the API and the runtime, and waits until they have.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(background) = self.background.take() {
            background.stop().await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The runtime's tasks are aborted with it; the server stops on the token.
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
