//! A Microsoft Graph simulator (R4.3): a real HTTP server speaking Graph's wire formats for a
//! seeded fleet of tenants, with fault injection, a request log and an admin API.
//!
//! One server hosts everything, by path prefix:
//! - `{base}/login/{tenant}/oauth2/v2.0/token`: the token service (client credentials);
//! - `{base}/graph/v1.0/...`: Graph (see [`Endpoint`] for what is served);
//! - `{base}/cipp/api/ListTenants` and `ListUsers?tenantFilter=`: a partner's CIPP instance;
//! - `{base}/_sim/...`: the admin API (JSON), mirrored by the methods of [`SimHandle`].
//!
//! Admin API: `GET /_sim/fleet` (tenants with credentials, base URLs, CIPP app id);
//! `GET|DELETE /_sim/requests`; `GET|POST|DELETE /_sim/faults` (body: [`FaultSpec`]);
//! `PUT /_sim/page-size` `{"pageSize":n}`; below `/_sim/tenants/{tenant}`:
//! `GET|POST policies`, `PUT|DELETE policies/{id}`, `POST users`, `DELETE users/{user}[?permanent=true]`,
//! `POST users/{user}/disable|enable`, `POST users/{user}/rename` (body: [`UserRename`]),
//! `POST users/{user}/addresses` `{"address":"a@b.example"}`, `POST consent/revoke|grant`,
//! `POST secret/rotate`,
//! `POST permissions/revoke|grant` `{"permission":"User.Read.All"}`,
//! `GET|POST mailboxes/{user}/messages` (POST body: [`NewMail`], delivers and notifies),
//! `GET subscriptions`.

mod admin;
mod faults;
mod fleet;
mod http;
mod mail;
mod notify;
mod routes;
mod state;
mod wire;
mod world;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;
use uuid::Uuid;

pub use faults::{ActiveFault, Fault, FaultSpec};

use crate::models::MessageHeader;
use crate::{AppCredentials, CippCredentials, Endpoint, GraphConfig};
use state::Sim;

/// How the simulator is started and what fleet it serves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind; loopback by default.
    pub host: IpAddr,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Number of customer tenants (the partner tenant comes on top).
    pub tenants: usize,
    /// Seed of the fleet: same seed, same tenants, ids and credentials.
    pub seed: u64,
    /// Items per page of every collection unless `$top` says otherwise.
    pub page_size: usize,
    /// Longest subscription lifetime accepted, in minutes.
    pub subscription_max_minutes: i64,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// Users per customer tenant; 5 to 8 (seeded) when absent.
    pub users_per_tenant: Option<usize>,
    /// How many named users of each customer tenant share one surname (0: names as drawn).
    pub shared_surname_users: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            tenants: 3,
            seed: 1,
            page_size: 2,
            subscription_max_minutes: 4230,
            token_lifetime: Duration::from_secs(3599),
            users_per_tenant: None,
            shared_surname_users: 0,
        }
    }
}

/// Options of `tenantflow graph-sim --port P --tenants N --seed S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandaloneOptions {
    pub port: u16,
    pub tenants: usize,
    pub seed: u64,
}

/// Why the simulator refused an admin operation or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown tenant {0}")]
    UnknownTenant(Uuid),
    #[error("unknown user {0}")]
    UnknownUser(String),
    #[error("unknown policy {0}")]
    UnknownPolicy(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("simulator could not start: {0}")]
    Io(#[from] std::io::Error),
}

/// A simulated tenant and the app credentials the simulator accepts for it.
#[derive(Debug, Clone)]
pub struct SimTenant {
    pub tenant_id: Uuid,
    pub display_name: String,
    pub default_domain: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Users with an Exchange Online mailbox.
    pub mailboxes: Vec<SimMailbox>,
}

impl SimTenant {
    /// Credentials for [`GraphClient`](crate::GraphClient) calls against this tenant.
    pub fn credentials(&self) -> AppCredentials {
        AppCredentials::new(
            self.tenant_id,
            self.client_id.clone(),
            self.client_secret.clone(),
        )
    }
}

