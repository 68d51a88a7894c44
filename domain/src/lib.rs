//! The tenantflow domain: aggregates, commands, events and value types. Pure: no I/O.
//!
//! Every aggregate implements [`cqrs_es::Aggregate`] with `Services = Services`, and its
//! command type implements [`Authorize`] so the command bus can check the caller's role.

pub mod auth;
pub mod clock;
pub mod reason;

pub use auth::{Authorize, Permission, Role};
pub use clock::{Clock, FixedClock, Services, SystemClock};
pub use reason::ReasonCode;

/// Implemented by every aggregate's error: the stable reason code a refusal maps to.
pub trait DomainError: std::error::Error {
    fn reason_code(&self) -> ReasonCode;
}
