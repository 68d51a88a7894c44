//! Change notifications beyond the first delivery: Graph delivers a notification more than
//! once, a forger can post one with the wrong `clientState`, and Graph sends lifecycle
//! notifications (`subscriptionRemoved`, `reauthorizationRequired`, `missed`) and lets
//! subscriptions expire. Tests drive these through [`SimHandle`](super::SimHandle).

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::state::Sim;
use super::world::SubscriptionState;
use super::{Delivery, SimError};

impl Sim {
    fn subscription(&self, tenant: Uuid, id: &str) -> Result<SubscriptionState, SimError> {
        let world = self.world();
        let t = world
            .tenants
            .get(&tenant)
            .ok_or(SimError::UnknownTenant(tenant))?;
        t.subscriptions
            .iter()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| SimError::Invalid(format!("no subscription {id}")))
    }

    async fn post(&self, url: &str, subscription_id: &str, body: &Value) -> Delivery {
        let outcome = self.http.post(url).json(body).send().await;
        Delivery {
            subscription_id: subscription_id.to_owned(),
            status: outcome.as_ref().ok().map(|r| r.status().as_u16()),
            error: outcome.err().map(|_| "could not connect".to_owned()),
        }
    }

    /// Posts the `created` notification of a stored message again, to subscription `id`,
    /// with `client_state` instead of the registered one when given.
    pub(crate) async fn notify_message(
        &self,
        tenant: Uuid,
        id: &str,
        message_id: &str,
        client_state: Option<&str>,
    ) -> Result<Delivery, SimError> {
        let s = self.subscription(tenant, id)?;
        let resource = format!("Users/{}/Messages/{message_id}", s.user_id);
        let body = json!({"value": [{
            "subscriptionId": s.id,
            "subscriptionExpirationDateTime": s.expiration.to_rfc3339(),
            "clientState": client_state.map(str::to_owned).or(s.client_state.clone()),
            "changeType": "created",
            "tenantId": tenant,
            "resource": resource,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": resource,
                "id": message_id,
            },
        }]});
        Ok(self.post(&s.notification_url, &s.id, &body).await)
    }

    /// Posts a lifecycle notification (`subscriptionRemoved`, `reauthorizationRequired`,
    /// `missed`) for subscription `id` to its lifecycle URL (else its notification URL).
    pub(crate) async fn notify_lifecycle(
        &self,
        tenant: Uuid,
        id: &str,
        event: &str,
    ) -> Result<Delivery, SimError> {
        let s = self.subscription(tenant, id)?;
        let body = json!({"value": [{
            "subscriptionId": s.id,
            "subscriptionExpirationDateTime": s.expiration.to_rfc3339(),
            "clientState": s.client_state,
            "tenantId": tenant,
            "lifecycleEvent": event,
        }]});
        let url = s
            .lifecycle_notification_url
            .clone()
            .unwrap_or(s.notification_url.clone());
        Ok(self.post(&url, &s.id, &body).await)
    }

    /// Graph drops a subscription: it is gone, and `subscriptionRemoved` is posted.
    pub(crate) async fn remove_subscription(
        &self,
        tenant: Uuid,
        id: &str,
    ) -> Result<Delivery, SimError> {
        let delivery = self
            .notify_lifecycle(tenant, id, "subscriptionRemoved")
            .await;
        let mut world = self.world();
        let t = world.tenant_mut(tenant)?;
        t.subscriptions.retain(|s| s.id != id);
        delivery
    }

    /// A subscription runs out now (as if nobody renewed it in time).
    pub(crate) fn expire_subscription(&self, tenant: Uuid, id: &str) -> Result<(), SimError> {
        let mut world = self.world();
        let t = world.tenant_mut(tenant)?;
        let s = t
            .subscriptions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| SimError::Invalid(format!("no subscription {id}")))?;
        s.expiration = Utc::now() - chrono::Duration::seconds(1);
        Ok(())
    }
}

/// The token service's refresh-token grant (delegated access): the app's own credentials,
/// a refresh token it was given for a user, and a new access token and (rotated) refresh
/// token back. A revoked or unknown refresh token is `invalid_grant`.
pub(crate) fn refresh_grant(
    world: &mut super::world::World,
    tenant_key: &str,
    tenant: Option<Uuid>,
    form: &std::collections::HashMap<String, String>,
) -> Result<Value, super::routes::OAuthRefusal> {
    use super::routes::OAuthRefusal;
    let field = |key: &str| form.get(key).map(String::as_str).unwrap_or_default();
    let Some(state) = tenant.and_then(|id| world.tenants.get(&id)) else {
        return Err(OAuthRefusal::new(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant_key}' not found."),
        ));
    };
    if field("client_id") != state.client_id || field("client_secret") != state.client_secret {
        return Err(OAuthRefusal::new(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        ));
    }
    let tenant = state.id;
    let Some((owner_tenant, user)) = world.refresh_tokens.get(field("refresh_token")).cloned()
    else {
        return Err(OAuthRefusal::new(
            400,
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity or was revoked.",
        ));
    };
    if owner_tenant != tenant {
        return Err(OAuthRefusal::new(
            400,
            "invalid_grant",
            9002313,
            "Invalid request. Request is malformed or invalid.",
        ));
    }
    world.refresh_tokens.remove(field("refresh_token"));
    let rotated = format!("simrt.{}", world.random_token(24));
    world
        .refresh_tokens
        .insert(rotated.clone(), (tenant, user.clone()));
    let access = world.issue_token(tenant, super::world::Audience::Graph);
    world.delegated.insert(access.clone(), user);
    let lifetime = world.token_lifetime.as_secs();
    Ok(json!({
        "token_type": "Bearer",
        "scope": "Mail.ReadWrite User.Read offline_access",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access,
        "refresh_token": rotated,
    }))
}

