//! The ProviderConnection aggregate (R1.2–R1.4): a Microsoft connection of a tenant, its
//! consent, health, last error and credential reference. Aggregate id: the
//! [`ConnectionId`](crate::ConnectionId).
//!
//! Secrets never pass through here: the vault stores them, and events carry only the
//! vault's reference (a UUID, which cannot hold a secret) and a keyed fingerprint.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sanitize::sanitize_message;
use crate::values::{clean_name, EntraTenantId, Provider, TenantKey, WorkspaceId, MAX_NAME};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The most scopes a connection records.
const MAX_SCOPES: usize = 100;

/// What can be asked of a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionCommand {
    /// Creates the connection; the caller attaches it to its tenant in the same
    /// transaction (`TenantCommand::AttachConnection`).
    Create {
        workspace: WorkspaceId,
        tenant_key: TenantKey,
        provider: Provider,
        entra_tenant_id: EntraTenantId,
        display_name: String,
    },
    /// Points the connection at a credential stored in the vault. `tenant_id`, when the
    /// caller gave one with the credential, must be the connection's Entra tenant. The
    /// first credential is set; later ones rotate it, keeping the history.
    SetCredential {
        credential_ref: Uuid,
        /// The vault's keyed fingerprint, `hmac-sha256:v2:<hex>`.
        fingerprint: String,
        tenant_id: Option<EntraTenantId>,
    },
    /// Marks the connection default; issued with `TenantCommand::MakeDefaultConnection`.
    MarkDefault,
    /// Clears the default mark; issued with `TenantCommand::MakeDefaultConnection`.
    UnmarkDefault,
    GrantConsent {
        scopes: Vec<String>,
    },
    RevokeConsent,
    /// The outcome of a health check run.
    RecordHealthCheck {
        health: HealthStatus,
        scopes_granted: Vec<String>,
    },
    /// A failure talking to the provider. The message is sanitized before it is stored.
    RecordError {
        reason: ReasonCode,
        message: String,
    },
    Disable,
    Enable,
    /// Gives the connection a new display name (validated as at creation).
    Rename {
        display_name: String,
    },
    /// Removes the connection; issued with `TenantCommand::DetachConnection`. A removed
    /// connection is not found by any later command.
    Remove,
}

impl Authorize for ConnectionCommand {
    fn permission(&self) -> Permission {
        match self {
            ConnectionCommand::RecordHealthCheck { .. } | ConnectionCommand::RecordError { .. } => {
                Permission::RecordProgress
            }
            ConnectionCommand::Create { .. }
            | ConnectionCommand::SetCredential { .. }
            | ConnectionCommand::MarkDefault
            | ConnectionCommand::UnmarkDefault
            | ConnectionCommand::GrantConsent { .. }
            | ConnectionCommand::RevokeConsent
            | ConnectionCommand::Disable
            | ConnectionCommand::Enable
            | ConnectionCommand::Rename { .. }
            | ConnectionCommand::Remove => Permission::ManageConnections,
        }
    }
}

/// Whether a connection can be used (R1.3). Derived from the facts, see
/// [`ProviderConnection::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    #[default]
    NeedsConsent,
    Connected,
    Error,
    Disabled,
}

impl ConnectionStatus {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::NeedsConsent => "needs_consent",
            ConnectionStatus::Connected => "connected",
            ConnectionStatus::Error => "error",
            ConnectionStatus::Disabled => "disabled",
        }
    }
}

/// What the last health check found (R1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    #[default]
    Unknown,
    Healthy,
    Degraded,
    Down,
}

impl HealthStatus {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        }
    }
}

display_as_str!(ConnectionStatus, HealthStatus);

