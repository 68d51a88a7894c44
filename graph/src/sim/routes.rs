//! The simulator's router, the token service, and the directory, policy, license, partner and
//! CIPP endpoints. Mail lives in `mail.rs`, the admin API in `admin.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::faults::Fault;
use super::http::{record, Incoming, Tag};
use super::mail;
use super::state::{tagged, Reply, Sim};
use super::wire::{
    decode_token, encode_token, json_response, malformed_response, page, project, Failure,
    GONE_PAGE,
};
use super::world::{Audience, TenantState, World};
use crate::Endpoint;

type SharedSim = State<Arc<Sim>>;

pub(crate) fn router(sim: Arc<Sim>) -> Router {
    let graph = Router::new()
        .route("/identity/conditionalAccess/policies", get(list_policies))
        .route("/subscribedSkus", get(list_skus))
        .route("/users", get(list_users))
        .route("/users/delta", get(users_delta))
        .route("/users/{user}", get(get_user))
        .route("/users/{user}/mailFolders/{folder}", get(mail::get_inbox))
        .route(
            "/users/{user}/messages/{message}",
            get(mail::get_message).patch(mail::set_categories),
        )
        .route(
            "/users/{user}/messages/{message}/attachments",
            get(mail::list_attachments),
        )
        .route(
            "/users/{user}/messages/{message}/move",
            post(mail::move_message),
        )
        .route("/contracts", get(list_contracts))
        .route(
            "/tenantRelationships/delegatedAdminCustomers",
            get(list_customers),
        )
        .route("/me", get(super::notify::me))
        .route(
            "/users/{user}/mailFolders/{folder}/messages",
            get(super::notify::list_inbox_messages),
        )
        .route("/subscriptions", post(mail::create_subscription))
        .route(
            "/subscriptions/{id}",
            axum::routing::patch(mail::renew_subscription).delete(mail::delete_subscription),
        )
        .fallback(unknown_segment);
    Router::new()
        .route("/login/{tenant}/oauth2/v2.0/token", post(token))
        .route("/cipp/api/ListTenants", get(cipp_list_tenants))
        .route("/cipp/api/ListUsers", get(cipp_list_users))
        .nest("/graph/v1.0", graph)
        .nest("/_sim", super::admin::router())
        .layer(middleware::from_fn_with_state(sim.clone(), record))
        .with_state(sim)
}

async fn unknown_segment(incoming: Incoming) -> Response {
    let segment = incoming
        .path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut response =
        Failure::bad_request(format!("Resource not found for the segment '{segment}'."))
            .render(&incoming);
    response.extensions_mut().insert(Tag {
        endpoint: None,
        tenant: None,
    });
    response
}

fn tenant_of(world: &World, tenant: Uuid) -> Result<&TenantState, Failure> {
    world.tenants.get(&tenant).ok_or_else(|| {
        Failure::new(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        )
    })
}

fn ok(body: Result<Value, Failure>) -> Reply {
    body.map(|body| (200, body))
}

async fn list_policies(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(
        Endpoint::ListConditionalAccessPolicies,
        &incoming,
        |world, tenant| {
            let policies = &tenant_of(world, tenant)?.policies;
            ok(page(
                policies,
                &incoming,
                world.page_size,
                999,
                "identity/conditionalAccess/policies",
                &[],
            ))
        },
    )
    .await
}

async fn list_skus(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(Endpoint::ListSubscribedSkus, &incoming, |world, tenant| {
        let skus = &tenant_of(world, tenant)?.skus;
        ok(page(
            skus,
            &incoming,
            world.page_size,
            999,
            "subscribedSkus",
            &[],
        ))
    })
    .await
}

/// `accountEnabled` is returned only when `$select`ed.
const USER_HIDDEN: &[&str] = &["accountEnabled"];

async fn list_users(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(Endpoint::ListUsers, &incoming, |world, tenant| {
        let users = tenant_of(world, tenant)?.present_users();
        ok(page(
            &users,
            &incoming,
            world.page_size,
            999,
            "users",
            USER_HIDDEN,
        ))
    })
    .await
}

async fn get_user(State(sim): SharedSim, Path(user): Path<String>, incoming: Incoming) -> Response {
    sim.serve(Endpoint::GetUser, &incoming, |world, tenant| {
        let found = tenant_of(world, tenant)?.user(&user).ok_or_else(|| {
            Failure::new(
                404,
                "Request_ResourceNotFound",
                format!("Resource '{user}' does not exist or one of its queried reference-property objects are not present."),
            )
        })?;
        let mut body = project(&found.json, incoming.query("$select"), USER_HIDDEN);
        body["@odata.context"] = json!(incoming.context("users/$entity"));
        Ok((200, body))
    })
    .await
}

/// Where a delta page continues: the round's bounds, the offset and the selected fields.
#[derive(Serialize, Deserialize)]
struct DeltaCursor {
    since: Option<u64>,
    upto: u64,
    o: usize,
    s: Option<String>,
}

