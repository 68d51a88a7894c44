//! The ProviderConnection aggregate (R1.2–R1.4): a Microsoft connection of a tenant, its
//! consent, health, last error and credential reference. Secrets never pass through here:
//! the vault stores them, and events carry only the reference and a keyed fingerprint.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sanitize::sanitize_message;
use crate::values::{clean_name, EntraTenantId, Provider, TenantKey, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionCommand {
    Create {
        workspace: WorkspaceId,
        tenant_key: TenantKey,
        provider: Provider,
        entra_tenant_id: EntraTenantId,
        display_name: String,
    },
    /// Points the connection at a credential stored in the vault. `tenant_id`, when the
    /// caller gave one with the credential, must be the connection's Entra tenant.
    SetCredential {
        credential_ref: Uuid,
        fingerprint: String,
        tenant_id: Option<EntraTenantId>,
    },
    MarkDefault,
    UnmarkDefault,
    GrantConsent {
        scopes: Vec<String>,
    },
    RevokeConsent,
    RecordHealthCheck {
        health: HealthStatus,
        scopes_granted: Vec<String>,
    },
    RecordError {
        reason: ReasonCode,
        message: String,
    },
    Disable,
    Enable,
}

impl Authorize for ConnectionCommand {
    fn permission(&self) -> Permission {
        match self {
            ConnectionCommand::RecordHealthCheck { .. } | ConnectionCommand::RecordError { .. } => {
                Permission::RecordProgress
            }
            _ => Permission::ManageConnections,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    #[default]
    NeedsConsent,
    Connected,
    Error,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    #[default]
    Unknown,
    Healthy,
    Degraded,
    Down,
}

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
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("the connection does not exist")]
    NotFound,
    #[error("the connection already exists")]
    AlreadyExists,
    #[error("the connection is disabled")]
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
    #[error("the display name must be 1-200 characters")]
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
            _ => ReasonCode::ValidationFailed,
        }
    }
}

/// The credential as events know it: a reference and a fingerprint, never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialRef {
    pub credential_ref: Uuid,
    pub fingerprint: String,
    pub set_at: DateTime<Utc>,
}

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
    pub scopes_granted: Vec<String>,
    pub credential: Option<CredentialRef>,
    /// Earlier credentials, oldest first (rotation keeps history).
    pub credential_history: Vec<CredentialRef>,
    pub last_health_check_at: Option<DateTime<Utc>>,
    pub last_error_reason_code: Option<ReasonCode>,
    pub last_error_message: Option<String>,
    disabled: bool,
    errored: bool,
}

