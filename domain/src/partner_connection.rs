//! The PartnerConnection aggregate (R5.1): how a workspace reaches its customers' tenants
//! for contact sync. One per workspace; aggregate id: the [`WorkspaceId`].
//!
//! Two kinds: `direct` (a Microsoft app of the partner tenant) or `cipp` (a CIPP instance
//! and its API token). Secrets live in the vault; events carry only a [`SecretRef`].
//! Switching the kind names, in the same event, every credential reference of the old kind
//! that is now stale, so the store can delete those vault rows in the same transaction.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::connection::is_fingerprint;
use crate::sanitize::sanitize_message;
use crate::values::{EntraTenantId, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// A secret as the domain knows it: the vault's reference and keyed fingerprint
/// (`hmac-sha256:<hex>`), never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub credential_ref: Uuid,
    pub fingerprint: String,
}

/// Which way the partner's customers are reached, with what the kind needs besides its
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerTarget {
    /// Microsoft Graph with the partner tenant's own app.
    Direct { partner_tenant_id: EntraTenantId },
    /// A CIPP instance; the URL is validated by [`cipp_base_url`]. CIPP's API takes tokens
    /// for its own API app (`api_client_id`), issued to an app registration of the partner
    /// tenant (`partner_tenant_id`) whose client id and secret are the vault row.
    Cipp {
        base_url: String,
        api_client_id: String,
        partner_tenant_id: EntraTenantId,
    },
}

impl PartnerTarget {
    /// The kind's stable snake_case spelling: `direct` or `cipp`.
    pub fn kind(&self) -> &'static str {
        match self {
            PartnerTarget::Direct { .. } => "direct",
            PartnerTarget::Cipp { .. } => "cipp",
        }
    }
}

/// Whether the partner connection can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerConnectionStatus {
    /// Never configured, or disconnected.
    #[default]
    NotConnected,
    /// Configured; no validation has succeeded since.
    PendingValidation,
    Connected,
    Error,
}

impl PartnerConnectionStatus {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::PendingValidation => "pending_validation",
            Self::Connected => "connected",
            Self::Error => "error",
        }
    }
}

display_as_str!(PartnerConnectionStatus);

/// What can be asked of a partner connection.
#[derive(Debug, Clone, PartialEq)]
pub enum PartnerConnectionCommand {
    /// Sets the kind, its target and its secret (already stored in the vault). The same
    /// target and secret again write nothing. Another kind clears the old kind's secrets.
    Configure {
        workspace: WorkspaceId,
        target: PartnerTarget,
        secret: SecretRef,
    },
    /// A validation call (token, tenant list) succeeded.
    RecordValidated,
    /// A validation or sync call failed; the message is sanitized before it is stored.
    RecordError { reason: ReasonCode, message: String },
    /// Forgets the configuration and clears every secret. Not connected: no events.
    Disconnect,
}

impl Authorize for PartnerConnectionCommand {
    fn permission(&self) -> Permission {
        match self {
            PartnerConnectionCommand::Configure { .. } | PartnerConnectionCommand::Disconnect => {
                Permission::ManageContactSync
            }
            PartnerConnectionCommand::RecordValidated
            | PartnerConnectionCommand::RecordError { .. } => Permission::RecordProgress,
        }
    }
}

