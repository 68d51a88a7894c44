//! The simulator's admin API under `/_sim`, and the operations behind it that
//! [`SimHandle`](super::SimHandle) also offers as methods.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::faults::{ActiveFault, FaultSpec};
use super::state::Sim;
use super::{DeliveryReport, NewMail, NewSimUser, RequestRecord, SimError, SimTenant, UserRename};

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = match self {
            SimError::Invalid(_) => StatusCode::BAD_REQUEST,
            SimError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::NOT_FOUND,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// Tenant credentials as the admin API shows them: the secret in clear, because the
/// simulator's whole point is to hand it to tests and the demo.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TenantView<'a> {
    tenant_id: Uuid,
    display_name: &'a str,
    default_domain: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    mailboxes: &'a [super::SimMailbox],
}

impl<'a> From<&'a SimTenant> for TenantView<'a> {
    fn from(tenant: &'a SimTenant) -> Self {
        Self {
            tenant_id: tenant.tenant_id,
            display_name: &tenant.display_name,
            default_domain: &tenant.default_domain,
            client_id: &tenant.client_id,
            client_secret: tenant.client_secret.expose_secret(),
            mailboxes: &tenant.mailboxes,
        }
    }
}

impl Sim {
    pub(crate) fn tenants(&self) -> Vec<SimTenant> {
        let world = self.world();
        world
            .customers
            .iter()
            .filter_map(|id| world.public_tenant(*id).ok())
            .collect()
    }

    pub(crate) fn partner(&self) -> Result<SimTenant, SimError> {
        let world = self.world();
        world.public_tenant(world.partner)
    }

    pub(crate) fn cipp_api_client_id(&self) -> String {
        self.world().cipp_api_client_id.clone()
    }

    pub(crate) fn policies(&self, tenant: Uuid) -> Result<Vec<Value>, SimError> {
        Ok(self.world().tenant(tenant)?.policies.clone())
    }

    pub(crate) fn upsert_policy(&self, tenant: Uuid, policy: Value) -> Result<Value, SimError> {
        let mut world = self.world();
        let id = world.new_uuid();
        world.tenant_mut(tenant)?.upsert_policy(id, policy)
    }

    pub(crate) fn remove_policy(&self, tenant: Uuid, id: &str) -> Result<(), SimError> {
        self.world().tenant_mut(tenant)?.remove_policy(id)
    }

    pub(crate) fn add_user(&self, tenant: Uuid, user: &NewSimUser) -> Result<Value, SimError> {
        let mut world = self.world();
        let id = world.new_uuid();
        world.tenant_mut(tenant)?.add_user(id, user)
    }

    pub(crate) fn set_user_enabled(
        &self,
        tenant: Uuid,
        user: &str,
        enabled: bool,
    ) -> Result<(), SimError> {
        self.world()
            .tenant_mut(tenant)?
            .set_account_enabled(user, enabled)
    }

    pub(crate) fn delete_user(
        &self,
        tenant: Uuid,
        user: &str,
        permanently: bool,
    ) -> Result<(), SimError> {
        self.world()
            .tenant_mut(tenant)?
            .remove_user(user, permanently)
    }

    pub(crate) fn rename_user(
        &self,
        tenant: Uuid,
        user: &str,
        rename: &UserRename,
    ) -> Result<(), SimError> {
        self.world().tenant_mut(tenant)?.rename_user(user, rename)
    }

    pub(crate) fn add_user_address(
        &self,
        tenant: Uuid,
        user: &str,
        address: &str,
    ) -> Result<(), SimError> {
        self.world().tenant_mut(tenant)?.add_address(user, address)
    }

    /// Withdraws admin consent: new tokens are refused and issued ones stop working.
    pub(crate) fn set_consent(&self, tenant: Uuid, consented: bool) -> Result<(), SimError> {
        let mut world = self.world();
        world.tenant_mut(tenant)?.consented = consented;
        if !consented {
            world.revoke_tokens(tenant);
        }
        Ok(())
    }

    /// Replaces the app's secret; tokens already issued stay valid until they expire.
    pub(crate) fn rotate_secret(&self, tenant: Uuid) -> Result<SecretString, SimError> {
        let mut world = self.world();
        let secret = world.random_token(30);
        world.tenant_mut(tenant)?.client_secret = secret.clone();
        Ok(SecretString::from(secret))
    }

    pub(crate) fn set_permission(
        &self,
        tenant: Uuid,
        permission: &str,
        granted: bool,
    ) -> Result<(), SimError> {
        let mut world = self.world();
        let revoked = &mut world.tenant_mut(tenant)?.revoked_permissions;
        if granted {
            revoked.remove(permission);
        } else {
            revoked.insert(permission.to_owned());
        }
        Ok(())
    }

