//! The simulated fleet: tenants, their directory, licenses, policies, mailboxes and
//! subscriptions, and the tokens issued for them. Only touched under the simulator's lock.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::wire::Failure;
use super::{NewMail, NewSimUser, SimError, SimMailbox, SimTenant, UserRename};
use crate::models::RemovedReason;

/// Who a token was issued to, and for which API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    Graph,
    Cipp,
}

#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub(crate) tenant: Uuid,
    pub(crate) audience: Audience,
    expires_at: Instant,
}

pub(crate) struct World {
    pub(crate) page_size: usize,
    pub(crate) subscription_max_minutes: i64,
    pub(crate) token_lifetime: Duration,
    pub(crate) partner: Uuid,
    pub(crate) customers: Vec<Uuid>,
    pub(crate) cipp_api_client_id: String,
    pub(crate) tenants: HashMap<Uuid, TenantState>,
    pub(crate) tokens: HashMap<String, IssuedToken>,
    /// The token count at which expired tokens are next forgotten: twice what the last
    /// pruning kept, so issuing a fleet's tokens does not scan every token each time.
    pub(crate) prune_tokens_at: usize,
    /// Delegated refresh tokens: token to (tenant, user id).
    pub(crate) refresh_tokens: HashMap<String, (Uuid, String)>,
    /// Delegated access tokens: token to the user id it was issued for.
    pub(crate) delegated: HashMap<String, String>,
    /// Seeded, so ids minted while running are reproducible too.
    pub(crate) rng: StdRng,
}

pub(crate) struct TenantState {
    pub(crate) id: Uuid,
    pub(crate) display_name: String,
    pub(crate) domain: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) consented: bool,
    pub(crate) revoked_permissions: BTreeSet<String>,
    pub(crate) policies: Vec<Value>,
    pub(crate) skus: Vec<Value>,
    pub(crate) users: Vec<UserState>,
    /// Bumped on every directory change; delta tokens name a version.
    pub(crate) version: u64,
    pub(crate) contracts: Vec<Value>,
    pub(crate) customers: Vec<Value>,
    pub(crate) subscriptions: Vec<SubscriptionState>,
}

pub(crate) struct UserState {
    pub(crate) json: Value,
    pub(crate) changed_at: u64,
    pub(crate) removed: Option<RemovedReason>,
    pub(crate) mailbox: Option<Mailbox>,
}

pub(crate) struct Mailbox {
    /// Well-known name (`inbox`, ...) to folder id.
    pub(crate) folders: Vec<(String, String)>,
    pub(crate) messages: Vec<StoredMessage>,
}

pub(crate) struct StoredMessage {
    pub(crate) json: Value,
    pub(crate) attachments: Vec<Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct SubscriptionState {
    pub(crate) id: String,
    pub(crate) resource: String,
    pub(crate) user_id: String,
    pub(crate) change_type: String,
    pub(crate) notification_url: String,
    pub(crate) lifecycle_notification_url: Option<String>,
    pub(crate) expiration: DateTime<Utc>,
    pub(crate) client_state: Option<String>,
    pub(crate) application_id: String,
}

impl SubscriptionState {
    pub(crate) fn to_json(&self, tenant: Uuid) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": timestamp(self.expiration),
            "creatorId": tenant,
            "includeResourceData": false,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": null,
            "encryptionCertificateId": null,
            "notificationQueryOptions": null,
        })
    }
}

pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn str_field<'a>(json: &'a Value, key: &str) -> &'a str {
    json.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl UserState {
    pub(crate) fn id(&self) -> &str {
        str_field(&self.json, "id")
    }

    pub(crate) fn upn(&self) -> &str {
        str_field(&self.json, "userPrincipalName")
    }

    fn answers_to(&self, key: &str) -> bool {
        self.id().eq_ignore_ascii_case(key) || self.upn().eq_ignore_ascii_case(key)
    }
}

impl Mailbox {
    pub(crate) fn folder_id(&self, name_or_id: &str) -> Option<&str> {
        self.folders
            .iter()
            .find(|(name, id)| name.eq_ignore_ascii_case(name_or_id) || id == name_or_id)
            .map(|(_, id)| id.as_str())
    }

    pub(crate) fn message_mut(&mut self, id: &str) -> Option<&mut StoredMessage> {
        self.messages
            .iter_mut()
            .find(|m| str_field(&m.json, "id") == id)
    }
}

impl World {
    pub(crate) fn find_tenant(&self, key: &str) -> Option<Uuid> {
        if let Ok(id) = key.parse::<Uuid>() {
            return self.tenants.contains_key(&id).then_some(id);
        }
        self.tenants
            .values()
            .find(|t| t.domain.eq_ignore_ascii_case(key))
            .map(|t| t.id)
    }

