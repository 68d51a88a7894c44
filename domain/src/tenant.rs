//! The Tenant aggregate (R1.1, R1.2): a managed Entra tenant in an MSP workspace, and the
//! owner of its connections' uniqueness and of the default connection per provider.
//!
//! Aggregate id: the [`TenantKey`](crate::TenantKey) string, `{workspace}:{entra guid}`.
//! Uniqueness and the default live here, on one stream, so optimistic concurrency makes
//! "attach" and "make default" atomic without a database constraint.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::policy::{self, AlertThrottle, Capabilities, CuratedPolicy, PolicyDiff, PolicySnapshot};
use crate::values::{
    clean_domain, clean_name, ConnectionId, EntraTenantId, Provider, WorkspaceId, MAX_NAME,
};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// What can be asked of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    /// Registers the tenant in a workspace. The Entra tenant id is already a validated
    /// GUID; the primary domain is a label.
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
    /// Makes an attached connection its provider's default. Already default: no events.
    /// The caller marks and unmarks the two connections in the same transaction.
    MakeDefaultConnection {
        connection_id: ConnectionId,
    },
    /// A resync finished at `at` (written by the resync workflow, which replays with the
    /// time it first recorded).
    RecordResync {
        at: DateTime<Utc>,
    },
    /// Records curated Conditional Access policies (R3.2–R3.4). The same hash as the last
    /// snapshot writes no snapshot (the state keeps the existing snapshot id); an import
    /// of it seeds the policy intent with that snapshot unless the intent already holds
    /// that hash. A new hash writes a snapshot with its diff, an alert at most once an
    /// hour, and for an import the policy intent.
    RecordSnapshot {
        snapshot_id: uuid::Uuid,
        policies: Vec<CuratedPolicy>,
        source: SnapshotSource,
    },
    /// Records the capabilities its licenses give (R3.5); the same as the last recorded
    /// writes nothing.
    RecordLicenses {
        capabilities: Capabilities,
    },
    /// Detaches a removed connection. The default of its provider is detached only when it
    /// is the provider's last connection: otherwise another must be made default first.
    DetachConnection {
        connection_id: ConnectionId,
    },
    /// Acknowledges an open drift alert (named by the snapshot that raised it): someone
    /// has looked at it. Refused for an alert that is not open.
    AcknowledgeAlert {
        snapshot_id: uuid::Uuid,
    },
}

/// Where a snapshot's policies came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotSource {
    /// Read from the tenant through Graph.
    Graph,
    /// Imported: the policies also become the tenant's intended state.
    Import,
}

/// The last snapshot, as the tenant remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub snapshot_id: uuid::Uuid,
    pub hash: String,
    pub policies: Vec<CuratedPolicy>,
}

/// The snapshot an import made the tenant's intended policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRef {
    pub snapshot_id: uuid::Uuid,
    pub hash: String,
}

impl Authorize for TenantCommand {
    fn permission(&self) -> Permission {
        match self {
            TenantCommand::Register { .. }
            | TenantCommand::Rename { .. }
            | TenantCommand::Archive => Permission::ManageTenants,
            // Issued as part of creating a connection or making one default.
            TenantCommand::AttachConnection { .. }
            | TenantCommand::MakeDefaultConnection { .. }
            | TenantCommand::DetachConnection { .. } => Permission::ManageConnections,
            TenantCommand::RecordResync { .. }
            | TenantCommand::RecordSnapshot { .. }
            | TenantCommand::RecordLicenses { .. } => Permission::RecordProgress,
            TenantCommand::AcknowledgeAlert { .. } => Permission::HandleAlerts,
        }
    }
}

