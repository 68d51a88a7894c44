//! The Mailbox aggregate (R6.1, R6.2, R6.5): one Exchange Online mailbox whose new mail
//! reaches tenantflow through a Graph change-notification subscription. Aggregate id: the
//! [`MailboxId`].
//!
//! What the events know: the address, its tenant, the subscription's id and expiry, the
//! keyed fingerprints of the verification token (`clientState`) and, when one is accepted,
//! of a legacy value, and what the connection test found. What they never know: the
//! verification token itself and the delegated tokens (access, refresh), which live only in
//! the vault and are re-sealed there on every refresh.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sanitize::sanitize_message;
use crate::values::{normalize_email, EntraTenantId, TenantKey, WorkspaceId};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// A mailbox's id (a UUID v7 given when it is added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MailboxId(pub Uuid);

impl MailboxId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for MailboxId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for MailboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for MailboxId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self)
    }
}

/// Where a mailbox stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxStatus {
    /// Added (or its subscription lost): a subscription is being created.
    #[default]
    Connecting,
    /// A live subscription delivers its mail.
    Active,
    /// A renewal was asked for and has not happened yet.
    Renewing,
    /// Work on it stopped for a reason someone must fix (consent, refresh token, ...).
    Degraded,
    /// Switched off: no subscription, no notifications accepted.
    Disabled,
}

impl MailboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Active => "active",
            Self::Renewing => "renewing",
            Self::Degraded => "degraded",
            Self::Disabled => "disabled",
        }
    }
}

display_as_str!(MailboxStatus);
spelled_values!(MailboxStatus {
    Connecting,
    Active,
    Renewing,
    Degraded,
    Disabled
});

/// Why a subscription is no longer there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionLoss {
    /// Graph said so (`subscriptionRemoved`).
    Removed,
    /// A renewal found it gone (404).
    NotFound,
    /// It expired before it could be renewed.
    Expired,
}

/// Graph's lifecycle notifications for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleEvent {
    ReauthorizationRequired,
    SubscriptionRemoved,
    Missed,
}

impl LifecycleEvent {
    /// Graph's spelling (`lifecycleEvent`).
    pub fn parse_graph(s: &str) -> Option<Self> {
        match s {
            "reauthorizationRequired" => Some(Self::ReauthorizationRequired),
            "subscriptionRemoved" => Some(Self::SubscriptionRemoved),
            "missed" => Some(Self::Missed),
            _ => None,
        }
    }
}

/// What a connection test found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestOutcome {
    /// `None`: the mailbox answers and is the configured one.
    pub reason: Option<ReasonCode>,
    /// Short and safe (sanitized).
    pub message: String,
}

/// What can be asked of a mailbox.
#[derive(Debug, Clone, PartialEq)]
pub enum MailboxCommand {
    Add {
        workspace: WorkspaceId,
        tenant: TenantKey,
        address: String,
        /// Keyed fingerprint of the verification token (the token is in the vault).
        verification_fingerprint: String,
        /// Keyed fingerprint of one older `clientState` still accepted, with a warning.
        legacy_fingerprint: Option<String>,
        /// Whether delegated tokens were sealed into the vault with it.
        delegated: bool,
    },
    /// A subscription was created (first, or again after one was lost).
    RecordSubscription {
        subscription_id: String,
        expires_at: DateTime<Utc>,
    },
    RecordRenewal {
        subscription_id: String,
        expires_at: DateTime<Utc>,
    },
    /// Someone asks for a renewal now.
    RequestRenewal,
    RecordLoss {
        subscription_id: String,
        loss: SubscriptionLoss,
    },
    RecordLifecycle {
        event: LifecycleEvent,
    },
    /// Work stopped for a reason someone must fix.
    Degrade {
        reason: ReasonCode,
        message: String,
    },
    RecordTest {
        outcome: TestOutcome,
    },
    Disable,
}

impl Authorize for MailboxCommand {
    fn permission(&self) -> Permission {
        match self {
            MailboxCommand::Add { .. } | MailboxCommand::Disable => Permission::ManageConnections,
            MailboxCommand::RequestRenewal => Permission::StartOperations,
            _ => Permission::RecordProgress,
        }
    }
}

