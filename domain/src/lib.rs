//! The tenantflow domain: aggregates, commands, events and value types. Pure: no I/O.
//!
//! Every aggregate implements [`cqrs_es::Aggregate`] with `Services = Services`, and its
//! command type implements [`Authorize`] so the command bus can check the caller's role.
//! Aggregates: [`Tenant`], [`ProviderConnection`], [`OperationRun`], [`ScopeLock`],
//! [`Schedule`] and [`ScheduleTick`].
//! Messages that reach events go through [`sanitize::sanitize_message`]; snapshots are
//! hashed with [`canonical::canonical_json`] and [`canonical::sha256_hex`].
//!
//! Contact sync (R5), the model and rules a workflow builds on:
//! - [`PartnerConnection`] (id: workspace): `direct` or `cipp`, secrets as [`SecretRef`];
//!   a kind switch lists the stale vault rows in `cleared_credential_refs`.
//! - [`Client`] (id: [`ClientId`]) with normalized domains.
//! - [`TenantMapping`] (id: [`TenantMapping::key`]): a discovered tenant, its proposal,
//!   confirmed client, delta link and per-run sync results. [`tenant_mapping::propose`] is
//!   the preview (pure, writes nothing).
//! - [`Contact`] (id: [`ContactId`]; created by the sync with
//!   [`ContactId::for_entra_user`]).
//! - [`ReconciliationItem`] (id: [`ReconciliationItemId::for_entra_user`]).
//! - [`ContactSyncSettings`] (id: workspace): field sync config and [`FeatureFlag`]s;
//!   `require(flag)` gives the typed [`FeatureDisabled`] refusal.
//! - [`contact_sync::decide`]: one upstream user against a client's contact book ->
//!   [`SyncAction`]s; [`SyncAction::into_command`] and [`contact_sync::tally`].

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

/// `ALL` (declaration order) and `parse` (the inverse of `as_str`) for enums with a stable
/// spelling, so read-model filters and API inputs accept exactly the domain's values.
macro_rules! spelled_values {
    ($t:ident { $($v:ident),+ $(,)? }) => {
        impl $t {
            /// Every value, in declaration order.
            pub const ALL: [$t; [$(stringify!($v)),+].len()] = [$($t::$v),+];

            /// The value spelled `s` (its `as_str`).
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.as_str() == s)
            }
        }
    };
}

pub mod auth;
pub mod canonical;
pub mod client;
pub mod clock;
pub mod connection;
pub mod contact;
pub mod contact_settings;
pub mod contact_sync;
pub mod inbound_email;
pub mod mailbox;
pub mod partner_connection;
pub mod policy;
pub mod reason;
pub mod reconciliation;
pub mod run;
pub mod sanitize;
pub mod schedule;
pub mod schedule_tick;
pub mod scope_lock;
pub mod tenant;
pub mod tenant_mapping;
#[cfg(test)]
mod testing;
pub mod values;

pub use auth::{Authorize, Permission, Role};
pub use clock::{Clock, FixedClock, Services, SystemClock};
pub use reason::ReasonCode;
pub use values::{
    normalize_email, ClientId, ConnectionId, ContactId, EntraTenantId, EntraUserRef, Provider,
    ReconciliationItemId, RunId, TenantKey, ValueError, WorkspaceId,
};

// The aggregates, one line each: state, command, event, error.
pub use connection::{ConnectionCommand, ConnectionError, ConnectionEvent, ProviderConnection};
pub use run::{OperationRun, RunCommand, RunError, RunEvent, RunTarget};
pub use schedule::{Schedule, ScheduleCommand, ScheduleError, ScheduleEvent};
pub use schedule_tick::{ScheduleTick, TickCommand, TickError, TickEvent};
pub use scope_lock::{ScopeCommand, ScopeError, ScopeEvent, ScopeLock};
pub use tenant::{Tenant, TenantCommand, TenantError, TenantEvent};

// Contact sync (R5).
pub use client::{Client, ClientCommand, ClientError, ClientEvent, ClientStatus};
pub use contact::{
    Contact, ContactCommand, ContactDetails, ContactError, ContactEvent, ContactField,
    ContactStatus, FieldChange, InactiveReason,
};
pub use contact_settings::{
    ContactSyncSettings, FeatureDisabled, FeatureFlag, FieldSyncConfig, SettingsCommand,
    SettingsError, SettingsEvent,
};
pub use contact_sync::{
    BookContact, SyncAction, SyncCommand, SyncScope, UpstreamChange, UpstreamUser,
};
pub use partner_connection::{
    PartnerConnection, PartnerConnectionCommand, PartnerConnectionError, PartnerConnectionEvent,
    PartnerConnectionStatus, PartnerTarget, SecretRef,
};
pub use reconciliation::{
    ReconciliationCommand, ReconciliationError, ReconciliationEvent, ReconciliationItem,
    Resolution, UpstreamSummary,
};
pub use tenant_mapping::{
    ClientSummary, DiscoveredTenant, DiscoverySource, MappingCommand, MappingError, MappingEvent,
    MappingState, MatchReason, Proposal, SyncRecord, TenantMapping, TenantSyncResult,
};

/// Implemented by every refusal the domain gives (each aggregate's error and
/// [`ValueError`]): the stable reason code it maps to, for events, GraphQL errors and logs.
/// `Display` is the short message shown to the caller; it never contains a secret.
pub trait DomainError: std::error::Error {
    fn reason_code(&self) -> ReasonCode;
}
