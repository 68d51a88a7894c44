//! Mapping failures to GraphQL errors with a stable `code` extension.

use app::AppError;
use async_graphql::ErrorExtensions;
use domain::contact_settings::FeatureDisabled;
use domain::{DomainError, ReasonCode};

/// A GraphQL error for a use-case failure. Internal failures are logged here, once, and
/// shown as an opaque message.
pub(crate) fn app_error(e: AppError) -> async_graphql::Error {
    let code = e.reason_code();
    // The caller sees only "internal error"; the cause is for the log.
    if let Some(source) =
        std::error::Error::source(&e).filter(|_| code == ReasonCode::InternalError)
    {
        tracing::error!(error = %source, "request failed");
    }
    let active = match &e {
        AppError::ScopeBusy { active_run_id, .. } => Some(active_run_id.to_string()),
        _ => None,
    };
    async_graphql::Error::new(e.to_string()).extend_with(|_, ext| {
        ext.set("code", code.as_str());
        if let Some(run) = &active {
            ext.set("activeRunId", run.as_str());
        }
    })
}

/// A GraphQL error for bad input.
pub(crate) fn invalid(message: impl Into<String>) -> async_graphql::Error {
    app_error(AppError::Invalid(message.into()))
}

/// A database failure while reading.
pub(crate) fn internal(e: sqlx::Error) -> async_graphql::Error {
    app_error(AppError::Database(e))
}

/// The refusal of a surface whose feature flag is off: `feature_disabled`, with the flag's
/// name in `extensions.flag`.
pub(crate) fn feature_disabled(e: FeatureDisabled) -> async_graphql::Error {
    let flag = e.flag.as_str();
    async_graphql::Error::new(e.to_string()).extend_with(|_, ext| {
        ext.set("code", e.reason_code().as_str());
        ext.set("flag", flag);
    })
}