/// Where the next round starts.
#[derive(Serialize, Deserialize)]
struct DeltaStart {
    v: u64,
    s: Option<String>,
}

async fn users_delta(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(Endpoint::UsersDelta, &incoming, |world, tenant| {
        let tenant = tenant_of(world, tenant)?;
        let cursor = if let Some(token) = incoming.query("$skiptoken") {
            if token == GONE_PAGE {
                return Err(Failure::new(
                    404,
                    "ResourceNotFound",
                    "The page was not found.",
                ));
            }
            decode_token::<DeltaCursor>(token)
                .ok_or_else(|| Failure::bad_request("Invalid $skiptoken."))?
        } else if let Some(token) = incoming.query("$deltatoken") {
            let start = decode_token::<DeltaStart>(token).ok_or_else(|| {
                Failure::new(
                    410,
                    "resyncRequired",
                    "Resync required. The delta token is no longer valid.",
                )
            })?;
            DeltaCursor {
                since: Some(start.v),
                upto: tenant.version,
                o: 0,
                s: start.s,
            }
        } else {
            DeltaCursor {
                since: None,
                upto: tenant.version,
                o: 0,
                s: incoming.query("$select").map(str::to_owned),
            }
        };
        let entries: Vec<Value> = tenant
            .users
            .iter()
            .filter(|u| match cursor.since {
                None => u.removed.is_none() && u.changed_at <= cursor.upto,
                Some(since) => u.changed_at > since && u.changed_at <= cursor.upto,
            })
            .map(|u| match u.removed {
                Some(reason) => json!({"id": u.id(), "@removed": {"reason": reason}}),
                None => project(&u.json, cursor.s.as_deref(), USER_HIDDEN),
            })
            .collect();
        let end = (cursor.o + world.page_size).min(entries.len());
        let mut body = json!({
            "@odata.context": incoming.context("users"),
            "value": entries.get(cursor.o..end).unwrap_or_default(),
        });
        if end < entries.len() {
            let next = DeltaCursor { o: end, ..cursor };
            body["@odata.nextLink"] = json!(incoming.link("$skiptoken", &encode_token(&next)));
        } else {
            let start = DeltaStart {
                v: cursor.upto,
                s: cursor.s,
            };
            body["@odata.deltaLink"] = json!(incoming.link("$deltatoken", &encode_token(&start)));
        }
        Ok((200, body))
    })
    .await
}

async fn list_contracts(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(Endpoint::ListContracts, &incoming, |world, tenant| {
        let contracts = &tenant_of(world, tenant)?.contracts;
        ok(page(
            contracts,
            &incoming,
            world.page_size,
            999,
            "contracts",
            &[],
        ))
    })
    .await
}

async fn list_customers(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(
        Endpoint::ListDelegatedAdminCustomers,
        &incoming,
        |world, tenant| {
            let customers = &tenant_of(world, tenant)?.customers;
            let set = "tenantRelationships/delegatedAdminCustomers";
            ok(page(customers, &incoming, world.page_size, 300, set, &[]))
        },
    )
    .await
}

async fn cipp_list_tenants(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(Endpoint::CippListTenants, &incoming, |world, _| {
        let mut tenants: Vec<Value> = world
            .customers
            .iter()
            .filter_map(|id| world.tenants.get(id))
            .map(|t| {
                json!({
                    "customerId": t.id,
                    "defaultDomainName": t.domain,
                    "displayName": t.display_name,
                    "initialDomainName": t.domain,
                    "GraphErrorCount": 0,
                    "LastGraphError": "",
                    "delegatedPrivilegeStatus": "granularDelegatedAdminPrivileges",
                })
            })
            .collect();
        if let Some(domain) = incoming.query("tenantFilter") {
            tenants.retain(|t| t["defaultDomainName"].as_str().is_some_and(|d| d.eq_ignore_ascii_case(domain)));
        }
        if incoming.query("AllTenantSelector").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            tenants.insert(
                0,
                json!({"customerId": "AllTenants", "defaultDomainName": "AllTenants",
                       "displayName": "*All Tenants", "initialDomainName": "AllTenants", "GraphErrorCount": 0}),
            );
        }
        Ok((200, Value::Array(tenants)))
    })
    .await
}

/// CIPP's user list of one managed tenant (`tenantFilter`: its id or default domain): a bare
/// array of Graph user objects, `accountEnabled` included, removed users left out.
async fn cipp_list_users(State(sim): SharedSim, incoming: Incoming) -> Response {
    sim.serve(Endpoint::CippListUsers, &incoming, |world, _| {
        let filter = incoming.query("tenantFilter").unwrap_or_default();
        let tenant = world
            .find_tenant(filter)
            .filter(|id| world.customers.contains(id))
            .ok_or_else(|| {
                Failure::bad_request(format!("tenantFilter '{filter}' names no managed tenant."))
            })?;
        Ok((200, Value::Array(tenant_of(world, tenant)?.present_users())))
    })
    .await
}