impl ProviderConnection {
    fn usable(&self) -> Result<(), ConnectionError> {
        if !self.created {
            return Err(ConnectionError::NotFound);
        }
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

fn clean_scopes(scopes: Vec<String>) -> Result<Vec<String>, ConnectionError> {
    if scopes.len() > 100 {
        return Err(ConnectionError::InvalidScopes);
    }
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for s in scopes {
        let s = clean_name(&s, 200).ok_or(ConnectionError::InvalidScopes)?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.sort();
    Ok(out)
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
                    clean_name(&display_name, 200).ok_or(ConnectionError::InvalidName)?;
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
                self.usable()?;
                let expected = self.entra_tenant_id.ok_or(ConnectionError::NotFound)?;
                if let Some(given) = tenant_id {
                    if given != expected {
                        return Err(ConnectionError::TenantMismatch { given, expected });
                    }
                }
                // Fingerprints are ours ("hmac-sha256:<hex>"); anything else may be a
                // secret pasted in the wrong field and must not reach an event.
                let well_formed = fingerprint.strip_prefix("hmac-sha256:").is_some_and(|h| {
                    !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if !well_formed {
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
                self.usable()?;
                if !self.is_default {
                    sink.write(ConnectionEvent::ConnectionMadeDefault, self)
                        .await;
                }
            }
            ConnectionCommand::UnmarkDefault => {
                if !self.created {
                    return Err(ConnectionError::NotFound);
                }
                if self.is_default {
                    sink.write(ConnectionEvent::ConnectionDefaultCleared, self)
                        .await;
                }
            }
            ConnectionCommand::GrantConsent { scopes } => {
                self.usable()?;
                let scopes = clean_scopes(scopes)?;
                sink.write(ConnectionEvent::ConsentGranted { scopes, at: now }, self)
                    .await;
            }
            ConnectionCommand::RevokeConsent => {
                self.usable()?;
                if self.consent_granted {
                    sink.write(ConnectionEvent::ConsentRevoked { at: now }, self)
                        .await;
                }
            }
            ConnectionCommand::RecordHealthCheck {
                health,
                scopes_granted,
            } => {
                self.usable()?;
                let scopes_granted = clean_scopes(scopes_granted)?;
                let event = ConnectionEvent::HealthChecked {
                    health,
                    scopes_granted,
                    checked_at: now,
                };
                sink.write(event, self).await;
            }
            ConnectionCommand::RecordError { reason, message } => {
                if !self.created {
                    return Err(ConnectionError::NotFound);
                }
                let event = ConnectionEvent::ConnectionErrored {
                    reason,
                    message: sanitize_message(&message),
                    at: now,
                };
                sink.write(event, self).await;
            }
            ConnectionCommand::Disable => {
                self.usable()?;
                sink.write(ConnectionEvent::ConnectionDisabled { at: now }, self)
                    .await;
            }
            ConnectionCommand::Enable => {
                if !self.created {
                    return Err(ConnectionError::NotFound);
                }
                if !self.disabled {
                    return Err(ConnectionError::NotDisabled);
                }
                sink.write(ConnectionEvent::ConnectionEnabled { at: now }, self)
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
            ConnectionEvent::ConsentGranted { scopes, .. } => {
                self.consent_granted = true;
                self.scopes_granted = scopes;
                self.errored = false;
            }
            ConnectionEvent::ConsentRevoked { .. } => {
                self.consent_granted = false;
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
        }
        self.recompute_status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;
    use std::sync::Arc;

    type F = TestFramework<ProviderConnection>;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }
    fn services() -> Services {
        Services::new(Arc::new(FixedClock::at(now())))
    }
    fn guid() -> EntraTenantId {
        "72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap()
    }
    fn created() -> ConnectionEvent {
        ConnectionEvent::ConnectionCreated {
            workspace: "acme".parse().unwrap(),
            tenant_key: format!("acme:{}", guid()).parse().unwrap(),
            provider: Provider::Microsoft,
            entra_tenant_id: guid(),
            display_name: "Contoso (Graph)".into(),
            created_at: now(),
        }
    }
    const FP: &str = "hmac-sha256:00112233445566778899aabbccddeeff";
    fn cred(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    fn credential_set(n: u128) -> ConnectionEvent {
        ConnectionEvent::CredentialSet {
            credential_ref: cred(n),
            fingerprint: FP.into(),
            set_at: now(),
        }
    }
    fn consent() -> ConnectionEvent {
        ConnectionEvent::ConsentGranted {
            scopes: vec!["Policy.Read.All".into()],
            at: now(),
        }
    }
    fn state(events: Vec<ConnectionEvent>) -> ProviderConnection {
        let mut c = ProviderConnection::default();
        for e in events {
            c.apply(e);
        }
        c
    }

    #[test]
    fn a_connection_is_created_and_needs_consent() {
        F::with(services())
            .given_no_previous_events()
            .when(ConnectionCommand::Create {
                workspace: "acme".parse().unwrap(),
                tenant_key: format!("acme:{}", guid()).parse().unwrap(),
                provider: Provider::Microsoft,
                entra_tenant_id: guid(),
                display_name: " Contoso (Graph) ".into(),
            })
            .then_expect_events(vec![created()]);
        assert_eq!(
            state(vec![created()]).status,
            ConnectionStatus::NeedsConsent
        );
    }

    #[test]
    fn a_connection_for_a_tenant_of_another_workspace_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(ConnectionCommand::Create {
                workspace: "other".parse().unwrap(),
                tenant_key: format!("acme:{}", guid()).parse().unwrap(),
                provider: Provider::Microsoft,
                entra_tenant_id: guid(),
                display_name: "x".into(),
            })
            .then_expect_error(ConnectionError::WorkspaceMismatch);
    }

    #[test]
    fn the_first_credential_is_set_and_the_next_rotates_it_keeping_history() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::SetCredential {
                credential_ref: cred(1),
                fingerprint: FP.into(),
                tenant_id: Some(guid()),
            })
            .then_expect_events(vec![credential_set(1)]);
        F::with(services())
            .given(vec![created(), credential_set(1)])
            .when(ConnectionCommand::SetCredential {
                credential_ref: cred(2),
                fingerprint: FP.into(),
                tenant_id: None,
            })
            .then_expect_events(vec![ConnectionEvent::CredentialRotated {
                credential_ref: cred(2),
                previous_ref: cred(1),
                fingerprint: FP.into(),
                rotated_at: now(),
            }]);
        let s = state(vec![
            created(),
            credential_set(1),
            ConnectionEvent::CredentialRotated {
                credential_ref: cred(2),
                previous_ref: cred(1),
                fingerprint: FP.into(),
                rotated_at: now(),
            },
        ]);
        assert_eq!(s.credential.unwrap().credential_ref, cred(2));
        assert_eq!(s.credential_history[0].credential_ref, cred(1));
    }

    #[test]
    fn a_credential_for_another_tenant_is_refused() {
        let other: EntraTenantId = "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1".parse().unwrap();
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::SetCredential {
                credential_ref: cred(1),
                fingerprint: FP.into(),
                tenant_id: Some(other),
            })
            .then_expect_error(ConnectionError::TenantMismatch {
                given: other,
                expected: guid(),
            });
    }

    #[test]
    fn a_fingerprint_that_is_not_ours_never_reaches_an_event() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::SetCredential {
                credential_ref: cred(1),
                fingerprint: "my-client-secret".into(),
                tenant_id: None,
            })
            .then_expect_error(ConnectionError::BadFingerprint);
    }