/// What happened to a tenant. Persisted: variants and fields are never renamed.
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
    /// The provider's default moved from `previous` (if any) to `current`.
    DefaultConnectionChanged {
        provider: Provider,
        previous: Option<ConnectionId>,
        current: ConnectionId,
    },
    TenantResynced {
        at: DateTime<Utc>,
    },
    /// Curated policies with their hash and what changed since the previous snapshot
    /// (never the raw Graph response).
    PolicySnapshotted {
        snapshot_id: uuid::Uuid,
        hash: String,
        policies: Vec<CuratedPolicy>,
        /// None for the first snapshot.
        diff: Option<PolicyDiff>,
        source: SnapshotSource,
        taken_at: DateTime<Utc>,
    },
    /// `policy.changed_in_portal`: the policies changed outside tenantflow. At most one
    /// per snapshot, so the snapshot id identifies the alert.
    PolicyDriftDetected {
        snapshot_id: uuid::Uuid,
        kind: String,
        raised_at: DateTime<Utc>,
    },
    /// A removed connection left the tenant (and, if it was, its provider's default).
    ConnectionDetached {
        connection_id: ConnectionId,
        provider: Provider,
    },
    /// Someone acknowledged the drift alert raised with this snapshot (who: the event's
    /// metadata).
    AlertAcknowledged {
        snapshot_id: uuid::Uuid,
        at: DateTime<Utc>,
    },
    /// An imported snapshot became the tenant's intended policies.
    PolicyIntentSeeded {
        snapshot_id: uuid::Uuid,
        hash: String,
    },
    LicensesRefreshed {
        capabilities: Capabilities,
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
            TenantEvent::PolicySnapshotted { .. } => "PolicySnapshotted",
            TenantEvent::PolicyDriftDetected { .. } => "PolicyDriftDetected",
            TenantEvent::AlertAcknowledged { .. } => "AlertAcknowledged",
            TenantEvent::ConnectionDetached { .. } => "ConnectionDetached",
            TenantEvent::PolicyIntentSeeded { .. } => "PolicyIntentSeeded",
            TenantEvent::LicensesRefreshed { .. } => "LicensesRefreshed",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a tenant command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("the tenant is not registered")]
    NotRegistered,
    #[error("the tenant is already registered")]
    AlreadyRegistered,
    #[error("the tenant is archived")]
    Archived,
    #[error("the {0} must be 1-200 characters, without control characters")]
    InvalidName(&'static str),
    #[error("the primary domain must be a domain name such as contoso.com")]
    InvalidDomain,
    #[error("the tenant already has a {provider} connection for Entra tenant {entra_tenant_id}")]
    DuplicateConnection {
        provider: Provider,
        entra_tenant_id: EntraTenantId,
    },
    #[error("connection {0} does not belong to this tenant")]
    UnknownConnection(ConnectionId),
    #[error("the tenant has no open alert raised with snapshot {0}")]
    NoOpenAlert(uuid::Uuid),
    #[error("connection {0} is the default: make another connection the default first")]
    DefaultInUse(ConnectionId),
}

impl DomainError for TenantError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            TenantError::NotRegistered
            | TenantError::UnknownConnection(_)
            | TenantError::NoOpenAlert(_) => ReasonCode::NotFound,
            TenantError::AlreadyRegistered | TenantError::DuplicateConnection { .. } => {
                ReasonCode::AlreadyExists
            }
            TenantError::Archived | TenantError::DefaultInUse(_) => ReasonCode::InvalidTransition,
            TenantError::InvalidName(_) | TenantError::InvalidDomain => {
                ReasonCode::ValidationFailed
            }
        }
    }
}

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Unregistered,
    Active,
    Archived,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 3] = [
        TenantStatus::Unregistered,
        TenantStatus::Active,
        TenantStatus::Archived,
    ];

    /// The status spelled `s` (its [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Unregistered => "unregistered",
            TenantStatus::Active => "active",
            TenantStatus::Archived => "archived",
        }
    }
}

display_as_str!(TenantStatus);

/// A connection as the tenant knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachedConnection {
    pub connection_id: ConnectionId,
    pub provider: Provider,
    pub entra_tenant_id: EntraTenantId,
}

/// A tenant's state, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tenant {
    /// `None` until registered.
    pub workspace: Option<WorkspaceId>,
    pub entra_tenant_id: Option<EntraTenantId>,
    pub display_name: String,
    pub primary_domain: String,
    pub status: TenantStatus,
    pub connections: Vec<AttachedConnection>,
    /// One default per provider, by construction.
    pub defaults: BTreeMap<Provider, ConnectionId>,
    pub last_resynced_at: Option<DateTime<Utc>>,
    pub last_snapshot: Option<SnapshotRef>,
    /// `None` until an import seeds it.
    pub intent: Option<IntentRef>,
    pub last_alert_at: Option<DateTime<Utc>>,
    pub capabilities: Option<Capabilities>,
    /// Drift alerts not yet acknowledged, by the snapshot that raised each (at most one an
    /// hour is raised). Defaults to none in aggregate snapshots taken before it existed;
    /// a later event-only fold is exact.
    #[serde(default)]
    pub open_alerts: std::collections::BTreeSet<uuid::Uuid>,
}

