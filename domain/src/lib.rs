//! The tenantflow domain: aggregates, commands, events and value types. Pure: no I/O.
//!
//! Every aggregate implements [`cqrs_es::Aggregate`] with `Services = Services`, and its
//! command type implements [`Authorize`] so the command bus can check the caller's role.
//! Aggregates: [`tenant::Tenant`], [`connection::ProviderConnection`],
//! [`run::OperationRun`] and [`scope_lock::ScopeLock`].

pub mod auth;
pub mod canonical;
pub mod clock;
pub mod connection;
pub mod reason;
pub mod run;
pub mod sanitize;
pub mod scope_lock;
pub mod tenant;
pub mod values;

pub use auth::{Authorize, Permission, Role};
pub use clock::{Clock, FixedClock, Services, SystemClock};
pub use reason::ReasonCode;
pub use values::{
    ConnectionId, EntraTenantId, Provider, RunId, TenantKey, ValueError, WorkspaceId,
};

/// Implemented by every aggregate's error: the stable reason code a refusal maps to.
pub trait DomainError: std::error::Error {
    fn reason_code(&self) -> ReasonCode;
}
