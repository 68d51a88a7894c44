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

/// The service's configuration. Secrets are `SecretString`: they cannot be printed.
#[derive(Debug, Deserialize)]
pub struct Config {
    /// An existing PostgreSQL server; without it an embedded cluster is started.
    pub database_url: Option<SecretString>,
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
    /// With no Graph configured: start the built-in Graph simulator and register its
    /// fleet in the `demo` workspace.
    pub demo: bool,
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
    /// An Apollo persisted query manifest (JSON). Set, the API accepts only the queries it
    /// lists (by hash or by text); unset, any query, with hashes learnt from clients.
    pub graphql_known_queries: Option<PathBuf>,
}

impl Config {
    /// Whether the demo runs: asked for, and no real Microsoft endpoint configured.
    pub fn demo_enabled(&self) -> bool {
        self.demo && self.login_base_url.is_none() && self.graph_base_url.is_none()
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
    demo: bool,
    demo_tenants: usize,
    workflow_workers: usize,
    workflow_lease_seconds: u64,
    workflow_write_window_ms: u64,
    scheduler_poll_seconds: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".tenantflow"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Pretty,
            log_filter: "info,sqlx=warn".to_owned(),
            database_max_connections: 20,
            demo: true,
            demo_tenants: 5,
            workflow_workers: 4,
            workflow_lease_seconds: 60,
            workflow_write_window_ms: workflows::Engine::DEFAULT_WRITE_WINDOW.as_millis() as u64,
            scheduler_poll_seconds: 15,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
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
            .merge(Env::prefixed("TENANTFLOW_"))
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .merge(Serialized::defaults(overrides));
        figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))
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
    fn a_malformed_value_is_a_clear_error() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENANTFLOW_LISTEN", "not-an-address");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().to_lowercase().contains("listen"), "{err}");
            Ok(())
        });
    }
}
