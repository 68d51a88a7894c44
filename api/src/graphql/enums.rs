//! The closed sets of values the API shows, as GraphQL enums mirroring the domain's. Their
//! values are spelled as the domain stores them (`completed`, `partially_succeeded`,
//! `needs_consent`): the same strings these fields answered before they were enums, so
//! responses did not change, and the same snake_case vocabulary as reason codes.

use async_graphql::Enum;
use serde::de::DeserializeOwned;

use super::errors::internal;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::run::RunStatus")]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
}

/// How a run ended; `pending` until it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::run::RunOutcome")]
pub enum RunOutcome {
    Pending,
    Succeeded,
    PartiallySucceeded,
    Failed,
    Cancelled,
    Blocked,
}

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::tenant::TenantStatus")]
pub enum TenantStatus {
    Unregistered,
    Active,
    Archived,
}

/// Whether a connection can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    name = "ConnectionStatus",
    rename_items = "snake_case",
    remote = "domain::connection::ConnectionStatus"
)]
pub enum ConnectionStatus {
    NeedsConsent,
    Connected,
    Error,
    Disabled,
}

/// What a connection's last health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    rename_items = "snake_case",
    remote = "domain::connection::HealthStatus"
)]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Degraded,
    Down,
}

/// A value of a domain enum as a read model stores it (its serde spelling), shown as the
/// GraphQL enum `G`. A spelling no variant has is a read model this binary cannot read:
/// internal, its cause logged once.
pub(crate) fn stored<D, G>(value: &str) -> async_graphql::Result<G>
where
    D: DeserializeOwned,
    G: From<D>,
{
    serde_json::from_value::<D>(serde_json::Value::String(value.to_owned()))
        .map(G::from)
        .map_err(|e| internal(sqlx::Error::Decode(Box::new(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_is_spelled_as_the_domain_stores_it() {
        for s in domain::run::RunStatus::ALL {
            let shown: RunStatus = stored::<domain::run::RunStatus, _>(s.as_str()).unwrap();
            assert_eq!(domain::run::RunStatus::from(shown), s);
            assert_eq!(
                async_graphql::InputType::to_value(&shown),
                async_graphql::Value::Enum(async_graphql::Name::new(s.as_str()))
            );
        }
        for o in domain::run::RunOutcome::ALL {
            let shown: RunOutcome = stored::<domain::run::RunOutcome, _>(o.as_str()).unwrap();
            assert_eq!(
                async_graphql::InputType::to_value(&shown),
                async_graphql::Value::Enum(async_graphql::Name::new(o.as_str()))
            );
        }
        assert!(stored::<domain::run::RunStatus, RunStatus>("done").is_err());
    }
}
