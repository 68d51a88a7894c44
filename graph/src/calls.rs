//! The typed calls of [`GraphApi`], each bound to its registered [`Endpoint`].

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::ReasonCode;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::json;
use url::Url;

use crate::client::{Auth, Body, Call};
use crate::models::{
    AttachmentMeta, CippTenant, ConditionalAccessPolicy, Contract, DelegatedAdminCustomer,
    DeltaLink, MailFolder, Message, MoveDestination, NewSubscription, SubscribedSku, Subscription,
    User, UsersDelta, ATTACHMENT_FIELDS, MESSAGE_FIELDS, USER_FIELDS,
};
use crate::{AppCredentials, CippCredentials, Endpoint, GraphApi, GraphClient, GraphError};

impl GraphClient {
    async fn list<T: DeserializeOwned>(
        &self,
        app: &AppCredentials,
        endpoint: Endpoint,
        url: Url,
    ) -> Result<Vec<T>, GraphError> {
        self.all_pages(app, endpoint, url)
            .await
            .map(|(items, _)| items)
    }

    /// A CIPP call: a bearer token for CIPP's API app, from the partner's app registration.
    async fn cipp_json<T: DeserializeOwned>(
        &self,
        cipp: &CippCredentials,
        endpoint: Endpoint,
        url: Url,
    ) -> Result<T, GraphError> {
        let scope = cipp.scope();
        let call = Call {
            endpoint,
            url,
            auth: Auth::App(&cipp.app, &scope),
            body: Body::Empty,
            prefer: None,
            tenant: cipp.app.tenant_id,
        };
        self.json(&call).await
    }

    async fn single<T: DeserializeOwned>(
        &self,
        app: &AppCredentials,
        endpoint: Endpoint,
        url: Url,
        body: Body<'_>,
    ) -> Result<T, GraphError> {
        self.json(&self.graph_call(app, endpoint, url, body)).await
    }
}

