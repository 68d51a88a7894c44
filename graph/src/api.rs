//! What the rest of tenantflow may ask of Microsoft. Other crates hold an
//! `Arc<dyn GraphApi>`; production passes a [`GraphClient`](crate::GraphClient) configured for
//! Microsoft, tests the same client pointed at the simulator.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::models::DelegatedGrant;
use crate::models::{
    AttachmentMeta, CippTenant, ConditionalAccessPolicy, Contract, DelegatedAdminCustomer,
    DeltaLink, MailFolder, Message, MoveDestination, NewSubscription, SubscribedSku, Subscription,
    User, UsersDelta,
};
use crate::{AppCredentials, CippCredentials, GraphError};
use secrecy::SecretString;

/// Typed calls to Microsoft Graph, the token service and CIPP.
#[async_trait]
pub trait GraphApi: Send + Sync {
    /// Obtains an app-only token (and caches it): the credentials work.
    async fn verify_credentials(&self, app: &AppCredentials) -> Result<(), GraphError>;

    /// Asks the token service for a new token now, even when a cached one is still valid
    /// (and caches the new one): a connection test. A token issued before a secret was
    /// revoked keeps working until it expires, so only a new request tells whether the
    /// credential still does.
    async fn test_credentials(&self, app: &AppCredentials) -> Result<(), GraphError>;

    /// Every Conditional Access policy of the tenant, all pages.
    async fn list_conditional_access_policies(
        &self,
        app: &AppCredentials,
    ) -> Result<Vec<ConditionalAccessPolicy>, GraphError>;

    /// The tenant's subscribed SKUs. A 403 comes back as `ProviderPermissionMissing`;
    /// callers gating on licenses may remap it to `LicensePermissionMissing`.
    async fn list_subscribed_skus(
        &self,
        app: &AppCredentials,
    ) -> Result<Vec<SubscribedSku>, GraphError>;

    /// Every user, with [`USER_FIELDS`](crate::models::USER_FIELDS).
    async fn list_users(&self, app: &AppCredentials) -> Result<Vec<User>, GraphError>;

    /// One round of users delta: from the start (`None`) or from the previous round's link.
    async fn users_delta(
        &self,
        app: &AppCredentials,
        from: Option<&DeltaLink>,
    ) -> Result<UsersDelta, GraphError>;

    /// A user by id or userPrincipalName.
    async fn get_user(&self, app: &AppCredentials, user: &str) -> Result<User, GraphError>;

    /// The user's inbox: proves an Exchange Online mailbox exists and is readable.
    async fn get_inbox(&self, app: &AppCredentials, user: &str) -> Result<MailFolder, GraphError>;

    /// Customers of a partner tenant (`/contracts`).
    async fn list_contracts(&self, app: &AppCredentials) -> Result<Vec<Contract>, GraphError>;

    /// Customers with a GDAP relationship to the partner tenant.
    async fn list_delegated_admin_customers(
        &self,
        app: &AppCredentials,
    ) -> Result<Vec<DelegatedAdminCustomer>, GraphError>;

    /// Tenants managed through a partner's CIPP instance. A CIPP internal failure (one entry
    /// with an empty `customerId`) comes back as `GraphUnavailable`.
    async fn cipp_list_tenants(
        &self,
        cipp: &CippCredentials,
    ) -> Result<Vec<CippTenant>, GraphError>;

    /// Users of one managed tenant through a partner's CIPP instance (`tenant`: its id or
    /// default domain). CIPP answers a bare array of Graph user objects, without paging.
    async fn cipp_list_users(
        &self,
        cipp: &CippCredentials,
        tenant: &str,
    ) -> Result<Vec<User>, GraphError>;

    /// Creates a change-notification subscription (Graph validates the notification URL first).
    async fn create_subscription(
        &self,
        app: &AppCredentials,
        subscription: &NewSubscription,
    ) -> Result<Subscription, GraphError>;

    /// Moves a subscription's expiry.
    async fn renew_subscription(
        &self,
        app: &AppCredentials,
        subscription_id: &str,
        expiration: DateTime<Utc>,
    ) -> Result<Subscription, GraphError>;

    /// Deletes a subscription.
    async fn delete_subscription(
        &self,
        app: &AppCredentials,
        subscription_id: &str,
    ) -> Result<(), GraphError>;

    /// A message with [`MESSAGE_FIELDS`](crate::models::MESSAGE_FIELDS) (headers included),
    /// its body as text.
    async fn get_message(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
    ) -> Result<Message, GraphError>;

    /// Metadata of a message's attachments (no content).
    async fn list_attachments(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
    ) -> Result<Vec<AttachmentMeta>, GraphError>;

    /// Replaces a message's categories.
    async fn set_message_categories(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
        categories: &[String],
    ) -> Result<Message, GraphError>;

    /// Redeems a mailbox owner's refresh token for a new access token (and the rotated
    /// refresh token), with the app's own credentials. A revoked or expired refresh token
    /// is `MailboxRefreshTokenRevoked`.
    async fn refresh_delegated_token(
        &self,
        app: &AppCredentials,
        refresh_token: &SecretString,
    ) -> Result<DelegatedGrant, GraphError>;

    /// Ids and received times of the inbox's messages received at or after `since`,
    /// oldest first, all pages.
    async fn list_inbox_messages(
        &self,
        app: &AppCredentials,
        user: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Message>, GraphError>;

    /// The signed-in user of a delegated access token (`/me`).
    async fn get_me(
        &self,
        tenant: uuid::Uuid,
        access_token: &SecretString,
    ) -> Result<User, GraphError>;

    /// Moves a message; the moved message has a new id.
    async fn move_message(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
        destination: &MoveDestination,
    ) -> Result<Message, GraphError>;
}