    pub(crate) fn messages(&self, tenant: Uuid, user: &str) -> Result<Vec<Value>, SimError> {
        let world = self.world();
        let user_state = world
            .tenant(tenant)?
            .user(user)
            .ok_or_else(|| SimError::UnknownUser(user.to_owned()))?;
        Ok(user_state
            .mailbox
            .iter()
            .flat_map(|m| m.messages.iter().map(|s| s.json.clone()))
            .collect())
    }

    pub(crate) fn subscriptions(&self, tenant: Uuid) -> Result<Vec<Value>, SimError> {
        let world = self.world();
        let tenant_state = world.tenant(tenant)?;
        Ok(tenant_state
            .subscriptions
            .iter()
            .map(|s| s.to_json(tenant))
            .collect())
    }

    pub(crate) fn set_page_size(&self, page_size: usize) {
        self.world().page_size = page_size.max(1);
    }

    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        self.world().tokens.keys().cloned().collect()
    }

    pub(crate) fn inject(&self, spec: FaultSpec) -> u64 {
        self.faults().add(spec)
    }

    pub(crate) fn active_faults(&self) -> Vec<ActiveFault> {
        self.faults().list()
    }

    pub(crate) fn clear_faults(&self) {
        self.faults().clear();
    }
}

type SharedSim = State<Arc<Sim>>;
type Answer<T> = Result<Json<T>, SimError>;

pub(crate) fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/fleet", get(fleet))
        .route("/requests", get(requests).delete(clear_requests))
        .route("/faults", get(faults).post(inject).delete(clear_faults))
        .route("/page-size", put(page_size))
        .route("/tenants/{tenant}/policies", get(policies).post(add_policy))
        .route(
            "/tenants/{tenant}/policies/{id}",
            put(replace_policy).delete(remove_policy),
        )
        .route("/tenants/{tenant}/users", post(add_user))
        .route(
            "/tenants/{tenant}/users/{user}",
            axum::routing::delete(delete_user),
        )
        .route("/tenants/{tenant}/users/{user}/disable", post(disable_user))
        .route("/tenants/{tenant}/users/{user}/enable", post(enable_user))
        .route("/tenants/{tenant}/users/{user}/rename", post(rename_user))
        .route(
            "/tenants/{tenant}/users/{user}/addresses",
            post(add_user_address),
        )
        .route("/tenants/{tenant}/consent/revoke", post(revoke_consent))
        .route("/tenants/{tenant}/consent/grant", post(grant_consent))
        .route("/tenants/{tenant}/secret/rotate", post(rotate_secret))
        .route(
            "/tenants/{tenant}/permissions/revoke",
            post(revoke_permission),
        )
        .route(
            "/tenants/{tenant}/permissions/grant",
            post(grant_permission),
        )
        .route(
            "/tenants/{tenant}/mailboxes/{user}/messages",
            get(messages).post(deliver_mail),
        )
        .route("/tenants/{tenant}/subscriptions", get(subscriptions))
}

async fn fleet(State(sim): SharedSim) -> Answer<Value> {
    let partner = sim.partner()?;
    let tenants = sim.tenants();
    Ok(Json(json!({
        "loginBase": sim.url("/login").as_str(),
        "graphBase": sim.url("/graph/v1.0").as_str(),
        "cippBase": sim.url("/cipp").as_str(),
        "cippApiClientId": sim.cipp_api_client_id(),
        "partner": TenantView::from(&partner),
        "tenants": tenants.iter().map(TenantView::from).collect::<Vec<_>>(),
    })))
}

async fn requests(State(sim): SharedSim) -> Json<Vec<RequestRecord>> {
    Json(sim.requests())
}

async fn clear_requests(State(sim): SharedSim) -> StatusCode {
    sim.clear_requests();
    StatusCode::NO_CONTENT
}

async fn faults(State(sim): SharedSim) -> Json<Vec<ActiveFault>> {
    Json(sim.active_faults())
}

async fn inject(State(sim): SharedSim, Json(spec): Json<FaultSpec>) -> (StatusCode, Json<Value>) {
    let id = sim.inject(spec);
    (StatusCode::CREATED, Json(json!({ "id": id })))
}

async fn clear_faults(State(sim): SharedSim) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageSize {
    page_size: usize,
}

async fn page_size(State(sim): SharedSim, Json(body): Json<PageSize>) -> StatusCode {
    sim.set_page_size(body.page_size);
    StatusCode::NO_CONTENT
}

