//! Transport of [`GraphClient`]: tokens, retries, paging and failure mapping.
//! The typed calls live in `calls.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain::ReasonCode;
use rand::Rng;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;
use uuid::Uuid;

use crate::endpoint::{Endpoint, Method};
use crate::token::{CachedToken, TokenCache, TokenKey, TokenResponse};
use crate::{AppCredentials, GraphConfig, GraphError, RetryPolicy};

/// The one client that calls Microsoft (R4.1). Cheap to clone; clones share the token cache.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: GraphConfig,
    tokens: TokenCache,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Who a request authenticates as.
#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// No bearer token (the token request itself).
    None,
    /// App-only token of these credentials for this scope.
    App(&'a AppCredentials, &'a str),
    /// A delegated access token the caller holds (a mailbox owner's).
    Bearer(&'a secrecy::SecretString),
}

/// What a request carries.
pub(crate) enum Body<'a> {
    Empty,
    Json(Value),
    Form(&'a [(&'a str, &'a str)]),
}

/// One registered call, ready to send.
pub(crate) struct Call<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) url: Url,
    pub(crate) auth: Auth<'a>,
    pub(crate) body: Body<'a>,
    /// Extra `Prefer` header, e.g. to get message bodies as text.
    pub(crate) prefer: Option<&'static str>,
    /// Whose data the call is about, for the logs.
    pub(crate) tenant: Uuid,
}