impl Tenant {
    /// The default connection for `provider`, if any.
    pub fn default_connection(&self, provider: Provider) -> Option<ConnectionId> {
        self.defaults.get(&provider).copied()
    }

    /// The attached connection `id`, if it is one of this tenant's.
    pub fn connection(&self, id: ConnectionId) -> Option<&AttachedConnection> {
        self.connections.iter().find(|c| c.connection_id == id)
    }

    fn require_active(&self) -> Result<(), TenantError> {
        match self.status {
            TenantStatus::Unregistered => Err(TenantError::NotRegistered),
            TenantStatus::Archived => Err(TenantError::Archived),
            TenantStatus::Active => Ok(()),
        }
    }
}

fn display_name(name: &str) -> Result<String, TenantError> {
    clean_name(name, MAX_NAME).ok_or(TenantError::InvalidName("display name"))
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
                display_name: name,
                primary_domain,
            } => {
                if self.status != TenantStatus::Unregistered {
                    return Err(TenantError::AlreadyRegistered);
                }
                let event = TenantEvent::TenantRegistered {
                    workspace,
                    entra_tenant_id,
                    display_name: display_name(&name)?,
                    primary_domain: clean_domain(&primary_domain)
                        .ok_or(TenantError::InvalidDomain)?,
                    registered_at: services.clock.now(),
                };
                sink.write(event, self).await;
            }
            TenantCommand::Rename { display_name: name } => {
                self.require_active()?;
                let name = display_name(&name)?;
                if name != self.display_name {
                    let event = TenantEvent::TenantRenamed { display_name: name };
                    sink.write(event, self).await;
                }
            }
            TenantCommand::Archive => {
                self.require_active()?;
                let event = TenantEvent::TenantArchived {
                    archived_at: services.clock.now(),
                };
                sink.write(event, self).await;
            }
            TenantCommand::AttachConnection {
                connection_id,
                provider,
                entra_tenant_id,
            } => {
                self.require_active()?;
                let duplicate = self.connections.iter().any(|c| {
                    c.connection_id == connection_id
                        || (c.provider == provider && c.entra_tenant_id == entra_tenant_id)
                });
                if duplicate {
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
                self.require_active()?;
                let provider = self
                    .connection(connection_id)
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
                self.require_active()?;
                sink.write(TenantEvent::TenantResynced { at }, self).await;
            }
            TenantCommand::RecordSnapshot {
                snapshot_id,
                policies,
                source,
            } => {
                self.require_active()?;
                let snapshot = PolicySnapshot::of(policies);
                if let Some(last) = self
                    .last_snapshot
                    .as_ref()
                    .filter(|s| s.hash == snapshot.hash)
                {
                    // Unchanged: no new snapshot; the last snapshot id stands. An import
                    // still makes these policies the intent, pointing at that snapshot,
                    // unless the intent already holds them (then nothing is written).
                    let seeded = self.intent.as_ref().is_some_and(|i| i.hash == last.hash);
                    if source == SnapshotSource::Import && !seeded {
                        let event = TenantEvent::PolicyIntentSeeded {
                            snapshot_id: last.snapshot_id,
                            hash: last.hash.clone(),
                        };
                        sink.write(event, self).await;
                    }
                    return Ok(());
                }
                let now = services.clock.now();
                let diff = self
                    .last_snapshot
                    .as_ref()
                    .map(|s| policy::diff(&s.policies, &snapshot.policies));
                let drifted = diff.is_some();
                let hash = snapshot.hash.clone();
                let event = TenantEvent::PolicySnapshotted {
                    snapshot_id,
                    hash: snapshot.hash,
                    policies: snapshot.policies,
                    diff,
                    source,
                    taken_at: now,
                };
                sink.write(event, self).await;
                if drifted && AlertThrottle::may_alert(self.last_alert_at, now) {
                    let alert = TenantEvent::PolicyDriftDetected {
                        snapshot_id,
                        kind: AlertThrottle::ALERT.to_owned(),
                        raised_at: now,
                    };
                    sink.write(alert, self).await;
                }
                if source == SnapshotSource::Import {
                    sink.write(TenantEvent::PolicyIntentSeeded { snapshot_id, hash }, self)
                        .await;
                }
            }
            TenantCommand::RecordLicenses { capabilities } => {
                self.require_active()?;
                // The same capabilities as last time: nothing new to record (issue 13).
                if self.capabilities.as_ref() == Some(&capabilities) {
                    return Ok(());
                }
                let at = services.clock.now();
                sink.write(TenantEvent::LicensesRefreshed { capabilities, at }, self)
                    .await;
            }
            TenantCommand::DetachConnection { connection_id } => {
                if self.status == TenantStatus::Unregistered {
                    return Err(TenantError::NotRegistered);
                }
                let provider = self
                    .connection(connection_id)
                    .map(|c| c.provider)
                    .ok_or(TenantError::UnknownConnection(connection_id))?;
                let others = self
                    .connections
                    .iter()
                    .filter(|c| c.provider == provider && c.connection_id != connection_id)
                    .count();
                if self.default_connection(provider) == Some(connection_id) && others > 0 {
                    return Err(TenantError::DefaultInUse(connection_id));
                }
                let event = TenantEvent::ConnectionDetached {
                    connection_id,
                    provider,
                };
                sink.write(event, self).await;
            }
            TenantCommand::AcknowledgeAlert { snapshot_id } => {
                if self.status == TenantStatus::Unregistered {
                    return Err(TenantError::NotRegistered);
                }
                // An archived tenant's alerts may still be acknowledged: they were seen.
                if !self.open_alerts.contains(&snapshot_id) {
                    return Err(TenantError::NoOpenAlert(snapshot_id));
                }
                let at = services.clock.now();
                sink.write(TenantEvent::AlertAcknowledged { snapshot_id, at }, self)
                    .await;
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
                self.defaults.insert(provider, current);
            }
            TenantEvent::TenantResynced { at } => self.last_resynced_at = Some(at),
            TenantEvent::PolicySnapshotted {
                snapshot_id,
                hash,
                policies,
                ..
            } => {
                self.last_snapshot = Some(SnapshotRef {
                    snapshot_id,
                    hash,
                    policies,
                })
            }
            TenantEvent::PolicyDriftDetected {
                snapshot_id,
                raised_at,
                ..
            } => {
                self.last_alert_at = Some(raised_at);
                self.open_alerts.insert(snapshot_id);
            }
            TenantEvent::AlertAcknowledged { snapshot_id, .. } => {
                self.open_alerts.remove(&snapshot_id);
            }
            TenantEvent::ConnectionDetached {
                connection_id,
                provider,
            } => {
                self.connections
                    .retain(|c| c.connection_id != connection_id);
                if self.default_connection(provider) == Some(connection_id) {
                    self.defaults.remove(&provider);
                }
            }
            TenantEvent::PolicyIntentSeeded { snapshot_id, hash } => {
                self.intent = Some(IntentRef { snapshot_id, hash })
            }
            TenantEvent::LicensesRefreshed { capabilities, .. } => {
                self.capabilities = Some(capabilities)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_event_types_match_payload_tags, guid, now, other_guid, services, workspace,
    };
    use crate::FixedClock;
    use cqrs_es::test::TestFramework;
    use std::sync::Arc;

    type F = TestFramework<Tenant>;

    fn register(display_name: &str, primary_domain: &str) -> TenantCommand {
        TenantCommand::Register {
            workspace: workspace(),
            entra_tenant_id: guid(),
            display_name: display_name.into(),
            primary_domain: primary_domain.into(),
        }
    }
    fn registered() -> TenantEvent {
        TenantEvent::TenantRegistered {
            workspace: workspace(),
            entra_tenant_id: guid(),
            display_name: "Contoso".into(),
            primary_domain: "contoso.com".into(),
            registered_at: now(),
        }
    }
    fn archived() -> TenantEvent {
        TenantEvent::TenantArchived { archived_at: now() }
    }
    fn conn(n: u128) -> ConnectionId {
        ConnectionId(uuid::Uuid::from_u128(n))
    }
    fn attach(n: u128, entra: EntraTenantId) -> TenantCommand {
        TenantCommand::AttachConnection {
            connection_id: conn(n),
            provider: Provider::Microsoft,
            entra_tenant_id: entra,
        }
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
    /// A tenant with connection 1 (default, `guid`) and connection 2 (`other_guid`).
    fn with_two_connections() -> Vec<TenantEvent> {
        vec![
            registered(),
            attached(1, guid()),
            default_changed(None, 1),
            attached(2, other_guid()),
        ]
    }

    #[test]
    fn a_tenant_is_registered_with_trimmed_names_and_a_lowercase_domain() {
        F::with(services())
            .given_no_previous_events()
            .when(register("  Contoso ", "Contoso.COM"))
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn a_tenant_cannot_be_registered_twice() {
        F::with(services())
            .given(vec![registered()])
            .when(register("Contoso", "contoso.com"))
            .then_expect_error(TenantError::AlreadyRegistered);
    }

    #[test]
    fn an_empty_display_name_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(register("   ", "contoso.com"))
            .then_expect_error(TenantError::InvalidName("display name"));
    }

    #[test]
    fn a_display_name_longer_than_200_characters_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(register(&"é".repeat(201), "contoso.com"))
            .then_expect_error(TenantError::InvalidName("display name"));
        F::with(services())
            .given_no_previous_events()
            .when(register(&"é".repeat(200), "contoso.com"))
            .inspect_result()
            .unwrap();
    }

    #[test]
    fn a_primary_domain_that_is_not_a_domain_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(register("Contoso", "not a domain"))
            .then_expect_error(TenantError::InvalidDomain);
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
    fn a_tenant_is_renamed_to_a_trimmed_name() {
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::Rename {
                display_name: " Contoso Ltd ".into(),
            })
            .then_expect_events(vec![TenantEvent::TenantRenamed {
                display_name: "Contoso Ltd".into(),
            }]);
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
    fn a_tenant_is_archived_once() {
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::Archive)
            .then_expect_events(vec![archived()]);
        F::with(services())
            .given(vec![registered(), archived()])
            .when(TenantCommand::Archive)
            .then_expect_error(TenantError::Archived);
    }

    #[test]
    fn an_archived_tenant_refuses_changes() {
        let commands = [
            TenantCommand::Rename {
                display_name: "New".into(),
            },
            attach(1, guid()),
            TenantCommand::MakeDefaultConnection {
                connection_id: conn(1),
            },
            TenantCommand::RecordResync { at: now() },
        ];
        for command in commands {
            F::with(services())
                .given(vec![registered(), attached(1, guid()), archived()])
                .when(command)
                .then_expect_error(TenantError::Archived);
        }
    }

    #[test]
    fn an_unregistered_tenant_takes_no_connections() {
        F::with(services())
            .given_no_previous_events()
            .when(attach(1, guid()))
            .then_expect_error(TenantError::NotRegistered);
    }

    #[test]
    fn the_first_connection_of_a_provider_becomes_its_default() {
        F::with(services())
            .given(vec![registered()])
            .when(attach(1, guid()))
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
            .when(attach(2, other_guid()))
            .then_expect_events(vec![attached(2, other_guid())]);
    }

    #[test]
    fn a_duplicate_provider_and_entra_tenant_is_refused() {
        F::with(services())
            .given(with_two_connections())
            .when(attach(3, guid()))
            .then_expect_error(TenantError::DuplicateConnection {
                provider: Provider::Microsoft,
                entra_tenant_id: guid(),
            });
    }

    #[test]
    fn the_same_connection_cannot_be_attached_twice() {
        let third: EntraTenantId = "5d3c1a9e-2b4f-4c6d-8e0f-1a2b3c4d5e6f".parse().unwrap();
        F::with(services())
            .given(with_two_connections())
            .when(attach(2, third))
            .then_expect_error(TenantError::DuplicateConnection {
                provider: Provider::Microsoft,
                entra_tenant_id: third,
            });
    }

    #[test]
    fn making_another_connection_default_names_the_previous_one() {
        F::with(services())
            .given(with_two_connections())
            .when(TenantCommand::MakeDefaultConnection {
                connection_id: conn(2),
            })
            .then_expect_events(vec![default_changed(Some(1), 2)]);
    }

    #[test]
    fn making_the_current_default_default_again_records_nothing() {
        F::with(services())
            .given(with_two_connections())
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
        let mut events = with_two_connections();
        events.push(default_changed(Some(1), 2));
        for e in events {
            t.apply(e);
        }
        assert_eq!(t.status, TenantStatus::Active);
        assert_eq!(t.default_connection(Provider::Microsoft), Some(conn(2)));
        assert_eq!(t.defaults.len(), 1);
        assert_eq!(
            t.connection(conn(1)).map(|c| c.entra_tenant_id),
            Some(guid())
        );
    }

    #[test]
    fn licenses_are_recorded_when_their_capabilities_change_and_only_then() {
        let p1 = Capabilities {
            ca_p1: true,
            ca_p2: false,
            skus: vec!["AAD_PREMIUM".into()],
        };
        let refreshed = TenantEvent::LicensesRefreshed {
            capabilities: p1.clone(),
            at: now(),
        };
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::RecordLicenses {
                capabilities: p1.clone(),
            })
            .then_expect_events(vec![refreshed.clone()]);
        F::with(services())
            .given(vec![registered(), refreshed.clone()])
            .when(TenantCommand::RecordLicenses {
                capabilities: p1.clone(),
            })
            .then_expect_events(vec![]);
        let p2 = Capabilities {
            ca_p2: true,
            ..p1.clone()
        };
        F::with(services())
            .given(vec![registered(), refreshed])
            .when(TenantCommand::RecordLicenses {
                capabilities: p2.clone(),
            })
            .then_expect_events(vec![TenantEvent::LicensesRefreshed {
                capabilities: p2,
                at: now(),
            }]);
    }

    #[test]
    fn a_resync_is_recorded_as_last_resynced_at() {
        let at = now() - chrono::Duration::minutes(3);
        F::with(services())
            .given(vec![registered()])
            .when(TenantCommand::RecordResync { at })
            .then_expect_events(vec![TenantEvent::TenantResynced { at }]);
        let mut t = Tenant::default();
        t.apply(registered());
        t.apply(TenantEvent::TenantResynced { at });
        assert_eq!(t.last_resynced_at, Some(at));
    }

    #[test]
    fn managing_tenants_and_their_connections_needs_the_matching_permission() {
        let manage_tenants = [
            register("Contoso", "contoso.com"),
            TenantCommand::Rename {
                display_name: "X".into(),
            },
            TenantCommand::Archive,
        ];
        for c in manage_tenants {
            assert_eq!(c.permission(), Permission::ManageTenants, "{c:?}");
        }
        let manage_connections = [
            attach(1, guid()),
            TenantCommand::MakeDefaultConnection {
                connection_id: conn(1),
            },
        ];
        for c in manage_connections {
            assert_eq!(c.permission(), Permission::ManageConnections, "{c:?}");
        }
        assert_eq!(
            TenantCommand::RecordResync { at: now() }.permission(),
            Permission::RecordProgress
        );
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        let mut events = with_two_connections();
        events.extend([
            TenantEvent::TenantRenamed {
                display_name: "x".into(),
            },
            archived(),
            TenantEvent::TenantResynced { at: now() },
        ]);
        assert_event_types_match_payload_tags(&events);
    }

    #[test]
    fn refusals_map_to_stable_reason_codes() {
        let cases = [
            (TenantError::NotRegistered, ReasonCode::NotFound),
            (
                TenantError::UnknownConnection(conn(1)),
                ReasonCode::NotFound,
            ),
            (TenantError::AlreadyRegistered, ReasonCode::AlreadyExists),
            (
                TenantError::DuplicateConnection {
                    provider: Provider::Microsoft,
                    entra_tenant_id: guid(),
                },
                ReasonCode::AlreadyExists,
            ),
            (TenantError::Archived, ReasonCode::InvalidTransition),
            (TenantError::InvalidName("x"), ReasonCode::ValidationFailed),
            (TenantError::InvalidDomain, ReasonCode::ValidationFailed),
        ];
        for (error, code) in cases {
            assert_eq!(error.reason_code(), code, "{error}");
        }
    }

    fn policy(id: &str, state: &str) -> CuratedPolicy {
        let raw = serde_json::json!({
            "id": id, "displayName": format!("Policy {id}"), "state": state,
            "conditions": {"users": {"includeUsers": ["All"]}},
            "grantControls": {"operator": "OR", "builtInControls": ["mfa"]},
            "sessionControls": null
        });
        policy::curate(&[raw]).unwrap().remove(0)
    }

    fn snapshot_id(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    /// A snapshot `id` of `policies` (without a diff), as recorded at `at`.
    fn snapshot_event(
        id: u128,
        policies: Vec<CuratedPolicy>,
        source: SnapshotSource,
        at: DateTime<Utc>,
    ) -> TenantEvent {
        let s = PolicySnapshot::of(policies);
        TenantEvent::PolicySnapshotted {
            snapshot_id: snapshot_id(id),
            hash: s.hash,
            policies: s.policies,
            diff: None,
            source,
            taken_at: at,
        }
    }

    fn snapshotted(t: &mut Tenant, id: u128, policies: Vec<CuratedPolicy>, at: DateTime<Utc>) {
        t.apply(snapshot_event(id, policies, SnapshotSource::Graph, at));
    }

    /// The intent seeded with snapshot `id` of `policies`.
    fn intent_seeded(id: u128, policies: Vec<CuratedPolicy>) -> TenantEvent {
        TenantEvent::PolicyIntentSeeded {
            snapshot_id: snapshot_id(id),
            hash: PolicySnapshot::of(policies).hash,
        }
    }

    fn import(id: u128, policies: Vec<CuratedPolicy>) -> TenantCommand {
        TenantCommand::RecordSnapshot {
            snapshot_id: snapshot_id(id),
            policies,
            source: SnapshotSource::Import,
        }
    }

    async fn record(
        t: &mut Tenant,
        id: u128,
        policies: Vec<CuratedPolicy>,
        source: SnapshotSource,
        at: DateTime<Utc>,
    ) -> Vec<TenantEvent> {
        let sink = EventSink::default();
        let services = Services::new(Arc::new(FixedClock::at(at)));
        t.handle(
            TenantCommand::RecordSnapshot {
                snapshot_id: snapshot_id(id),
                policies,
                source,
            },
            &services,
            &sink,
        )
        .await
        .unwrap();
        sink.collect().await
    }

    fn active_tenant() -> Tenant {
        let mut t = Tenant::default();
        t.apply(registered());
        t
    }

    #[tokio::test]
    async fn an_open_alert_is_acknowledged_once() {
        let mut t = active_tenant();
        t.apply(TenantEvent::PolicyDriftDetected {
            snapshot_id: snapshot_id(2),
            kind: "policy.changed_in_portal".into(),
            raised_at: now(),
        });
        let acknowledge = TenantCommand::AcknowledgeAlert {
            snapshot_id: snapshot_id(2),
        };
        assert_eq!(acknowledge.permission(), Permission::HandleAlerts);
        let sink = EventSink::default();
        t.handle(acknowledge.clone(), &services(), &sink)
            .await
            .unwrap();
        let events = sink.collect().await;
        assert!(matches!(
            &events[..],
            [TenantEvent::AlertAcknowledged { snapshot_id: s, .. }] if *s == snapshot_id(2)
        ));
        for e in events {
            t.apply(e);
        }
        assert!(t.open_alerts.is_empty());
        // Twice, or an alert never raised: refused.
        let again = t
            .handle(acknowledge, &services(), &EventSink::default())
            .await;
        assert_eq!(again, Err(TenantError::NoOpenAlert(snapshot_id(2))));
        assert_eq!(again.unwrap_err().reason_code(), ReasonCode::NotFound);
    }

    #[tokio::test]
    async fn the_first_snapshot_is_recorded_without_a_diff_or_an_alert() {
        let mut t = active_tenant();
        let events = record(
            &mut t,
            1,
            vec![policy("a", "enabled")],
            SnapshotSource::Graph,
            now(),
        )
        .await;
        assert_eq!(events.len(), 1);
        assert!(matches!(
            &events[0],
            TenantEvent::PolicySnapshotted { diff: None, .. }
        ));
        assert_eq!(
            t.last_snapshot.as_ref().unwrap().snapshot_id,
            snapshot_id(1)
        );
    }

    #[tokio::test]
    async fn an_unchanged_snapshot_writes_nothing_and_keeps_the_existing_id() {
        let mut t = active_tenant();
        snapshotted(&mut t, 1, vec![policy("a", "enabled")], now());
        let events = record(
            &mut t,
            2,
            vec![policy("a", "enabled")],
            SnapshotSource::Graph,
            now(),
        )
        .await;
        assert!(events.is_empty());
        assert_eq!(t.last_snapshot.unwrap().snapshot_id, snapshot_id(1));
    }

    #[tokio::test]
    async fn a_changed_snapshot_names_the_changed_field_and_raises_one_alert_per_hour() {
        let mut t = active_tenant();
        snapshotted(&mut t, 1, vec![policy("a", "enabled")], now());
        let events = record(
            &mut t,
            2,
            vec![policy("a", "disabled")],
            SnapshotSource::Graph,
            now(),
        )
        .await;
        let TenantEvent::PolicySnapshotted {
            diff: Some(diff), ..
        } = &events[0]
        else {
            panic!("expected a snapshot with a diff: {events:?}")
        };
        assert_eq!(diff.modified[0].changed_fields, vec!["state".to_owned()]);
        assert!(
            matches!(&events[1], TenantEvent::PolicyDriftDetected { snapshot_id: s, .. } if *s == snapshot_id(2))
        );

        let soon = now() + chrono::Duration::minutes(30);
        let events = record(
            &mut t,
            3,
            vec![policy("a", "enabled")],
            SnapshotSource::Graph,
            soon,
        )
        .await;
        assert_eq!(
            events.len(),
            1,
            "a second change within the hour raises no alert"
        );

        let later = now() + chrono::Duration::minutes(61);
        let events = record(
            &mut t,
            4,
            vec![policy("a", "disabled")],
            SnapshotSource::Graph,
            later,
        )
        .await;
        assert_eq!(events.len(), 2, "after an hour, a change alerts again");
    }

    #[tokio::test]
    async fn an_imported_snapshot_also_seeds_the_policy_intent() {
        let mut t = active_tenant();
        let events = record(
            &mut t,
            1,
            vec![policy("a", "enabled")],
            SnapshotSource::Import,
            now(),
        )
        .await;
        assert!(matches!(
            events.last(),
            Some(TenantEvent::PolicyIntentSeeded { .. })
        ));
        assert_eq!(
            t.intent.map(|i| i.snapshot_id),
            Some(snapshot_id(1)),
            "the state knows the intent"
        );
    }

    #[test]
    fn an_unchanged_import_seeds_the_intent_with_the_existing_snapshot() {
        let a = || vec![policy("a", "enabled")];
        F::with(services())
            .given(vec![
                registered(),
                snapshot_event(1, a(), SnapshotSource::Graph, now()),
            ])
            .when(import(2, a()))
            .then_expect_events(vec![intent_seeded(1, a())]);
    }

    #[test]
    fn an_unchanged_import_replaces_an_intent_that_holds_other_policies() {
        let (a, b) = (
            || vec![policy("a", "enabled")],
            || vec![policy("a", "disabled")],
        );
        F::with(services())
            .given(vec![
                registered(),
                snapshot_event(1, a(), SnapshotSource::Import, now()),
                intent_seeded(1, a()),
                snapshot_event(2, b(), SnapshotSource::Graph, now()),
            ])
            .when(import(3, b()))
            .then_expect_events(vec![intent_seeded(2, b())]);
    }

    #[test]
    fn an_unchanged_import_whose_policies_are_already_the_intent_records_nothing() {
        let a = || vec![policy("a", "enabled")];
        F::with(services())
            .given(vec![
                registered(),
                snapshot_event(1, a(), SnapshotSource::Import, now()),
                intent_seeded(1, a()),
            ])
            .when(import(2, a()))
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn repeating_an_unchanged_import_seeds_the_intent_once_and_keeps_the_snapshot() {
        let mut t = active_tenant();
        snapshotted(&mut t, 1, vec![policy("a", "enabled")], now());
        let a = || vec![policy("a", "enabled")];
        let first = record(&mut t, 2, a(), SnapshotSource::Import, now()).await;
        assert_eq!(first, vec![intent_seeded(1, a())]);
        let intent = t.intent.clone().expect("an intent");
        assert_eq!(intent.snapshot_id, snapshot_id(1));
        assert_eq!(
            t.last_snapshot.as_ref().map(|s| s.snapshot_id),
            Some(snapshot_id(1))
        );

        let again = record(&mut t, 3, a(), SnapshotSource::Import, now()).await;
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(t.intent, Some(intent));
    }
}
