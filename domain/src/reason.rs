//! Stable reason codes: the one vocabulary for why something failed or was refused.
//!
//! Runs, connections, workflows and the API all speak these codes. They are rendered in
//! snake_case (in events, GraphQL `code` extensions and logs) and must never be renamed:
//! add new variants instead.

use serde::{Deserialize, Serialize};

/// Why an operation failed, was blocked or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    // Preconditions of provider-backed work (R2.3).
    ProviderConnectionMissing,
    ProviderCredentialMissing,
    ProviderConsentMissing,
    ProviderConnectionDisabled,
    // Authentication / authorization against Microsoft (R3.7).
    ProviderAuthFailed,
    ProviderPermissionMissing,
    LicensePermissionMissing,
    // Graph transport (R4.2).
    GraphThrottled,
    GraphUnavailable,
    GraphTimeout,
    GraphMalformedResponse,
    GraphNotFound,
    GraphBadRequest,
    GraphEndpointNotAllowed,
    // Storage.
    SnapshotStoreMissing,
    // Domain refusals.
    ValidationFailed,
    NotFound,
    AlreadyExists,
    InvalidTransition,
    ScopeBusy,
    Forbidden,
    Conflict,
    Cancelled,
    /// A surface whose feature flag is off (R5.6): its data is kept, only hidden.
    FeatureDisabled,
    /// A request to the API ran past its deadline and was cancelled.
    RequestTimeout,
    /// A rebuild of read models is already running (one at a time, across instances).
    RebuildRunning,
    // Inbound mail (R6).
    /// `/me` is another mailbox than the one configured (mail and userPrincipalName differ).
    MailboxMismatch,
    /// The mailbox's refresh token was revoked or expired: someone must sign in again.
    MailboxRefreshTokenRevoked,
    /// The mailbox has no delegated tokens or app credentials to call Graph with.
    MailboxCredentialMissing,
    /// The message could not be fetched (the event carries only its ids).
    MailFetchFailed,
    // Anything we could not classify; the message stays opaque.
    InternalError,
}

impl ReasonCode {
    /// The stable snake_case spelling, as stored and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProviderConnectionMissing => "provider_connection_missing",
            Self::ProviderCredentialMissing => "provider_credential_missing",
            Self::ProviderConsentMissing => "provider_consent_missing",
            Self::ProviderConnectionDisabled => "provider_connection_disabled",
            Self::ProviderAuthFailed => "provider_auth_failed",
            Self::ProviderPermissionMissing => "provider_permission_missing",
            Self::LicensePermissionMissing => "license_permission_missing",
            Self::GraphThrottled => "graph_throttled",
            Self::GraphUnavailable => "graph_unavailable",
            Self::GraphTimeout => "graph_timeout",
            Self::GraphMalformedResponse => "graph_malformed_response",
            Self::GraphNotFound => "graph_not_found",
            Self::GraphBadRequest => "graph_bad_request",
            Self::GraphEndpointNotAllowed => "graph_endpoint_not_allowed",
            Self::SnapshotStoreMissing => "snapshot_store_missing",
            Self::ValidationFailed => "validation_failed",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::InvalidTransition => "invalid_transition",
            Self::ScopeBusy => "scope_busy",
            Self::Forbidden => "forbidden",
            Self::Conflict => "conflict",
            Self::Cancelled => "cancelled",
            Self::FeatureDisabled => "feature_disabled",
            Self::RequestTimeout => "request_timeout",
            Self::RebuildRunning => "rebuild_running",
            Self::MailboxMismatch => "mailbox_mismatch",
            Self::MailboxRefreshTokenRevoked => "mailbox_refresh_token_revoked",
            Self::MailboxCredentialMissing => "mailbox_credential_missing",
            Self::MailFetchFailed => "mail_fetch_failed",
            Self::InternalError => "internal_error",
        }
    }

    /// Whether a workflow step that failed with this code may succeed if retried later.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::GraphThrottled | Self::GraphUnavailable | Self::GraphTimeout | Self::Conflict
        )
    }
}

display_as_str!(ReasonCode);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_spelling_matches_as_str() {
        for code in [
            ReasonCode::ProviderConnectionMissing,
            ReasonCode::GraphThrottled,
            ReasonCode::SnapshotStoreMissing,
            ReasonCode::ScopeBusy,
            ReasonCode::FeatureDisabled,
            ReasonCode::RequestTimeout,
            ReasonCode::RebuildRunning,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }
}