    pub(crate) fn tenant(&self, id: Uuid) -> Result<&TenantState, SimError> {
        self.tenants.get(&id).ok_or(SimError::UnknownTenant(id))
    }

    pub(crate) fn tenant_mut(&mut self, id: Uuid) -> Result<&mut TenantState, SimError> {
        self.tenants.get_mut(&id).ok_or(SimError::UnknownTenant(id))
    }

    pub(crate) fn random_token(&mut self, bytes: usize) -> String {
        let mut buffer = vec![0u8; bytes];
        self.rng.fill_bytes(&mut buffer);
        URL_SAFE_NO_PAD.encode(buffer)
    }

    pub(crate) fn new_uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid()
    }

    /// An opaque bearer token from the OS's randomness: unguessable even with the seed.
    pub(crate) fn issue_token(&mut self, tenant: Uuid, audience: Audience) -> String {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = format!("sim.{}", URL_SAFE_NO_PAD.encode(bytes));
        let now = Instant::now();
        if self.tokens.len() >= self.prune_tokens_at {
            // An expired token is refused whether or not it is still here.
            self.tokens.retain(|_, issued| issued.expires_at > now);
            self.prune_tokens_at = (2 * self.tokens.len()).max(1024);
        }
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                tenant,
                audience,
                expires_at: now + self.token_lifetime,
            },
        );
        token
    }

    /// The tenant a bearer token was issued for, if it is valid for this API.
    pub(crate) fn check_token(&self, token: &str, audience: Audience) -> Result<Uuid, Failure> {
        let invalid = |why: &str| {
            Failure::new(
                401,
                "InvalidAuthenticationToken",
                format!("Access token validation failure. {why}"),
            )
        };
        let issued = self
            .tokens
            .get(token)
            .ok_or_else(|| invalid("Invalid signature."))?;
        if issued.expires_at <= Instant::now() {
            return Err(invalid("Lifetime validation failed, the token is expired."));
        }
        if issued.audience != audience {
            return Err(invalid("Invalid audience."));
        }
        Ok(issued.tenant)
    }

    pub(crate) fn revoke_tokens(&mut self, tenant: Uuid) {
        self.tokens.retain(|_, issued| issued.tenant != tenant);
    }

    pub(crate) fn public_tenant(&self, id: Uuid) -> Result<SimTenant, SimError> {
        let tenant = self.tenant(id)?;
        Ok(SimTenant {
            tenant_id: tenant.id,
            display_name: tenant.display_name.clone(),
            default_domain: tenant.domain.clone(),
            client_id: tenant.client_id.clone(),
            client_secret: tenant.client_secret.clone().into(),
            mailboxes: tenant
                .users
                .iter()
                .filter(|u| u.removed.is_none() && u.mailbox.is_some())
                .map(|u| SimMailbox {
                    user_id: u.id().to_owned(),
                    user_principal_name: u.upn().to_owned(),
                })
                .collect(),
        })
    }
}

impl TenantState {
    /// A present (not removed) user by id or UPN.
    pub(crate) fn user(&self, key: &str) -> Option<&UserState> {
        self.users
            .iter()
            .find(|u| u.removed.is_none() && u.answers_to(key))
    }

    /// Every user not removed, as the directory lists them.
    pub(crate) fn present_users(&self) -> Vec<Value> {
        self.users
            .iter()
            .filter(|u| u.removed.is_none())
            .map(|u| u.json.clone())
            .collect()
    }

    pub(crate) fn user_mut(&mut self, key: &str) -> Option<&mut UserState> {
        self.users
            .iter_mut()
            .find(|u| u.removed.is_none() && u.answers_to(key))
    }

    fn touch(&mut self, key: &str) -> Result<&mut UserState, SimError> {
        self.version += 1;
        let version = self.version;
        let user = self
            .user_mut(key)
            .ok_or_else(|| SimError::UnknownUser(key.to_owned()))?;
        user.changed_at = version;
        Ok(user)
    }

    pub(crate) fn set_account_enabled(&mut self, key: &str, enabled: bool) -> Result<(), SimError> {
        self.touch(key)?.json["accountEnabled"] = json!(enabled);
        Ok(())
    }

    /// Renames a user; given name and surname change only when given.
    pub(crate) fn rename_user(&mut self, key: &str, rename: &UserRename) -> Result<(), SimError> {
        let json = &mut self.touch(key)?.json;
        json["displayName"] = json!(rename.display_name);
        if let Some(given) = &rename.given_name {
            json["givenName"] = json!(given);
        }
        if let Some(surname) = &rename.surname {
            json["surname"] = json!(surname);
        }
        Ok(())
    }