/// What happened to a connection. Persisted: variants and fields are never renamed.
/// None carries a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConnectionEvent {
    ConnectionCreated {
        workspace: WorkspaceId,
        tenant_key: TenantKey,
        provider: Provider,
        entra_tenant_id: EntraTenantId,
        display_name: String,
        created_at: DateTime<Utc>,
    },
    CredentialSet {
        credential_ref: Uuid,
        fingerprint: String,
        set_at: DateTime<Utc>,
    },
    CredentialRotated {
        credential_ref: Uuid,
        previous_ref: Uuid,
        fingerprint: String,
        rotated_at: DateTime<Utc>,
    },
    ConnectionMadeDefault,
    ConnectionDefaultCleared,
    ConsentGranted {
        scopes: Vec<String>,
        at: DateTime<Utc>,
    },
    ConsentRevoked {
        at: DateTime<Utc>,
    },
    HealthChecked {
        health: HealthStatus,
        scopes_granted: Vec<String>,
        checked_at: DateTime<Utc>,
    },
    /// `message` is already sanitized.
    ConnectionErrored {
        reason: ReasonCode,
        message: String,
        at: DateTime<Utc>,
    },
    ConnectionDisabled {
        at: DateTime<Utc>,
    },
    ConnectionEnabled {
        at: DateTime<Utc>,
    },
    ConnectionRenamed {
        display_name: String,
        at: DateTime<Utc>,
    },
    ConnectionRemoved {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ConnectionEvent {
    fn event_type(&self) -> String {
        match self {
            ConnectionEvent::ConnectionCreated { .. } => "ConnectionCreated",
            ConnectionEvent::CredentialSet { .. } => "CredentialSet",
            ConnectionEvent::CredentialRotated { .. } => "CredentialRotated",
            ConnectionEvent::ConnectionMadeDefault => "ConnectionMadeDefault",
            ConnectionEvent::ConnectionDefaultCleared => "ConnectionDefaultCleared",
            ConnectionEvent::ConsentGranted { .. } => "ConsentGranted",
            ConnectionEvent::ConsentRevoked { .. } => "ConsentRevoked",
            ConnectionEvent::HealthChecked { .. } => "HealthChecked",
            ConnectionEvent::ConnectionErrored { .. } => "ConnectionErrored",
            ConnectionEvent::ConnectionDisabled { .. } => "ConnectionDisabled",
            ConnectionEvent::ConnectionEnabled { .. } => "ConnectionEnabled",
            ConnectionEvent::ConnectionRenamed { .. } => "ConnectionRenamed",
            ConnectionEvent::ConnectionRemoved { .. } => "ConnectionRemoved",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a connection command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("the connection does not exist")]
    NotFound,
    #[error("the connection already exists")]
    AlreadyExists,
    #[error("the connection is disabled; enable it first")]
    Disabled,
    #[error("the connection is not disabled")]
    NotDisabled,
    #[error("the credential's tenant id {given} does not match the connection's Entra tenant {expected}")]
    TenantMismatch {
        given: EntraTenantId,
        expected: EntraTenantId,
    },
    #[error("the credential fingerprint is malformed")]
    BadFingerprint,
    #[error("the display name must be 1-200 characters, without control characters")]
    InvalidName,
    #[error("a scope must be 1-200 printable characters, at most 100 scopes")]
    InvalidScopes,
    #[error("the connection's tenant belongs to another workspace")]
    WorkspaceMismatch,
}

impl DomainError for ConnectionError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            ConnectionError::NotFound => ReasonCode::NotFound,
            ConnectionError::AlreadyExists => ReasonCode::AlreadyExists,
            ConnectionError::Disabled => ReasonCode::ProviderConnectionDisabled,
            ConnectionError::NotDisabled => ReasonCode::InvalidTransition,
            ConnectionError::TenantMismatch { .. }
            | ConnectionError::BadFingerprint
            | ConnectionError::InvalidName
            | ConnectionError::InvalidScopes
            | ConnectionError::WorkspaceMismatch => ReasonCode::ValidationFailed,
        }
    }
}

/// The credential as the domain knows it: a vault reference and a fingerprint, never the
/// secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialRef {
    pub credential_ref: Uuid,
    pub fingerprint: String,
    /// When this credential was set (for a rotation: when it replaced the previous one).
    pub set_at: DateTime<Utc>,
}

/// A connection's state, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ProviderConnection {
    pub created: bool,
    pub workspace: Option<WorkspaceId>,
    pub tenant_key: Option<TenantKey>,
    pub provider: Option<Provider>,
    pub entra_tenant_id: Option<EntraTenantId>,
    pub display_name: String,
    pub is_default: bool,
    pub status: ConnectionStatus,
    pub health_status: HealthStatus,
    pub consent_granted: bool,
    pub consent_granted_at: Option<DateTime<Utc>>,
    pub scopes_granted: Vec<String>,
    pub credential: Option<CredentialRef>,
    /// Earlier credentials, oldest first (rotation keeps history).
    pub credential_history: Vec<CredentialRef>,
    pub last_health_check_at: Option<DateTime<Utc>>,
    pub last_error_reason_code: Option<ReasonCode>,
    /// Sanitized when recorded.
    pub last_error_message: Option<String>,
    disabled: bool,
    /// An error stands until a new credential, a new consent or a healthy check.
    errored: bool,
    /// Removed: no later command finds it.
    #[serde(default)]
    removed: bool,
}

