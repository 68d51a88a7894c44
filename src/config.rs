//! Typed, layered configuration: defaults < config file < environment < command line.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The service's configuration. Secrets are `SecretString`: they cannot be printed. A key
/// it does not know (a misspelled `lisen`) is an error, not silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// An existing PostgreSQL server; without it an embedded cluster is started.
    pub database_url: Option<SecretString>,
    /// A streaming replica of the database (`TENANTFLOW_DATABASE_READ_URL`): GraphQL
    /// queries read there while it is within `database_read_max_lag_ms` of the primary and
    /// has replayed the caller's own last write; everything else uses the primary.
    pub database_read_url: Option<SecretString>,
    /// How far behind the primary (ms) the read replica may be before queries go to the
    /// primary instead.
    pub database_read_max_lag_ms: u64,
    /// Where the embedded cluster, its password and the vault key live.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `tenantflow=debug,sqlx=warn`.
    pub log_filter: String,
    pub database_max_connections: u32,
    /// Base64 AES-256 key for the credential vault; generated into the data directory
    /// (0600) when unset.
    pub vault_key: Option<SecretString>,
    /// HS256 secret for API bearer tokens; generated into the data directory (0600) when
    /// unset.
    pub jwt_secret: Option<SecretString>,
    /// Microsoft login base URL (default: the public cloud). Setting it, or
    /// `graph_base_url`, turns the demo off.
    pub login_base_url: Option<String>,
    /// Microsoft Graph base URL.
    pub graph_base_url: Option<String>,
    /// Start the built-in Graph simulator, register its fleet in the `demo` workspace and
    /// send every workflow to it. Default: on only with the embedded database and no
    /// Microsoft endpoint configured (the first-run demo); a service given `DATABASE_URL`
    /// talks to the real Microsoft endpoints unless this is set explicitly.
    pub demo: Option<bool>,
    /// Tenants in the demo fleet.
    pub demo_tenants: usize,
    /// Workflow runs this instance advances at the same time.
    pub workflow_workers: usize,
    /// How long a claimed workflow task stays leased to this instance; after a crash its
    /// runs are picked up again this long after the claim.
    pub workflow_lease_seconds: u64,
    /// How long (ms) a workflow step's result may wait to be written together with the
    /// next step's; a slower next step gets it written meanwhile. 0 writes each on its own.
    pub workflow_write_window_ms: u64,
    /// How often the scheduler looks for due schedules (events also wake it, at most once
    /// a second).
    pub scheduler_poll_seconds: u64,
    /// After SIGTERM or Ctrl-C: how long in-flight requests and workflow steps may take
    /// to finish before they are cancelled and the process exits.
    pub shutdown_grace_seconds: u64,
    /// The service's own database sessions: a statement running longer is cancelled
    /// (0: no limit). Operator commands (rebuild, verify, export) are not limited.
    pub database_statement_timeout_seconds: u64,
    /// The service's own database sessions: a transaction left idle this long is ended
    /// by PostgreSQL, so it cannot hold back the log's visibility horizon (0: no limit).
    pub database_idle_in_transaction_timeout_seconds: u64,
    /// A transaction anywhere in the cluster open longer than this, holding back what
    /// consumers can read, is reported: a metric, a readiness warning naming its backend,
    /// a log line (0: not watched).
    pub log_horizon_warning_seconds: u64,
    /// Largest HTTP request body the API reads, in bytes (after checking the token).
    pub http_body_limit_bytes: usize,
    /// Longest a GraphQL request may run before it is answered with a timeout.
    pub graphql_request_timeout_seconds: u64,
    /// An Apollo persisted query manifest (JSON). Set, the API accepts only the queries it
    /// lists (by hash or by text); unset, any query, with hashes learnt from clients.
    pub graphql_known_queries: Option<PathBuf>,
    /// Inbound mail: the public HTTPS base URL Graph reaches this service at; the webhook
    /// is `{base}/webhooks/graph/mail`. Unset: this instance's own listen address (only
    /// the simulator can reach that).
    pub mail_webhook_base_url: Option<String>,
    /// Inbound mail: an app registration's client id and secret for every mailbox
    /// (`TENANTFLOW_MAIL_CLIENT_ID` / `TENANTFLOW_MAIL_CLIENT_SECRET`); unset, each
    /// tenant's stored credential (its default Microsoft connection's) is used.
    pub mail_client_id: Option<String>,
    pub mail_client_secret: Option<SecretString>,
    /// The category a received message is marked with (default `tenantflow/processed`).
    pub mail_category: Option<String>,
    /// A folder (id or well-known name, e.g. `archive`) received messages are moved to
    /// after their event is recorded; unset, they stay in the inbox.
    pub mail_processed_folder: Option<String>,
}

