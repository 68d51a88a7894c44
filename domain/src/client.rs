//! The Client aggregate (R5.2): the MSP's record of a customer, which contacts belong to and
//! discovered tenants are mapped to. Aggregate id: the [`ClientId`](crate::ClientId).
//!
//! tenantflow has no other source of clients yet: they are created and edited through the
//! API. Domains are what tenant mapping matches on, so they are kept normalized.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{clean_domain, clean_name, WorkspaceId, MAX_NAME};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The most domains a client records.
pub const MAX_CLIENT_DOMAINS: usize = 50;

/// Whether a client is still served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    #[default]
    Active,
    Inactive,
}

impl ClientStatus {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStatus::Active => "active",
            ClientStatus::Inactive => "inactive",
        }
    }
}

display_as_str!(ClientStatus);
spelled_values!(ClientStatus { Active, Inactive });

/// What can be asked of a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    Create {
        workspace: WorkspaceId,
        name: String,
        domains: Vec<String>,
    },
    /// The same name again writes nothing.
    Rename { name: String },
    /// Replaces the domains; the same set (after normalizing) writes nothing.
    SetDomains { domains: Vec<String> },
    /// Already inactive: no events.
    Deactivate,
    /// Already active: no events.
    Reactivate,
}

impl Authorize for ClientCommand {
    fn permission(&self) -> Permission {
        Permission::ManageContactSync
    }
}

/// What happened to a client. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientEvent {
    ClientCreated {
        workspace: WorkspaceId,
        name: String,
        domains: Vec<String>,
        created_at: DateTime<Utc>,
    },
    ClientRenamed {
        name: String,
        at: DateTime<Utc>,
    },
    ClientDomainsSet {
        domains: Vec<String>,
        at: DateTime<Utc>,
    },
    ClientDeactivated {
        at: DateTime<Utc>,
    },
    ClientReactivated {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ClientEvent {
    fn event_type(&self) -> String {
        match self {
            ClientEvent::ClientCreated { .. } => "ClientCreated",
            ClientEvent::ClientRenamed { .. } => "ClientRenamed",
            ClientEvent::ClientDomainsSet { .. } => "ClientDomainsSet",
            ClientEvent::ClientDeactivated { .. } => "ClientDeactivated",
            ClientEvent::ClientReactivated { .. } => "ClientReactivated",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the client does not exist")]
    NotFound,
    #[error("the client already exists")]
    AlreadyExists,
    #[error("the client name must be 1-200 characters, without control characters")]
    InvalidName,
    #[error("`{0}` is not a domain name (e.g. contoso.com)")]
    InvalidDomain(String),
    #[error("a client has at most {} domains", MAX_CLIENT_DOMAINS)]
    TooManyDomains,
}

impl DomainError for ClientError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            ClientError::NotFound => ReasonCode::NotFound,
            ClientError::AlreadyExists => ReasonCode::AlreadyExists,
            ClientError::InvalidName
            | ClientError::InvalidDomain(_)
            | ClientError::TooManyDomains => ReasonCode::ValidationFailed,
        }
    }
}

