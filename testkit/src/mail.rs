//! Inbound mail on a clock only the test moves: a fresh database, a simulated tenant made
//! ready, the service's API (its webhook) on a free port for the simulator to call, and
//! mail workers the test steps by hand. A new worker is what a restarted service starts
//! with: nothing but the database.

use std::net::SocketAddr;
use std::sync::Arc;

use domain::mailbox::{Mailbox, MailboxId};
use domain::{FixedClock, Role, TenantKey};
use graph::sim::{SimConfig, SimHandle};
use secrecy::SecretString;
use store::{CommandBus, Metrics, Vault};
use tokio_util::sync::CancellationToken;
use workflows::mail::{MailSettings, MailWorker};

use crate::tenants::{vault, JWT_SECRET};

/// One simulated tenant, its mailbox user, the webhook and the controlled clock.
pub struct MailWorld {
    pub db: crate::TestDb,
    pub bus: CommandBus,
    pub clock: FixedClock,
    pub vault: Vault,
    pub sim: SimHandle,
    pub metrics: Metrics,
    pub tenant: TenantKey,
    /// The tenant's Entra id in the simulator.
    pub entra: uuid::Uuid,
    /// The UPN of the tenant's first mailbox user.
    pub user: String,
    addr: SocketAddr,
    shutdown: CancellationToken,
    /// Its tasks end when it is dropped.
    _background: runtime::Running,
}

impl MailWorld {
    /// Subscriptions may be asked for up to a week ahead of the simulator's real clock,
    /// so the test's clock can run ahead of it.
    pub async fn new() -> Self {
        let db = crate::TestDb::new().await;
        let clock = FixedClock::at(chrono::Utc::now());
        let bus = db.bus_on(&clock).await;
        let sim = graph::sim::spawn(SimConfig {
            tenants: 1,
            seed: 19,
            subscription_max_minutes: 7 * 24 * 60 * 4,
            ..SimConfig::default()
        })
        .await;
        let t = sim.tenants().remove(0);
        let (tenant, _) = crate::ReadyTenant::simulated(&bus, &t).build().await;
        let metrics = Metrics::new();
        let pool = db.pool().await;
        let shutdown = CancellationToken::new();
        let state = api::AppState(Arc::new(api::App {
            pool: pool.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            vault: vault(),
            auth: api::auth::Authenticator::new(&SecretString::from(JWT_SECRET.to_owned())),
            runs: api::graphql::RunFeed::listen(pool.clone(), shutdown.clone()),
            schema: api::graphql::schema(),
            persisted: api::graphql::PersistedQueries::open(),
            workflows: workflows::Registry::standard(),
            limits: api::Limits::default(),
            graph_endpoint: "simulator".to_owned(),
            mail_recorder: Default::default(),
            replica: None,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("the port bound");
        // The read models (and the rest behind the log), but no engine or mail worker:
        // the test steps its own workers.
        let parts = runtime::Parts {
            bus: bus.clone(),
            vault: vault(),
            graph: Arc::new(graph::GraphClient::new(sim.graph_config()).expect("a Graph client")),
            metrics: metrics.clone(),
            workflows: workflows::Registry::standard(),
        };
        let options = runtime::Options {
            workers: 0,
            scheduler_poll: None,
            mail: None,
            ..runtime::Options::default()
        };
        let background = runtime::start(&parts, &options, shutdown.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, api::router(state))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self {
            user: t.mailboxes[0].user_principal_name.clone(),
            entra: t.tenant_id,
            db,
            bus,
            clock,
            vault: vault(),
            sim,
            metrics,
            tenant,
            addr,
            shutdown,
            _background: background,
        }
    }

    /// `http://127.0.0.1:<port>`: the API (GraphQL and the webhook).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The mail settings a worker of this world uses: the webhook on this world's port.
    pub fn settings(&self) -> MailSettings {
        let hook =
            url::Url::parse(&format!("http://{}/webhooks/graph/mail", self.addr)).expect("a URL");
        MailSettings {
            notification_url: Some(hook.clone()),
            lifecycle_url: Some(hook),
            ..MailSettings::default()
        }
    }

    /// A mail worker as a freshly started service has one.
    pub fn worker(&self) -> Arc<MailWorker> {
        self.worker_with(self.settings())
    }

    /// A mail worker with other settings (start from [`MailWorld::settings`]).
    pub fn worker_with(&self, settings: MailSettings) -> Arc<MailWorker> {
        Arc::new(MailWorker::new(
            self.bus.clone(),
            self.vault.clone(),
            Arc::new(graph::GraphClient::new(self.sim.graph_config()).expect("a Graph client")),
            self.metrics.clone(),
            settings,
            format!("mail-test-{}", uuid::Uuid::new_v4().simple()),
        ))
    }

    /// Adds a mailbox for the world's user (with a delegated refresh token when given).
    pub async fn add_mailbox(&self, refresh_token: Option<String>) -> MailboxId {
        app::mailboxes::add_mailbox(
            &self.bus,
            &self.vault,
            &crate::meta(self.tenant.workspace.as_str(), Role::Owner),
            app::mailboxes::NewMailbox {
                tenant: self.tenant.clone(),
                address: self.user.clone(),
                delegated: refresh_token.map(|r| store::DelegatedTokens {
                    access_token: SecretString::from(String::new()),
                    refresh_token: SecretString::from(r),
                    expires_at: chrono::DateTime::<chrono::Utc>::MIN_UTC,
                }),
                legacy_client_state: None,
            },
        )
        .await
        .expect("the mailbox is added")
    }

    /// The mailbox as its events say.
    pub async fn mailbox(&self, id: MailboxId) -> Mailbox {
        self.bus
            .load::<Mailbox>(&id.to_string())
            .await
            .expect("the mailbox loads")
            .aggregate
    }

    /// When the mailbox's subscription timer is due next, if it has one.
    pub async fn renewal_due(&self, id: MailboxId) -> Option<chrono::DateTime<chrono::Utc>> {
        let pool = self.db.pool().await;
        sqlx::query_scalar(
            "SELECT due_at FROM mail_work WHERE kind = 'subscription' AND mailbox_id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&pool)
        .await
        .expect("the timer reads")
    }
}

impl Drop for MailWorld {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
