//! The registry of Microsoft endpoints tenantflow may call (R4.1).
//!
//! [`GraphClient`](crate::GraphClient) only builds URLs from an [`Endpoint`], so a call to
//! anything not listed here cannot be written. The simulator uses the same registry to name
//! endpoints in its request log and fault injection.

use domain::ReasonCode;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::GraphError;

/// Which service an endpoint lives on; each has its own configurable base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// Entra ID token service (`https://login.microsoftonline.com`).
    Login,
    /// Microsoft Graph v1.0 (`https://graph.microsoft.com/v1.0`).
    Graph,
    /// A partner's CIPP instance (base URL per partner connection).
    Cipp,
}

/// HTTP method of a registered endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

/// Every outbound call tenantflow makes, with its method, path template and the application
/// permission it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Token,
    ListConditionalAccessPolicies,
    ListSubscribedSkus,
    ListUsers,
    UsersDelta,
    GetUser,
    GetInbox,
    ListContracts,
    ListDelegatedAdminCustomers,
    CippListTenants,
    CippListUsers,
    CreateSubscription,
    RenewSubscription,
    DeleteSubscription,
    GetMessage,
    ListAttachments,
    SetMessageCategories,
    MoveMessage,
    /// The signed-in user of a delegated token (a mailbox's connection test).
    Me,
    /// Inbox messages received since a time (catching up after a missed notification).
    ListInboxMessages,
}

struct Spec {
    method: Method,
    host: Host,
    template: &'static str,
    permission: Option<&'static str>,
    name: &'static str,
}

impl Endpoint {
    /// The whole registry, in declaration order.
    pub const ALL: [Endpoint; 20] = [
        Endpoint::Token,
        Endpoint::ListConditionalAccessPolicies,
        Endpoint::ListSubscribedSkus,
        Endpoint::ListUsers,
        Endpoint::UsersDelta,
        Endpoint::GetUser,
        Endpoint::GetInbox,
        Endpoint::ListContracts,
        Endpoint::ListDelegatedAdminCustomers,
        Endpoint::CippListTenants,
        Endpoint::CippListUsers,
        Endpoint::CreateSubscription,
        Endpoint::RenewSubscription,
        Endpoint::DeleteSubscription,
        Endpoint::GetMessage,
        Endpoint::ListAttachments,
        Endpoint::SetMessageCategories,
        Endpoint::MoveMessage,
        Endpoint::Me,
        Endpoint::ListInboxMessages,
    ];

    fn spec(self) -> Spec {
        use Host::{Cipp, Graph, Login};
        use Method::{Delete, Get, Patch, Post};
        let (method, host, template, permission, name) = match self {
            Self::Token => (Post, Login, "/{tenant}/oauth2/v2.0/token", None, "token"),
            Self::ListConditionalAccessPolicies => (
                Get,
                Graph,
                "/identity/conditionalAccess/policies",
                Some("Policy.Read.All"),
                "list_conditional_access_policies",
            ),
            Self::ListSubscribedSkus => (
                Get,
                Graph,
                "/subscribedSkus",
                Some("Organization.Read.All"),
                "list_subscribed_skus",
            ),
            Self::ListUsers => (Get, Graph, "/users", Some("User.Read.All"), "list_users"),
            Self::UsersDelta => (
                Get,
                Graph,
                "/users/delta",
                Some("User.Read.All"),
                "users_delta",
            ),
            Self::GetUser => (
                Get,
                Graph,
                "/users/{user}",
                Some("User.Read.All"),
                "get_user",
            ),
            Self::GetInbox => (
                Get,
                Graph,
                "/users/{user}/mailFolders/inbox",
                Some("Mail.Read"),
                "get_inbox",
            ),
            Self::ListContracts => (
                Get,
                Graph,
                "/contracts",
                Some("Directory.Read.All"),
                "list_contracts",
            ),
            Self::ListDelegatedAdminCustomers => (
                Get,
                Graph,
                "/tenantRelationships/delegatedAdminCustomers",
                Some("DelegatedAdminRelationship.Read.All"),
                "list_delegated_admin_customers",
            ),
            Self::CippListTenants => (Get, Cipp, "/api/ListTenants", None, "cipp_list_tenants"),
            Self::CippListUsers => (Get, Cipp, "/api/ListUsers", None, "cipp_list_users"),
            Self::CreateSubscription => (
                Post,
                Graph,
                "/subscriptions",
                Some("Mail.Read"),
                "create_subscription",
            ),
            Self::RenewSubscription => (
                Patch,
                Graph,
                "/subscriptions/{subscription}",
                Some("Mail.Read"),
                "renew_subscription",
            ),
            Self::DeleteSubscription => (
                Delete,
                Graph,
                "/subscriptions/{subscription}",
                Some("Mail.Read"),
                "delete_subscription",
            ),
            Self::GetMessage => (
                Get,
                Graph,
                "/users/{user}/messages/{message}",
                Some("Mail.Read"),
                "get_message",
            ),
            Self::ListAttachments => (
                Get,
                Graph,
                "/users/{user}/messages/{message}/attachments",
                Some("Mail.Read"),
                "list_attachments",
            ),
            Self::SetMessageCategories => (
                Patch,
                Graph,
                "/users/{user}/messages/{message}",
                Some("Mail.ReadWrite"),
                "set_message_categories",
            ),
            Self::MoveMessage => (
                Post,
                Graph,
                "/users/{user}/messages/{message}/move",
                Some("Mail.ReadWrite"),
                "move_message",
            ),
            Self::Me => (Get, Graph, "/me", Some("User.Read"), "me"),
            Self::ListInboxMessages => (
                Get,
                Graph,
                "/users/{user}/mailFolders/inbox/messages",
                Some("Mail.Read"),
                "list_inbox_messages",
            ),
        };
        Spec {
            method,
            host,
            template,
            permission,
            name,
        }
    }

