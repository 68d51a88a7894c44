//! One embedded PostgreSQL cluster per test binary, a fresh database per test, cloned from
//! a template that already has every migration applied (fast).

use domain::{FixedClock, Services};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::{Arc, OnceLock};
use store::{CommandBus, EmbeddedOptions, EmbeddedPostgres, Metrics};

const TEMPLATE: &str = "tenantflow_template";

/// Every read-model table and the key its rows are ordered by, for tests that compare read
/// models (e.g. live against rebuilt). The projections' tests check that this is exactly
/// the set of tables the projections own.
pub const READ_MODEL_TABLES: &[(&str, &str)] = &[
    ("rm_tenants", "tenant_key"),
    ("rm_connections", "connection_id"),
    ("rm_runs", "run_id"),
    ("rm_run_steps", "run_id, step, attempt"),
    ("rm_audit_log", "global_position"),
    ("rm_policy_snapshots", "snapshot_id"),
    ("rm_alerts", "snapshot_id"),
    ("rm_licenses", "tenant_key"),
    ("rm_schedules", "schedule_id"),
    ("rm_partner_connections", "workspace_id"),
    ("rm_clients", "client_id"),
    ("rm_tenant_mappings", "mapping_key"),
    ("rm_contact_sync_results", "run_id, entra_tenant_id"),
    ("rm_contacts", "contact_id"),
    ("rm_reconciliation_items", "item_id"),
    ("rm_contact_settings", "workspace_id"),
    ("rm_mailboxes", "mailbox_id"),
    ("rm_inbound_emails", "email_key"),
];

struct Cluster {
    pg: EmbeddedPostgres,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "tenantflow-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let pg = EmbeddedPostgres::start(&EmbeddedOptions {
            data_dir: dir,
            ephemeral: true,
            remove_on_exit: true,
        })
        .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
        // Each #[tokio::test] has its own runtime, so the template is made on a runtime of
        // its own and no connection outlives it.
        let options = pg.connect_options("postgres");
        let template = pg.connect_options(TEMPLATE);
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the test template")
                .block_on(async move {
                    let mut admin = PgConnection::connect_with(&options).await?;
                    sqlx::query(&format!("CREATE DATABASE {TEMPLATE}"))
                        .execute(&mut admin)
                        .await?;
                    let mut conn = PgConnection::connect_with(&template).await?;
                    store::MIGRATOR.run(&mut conn).await?;
                    conn.close().await?;
                    admin.close().await?;
                    Ok::<(), anyhow::Error>(())
                })
        })
        .join()
        .expect("template thread")
        .unwrap_or_else(|e| panic!("cannot prepare the template database: {e:#}"));
        Cluster { pg }
    })
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDb {
    /// Creates a new database from the migrated template.
    pub async fn new() -> Self {
        Self::create(&format!(" TEMPLATE {TEMPLATE}")).await
    }

    /// A new, empty database (no migrations applied), for tests of the migrations
    /// themselves.
    pub async fn unmigrated() -> Self {
        Self::create("").await
    }

    /// `CREATE DATABASE` with a fresh name and `options` (e.g. its template).
    async fn create(options: &str) -> Self {
        let cluster = tokio::task::spawn_blocking(cluster)
            .await
            .expect("cluster start");
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&cluster.pg.connect_options("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}{options}"))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
        let connect = cluster.pg.connect_options(&name);
        Self {
            name,
            options: connect,
        }
    }

    /// A pool on this test's database.
    pub async fn pool(&self) -> PgPool {
        self.pool_of(10).await
    }

    /// A pool with `max` connections.
    pub async fn pool_of(&self, max: u32) -> PgPool {
        store::connect(self.options.clone(), max)
            .await
            .expect("connect to the test database")
    }

    /// A command bus on this database, on the system clock.
    pub async fn bus(&self) -> CommandBus {
        CommandBus::new(self.pool().await, Services::system(), Metrics::new())
    }

    /// A command bus on this database whose aggregates read time from `clock`.
    pub async fn bus_on(&self, clock: &FixedClock) -> CommandBus {
        let services = Services::new(Arc::new(clock.clone()));
        CommandBus::new(self.pool().await, services, Metrics::new())
    }

    /// A `postgres://` URL for this database over loopback TCP (for child processes).
    pub fn url(&self) -> String {
        use secrecy::ExposeSecret;
        cluster().pg.url(&self.name).expose_secret().to_owned()
    }
}

/// How many events of `event_type` the log holds.
pub async fn count_events(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}