/// A user with a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimMailbox {
    pub user_id: String,
    pub user_principal_name: String,
}

/// One request the simulator answered (admin requests are not logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// When the request arrived.
    pub received_at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The registered endpoint it matched, if any.
    pub endpoint: Option<Endpoint>,
    /// The tenant it was for, once known (from the path or the bearer token).
    pub tenant: Option<Uuid>,
    pub status: u16,
}

/// A mail to deliver to a mailbox's inbox. JSON fields are camelCase; all have defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NewMail {
    pub subject: String,
    pub from_name: String,
    pub from_address: String,
    /// Recipients; the mailbox owner when empty.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// Used when there is no HTML body.
    pub body_text: String,
    pub body_html: Option<String>,
    /// Extra internet message headers.
    pub headers: Vec<MessageHeader>,
    pub attachments: Vec<NewAttachment>,
}

impl Default for NewMail {
    fn default() -> Self {
        Self {
            subject: "Printer on floor 2 is jammed".to_owned(),
            from_name: "Pat Requester".to_owned(),
            from_address: "pat@customer.example".to_owned(),
            to: Vec::new(),
            cc: Vec::new(),
            body_text: "Hello, the printer is jammed again.".to_owned(),
            body_html: None,
            headers: Vec::new(),
            attachments: Vec::new(),
        }
    }
}

/// An attachment of a [`NewMail`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NewAttachment {
    pub name: String,
    pub content_type: String,
    pub size: usize,
    pub is_inline: bool,
}

impl Default for NewAttachment {
    fn default() -> Self {
        Self {
            name: "screenshot.png".to_owned(),
            content_type: "image/png".to_owned(),
            size: 2048,
            is_inline: false,
        }
    }
}

/// A user to add to a tenant's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSimUser {
    pub display_name: String,
    pub user_principal_name: String,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default = "yes")]
    pub account_enabled: bool,
    #[serde(default = "yes")]
    pub has_mailbox: bool,
}

/// A user's new name (admin API `POST users/{user}/rename`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRename {
    pub display_name: String,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
}

fn yes() -> bool {
    true
}

/// What happened when a mail was delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReport {
    pub user_id: String,
    pub message_id: String,
    /// One per subscription notified.
    pub deliveries: Vec<Delivery>,
}

/// The outcome of one change notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub subscription_id: String,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// A running simulator. Dropping the handle stops the server.
pub struct SimHandle {
    sim: Arc<Sim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts the simulator.
///
/// # Panics
/// If the address cannot be bound; tests bind port 0, which cannot be taken. Use
/// [`try_spawn`] where the port is chosen by a user.
pub async fn spawn(config: SimConfig) -> SimHandle {
    match try_spawn(config).await {
        Ok(handle) => handle,
        Err(error) => panic!("Graph simulator could not start: {error}"),
    }
}

/// Starts the simulator, reporting a port that cannot be bound.
pub async fn try_spawn(config: SimConfig) -> Result<SimHandle, SimError> {
    let listener = tokio::net::TcpListener::bind((config.host, config.port)).await?;
    let address = listener.local_addr()?;
    let base = Url::parse(&format!("http://{address}/"))
        .map_err(|e| SimError::Invalid(format!("bound address is not a URL: {e}")))?;
    let sim = Arc::new(Sim::new(&config, base));
    let app = routes::router(sim.clone());
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "Graph simulator stopped");
        }
    });
    Ok(SimHandle {
        sim,
        shutdown: Some(shutdown),
        task: Some(task),
    })
}

/// Runs the simulator until Ctrl-C (`tenantflow graph-sim`).
pub async fn run_standalone(options: StandaloneOptions) -> Result<(), SimError> {
    let handle = try_spawn(SimConfig {
        port: options.port,
        tenants: options.tenants,
        seed: options.seed,
        ..SimConfig::default()
    })
    .await?;
    tracing::info!(
        login_base = %handle.login_base(),
        graph_base = %handle.graph_base(),
        cipp_base = %handle.cipp_base(),
        fleet = %handle.sim.url("/_sim/fleet"),
        tenants = options.tenants,
        seed = options.seed,
        "Graph simulator listening; tenant credentials are served by the fleet URL"
    );
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}

