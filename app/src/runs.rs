//! Operation runs: starting one (dedupe, scope busy, blocked runs; R2.2, R2.3), starting
//! many at once, starting one again (a retry), cancelling one, and releasing the scope a
//! run held.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use cqrs_es::Aggregate;
use domain::connection::{ConnectionStatus, ProviderConnection};
use domain::run::{NextStep, OperationRun, RunCommand, RunContext, RunOutcome, RunTarget};
use domain::scope_lock::{scope_key, workspace_scope_key, ScopeCommand, ScopeLock};
use domain::tenant::{Tenant, TenantError, TenantStatus};
use domain::{
    ConnectionId, EntraTenantId, Provider, ReasonCode, Role, RunId, TenantKey, WorkspaceId,
};
use store::{CommandBus, Metadata, Staged, StagedStream, UnitOfWork};

use crate::error::{scope_error, IntoRefusal};
use crate::guard::{self, caller_workspace, owned};
use crate::retry::retrying;
use crate::AppError;

/// What starting an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new run was queued.
    Queued(RunId),
    /// A run of the same type was already active for the scope: that run (R2.2).
    Deduplicated(RunId),
    /// The run could not start; it is recorded and finalized as blocked (R2.3).
    Blocked(RunId, ReasonCode),
}

impl Started {
    /// The run started, found or blocked.
    pub fn run_id(&self) -> RunId {
        match self {
            Started::Queued(r) | Started::Deduplicated(r) | Started::Blocked(r, _) => *r,
        }
    }
}

/// One tenant of a fleet start, optionally with the id its run gets (see
/// [`start_operation_with_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub tenant: TenantKey,
    pub run_id: Option<RunId>,
}

/// Tenants per transaction of a fleet start.
const START_CHUNK: usize = 64;

/// What every run of one start call is: its type and module, the run it retries, and the
/// connection it goes through (`None`: each tenant's default Microsoft connection).
#[derive(Debug, Clone, Copy)]
struct Operation<'a> {
    run_type: &'a str,
    module: &'a str,
    retry_of: Option<RunId>,
    connection: Option<ConnectionId>,
}

impl Operation<'_> {
    /// The connection of `tenant` a run goes through: the one asked for, if it is one of
    /// the tenant's Microsoft connections, else none; without one asked for, the default.
    fn connection_of(&self, tenant: &Tenant) -> Option<ConnectionId> {
        match self.connection {
            Some(id) => tenant
                .connection(id)
                .filter(|c| c.provider == Provider::Microsoft)
                .map(|c| c.connection_id),
            None => tenant.default_connection(Provider::Microsoft),
        }
    }
}

/// Engine-side metadata for effects a person's command causes (e.g. releasing a scope).
fn as_system(meta: &Metadata) -> Metadata {
    Metadata {
        role: Role::System,
        causation_id: Some(meta.request_id.clone()),
        idempotency_key: None,
        ..meta.clone()
    }
}

/// Why a provider-backed run cannot start, and what a person can do about it. Only the
/// kind of step: the API renders it as a link.
fn precondition(connection: Option<&ProviderConnection>) -> Option<(ReasonCode, Vec<NextStep>)> {
    let Some(c) = connection else {
        return Some((
            ReasonCode::ProviderConnectionMissing,
            vec![NextStep::AddConnection],
        ));
    };
    if c.status == ConnectionStatus::Disabled {
        return Some((
            ReasonCode::ProviderConnectionDisabled,
            vec![NextStep::EnableConnection],
        ));
    }
    if c.credential.is_none() {
        return Some((
            ReasonCode::ProviderCredentialMissing,
            vec![NextStep::SetCredential],
        ));
    }
    if !c.consent_granted {
        return Some((
            ReasonCode::ProviderConsentMissing,
            vec![NextStep::GrantConsent],
        ));
    }
    None
}

/// Starts (or dedupes to) a provider-backed operation on a tenant through its default
/// Microsoft connection. The scope lock's row and the run are written in one transaction. An
/// archived tenant is refused.
pub async fn start_operation(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    run_type: &str,
    module: &str,
) -> Result<Started, AppError> {
    start(bus, meta, tenant, run_type, module, None, None).await
}

/// Like [`start_operation`], through one of the tenant's connections that the caller names
/// rather than its default. A connection that is not the tenant's is refused as not
/// found; a disabled one, or one without credential or consent, blocks the run as the
/// default would.
pub async fn start_operation_through(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    connection: ConnectionId,
    run_type: &str,
    module: &str,
) -> Result<Started, AppError> {
    start(bus, meta, tenant, run_type, module, None, Some(connection)).await
}