/// `GET /me`: the user a delegated token was issued for.
pub(crate) async fn me(
    axum::extract::State(sim): axum::extract::State<std::sync::Arc<Sim>>,
    incoming: super::http::Incoming,
) -> axum::response::Response {
    let bearer = incoming
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    sim.serve(crate::Endpoint::Me, &incoming, |world, tenant| {
        let user = bearer
            .as_deref()
            .and_then(|t| world.delegated.get(t))
            .cloned()
            .ok_or_else(|| {
                super::wire::Failure::bad_request(
                    "/me request is only valid with delegated authentication flow.",
                )
            })?;
        let state = world
            .tenants
            .get(&tenant)
            .and_then(|t| t.user(&user))
            .ok_or_else(|| {
                super::wire::Failure::new(
                    404,
                    "Request_ResourceNotFound",
                    "Resource does not exist.",
                )
            })?;
        Ok((200, state.json.clone()))
    })
    .await
}

impl Sim {
    /// The id of `user` (id or UPN) of `tenant`.
    fn user_id(&self, tenant: Uuid, user: &str) -> Result<String, SimError> {
        self.world()
            .tenants
            .get(&tenant)
            .ok_or(SimError::UnknownTenant(tenant))?
            .user(user)
            .map(|u| u.id().to_owned())
            .ok_or_else(|| SimError::UnknownUser(user.to_owned()))
    }

    /// A refresh token for `user` of `tenant`, as an interactive consent would give one.
    pub(crate) fn issue_refresh_token(&self, tenant: Uuid, user: &str) -> Result<String, SimError> {
        let user_id = self.user_id(tenant, user)?;
        let mut world = self.world();
        let token = format!("simrt.{}", world.random_token(24));
        world
            .refresh_tokens
            .insert(token.clone(), (tenant, user_id));
        Ok(token)
    }

    /// Revokes every refresh token of `user` (a password reset, a revoked consent).
    pub(crate) fn revoke_refresh_tokens(&self, tenant: Uuid, user: &str) -> Result<(), SimError> {
        let user_id = self.user_id(tenant, user)?;
        self.world()
            .refresh_tokens
            .retain(|_, (t, u)| !(*t == tenant && *u == user_id));
        Ok(())
    }
}

/// `GET /users/{user}/mailFolders/inbox/messages[?$filter=receivedDateTime ge <time>]`:
/// the inbox's messages, oldest first.
pub(crate) async fn list_inbox_messages(
    axum::extract::State(sim): axum::extract::State<std::sync::Arc<Sim>>,
    axum::extract::Path((user, folder)): axum::extract::Path<(String, String)>,
    incoming: super::http::Incoming,
) -> axum::response::Response {
    sim.serve(
        crate::Endpoint::ListInboxMessages,
        &incoming,
        |world, tenant| {
            let page_size = world.page_size;
            let not_found = || {
                super::wire::Failure::new(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                )
            };
            if !folder.eq_ignore_ascii_case("inbox") {
                return Err(not_found());
            }
            let since = match incoming.query("$filter") {
                None => None,
                Some(f) => Some(
                    f.strip_prefix("receivedDateTime ge ")
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
                        .map(|t| t.with_timezone(&Utc))
                        .ok_or_else(|| {
                            super::wire::Failure::bad_request("Invalid filter clause")
                        })?,
                ),
            };
            let user_state = world
                .tenants
                .get_mut(&tenant)
                .and_then(|t| t.user_mut(&user))
                .ok_or_else(not_found)?;
            let mailbox = user_state.mailbox.as_ref().ok_or_else(not_found)?;
            let inbox = mailbox.folder_id("inbox").unwrap_or_default().to_owned();
            let mut items: Vec<Value> = mailbox
                .messages
                .iter()
                .filter(|m| m.json["parentFolderId"] == json!(inbox))
                .filter(|m| {
                    since.is_none_or(|s| {
                        m.json["receivedDateTime"]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .is_some_and(|t| t.with_timezone(&Utc) >= s)
                    })
                })
                .map(|m| m.json.clone())
                .collect();
            items.sort_by(|a, b| {
                a["receivedDateTime"]
                    .as_str()
                    .cmp(&b["receivedDateTime"].as_str())
            });
            let set = format!("users('{user}')/mailFolders('inbox')/messages");
            super::wire::page(
                &items,
                &incoming,
                page_size,
                1000,
                &set,
                &["internetMessageHeaders"],
            )
            .map(|b| (200, b))
        },
    )
    .await
}