/// What happened to a mailbox. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MailboxEvent {
    MailboxAdded {
        workspace: WorkspaceId,
        tenant_key: TenantKey,
        entra_tenant_id: EntraTenantId,
        address: String,
        verification_fingerprint: String,
        legacy_fingerprint: Option<String>,
        delegated: bool,
        added_at: DateTime<Utc>,
    },
    SubscriptionCreated {
        subscription_id: String,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    SubscriptionRenewed {
        subscription_id: String,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    RenewalRequested {
        at: DateTime<Utc>,
    },
    SubscriptionLost {
        subscription_id: String,
        loss: SubscriptionLoss,
        at: DateTime<Utc>,
    },
    LifecycleNotified {
        event: LifecycleEvent,
        at: DateTime<Utc>,
    },
    MailboxDegraded {
        reason: ReasonCode,
        message: String,
        at: DateTime<Utc>,
    },
    MailboxTested {
        outcome: TestOutcome,
        at: DateTime<Utc>,
    },
    MailboxDisabled {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MailboxEvent {
    fn event_type(&self) -> String {
        match self {
            MailboxEvent::MailboxAdded { .. } => "MailboxAdded",
            MailboxEvent::SubscriptionCreated { .. } => "SubscriptionCreated",
            MailboxEvent::SubscriptionRenewed { .. } => "SubscriptionRenewed",
            MailboxEvent::RenewalRequested { .. } => "RenewalRequested",
            MailboxEvent::SubscriptionLost { .. } => "SubscriptionLost",
            MailboxEvent::LifecycleNotified { .. } => "LifecycleNotified",
            MailboxEvent::MailboxDegraded { .. } => "MailboxDegraded",
            MailboxEvent::MailboxTested { .. } => "MailboxTested",
            MailboxEvent::MailboxDisabled { .. } => "MailboxDisabled",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a mailbox command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("the mailbox does not exist")]
    NotFound,
    #[error("the mailbox already exists")]
    AlreadyExists,
    #[error("`{0}` is not an email address")]
    InvalidAddress(String),
    #[error("the mailbox is disabled")]
    Disabled,
    #[error("the subscription id must be 1-128 visible characters")]
    InvalidSubscription,
}

impl DomainError for MailboxError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            MailboxError::NotFound => ReasonCode::NotFound,
            MailboxError::AlreadyExists => ReasonCode::AlreadyExists,
            MailboxError::InvalidAddress(_) | MailboxError::InvalidSubscription => {
                ReasonCode::ValidationFailed
            }
            MailboxError::Disabled => ReasonCode::InvalidTransition,
        }
    }
}

/// A mailbox, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Mailbox {
    pub workspace: Option<WorkspaceId>,
    pub tenant: Option<TenantKey>,
    pub entra_tenant_id: Option<EntraTenantId>,
    /// Normalized (lowercase).
    pub address: String,
    pub status: MailboxStatus,
    pub degraded_reason: Option<ReasonCode>,
    pub subscription_id: Option<String>,
    pub subscription_expires_at: Option<DateTime<Utc>>,
    pub verification_fingerprint: String,
    pub legacy_fingerprint: Option<String>,
    pub delegated: bool,
    pub last_test: Option<TestOutcome>,
}

impl Mailbox {
    pub fn exists(&self) -> bool {
        self.workspace.is_some()
    }

    fn require_live(&self) -> Result<(), MailboxError> {
        if !self.exists() {
            Err(MailboxError::NotFound)
        } else if self.status == MailboxStatus::Disabled {
            Err(MailboxError::Disabled)
        } else {
            Ok(())
        }
    }
}

/// A subscription id as Graph gives it: short, printable.
fn valid_subscription(id: &str) -> Result<(), MailboxError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c == ' ') {
        return Err(MailboxError::InvalidSubscription);
    }
    Ok(())
}

/// A mailbox address: `local@domain.tld`, lowercased.
pub fn valid_address(address: &str) -> Result<String, MailboxError> {
    let invalid = || MailboxError::InvalidAddress(address.chars().take(64).collect());
    let normalized = normalize_email(address).ok_or_else(invalid)?;
    match normalized.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') => Ok(normalized),
        _ => Err(invalid()),
    }
}