    /// Gives a user another address: an `smtp:` alias in `proxyAddresses`.
    pub(crate) fn add_address(&mut self, key: &str, address: &str) -> Result<(), SimError> {
        if !address.contains('@') || address.contains(char::is_whitespace) {
            return Err(SimError::Invalid(format!("`{address}` is not an address")));
        }
        let json = &mut self.touch(key)?.json;
        let alias = json!(format!("smtp:{address}"));
        match json["proxyAddresses"].as_array_mut() {
            Some(addresses) if addresses.contains(&alias) => {}
            Some(addresses) => addresses.push(alias),
            None => json["proxyAddresses"] = json!([alias]),
        }
        Ok(())
    }

    pub(crate) fn remove_user(&mut self, key: &str, permanently: bool) -> Result<(), SimError> {
        let user = self.touch(key)?;
        user.removed = Some(if permanently {
            RemovedReason::Deleted
        } else {
            RemovedReason::Changed
        });
        Ok(())
    }

    pub(crate) fn add_user(&mut self, id: Uuid, new: &NewSimUser) -> Result<Value, SimError> {
        if self.user(&new.user_principal_name).is_some() {
            return Err(SimError::Invalid(format!(
                "user {} already exists",
                new.user_principal_name
            )));
        }
        self.version += 1;
        let json = json!({
            "id": id,
            "displayName": new.display_name,
            "givenName": new.given_name,
            "surname": new.surname,
            "mail": new.has_mailbox.then(|| new.user_principal_name.clone()),
            "userPrincipalName": new.user_principal_name,
            "jobTitle": new.job_title,
            "department": new.department,
            "businessPhones": [],
            "mobilePhone": null,
            "officeLocation": null,
            "preferredLanguage": "en-US",
            "proxyAddresses": proxy_addresses(new.has_mailbox, &new.user_principal_name),
            "accountEnabled": new.account_enabled,
        });
        let mailbox = new
            .has_mailbox
            .then(|| new_mailbox(&id.simple().to_string()));
        self.users.push(UserState {
            json: json.clone(),
            changed_at: self.version,
            removed: None,
            mailbox,
        });
        Ok(json)
    }

    /// Adds or replaces a policy by id; a policy without id gets one.
    pub(crate) fn upsert_policy(
        &mut self,
        new_id: Uuid,
        mut policy: Value,
    ) -> Result<Value, SimError> {
        let Some(fields) = policy.as_object_mut() else {
            return Err(SimError::Invalid(
                "a policy must be a JSON object".to_owned(),
            ));
        };
        for key in ["displayName", "state"] {
            if !fields.get(key).is_some_and(Value::is_string) {
                return Err(SimError::Invalid(format!("a policy needs a string {key}")));
            }
        }
        let now = timestamp(Utc::now());
        let id = match fields.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => new_id.to_string(),
        };
        fields.insert("id".to_owned(), json!(id));
        match self.policies.iter_mut().find(|p| str_field(p, "id") == id) {
            Some(existing) => {
                let created = existing
                    .get("createdDateTime")
                    .cloned()
                    .unwrap_or(json!(now));
                fields.insert("createdDateTime".to_owned(), created);
                fields.insert("modifiedDateTime".to_owned(), json!(now));
                *existing = policy.clone();
            }
            None => {
                fields.entry("createdDateTime").or_insert(json!(now));
                fields.entry("modifiedDateTime").or_insert(Value::Null);
                self.policies.push(policy.clone());
            }
        }
        Ok(policy)
    }

    pub(crate) fn remove_policy(&mut self, id: &str) -> Result<(), SimError> {
        let before = self.policies.len();
        self.policies.retain(|p| str_field(p, "id") != id);
        if self.policies.len() == before {
            return Err(SimError::UnknownPolicy(id.to_owned()));
        }
        Ok(())
    }

    /// Stores a delivered message in the inbox of a mailbox and returns its id.
    pub(crate) fn store_mail(
        &mut self,
        user: &str,
        mail: &NewMail,
        message_id: String,
        attachment_ids: Vec<String>,
    ) -> Result<(String, String), SimError> {
        let user = self
            .user_mut(user)
            .ok_or_else(|| SimError::UnknownUser(user.to_owned()))?;
        let user_id = user.id().to_owned();
        let address = str_field(&user.json, "mail").to_owned();
        let name = str_field(&user.json, "displayName").to_owned();
        let mailbox = user
            .mailbox
            .as_mut()
            .ok_or_else(|| SimError::Invalid(format!("{} has no mailbox", user_id)))?;
        let inbox = mailbox.folder_id("inbox").unwrap_or_default().to_owned();
        let (mut json, attachments) =
            message_json(mail, &message_id, &inbox, (&name, &address), attachment_ids);
        // A reply joins the conversation of the message it answers, as Exchange threads it.
        let answered: Vec<&str> = mail
            .headers
            .iter()
            .filter(|h| {
                h.name.eq_ignore_ascii_case("In-Reply-To")
                    || h.name.eq_ignore_ascii_case("References")
            })
            .flat_map(|h| h.value.split_whitespace())
            .collect();
        let conversation = mailbox
            .messages
            .iter()
            .find(|m| {
                m.json["internetMessageId"]
                    .as_str()
                    .is_some_and(|id| answered.contains(&id))
            })
            .map(|m| m.json["conversationId"].clone());
        if let Some(conversation) = conversation {
            json["conversationId"] = conversation;
        }
        mailbox.messages.push(StoredMessage { json, attachments });
        Ok((user_id, message_id))
    }
}