/// What happened to a partner connection. Persisted: variants and fields are never
/// renamed. None carries a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartnerConnectionEvent {
    /// The connection now uses `target` with `secret`. `cleared_credential_refs` are the
    /// vault rows this makes stale (the old kind's, on a switch); the store deletes them in
    /// the same transaction.
    PartnerConnectionConfigured {
        workspace: WorkspaceId,
        target: PartnerTarget,
        secret: SecretRef,
        cleared_credential_refs: Vec<Uuid>,
        configured_at: DateTime<Utc>,
    },
    PartnerConnectionValidated {
        validated_at: DateTime<Utc>,
    },
    /// `message` is already sanitized.
    PartnerConnectionErrored {
        reason: ReasonCode,
        message: String,
        at: DateTime<Utc>,
    },
    PartnerConnectionDisconnected {
        cleared_credential_refs: Vec<Uuid>,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for PartnerConnectionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PartnerConnectionConfigured { .. } => "PartnerConnectionConfigured",
            Self::PartnerConnectionValidated { .. } => "PartnerConnectionValidated",
            Self::PartnerConnectionErrored { .. } => "PartnerConnectionErrored",
            Self::PartnerConnectionDisconnected { .. } => "PartnerConnectionDisconnected",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a partner connection command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartnerConnectionError {
    #[error("the partner connection is not configured")]
    NotConfigured,
    #[error("the partner connection belongs to another workspace")]
    WorkspaceMismatch,
    #[error("the credential fingerprint is malformed")]
    BadFingerprint,
    #[error("the CIPP URL must be an http(s) URL without credentials, query or fragment")]
    InvalidCippUrl,
    #[error("the CIPP API client id is required (1 to 128 characters)")]
    InvalidCippApiClient,
}

impl DomainError for PartnerConnectionError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            PartnerConnectionError::NotConfigured => ReasonCode::ProviderConnectionMissing,
            PartnerConnectionError::WorkspaceMismatch
            | PartnerConnectionError::BadFingerprint
            | PartnerConnectionError::InvalidCippUrl
            | PartnerConnectionError::InvalidCippApiClient => ReasonCode::ValidationFailed,
        }
    }
}

