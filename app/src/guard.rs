//! The workspace guard: a use case that names an existing object reads it through here,
//! which proves the object belongs to the caller's workspace. An object of another
//! workspace is "not found", exactly like one that does not exist, so ids of other
//! workspaces reveal nothing.

use std::future::Future;

use cqrs_es::Aggregate;
use domain::connection::ProviderConnection;
use domain::run::OperationRun;
use domain::schedule::Schedule;
use domain::tenant::Tenant;
use domain::{DomainError, WorkspaceId};
use store::{BusError, CommandBus, Loaded, Metadata, UnitOfWork};

use crate::AppError;

/// An aggregate that belongs to one workspace from its first event on.
pub(crate) trait Owned: Aggregate<Error: DomainError> {
    /// What the caller is told was not found.
    const NOUN: &'static str;
    /// `None` until the aggregate exists.
    fn workspace(&self) -> Option<&WorkspaceId>;
}

impl Owned for Tenant {
    const NOUN: &'static str = "tenant";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

impl Owned for ProviderConnection {
    const NOUN: &'static str = "connection";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

impl Owned for OperationRun {
    const NOUN: &'static str = "run";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

impl Owned for Schedule {
    const NOUN: &'static str = "schedule";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

/// Proves an aggregate already read belongs to the caller's workspace.
pub(crate) fn owned<'a, A: Owned>(meta: &Metadata, aggregate: &'a A) -> Result<&'a A, AppError> {
    match aggregate.workspace() {
        Some(w) if w.as_str() == meta.workspace => Ok(aggregate),
        _ => Err(AppError::NotFound(A::NOUN)),
    }
}

/// Loads an aggregate and proves it belongs to the caller's workspace.
pub(crate) async fn load<A: Owned>(
    from: impl Source,
    meta: &Metadata,
    id: &str,
) -> Result<Loaded<A>, AppError> {
    let loaded = from.load::<A>(id).await?;
    owned(meta, &loaded.aggregate)?;
    Ok(loaded)
}

/// Where the guard reads: the bus (on a connection of its own) or a unit of work (inside
/// its transaction).
pub(crate) trait Source {
    fn load<A: Aggregate>(
        self,
        id: &str,
    ) -> impl Future<Output = Result<Loaded<A>, BusError<A::Error>>> + Send;
}

impl Source for &CommandBus {
    fn load<A: Aggregate>(
        self,
        id: &str,
    ) -> impl Future<Output = Result<Loaded<A>, BusError<A::Error>>> + Send {
        CommandBus::load::<A>(self, id)
    }
}

impl Source for &mut UnitOfWork {
    fn load<A: Aggregate>(
        self,
        id: &str,
    ) -> impl Future<Output = Result<Loaded<A>, BusError<A::Error>>> + Send {
        UnitOfWork::load::<A>(self, id)
    }
}

/// The caller's workspace, for use cases that create objects in it.
pub(crate) fn caller_workspace(meta: &Metadata) -> Result<WorkspaceId, AppError> {
    Ok(meta.workspace.parse()?)
}