fn with_select(mut url: Url, fields: &str) -> Url {
    url.query_pairs_mut().append_pair("$select", fields);
    url
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[async_trait]
impl GraphApi for GraphClient {
    async fn verify_credentials(&self, app: &AppCredentials) -> Result<(), GraphError> {
        self.ensure_token(app, &self.config().graph_scope).await
    }

    async fn test_credentials(&self, app: &AppCredentials) -> Result<(), GraphError> {
        self.renew_token(app, &self.config().graph_scope).await
    }

    async fn list_conditional_access_policies(
        &self,
        app: &AppCredentials,
    ) -> Result<Vec<ConditionalAccessPolicy>, GraphError> {
        let endpoint = Endpoint::ListConditionalAccessPolicies;
        self.list(app, endpoint, self.graph_url(endpoint, &[])?)
            .await
    }

    async fn list_subscribed_skus(
        &self,
        app: &AppCredentials,
    ) -> Result<Vec<SubscribedSku>, GraphError> {
        let endpoint = Endpoint::ListSubscribedSkus;
        self.list(app, endpoint, self.graph_url(endpoint, &[])?)
            .await
    }

    async fn list_users(&self, app: &AppCredentials) -> Result<Vec<User>, GraphError> {
        let endpoint = Endpoint::ListUsers;
        let url = with_select(self.graph_url(endpoint, &[])?, USER_FIELDS);
        self.list(app, endpoint, url).await
    }

    async fn users_delta(
        &self,
        app: &AppCredentials,
        from: Option<&DeltaLink>,
    ) -> Result<UsersDelta, GraphError> {
        let endpoint = Endpoint::UsersDelta;
        let url = match from {
            // Query options go on the first call only; Graph encodes them into its links.
            None => with_select(self.graph_url(endpoint, &[])?, USER_FIELDS),
            Some(link) => self.follow(&link.0)?,
        };
        let (changes, delta_link) = self.all_pages(app, endpoint, url).await?;
        let next =
            delta_link.ok_or_else(|| GraphError::malformed("delta round without deltaLink"))?;
        self.follow(&next)?;
        Ok(UsersDelta {
            changes,
            next: DeltaLink(next),
        })
    }

    async fn get_user(&self, app: &AppCredentials, user: &str) -> Result<User, GraphError> {
        let endpoint = Endpoint::GetUser;
        let url = with_select(self.graph_url(endpoint, &[user])?, USER_FIELDS);
        self.single(app, endpoint, url, Body::Empty).await
    }

    async fn get_inbox(&self, app: &AppCredentials, user: &str) -> Result<MailFolder, GraphError> {
        let endpoint = Endpoint::GetInbox;
        self.single(
            app,
            endpoint,
            self.graph_url(endpoint, &[user])?,
            Body::Empty,
        )
        .await
    }

    async fn list_contracts(&self, app: &AppCredentials) -> Result<Vec<Contract>, GraphError> {
        let endpoint = Endpoint::ListContracts;
        self.list(app, endpoint, self.graph_url(endpoint, &[])?)
            .await
    }

    async fn list_delegated_admin_customers(
        &self,
        app: &AppCredentials,
    ) -> Result<Vec<DelegatedAdminCustomer>, GraphError> {
        let endpoint = Endpoint::ListDelegatedAdminCustomers;
        self.list(app, endpoint, self.graph_url(endpoint, &[])?)
            .await
    }

    async fn cipp_list_tenants(
        &self,
        cipp: &CippCredentials,
    ) -> Result<Vec<CippTenant>, GraphError> {
        let url = Endpoint::CippListTenants.url(&cipp.api_url, &[])?;
        let tenants: Vec<CippTenant> = self.cipp_json(cipp, Endpoint::CippListTenants, url).await?;
        if tenants.iter().any(|t| t.customer_id.is_empty()) {
            // CIPP answers 200 with one blank entry when it failed internally.
            return Err(GraphError::new(
                ReasonCode::GraphUnavailable,
                "CIPP reported an internal failure listing tenants",
            )
            .with_status(200));
        }
        Ok(tenants
            .into_iter()
            .filter(|t| t.customer_id != "AllTenants")
            .collect())
    }

    async fn cipp_list_users(
        &self,
        cipp: &CippCredentials,
        tenant: &str,
    ) -> Result<Vec<User>, GraphError> {
        let mut url = Endpoint::CippListUsers.url(&cipp.api_url, &[])?;
        url.query_pairs_mut().append_pair("tenantFilter", tenant);
        self.cipp_json(cipp, Endpoint::CippListUsers, url).await
    }

    async fn create_subscription(
        &self,
        app: &AppCredentials,
        subscription: &NewSubscription,
    ) -> Result<Subscription, GraphError> {
        let endpoint = Endpoint::CreateSubscription;
        let mut body = json!({
            "changeType": subscription.change_type,
            "notificationUrl": subscription.notification_url.as_str(),
            "resource": subscription.resource,
            "expirationDateTime": timestamp(subscription.expiration),
            "clientState": subscription.client_state.expose_secret(),
        });
        if let Some(url) = &subscription.lifecycle_notification_url {
            body["lifecycleNotificationUrl"] = json!(url.as_str());
        }
        let url = self.graph_url(endpoint, &[])?;
        self.single(app, endpoint, url, Body::Json(body)).await
    }

    async fn renew_subscription(
        &self,
        app: &AppCredentials,
        subscription_id: &str,
        expiration: DateTime<Utc>,
    ) -> Result<Subscription, GraphError> {
        let endpoint = Endpoint::RenewSubscription;
        let url = self.graph_url(endpoint, &[subscription_id])?;
        let body = json!({ "expirationDateTime": timestamp(expiration) });
        self.single(app, endpoint, url, Body::Json(body)).await
    }

    async fn delete_subscription(
        &self,
        app: &AppCredentials,
        subscription_id: &str,
    ) -> Result<(), GraphError> {
        let endpoint = Endpoint::DeleteSubscription;
        let url = self.graph_url(endpoint, &[subscription_id])?;
        self.execute(&self.graph_call(app, endpoint, url, Body::Empty))
            .await
            .map(|_| ())
    }

    async fn get_message(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
    ) -> Result<Message, GraphError> {
        let endpoint = Endpoint::GetMessage;
        let mut url = with_select(
            self.graph_url(endpoint, &[user, message_id])?,
            MESSAGE_FIELDS,
        );
        // The attachments' metadata in the same call (never their content).
        url.query_pairs_mut().append_pair(
            "$expand",
            &format!("attachments($select={ATTACHMENT_FIELDS})"),
        );
        let mut call = self.graph_call(app, endpoint, url, Body::Empty);
        call.prefer = Some("outlook.body-content-type=\"text\"");
        self.json(&call).await
    }

    async fn list_attachments(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
    ) -> Result<Vec<AttachmentMeta>, GraphError> {
        let endpoint = Endpoint::ListAttachments;
        let url = with_select(
            self.graph_url(endpoint, &[user, message_id])?,
            ATTACHMENT_FIELDS,
        );
        self.list(app, endpoint, url).await
    }

    async fn set_message_categories(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
        categories: &[String],
    ) -> Result<Message, GraphError> {
        let endpoint = Endpoint::SetMessageCategories;
        let url = self.graph_url(endpoint, &[user, message_id])?;
        let body = json!({ "categories": categories });
        self.single(app, endpoint, url, Body::Json(body)).await
    }

    async fn refresh_delegated_token(
        &self,
        app: &AppCredentials,
        refresh_token: &secrecy::SecretString,
    ) -> Result<crate::models::DelegatedGrant, GraphError> {
        let tenant = app.tenant_id.to_string();
        let url = Endpoint::Token.url(&self.config().login_base, &[&tenant])?;
        let scope = format!("offline_access {}", self.config().graph_scope);
        let form = [
            ("client_id", app.client_id.as_str()),
            ("client_secret", app.client_secret.expose_secret()),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("scope", scope.as_str()),
        ];
        let call = Call {
            endpoint: Endpoint::Token,
            url,
            auth: Auth::None,
            body: Body::Form(&form),
            prefer: None,
            tenant: app.tenant_id,
        };
        match self.json(&call).await {
            Err(mut e)
                if e.graph_code.as_deref() == Some("invalid_grant")
                    && e.reason != ReasonCode::ProviderConsentMissing =>
            {
                e.reason = ReasonCode::MailboxRefreshTokenRevoked;
                e.message = "the mailbox's refresh token was revoked or has expired".into();
                Err(e)
            }
            other => other,
        }
    }

    async fn list_inbox_messages(
        &self,
        app: &AppCredentials,
        user: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Message>, GraphError> {
        let endpoint = Endpoint::ListInboxMessages;
        let mut url = with_select(self.graph_url(endpoint, &[user])?, "id,receivedDateTime");
        url.query_pairs_mut()
            .append_pair(
                "$filter",
                &format!("receivedDateTime ge {}", timestamp(since)),
            )
            .append_pair("$orderby", "receivedDateTime")
            .append_pair("$top", "100");
        self.list(app, endpoint, url).await
    }

    async fn get_me(
        &self,
        tenant: uuid::Uuid,
        access_token: &secrecy::SecretString,
    ) -> Result<User, GraphError> {
        let endpoint = Endpoint::Me;
        let url = with_select(self.graph_url(endpoint, &[])?, USER_FIELDS);
        let call = Call {
            endpoint,
            url,
            auth: Auth::Bearer(access_token),
            body: Body::Empty,
            prefer: None,
            tenant,
        };
        self.json(&call).await
    }

    async fn move_message(
        &self,
        app: &AppCredentials,
        user: &str,
        message_id: &str,
        destination: &MoveDestination,
    ) -> Result<Message, GraphError> {
        let endpoint = Endpoint::MoveMessage;
        let url = self.graph_url(endpoint, &[user, message_id])?;
        let body = json!({ "destinationId": destination.as_str() });
        self.single(app, endpoint, url, Body::Json(body)).await
    }
}