/// A CIPP base URL as stored: http or https, a host, no user info (a token pasted into the
/// URL must not reach an event), no query or fragment, no trailing slash.
pub fn cipp_base_url(raw: &str) -> Result<String, PartnerConnectionError> {
    let url = url::Url::parse(raw.trim()).map_err(|_| PartnerConnectionError::InvalidCippUrl)?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if !ok {
        return Err(PartnerConnectionError::InvalidCippUrl);
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A workspace's partner connection, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PartnerConnection {
    pub workspace: Option<WorkspaceId>,
    pub target: Option<PartnerTarget>,
    pub secret: Option<SecretRef>,
    pub status: PartnerConnectionStatus,
    pub validated_at: Option<DateTime<Utc>>,
    pub last_error_reason_code: Option<ReasonCode>,
    /// Sanitized when recorded.
    pub last_error_message: Option<String>,
    /// Earlier secrets of the current kind (re-configuring keeps them until a switch or a
    /// disconnect clears them).
    pub previous_secrets: Vec<Uuid>,
}

impl PartnerConnection {
    /// Every vault row this connection still points at.
    fn live_refs(&self) -> Vec<Uuid> {
        self.previous_secrets
            .iter()
            .copied()
            .chain(self.secret.as_ref().map(|s| s.credential_ref))
            .collect()
    }

    fn require_configured(&self) -> Result<(), PartnerConnectionError> {
        match self.target {
            Some(_) => Ok(()),
            None => Err(PartnerConnectionError::NotConfigured),
        }
    }
}

impl Aggregate for PartnerConnection {
    const TYPE: &'static str = "partner_connection";
    type Command = PartnerConnectionCommand;
    type Event = PartnerConnectionEvent;
    type Error = PartnerConnectionError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: PartnerConnectionCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), PartnerConnectionError> {
        let now = services.clock.now();
        match command {
            PartnerConnectionCommand::Configure {
                workspace,
                target,
                secret,
            } => {
                if self.workspace.as_ref().is_some_and(|w| *w != workspace) {
                    return Err(PartnerConnectionError::WorkspaceMismatch);
                }
                if !is_fingerprint(&secret.fingerprint) {
                    return Err(PartnerConnectionError::BadFingerprint);
                }
                let target = match target {
                    PartnerTarget::Cipp {
                        base_url,
                        api_client_id,
                        partner_tenant_id,
                    } => {
                        let api_client_id = api_client_id.trim();
                        if api_client_id.is_empty() || api_client_id.len() > 128 {
                            return Err(PartnerConnectionError::InvalidCippApiClient);
                        }
                        PartnerTarget::Cipp {
                            base_url: cipp_base_url(&base_url)?,
                            api_client_id: api_client_id.to_owned(),
                            partner_tenant_id,
                        }
                    }
                    direct => direct,
                };
                if self.target.as_ref() == Some(&target) && self.secret.as_ref() == Some(&secret) {
                    return Ok(());
                }
                let switched = self
                    .target
                    .as_ref()
                    .is_some_and(|old| old.kind() != target.kind());
                let cleared_credential_refs = if switched {
                    self.live_refs()
                } else {
                    Vec::new()
                };
                let event = PartnerConnectionEvent::PartnerConnectionConfigured {
                    workspace,
                    target,
                    secret,
                    cleared_credential_refs,
                    configured_at: now,
                };
                sink.write(event, self).await;
            }
            PartnerConnectionCommand::RecordValidated => {
                self.require_configured()?;
                let event =
                    PartnerConnectionEvent::PartnerConnectionValidated { validated_at: now };
                sink.write(event, self).await;
            }
            PartnerConnectionCommand::RecordError { reason, message } => {
                self.require_configured()?;
                let event = PartnerConnectionEvent::PartnerConnectionErrored {
                    reason,
                    message: sanitize_message(&message),
                    at: now,
                };
                sink.write(event, self).await;
            }
            PartnerConnectionCommand::Disconnect => {
                if self.target.is_some() {
                    let event = PartnerConnectionEvent::PartnerConnectionDisconnected {
                        cleared_credential_refs: self.live_refs(),
                        at: now,
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: PartnerConnectionEvent) {
        match event {
            PartnerConnectionEvent::PartnerConnectionConfigured {
                workspace,
                target,
                secret,
                cleared_credential_refs,
                ..
            } => {
                self.previous_secrets
                    .retain(|r| !cleared_credential_refs.contains(r));
                if let Some(old) = self.secret.take() {
                    if !cleared_credential_refs.contains(&old.credential_ref)
                        && old.credential_ref != secret.credential_ref
                    {
                        self.previous_secrets.push(old.credential_ref);
                    }
                }
                self.workspace = Some(workspace);
                self.target = Some(target);
                self.secret = Some(secret);
                self.status = PartnerConnectionStatus::PendingValidation;
                self.validated_at = None;
            }
            PartnerConnectionEvent::PartnerConnectionValidated { validated_at } => {
                self.status = PartnerConnectionStatus::Connected;
                self.validated_at = Some(validated_at);
            }
            PartnerConnectionEvent::PartnerConnectionErrored {
                reason, message, ..
            } => {
                self.status = PartnerConnectionStatus::Error;
                self.last_error_reason_code = Some(reason);
                self.last_error_message = Some(message);
            }
            PartnerConnectionEvent::PartnerConnectionDisconnected { .. } => {
                // The workspace stays: the stream stays this workspace's.
                self.target = None;
                self.secret = None;
                self.previous_secrets.clear();
                self.status = PartnerConnectionStatus::NotConnected;
                self.validated_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_event_types_match_payload_tags, fold, guid, now, services, workspace,
    };
    use cqrs_es::test::TestFramework;

    type F = TestFramework<PartnerConnection>;

    const FP: &str = "hmac-sha256:00112233445566778899aabbccddeeff";
    const CIPP: &str = "https://cipp.example.com";

    fn secret(n: u128) -> SecretRef {
        SecretRef {
            credential_ref: Uuid::from_u128(n),
            fingerprint: FP.into(),
        }
    }
    fn direct() -> PartnerTarget {
        PartnerTarget::Direct {
            partner_tenant_id: guid(),
        }
    }
    fn cipp(url: &str) -> PartnerTarget {
        PartnerTarget::Cipp {
            base_url: url.into(),
            api_client_id: "cipp-api".into(),
            partner_tenant_id: guid(),
        }
    }
    fn configure(target: PartnerTarget, n: u128) -> PartnerConnectionCommand {
        PartnerConnectionCommand::Configure {
            workspace: workspace(),
            target,
            secret: secret(n),
        }
    }
    fn configured(target: PartnerTarget, n: u128, cleared: &[u128]) -> PartnerConnectionEvent {
        PartnerConnectionEvent::PartnerConnectionConfigured {
            workspace: workspace(),
            target,
            secret: secret(n),
            cleared_credential_refs: cleared.iter().map(|c| Uuid::from_u128(*c)).collect(),
            configured_at: now(),
        }
    }
    fn validated() -> PartnerConnectionEvent {
        PartnerConnectionEvent::PartnerConnectionValidated {
            validated_at: now(),
        }
    }

    #[test]
    fn a_direct_connection_is_configured_and_waits_for_validation() {
        F::with(services())
            .given_no_previous_events()
            .when(configure(direct(), 1))
            .then_expect_events(vec![configured(direct(), 1, &[])]);
        let c: PartnerConnection = fold([configured(direct(), 1, &[])]);
        assert_eq!(c.status, PartnerConnectionStatus::PendingValidation);
        assert_eq!(c.target.as_ref().map(PartnerTarget::kind), Some("direct"));
    }

    #[test]
    fn a_cipp_url_is_stored_without_its_trailing_slash() {
        F::with(services())
            .given_no_previous_events()
            .when(configure(cipp(" https://cipp.example.com/ "), 1))
            .then_expect_events(vec![configured(cipp(CIPP), 1, &[])]);
    }

    #[test]
    fn a_cipp_url_with_credentials_a_query_or_another_scheme_is_refused() {
        for url in [
            "https://user:token@cipp.example.com",
            "https://cipp.example.com/?code=abc",
            "https://cipp.example.com/#token",
            "ftp://cipp.example.com",
            "cipp.example.com",
        ] {
            F::with(services())
                .given_no_previous_events()
                .when(configure(cipp(url), 1))
                .then_expect_error(PartnerConnectionError::InvalidCippUrl);
        }
    }

    #[test]
    fn a_fingerprint_that_is_not_ours_never_reaches_an_event() {
        F::with(services())
            .given_no_previous_events()
            .when(PartnerConnectionCommand::Configure {
                workspace: workspace(),
                target: direct(),
                secret: SecretRef {
                    credential_ref: Uuid::from_u128(1),
                    fingerprint: "my-api-token".into(),
                },
            })
            .then_expect_error(PartnerConnectionError::BadFingerprint);
    }

    #[test]
    fn configuring_the_same_target_and_secret_again_writes_nothing() {
        F::with(services())
            .given(vec![configured(cipp(CIPP), 1, &[])])
            .when(configure(cipp("https://cipp.example.com/"), 1))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_new_secret_of_the_same_kind_clears_nothing_and_keeps_the_old_one_listed() {
        F::with(services())
            .given(vec![configured(direct(), 1, &[])])
            .when(configure(direct(), 2))
            .then_expect_events(vec![configured(direct(), 2, &[])]);
        let c: PartnerConnection =
            fold([configured(direct(), 1, &[]), configured(direct(), 2, &[])]);
        assert_eq!(c.previous_secrets, [Uuid::from_u128(1)]);
    }

    #[test]
    fn switching_the_kind_clears_every_secret_of_the_old_kind() {
        F::with(services())
            .given(vec![
                configured(direct(), 1, &[]),
                configured(direct(), 2, &[]),
            ])
            .when(configure(cipp(CIPP), 3))
            .then_expect_events(vec![configured(cipp(CIPP), 3, &[1, 2])]);
        let c: PartnerConnection = fold([
            configured(direct(), 1, &[]),
            configured(direct(), 2, &[]),
            configured(cipp(CIPP), 3, &[1, 2]),
        ]);
        assert!(c.previous_secrets.is_empty());
        assert_eq!(c.secret, Some(secret(3)));
    }

    #[test]
    fn a_validation_connects_and_a_new_configuration_asks_for_another() {
        let c: PartnerConnection = fold([configured(direct(), 1, &[]), validated()]);
        assert_eq!(c.status, PartnerConnectionStatus::Connected);
        assert_eq!(c.validated_at, Some(now()));
        let c: PartnerConnection = fold([
            configured(direct(), 1, &[]),
            validated(),
            configured(cipp(CIPP), 2, &[1]),
        ]);
        assert_eq!(c.status, PartnerConnectionStatus::PendingValidation);
        assert_eq!(c.validated_at, None);
    }

    #[test]
    fn an_error_is_recorded_with_a_sanitized_message() {
        F::with(services())
            .given(vec![configured(cipp(CIPP), 1, &[])])
            .when(PartnerConnectionCommand::RecordError {
                reason: ReasonCode::ProviderAuthFailed,
                message: "ListTenants said 401 for Bearer eyJabc.def".into(),
            })
            .then_expect_events(vec![PartnerConnectionEvent::PartnerConnectionErrored {
                reason: ReasonCode::ProviderAuthFailed,
                message: "ListTenants said 401 for Bearer [redacted]".into(),
                at: now(),
            }]);
    }

    #[test]
    fn validating_or_failing_an_unconfigured_connection_is_refused() {
        for command in [
            PartnerConnectionCommand::RecordValidated,
            PartnerConnectionCommand::RecordError {
                reason: ReasonCode::GraphUnavailable,
                message: "x".into(),
            },
        ] {
            F::with(services())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(PartnerConnectionError::NotConfigured);
        }
    }

    #[test]
    fn disconnecting_clears_every_secret_and_twice_writes_nothing() {
        let history = vec![configured(direct(), 1, &[]), configured(direct(), 2, &[])];
        let disconnected = PartnerConnectionEvent::PartnerConnectionDisconnected {
            cleared_credential_refs: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
            at: now(),
        };
        F::with(services())
            .given(history.clone())
            .when(PartnerConnectionCommand::Disconnect)
            .then_expect_events(vec![disconnected.clone()]);
        let mut all = history;
        all.push(disconnected);
        F::with(services())
            .given(all.clone())
            .when(PartnerConnectionCommand::Disconnect)
            .then_expect_events(vec![]);
        assert_eq!(
            fold::<PartnerConnection>(all).status,
            PartnerConnectionStatus::NotConnected
        );
    }

    #[test]
    fn a_partner_connection_stays_in_its_workspace() {
        F::with(services())
            .given(vec![configured(direct(), 1, &[])])
            .when(PartnerConnectionCommand::Configure {
                workspace: "other".parse().unwrap(),
                target: direct(),
                secret: secret(2),
            })
            .then_expect_error(PartnerConnectionError::WorkspaceMismatch);
    }

    #[test]
    fn people_configure_and_only_the_engine_records_validation() {
        assert_eq!(
            configure(direct(), 1).permission(),
            Permission::ManageContactSync
        );
        assert_eq!(
            PartnerConnectionCommand::Disconnect.permission(),
            Permission::ManageContactSync
        );
        assert_eq!(
            PartnerConnectionCommand::RecordValidated.permission(),
            Permission::RecordProgress
        );
    }

    #[test]
    fn event_types_match_their_stored_tags_and_carry_no_secret() {
        let events = [
            configured(cipp(CIPP), 1, &[]),
            validated(),
            PartnerConnectionEvent::PartnerConnectionErrored {
                reason: ReasonCode::GraphUnavailable,
                message: "x".into(),
                at: now(),
            },
            PartnerConnectionEvent::PartnerConnectionDisconnected {
                cleared_credential_refs: vec![],
                at: now(),
            },
        ];
        assert_event_types_match_payload_tags(&events);
        let json = serde_json::to_value(&events[0]).unwrap();
        let secret = &json["PartnerConnectionConfigured"]["secret"];
        let mut keys: Vec<_> = secret.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["credential_ref", "fingerprint"]);
        assert_eq!(
            json["PartnerConnectionConfigured"]["target"],
            serde_json::json!({"cipp": {
                "base_url": CIPP,
                "api_client_id": "cipp-api",
                "partner_tenant_id": guid().to_string(),
            }})
        );
    }

    #[test]
    fn refusals_map_to_stable_reason_codes() {
        assert_eq!(
            PartnerConnectionError::NotConfigured.reason_code(),
            ReasonCode::ProviderConnectionMissing
        );
        assert_eq!(
            PartnerConnectionError::InvalidCippUrl.reason_code(),
            ReasonCode::ValidationFailed
        );
        assert_eq!(
            PartnerConnectionStatus::NotConnected.to_string(),
            "not_connected"
        );
    }
}