async fn policies(State(sim): SharedSim, Path(tenant): Path<Uuid>) -> Answer<Vec<Value>> {
    sim.policies(tenant).map(Json)
}

async fn add_policy(
    State(sim): SharedSim,
    Path(tenant): Path<Uuid>,
    Json(policy): Json<Value>,
) -> Answer<Value> {
    sim.upsert_policy(tenant, policy).map(Json)
}

async fn replace_policy(
    State(sim): SharedSim,
    Path((tenant, id)): Path<(Uuid, String)>,
    Json(mut policy): Json<Value>,
) -> Answer<Value> {
    if let Some(fields) = policy.as_object_mut() {
        fields.insert("id".to_owned(), json!(id));
    }
    sim.upsert_policy(tenant, policy).map(Json)
}

async fn remove_policy(
    State(sim): SharedSim,
    Path((tenant, id)): Path<(Uuid, String)>,
) -> Result<StatusCode, SimError> {
    sim.remove_policy(tenant, &id)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn add_user(
    State(sim): SharedSim,
    Path(tenant): Path<Uuid>,
    Json(user): Json<NewSimUser>,
) -> Answer<Value> {
    sim.add_user(tenant, &user).map(Json)
}

#[derive(Deserialize)]
struct Removal {
    #[serde(default)]
    permanent: bool,
}

async fn delete_user(
    State(sim): SharedSim,
    Path((tenant, user)): Path<(Uuid, String)>,
    Query(removal): Query<Removal>,
) -> Result<StatusCode, SimError> {
    sim.delete_user(tenant, &user, removal.permanent)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn disable_user(
    State(sim): SharedSim,
    Path((tenant, user)): Path<(Uuid, String)>,
) -> Result<StatusCode, SimError> {
    sim.set_user_enabled(tenant, &user, false)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn enable_user(
    State(sim): SharedSim,
    Path((tenant, user)): Path<(Uuid, String)>,
) -> Result<StatusCode, SimError> {
    sim.set_user_enabled(tenant, &user, true)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn rename_user(
    State(sim): SharedSim,
    Path((tenant, user)): Path<(Uuid, String)>,
    Json(rename): Json<UserRename>,
) -> Result<StatusCode, SimError> {
    sim.rename_user(tenant, &user, &rename)
        .map(|()| StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct NewAddress {
    address: String,
}

async fn add_user_address(
    State(sim): SharedSim,
    Path((tenant, user)): Path<(Uuid, String)>,
    Json(body): Json<NewAddress>,
) -> Result<StatusCode, SimError> {
    sim.add_user_address(tenant, &user, &body.address)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn revoke_consent(
    State(sim): SharedSim,
    Path(tenant): Path<Uuid>,
) -> Result<StatusCode, SimError> {
    sim.set_consent(tenant, false)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn grant_consent(
    State(sim): SharedSim,
    Path(tenant): Path<Uuid>,
) -> Result<StatusCode, SimError> {
    sim.set_consent(tenant, true)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn rotate_secret(State(sim): SharedSim, Path(tenant): Path<Uuid>) -> Answer<Value> {
    let secret = sim.rotate_secret(tenant)?;
    Ok(Json(json!({ "clientSecret": secret.expose_secret() })))
}

#[derive(Deserialize)]
struct PermissionChange {
    permission: String,
}

async fn revoke_permission(
    State(sim): SharedSim,
    Path(tenant): Path<Uuid>,
    Json(change): Json<PermissionChange>,
) -> Result<StatusCode, SimError> {
    sim.set_permission(tenant, &change.permission, false)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn grant_permission(
    State(sim): SharedSim,
    Path(tenant): Path<Uuid>,
    Json(change): Json<PermissionChange>,
) -> Result<StatusCode, SimError> {
    sim.set_permission(tenant, &change.permission, true)
        .map(|()| StatusCode::NO_CONTENT)
}

async fn messages(
    State(sim): SharedSim,
    Path((tenant, user)): Path<(Uuid, String)>,
) -> Answer<Vec<Value>> {
    sim.messages(tenant, &user).map(Json)
}

async fn deliver_mail(
    State(sim): SharedSim,
    Path((tenant, user)): Path<(Uuid, String)>,
    Json(mail): Json<NewMail>,
) -> Answer<DeliveryReport> {
    sim.deliver_mail(tenant, &user, &mail).await.map(Json)
}

async fn subscriptions(State(sim): SharedSim, Path(tenant): Path<Uuid>) -> Answer<Vec<Value>> {
    sim.subscriptions(tenant).map(Json)
}
