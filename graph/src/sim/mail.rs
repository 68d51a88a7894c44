//! Mailboxes, messages and change-notification subscriptions, including the validation
//! handshake at create and the notifications sent when mail is delivered.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Duration as Minutes, Utc};
use serde_json::{json, Map, Value};
use url::Url;
use uuid::Uuid;

use super::http::Incoming;
use super::state::{Reply, Sim};
use super::wire::{html_to_text, page, project, Failure};
use super::world::{timestamp, Mailbox, SubscriptionState, TenantState, World};
use super::{Delivery, DeliveryReport, NewMail, SimError};
use crate::Endpoint;

type SharedSim = State<Arc<Sim>>;

fn mailbox_of<'a>(
    world: &'a mut World,
    tenant: Uuid,
    user: &str,
) -> Result<&'a mut Mailbox, Failure> {
    let user_state = world
        .tenants
        .get_mut(&tenant)
        .and_then(|t| t.user_mut(user))
        .ok_or_else(|| {
            Failure::new(404, "ResourceNotFound", "Resource could not be discovered.")
        })?;
    user_state.mailbox.as_mut().ok_or_else(|| {
        Failure::new(
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        )
    })
}

fn item_not_found() -> Failure {
    Failure::new(
        404,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn json_body(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(Failure::bad_request("Unable to read JSON request payload.")),
    }
}

pub(crate) async fn get_inbox(
    State(sim): SharedSim,
    Path((user, folder)): Path<(String, String)>,
    incoming: Incoming,
) -> Response {
    sim.serve(Endpoint::GetInbox, &incoming, |world, tenant| {
        let mailbox = mailbox_of(world, tenant, &user)?;
        if !folder.eq_ignore_ascii_case("inbox") {
            return Err(item_not_found());
        }
        let id = mailbox.folder_id("inbox").unwrap_or_default().to_owned();
        let in_inbox = mailbox
            .messages
            .iter()
            .filter(|m| m.json["parentFolderId"] == json!(id));
        let (total, unread) = in_inbox.fold((0, 0), |(total, unread), m| {
            (
                total + 1,
                unread + usize::from(m.json["isRead"] == json!(false)),
            )
        });
        Ok((
            200,
            json!({
                "@odata.context": incoming.context(&format!("users('{user}')/mailFolders/$entity")),
                "id": id,
                "displayName": "Inbox",
                "parentFolderId": format!("{id}-root"),
                "childFolderCount": 0,
                "unreadItemCount": unread,
                "totalItemCount": total,
                "sizeInBytes": total * 2048,
                "isHidden": false,
            }),
        ))
    })
    .await
}

pub(crate) async fn get_message(
    State(sim): SharedSim,
    Path((user, message)): Path<(String, String)>,
    incoming: Incoming,
) -> Response {
    sim.serve(Endpoint::GetMessage, &incoming, |world, tenant| {
        let mailbox = mailbox_of(world, tenant, &user)?;
        let stored = mailbox.message_mut(&message).ok_or_else(item_not_found)?;
        let mut body = project(
            &stored.json,
            incoming.query("$select"),
            &["internetMessageHeaders"],
        );
        let wants_text = incoming
            .header("prefer")
            .is_some_and(|p| p.contains("outlook.body-content-type=\"text\""));
        if wants_text && body["body"]["contentType"] == json!("html") {
            let text = html_to_text(body["body"]["content"].as_str().unwrap_or_default());
            body["body"] = json!({"contentType": "text", "content": text});
        }
        // `$expand=attachments($select=...)`: the attachments' metadata in the message.
        if incoming
            .query("$expand")
            .is_some_and(|e| e.split(',').any(|p| p.trim().starts_with("attachments")))
        {
            let fields = [
                "@odata.type",
                "id",
                "name",
                "contentType",
                "size",
                "isInline",
            ];
            let attachments: Vec<Value> = stored
                .attachments
                .iter()
                .map(|a| {
                    Value::Object(
                        fields
                            .iter()
                            .filter_map(|f| a.get(*f).map(|v| ((*f).to_owned(), v.clone())))
                            .collect(),
                    )
                })
                .collect();
            body["attachments"] = Value::Array(attachments);
        }
        body["@odata.context"] =
            json!(incoming.context(&format!("users('{user}')/messages/$entity")));
        Ok((200, body))
    })
    .await
}

pub(crate) async fn list_attachments(
    State(sim): SharedSim,
    Path((user, message)): Path<(String, String)>,
    incoming: Incoming,
) -> Response {
    sim.serve(Endpoint::ListAttachments, &incoming, |world, tenant| {
        let page_size = world.page_size;
        let mailbox = mailbox_of(world, tenant, &user)?;
        let stored = mailbox.message_mut(&message).ok_or_else(item_not_found)?;
        let set = format!("users('{user}')/messages('{message}')/attachments");
        page(&stored.attachments, &incoming, page_size, 999, &set, &[]).map(|b| (200, b))
    })
    .await
}

pub(crate) async fn set_categories(
    State(sim): SharedSim,
    Path((user, message)): Path<(String, String)>,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    sim.serve(
        Endpoint::SetMessageCategories,
        &incoming,
        |world, tenant| {
            let changes = json_body(&body)?;
            let mailbox = mailbox_of(world, tenant, &user)?;
            let stored = mailbox.message_mut(&message).ok_or_else(item_not_found)?;
            if let Some(categories) = changes.get("categories") {
                let valid = categories
                    .as_array()
                    .is_some_and(|c| c.iter().all(Value::is_string));
                if !valid {
                    return Err(Failure::new(
                        400,
                        "ErrorInvalidProperty",
                        "categories must be a list of strings.",
                    ));
                }
                stored.json["categories"] = categories.clone();
            }
            if let Some(is_read) = changes.get("isRead").filter(|v| v.is_boolean()) {
                stored.json["isRead"] = is_read.clone();
            }
            stored.json["lastModifiedDateTime"] = json!(timestamp(Utc::now()));
            Ok((
                200,
                project(&stored.json, None, &["internetMessageHeaders"]),
            ))
        },
    )
    .await
}

pub(crate) async fn move_message(
    State(sim): SharedSim,
    Path((user, message)): Path<(String, String)>,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    sim.serve(Endpoint::MoveMessage, &incoming, |world, tenant| {
        let request = json_body(&body)?;
        let destination = request
            .get("destinationId")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::bad_request("destinationId is required."))?
            .to_owned();
        let new_id = format!("AAMkAD{}", world.random_token(24));
        let mailbox = mailbox_of(world, tenant, &user)?;
        let folder = mailbox
            .folder_id(&destination)
            .ok_or_else(|| {
                Failure::new(
                    404,
                    "ErrorItemNotFound",
                    "The specified folder could not be found in the store.",
                )
            })?
            .to_owned();
        let stored = mailbox.message_mut(&message).ok_or_else(item_not_found)?;
        // A move creates a new item: the old id is gone.
        stored.json["id"] = json!(new_id);
        stored.json["parentFolderId"] = json!(folder);
        stored.json["lastModifiedDateTime"] = json!(timestamp(Utc::now()));
        Ok((
            201,
            project(&stored.json, None, &["internetMessageHeaders"]),
        ))
    })
    .await
}

