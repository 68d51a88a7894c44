//! Typed shapes of what Microsoft returns (GRAPH_WIRE.md), as far as tenantflow reads them.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;
use uuid::Uuid;

/// Service plan id of Entra ID P1 (`AAD_PREMIUM`); E3/E5 bundles carry it too.
pub const AAD_PREMIUM_P1_PLAN: Uuid = Uuid::from_u128(0x41781fb2_bc02_4b7c_bd55_b576c07bb09d);
/// Service plan id of Entra ID P2 (`AAD_PREMIUM_P2`); E5 bundles carry it too.
pub const AAD_PREMIUM_P2_PLAN: Uuid = Uuid::from_u128(0xeec0eb4f_6444_4f95_aba0_50c24d67f998);

/// A Conditional Access policy: the whole object as Graph sent it, plus the fields
/// tenantflow reads directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct ConditionalAccessPolicy {
    pub id: String,
    pub display_name: String,
    pub state: PolicyState,
    /// Every field of the policy, unchanged (conditions, grant and session controls, ...).
    pub json: Map<String, Value>,
}

impl TryFrom<Value> for ConditionalAccessPolicy {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        let Value::Object(json) = value else {
            return Err("policy is not an object".to_owned());
        };
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        let id = text("id").ok_or("policy without id")?;
        let display_name = text("displayName").unwrap_or_default();
        let state = match json.get("state") {
            Some(state) => PolicyState::deserialize(state).map_err(|e| e.to_string())?,
            None => return Err("policy without state".to_owned()),
        };
        Ok(Self {
            id,
            display_name,
            state,
            json,
        })
    }
}

impl From<ConditionalAccessPolicy> for Value {
    fn from(policy: ConditionalAccessPolicy) -> Self {
        Value::Object(policy.json)
    }
}

/// Whether a Conditional Access policy is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyState {
    Enabled,
    Disabled,
    EnabledForReportingButNotEnforced,
    /// A state this version does not know yet.
    #[serde(other)]
    Unknown,
}

/// A subscribed SKU (license) of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribedSku {
    pub id: String,
    pub sku_id: Uuid,
    pub sku_part_number: String,
    #[serde(default)]
    pub applies_to: Option<String>,
    pub capability_status: String,
    #[serde(default)]
    pub consumed_units: i64,
    #[serde(default)]
    pub prepaid_units: Option<PrepaidUnits>,
    #[serde(default)]
    pub service_plans: Vec<ServicePlan>,
}

impl SubscribedSku {
    /// Whether the SKU carries the service plan and it is provisioned.
    pub fn provides(&self, service_plan_id: Uuid) -> bool {
        self.service_plans
            .iter()
            .any(|p| p.service_plan_id == service_plan_id && p.provisioning_status == "Success")
    }
}

/// Seat counts of a SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepaidUnits {
    #[serde(default)]
    pub enabled: i64,
    #[serde(default)]
    pub suspended: i64,
    #[serde(default)]
    pub warning: i64,
    #[serde(default)]
    pub locked_out: i64,
}

/// A service plan inside a SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    pub service_plan_id: Uuid,
    pub service_plan_name: String,
    pub provisioning_status: String,
    #[serde(default)]
    pub applies_to: Option<String>,
}

/// Fields requested for users, in lists and in delta rounds.
pub const USER_FIELDS: &str = "id,displayName,givenName,surname,mail,userPrincipalName,jobTitle,\
department,businessPhones,mobilePhone,officeLocation,proxyAddresses,accountEnabled";

/// A directory user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub business_phones: Vec<String>,
    #[serde(default)]
    pub mobile_phone: Option<String>,
    #[serde(default)]
    pub office_location: Option<String>,
    /// `SMTP:` (primary) and `smtp:` (alias) addresses, and others such as `x500:`.
    #[serde(default)]
    pub proxy_addresses: Vec<String>,
    /// Only present when selected.
    #[serde(default)]
    pub account_enabled: Option<bool>,
}

/// One entry of a users delta round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub enum UserChange {
    /// Created, restored or changed; carries the user's (selected) fields.
    Upserted(Box<User>),
    /// Removed from the directory.
    Removed { id: String, reason: RemovedReason },
}

