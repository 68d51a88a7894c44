//! Read models: named catch-up consumers of the global log that write plain tables
//! (defined in `migrations/`), and their rebuild from history (R8.1, R9.2).
//!
//! | projection    | tables                       | from                        |
//! |---------------|------------------------------|-----------------------------|
//! | `tenants`     | `rm_tenants`                 | tenant events               |
//! | `connections` | `rm_connections`             | provider connection events  |
//! | `runs`        | `rm_runs`, `rm_run_steps`    | operation run events        |
//! | `audit_log`   | `rm_audit_log`               | every event                 |
//! | `policies`    | `rm_policy_snapshots`, `rm_alerts`, `rm_licenses` | tenant events (resync) |
//! | `schedules`   | `rm_schedules`               | schedule and schedule tick events |
//! | `contacts`    | `rm_partner_connections`, `rm_clients`, `rm_tenant_mappings`, `rm_contact_sync_results`, `rm_contacts`, `rm_reconciliation_items`, `rm_contact_settings` | contact sync events (R5) |
//! | `mailboxes`   | `rm_mailboxes`, `rm_inbound_emails` | mailbox and inbound email events |
//!
//! Every row carries its `workspace_id` (row-level security keys on it) and, except audit
//! and step rows, the `version` (aggregate sequence) last applied, so replaying an event
//! changes nothing. The runs projection notifies [`RUNS_CHANNEL`] for live run progress.

mod audit_log;
mod connections;
mod contacts;
mod event;
mod mailboxes;
mod policies;
mod rebuild;
mod runner;
mod runs;
mod schedules;
mod tenants;

use std::sync::Arc;

pub use audit_log::AuditLog;
pub use connections::Connections;
pub use contacts::Contacts;
pub use mailboxes::Mailboxes;
pub use policies::Policies;
pub use rebuild::{
    choose, eta, rebuild, rebuild_recorded, rebuild_status, start_rebuild, Deferred, RebuildError,
    RebuildProgress, RebuildState, RebuildStatus, ShadowFiller,
};
pub use runner::{spawn_all, Projection};
pub use runs::{Runs, RUNS_CHANNEL};
pub use schedules::Schedules;
pub use tenants::Tenants;

/// Every read model, for the service (live) and `tenantflow rebuild NAME|--all` (rebuilt in
/// one pass over the log).
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(Tenants),
        Arc::new(Connections),
        Arc::new(Runs),
        Arc::new(AuditLog),
        Arc::new(Policies),
        Arc::new(Schedules),
        Arc::new(Contacts),
        Arc::new(Mailboxes),
    ]
}