/// A mailbox user's primary address (`SMTP:`, upper case by Exchange's convention); none
/// without a mailbox.
pub(crate) fn proxy_addresses(has_mailbox: bool, address: &str) -> Vec<String> {
    if has_mailbox {
        vec![format!("SMTP:{address}")]
    } else {
        Vec::new()
    }
}

pub(crate) fn new_mailbox(seed: &str) -> Mailbox {
    let folders = ["inbox", "deleteditems", "junkemail", "archive"]
        .iter()
        .map(|name| {
            let id = format!("AQMk{}", URL_SAFE_NO_PAD.encode(format!("{seed}/{name}")));
            ((*name).to_owned(), id)
        })
        .collect();
    Mailbox {
        folders,
        messages: Vec::new(),
    }
}

fn recipient(name: &str, address: &str) -> Value {
    json!({"emailAddress": {"name": name, "address": address}})
}

fn message_json(
    mail: &NewMail,
    id: &str,
    folder: &str,
    (to_name, to_address): (&str, &str),
    attachment_ids: Vec<String>,
) -> (Value, Vec<Value>) {
    let now = Utc::now();
    let from = recipient(&mail.from_name, &mail.from_address);
    let to: Vec<Value> = if mail.to.is_empty() {
        vec![recipient(to_name, to_address)]
    } else {
        mail.to.iter().map(|a| recipient(a, a)).collect()
    };
    let cc: Vec<Value> = mail.cc.iter().map(|a| recipient(a, a)).collect();
    let (content_type, content) = match &mail.body_html {
        Some(html) => ("html", html.clone()),
        None => ("text", mail.body_text.clone()),
    };
    let preview: String = super::wire::html_to_text(&content)
        .chars()
        .take(255)
        .collect();
    // A Message-ID the sender set is the message's; otherwise one is made up.
    let given = mail
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Message-ID"))
        .map(|h| h.value.clone());
    let internet_message_id = given.unwrap_or_else(|| {
        format!(
            "<{}@{}>",
            Uuid::new_v4().simple(),
            domain_of(&mail.from_address)
        )
    });
    let mut headers = vec![
        json!({"name": "Message-ID", "value": internet_message_id}),
        json!({"name": "From", "value": format!("{} <{}>", mail.from_name, mail.from_address)}),
        json!({"name": "Subject", "value": mail.subject}),
    ];
    headers.extend(
        mail.headers
            .iter()
            .filter(|h| !h.name.eq_ignore_ascii_case("Message-ID"))
            .map(|h| json!({"name": h.name, "value": h.value})),
    );
    let attachments: Vec<Value> = mail
        .attachments
        .iter()
        .zip(attachment_ids)
        .map(|(a, attachment_id)| {
            let content = vec![b'x'; a.size.min(64 * 1024)];
            json!({
                "@odata.type": "#microsoft.graph.fileAttachment",
                "id": attachment_id,
                "name": a.name,
                "contentType": a.content_type,
                "size": a.size,
                "isInline": a.is_inline,
                "lastModifiedDateTime": timestamp(now),
                "contentId": null,
                "contentBytes": base64::engine::general_purpose::STANDARD.encode(content),
            })
        })
        .collect();
    let json = json!({
        "@odata.etag": format!("W/\"CQAAAB{}\"", &id[id.len().saturating_sub(8)..]),
        "id": id,
        "createdDateTime": timestamp(now),
        "lastModifiedDateTime": timestamp(now),
        "receivedDateTime": timestamp(now),
        "sentDateTime": timestamp(now),
        "hasAttachments": attachments.iter().any(|a| a["isInline"] == json!(false)),
        "internetMessageId": internet_message_id,
        "subject": mail.subject,
        "bodyPreview": preview,
        "importance": "normal",
        "parentFolderId": folder,
        "conversationId": format!("AAQk{}", &id[id.len().saturating_sub(12)..]),
        "isRead": false,
        "webLink": format!("https://outlook.office365.com/owa/?ItemID={id}"),
        "body": {"contentType": content_type, "content": content},
        "sender": from,
        "from": from,
        "toRecipients": to,
        "ccRecipients": cc,
        "bccRecipients": [],
        "replyTo": [],
        "categories": [],
        "internetMessageHeaders": headers,
    });
    (json, attachments)
}

fn domain_of(address: &str) -> &str {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("sim.invalid")
}