impl SimHandle {
    /// `http://host:port/`.
    pub fn base_url(&self) -> Url {
        self.sim.base.clone()
    }

    /// Token service base, for [`GraphConfig::login_base`].
    pub fn login_base(&self) -> Url {
        self.sim.url("/login")
    }

    /// Graph base, for [`GraphConfig::graph_base`].
    pub fn graph_base(&self) -> Url {
        self.sim.url("/graph/v1.0")
    }

    /// CIPP base URL.
    pub fn cipp_base(&self) -> Url {
        self.sim.url("/cipp")
    }

    /// Default client settings pointed at this simulator.
    pub fn graph_config(&self) -> GraphConfig {
        GraphConfig::with_bases(self.login_base(), self.graph_base())
    }

    /// The customer tenants, in seed order.
    pub fn tenants(&self) -> Vec<SimTenant> {
        self.sim.tenants()
    }

    /// The partner (MSP) tenant: its `/contracts` and delegated admin customers list the fleet.
    pub fn partner(&self) -> SimTenant {
        match self.sim.partner() {
            Ok(partner) => partner,
            Err(error) => unreachable!("the fleet always has a partner: {error}"),
        }
    }

    /// Credentials for the CIPP instance, held by the partner tenant's app.
    pub fn cipp_credentials(&self) -> CippCredentials {
        CippCredentials {
            api_url: self.cipp_base(),
            api_client_id: self.sim.cipp_api_client_id(),
            app: self.partner().credentials(),
        }
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.sim.requests()
    }