/// Domains lowercased, validated, deduplicated and sorted, so equal sets give equal events.
fn clean_domains(domains: &[String]) -> Result<Vec<String>, ClientError> {
    if domains.len() > MAX_CLIENT_DOMAINS {
        return Err(ClientError::TooManyDomains);
    }
    let mut out = domains
        .iter()
        .map(|d| {
            clean_domain(d).ok_or_else(|| ClientError::InvalidDomain(d.chars().take(64).collect()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn valid_name(name: &str) -> Result<String, ClientError> {
    clean_name(name, MAX_NAME).ok_or(ClientError::InvalidName)
}

/// A client, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Client {
    pub workspace: Option<WorkspaceId>,
    pub name: String,
    /// Normalized: lowercase, sorted, unique.
    pub domains: Vec<String>,
    pub status: ClientStatus,
}

impl Client {
    /// Whether the client was created.
    pub fn exists(&self) -> bool {
        self.workspace.is_some()
    }

    fn require_exists(&self) -> Result<(), ClientError> {
        if self.exists() {
            Ok(())
        } else {
            Err(ClientError::NotFound)
        }
    }
}

impl Aggregate for Client {
    const TYPE: &'static str = "client";
    type Command = ClientCommand;
    type Event = ClientEvent;
    type Error = ClientError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: ClientCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), ClientError> {
        let now = services.clock.now();
        let event = match command {
            ClientCommand::Create {
                workspace,
                name,
                domains,
            } => {
                if self.exists() {
                    return Err(ClientError::AlreadyExists);
                }
                Some(ClientEvent::ClientCreated {
                    workspace,
                    name: valid_name(&name)?,
                    domains: clean_domains(&domains)?,
                    created_at: now,
                })
            }
            ClientCommand::Rename { name } => {
                self.require_exists()?;
                let name = valid_name(&name)?;
                (name != self.name).then_some(ClientEvent::ClientRenamed { name, at: now })
            }
            ClientCommand::SetDomains { domains } => {
                self.require_exists()?;
                let domains = clean_domains(&domains)?;
                (domains != self.domains)
                    .then_some(ClientEvent::ClientDomainsSet { domains, at: now })
            }
            ClientCommand::Deactivate => {
                self.require_exists()?;
                (self.status == ClientStatus::Active)
                    .then_some(ClientEvent::ClientDeactivated { at: now })
            }
            ClientCommand::Reactivate => {
                self.require_exists()?;
                (self.status == ClientStatus::Inactive)
                    .then_some(ClientEvent::ClientReactivated { at: now })
            }
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::ClientCreated {
                workspace,
                name,
                domains,
                ..
            } => {
                self.workspace = Some(workspace);
                self.name = name;
                self.domains = domains;
                self.status = ClientStatus::Active;
            }
            ClientEvent::ClientRenamed { name, .. } => self.name = name,
            ClientEvent::ClientDomainsSet { domains, .. } => self.domains = domains,
            ClientEvent::ClientDeactivated { .. } => self.status = ClientStatus::Inactive,
            ClientEvent::ClientReactivated { .. } => self.status = ClientStatus::Active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_event_types_match_payload_tags, fold, now, services, workspace};
    use cqrs_es::test::TestFramework;

    type F = TestFramework<Client>;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }
    fn created() -> ClientEvent {
        ClientEvent::ClientCreated {
            workspace: workspace(),
            name: "Contoso".into(),
            domains: strings(&["contoso.com", "contoso.onmicrosoft.com"]),
            created_at: now(),
        }
    }
    fn deactivated() -> ClientEvent {
        ClientEvent::ClientDeactivated { at: now() }
    }

    #[test]
    fn a_client_is_created_with_normalized_sorted_unique_domains() {
        F::with(services())
            .given_no_previous_events()
            .when(ClientCommand::Create {
                workspace: workspace(),
                name: " Contoso ".into(),
                domains: strings(&["Contoso.OnMicrosoft.com", " contoso.com", "CONTOSO.COM"]),
            })
            .then_expect_events(vec![created()]);
        assert_eq!(fold::<Client>([created()]).status, ClientStatus::Active);
    }

    #[test]
    fn a_malformed_domain_or_name_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(ClientCommand::Create {
                workspace: workspace(),
                name: "Contoso".into(),
                domains: strings(&["contoso"]),
            })
            .then_expect_error(ClientError::InvalidDomain("contoso".into()));
        F::with(services())
            .given_no_previous_events()
            .when(ClientCommand::Create {
                workspace: workspace(),
                name: "  ".into(),
                domains: vec![],
            })
            .then_expect_error(ClientError::InvalidName);
        let many = (0..=MAX_CLIENT_DOMAINS)
            .map(|i| format!("d{i}.com"))
            .collect();
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::SetDomains { domains: many })
            .then_expect_error(ClientError::TooManyDomains);
    }

    #[test]
    fn a_client_cannot_be_created_twice() {
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::Create {
                workspace: workspace(),
                name: "Contoso".into(),
                domains: vec![],
            })
            .then_expect_error(ClientError::AlreadyExists);
    }

    #[test]
    fn renaming_and_setting_domains_write_only_changes() {
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::Rename {
                name: "Contoso".into(),
            })
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::Rename {
                name: "Contoso Ltd".into(),
            })
            .then_expect_events(vec![ClientEvent::ClientRenamed {
                name: "Contoso Ltd".into(),
                at: now(),
            }]);
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::SetDomains {
                domains: strings(&["CONTOSO.onmicrosoft.com", "contoso.com"]),
            })
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::SetDomains {
                domains: strings(&["contoso.net"]),
            })
            .then_expect_events(vec![ClientEvent::ClientDomainsSet {
                domains: strings(&["contoso.net"]),
                at: now(),
            }]);
    }

    #[test]
    fn deactivating_and_reactivating_are_idempotent() {
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::Deactivate)
            .then_expect_events(vec![deactivated()]);
        F::with(services())
            .given(vec![created(), deactivated()])
            .when(ClientCommand::Deactivate)
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![created()])
            .when(ClientCommand::Reactivate)
            .then_expect_events(vec![]);
        let client: Client = fold([created(), deactivated()]);
        assert_eq!(client.status, ClientStatus::Inactive);
        assert_eq!(client.status.to_string(), "inactive");
        assert_eq!(
            ClientStatus::parse("inactive"),
            Some(ClientStatus::Inactive)
        );
    }

    #[test]
    fn commands_on_a_missing_client_are_refused() {
        for command in [
            ClientCommand::Rename { name: "x".into() },
            ClientCommand::SetDomains { domains: vec![] },
            ClientCommand::Deactivate,
            ClientCommand::Reactivate,
        ] {
            F::with(services())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ClientError::NotFound);
        }
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        assert_event_types_match_payload_tags(&[
            created(),
            ClientEvent::ClientRenamed {
                name: "x".into(),
                at: now(),
            },
            ClientEvent::ClientDomainsSet {
                domains: vec![],
                at: now(),
            },
            deactivated(),
            ClientEvent::ClientReactivated { at: now() },
        ]);
    }

    #[test]
    fn refusals_map_to_stable_reason_codes_and_need_contact_sync_rights() {
        assert_eq!(ClientError::NotFound.reason_code(), ReasonCode::NotFound);
        assert_eq!(
            ClientError::InvalidDomain("x".into()).reason_code(),
            ReasonCode::ValidationFailed
        );
        assert_eq!(
            ClientCommand::Deactivate.permission(),
            Permission::ManageContactSync
        );
    }
}