/// Like [`start_operation`], with the id the new run gets. When `run_id` already names a
/// run of the caller's workspace, nothing is started and that run is returned as it was
/// first started (`Queued` or `Blocked`): a repeated start, such as a schedule's fan-out
/// after a crash, starts each run once.
pub async fn start_operation_with_id(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    run_type: &str,
    module: &str,
    run_id: RunId,
) -> Result<Started, AppError> {
    start(bus, meta, tenant, run_type, module, Some(run_id), None).await
}

async fn start(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    run_type: &str,
    module: &str,
    requested: Option<RunId>,
    connection: Option<ConnectionId>,
) -> Result<Started, AppError> {
    let operation = Operation {
        run_type,
        module,
        retry_of: None,
        connection,
    };
    start_one(bus, meta, tenant, operation, requested).await
}

async fn start_one(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    operation: Operation<'_>,
    requested: Option<RunId>,
) -> Result<Started, AppError> {
    let request = StartRequest {
        tenant: tenant.clone(),
        run_id: requested,
    };
    let mut outcomes = start_requests(bus, meta, &[request], operation).await?;
    outcomes.pop().unwrap_or(Err(AppError::NotFound("tenant")))
}

/// Starts a failed, blocked or cancelled run again: a new run of the same type, tenant
/// and module, linked to it (the new run's `retry_of`, and the old run's id as the
/// causation of everything the start writes). It is a start like any other, so an active
/// run of the same type is returned instead (R2.2), another type's active run makes the
/// scope busy, and a missing precondition blocks the new run (R2.3). `known_run_types` are
/// the types a workflow runs today: a run of another type is refused, as a start would be.
pub async fn retry_run(
    bus: &CommandBus,
    meta: &Metadata,
    run_id: RunId,
    known_run_types: &[&str],
) -> Result<Started, AppError> {
    // Checked first: whether a run exists or can be retried is no answer for a role that
    // may not start anything.
    if !meta.role.allows(domain::Permission::StartOperations) {
        return Err(AppError::Forbidden(meta.role));
    }
    let earlier = guard::load::<OperationRun>(bus, meta, &run_id.to_string())
        .await?
        .aggregate;
    earlier
        .check_retryable()
        .map_err(IntoRefusal::into_refusal)?;
    if !known_run_types.contains(&earlier.run_type.as_str()) {
        return Err(AppError::Invalid(format!(
            "no workflow runs operations of type `{}` any more; known types: {}",
            earlier.run_type,
            known_run_types.join(", ")
        )));
    }
    let meta = meta.clone().caused_by(run_id.to_string());
    match earlier.target().ok_or(AppError::NotFound("run"))? {
        RunTarget::Tenant(context) => {
            // Through the tenant's default connection as it is now: the run may have
            // failed for want of a usable connection, which the default may since have
            // become.
            let operation = Operation {
                run_type: &earlier.run_type,
                module: &context.module,
                retry_of: Some(run_id),
                connection: None,
            };
            start_one(bus, &meta, &context.tenant_key, operation, None).await
        }
        RunTarget::Workspace { module, subject } => {
            let operation = Operation {
                run_type: &earlier.run_type,
                module: &module,
                retry_of: Some(run_id),
                connection: None,
            };
            start_over_workspace(bus, &meta, operation, subject.as_deref()).await
        }
    }
}

/// Starts (or dedupes to) an operation over the caller's whole workspace, such as a
/// contact sync over every mapped tenant. The module's scope in the workspace is locked
/// as a tenant's scope is for a tenant's operations: a run of the same type already active
/// is returned instead (R2.2), another type's active run makes the scope busy. The lock
/// and the run are written in one transaction.
pub async fn start_workspace_operation(
    bus: &CommandBus,
    meta: &Metadata,
    run_type: &str,
    module: &str,
) -> Result<Started, AppError> {
    start_workspace_operation_on(bus, meta, run_type, module, None).await
}

/// Like [`start_workspace_operation`], limited to `subject` of the workspace (a contact
/// sync of one client: `client:<id>`). The module's scope is the same: while a run of the
/// same type is active, whatever its subject, that run is returned.
pub async fn start_workspace_operation_on(
    bus: &CommandBus,
    meta: &Metadata,
    run_type: &str,
    module: &str,
    subject: Option<&str>,
) -> Result<Started, AppError> {
    let operation = Operation {
        run_type,
        module,
        retry_of: None,
        connection: None,
    };
    start_over_workspace(bus, meta, operation, subject).await
}

