//! Wiring: database (embedded or external), migrations, background consumers and the API.

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use std::future::IntoFuture;
use std::str::FromStr;
use std::sync::Arc;
use store::{EmbeddedOptions, EmbeddedPostgres, Metrics};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The database the service uses, and the embedded cluster behind it if we started one.
pub struct Database {
    pub pool: PgPool,
    pub embedded: Option<EmbeddedPostgres>,
    connect_options: PgConnectOptions,
}

impl Database {
    /// Connects to `DATABASE_URL`, or starts the embedded cluster and uses its
    /// `tenantflow` database; then applies migrations.
    pub async fn open(config: &Config, database: &str) -> anyhow::Result<Self> {
        Self::open_with(config, database, &[]).await
    }

    /// Like [`open`](Self::open), for the service: its sessions carry the configured
    /// statement and idle-in-transaction timeouts, so a stuck statement or a forgotten
    /// transaction cannot hold back the log (operator commands are not limited).
    pub async fn open_for_service(config: &Config) -> anyhow::Result<Self> {
        let mut settings = Vec::new();
        if config.database_statement_timeout_seconds > 0 {
            let ms = config
                .database_statement_timeout_seconds
                .saturating_mul(1000);
            settings.push(("statement_timeout", ms.to_string()));
        }
        if config.database_idle_in_transaction_timeout_seconds > 0 {
            let ms = config
                .database_idle_in_transaction_timeout_seconds
                .saturating_mul(1000);
            settings.push(("idle_in_transaction_session_timeout", ms.to_string()));
        }
        Self::open_with(config, "tenantflow", &settings).await
    }

    async fn open_with(
        config: &Config,
        database: &str,
        settings: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let (options, embedded) = match &config.database_url {
            Some(url) => {
                let options = PgConnectOptions::from_str(url.expose_secret())
                    .context("DATABASE_URL is not a valid postgres:// URL")?;
                tracing::info!(
                    host = options.get_host(),
                    "using the PostgreSQL server from DATABASE_URL"
                );
                (options, None)
            }
            None => {
                let opts = EmbeddedOptions {
                    data_dir: config.data_dir.clone(),
                    ephemeral: false,
                    remove_on_exit: false,
                };
                let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
                    .await
                    .context("embedded PostgreSQL start-up panicked")??;
                let admin = store::connect(pg.connect_options("postgres"), 1).await?;
                store::db::ensure_database(&admin, database).await?;
                admin.close().await;
                (pg.connect_options(database), Some(pg))
            }
        };
        let options = if settings.is_empty() {
            options
        } else {
            options.options(settings.iter().map(|(k, v)| (*k, v.as_str())))
        };
        let pool = store::connect(options.clone(), config.database_max_connections).await?;
        store::migrate(&pool).await?;
        tracing::info!("database migrations are up to date");
        Ok(Self {
            pool,
            embedded,
            connect_options: options,
        })
    }

    /// Like [`open`](Self::open), but on a scratch database that is dropped and created
    /// anew (benchmarks). With `DATABASE_URL`, the scratch database lives on that server.
    pub async fn open_scratch(config: &Config, database: &str) -> anyhow::Result<Self> {
        let admin_db = Self::open(config, "tenantflow").await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            store::db::quote_ident(database)
        ))
        .execute(&admin_db.pool)
        .await?;
        sqlx::query(&format!(
            "CREATE DATABASE {}",
            store::db::quote_ident(database)
        ))
        .execute(&admin_db.pool)
        .await?;
        let options = admin_db.connect_options.clone().database(database);
        let pool = store::connect(options, config.database_max_connections).await?;
        store::migrate(&pool).await?;
        admin_db.pool.close().await;
        Ok(Self {
            pool,
            embedded: admin_db.embedded,
            connect_options: admin_db.connect_options,
        })
    }

    /// A URL of `database` on this database's server, for child processes (`chaos`).
    pub fn url_of(&self, config: &Config, database: &str) -> anyhow::Result<String> {
        use secrecy::ExposeSecret;
        if let Some(pg) = &self.embedded {
            return Ok(pg.url(database).expose_secret().to_owned());
        }
        let raw = config
            .database_url
            .as_ref()
            .context("no DATABASE_URL and no embedded cluster")?;
        let mut url = url::Url::parse(raw.expose_secret()).context("DATABASE_URL is no URL")?;
        url.set_path(&format!("/{database}"));
        Ok(url.to_string())
    }

    /// Closes the pool and stops the embedded cluster, if any. Connections still held
    /// (by work cancelled at a shutdown deadline) get a few seconds; the cluster's fast
    /// stop ends them after that.
    pub async fn close(self) -> anyhow::Result<()> {
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still in use at stop: closing them");
        }
        if let Some(pg) = self.embedded {
            tokio::task::spawn_blocking(move || pg.stop()).await??;
        }
        Ok(())
    }
}

