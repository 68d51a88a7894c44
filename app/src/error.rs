//! Why a use case did not go through, and how lower layers' failures become that.

use std::convert::Infallible;

use domain::scope_lock::ScopeError;
use domain::{DomainError, ReasonCode, Role, RunId, ValueError};
use store::vault::VaultError;
use store::{AppendError, BusError};

/// Why a use case did not go through. `Display` is safe to show to the caller: internal
/// failures say only "internal error" (their cause is the `source`, for the log).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the role `{0}` may not do this")]
    Forbidden(Role),
    #[error("{message}")]
    Refused { code: ReasonCode, message: String },
    #[error("scope busy: run {active_run_id} ({active_run_type}) is active for this tenant")]
    ScopeBusy {
        active_run_id: RunId,
        active_run_type: String,
    },
    #[error("the change conflicted with concurrent changes; retry")]
    Conflict,
    #[error("internal error")]
    Database(#[source] sqlx::Error),
    #[error("internal error")]
    Append(#[source] AppendError),
    #[error("internal error")]
    Vault(#[source] VaultError),
    /// A stream could not be read (a stored event this binary cannot decode). No domain
    /// error is possible here, hence `Infallible`.
    #[error("internal error")]
    Store(#[source] BusError<Infallible>),
}

impl AppError {
    /// The stable reason code of this failure.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            AppError::Invalid(_) => ReasonCode::ValidationFailed,
            AppError::NotFound(_) => ReasonCode::NotFound,
            AppError::Forbidden(_) => ReasonCode::Forbidden,
            AppError::Refused { code, .. } => *code,
            AppError::ScopeBusy { .. } => ReasonCode::ScopeBusy,
            AppError::Conflict => ReasonCode::Conflict,
            AppError::Database(_)
            | AppError::Append(_)
            | AppError::Vault(_)
            | AppError::Store(_) => ReasonCode::InternalError,
        }
    }
}

/// A domain refusal as the use case's failure.
pub(crate) trait IntoRefusal {
    fn into_refusal(self) -> AppError;
}

impl<E: DomainError> IntoRefusal for E {
    fn into_refusal(self) -> AppError {
        AppError::Refused {
            code: self.reason_code(),
            message: self.to_string(),
        }
    }
}

impl From<ValueError> for AppError {
    fn from(e: ValueError) -> Self {
        AppError::Invalid(e.to_string())
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Database(e)
    }
}

impl From<VaultError> for AppError {
    fn from(e: VaultError) -> Self {
        AppError::Vault(e)
    }
}

impl From<AppendError> for AppError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => AppError::Conflict,
            other => AppError::Append(other),
        }
    }
}

impl<E: DomainError> From<BusError<E>> for AppError {
    fn from(e: BusError<E>) -> Self {
        match e {
            BusError::Forbidden { role, .. } => AppError::Forbidden(role),
            BusError::Domain(d) => d.into_refusal(),
            BusError::Conflict { .. } => AppError::Conflict,
            BusError::Database(e) => AppError::Database(e),
            BusError::Corrupt {
                aggregate_type,
                aggregate_id,
                sequence,
                source,
            } => AppError::Store(BusError::Corrupt {
                aggregate_type,
                aggregate_id,
                sequence,
                source,
            }),
        }
    }
}

/// A scope lock's refusal: "busy" is an answer of its own, not a generic refusal.
pub(crate) fn scope_error(e: BusError<ScopeError>) -> AppError {
    match e {
        BusError::Domain(ScopeError::Busy {
            active_run_id,
            active_run_type,
        }) => AppError::ScopeBusy {
            active_run_id,
            active_run_type,
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_failures_are_opaque_to_the_caller_but_keep_their_cause() {
        let failures = [
            AppError::from(sqlx::Error::PoolTimedOut),
            AppError::from(AppendError::Database(sqlx::Error::PoolClosed)),
            AppError::from(VaultError::BadKey),
            AppError::from(BusError::<ScopeError>::Database(sqlx::Error::PoolClosed)),
        ];
        for e in failures {
            assert_eq!(e.reason_code(), ReasonCode::InternalError, "{e:?}");
            assert_eq!(e.to_string(), "internal error");
            assert!(std::error::Error::source(&e).is_some(), "{e:?}");
        }
    }

    #[test]
    fn a_lost_race_while_appending_is_a_conflict() {
        assert!(matches!(
            AppError::from(AppendError::Conflict),
            AppError::Conflict
        ));
    }
}