async fn start_over_workspace(
    bus: &CommandBus,
    meta: &Metadata,
    operation: Operation<'_>,
    subject: Option<&str>,
) -> Result<Started, AppError> {
    let workspace = caller_workspace(meta)?;
    if !meta.role.allows(domain::Permission::StartOperations) {
        return Err(AppError::Forbidden(meta.role));
    }
    let services = bus.services();
    let lock_id = workspace_scope_key(&workspace, operation.module);
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let mut locks =
            store::scope_locks::fetch(uow.connection(), std::slice::from_ref(&lock_id)).await?;
        let Some(mut lock) = locks.remove(&lock_id) else {
            return Err(AppError::NotFound("scope"));
        };
        if let Some(active) = lock.state().active() {
            if active.run_type == operation.run_type {
                return Ok(Started::Deduplicated(active.run_id));
            }
            return Err(AppError::ScopeBusy {
                active_run_id: active.run_id,
                active_run_type: active.run_type.clone(),
            });
        }
        let run_id = RunId::default();
        let acquire = ScopeCommand::Acquire {
            run_id,
            run_type: operation.run_type.to_owned(),
        };
        lock.decide(services, acquire, meta)
            .await
            .map_err(scope_error)?;
        let mut run = Staged::<OperationRun>::new(run_id.to_string(), OperationRun::default(), 0);
        let queue = RunCommand::Queue {
            workspace: workspace.clone(),
            run_type: operation.run_type.to_owned(),
            target: RunTarget::Workspace {
                module: operation.module.to_owned(),
                subject: subject.map(str::to_owned),
            },
            initiator: meta.actor.clone(),
            retry_of: operation.retry_of,
        };
        run.decide(services, queue, meta).await?;
        store::scope_locks::write(uow.connection(), &mut [&mut lock]).await?;
        uow.append_all(&mut [&mut run]).await?;
        uow.commit().await?;
        Ok(Started::Queued(run_id))
    })
    .await
}

/// Starts an operation on many tenants at once (a fleet resync), with the same rules and
/// answers as [`start_operation`] for each, in the same order. Tenants are taken
/// [`START_CHUNK`] per transaction: three reads and one append each, instead of several
/// round trips per tenant. One tenant's refusal does not stop the others; the outer error
/// is for the whole call (forbidden role, bad workspace, database).
pub async fn start_operations(
    bus: &CommandBus,
    meta: &Metadata,
    requests: &[StartRequest],
    run_type: &str,
    module: &str,
) -> Result<Vec<Result<Started, AppError>>, AppError> {
    let operation = Operation {
        run_type,
        module,
        retry_of: None,
        connection: None,
    };
    start_requests(bus, meta, requests, operation).await
}