impl ProviderConnection {
    /// When the current credential replaced an earlier one; `None` if never rotated.
    pub fn credential_rotated_at(&self) -> Option<DateTime<Utc>> {
        if self.credential_history.is_empty() {
            return None;
        }
        self.credential.as_ref().map(|c| c.set_at)
    }

    fn require_created(&self) -> Result<(), ConnectionError> {
        if self.created && !self.removed {
            Ok(())
        } else {
            Err(ConnectionError::NotFound)
        }
    }

    fn require_enabled(&self) -> Result<(), ConnectionError> {
        self.require_created()?;
        if self.disabled {
            return Err(ConnectionError::Disabled);
        }
        Ok(())
    }

    /// Status follows from the facts: disabled wins, then a standing error, then whether
    /// consent and a credential are both present.
    fn recompute_status(&mut self) {
        self.status = if self.disabled {
            ConnectionStatus::Disabled
        } else if self.errored {
            ConnectionStatus::Error
        } else if self.consent_granted && self.credential.is_some() {
            ConnectionStatus::Connected
        } else {
            ConnectionStatus::NeedsConsent
        };
    }
}

/// Scopes trimmed, deduplicated and sorted, so equal grants give equal events.
fn clean_scopes(scopes: Vec<String>) -> Result<Vec<String>, ConnectionError> {
    if scopes.len() > MAX_SCOPES {
        return Err(ConnectionError::InvalidScopes);
    }
    let mut out = scopes
        .iter()
        .map(|s| clean_name(s, MAX_NAME).ok_or(ConnectionError::InvalidScopes))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Fingerprints are the vault's (`hmac-sha256:v2:<hex>`, keyed per workspace; earlier ones
/// `hmac-sha256:<hex>`); anything else may be a secret pasted into the wrong field and must
/// not reach an event.
pub(crate) fn is_fingerprint(f: &str) -> bool {
    f.strip_prefix("hmac-sha256:")
        .map(|h| h.strip_prefix("v2:").unwrap_or(h))
        .is_some_and(|h| !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Aggregate for ProviderConnection {
    const TYPE: &'static str = "provider_connection";
    type Command = ConnectionCommand;
    type Event = ConnectionEvent;
    type Error = ConnectionError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: ConnectionCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), ConnectionError> {
        let now = services.clock.now();
        match command {
            ConnectionCommand::Create {
                workspace,
                tenant_key,
                provider,
                entra_tenant_id,
                display_name,
            } => {
                if self.created {
                    return Err(ConnectionError::AlreadyExists);
                }
                if tenant_key.workspace != workspace {
                    return Err(ConnectionError::WorkspaceMismatch);
                }
                let display_name =
                    clean_name(&display_name, MAX_NAME).ok_or(ConnectionError::InvalidName)?;
                let event = ConnectionEvent::ConnectionCreated {
                    workspace,
                    tenant_key,
                    provider,
                    entra_tenant_id,
                    display_name,
                    created_at: now,
                };
                sink.write(event, self).await;
            }
            ConnectionCommand::SetCredential {
                credential_ref,
                fingerprint,
                tenant_id,
            } => {
                self.require_enabled()?;
                let expected = self.entra_tenant_id.ok_or(ConnectionError::NotFound)?;
                if let Some(given) = tenant_id.filter(|given| *given != expected) {
                    return Err(ConnectionError::TenantMismatch { given, expected });
                }
                if !is_fingerprint(&fingerprint) {
                    return Err(ConnectionError::BadFingerprint);
                }
                let event = match &self.credential {
                    None => ConnectionEvent::CredentialSet {
                        credential_ref,
                        fingerprint,
                        set_at: now,
                    },
                    Some(previous) => ConnectionEvent::CredentialRotated {
                        credential_ref,
                        previous_ref: previous.credential_ref,
                        fingerprint,
                        rotated_at: now,
                    },
                };
                sink.write(event, self).await;
            }
            ConnectionCommand::MarkDefault => {
                self.require_enabled()?;
                if !self.is_default {
                    sink.write(ConnectionEvent::ConnectionMadeDefault, self)
                        .await;
                }
            }
            ConnectionCommand::UnmarkDefault => {
                // Allowed while disabled: otherwise a disabled default could never hand
                // the default over to another connection.
                self.require_created()?;
                if self.is_default {
                    sink.write(ConnectionEvent::ConnectionDefaultCleared, self)
                        .await;
                }
            }
            ConnectionCommand::GrantConsent { scopes } => {
                self.require_enabled()?;
                let scopes = clean_scopes(scopes)?;
                sink.write(ConnectionEvent::ConsentGranted { scopes, at: now }, self)
                    .await;
            }
            ConnectionCommand::RevokeConsent => {
                self.require_enabled()?;
                if self.consent_granted {
                    sink.write(ConnectionEvent::ConsentRevoked { at: now }, self)
                        .await;
                }
            }
            ConnectionCommand::RecordHealthCheck {
                health,
                scopes_granted,
            } => {
                self.require_enabled()?;
                let event = ConnectionEvent::HealthChecked {
                    health,
                    scopes_granted: clean_scopes(scopes_granted)?,
                    checked_at: now,
                };
                sink.write(event, self).await;
            }
            ConnectionCommand::RecordError { reason, message } => {
                self.require_enabled()?;
                let event = ConnectionEvent::ConnectionErrored {
                    reason,
                    message: sanitize_message(&message),
                    at: now,
                };
                sink.write(event, self).await;
            }
            ConnectionCommand::Disable => {
                self.require_enabled()?;
                sink.write(ConnectionEvent::ConnectionDisabled { at: now }, self)
                    .await;
            }
            ConnectionCommand::Enable => {
                self.require_created()?;
                if !self.disabled {
                    return Err(ConnectionError::NotDisabled);
                }
                sink.write(ConnectionEvent::ConnectionEnabled { at: now }, self)
                    .await;
            }
            ConnectionCommand::Rename { display_name } => {
                self.require_created()?;
                let display_name =
                    clean_name(&display_name, MAX_NAME).ok_or(ConnectionError::InvalidName)?;
                // The same name again: nothing happened.
                if display_name != self.display_name {
                    let event = ConnectionEvent::ConnectionRenamed {
                        display_name,
                        at: now,
                    };
                    sink.write(event, self).await;
                }
            }
            ConnectionCommand::Remove => {
                self.require_created()?;
                sink.write(ConnectionEvent::ConnectionRemoved { at: now }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ConnectionEvent) {
        match event {
            ConnectionEvent::ConnectionCreated {
                workspace,
                tenant_key,
                provider,
                entra_tenant_id,
                display_name,
                ..
            } => {
                self.created = true;
                self.workspace = Some(workspace);
                self.tenant_key = Some(tenant_key);
                self.provider = Some(provider);
                self.entra_tenant_id = Some(entra_tenant_id);
                self.display_name = display_name;
            }
            ConnectionEvent::CredentialSet {
                credential_ref,
                fingerprint,
                set_at,
            } => {
                self.credential = Some(CredentialRef {
                    credential_ref,
                    fingerprint,
                    set_at,
                });
            }
            ConnectionEvent::CredentialRotated {
                credential_ref,
                fingerprint,
                rotated_at,
                ..
            } => {
                let new = CredentialRef {
                    credential_ref,
                    fingerprint,
                    set_at: rotated_at,
                };
                if let Some(old) = self.credential.replace(new) {
                    self.credential_history.push(old);
                }
                // A new credential is a fresh start: the old error no longer stands.
                self.errored = false;
            }
            ConnectionEvent::ConnectionMadeDefault => self.is_default = true,
            ConnectionEvent::ConnectionDefaultCleared => self.is_default = false,
            ConnectionEvent::ConsentGranted { scopes, at } => {
                self.consent_granted = true;
                self.consent_granted_at = Some(at);
                self.scopes_granted = scopes;
                self.errored = false;
            }
            ConnectionEvent::ConsentRevoked { .. } => {
                self.consent_granted = false;
                self.consent_granted_at = None;
                self.scopes_granted.clear();
            }
            ConnectionEvent::HealthChecked {
                health,
                scopes_granted,
                checked_at,
            } => {
                self.health_status = health;
                self.scopes_granted = scopes_granted;
                self.last_health_check_at = Some(checked_at);
                if health == HealthStatus::Healthy {
                    self.errored = false;
                }
            }
            ConnectionEvent::ConnectionErrored {
                reason, message, ..
            } => {
                self.errored = true;
                self.last_error_reason_code = Some(reason);
                self.last_error_message = Some(message);
            }
            ConnectionEvent::ConnectionDisabled { .. } => self.disabled = true,
            ConnectionEvent::ConnectionEnabled { .. } => self.disabled = false,
            ConnectionEvent::ConnectionRenamed { display_name, .. } => {
                self.display_name = display_name
            }
            ConnectionEvent::ConnectionRemoved { .. } => self.removed = true,
        }
        self.recompute_status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_event_types_match_payload_tags, guid, now, other_guid, services, tenant_key,
        workspace,
    };
    use cqrs_es::test::TestFramework;

    type F = TestFramework<ProviderConnection>;

    const FP: &str = "hmac-sha256:00112233445566778899aabbccddeeff";

    fn create(workspace: WorkspaceId, display_name: &str) -> ConnectionCommand {
        ConnectionCommand::Create {
            workspace,
            tenant_key: tenant_key(),
            provider: Provider::Microsoft,
            entra_tenant_id: guid(),
            display_name: display_name.into(),
        }
    }
    fn created() -> ConnectionEvent {
        ConnectionEvent::ConnectionCreated {
            workspace: workspace(),
            tenant_key: tenant_key(),
            provider: Provider::Microsoft,
            entra_tenant_id: guid(),
            display_name: "Contoso (Graph)".into(),
            created_at: now(),
        }
    }
    fn cred(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn set_credential(n: u128, tenant_id: Option<EntraTenantId>) -> ConnectionCommand {
        ConnectionCommand::SetCredential {
            credential_ref: cred(n),
            fingerprint: FP.into(),
            tenant_id,
        }
    }
    fn credential_set(n: u128) -> ConnectionEvent {
        ConnectionEvent::CredentialSet {
            credential_ref: cred(n),
            fingerprint: FP.into(),
            set_at: now(),
        }
    }
    fn rotated(from: u128, to: u128) -> ConnectionEvent {
        ConnectionEvent::CredentialRotated {
            credential_ref: cred(to),
            previous_ref: cred(from),
            fingerprint: FP.into(),
            rotated_at: now(),
        }
    }
    fn consent() -> ConnectionEvent {
        ConnectionEvent::ConsentGranted {
            scopes: vec!["Policy.Read.All".into()],
            at: now(),
        }
    }
    fn errored(message: &str) -> ConnectionEvent {
        ConnectionEvent::ConnectionErrored {
            reason: ReasonCode::ProviderAuthFailed,
            message: message.into(),
            at: now(),
        }
    }
    fn health(health: HealthStatus) -> ConnectionEvent {
        ConnectionEvent::HealthChecked {
            health,
            scopes_granted: vec!["Policy.Read.All".into()],
            checked_at: now(),
        }
    }
    fn disabled() -> ConnectionEvent {
        ConnectionEvent::ConnectionDisabled { at: now() }
    }
    fn connected() -> Vec<ConnectionEvent> {
        vec![created(), consent(), credential_set(1)]
    }
    fn state(events: Vec<ConnectionEvent>) -> ProviderConnection {
        let mut c = ProviderConnection::default();
        for e in events {
            c.apply(e);
        }
        c
    }
    fn with(mut events: Vec<ConnectionEvent>, more: ConnectionEvent) -> Vec<ConnectionEvent> {
        events.push(more);
        events
    }

    #[test]
    fn a_connection_is_created_and_needs_consent() {
        F::with(services())
            .given_no_previous_events()
            .when(create(workspace(), " Contoso (Graph) "))
            .then_expect_events(vec![created()]);
        let c = state(vec![created()]);
        assert_eq!(c.status, ConnectionStatus::NeedsConsent);
        assert_eq!(c.health_status, HealthStatus::Unknown);
        assert!(!c.is_default);
    }

    #[test]
    fn a_connection_cannot_be_created_twice() {
        F::with(services())
            .given(vec![created()])
            .when(create(workspace(), "Again"))
            .then_expect_error(ConnectionError::AlreadyExists);
    }

    #[test]
    fn a_blank_or_overlong_connection_name_is_refused() {
        for name in [" ".to_owned(), "x".repeat(201)] {
            F::with(services())
                .given_no_previous_events()
                .when(create(workspace(), &name))
                .then_expect_error(ConnectionError::InvalidName);
        }
    }

    #[test]
    fn a_connection_for_a_tenant_of_another_workspace_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(create("other".parse().unwrap(), "x"))
            .then_expect_error(ConnectionError::WorkspaceMismatch);
    }

    #[test]
    fn commands_on_a_missing_connection_are_refused() {
        let commands = [
            set_credential(1, None),
            ConnectionCommand::MarkDefault,
            ConnectionCommand::UnmarkDefault,
            ConnectionCommand::GrantConsent { scopes: vec![] },
            ConnectionCommand::RevokeConsent,
            ConnectionCommand::RecordError {
                reason: ReasonCode::GraphUnavailable,
                message: "x".into(),
            },
            ConnectionCommand::Disable,
            ConnectionCommand::Enable,
        ];
        for command in commands {
            F::with(services())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(ConnectionError::NotFound);
        }
    }

    #[test]
    fn the_first_credential_is_set_with_a_matching_tenant_id() {
        F::with(services())
            .given(vec![created()])
            .when(set_credential(1, Some(guid())))
            .then_expect_events(vec![credential_set(1)]);
    }

    #[test]
    fn a_later_credential_rotates_the_first_and_keeps_history() {
        F::with(services())
            .given(vec![created(), credential_set(1)])
            .when(set_credential(2, None))
            .then_expect_events(vec![rotated(1, 2)]);
        let c = state(vec![created(), credential_set(1), rotated(1, 2)]);
        assert_eq!(
            c.credential.as_ref().map(|c| c.credential_ref),
            Some(cred(2))
        );
        assert_eq!(c.credential_history[0].credential_ref, cred(1));
        assert_eq!(c.credential_rotated_at(), Some(now()));
        assert_eq!(
            state(vec![created(), credential_set(1)]).credential_rotated_at(),
            None
        );
    }

    #[test]
    fn a_credential_for_another_tenant_is_refused() {
        F::with(services())
            .given(vec![created()])
            .when(set_credential(1, Some(other_guid())))
            .then_expect_error(ConnectionError::TenantMismatch {
                given: other_guid(),
                expected: guid(),
            });
    }

    #[test]
    fn a_fingerprint_that_is_not_ours_never_reaches_an_event() {
        for fingerprint in [
            "my-client-secret",
            "hmac-sha256:",
            "hmac-sha256:not-hex",
            "hmac-sha256:v2:",
            "hmac-sha256:v3:00ff",
        ] {
            F::with(services())
                .given(vec![created()])
                .when(ConnectionCommand::SetCredential {
                    credential_ref: cred(1),
                    fingerprint: fingerprint.into(),
                    tenant_id: None,
                })
                .then_expect_error(ConnectionError::BadFingerprint);
        }
    }

    #[test]
    fn fingerprints_keyed_per_workspace_and_earlier_ones_are_both_accepted() {
        assert!(is_fingerprint(FP));
        assert!(is_fingerprint(
            "hmac-sha256:v2:00112233445566778899aabbccddeeff"
        ));
    }

    #[test]
    fn credential_events_carry_only_a_reference_and_a_fingerprint() {
        for event in [credential_set(1), rotated(1, 2)] {
            let json = serde_json::to_value(&event).unwrap();
            let fields = json
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|v| v.as_object())
                .unwrap();
            let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
            names.sort_unstable();
            assert!(
                names == ["credential_ref", "fingerprint", "set_at"]
                    || names
                        == [
                            "credential_ref",
                            "fingerprint",
                            "previous_ref",
                            "rotated_at"
                        ],
                "{names:?}"
            );
        }
    }

    #[test]
    fn consent_and_a_credential_make_a_connection_connected() {
        assert_eq!(
            state(vec![created(), consent()]).status,
            ConnectionStatus::NeedsConsent
        );
        assert_eq!(
            state(vec![created(), credential_set(1)]).status,
            ConnectionStatus::NeedsConsent
        );
        let c = state(connected());
        assert_eq!(c.status, ConnectionStatus::Connected);
        assert_eq!(c.consent_granted_at, Some(now()));
    }

    #[test]
    fn scopes_are_validated_deduplicated_and_sorted() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::GrantConsent {
                scopes: vec![
                    "User.Read.All".into(),
                    " Policy.Read.All".into(),
                    "User.Read.All".into(),
                ],
            })
            .then_expect_events(vec![ConnectionEvent::ConsentGranted {
                scopes: vec!["Policy.Read.All".into(), "User.Read.All".into()],
                at: now(),
            }]);
        let too_many = (0..=MAX_SCOPES).map(|i| format!("S{i}")).collect();
        for scopes in [vec![" ".to_owned()], too_many] {
            F::with(services())
                .given(vec![created()])
                .when(ConnectionCommand::GrantConsent { scopes })
                .then_expect_error(ConnectionError::InvalidScopes);
        }
    }

    #[test]
    fn revoking_consent_returns_to_needs_consent() {
        F::with(services())
            .given(connected())
            .when(ConnectionCommand::RevokeConsent)
            .then_expect_events(vec![ConnectionEvent::ConsentRevoked { at: now() }]);
        let c = state(with(
            connected(),
            ConnectionEvent::ConsentRevoked { at: now() },
        ));
        assert_eq!(c.status, ConnectionStatus::NeedsConsent);
        assert!(c.scopes_granted.is_empty());
    }

    #[test]
    fn revoking_consent_that_was_never_granted_records_nothing() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::RevokeConsent)
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_health_check_records_health_scopes_and_time() {
        F::with(services())
            .given(connected())
            .when(ConnectionCommand::RecordHealthCheck {
                health: HealthStatus::Degraded,
                scopes_granted: vec!["Policy.Read.All".into()],
            })
            .then_expect_events(vec![health(HealthStatus::Degraded)]);
        let c = state(with(connected(), health(HealthStatus::Degraded)));
        assert_eq!(c.health_status, HealthStatus::Degraded);
        assert_eq!(c.scopes_granted, ["Policy.Read.All"]);
        assert_eq!(c.last_health_check_at, Some(now()));
        assert_eq!(c.status, ConnectionStatus::Connected);
    }

    #[test]
    fn an_error_is_recorded_with_its_reason_and_a_sanitized_message() {
        F::with(services())
            .given(connected())
            .when(ConnectionCommand::RecordError {
                reason: ReasonCode::ProviderAuthFailed,
                message: "token call failed: client_secret=abc123 Bearer eyJabc.def".into(),
            })
            .then_expect_events(vec![errored(
                "token call failed: client_secret=[redacted] Bearer [redacted]",
            )]);
        let c = state(with(connected(), errored("x")));
        assert_eq!(c.status, ConnectionStatus::Error);
        assert_eq!(
            c.last_error_reason_code,
            Some(ReasonCode::ProviderAuthFailed)
        );
        assert_eq!(c.last_error_message.as_deref(), Some("x"));
    }

    #[test]
    fn an_error_stands_until_a_healthy_check_a_new_credential_or_new_consent() {
        let failing = with(connected(), errored("x"));
        let still = [health(HealthStatus::Down), health(HealthStatus::Degraded)];
        for e in still {
            assert_eq!(
                state(with(failing.clone(), e)).status,
                ConnectionStatus::Error
            );
        }
        let cleared = [health(HealthStatus::Healthy), rotated(1, 2), consent()];
        for e in cleared {
            let c = state(with(failing.clone(), e));
            assert_eq!(c.status, ConnectionStatus::Connected);
            // The last error stays visible for the record.
            assert_eq!(
                c.last_error_reason_code,
                Some(ReasonCode::ProviderAuthFailed)
            );
        }
    }

    #[test]
    fn a_disabled_connection_refuses_everything_but_enable() {
        let refused = [
            set_credential(2, None),
            ConnectionCommand::MarkDefault,
            ConnectionCommand::GrantConsent { scopes: vec![] },
            ConnectionCommand::RevokeConsent,
            ConnectionCommand::RecordHealthCheck {
                health: HealthStatus::Healthy,
                scopes_granted: vec![],
            },
            ConnectionCommand::RecordError {
                reason: ReasonCode::GraphUnavailable,
                message: "x".into(),
            },
            ConnectionCommand::Disable,
        ];
        for command in refused {
            F::with(services())
                .given(with(connected(), disabled()))
                .when(command)
                .then_expect_error(ConnectionError::Disabled);
        }
        assert_eq!(
            state(with(connected(), disabled())).status,
            ConnectionStatus::Disabled
        );
        F::with(services())
            .given(with(connected(), disabled()))
            .when(ConnectionCommand::Enable)
            .then_expect_events(vec![ConnectionEvent::ConnectionEnabled { at: now() }]);
    }

    #[test]
    fn a_connection_is_renamed_to_a_valid_new_name_only() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::Rename {
                display_name: "  Contoso (partner)  ".into(),
            })
            .then_expect_events(vec![ConnectionEvent::ConnectionRenamed {
                display_name: "Contoso (partner)".into(),
                at: now(),
            }]);
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::Rename {
                display_name: "\u{7}".into(),
            })
            .then_expect_error(ConnectionError::InvalidName);
        F::with(services())
            .given_no_previous_events()
            .when(ConnectionCommand::Rename {
                display_name: "x".into(),
            })
            .then_expect_error(ConnectionError::NotFound);
    }

    #[test]
    fn a_removed_connection_is_found_by_no_later_command() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::Remove)
            .then_expect_events(vec![ConnectionEvent::ConnectionRemoved { at: now() }]);
        for command in [ConnectionCommand::Remove, ConnectionCommand::Enable] {
            F::with(services())
                .given(vec![
                    created(),
                    ConnectionEvent::ConnectionRemoved { at: now() },
                ])
                .when(command)
                .then_expect_error(ConnectionError::NotFound);
        }
    }

    #[test]
    fn a_disabled_default_can_still_hand_the_default_over() {
        F::with(services())
            .given(vec![
                created(),
                ConnectionEvent::ConnectionMadeDefault,
                disabled(),
            ])
            .when(ConnectionCommand::UnmarkDefault)
            .then_expect_events(vec![ConnectionEvent::ConnectionDefaultCleared]);
    }

    #[test]
    fn enabling_returns_to_the_status_the_facts_give() {
        let c = state(vec![
            created(),
            consent(),
            credential_set(1),
            disabled(),
            ConnectionEvent::ConnectionEnabled { at: now() },
        ]);
        assert_eq!(c.status, ConnectionStatus::Connected);
    }

    #[test]
    fn enabling_a_connection_that_is_not_disabled_is_refused() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::Enable)
            .then_expect_error(ConnectionError::NotDisabled);
    }

    #[test]
    fn default_marks_are_set_cleared_and_idempotent() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::MarkDefault)
            .then_expect_events(vec![ConnectionEvent::ConnectionMadeDefault]);
        F::with(services())
            .given(vec![created(), ConnectionEvent::ConnectionMadeDefault])
            .when(ConnectionCommand::MarkDefault)
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::UnmarkDefault)
            .then_expect_events(vec![]);
        assert!(state(vec![created(), ConnectionEvent::ConnectionMadeDefault]).is_default);
    }

    #[test]
    fn managing_connections_needs_manage_connections_and_only_the_engine_records_health() {
        let managed = [
            create(workspace(), "x"),
            set_credential(1, None),
            ConnectionCommand::MarkDefault,
            ConnectionCommand::UnmarkDefault,
            ConnectionCommand::GrantConsent { scopes: vec![] },
            ConnectionCommand::RevokeConsent,
            ConnectionCommand::Disable,
            ConnectionCommand::Enable,
        ];
        for c in managed {
            assert_eq!(c.permission(), Permission::ManageConnections, "{c:?}");
        }
        let recorded = [
            ConnectionCommand::RecordHealthCheck {
                health: HealthStatus::Down,
                scopes_granted: vec![],
            },
            ConnectionCommand::RecordError {
                reason: ReasonCode::GraphUnavailable,
                message: "x".into(),
            },
        ];
        for c in recorded {
            assert_eq!(c.permission(), Permission::RecordProgress, "{c:?}");
        }
    }

    #[test]
    fn statuses_are_spelled_in_snake_case() {
        for s in [
            ConnectionStatus::NeedsConsent,
            ConnectionStatus::Connected,
            ConnectionStatus::Error,
            ConnectionStatus::Disabled,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for h in [
            HealthStatus::Unknown,
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Down,
        ] {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
        }
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        assert_event_types_match_payload_tags(&[
            created(),
            credential_set(1),
            rotated(1, 2),
            ConnectionEvent::ConnectionMadeDefault,
            ConnectionEvent::ConnectionDefaultCleared,
            consent(),
            ConnectionEvent::ConsentRevoked { at: now() },
            health(HealthStatus::Healthy),
            errored("x"),
            disabled(),
            ConnectionEvent::ConnectionEnabled { at: now() },
        ]);
    }

    #[test]
    fn refusals_map_to_stable_reason_codes() {
        let cases = [
            (ConnectionError::NotFound, ReasonCode::NotFound),
            (ConnectionError::AlreadyExists, ReasonCode::AlreadyExists),
            (
                ConnectionError::Disabled,
                ReasonCode::ProviderConnectionDisabled,
            ),
            (ConnectionError::NotDisabled, ReasonCode::InvalidTransition),
            (
                ConnectionError::BadFingerprint,
                ReasonCode::ValidationFailed,
            ),
            (
                ConnectionError::TenantMismatch {
                    given: other_guid(),
                    expected: guid(),
                },
                ReasonCode::ValidationFailed,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.reason_code(), code, "{error}");
        }
    }
}
