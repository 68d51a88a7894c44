//! Failures of Microsoft calls, mapped to stable reason codes.
//!
//! Messages are written here, never copied from a response body, so they cannot carry a
//! token, a secret or a raw payload.

use std::time::Duration;

use domain::ReasonCode;
use serde::Deserialize;

/// Why a call to Microsoft failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct GraphError {
    /// Stable code for runs, connections and the API.
    pub reason: ReasonCode,
    /// HTTP status of the final answer, if there was one.
    pub status: Option<u16>,
    /// Graph's `error.code` (or the token service's `error`), sanitized.
    pub graph_code: Option<String>,
    /// Short, sanitized description.
    pub message: String,
    /// How long Microsoft asked us to wait before trying again.
    pub retry_after: Option<Duration>,
}

impl GraphError {
    pub(crate) fn new(reason: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            status: None,
            graph_code: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Replaces the reason when it is `from`, e.g. a 403 on subscribed SKUs
    /// (`ProviderPermissionMissing`) becomes `LicensePermissionMissing`.
    pub fn remap(mut self, from: ReasonCode, to: ReasonCode) -> Self {
        if self.reason == from {
            self.reason = to;
        }
        self
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.reason.is_transient()
    }

    pub(crate) fn malformed(what: &str) -> Self {
        Self::new(
            ReasonCode::GraphMalformedResponse,
            format!("malformed response: {what}"),
        )
    }

    /// Maps a Graph (or CIPP) answer that is not a success.
    pub(crate) fn from_graph_status(
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        let code = serde_json::from_slice::<GraphEnvelope>(body)
            .ok()
            .and_then(|e| e.error)
            .and_then(|e| e.code)
            .map(|c| sanitize_code(&c));
        let (reason, what) = match status {
            400 => (ReasonCode::GraphBadRequest, "Graph rejected the request"),
            401 => (
                ReasonCode::ProviderAuthFailed,
                "Graph rejected the access token",
            ),
            403 => (
                ReasonCode::ProviderPermissionMissing,
                "the app lacks a permission for this call",
            ),
            404 | 410 => (ReasonCode::GraphNotFound, "Graph did not find the resource"),
            429 => (ReasonCode::GraphThrottled, "Graph throttled the request"),
            500..=599 => (ReasonCode::GraphUnavailable, "Graph is unavailable"),
            _ => (ReasonCode::GraphBadRequest, "Graph refused the request"),
        };
        Self {
            reason,
            status: Some(status),
            message: describe(what, status, code.as_deref()),
            graph_code: code,
            retry_after,
        }
    }

    /// Maps a refusal of the token service.
    pub(crate) fn from_token_status(
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        if status == 429 || status >= 500 {
            let what = if status == 429 {
                "the token service throttled the request"
            } else {
                "the token service is unavailable"
            };
            let mut error = Self::from_graph_status(status, body, retry_after);
            error.message = describe(what, status, None);
            return error;
        }
        let refusal: TokenRefusal = serde_json::from_slice(body).unwrap_or_default();
        let error = refusal.error.as_deref().map(sanitize_code);
        let consent_required = refusal.error_codes.contains(&65001)
            || refusal.suberror.as_deref() == Some("consent_required");
        let (reason, what) = match error.as_deref() {
            Some("invalid_grant") if consent_required => (
                ReasonCode::ProviderConsentMissing,
                "admin consent for the app is missing in the tenant",
            ),
            Some("invalid_client") => (
                ReasonCode::ProviderAuthFailed,
                "the token service refused the client credentials",
            ),
            Some("unauthorized_client") => (
                ReasonCode::ProviderAuthFailed,
                "the app is not registered in the tenant",
            ),
            Some("invalid_scope") => (
                ReasonCode::ProviderAuthFailed,
                "the requested scope is invalid",
            ),
            _ => (
                ReasonCode::ProviderAuthFailed,
                "the token service refused the request",
            ),
        };
        let aadsts = refusal
            .error_codes
            .first()
            .map(|code| format!("AADSTS{code}"));
        Self {
            reason,
            status: Some(status),
            message: describe(what, status, aadsts.as_deref().or(error.as_deref())),
            graph_code: error,
            retry_after: None,
        }
    }
}

fn describe(what: &str, status: u16, code: Option<&str>) -> String {
    match code {
        Some(code) => format!("{what} (HTTP {status}, {code})"),
        None => format!("{what} (HTTP {status})"),
    }
}

/// Keeps codes short and free of anything that is not part of a code's alphabet.
fn sanitize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect()
}

#[derive(Deserialize)]
struct GraphEnvelope {
    error: Option<GraphErrorBody>,
}

#[derive(Deserialize)]
struct GraphErrorBody {
    code: Option<String>,
}

#[derive(Deserialize, Default)]
struct TokenRefusal {
    error: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
    suberror: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_refusal(status: u16, body: serde_json::Value) -> GraphError {
        GraphError::from_token_status(status, body.to_string().as_bytes(), None)
    }

    #[test]
    fn a_wrong_secret_is_an_auth_failure() {
        let error = token_refusal(
            401,
            serde_json::json!({"error":"invalid_client","error_codes":[7000215]}),
        );
        assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
        assert!(error.message.contains("AADSTS7000215"));
    }

    #[test]
    fn missing_consent_is_reported_as_such() {
        let error = token_refusal(
            400,
            serde_json::json!({"error":"invalid_grant","error_codes":[65001],"suberror":"consent_required"}),
        );
        assert_eq!(error.reason, ReasonCode::ProviderConsentMissing);
    }

    #[test]
    fn an_unknown_app_is_an_auth_failure() {
        let error = token_refusal(
            400,
            serde_json::json!({"error":"unauthorized_client","error_codes":[700016]}),
        );
        assert_eq!(error.reason, ReasonCode::ProviderAuthFailed);
    }

    #[test]
    fn graph_codes_are_sanitized() {
        let body = br#"{"error":{"code":"Access<script>Denied","message":"x"}}"#;
        let error = GraphError::from_graph_status(403, body, None);
        assert_eq!(error.graph_code.as_deref(), Some("AccessscriptDenied"));
        assert_eq!(error.reason, ReasonCode::ProviderPermissionMissing);
    }

    #[test]
    fn remap_only_touches_the_named_reason() {
        let error = GraphError::from_graph_status(403, b"{}", None).remap(
            ReasonCode::ProviderPermissionMissing,
            ReasonCode::LicensePermissionMissing,
        );
        assert_eq!(error.reason, ReasonCode::LicensePermissionMissing);
        let error = GraphError::from_graph_status(404, b"{}", None).remap(
            ReasonCode::ProviderPermissionMissing,
            ReasonCode::LicensePermissionMissing,
        );
        assert_eq!(error.reason, ReasonCode::GraphNotFound);
    }
}