async fn start_requests(
    bus: &CommandBus,
    meta: &Metadata,
    requests: &[StartRequest],
    operation: Operation<'_>,
) -> Result<Vec<Result<Started, AppError>>, AppError> {
    let workspace = caller_workspace(meta)?;
    // Checked first: a dedupe answer must not reach a role that may not start anything.
    if !meta.role.allows(domain::Permission::StartOperations) {
        return Err(AppError::Forbidden(meta.role));
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(START_CHUNK) {
        let chunk_outcomes = retrying(|| async {
            let mut uow = bus.begin().await?;
            let outcomes = start_chunk(bus, &mut uow, meta, &workspace, chunk, operation).await?;
            uow.commit().await?;
            Ok(outcomes)
        })
        .await?;
        outcomes.extend(chunk_outcomes);
    }
    Ok(outcomes)
}

/// Decides the starts of one chunk inside `uow` and appends them; a conflict voids the
/// chunk (the caller starts it over).
async fn start_chunk(
    bus: &CommandBus,
    uow: &mut UnitOfWork,
    meta: &Metadata,
    workspace: &WorkspaceId,
    chunk: &[StartRequest],
    operation: Operation<'_>,
) -> Result<Vec<Result<Started, AppError>>, AppError> {
    let services = bus.services();
    // Read 1: the tenants, and the runs asked for by id.
    let mut wanted: Vec<(&'static str, String)> = Vec::new();
    for r in chunk {
        wanted.push((Tenant::TYPE, r.tenant.to_string()));
        if let Some(id) = r.run_id {
            wanted.push((OperationRun::TYPE, id.to_string()));
        }
    }
    let mut streams = uow.fetch_streams(&wanted).await?;
    let mut tenants = HashMap::new();
    let mut existing = HashMap::new();
    for r in chunk {
        let key = r.tenant.to_string();
        if let Entry::Vacant(slot) = tenants.entry(key) {
            let t = streams.stage::<Tenant>(slot.key())?.into_state();
            slot.insert(t);
        }
        if let Some(id) = r.run_id.filter(|id| !existing.contains_key(id)) {
            let run = streams.stage::<OperationRun>(&id.to_string())?.into_state();
            existing.insert(id, run);
        }
    }
    // Read 2: the default connections of the caller's own tenants.
    let connection_ids: Vec<(&'static str, String)> = chunk
        .iter()
        .filter_map(|r| tenants.get(&r.tenant.to_string()))
        .filter(|t| owned(meta, *t).is_ok())
        .filter_map(|t| operation.connection_of(t))
        .map(|c| (ProviderConnection::TYPE, c.to_string()))
        .collect();
    let mut streams = uow.fetch_streams(&connection_ids).await?;
    let mut connections = HashMap::new();
    for (_, id) in &connection_ids {
        if let Entry::Vacant(slot) = connections.entry(id.clone()) {
            slot.insert(streams.stage::<ProviderConnection>(id)?.into_state());
        }
    }
    // Read 3: the scope locks.
    let scope_of = |r: &StartRequest| -> EntraTenantId {
        tenants
            .get(&r.tenant.to_string())
            .and_then(|t| operation.connection_of(t))
            .and_then(|c| connections.get(&c.to_string()))
            .and_then(|c: &ProviderConnection| c.entra_tenant_id)
            .unwrap_or(r.tenant.entra_tenant_id)
    };
    let mut lock_ids: Vec<String> = chunk
        .iter()
        .map(|r| scope_key(workspace, scope_of(r)))
        .collect();
    lock_ids.sort();
    lock_ids.dedup();
    let mut locks = store::scope_locks::fetch(uow.connection(), &lock_ids).await?;
    // Decide each start against the staged state (a later tenant of the chunk sees an
    // earlier one's lock), then append everything in one statement.
    let mut runs: Vec<Staged<OperationRun>> = Vec::new();
    let mut outcomes = Vec::with_capacity(chunk.len());
    for r in chunk {
        let tenant = tenants.get(&r.tenant.to_string());
        // A connection asked for must be the tenant's own: anything else is not found
        // (whether it exists elsewhere is no answer to give).
        if let (Some(t), Some(_)) = (tenant, operation.connection) {
            if owned(meta, t).is_ok() && operation.connection_of(t).is_none() {
                outcomes.push(Err(AppError::NotFound("connection")));
                continue;
            }
        }
        let connection = tenant
            .and_then(|t| operation.connection_of(t))
            .and_then(|c| connections.get(&c.to_string()));
        let lock_id = scope_key(workspace, scope_of(r));
        let Some(lock) = locks.get_mut(&lock_id) else {
            outcomes.push(Err(AppError::NotFound("tenant")));
            continue;
        };
        let input = StartInput {
            meta,
            workspace,
            tenant_key: &r.tenant,
            tenant,
            existing: r
                .run_id
                .and_then(|id| existing.get(&id).map(|run| (id, run))),
            connection,
            scope: scope_of(r),
            operation,
        };
        outcomes.push(decide_start(services, input, r.run_id, lock, &mut runs).await?);
    }
    let mut held: Vec<&mut Staged<ScopeLock>> = locks.values_mut().collect();
    store::scope_locks::write(uow.connection(), &mut held).await?;
    let mut staged: Vec<&mut dyn StagedStream> = Vec::new();
    staged.extend(runs.iter_mut().map(|r| r as &mut dyn StagedStream));
    uow.append_all(&mut staged).await?;
    Ok(outcomes)
}

/// What deciding one start needs, as read in its transaction.
struct StartInput<'a> {
    meta: &'a Metadata,
    workspace: &'a WorkspaceId,
    tenant_key: &'a TenantKey,
    tenant: Option<&'a Tenant>,
    /// The run asked for by id, as stored (it may not exist yet).
    existing: Option<(RunId, &'a OperationRun)>,
    connection: Option<&'a ProviderConnection>,
    scope: EntraTenantId,
    operation: Operation<'a>,
}

/// Decides one start (R2.2 dedupe and scope busy, R2.3 blocked) on the staged scope lock;
/// a new run's events are staged into `runs`. The inner result is this tenant's answer;
/// the outer error voids the whole transaction.
async fn decide_start(
    services: &domain::Services,
    input: StartInput<'_>,
    requested: Option<RunId>,
    lock: &mut Staged<ScopeLock>,
    runs: &mut Vec<Staged<OperationRun>>,
) -> Result<Result<Started, AppError>, AppError> {
    let StartInput {
        meta,
        workspace,
        tenant_key,
        tenant,
        existing,
        connection,
        scope,
        operation:
            operation @ Operation {
                run_type,
                module,
                retry_of,
                ..
            },
    } = input;
    let tenant = match tenant.map(|t| owned(meta, t)) {
        Some(Ok(t)) => t,
        Some(Err(e)) => return Ok(Err(e)),
        None => return Ok(Err(AppError::NotFound("tenant"))),
    };
    if let Some((id, run)) = existing.filter(|(_, run)| run.exists()) {
        return Ok(owned(meta, run).map(|run| match run.blocked_reason {
            Some(reason) => Started::Blocked(id, reason),
            None => Started::Queued(id),
        }));
    }
    if tenant.status == TenantStatus::Archived {
        return Ok(Err(TenantError::Archived.into_refusal()));
    }
    if let Some(Err(e)) = connection.map(|c| owned(meta, c)) {
        return Ok(Err(e));
    }
    if let Some(active) = lock.state().active() {
        if active.run_type == run_type {
            return Ok(Ok(Started::Deduplicated(active.run_id)));
        }
        return Ok(Err(AppError::ScopeBusy {
            active_run_id: active.run_id,
            active_run_type: active.run_type.clone(),
        }));
    }
    let run_id = requested.unwrap_or_default();
    let blocked = precondition(connection);
    if blocked.is_none() {
        let acquire = ScopeCommand::Acquire {
            run_id,
            run_type: run_type.to_owned(),
        };
        if let Err(e) = lock.decide(services, acquire, meta).await {
            return match scope_error(e) {
                e @ AppError::ScopeBusy { .. } => Ok(Err(e)),
                other => Err(other),
            };
        }
    }
    let context = RunContext {
        provider: Provider::Microsoft,
        connection_id: operation.connection_of(tenant),
        target_scope: scope,
        tenant_key: tenant_key.clone(),
        module: module.to_owned(),
    };
    let mut run = Staged::<OperationRun>::new(run_id.to_string(), OperationRun::default(), 0);
    let queue = RunCommand::Queue {
        workspace: workspace.clone(),
        run_type: run_type.to_owned(),
        target: RunTarget::Tenant(context),
        initiator: meta.actor.clone(),
        retry_of,
    };
    run.decide(services, queue, meta).await?;
    let started = match blocked {
        Some((reason, next_steps)) => {
            run.decide(
                services,
                RunCommand::Block { reason, next_steps },
                &as_system(meta),
            )
            .await?;
            Started::Blocked(run_id, reason)
        }
        None => Started::Queued(run_id),
    };
    runs.push(run);
    Ok(Ok(started))
}

/// Asks a run to stop. A queued run is cancelled at once and its scope released in the
/// same transaction; a running one stops at its next step. Whether it is running is in its
/// checkpoint (the engine keeps a run's progress off the log until its end), read and held
/// in the same transaction, so the engine's next write sees the request.
pub async fn cancel_run(
    bus: &CommandBus,
    meta: &Metadata,
    run_id: RunId,
) -> Result<OperationRun, AppError> {
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let id = run_id.to_string();
        let loaded = guard::load::<OperationRun>(&mut uow, meta, &id).await?;
        let mut run = Staged::loaded(id, loaded);
        if run.state().is_active() {
            let checkpoint = store::checkpoints::claim(uow.connection(), run_id).await?;
            let state = run.state_mut();
            for event in checkpoint.progress {
                state.apply(event);
            }
        }
        run.decide(bus.services(), RunCommand::RequestCancel, meta)
            .await?;
        uow.append_all(&mut [&mut run]).await?;
        if run.state().outcome == RunOutcome::Cancelled {
            release_scope(&mut uow, run.state(), run_id).await?;
        }
        uow.commit().await?;
        Ok(run.into_state())
    })
    .await
}

/// Releases the scope a run held (idempotent), in the transaction that ends the run.
pub async fn release_scope(
    uow: &mut UnitOfWork,
    run: &OperationRun,
    run_id: RunId,
) -> Result<(), AppError> {
    let Some(lock_id) = run.scope_lock_id() else {
        return Ok(());
    };
    store::scope_locks::release(uow.connection(), &lock_id, run_id).await?;
    Ok(())
}