/// A subscription request, checked.
struct Requested {
    change_type: String,
    notification_url: Url,
    lifecycle_notification_url: Option<Url>,
    resource: String,
    user: String,
    expiration: DateTime<Utc>,
    client_state: Option<String>,
}

fn parse_url(fields: &Map<String, Value>, key: &str) -> Result<Option<Url>, Failure> {
    let Some(value) = fields.get(key).and_then(Value::as_str) else {
        return Ok(None);
    };
    // Graph insists on HTTPS; the simulator also accepts HTTP so tests need no certificates.
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Some(url)),
        _ => Err(Failure::bad_request(format!("Invalid {key}."))),
    }
}

/// `users/{id|upn}/messages` or `users/{id|upn}/mailFolders('Inbox')/messages`.
fn mailbox_user(resource: &str) -> Option<String> {
    let parts: Vec<&str> = resource.trim_start_matches('/').split('/').collect();
    let inbox = |p: &str| {
        let lower = p.to_ascii_lowercase();
        lower == "mailfolders('inbox')"
    };
    match parts.as_slice() {
        [users, user, messages]
            if users.eq_ignore_ascii_case("users") && messages.eq_ignore_ascii_case("messages") =>
        {
            Some((*user).to_owned())
        }
        [users, user, folder, messages]
            if users.eq_ignore_ascii_case("users")
                && inbox(folder)
                && messages.eq_ignore_ascii_case("messages") =>
        {
            Some((*user).to_owned())
        }
        _ => None,
    }
}