impl TryFrom<Value> for UserChange {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        match value.get("@removed") {
            Some(removed) => {
                let reason = match removed.get("reason").and_then(Value::as_str) {
                    Some("deleted") => RemovedReason::Deleted,
                    _ => RemovedReason::Changed,
                };
                let id = value
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or("removed entry without id")?;
                Ok(Self::Removed {
                    id: id.to_owned(),
                    reason,
                })
            }
            None => User::deserialize(value)
                .map(|user| Self::Upserted(Box::new(user)))
                .map_err(|e| e.to_string()),
        }
    }
}

impl User {
    /// The user as the contact sync rules read it ([`domain::contact_sync`]). `None` when
    /// its id is not a GUID (Graph object ids always are; such an entry cannot be linked).
    pub fn to_upstream(&self) -> Option<domain::UpstreamUser> {
        Some(domain::UpstreamUser {
            object_id: self.id.parse().ok()?,
            display_name: self.display_name.clone(),
            given_name: self.given_name.clone(),
            surname: self.surname.clone(),
            mail: self.mail.clone(),
            user_principal_name: self.user_principal_name.clone(),
            proxy_addresses: self.proxy_addresses.clone(),
            account_enabled: self.account_enabled,
            business_phones: self.business_phones.clone(),
            mobile_phone: self.mobile_phone.clone(),
            job_title: self.job_title.clone(),
            department: self.department.clone(),
        })
    }
}

impl UserChange {
    /// The change as the contact sync rules read it; `None` for an id that is not a GUID.
    /// Soft and permanent removals are one: either way linked contacts become inactive.
    pub fn to_upstream(&self) -> Option<domain::UpstreamChange> {
        match self {
            UserChange::Upserted(user) => user
                .to_upstream()
                .map(|u| domain::UpstreamChange::Present(Box::new(u))),
            UserChange::Removed { id, .. } => id
                .parse()
                .ok()
                .map(|object_id| domain::UpstreamChange::Removed { object_id }),
        }
    }
}

/// Why a user left the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovedReason {
    /// Soft-deleted; may be restored.
    Changed,
    /// Permanently deleted.
    Deleted,
}

/// Where the next delta round starts: Graph's `@odata.deltaLink`, kept verbatim.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeltaLink(pub String);

impl std::fmt::Debug for DeltaLink {
    // The link is long and opaque; its length is enough to tell two apart in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeltaLink({} chars)", self.0.len())
    }
}

/// The changes of one delta round and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersDelta {
    pub changes: Vec<UserChange>,
    pub next: DeltaLink,
}

