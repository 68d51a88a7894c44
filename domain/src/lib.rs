//! The tenantflow domain: aggregates, commands, events and value types. Pure: no I/O.
//!
//! Every aggregate implements [`cqrs_es::Aggregate`] with `Services = Services`, and its
//! command type implements [`Authorize`] so the command bus can check the caller's role.
//! Aggregates: [`Tenant`], [`ProviderConnection`], [`OperationRun`], [`ScopeLock`],
//! [`Schedule`] and [`ScheduleTick`].
//! Messages that reach events go through [`sanitize::sanitize_message`]; snapshots are
//! hashed with [`canonical::canonical_json`] and [`canonical::sha256_hex`].

/// `Display` for enums with a stable `as_str` spelling, so the two never disagree.
macro_rules! display_as_str {
    ($($t:ty),+ $(,)?) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

pub mod auth;
pub mod canonical;
pub mod clock;
pub mod connection;
pub mod policy;
pub mod reason;
pub mod run;
pub mod sanitize;
pub mod schedule;
pub mod schedule_tick;
pub mod scope_lock;
pub mod tenant;
#[cfg(test)]
mod testing;
pub mod values;

pub use auth::{Authorize, Permission, Role};
pub use clock::{Clock, FixedClock, Services, SystemClock};
pub use reason::ReasonCode;
pub use values::{
    ConnectionId, EntraTenantId, Provider, RunId, TenantKey, ValueError, WorkspaceId,
};

// The aggregates, one line each: state, command, event, error.
pub use connection::{ConnectionCommand, ConnectionError, ConnectionEvent, ProviderConnection};
pub use run::{OperationRun, RunCommand, RunError, RunEvent, RunTarget};
pub use schedule::{Schedule, ScheduleCommand, ScheduleError, ScheduleEvent};
pub use schedule_tick::{ScheduleTick, TickCommand, TickError, TickEvent};
pub use scope_lock::{ScopeCommand, ScopeError, ScopeEvent, ScopeLock};
pub use tenant::{Tenant, TenantCommand, TenantError, TenantEvent};

/// Implemented by every refusal the domain gives (each aggregate's error and
/// [`ValueError`]): the stable reason code it maps to, for events, GraphQL errors and logs.
/// `Display` is the short message shown to the caller; it never contains a secret.
pub trait DomainError: std::error::Error {
    fn reason_code(&self) -> ReasonCode;
}