/// How one attempt ended.
enum Attempt {
    Answered {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    /// The request never left: retrying cannot repeat a side effect.
    Unreachable,
    TimedOut,
    /// The connection broke mid-way.
    Broken,
}

/// A page of a Graph collection.
#[derive(Deserialize)]
struct Page<T> {
    value: Option<Vec<T>>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

type BoxedToken<'a> = Pin<Box<dyn Future<Output = Result<CachedToken, GraphError>> + Send + 'a>>;

impl GraphClient {
    /// Builds the client; fails only if the TLS backend cannot be initialised.
    pub fn new(config: GraphConfig) -> Result<Self, GraphError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("tenantflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| {
                GraphError::new(ReasonCode::InternalError, "HTTP client could not be built")
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                tokens: TokenCache::default(),
            }),
        })
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &GraphConfig {
        &self.inner.config
    }

    /// Graph URL of a registered endpoint.
    pub(crate) fn graph_url(&self, endpoint: Endpoint, params: &[&str]) -> Result<Url, GraphError> {
        endpoint.url(&self.inner.config.graph_base, params)
    }

    /// Sends a call with retries and returns the body of the successful answer.
    pub(crate) async fn execute(&self, call: &Call<'_>) -> Result<Vec<u8>, GraphError> {
        let span = tracing::debug_span!(
            "graph_call",
            endpoint = call.endpoint.name(),
            tenant = %call.tenant,
        );
        self.execute_with_retries(call).instrument(span).await
    }

    async fn execute_with_retries(&self, call: &Call<'_>) -> Result<Vec<u8>, GraphError> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut token_renewed = false;
        loop {
            attempt += 1;
            let token = match call.auth {
                Auth::App(credentials, scope) => {
                    let key = TokenKey::of(credentials, scope);
                    let token = self.token(&key, credentials, scope).await?;
                    Some((key, token))
                }
                Auth::None | Auth::Bearer(_) => None,
            };
            let bearer = match call.auth {
                Auth::Bearer(secret) => Some(secret.expose_secret()),
                _ => token.as_ref().map(|(_, t)| t.token.bearer()),
            };
            let outcome = self.send_once(call, bearer).await;
            let not_sent = matches!(outcome, Attempt::Unreachable);
            let error = match outcome {
                Attempt::Answered { status, body, .. } if (200..300).contains(&status) => {
                    return Ok(body);
                }
                Attempt::Answered { status: 401, .. } if !token_renewed && token.is_some() => {
                    // A token can be revoked before it expires (consent withdrawn, secret
                    // rotated): fetch a new one once, which also surfaces why it was refused.
                    if let Some((key, refused)) = &token {
                        self.inner.tokens.evict(key, refused).await;
                    }
                    token_renewed = true;
                    attempt -= 1;
                    continue;
                }
                Attempt::Answered {
                    status,
                    retry_after,
                    body,
                } if call.endpoint == Endpoint::Token => {
                    GraphError::from_token_status(status, &body, retry_after)
                }
                Attempt::Answered {
                    status,
                    retry_after,
                    body,
                } => GraphError::from_graph_status(status, &body, retry_after),
                Attempt::TimedOut => {
                    GraphError::new(ReasonCode::GraphTimeout, "Microsoft did not answer in time")
                }
                Attempt::Unreachable | Attempt::Broken => GraphError::new(
                    ReasonCode::GraphUnavailable,
                    "Microsoft could not be reached",
                ),
            };
            let may_repeat = call.endpoint.is_idempotent()
                || error.reason == ReasonCode::GraphThrottled
                || not_sent;
            if !error.is_transient() || !may_repeat {
                return Err(error);
            }
            let Some(delay) = next_delay(
                &self.inner.config.retry,
                attempt,
                started,
                error.retry_after,
            ) else {
                tracing::debug!(attempt, reason = %error.reason, "giving up on Graph call");
                return Err(error);
            };
            tracing::debug!(
                attempt,
                reason = %error.reason,
                delay_ms = delay.as_millis() as u64,
                "retrying Graph call"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_once(&self, call: &Call<'_>, bearer: Option<&str>) -> Attempt {
        let method = match call.endpoint.method() {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let client_request_id = Uuid::new_v4().to_string();
        let mut request = self
            .inner
            .http
            .request(method, call.url.clone())
            .header("client-request-id", &client_request_id)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(prefer) = call.prefer {
            request = request.header("Prefer", prefer);
        }
        request = match &call.body {
            Body::Empty => request,
            Body::Json(json) => request.json(json),
            Body::Form(form) => request.form(form),
        };
        let started = Instant::now();
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return transport_failure(&error, &client_request_id),
        };
        let status = response.status().as_u16();
        let request_id = header_text(&response, "request-id");
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = match response.bytes().await {
            Ok(body) => body.to_vec(),
            Err(error) => return transport_failure(&error, &client_request_id),
        };
        tracing::debug!(
            status,
            request_id = request_id.as_deref().unwrap_or(""),
            client_request_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Microsoft answered"
        );
        Attempt::Answered {
            status,
            retry_after,
            body,
        }
    }

    /// A usable token for the key, fetched at most once however many callers wait for it.
    async fn token(
        &self,
        key: &TokenKey,
        credentials: &AppCredentials,
        scope: &str,
    ) -> Result<CachedToken, GraphError> {
        let slot = self.inner.tokens.slot(key);
        let mut held = slot.lock().await;
        if let Some(token) = held.as_ref().filter(|t| t.is_usable()) {
            return Ok(token.clone());
        }
        let fetched = self.fetch_token(credentials, scope).await?;
        *held = Some(fetched.clone());
        Ok(fetched)
    }

    /// Boxed because fetching a token is itself a call through `execute`.
    fn fetch_token<'a>(
        &'a self,
        credentials: &'a AppCredentials,
        scope: &'a str,
    ) -> BoxedToken<'a> {
        Box::pin(async move {
            let tenant = credentials.tenant_id.to_string();
            let url = Endpoint::Token.url(&self.inner.config.login_base, &[&tenant])?;
            let form = [
                ("client_id", credentials.client_id.as_str()),
                ("client_secret", credentials.client_secret.expose_secret()),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ];
            let call = Call {
                endpoint: Endpoint::Token,
                url,
                auth: Auth::None,
                body: Body::Form(&form),
                prefer: None,
                tenant: credentials.tenant_id,
            };
            let body = self.execute(&call).await?;
            let response: TokenResponse = serde_json::from_slice(&body)
                .map_err(|_| GraphError::malformed("token response"))?;
            tracing::debug!(
                client_id = %credentials.client_id,
                expires_in = response.expires_in,
                "acquired app-only token"
            );
            Ok(self.inner.tokens.fresh(response))
        })
    }

    /// Makes sure a token can be had for the credentials (connection test).
    pub(crate) async fn ensure_token(
        &self,
        credentials: &AppCredentials,
        scope: &str,
    ) -> Result<(), GraphError> {
        let key = TokenKey::of(credentials, scope);
        self.token(&key, credentials, scope).await.map(|_| ())
    }

    /// Fetches a new token for the credentials whatever the cache holds, and caches it
    /// (a connection test). A refusal also drops the cached token: it was issued to a
    /// credential the token service no longer takes.
    pub(crate) async fn renew_token(
        &self,
        credentials: &AppCredentials,
        scope: &str,
    ) -> Result<(), GraphError> {
        let key = TokenKey::of(credentials, scope);
        let slot = self.inner.tokens.slot(&key);
        let mut held = slot.lock().await;
        match self.fetch_token(credentials, scope).await {
            Ok(fetched) => {
                *held = Some(fetched);
                Ok(())
            }
            Err(e) => {
                if !e.is_transient() {
                    *held = None;
                }
                Err(e)
            }
        }
    }

    /// Sends a Graph call and parses its JSON answer.
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, GraphError> {
        let body = self.execute(call).await?;
        serde_json::from_slice(&body).map_err(|_| GraphError::malformed(call.endpoint.name()))
    }

    /// Graph call with app credentials for the Graph scope.
    pub(crate) fn graph_call<'a>(
        &'a self,
        credentials: &'a AppCredentials,
        endpoint: Endpoint,
        url: Url,
        body: Body<'a>,
    ) -> Call<'a> {
        Call {
            endpoint,
            url,
            auth: Auth::App(credentials, &self.inner.config.graph_scope),
            body,
            prefer: None,
            tenant: credentials.tenant_id,
        }
    }

    /// Reads every page of a collection, following `@odata.nextLink` verbatim. Returns the
    /// items and the `@odata.deltaLink` of the last page, if any.
    pub(crate) async fn all_pages<T: DeserializeOwned>(
        &self,
        credentials: &AppCredentials,
        endpoint: Endpoint,
        first: Url,
    ) -> Result<(Vec<T>, Option<String>), GraphError> {
        let max_pages = self.inner.config.max_pages;
        let mut items = Vec::new();
        let mut url = first;
        for page_number in 1..=max_pages {
            let call = self.graph_call(credentials, endpoint, url, Body::Empty);
            let page: Page<T> = self.json(&call).await.map_err(|error| {
                if page_number > 1 && error.reason == ReasonCode::GraphNotFound {
                    // The collection exists; a vanished continuation page means paging broke.
                    GraphError {
                        reason: ReasonCode::GraphMalformedResponse,
                        message: format!("paging broke off: page {page_number} was not found"),
                        ..error
                    }
                } else {
                    error
                }
            })?;
            let value = page
                .value
                .ok_or_else(|| GraphError::malformed("collection without value"))?;
            items.extend(value);
            match page.next_link {
                Some(link) => url = self.follow(&link)?,
                None => return Ok((items, page.delta_link)),
            }
        }
        Err(GraphError::malformed(&format!(
            "collection has more than {max_pages} pages"
        )))
    }

    /// Accepts a link from Graph (nextLink, deltaLink) only if it points into Graph, so the
    /// bearer token is never sent anywhere else.
    pub(crate) fn follow(&self, link: &str) -> Result<Url, GraphError> {
        let base = &self.inner.config.graph_base;
        let url = Url::parse(link).map_err(|_| GraphError::malformed("link is not a URL"))?;
        let inside = url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
            && url.path().starts_with(base.path().trim_end_matches('/'));
        if !inside {
            return Err(GraphError::malformed("link points outside Graph"));
        }
        Ok(url)
    }
}