impl Aggregate for Mailbox {
    const TYPE: &'static str = "mailbox";
    type Command = MailboxCommand;
    type Event = MailboxEvent;
    type Error = MailboxError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: MailboxCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), MailboxError> {
        let at = services.clock.now();
        let event = match command {
            MailboxCommand::Add {
                workspace,
                tenant,
                address,
                verification_fingerprint,
                legacy_fingerprint,
                delegated,
            } => {
                if self.exists() {
                    return Err(MailboxError::AlreadyExists);
                }
                let address = valid_address(&address)?;
                Some(MailboxEvent::MailboxAdded {
                    workspace,
                    entra_tenant_id: tenant.entra_tenant_id,
                    tenant_key: tenant,
                    address,
                    verification_fingerprint,
                    legacy_fingerprint,
                    delegated,
                    added_at: at,
                })
            }
            MailboxCommand::RecordSubscription {
                subscription_id,
                expires_at,
            } => {
                self.require_live()?;
                valid_subscription(&subscription_id)?;
                Some(MailboxEvent::SubscriptionCreated {
                    subscription_id,
                    expires_at,
                    at,
                })
            }
            MailboxCommand::RecordRenewal {
                subscription_id,
                expires_at,
            } => {
                self.require_live()?;
                valid_subscription(&subscription_id)?;
                let same = self.subscription_id.as_deref() == Some(subscription_id.as_str())
                    && self.subscription_expires_at == Some(expires_at)
                    && self.status == MailboxStatus::Active;
                (!same).then_some(MailboxEvent::SubscriptionRenewed {
                    subscription_id,
                    expires_at,
                    at,
                })
            }
            MailboxCommand::RequestRenewal => {
                self.require_live()?;
                (self.status != MailboxStatus::Renewing)
                    .then_some(MailboxEvent::RenewalRequested { at })
            }
            MailboxCommand::RecordLoss {
                subscription_id,
                loss,
            } => {
                self.require_live()?;
                // Only the subscription we hold can be lost; an older one is history.
                (self.subscription_id.as_deref() == Some(subscription_id.as_str())).then_some(
                    MailboxEvent::SubscriptionLost {
                        subscription_id,
                        loss,
                        at,
                    },
                )
            }
            MailboxCommand::RecordLifecycle { event } => {
                self.require_live()?;
                Some(MailboxEvent::LifecycleNotified { event, at })
            }
            MailboxCommand::Degrade { reason, message } => {
                self.require_live()?;
                let same =
                    self.status == MailboxStatus::Degraded && self.degraded_reason == Some(reason);
                (!same).then(|| MailboxEvent::MailboxDegraded {
                    reason,
                    message: sanitize_message(&message),
                    at,
                })
            }
            MailboxCommand::RecordTest { outcome } => {
                self.require_live()?;
                Some(MailboxEvent::MailboxTested {
                    outcome: TestOutcome {
                        reason: outcome.reason,
                        message: sanitize_message(&outcome.message),
                    },
                    at,
                })
            }
            MailboxCommand::Disable => {
                if !self.exists() {
                    return Err(MailboxError::NotFound);
                }
                (self.status != MailboxStatus::Disabled)
                    .then_some(MailboxEvent::MailboxDisabled { at })
            }
        };
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: MailboxEvent) {
        match event {
            MailboxEvent::MailboxAdded {
                workspace,
                tenant_key: tenant,
                entra_tenant_id,
                address,
                verification_fingerprint,
                legacy_fingerprint,
                delegated,
                ..
            } => {
                self.workspace = Some(workspace);
                self.tenant = Some(tenant);
                self.entra_tenant_id = Some(entra_tenant_id);
                self.address = address;
                self.verification_fingerprint = verification_fingerprint;
                self.legacy_fingerprint = legacy_fingerprint;
                self.delegated = delegated;
                self.status = MailboxStatus::Connecting;
            }
            MailboxEvent::SubscriptionCreated {
                subscription_id,
                expires_at,
                ..
            }
            | MailboxEvent::SubscriptionRenewed {
                subscription_id,
                expires_at,
                ..
            } => {
                self.subscription_id = Some(subscription_id);
                self.subscription_expires_at = Some(expires_at);
                self.status = MailboxStatus::Active;
                self.degraded_reason = None;
            }
            MailboxEvent::RenewalRequested { .. } => self.status = MailboxStatus::Renewing,
            MailboxEvent::SubscriptionLost { .. } => {
                self.subscription_id = None;
                self.subscription_expires_at = None;
                self.status = MailboxStatus::Connecting;
            }
            MailboxEvent::LifecycleNotified { .. } => {}
            MailboxEvent::MailboxDegraded { reason, .. } => {
                self.status = MailboxStatus::Degraded;
                self.degraded_reason = Some(reason);
            }
            MailboxEvent::MailboxTested { outcome, .. } => self.last_test = Some(outcome),
            // The subscription id stays: the worker deletes it at Graph.
            MailboxEvent::MailboxDisabled { .. } => self.status = MailboxStatus::Disabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_event_types_match_payload_tags, now, services, tenant_key};
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<Mailbox>;

    fn added() -> MailboxEvent {
        MailboxEvent::MailboxAdded {
            workspace: crate::testing::workspace(),
            tenant_key: tenant_key(),
            entra_tenant_id: crate::testing::guid(),
            address: "help@contoso.com".into(),
            verification_fingerprint: "hmac-sha256:v2:abc".into(),
            legacy_fingerprint: None,
            delegated: true,
            added_at: now(),
        }
    }

    fn created(id: &str) -> MailboxEvent {
        MailboxEvent::SubscriptionCreated {
            subscription_id: id.into(),
            expires_at: now() + chrono::Duration::days(2),
            at: now(),
        }
    }

    #[tokio::test]
    async fn adding_a_mailbox_normalizes_its_address_and_keeps_only_fingerprints() {
        Given::with(services())
            .given_no_previous_events()
            .when_async(MailboxCommand::Add {
                workspace: crate::testing::workspace(),
                tenant: tenant_key(),
                address: " Help@Contoso.com ".into(),
                verification_fingerprint: "hmac-sha256:v2:abc".into(),
                legacy_fingerprint: None,
                delegated: true,
            })
            .await
            .then_expect_events(vec![added()]);
    }

    #[tokio::test]
    async fn an_address_without_a_domain_is_refused() {
        Given::with(services())
            .given_no_previous_events()
            .when_async(MailboxCommand::Add {
                workspace: crate::testing::workspace(),
                tenant: tenant_key(),
                address: "help".into(),
                verification_fingerprint: "f".into(),
                legacy_fingerprint: None,
                delegated: false,
            })
            .await
            .then_expect_error(MailboxError::InvalidAddress("help".into()));
    }

    #[tokio::test]
    async fn a_created_subscription_makes_the_mailbox_active() {
        let events = Given::with(services())
            .given(vec![added()])
            .when_async(MailboxCommand::RecordSubscription {
                subscription_id: "sub-1".into(),
                expires_at: now() + chrono::Duration::days(2),
            })
            .await
            .inspect_result()
            .unwrap();
        assert_eq!(events, vec![created("sub-1")]);
        let mailbox: Mailbox = crate::testing::fold([added(), created("sub-1")]);
        assert_eq!(mailbox.status, MailboxStatus::Active);
        assert_eq!(mailbox.subscription_id.as_deref(), Some("sub-1"));
    }

    #[tokio::test]
    async fn losing_another_subscription_than_the_current_one_changes_nothing() {
        Given::with(services())
            .given(vec![added(), created("sub-2")])
            .when_async(MailboxCommand::RecordLoss {
                subscription_id: "sub-1".into(),
                loss: SubscriptionLoss::Removed,
            })
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn a_lost_subscription_puts_the_mailbox_back_to_connecting() {
        let lost = MailboxEvent::SubscriptionLost {
            subscription_id: "sub-1".into(),
            loss: SubscriptionLoss::NotFound,
            at: now(),
        };
        Given::with(services())
            .given(vec![added(), created("sub-1")])
            .when_async(MailboxCommand::RecordLoss {
                subscription_id: "sub-1".into(),
                loss: SubscriptionLoss::NotFound,
            })
            .await
            .then_expect_events(vec![lost.clone()]);
        let mailbox: Mailbox = crate::testing::fold([added(), created("sub-1"), lost]);
        assert_eq!(mailbox.status, MailboxStatus::Connecting);
        assert_eq!(mailbox.subscription_id, None);
    }

    #[tokio::test]
    async fn degrading_twice_for_the_same_reason_records_it_once() {
        let degraded = MailboxEvent::MailboxDegraded {
            reason: ReasonCode::MailboxRefreshTokenRevoked,
            message: "refresh token revoked".into(),
            at: now(),
        };
        Given::with(services())
            .given(vec![added(), degraded])
            .when_async(MailboxCommand::Degrade {
                reason: ReasonCode::MailboxRefreshTokenRevoked,
                message: "again".into(),
            })
            .await
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn a_disabled_mailbox_takes_no_subscription() {
        Given::with(services())
            .given(vec![added(), MailboxEvent::MailboxDisabled { at: now() }])
            .when_async(MailboxCommand::RecordSubscription {
                subscription_id: "sub-1".into(),
                expires_at: now(),
            })
            .await
            .then_expect_error(MailboxError::Disabled);
    }

    #[tokio::test]
    async fn a_renewal_request_marks_the_mailbox_renewing_once() {
        Given::with(services())
            .given(vec![added(), created("sub-1")])
            .when_async(MailboxCommand::RequestRenewal)
            .await
            .then_expect_events(vec![MailboxEvent::RenewalRequested { at: now() }]);
        Given::with(services())
            .given(vec![
                added(),
                created("sub-1"),
                MailboxEvent::RenewalRequested { at: now() },
            ])
            .when_async(MailboxCommand::RequestRenewal)
            .await
            .then_expect_events(vec![]);
    }

    #[test]
    fn only_the_engine_records_progress_and_readers_change_nothing() {
        assert_eq!(
            MailboxCommand::RequestRenewal.permission(),
            Permission::StartOperations
        );
        assert_eq!(
            MailboxCommand::Disable.permission(),
            Permission::ManageConnections
        );
        assert_eq!(
            MailboxCommand::RecordLifecycle {
                event: LifecycleEvent::Missed
            }
            .permission(),
            Permission::RecordProgress
        );
    }

    #[test]
    fn event_types_match_their_payload_tags() {
        assert_event_types_match_payload_tags(&[
            added(),
            created("s"),
            MailboxEvent::MailboxDisabled { at: now() },
            MailboxEvent::RenewalRequested { at: now() },
        ]);
    }
}