impl Config {
    /// Whether the demo runs: asked for (by default: with the embedded database), and no
    /// real Microsoft endpoint configured.
    pub fn demo_enabled(&self) -> bool {
        self.demo.unwrap_or(self.database_url.is_none())
            && self.login_base_url.is_none()
            && self.graph_base_url.is_none()
    }
}

/// The defaults, as a serializable layer.
#[derive(Serialize)]
struct Defaults {
    data_dir: PathBuf,
    listen: SocketAddr,
    log_format: LogFormat,
    log_filter: String,
    database_max_connections: u32,
    database_read_max_lag_ms: u64,
    demo_tenants: usize,
    workflow_workers: usize,
    workflow_lease_seconds: u64,
    workflow_write_window_ms: u64,
    scheduler_poll_seconds: u64,
    shutdown_grace_seconds: u64,
    database_statement_timeout_seconds: u64,
    database_idle_in_transaction_timeout_seconds: u64,
    log_horizon_warning_seconds: u64,
    http_body_limit_bytes: usize,
    graphql_request_timeout_seconds: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".tenantflow"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Pretty,
            log_filter: "info,sqlx=warn".to_owned(),
            database_max_connections: 20,
            database_read_max_lag_ms: 5000,
            demo_tenants: 5,
            workflow_workers: 4,
            workflow_lease_seconds: 60,
            workflow_write_window_ms: workflows::Engine::DEFAULT_WRITE_WINDOW.as_millis() as u64,
            scheduler_poll_seconds: 15,
            shutdown_grace_seconds: 10,
            database_statement_timeout_seconds: 300,
            database_idle_in_transaction_timeout_seconds: 60,
            log_horizon_warning_seconds: 30,
            http_body_limit_bytes: 256 * 1024,
            graphql_request_timeout_seconds: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("unknown configuration key `{key}` (from {origin}){}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        key: String,
        /// The known key closest to it, when one is close.
        suggestion: Option<String>,
        /// Where it was set: a file, or an environment variable.
        origin: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
}

impl ConfigError {
    fn from_figment(e: figment::Error) -> Self {
        if let figment::error::Kind::UnknownField(key, expected) = &e.kind {
            let suggestion = expected
                .iter()
                .map(|k| (strsim::jaro_winkler(key, k), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| k.to_owned());
            let origin = match e.metadata.as_ref() {
                // Only our prefixed variables reach the configuration's keys.
                Some(m) if m.name.contains("environment") => {
                    format!("environment variable TENANTFLOW_{}", key.to_uppercase())
                }
                Some(m) => match &m.source {
                    Some(source) => format!("{} {source}", m.name),
                    None => m.name.to_string(),
                },
                None => "the configuration".to_owned(),
            };
            return ConfigError::UnknownKey {
                key: key.clone(),
                suggestion,
                origin,
            };
        }
        ConfigError::Invalid(Box::new(e))
    }
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads the layers. `file` must exist when given; `tenantflow.toml` in the working
    /// directory is read when present. Environment: `TENANTFLOW_<FIELD>` and `DATABASE_URL`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Defaults::default()));
        match file {
            Some(f) if !f.exists() => return Err(ConfigError::MissingFile(f.to_owned())),
            Some(f) => figment = figment.merge(Toml::file(f)),
            None => figment = figment.merge(Toml::file("tenantflow.toml")),
        }
        figment = figment
            // The embedded cluster reads its binaries' directory itself (store).
            .merge(Env::prefixed("TENANTFLOW_").ignore(&["pg_bindir"]))
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .merge(Serialized::defaults(overrides));
        figment.extract().map_err(ConfigError::from_figment)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_without_file_or_environment() {
        figment::Jail::expect_with(|_jail| {
            let c = Config::load(None, &Overrides::default()).expect("defaults load");
            assert_eq!(c.listen.port(), 8080);
            assert_eq!(c.data_dir, PathBuf::from(".tenantflow"));
            assert!(c.database_url.is_none());
            assert_eq!(c.scheduler_poll_seconds, 15);
            Ok(())
        });
    }

    #[test]
    fn environment_beats_file_and_command_line_beats_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tf.toml",
                "listen = \"127.0.0.1:9000\"\nlog_filter = \"debug\"\n",
            )?;
            jail.set_env("TENANTFLOW_LISTEN", "127.0.0.1:9001");
            let c = Config::load(Some(Path::new("tf.toml")), &Overrides::default()).expect("load");
            assert_eq!(c.listen.port(), 9001);
            assert_eq!(c.log_filter, "debug");
            let o = Overrides {
                listen: Some("127.0.0.1:9002".parse().unwrap()),
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("tf.toml")), &o).expect("load");
            assert_eq!(c.listen.port(), 9002);
            Ok(())
        });
    }

    #[test]
    fn the_scheduler_poll_interval_is_read_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENANTFLOW_SCHEDULER_POLL_SECONDS", "2");
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert_eq!(c.scheduler_poll_seconds, 2);
            Ok(())
        });
    }

    #[test]
    fn database_url_is_read_from_the_environment_and_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://u:pa55word@db/x");
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert!(c.database_url.is_some());
            assert!(!format!("{c:?}").contains("pa55word"));
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_a_clear_error() {
        let err = Config::load(
            Some(Path::new("/nonexistent/tf.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn a_misspelled_key_in_the_file_is_an_error_naming_it_and_the_closest_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("tf.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            let err = Config::load(Some(Path::new("tf.toml")), &Overrides::default()).unwrap_err();
            match &err {
                ConfigError::UnknownKey {
                    key, suggestion, ..
                } => {
                    assert_eq!(key, "lisen");
                    assert_eq!(suggestion.as_deref(), Some("listen"));
                }
                other => panic!("expected an unknown key: {other}"),
            }
            let text = err.to_string();
            assert!(
                text.contains("`lisen`") && text.contains("did you mean `listen`?"),
                "{text}"
            );
            assert!(text.contains("tf.toml"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_environment_variable_of_ours_is_an_error_but_the_cluster_binaries_are_not() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENANTFLOW_PG_BINDIR", "/usr/lib/postgresql/15/bin");
            Config::load(None, &Overrides::default()).expect("PG_BINDIR is read elsewhere");
            jail.set_env("TENANTFLOW_WORKFLOW_WORKRES", "2");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("`workflow_workres`"), "{text}");
            assert!(text.contains("did you mean `workflow_workers`?"), "{text}");
            assert!(text.contains("TENANTFLOW_WORKFLOW_WORKRES"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn the_demo_is_on_by_default_only_with_the_embedded_database() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert!(c.demo_enabled(), "the first run shows the demo");
            jail.set_env("DATABASE_URL", "postgres://u@db/x");
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert!(
                !c.demo_enabled(),
                "a real database means real Microsoft endpoints"
            );
            jail.set_env("TENANTFLOW_DEMO", "true");
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert!(c.demo_enabled(), "unless the demo is asked for");
            jail.set_env("TENANTFLOW_GRAPH_BASE_URL", "https://graph.example");
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert!(!c.demo_enabled(), "a configured Graph always wins");
            Ok(())
        });
    }

    #[test]
    fn a_key_near_no_known_one_gets_no_suggestion() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("tf.toml", "zzz = 1\n")?;
            let err = Config::load(Some(Path::new("tf.toml")), &Overrides::default()).unwrap_err();
            assert!(
                matches!(&err, ConfigError::UnknownKey { key, suggestion: None, .. } if key == "zzz"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_malformed_value_is_a_clear_error() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENANTFLOW_LISTEN", "not-an-address");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().to_lowercase().contains("listen"), "{err}");
            Ok(())
        });
    }
}