    #[test]
    fn consent_and_a_credential_make_a_connection_connected() {
        assert_eq!(
            state(vec![created(), consent()]).status,
            ConnectionStatus::NeedsConsent
        );
        assert_eq!(
            state(vec![created(), consent(), credential_set(1)]).status,
            ConnectionStatus::Connected
        );
    }

    #[test]
    fn revoking_consent_returns_to_needs_consent() {
        F::with(services())
            .given(vec![created(), consent(), credential_set(1)])
            .when(ConnectionCommand::RevokeConsent)
            .then_expect_events(vec![ConnectionEvent::ConsentRevoked { at: now() }]);
        let s = state(vec![
            created(),
            consent(),
            credential_set(1),
            ConnectionEvent::ConsentRevoked { at: now() },
        ]);
        assert_eq!(s.status, ConnectionStatus::NeedsConsent);
        assert!(s.scopes_granted.is_empty());
    }

    #[test]
    fn an_error_is_recorded_sanitized_and_cleared_by_a_healthy_check() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::RecordError {
                reason: ReasonCode::ProviderAuthFailed,
                message: "token call failed: client_secret=abc123 Bearer eyJabc.def".into(),
            })
            .then_expect_events(vec![ConnectionEvent::ConnectionErrored {
                reason: ReasonCode::ProviderAuthFailed,
                message: "token call failed: client_secret=[redacted] Bearer [redacted]".into(),
                at: now(),
            }]);
        let errored = ConnectionEvent::ConnectionErrored {
            reason: ReasonCode::ProviderAuthFailed,
            message: "x".into(),
            at: now(),
        };
        let s = state(vec![
            created(),
            consent(),
            credential_set(1),
            errored.clone(),
        ]);
        assert_eq!(s.status, ConnectionStatus::Error);
        assert_eq!(
            s.last_error_reason_code,
            Some(ReasonCode::ProviderAuthFailed)
        );
        let s = state(vec![
            created(),
            consent(),
            credential_set(1),
            errored,
            ConnectionEvent::HealthChecked {
                health: HealthStatus::Healthy,
                scopes_granted: vec!["Policy.Read.All".into()],
                checked_at: now(),
            },
        ]);
        assert_eq!(s.status, ConnectionStatus::Connected);
        assert_eq!(s.health_status, HealthStatus::Healthy);
        assert_eq!(s.last_health_check_at, Some(now()));
    }

    #[test]
    fn a_disabled_connection_refuses_everything_but_enable() {
        let disabled = vec![created(), ConnectionEvent::ConnectionDisabled { at: now() }];
        assert_eq!(state(disabled.clone()).status, ConnectionStatus::Disabled);
        F::with(services())
            .given(disabled.clone())
            .when(ConnectionCommand::GrantConsent { scopes: vec![] })
            .then_expect_error(ConnectionError::Disabled);
        F::with(services())
            .given(disabled.clone())
            .when(ConnectionCommand::MarkDefault)
            .then_expect_error(ConnectionError::Disabled);
        F::with(services())
            .given(disabled)
            .when(ConnectionCommand::Enable)
            .then_expect_events(vec![ConnectionEvent::ConnectionEnabled { at: now() }]);
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::Enable)
            .then_expect_error(ConnectionError::NotDisabled);
    }

    #[test]
    fn default_marks_are_idempotent() {
        F::with(services())
            .given(vec![created(), ConnectionEvent::ConnectionMadeDefault])
            .when(ConnectionCommand::MarkDefault)
            .then_expect_events(vec![]);
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::UnmarkDefault)
            .then_expect_events(vec![]);
    }

    #[test]
    fn commands_on_a_missing_connection_are_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(ConnectionCommand::RevokeConsent)
            .then_expect_error(ConnectionError::NotFound);
    }

    #[test]
    fn scopes_are_validated_deduplicated_and_sorted() {
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::GrantConsent {
                scopes: vec![
                    "User.Read.All".into(),
                    "Policy.Read.All".into(),
                    "User.Read.All".into(),
                ],
            })
            .then_expect_events(vec![ConnectionEvent::ConsentGranted {
                scopes: vec!["Policy.Read.All".into(), "User.Read.All".into()],
                at: now(),
            }]);
        F::with(services())
            .given(vec![created()])
            .when(ConnectionCommand::GrantConsent {
                scopes: vec![" ".into()],
            })
            .then_expect_error(ConnectionError::InvalidScopes);
    }

    #[test]
    fn only_the_engine_records_health_and_errors() {
        assert_eq!(
            ConnectionCommand::RecordHealthCheck {
                health: HealthStatus::Down,
                scopes_granted: vec![]
            }
            .permission(),
            Permission::RecordProgress
        );
        assert_eq!(
            ConnectionCommand::Disable.permission(),
            Permission::ManageConnections
        );
    }
}