    /// HTTP method.
    pub fn method(self) -> Method {
        self.spec().method
    }

    /// Service the endpoint lives on.
    pub fn host(self) -> Host {
        self.spec().host
    }

    /// Path below the host's base URL; `{name}` marks a path parameter.
    pub fn path_template(self) -> &'static str {
        self.spec().template
    }

    /// Application permission (app role) the call needs, if it is a Graph call.
    pub fn required_permission(self) -> Option<&'static str> {
        self.spec().permission
    }

    /// Stable snake_case name, as used in logs, the simulator's request log and faults.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Whether repeating the call after an unknown outcome (5xx, timeout) is harmless.
    /// Creating a subscription or moving a message twice is not.
    pub(crate) fn is_idempotent(self) -> bool {
        !matches!(self, Self::CreateSubscription | Self::MoveMessage)
    }

    /// Fills the template's parameters, in order, below `base`; each is percent-encoded as
    /// one path segment.
    pub(crate) fn url(self, base: &Url, params: &[&str]) -> Result<Url, GraphError> {
        let mut url = base.clone();
        url.set_query(None);
        let mut params = params.iter();
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                GraphError::new(
                    ReasonCode::GraphEndpointNotAllowed,
                    "base URL cannot hold a path",
                )
            })?;
            segments.pop_if_empty();
            for segment in self.path_template().split('/').filter(|s| !s.is_empty()) {
                if segment.starts_with('{') {
                    let value = params.next().ok_or_else(|| self.parameter_mismatch())?;
                    if value.is_empty() {
                        return Err(self.parameter_mismatch());
                    }
                    segments.push(value);
                } else {
                    segments.push(segment);
                }
            }
        }
        if params.next().is_some() {
            return Err(self.parameter_mismatch());
        }
        Ok(url)
    }

    fn parameter_mismatch(self) -> GraphError {
        GraphError::new(
            ReasonCode::GraphEndpointNotAllowed,
            format!("path parameters do not fit endpoint {}", self.name()),
        )
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_serde_spelling() {
        for endpoint in Endpoint::ALL {
            let json = serde_json::to_value(endpoint).unwrap();
            assert_eq!(json, serde_json::Value::from(endpoint.name()));
        }
    }

    #[test]
    fn every_graph_endpoint_names_a_permission() {
        for endpoint in Endpoint::ALL {
            let needs_permission = endpoint.host() == Host::Graph;
            assert_eq!(
                endpoint.required_permission().is_some(),
                needs_permission,
                "{endpoint}"
            );
        }
    }

    #[test]
    fn parameters_are_encoded_as_single_segments() {
        let base = Url::parse("https://graph.example/v1.0/").unwrap();
        let url = Endpoint::GetMessage
            .url(&base, &["ada@contoso.example", "AAMk/x=="])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://graph.example/v1.0/users/ada@contoso.example/messages/AAMk%2Fx=="
        );
    }

    #[test]
    fn a_missing_or_surplus_parameter_is_refused() {
        let base = Url::parse("https://graph.example/v1.0").unwrap();
        let missing = Endpoint::GetUser.url(&base, &[]).unwrap_err();
        let surplus = Endpoint::ListUsers.url(&base, &["x"]).unwrap_err();
        assert_eq!(missing.reason, ReasonCode::GraphEndpointNotAllowed);
        assert_eq!(surplus.reason, ReasonCode::GraphEndpointNotAllowed);
    }
}