/// The token service: client credentials only.
async fn token(
    State(sim): SharedSim,
    Path(tenant_key): Path<String>,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let tenant = sim.world().find_tenant(&tenant_key);
    let drawn = sim.faults().draw(tenant, Endpoint::Token);
    if let Some(delay_ms) = drawn.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let refusal = |status, error, code, description: &str| {
        Err(OAuthRefusal::new(status, error, code, description))
    };
    let result = match drawn.fault {
        Some(Fault::Unauthorized) => refusal(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        ),
        Some(Fault::Forbidden) => refusal(
            400,
            "unauthorized_client",
            700016,
            "Application was not found in the directory.",
        ),
        Some(Fault::Throttled { retry_after_secs }) => Err(OAuthRefusal {
            retry_after: retry_after_secs,
            ..OAuthRefusal::new(429, "temporarily_unavailable", 50196, "The server is busy.")
        }),
        Some(Fault::ServerError { status }) => refusal(
            status,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred.",
        ),
        Some(Fault::Malformed) => return tagged(malformed_response(), Endpoint::Token, tenant),
        Some(Fault::MissingValue) => Ok(json!({"token_type": "Bearer", "expires_in": 3599})),
        _ => issue_token(&mut sim.world(), &tenant_key, tenant, &incoming, &body),
    };
    let response = match result {
        Ok(token) => json_response(200, &token),
        Err(refusal) => refusal.render(&incoming),
    };
    tagged(response, Endpoint::Token, tenant)
}

fn issue_token(
    world: &mut World,
    tenant_key: &str,
    tenant: Option<Uuid>,
    incoming: &Incoming,
    body: &[u8],
) -> Result<Value, OAuthRefusal> {
    let mut form: HashMap<String, String> =
        url::form_urlencoded::parse(body).into_owned().collect();
    if let Some((id, secret)) = basic_credentials(incoming) {
        form.entry("client_id".to_owned()).or_insert(id);
        form.entry("client_secret".to_owned()).or_insert(secret);
    }
    let field = |key: &str| form.get(key).map(String::as_str).unwrap_or_default();
    if field("grant_type") == "refresh_token" {
        return super::notify::refresh_grant(world, tenant_key, tenant, &form);
    }
    if field("grant_type") != "client_credentials" {
        return Err(OAuthRefusal::new(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        ));
    }
    let Some(tenant) = tenant.and_then(|id| world.tenants.get(&id)) else {
        return Err(OAuthRefusal::new(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant_key}' not found."),
        ));
    };
    if field("client_id").is_empty() {
        return Err(OAuthRefusal::new(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    }
    // GDAP: the partner tenant's app is issued tokens for its customers' tenants with its
    // own credentials.
    let partner_app = world
        .tenants
        .get(&world.partner)
        .filter(|_| world.customers.contains(&tenant.id))
        .filter(|p| field("client_id") == p.client_id && field("client_secret") == p.client_secret)
        .is_some();
    if field("client_id") != tenant.client_id && !partner_app {
        return Err(OAuthRefusal::new(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory '{}'.",
                field("client_id"),
                tenant.domain
            ),
        ));
    }
    if !partner_app && field("client_secret") != tenant.client_secret {
        return Err(OAuthRefusal::new(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID."));
    }
    let audience = match field("scope") {
        "https://graph.microsoft.com/.default" => Audience::Graph,
        scope
            if tenant.id == world.partner
                && scope == format!("api://{}/.default", world.cipp_api_client_id) =>
        {
            Audience::Cipp
        }
        _ => {
            return Err(OAuthRefusal::new(
                400,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not valid.",
            ))
        }
    };
    if !tenant.consented {
        return Err(OAuthRefusal {
            suberror: Some("consent_required"),
            ..OAuthRefusal::new(
                400,
                "invalid_grant",
                65001,
                &format!("The user or administrator has not consented to use the application with ID '{}'.", tenant.client_id),
            )
        });
    }
    let tenant = tenant.id;
    let lifetime = world.token_lifetime.as_secs();
    let token = world.issue_token(tenant, audience);
    Ok(
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
    )
}

fn basic_credentials(incoming: &Incoming) -> Option<(String, String)> {
    let encoded = incoming.header("authorization")?.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// The token service's error shape.
pub(crate) struct OAuthRefusal {
    status: u16,
    error: &'static str,
    code: u32,
    description: String,
    suberror: Option<&'static str>,
    retry_after: Option<u64>,
}

impl OAuthRefusal {
    pub(crate) fn new(status: u16, error: &'static str, code: u32, description: &str) -> Self {
        Self {
            status,
            error,
            code,
            description: description.to_owned(),
            suberror: None,
            retry_after: None,
        }
    }

    fn render(&self, incoming: &Incoming) -> Response {
        let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let trace_id = incoming.ids.request_id.clone();
        let correlation_id = incoming.ids.client_request_id.clone();
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        if let Some(suberror) = self.suberror {
            body["suberror"] = json!(suberror);
        }
        let mut response = json_response(self.status, &body);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
