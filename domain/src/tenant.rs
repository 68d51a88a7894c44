//! The Tenant aggregate (R1.1, R1.2): a managed Entra tenant in an MSP workspace, and the
//! owner of its connections' uniqueness and default per provider.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{clean_name, ConnectionId, EntraTenantId, Provider, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

const MAX_NAME: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    Register {
        workspace: WorkspaceId,
        entra_tenant_id: EntraTenantId,
        display_name: String,
        primary_domain: String,
    },
    Rename {
        display_name: String,
    },
    Archive,
    /// Records a connection of this tenant; refused for a duplicate (provider, Entra
    /// tenant). The first connection of a provider becomes its default.
    AttachConnection {
        connection_id: ConnectionId,
        provider: Provider,
        entra_tenant_id: EntraTenantId,
    },
    MakeDefaultConnection {
        connection_id: ConnectionId,
    },
    /// A resync finished (written by the resync workflow).
    RecordResync {
        at: DateTime<Utc>,
    },
}

impl Authorize for TenantCommand {
    fn permission(&self) -> Permission {
        match self {
            TenantCommand::Register { .. }
            | TenantCommand::Rename { .. }
            | TenantCommand::Archive => Permission::ManageTenants,
            TenantCommand::AttachConnection { .. }
            | TenantCommand::MakeDefaultConnection { .. } => Permission::ManageConnections,
            TenantCommand::RecordResync { .. } => Permission::RecordProgress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TenantEvent {
    TenantRegistered {
        workspace: WorkspaceId,
        entra_tenant_id: EntraTenantId,
        display_name: String,
        primary_domain: String,
        registered_at: DateTime<Utc>,
    },
    TenantRenamed {
        display_name: String,
    },
    TenantArchived {
        archived_at: DateTime<Utc>,
    },
    ConnectionAttached {
        connection_id: ConnectionId,
        provider: Provider,
        entra_tenant_id: EntraTenantId,
    },
    DefaultConnectionChanged {
        provider: Provider,
        previous: Option<ConnectionId>,
        current: ConnectionId,
    },
    TenantResynced {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            TenantEvent::TenantRegistered { .. } => "TenantRegistered",
            TenantEvent::TenantRenamed { .. } => "TenantRenamed",
            TenantEvent::TenantArchived { .. } => "TenantArchived",
            TenantEvent::ConnectionAttached { .. } => "ConnectionAttached",
            TenantEvent::DefaultConnectionChanged { .. } => "DefaultConnectionChanged",
            TenantEvent::TenantResynced { .. } => "TenantResynced",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("the tenant is not registered")]
    NotRegistered,
    #[error("the tenant is already registered")]
    AlreadyRegistered,
    #[error("the tenant is archived")]
    Archived,
    #[error("{0} must be 1-200 characters")]
    InvalidName(&'static str),
    #[error("the tenant already has a {provider} connection for Entra tenant {entra_tenant_id}")]
    DuplicateConnection {
        provider: Provider,
        entra_tenant_id: EntraTenantId,
    },
    #[error("connection {0} does not belong to this tenant")]
    UnknownConnection(ConnectionId),
}

impl DomainError for TenantError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            TenantError::NotRegistered | TenantError::UnknownConnection(_) => ReasonCode::NotFound,
            TenantError::AlreadyRegistered | TenantError::DuplicateConnection { .. } => {
                ReasonCode::AlreadyExists
            }
            TenantError::Archived => ReasonCode::InvalidTransition,
            TenantError::InvalidName(_) => ReasonCode::ValidationFailed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Unregistered,
    Active,
    Archived,
}

/// A connection as the tenant knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachedConnection {
    pub connection_id: ConnectionId,
    pub provider: Provider,
    pub entra_tenant_id: EntraTenantId,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub workspace: Option<WorkspaceId>,
    pub entra_tenant_id: Option<EntraTenantId>,
    pub display_name: String,
    pub primary_domain: String,
    pub status: TenantStatus,
    pub connections: Vec<AttachedConnection>,
    pub defaults: Vec<(Provider, ConnectionId)>,
    pub last_resynced_at: Option<DateTime<Utc>>,
}

impl Tenant {
    /// The default connection for `provider`, if any.
    pub fn default_connection(&self, provider: Provider) -> Option<ConnectionId> {
        self.defaults
            .iter()
            .find(|(p, _)| *p == provider)
            .map(|(_, c)| *c)
    }

    fn active(&self) -> Result<(), TenantError> {
        match self.status {
            TenantStatus::Unregistered => Err(TenantError::NotRegistered),
            TenantStatus::Archived => Err(TenantError::Archived),
            TenantStatus::Active => Ok(()),
        }
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: TenantCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), TenantError> {
        match command {
            TenantCommand::Register {
                workspace,
                entra_tenant_id,
                display_name,
                primary_domain,
            } => {
                if self.status != TenantStatus::Unregistered {
                    return Err(TenantError::AlreadyRegistered);
                }
                let display_name = clean_name(&display_name, MAX_NAME)
                    .ok_or(TenantError::InvalidName("display name"))?;
                let primary_domain = clean_name(&primary_domain, MAX_NAME)
                    .ok_or(TenantError::InvalidName("primary domain"))?;
                let event = TenantEvent::TenantRegistered {
                    workspace,
                    entra_tenant_id,
                    display_name,
                    primary_domain: primary_domain.to_ascii_lowercase(),
                    registered_at: services.clock.now(),
                };
                sink.write(event, self).await;
            }
            TenantCommand::Rename { display_name } => {
                self.active()?;
                let display_name = clean_name(&display_name, MAX_NAME)
                    .ok_or(TenantError::InvalidName("display name"))?;
                if display_name != self.display_name {
                    sink.write(TenantEvent::TenantRenamed { display_name }, self)
                        .await;
                }
            }
            TenantCommand::Archive => {
                self.active()?;
                let at = services.clock.now();
                sink.write(TenantEvent::TenantArchived { archived_at: at }, self)
                    .await;
            }
            TenantCommand::AttachConnection {
                connection_id,
                provider,
                entra_tenant_id,
            } => {
                self.active()?;
                if self
                    .connections
                    .iter()
                    .any(|c| c.provider == provider && c.entra_tenant_id == entra_tenant_id)
                {
                    return Err(TenantError::DuplicateConnection {
                        provider,
                        entra_tenant_id,
                    });
                }
                let first = self.default_connection(provider).is_none();
                let attached = TenantEvent::ConnectionAttached {
                    connection_id,
                    provider,
                    entra_tenant_id,
                };
                sink.write(attached, self).await;
                if first {
                    let changed = TenantEvent::DefaultConnectionChanged {
                        provider,
                        previous: None,
                        current: connection_id,
                    };
                    sink.write(changed, self).await;
                }
            }
            TenantCommand::MakeDefaultConnection { connection_id } => {
                self.active()?;
                let provider = self
                    .connections
                    .iter()
                    .find(|c| c.connection_id == connection_id)
                    .map(|c| c.provider)
                    .ok_or(TenantError::UnknownConnection(connection_id))?;
                let previous = self.default_connection(provider);
                if previous != Some(connection_id) {
                    let changed = TenantEvent::DefaultConnectionChanged {
                        provider,
                        previous,
                        current: connection_id,
                    };
                    sink.write(changed, self).await;
                }
            }
            TenantCommand::RecordResync { at } => {
                self.active()?;
                sink.write(TenantEvent::TenantResynced { at }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: TenantEvent) {
        match event {
            TenantEvent::TenantRegistered {
                workspace,
                entra_tenant_id,
                display_name,
                primary_domain,
                ..
            } => {
                self.workspace = Some(workspace);
                self.entra_tenant_id = Some(entra_tenant_id);
                self.display_name = display_name;
                self.primary_domain = primary_domain;
                self.status = TenantStatus::Active;
            }
            TenantEvent::TenantRenamed { display_name } => self.display_name = display_name,
            TenantEvent::TenantArchived { .. } => self.status = TenantStatus::Archived,
            TenantEvent::ConnectionAttached {
                connection_id,
                provider,
                entra_tenant_id,
            } => self.connections.push(AttachedConnection {
                connection_id,
                provider,
                entra_tenant_id,
            }),
            TenantEvent::DefaultConnectionChanged {
                provider, current, ..
            } => {
                self.defaults.retain(|(p, _)| *p != provider);
                self.defaults.push((provider, current));
            }
            TenantEvent::TenantResynced { at } => self.last_resynced_at = Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use std::sync::Arc;

    type F = TestFramework<Tenant>;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }
    fn services() -> Services {
        Services::new(Arc::new(FixedClock::at(now())))
    }
    fn guid() -> EntraTenantId {
        "72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap()
    }
    fn other_guid() -> EntraTenantId {
        "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1".parse().unwrap()
    }
    fn registered() -> TenantEvent {
        TenantEvent::TenantRegistered {
            workspace: "acme".parse().unwrap(),
            entra_tenant_id: guid(),
            display_name: "Contoso".into(),
            primary_domain: "contoso.com".into(),
            registered_at: now(),
        }
    }
    fn conn(n: u128) -> ConnectionId {
        ConnectionId(uuid::Uuid::from_u128(n))
    }
    fn attached(n: u128, entra: EntraTenantId) -> TenantEvent {
        TenantEvent::ConnectionAttached {
            connection_id: conn(n),
            provider: Provider::Microsoft,
            entra_tenant_id: entra,
        }
    }
    fn default_changed(previous: Option<u128>, current: u128) -> TenantEvent {
        TenantEvent::DefaultConnectionChanged {
            provider: Provider::Microsoft,
            previous: previous.map(conn),
            current: conn(current),
        }
    }

    #[test]
    fn a_tenant_is_registered_with_trimmed_names_and_a_lowercase_domain() {
        F::with(services())
            .given_no_previous_events()
            .when(TenantCommand::Register {
                workspace: "acme".parse().unwrap(),
                entra_tenant_id: guid(),
                display_name: "  Contoso ".into(),
                primary_domain: "Contoso.COM".into(),
            })
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn a_tenant_cannot_be_registered_twice() {
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::Register {
                workspace: "acme".parse().unwrap(),
                entra_tenant_id: guid(),
                display_name: "Contoso".into(),
                primary_domain: "contoso.com".into(),
            })
            .then_expect_error(TenantError::AlreadyRegistered);
    }

    #[test]
    fn an_empty_display_name_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(TenantCommand::Register {
                workspace: "acme".parse().unwrap(),
                entra_tenant_id: guid(),
                display_name: "   ".into(),
                primary_domain: "contoso.com".into(),
            })
            .then_expect_error(TenantError::InvalidName("display name"));
    }

    #[test]
    fn renaming_an_unregistered_tenant_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(TenantCommand::Rename {
                display_name: "X".into(),
            })
            .then_expect_error(TenantError::NotRegistered);
    }

    #[test]
    fn renaming_to_the_same_name_records_nothing() {
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::Rename {
                display_name: "Contoso".into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_archived_tenant_refuses_changes() {
        F::with(services())
            .given(vec![
                registered(),
                TenantEvent::TenantArchived { archived_at: now() },
            ])
            .when(TenantCommand::Rename {
                display_name: "New".into(),
            })
            .then_expect_error(TenantError::Archived);
    }

    #[test]
    fn the_first_connection_of_a_provider_becomes_its_default() {
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::AttachConnection {
                connection_id: conn(1),
                provider: Provider::Microsoft,
                entra_tenant_id: guid(),
            })
            .then_expect_events(vec![attached(1, guid()), default_changed(None, 1)]);
    }

    #[test]
    fn a_second_connection_is_attached_without_changing_the_default() {
        F::with(services())
            .given(vec![
                registered(),
                attached(1, guid()),
                default_changed(None, 1),
            ])
            .when(TenantCommand::AttachConnection {
                connection_id: conn(2),
                provider: Provider::Microsoft,
                entra_tenant_id: other_guid(),
            })
            .then_expect_events(vec![attached(2, other_guid())]);
    }

    #[test]
    fn a_duplicate_provider_and_entra_tenant_is_refused() {
        F::with(services())
            .given(vec![
                registered(),
                attached(1, guid()),
                default_changed(None, 1),
            ])
            .when(TenantCommand::AttachConnection {
                connection_id: conn(2),
                provider: Provider::Microsoft,
                entra_tenant_id: guid(),
            })
            .then_expect_error(TenantError::DuplicateConnection {
                provider: Provider::Microsoft,
                entra_tenant_id: guid(),
            });
    }

    #[test]
    fn making_another_connection_default_names_the_previous_one() {
        F::with(services())
            .given(vec![
                registered(),
                attached(1, guid()),
                default_changed(None, 1),
                attached(2, other_guid()),
            ])
            .when(TenantCommand::MakeDefaultConnection {
                connection_id: conn(2),
            })
            .then_expect_events(vec![default_changed(Some(1), 2)]);
    }

    #[test]
    fn making_the_current_default_default_again_records_nothing() {
        F::with(services())
            .given(vec![
                registered(),
                attached(1, guid()),
                default_changed(None, 1),
            ])
            .when(TenantCommand::MakeDefaultConnection {
                connection_id: conn(1),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_unknown_connection_cannot_become_default() {
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::MakeDefaultConnection {
                connection_id: conn(9),
            })
            .then_expect_error(TenantError::UnknownConnection(conn(9)));
    }

    #[test]
    fn state_tracks_exactly_one_default_per_provider() {
        let mut t = Tenant::default();
        for e in [
            registered(),
            attached(1, guid()),
            default_changed(None, 1),
            attached(2, other_guid()),
            default_changed(Some(1), 2),
        ] {
            t.apply(e);
        }
        assert_eq!(t.default_connection(Provider::Microsoft), Some(conn(2)));
        assert_eq!(t.defaults.len(), 1);
    }

    #[test]
    fn refusals_map_to_stable_reason_codes() {
        assert_eq!(
            TenantError::NotRegistered.reason_code(),
            ReasonCode::NotFound
        );
        assert_eq!(
            TenantError::AlreadyRegistered.reason_code(),
            ReasonCode::AlreadyExists
        );
        assert_eq!(
            TenantError::InvalidName("x").reason_code(),
            ReasonCode::ValidationFailed
        );
    }
}