/// A customer of a partner tenant (`/contracts`); names are snapshots from when the
/// partnership began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contract {
    pub id: String,
    #[serde(default)]
    pub contract_type: Option<String>,
    pub customer_id: Uuid,
    #[serde(default)]
    pub default_domain_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A customer with a GDAP relationship (`/tenantRelationships/delegatedAdminCustomers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegatedAdminCustomer {
    pub id: String,
    pub tenant_id: Uuid,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A tenant as CIPP's `ListTenants` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CippTenant {
    #[serde(rename = "customerId")]
    pub customer_id: String,
    #[serde(rename = "defaultDomainName", default)]
    pub default_domain_name: Option<String>,
    #[serde(rename = "displayName", default)]
    pub display_name: Option<String>,
    #[serde(rename = "initialDomainName", default)]
    pub initial_domain_name: Option<String>,
    #[serde(rename = "GraphErrorCount", default)]
    pub graph_error_count: Option<i64>,
}

/// A request to be told about new mail in a mailbox.
#[derive(Clone)]
pub struct NewSubscription {
    /// Comma list of `created`, `updated`, `deleted`.
    pub change_type: String,
    pub notification_url: Url,
    pub resource: String,
    pub expiration: DateTime<Utc>,
    /// Echoed in every notification so the receiver can tell it is genuine.
    pub client_state: SecretString,
    pub lifecycle_notification_url: Option<Url>,
}

impl NewSubscription {
    /// New messages in the inbox of `user` (id or UPN).
    pub fn inbox_messages(
        user: &str,
        notification_url: Url,
        expiration: DateTime<Utc>,
        client_state: SecretString,
    ) -> Self {
        Self {
            change_type: "created".to_owned(),
            notification_url,
            resource: format!("users/{user}/mailFolders('Inbox')/messages"),
            expiration,
            client_state,
            lifecycle_notification_url: None,
        }
    }
}

impl std::fmt::Debug for NewSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSubscription")
            .field("change_type", &self.change_type)
            .field("notification_url", &self.notification_url.as_str())
            .field("resource", &self.resource)
            .field("expiration", &self.expiration)
            .field("client_state", &"[redacted]")
            .finish()
    }
}

/// What the token service gives for a refresh token: a delegated access token, the
/// rotated refresh token and how long the access token lives. Never printed.
#[derive(Clone, Deserialize)]
pub struct DelegatedGrant {
    pub access_token: SecretString,
    /// Absent when the service keeps the old one valid.
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    pub expires_in: u64,
}

impl std::fmt::Debug for DelegatedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatedGrant")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A change-notification subscription (its `clientState` is not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    pub expiration_date_time: DateTime<Utc>,
    #[serde(default)]
    pub application_id: Option<String>,
    #[serde(default)]
    pub creator_id: Option<String>,
}

/// A batch of change notifications as Graph POSTs it to a notificationUrl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNotificationBatch {
    pub value: Vec<ChangeNotification>,
}

/// One change notification.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeNotification {
    pub subscription_id: String,
    #[serde(default)]
    pub subscription_expiration_date_time: Option<DateTime<Utc>>,
    /// As registered with the subscription; compare it, never log it.
    #[serde(default)]
    pub client_state: Option<String>,
    pub change_type: String,
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    pub resource: String,
    #[serde(default)]
    pub resource_data: Option<ResourceData>,
}

impl std::fmt::Debug for ChangeNotification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeNotification")
            .field("subscription_id", &self.subscription_id)
            .field(
                "client_state",
                &self.client_state.as_ref().map(|_| "[redacted]"),
            )
            .field("change_type", &self.change_type)
            .field("tenant_id", &self.tenant_id)
            .field("resource", &self.resource)
            .finish()
    }
}

/// The changed item a notification points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceData {
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
    #[serde(rename = "@odata.id", default)]
    pub odata_id: Option<String>,
    #[serde(rename = "@odata.etag", default)]
    pub odata_etag: Option<String>,
    pub id: String,
}

/// Fields requested for a single message, headers included.
pub const MESSAGE_FIELDS: &str =
    "id,internetMessageId,subject,from,sender,toRecipients,ccRecipients,\
bccRecipients,replyTo,receivedDateTime,sentDateTime,body,bodyPreview,hasAttachments,conversationId,\
parentFolderId,categories,isRead,importance,webLink,internetMessageHeaders";

/// A mail message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    #[serde(default)]
    pub internet_message_id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub from: Option<Recipient>,
    #[serde(default)]
    pub sender: Option<Recipient>,
    #[serde(default)]
    pub to_recipients: Vec<Recipient>,
    #[serde(default)]
    pub cc_recipients: Vec<Recipient>,
    #[serde(default)]
    pub bcc_recipients: Vec<Recipient>,
    #[serde(default)]
    pub reply_to: Vec<Recipient>,
    #[serde(default)]
    pub received_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub sent_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub body: Option<ItemBody>,
    #[serde(default)]
    pub body_preview: Option<String>,
    #[serde(default)]
    pub has_attachments: Option<bool>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub parent_folder_id: Option<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub is_read: Option<bool>,
    #[serde(default)]
    pub importance: Option<String>,
    #[serde(default)]
    pub web_link: Option<String>,
    /// The attachments' metadata, when asked for with `$expand=attachments` (absent
    /// otherwise).
    #[serde(default)]
    pub attachments: Option<Vec<AttachmentMeta>>,
    #[serde(default)]
    pub internet_message_headers: Vec<MessageHeader>,
}

/// A sender or recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    pub email_address: EmailAddress,
}

/// Name and address of a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailAddress {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

/// A message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemBody {
    /// `html` or `text`.
    pub content_type: String,
    pub content: String,
}

/// One internet message header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageHeader {
    pub name: String,
    pub value: String,
}

/// Fields requested for attachments: metadata only, never the content.
pub const ATTACHMENT_FIELDS: &str = "id,name,contentType,size,isInline";

/// What is known of an attachment without downloading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentMeta {
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub is_inline: bool,
}

/// A mail folder (the connection test reads the inbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MailFolder {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub total_item_count: Option<i64>,
    #[serde(default)]
    pub unread_item_count: Option<i64>,
}

/// Where a message is moved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveDestination {
    Inbox,
    DeletedItems,
    JunkEmail,
    Archive,
    /// A folder by id.
    Folder(String),
}

impl MoveDestination {
    /// The `destinationId` Graph expects.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Inbox => "inbox",
            Self::DeletedItems => "deleteditems",
            Self::JunkEmail => "junkemail",
            Self::Archive => "archive",
            Self::Folder(id) => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_policy_keeps_every_field_it_was_sent() {
        let sent = json!({"id":"p1","displayName":"MFA","state":"enabledForReportingButNotEnforced",
            "conditions":{"users":{"includeUsers":["All"]}},"sessionControls":null});
        let policy: ConditionalAccessPolicy = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(policy.state, PolicyState::EnabledForReportingButNotEnforced);
        assert_eq!(serde_json::to_value(&policy).unwrap(), sent);
    }

    #[test]
    fn a_policy_without_id_is_refused() {
        let result = serde_json::from_value::<ConditionalAccessPolicy>(json!({"state":"enabled"}));
        assert!(result.is_err());
    }

    #[test]
    fn removed_users_are_told_apart_from_changed_ones() {
        let soft: UserChange =
            serde_json::from_value(json!({"id":"u1","@removed":{"reason":"changed"}})).unwrap();
        let hard: UserChange =
            serde_json::from_value(json!({"id":"u2","@removed":{"reason":"deleted"}})).unwrap();
        let changed: UserChange =
            serde_json::from_value(json!({"id":"u3","accountEnabled":false})).unwrap();
        assert!(matches!(
            soft,
            UserChange::Removed {
                reason: RemovedReason::Changed,
                ..
            }
        ));
        assert!(matches!(
            hard,
            UserChange::Removed {
                reason: RemovedReason::Deleted,
                ..
            }
        ));
        assert!(
            matches!(changed, UserChange::Upserted(user) if user.account_enabled == Some(false))
        );
    }

    #[test]
    fn a_delta_entry_becomes_the_sync_rules_input() {
        let id = "6e7b768e-07e2-4810-8459-485f84f8f204";
        let user: UserChange = serde_json::from_value(json!({
            "id": id, "displayName": "Adele Vance", "mail": "AdeleV@contoso.com",
            "proxyAddresses": ["SMTP:AdeleV@contoso.com", "smtp:adele@contoso.net"],
            "accountEnabled": false, "department": "Sales", "businessPhones": ["+1 425 555 0109"]
        }))
        .unwrap();
        let removed: UserChange =
            serde_json::from_value(json!({"id": id, "@removed": {"reason": "deleted"}})).unwrap();
        let not_a_guid: UserChange = serde_json::from_value(json!({"id": "u1"})).unwrap();

        let Some(domain::UpstreamChange::Present(upstream)) = user.to_upstream() else {
            panic!("a present user")
        };
        assert_eq!(upstream.object_id.to_string(), id);
        assert_eq!(upstream.account_enabled, Some(false));
        assert_eq!(upstream.department.as_deref(), Some("Sales"));
        assert!(upstream.emails().contains("adele@contoso.net"));
        assert_eq!(
            removed.to_upstream(),
            Some(domain::UpstreamChange::Removed {
                object_id: id.parse().unwrap()
            })
        );
        assert_eq!(not_a_guid.to_upstream(), None);
    }

    #[test]
    fn a_notification_debug_hides_the_client_state() {
        let notification: ChangeNotification = serde_json::from_value(json!({
            "subscriptionId":"s1","clientState":"hunter2","changeType":"created","resource":"Users/u/Messages/m"
        }))
        .unwrap();
        assert!(!format!("{notification:?}").contains("hunter2"));
    }
}