fn check_expiration(
    fields: &Map<String, Value>,
    max_minutes: i64,
) -> Result<DateTime<Utc>, Failure> {
    let expiration = fields
        .get("expirationDateTime")
        .and_then(Value::as_str)
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|v| v.with_timezone(&Utc))
        .ok_or_else(|| Failure::bad_request("expirationDateTime is required."))?;
    let now = Utc::now();
    if expiration <= now {
        return Err(Failure::new(
            400,
            "ExtensionError",
            "Subscription expiration must be in the future.",
        ));
    }
    if expiration > now + Minutes::minutes(max_minutes) {
        return Err(Failure::new(
            400,
            "ExtensionError",
            format!("Subscription expiration can only be {max_minutes} minutes in the future."),
        ));
    }
    Ok(expiration)
}

fn check_subscription(fields: &Map<String, Value>, max_minutes: i64) -> Result<Requested, Failure> {
    let text = |key: &str| {
        fields
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let change_type = text("changeType");
    let known = ["created", "updated", "deleted"];
    if change_type.is_empty() || !change_type.split(',').all(|c| known.contains(&c.trim())) {
        return Err(Failure::bad_request("Invalid changeType."));
    }
    let notification_url = parse_url(fields, "notificationUrl")?
        .ok_or_else(|| Failure::bad_request("notificationUrl is required."))?;
    let resource = text("resource");
    let user = mailbox_user(&resource)
        .ok_or_else(|| Failure::bad_request(format!("Resource '{resource}' is not supported.")))?;
    let client_state = fields
        .get("clientState")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if client_state
        .as_ref()
        .is_some_and(|s| s.chars().count() > 128)
    {
        return Err(Failure::bad_request(
            "clientState is limited to 128 characters.",
        ));
    }
    Ok(Requested {
        change_type,
        lifecycle_notification_url: parse_url(fields, "lifecycleNotificationUrl")?,
        notification_url,
        resource,
        user,
        expiration: check_expiration(fields, max_minutes)?,
        client_state,
    })
}

impl Sim {
    /// Graph POSTs `?validationToken=` and expects it back as text/plain within 10 s.
    async fn validate_endpoint(&self, url: &Url) -> bool {
        let token = format!(
            "Validation: Testing client application reachability for subscription Request-Id: {}",
            Uuid::new_v4()
        );
        let mut target = url.clone();
        target
            .query_pairs_mut()
            .append_pair("validationToken", &token);
        let Ok(response) = self
            .http
            .post(target)
            .header("content-type", "text/plain; charset=utf-8")
            .send()
            .await
        else {
            return false;
        };
        let plain = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain"));
        let status = response.status().as_u16();
        let echoed = response.text().await.is_ok_and(|body| body == token);
        status == 200 && plain && echoed
    }

    async fn create_subscription(&self, tenant: Uuid, body: &[u8]) -> Reply {
        let fields = json_body(body)?;
        let requested = check_subscription(&fields, self.world().subscription_max_minutes)?;
        let user_id = mailbox_owner(&mut self.world(), tenant, &requested.user)?;
        let urls = std::iter::once(&requested.notification_url)
            .chain(&requested.lifecycle_notification_url);
        for url in urls {
            if !self.validate_endpoint(url).await {
                return Err(Failure::bad_request(
                    "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
                ));
            }
        }
        let mut world = self.world();
        let id = world.new_uuid().to_string();
        let tenant_state = world.tenants.get_mut(&tenant).ok_or_else(item_not_found)?;
        let subscription = SubscriptionState {
            id,
            resource: requested.resource,
            user_id,
            change_type: requested.change_type,
            notification_url: requested.notification_url.to_string(),
            lifecycle_notification_url: requested.lifecycle_notification_url.map(|u| u.to_string()),
            expiration: requested.expiration,
            client_state: requested.client_state,
            application_id: tenant_state.client_id.clone(),
        };
        let mut body = subscription.to_json(tenant);
        body["@odata.context"] = json!(format!(
            "{}graph/v1.0/$metadata#subscriptions/$entity",
            self.base
        ));
        tenant_state.subscriptions.push(subscription);
        Ok((201, body))
    }

    /// Stores a message in a mailbox's inbox and notifies the subscriptions watching it.
    pub(crate) async fn deliver_mail(
        &self,
        tenant: Uuid,
        user: &str,
        mail: &NewMail,
    ) -> Result<DeliveryReport, SimError> {
        let (user_id, message_id, targets) = {
            let mut world = self.world();
            let message_id = format!("AAMkAD{}", world.random_token(24));
            let attachment_ids = (0..mail.attachments.len())
                .map(|_| format!("AAMkADAtt{}", world.random_token(12)))
                .collect();
            let tenant_state = world.tenant_mut(tenant)?;
            let (user_id, message_id) =
                tenant_state.store_mail(user, mail, message_id, attachment_ids)?;
            let targets = watching(tenant_state, &user_id);
            (user_id, message_id, targets)
        };
        let resource = format!("Users/{user_id}/Messages/{message_id}");
        let mut deliveries = Vec::new();
        for subscription in targets {
            let notification = json!({"value": [{
                "subscriptionId": subscription.id,
                "subscriptionExpirationDateTime": subscription.expiration.to_rfc3339(),
                "clientState": subscription.client_state,
                "changeType": "created",
                "tenantId": tenant,
                "resource": resource,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Message",
                    "@odata.id": resource,
                    "@odata.etag": format!("W/\"CQAAAB{}\"", &message_id[message_id.len().saturating_sub(8)..]),
                    "id": message_id,
                },
            }]});
            let outcome = self
                .http
                .post(&subscription.notification_url)
                .json(&notification)
                .send()
                .await;
            deliveries.push(Delivery {
                subscription_id: subscription.id,
                status: outcome.as_ref().ok().map(|r| r.status().as_u16()),
                error: outcome.err().map(|e| {
                    if e.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        "could not connect".to_owned()
                    }
                }),
            });
        }
        Ok(DeliveryReport {
            user_id,
            message_id,
            deliveries,
        })
    }
}