fn transport_failure(error: &reqwest::Error, client_request_id: &str) -> Attempt {
    let kind = if error.is_timeout() {
        Attempt::TimedOut
    } else if error.is_connect() {
        Attempt::Unreachable
    } else {
        Attempt::Broken
    };
    tracing::debug!(
        client_request_id,
        timeout = error.is_timeout(),
        connect = error.is_connect(),
        "request to Microsoft failed"
    );
    kind
}

fn header_text(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(64).collect())
}

/// `Retry-After` as delta-seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The wait before the next attempt, or `None` when attempts or budget are spent.
fn next_delay(
    policy: &RetryPolicy,
    attempt: u32,
    started: Instant,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    if attempt >= policy.max_attempts {
        return None;
    }
    let delay = retry_after.unwrap_or_else(|| full_jitter(policy, attempt));
    (started.elapsed() + delay <= policy.budget).then_some(delay)
}

/// Uniform in `[0, min(max, base * 2^(attempt-1))]`.
fn full_jitter(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let ceiling = policy
        .base_backoff
        .saturating_mul(factor)
        .min(policy.max_backoff);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_only_into_graph() {
        let config = GraphConfig::with_bases(
            Url::parse("https://login.example").unwrap(),
            Url::parse("https://graph.example/v1.0").unwrap(),
        );
        let client = GraphClient::new(config).unwrap();
        assert!(client
            .follow("https://graph.example/v1.0/users?$skiptoken=x")
            .is_ok());
        for outside in [
            "https://evil.example/v1.0/users",
            "http://graph.example/v1.0/users",
            "https://graph.example/beta/users",
            "not a url",
        ] {
            let error = client.follow(outside).unwrap_err();
            assert_eq!(
                error.reason,
                ReasonCode::GraphMalformedResponse,
                "{outside}"
            );
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            budget: Duration::from_secs(60),
        };
        for attempt in 1..10 {
            let ceiling =
                Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(policy.max_backoff);
            assert!(full_jitter(&policy, attempt) <= ceiling);
        }
    }

    #[test]
    fn no_retry_once_attempts_or_budget_are_spent() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            budget: Duration::from_secs(2),
        };
        let now = Instant::now();
        assert!(next_delay(&policy, 2, now, None).is_some());
        assert!(next_delay(&policy, 3, now, None).is_none());
        assert!(next_delay(&policy, 1, now, Some(Duration::from_secs(5))).is_none());
    }
}