/// Reads a secret from the configuration, or from `<data_dir>/<file>`, generating it
/// there (0600) the first time.
fn secret_or_key_file(
    config: &Config,
    configured: &Option<secrecy::SecretString>,
    file: &str,
) -> anyhow::Result<secrecy::SecretString> {
    if let Some(k) = configured {
        return Ok(k.clone());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let path = config.data_dir.join(file);
    if config.database_url.is_some() && !path.exists() {
        tracing::warn!(path = %path.display(), "no {file} configured: generating one into the data directory; keep it safe");
    }
    Ok(store::Vault::load_or_create_key_file(&path)?)
}

/// The API's token authenticator.
pub fn authenticator(config: &Config) -> anyhow::Result<api::auth::Authenticator> {
    let secret = secret_or_key_file(config, &config.jwt_secret, "jwt.key")?;
    Ok(api::auth::Authenticator::new(&secret))
}

/// The credential vault: the configured key, or one generated once into the data
/// directory (0600).
pub fn open_vault(config: &Config) -> anyhow::Result<store::Vault> {
    let key = secret_or_key_file(config, &config.vault_key, "vault.key")?;
    Ok(store::Vault::from_base64(&key)?)
}

/// `tenantflow migrate`.
pub async fn migrate_only(config: Config) -> anyhow::Result<()> {
    let db = Database::open(&config, "tenantflow").await?;
    db.close().await
}

/// What the API is configured with beyond the store.
pub struct ApiSettings {
    pub auth: api::auth::Authenticator,
    pub persisted: api::graphql::PersistedQueries,
    /// The workflows runs may be started for.
    pub workflows: workflows::Registry,
    pub limits: api::Limits,
    /// Which Graph the workflows call, shown on every connection.
    pub graph_endpoint: String,
    /// Where queries read, when not from the primary.
    pub replica: Option<store::ReadReplica>,
}

/// The API's state as the service serves it (also served by `bench graphql`).
pub fn app_state(
    pool: &PgPool,
    bus: store::CommandBus,
    metrics: Metrics,
    vault: store::Vault,
    settings: ApiSettings,
    shutdown: &CancellationToken,
) -> api::AppState {
    api::AppState(Arc::new(api::App {
        pool: pool.clone(),
        bus,
        metrics,
        vault,
        auth: settings.auth,
        runs: api::graphql::RunFeed::listen(pool.clone(), shutdown.clone()),
        schema: api::graphql::schema(),
        persisted: settings.persisted,
        workflows: settings.workflows,
        limits: settings.limits,
        graph_endpoint: settings.graph_endpoint,
        mail_recorder: Default::default(),
        replica: settings.replica,
    }))
}

/// The read replica of `database_read_url`, checked to be a standby of this database.
async fn read_replica(
    config: &Config,
    db: &Database,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<store::ReadReplica>> {
    let Some(url) = &config.database_read_url else {
        return Ok(None);
    };
    let options = PgConnectOptions::from_str(url.expose_secret())
        .context("database_read_url is not a valid postgres:// URL")?;
    let pool = store::connect(options, config.database_max_connections)
        .await
        .context("cannot connect to the read replica (database_read_url)")?;
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        standby,
        "database_read_url names a server that is not a standby (pg_is_in_recovery() is false): it would not follow the primary"
    );
    let options = store::ReplicaOptions {
        max_lag: std::time::Duration::from_millis(config.database_read_max_lag_ms),
        ..store::ReplicaOptions::default()
    };
    let replica = store::ReadReplica::start(db.pool.clone(), pool, options, shutdown.clone());
    replica.sample().await;
    tracing::info!(
        max_lag_ms = config.database_read_max_lag_ms,
        "GraphQL queries read from the replica"
    );
    Ok(Some(replica))
}

/// What one request may cost, from the configuration.
fn api_limits(config: &Config) -> api::Limits {
    api::Limits {
        body_bytes: config.http_body_limit_bytes,
        request_timeout: std::time::Duration::from_secs(
            config.graphql_request_timeout_seconds.max(1),
        ),
        ..api::Limits::default()
    }
}

/// The Graph endpoints the service calls when the demo is off: the configured ones, the
/// public Microsoft cloud for what is not configured.
fn configured_graph(config: &Config) -> anyhow::Result<graph::GraphConfig> {
    let defaults = graph::GraphConfig::microsoft();
    if config.login_base_url.is_none() && config.graph_base_url.is_none() {
        return Ok(defaults);
    }
    let parse = |u: &Option<String>, default: &url::Url, what: &str| -> anyhow::Result<url::Url> {
        match u {
            Some(u) => url::Url::parse(u).with_context(|| format!("{what} is not a URL")),
            None => Ok(default.clone()),
        }
    };
    Ok(graph::GraphConfig::with_bases(
        parse(
            &config.login_base_url,
            &defaults.login_base,
            "login_base_url",
        )?,
        parse(
            &config.graph_base_url,
            &defaults.graph_base,
            "graph_base_url",
        )?,
    ))
}

/// `tenantflow serve`.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Everything that can be refused is checked, and the port taken, before PostgreSQL
    // starts or the demo writes a row: a bad key or a busy port leaves nothing behind.
    let vault = open_vault(&config)?;
    let auth = authenticator(&config)?;
    let configured = configured_graph(&config)?;
    let persisted = persisted_queries(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let db = Database::open_for_service(&config).await?;
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let bus = store::CommandBus::new(db.pool.clone(), domain::Services::system(), metrics.clone());
    let demo = if config.demo_enabled() {
        tracing::warn!(
            "demo mode: every workspace's workflows call the built-in Graph simulator, not Microsoft; \
             set graph_base_url / login_base_url (or demo = false) for real tenants"
        );
        Some(crate::demo::start(&bus, &vault, config.demo_tenants).await?)
    } else {
        tracing::info!(graph = %configured.graph_base, login = %configured.login_base, "calling Microsoft Graph");
        None
    };
    let (graph_config, graph_endpoint) = match &demo {
        Some(sim) => (sim.graph_config(), "simulator".to_owned()),
        None => {
            let endpoint = configured.graph_base.to_string();
            (configured, endpoint)
        }
    };
    let graph_client: Arc<dyn graph::GraphApi> =
        Arc::new(graph::GraphClient::new(graph_config).map_err(|e| anyhow::anyhow!("{e}"))?);
    let parts = runtime::Parts {
        bus: bus.clone(),
        vault: vault.clone(),
        graph: graph_client,
        metrics: metrics.clone(),
        workflows: workflows::Registry::standard(),
    };
    let replica = read_replica(&config, &db, &shutdown).await?;
    let state = app_state(
        &db.pool,
        bus,
        metrics.clone(),
        vault,
        ApiSettings {
            auth: auth.clone(),
            persisted,
            workflows: parts.workflows.clone(),
            limits: api_limits(&config),
            graph_endpoint,
            replica,
        },
        &shutdown,
    );
    // Projections, task feed, snapshot writer, engines and scheduler, woken by NOTIFY
    // from the events table.
    let mut options = runtime_options(&config);
    options.mail = Some(mail_settings(&config, addr)?);
    let background = runtime::start(&parts, &options, shutdown.clone());
    // Event log partitions ahead of the appends (start-up made the first ones).
    let _partitions =
        store::partitions::maintain(db.pool.clone(), metrics.clone(), shutdown.clone());
    if let Some(sim) = &demo {
        crate::demo::start_mail(&parts.bus, &parts.vault, sim).await?;
    }

    tracing::info!(
        "tenantflow is listening on http://{addr} (console: http://{addr}/, API: /graphql, health: /healthz, readiness: /readyz, metrics: /metrics)"
    );

    if demo.is_some() {
        let token = auth
            .mint(
                "demo-user",
                crate::demo::WORKSPACE,
                domain::Role::Owner,
                chrono::Duration::hours(12),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        #[allow(clippy::print_stdout)]
        {
            println!(
                "\ntenantflow demo is running.\n  Console:  http://{addr}/ (paste the token below to sign in)\n  Token (owner of workspace `{}`, 12 h; or send it as the header `Authorization: Bearer <token>` to /graphql):\n  {token}\n  Try: {{ tenants {{ edges {{ node {{ id displayName connections {{ status isDefault }} }} }} }} }}\n",
                crate::demo::WORKSPACE
            );
        }
    }

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    let stop = shutdown.clone();
    let mut server = tokio::spawn(
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future(),
    );
    // The server ends only after the shutdown signal (or on an error).
    let ended_early = tokio::select! {
        ended = &mut server => Some(ended),
        () = shutdown.cancelled() => None,
    };
    // Drain, then cancel: requests and workflow steps get the grace period, no more.
    let grace = std::time::Duration::from_secs(config.shutdown_grace_seconds);
    let deadline = tokio::time::Instant::now() + grace;
    let ended = match ended_early {
        Some(ended) => Some(ended),
        None => tokio::time::timeout_at(deadline, &mut server).await.ok(),
    };
    match ended {
        Some(ended) => ended
            .context("HTTP server panicked")?
            .context("HTTP server failed")?,
        None => {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "requests still in flight at the shutdown deadline: cancelled"
            );
            server.abort();
        }
    }
    if tokio::time::timeout_at(deadline, background.stop())
        .await
        .is_err()
    {
        tracing::warn!(grace_seconds = grace.as_secs(), "background work still running at the shutdown deadline: cancelled (its leases expire and another instance takes it over)");
    }
    if let Some(sim) = demo {
        sim.shutdown().await;
    }
    db.close().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The runtime's settings from the configuration.
pub fn runtime_options(config: &Config) -> runtime::Options {
    runtime::Options {
        owner: format!("{}-{}", hostname(), std::process::id()),
        workers: config.workflow_workers.max(1),
        lease: std::time::Duration::from_secs(config.workflow_lease_seconds.max(1)),
        write_window: std::time::Duration::from_millis(config.workflow_write_window_ms),
        scheduler_poll: Some(std::time::Duration::from_secs(
            config.scheduler_poll_seconds.max(1),
        )),
        horizon_threshold: (config.log_horizon_warning_seconds > 0)
            .then(|| std::time::Duration::from_secs(config.log_horizon_warning_seconds)),
        ..runtime::Options::default()
    }
}

/// Inbound mail's settings: the webhook URL Graph posts to (the configured public base,
/// else this instance's address) and the app client from the environment, if given.
pub fn mail_settings(
    config: &Config,
    addr: std::net::SocketAddr,
) -> anyhow::Result<workflows::mail::MailSettings> {
    let base = match &config.mail_webhook_base_url {
        Some(base) => url::Url::parse(base).context("mail_webhook_base_url is not a URL")?,
        None => url::Url::parse(&format!("http://{addr}"))?,
    };
    let hook = base
        .join("webhooks/graph/mail")
        .context("mail_webhook_base_url cannot take the webhook path")?;
    let app_client = match (&config.mail_client_id, &config.mail_client_secret) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        (None, None) => None,
        _ => anyhow::bail!("set both mail_client_id and mail_client_secret, or neither"),
    };
    let defaults = workflows::mail::MailSettings::default();
    Ok(workflows::mail::MailSettings {
        notification_url: Some(hook.clone()),
        lifecycle_url: Some(hook),
        app_client,
        category: config
            .mail_category
            .clone()
            .unwrap_or(defaults.category.clone()),
        move_to: config.mail_processed_folder.clone(),
        ..defaults
    })
}

/// `tenantflow token`.
pub fn print_token(
    config: &Config,
    workspace: &str,
    role: domain::Role,
    subject: &str,
    ttl_hours: i64,
) -> anyhow::Result<()> {
    anyhow::ensure!(ttl_hours > 0, "--ttl-hours must be positive");
    let token = authenticator(config)?
        .mint(subject, workspace, role, chrono::Duration::hours(ttl_hours))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{token}");
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tenantflow".to_owned())
}

/// The persisted queries the API accepts: only a manifest's when one is configured (read
/// and checked before the API serves), else any (APQ).
fn persisted_queries(config: &Config) -> anyhow::Result<api::graphql::PersistedQueries> {
    let Some(path) = &config.graphql_known_queries else {
        return Ok(api::graphql::PersistedQueries::open());
    };
    let manifest = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the known queries in {}", path.display()))?;
    let known = api::graphql::PersistedQueries::only_known(&manifest)
        .with_context(|| format!("the known queries in {}", path.display()))?;
    tracing::info!(manifest = %path.display(), "the API accepts only its known queries");
    Ok(known)
}