    /// The requests that matched one endpoint.
    pub fn requests_to(&self, endpoint: Endpoint) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.endpoint == Some(endpoint))
            .collect()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.sim.clear_requests();
    }

    /// Injects a fault; returns its id.
    pub fn inject(&self, spec: FaultSpec) -> u64 {
        self.sim.inject(spec)
    }

    /// Faults still active.
    pub fn faults(&self) -> Vec<ActiveFault> {
        self.sim.active_faults()
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.sim.clear_faults();
    }

    /// Items per page from now on.
    pub fn set_page_size(&self, page_size: usize) {
        self.sim.set_page_size(page_size);
    }

    /// A tenant's Conditional Access policies as Graph would return them.
    pub fn policies(&self, tenant: Uuid) -> Result<Vec<Value>, SimError> {
        self.sim.policies(tenant)
    }

    /// Adds a policy, or replaces the one with the same `id`; returns it as stored.
    pub fn upsert_policy(&self, tenant: Uuid, policy: Value) -> Result<Value, SimError> {
        self.sim.upsert_policy(tenant, policy)
    }

    /// Removes a policy.
    pub fn remove_policy(&self, tenant: Uuid, policy_id: &str) -> Result<(), SimError> {
        self.sim.remove_policy(tenant, policy_id)
    }

    /// Adds a user; returns it as Graph shows it.
    pub fn add_user(&self, tenant: Uuid, user: &NewSimUser) -> Result<Value, SimError> {
        self.sim.add_user(tenant, user)
    }

    /// Sets `accountEnabled` to false (a change in users delta).
    pub fn disable_user(&self, tenant: Uuid, user: &str) -> Result<(), SimError> {
        self.sim.set_user_enabled(tenant, user, false)
    }

    /// Deletes a user: soft (`@removed` reason `changed`) or permanently (`deleted`).
    pub fn delete_user(&self, tenant: Uuid, user: &str, permanently: bool) -> Result<(), SimError> {
        self.sim.delete_user(tenant, user, permanently)
    }

    /// Renames a user (id or UPN); the next delta round reports it.
    pub fn rename_user(
        &self,
        tenant: Uuid,
        user: &str,
        rename: &UserRename,
    ) -> Result<(), SimError> {
        self.sim.rename_user(tenant, user, rename)
    }

    /// Gives a user a second address (an `smtp:` proxy address); the next delta round
    /// reports it.
    pub fn add_user_address(
        &self,
        tenant: Uuid,
        user: &str,
        address: &str,
    ) -> Result<(), SimError> {
        self.sim.add_user_address(tenant, user, address)
    }

    /// Withdraws admin consent: tokens are refused with AADSTS65001 and issued ones stop working.
    pub fn revoke_consent(&self, tenant: Uuid) -> Result<(), SimError> {
        self.sim.set_consent(tenant, false)
    }

    /// Grants admin consent again.
    pub fn grant_consent(&self, tenant: Uuid) -> Result<(), SimError> {
        self.sim.set_consent(tenant, true)
    }

    /// Replaces the tenant app's client secret and returns the new one.
    pub fn rotate_secret(&self, tenant: Uuid) -> Result<SecretString, SimError> {
        self.sim.rotate_secret(tenant)
    }

    /// Takes an application permission away: endpoints needing it answer 403.
    pub fn revoke_permission(&self, tenant: Uuid, permission: &str) -> Result<(), SimError> {
        self.sim.set_permission(tenant, permission, false)
    }

    /// Gives a revoked permission back.
    pub fn grant_permission(&self, tenant: Uuid, permission: &str) -> Result<(), SimError> {
        self.sim.set_permission(tenant, permission, true)
    }

    /// Delivers a mail to a mailbox's inbox and notifies the subscriptions watching it.
    pub async fn deliver_mail(
        &self,
        tenant: Uuid,
        user: &str,
        mail: &NewMail,
    ) -> Result<DeliveryReport, SimError> {
        self.sim.deliver_mail(tenant, user, mail).await
    }

    /// Posts the `created` notification of message `message_id` to subscription
    /// `subscription_id` again (Graph delivers more than once), with `client_state` in
    /// place of the registered one when given (a forgery).
    pub async fn notify_message(
        &self,
        tenant: Uuid,
        subscription_id: &str,
        message_id: &str,
        client_state: Option<&str>,
    ) -> Result<Delivery, SimError> {
        self.sim
            .notify_message(tenant, subscription_id, message_id, client_state)
            .await
    }

    /// Posts a lifecycle notification (`reauthorizationRequired`, `missed`, ...).
    pub async fn notify_lifecycle(
        &self,
        tenant: Uuid,
        subscription_id: &str,
        event: &str,
    ) -> Result<Delivery, SimError> {
        self.sim
            .notify_lifecycle(tenant, subscription_id, event)
            .await
    }

    /// Drops a subscription and posts `subscriptionRemoved` for it.
    pub async fn remove_subscription(
        &self,
        tenant: Uuid,
        subscription_id: &str,
    ) -> Result<Delivery, SimError> {
        self.sim.remove_subscription(tenant, subscription_id).await
    }

    /// A delegated refresh token for `user` (id or UPN) of `tenant`.
    pub fn issue_refresh_token(&self, tenant: Uuid, user: &str) -> Result<String, SimError> {
        self.sim.issue_refresh_token(tenant, user)
    }

    /// Revokes every refresh token of `user`.
    pub fn revoke_refresh_tokens(&self, tenant: Uuid, user: &str) -> Result<(), SimError> {
        self.sim.revoke_refresh_tokens(tenant, user)
    }

    /// Lets a subscription run out now.
    pub fn expire_subscription(&self, tenant: Uuid, subscription_id: &str) -> Result<(), SimError> {
        self.sim.expire_subscription(tenant, subscription_id)
    }

    /// Every message in a mailbox, all folders, with all fields.
    pub fn messages(&self, tenant: Uuid, user: &str) -> Result<Vec<Value>, SimError> {
        self.sim.messages(tenant, user)
    }

    /// A tenant's subscriptions.
    pub fn subscriptions(&self, tenant: Uuid) -> Result<Vec<Value>, SimError> {
        self.sim.subscriptions(tenant)
    }

    /// Bearer tokens currently valid, so tests can prove they never leak.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.sim.issued_tokens()
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("base_url", &self.sim.base.as_str())
            .finish_non_exhaustive()
    }
}
