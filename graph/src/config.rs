//! Client configuration and the credentials of a connection.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;
use uuid::Uuid;

/// Where Microsoft lives and how patiently we talk to it.
///
/// The base URLs are configurable so the simulator can stand in for Microsoft.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    /// Token service base, e.g. `https://login.microsoftonline.com`.
    pub login_base: Url,
    /// Graph base including the version, e.g. `https://graph.microsoft.com/v1.0`.
    pub graph_base: Url,
    /// Scope requested for Graph tokens.
    pub graph_scope: String,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt, from sending to the end of the body.
    pub request_timeout: Duration,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// Most pages followed through `@odata.nextLink` for one collection.
    pub max_pages: u32,
}

impl GraphConfig {
    /// The real Microsoft endpoints.
    pub fn microsoft() -> Self {
        // Constant, well-formed URLs: parsing cannot fail.
        let (login, graph) = (
            Url::parse("https://login.microsoftonline.com").expect("constant URL"),
            Url::parse("https://graph.microsoft.com/v1.0").expect("constant URL"),
        );
        Self::with_bases(login, graph)
    }

    /// Default settings against other base URLs, such as the simulator's.
    pub fn with_bases(login_base: Url, graph_base: Url) -> Self {
        Self {
            login_base,
            graph_base,
            graph_scope: "https://graph.microsoft.com/.default".to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_pages: 200,
        }
    }
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self::microsoft()
    }
}

/// Retries with exponential backoff and full jitter for 429, 5xx and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry; doubles with every retry.
    pub base_backoff: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
    /// Wall-clock time one call may spend, retries included; a wait that would overrun it
    /// (also one asked for by `Retry-After`) ends the call instead.
    pub budget: Duration,
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            budget: Duration::from_secs(60),
        }
    }
}

/// App-only (client credentials) access to one Entra tenant.
#[derive(Clone)]
pub struct AppCredentials {
    /// Entra tenant GUID.
    pub tenant_id: Uuid,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// Client secret; never logged or printed.
    pub client_secret: SecretString,
}

impl AppCredentials {
    /// Bundles a connection's credentials.
    pub fn new(tenant_id: Uuid, client_id: impl Into<String>, client_secret: SecretString) -> Self {
        Self {
            tenant_id,
            client_id: client_id.into(),
            client_secret,
        }
    }
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// Access to a partner's CIPP API: its base URL and the app that may call it.
#[derive(Clone)]
pub struct CippCredentials {
    /// CIPP base URL, e.g. `https://cipp.partner.example`.
    pub api_url: Url,
    /// Client id of CIPP's API app; tokens are requested for `api://{id}/.default`.
    pub api_client_id: String,
    /// The app registration (in the partner tenant) that holds the secret.
    pub app: AppCredentials,
}

impl CippCredentials {
    /// Scope requested for CIPP tokens.
    pub fn scope(&self) -> String {
        format!("api://{}/.default", self.api_client_id)
    }
}

impl std::fmt::Debug for CippCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CippCredentials")
            .field("api_url", &self.api_url.as_str())
            .field("api_client_id", &self.api_client_id)
            .field("app", &self.app)
            .finish()
    }
}
