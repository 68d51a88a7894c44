//! Application services: the use cases behind mutations, workflows and the demo, so each
//! rule has one implementation. Each use case proves that the caller's workspace owns the
//! objects it names (`guard`), then appends through the bus, in one transaction when
//! several streams (or the vault) must change together. Lost optimistic races are retried.

mod connections;
pub mod contacts;
mod error;
mod guard;
pub mod mailboxes;
mod retry;
mod runs;
mod schedules;
mod tenants;

pub use connections::{
    change_connection, create_connection, make_default, remove_connection, set_credential,
};
pub use error::AppError;
pub use runs::{
    cancel_run, release_scope, retry_run, start_operation, start_operation_through,
    start_operation_with_id, start_operations, start_workspace_operation,
    start_workspace_operation_on, StartRequest, Started,
};
pub use schedules::{disable_schedule, set_schedule};
pub use tenants::{change_tenant, register_tenant};