/// The id of a user who has a mailbox.
fn mailbox_owner(world: &mut World, tenant: Uuid, user: &str) -> Result<String, Failure> {
    mailbox_of(world, tenant, user)?;
    let owner = world.tenants.get(&tenant).and_then(|t| t.user(user));
    owner.map(|u| u.id().to_owned()).ok_or_else(item_not_found)
}

/// Live subscriptions for new mail in the user's mailbox.
fn watching(tenant: &TenantState, user_id: &str) -> Vec<SubscriptionState> {
    let now = Utc::now();
    tenant
        .subscriptions
        .iter()
        .filter(|s| s.user_id == user_id && s.expiration > now)
        .filter(|s| s.change_type.split(',').any(|c| c.trim() == "created"))
        .cloned()
        .collect()
}

pub(crate) async fn create_subscription(
    State(sim): SharedSim,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    let admitted = match sim.admit(Endpoint::CreateSubscription, &incoming).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let reply = sim.create_subscription(admitted.tenant, &body).await;
    sim.reply(admitted, &incoming, reply)
}

fn subscription_not_found(id: &str) -> Failure {
    Failure::new(
        404,
        "ResourceNotFound",
        format!("The object was not found: {id}"),
    )
}

pub(crate) async fn renew_subscription(
    State(sim): SharedSim,
    Path(id): Path<String>,
    incoming: Incoming,
    body: Bytes,
) -> Response {
    sim.serve(Endpoint::RenewSubscription, &incoming, |world, tenant| {
        let fields = json_body(&body)?;
        let expiration = check_expiration(&fields, world.subscription_max_minutes)?;
        let tenant_state = world.tenants.get_mut(&tenant).ok_or_else(item_not_found)?;
        let now = Utc::now();
        let subscription = tenant_state
            .subscriptions
            .iter_mut()
            .find(|s| s.id == id && s.expiration > now)
            .ok_or_else(|| subscription_not_found(&id))?;
        subscription.expiration = expiration;
        Ok((200, subscription.to_json(tenant)))
    })
    .await
}

pub(crate) async fn delete_subscription(
    State(sim): SharedSim,
    Path(id): Path<String>,
    incoming: Incoming,
) -> Response {
    sim.serve(Endpoint::DeleteSubscription, &incoming, |world, tenant| {
        let tenant_state = world.tenants.get_mut(&tenant).ok_or_else(item_not_found)?;
        let before = tenant_state.subscriptions.len();
        tenant_state.subscriptions.retain(|s| s.id != id);
        if tenant_state.subscriptions.len() == before {
            return Err(subscription_not_found(&id));
        }
        Ok((204, Value::Null))
    })
    .await
}
