//! Application services: the use cases behind mutations, workflows and the demo. Each one
//! checks the caller's workspace, then appends through the bus, in one transaction when
//! several streams (or the vault) must change together. Lost optimistic races are retried.

use chrono::{DateTime, Utc};
use domain::connection::{ConnectionCommand, ProviderConnection};
use domain::run::{NextStep, OperationRun, RunCommand, RunContext, RunOutcome};
use domain::schedule::{schedule_key, Schedule, ScheduleCommand};
use domain::scope_lock::{scope_key, ScopeCommand, ScopeError, ScopeLock};
use domain::tenant::{Tenant, TenantCommand, TenantError, TenantEvent, TenantStatus};
use domain::{
    ConnectionId, DomainError, EntraTenantId, Provider, ReasonCode, Role, RunId, TenantKey,
    ValueError, WorkspaceId,
};
use secrecy::{ExposeSecret, SecretString};

use crate::bus::{AppendError, BusError, CommandBus, Metadata, Staged, StagedStream, UnitOfWork};
use crate::vault::{StoredCredential, Vault, VaultError};
use cqrs_es::Aggregate;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// Why a use case did not go through. `Display` is safe to show to the caller.
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
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
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
            AppError::Internal(_) => ReasonCode::InternalError,
        }
    }
}

/// A domain refusal as the use case's failure.
trait IntoRefusal {
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
        AppError::Internal(Box::new(e))
    }
}

impl From<VaultError> for AppError {
    fn from(e: VaultError) -> Self {
        AppError::Internal(Box::new(e))
    }
}

impl<E: DomainError + Send + Sync + 'static> From<BusError<E>> for AppError {
    fn from(e: BusError<E>) -> Self {
        match e {
            BusError::Forbidden { role, .. } => AppError::Forbidden(role),
            BusError::Domain(d) => d.into_refusal(),
            BusError::Conflict { .. } => AppError::Conflict,
            other => AppError::Internal(Box::new(other)),
        }
    }
}

impl From<BusError<ScopeError>> for ScopeOrApp {
    fn from(e: BusError<ScopeError>) -> Self {
        match e {
            BusError::Domain(ScopeError::Busy {
                active_run_id,
                active_run_type,
            }) => ScopeOrApp(AppError::ScopeBusy {
                active_run_id,
                active_run_type,
            }),
            other => ScopeOrApp(other.into()),
        }
    }
}

struct ScopeOrApp(AppError);

/// How many times a multi-stream use case starts over after losing an optimistic race.
const RETRIES: usize = crate::bus::CONFLICT_RETRIES;

/// Runs `attempt` until it does not end in a conflict (bounded).
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, AppError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AppError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(AppError::Conflict) if tries < RETRIES => crate::bus::conflict_pause(tries).await,
            other => return other,
        }
    }
}

fn workspace_of(meta: &Metadata) -> Result<WorkspaceId, AppError> {
    Ok(meta.workspace.parse()?)
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

/// Loads a tenant of the caller's workspace (a tenant of another workspace is "not found").
async fn tenant_in(
    uow: &mut UnitOfWork,
    meta: &Metadata,
    key: &TenantKey,
) -> Result<Tenant, AppError> {
    if key.workspace.as_str() != meta.workspace {
        return Err(AppError::NotFound("tenant"));
    }
    let t = uow.load::<Tenant>(&key.to_string()).await?.aggregate;
    if t.workspace.is_none() {
        return Err(AppError::NotFound("tenant"));
    }
    Ok(t)
}

async fn connection_in(
    uow: &mut UnitOfWork,
    meta: &Metadata,
    id: ConnectionId,
) -> Result<(ProviderConnection, i64), AppError> {
    let loaded = uow.load::<ProviderConnection>(&id.to_string()).await?;
    match &loaded.aggregate.workspace {
        Some(w) if w.as_str() == meta.workspace => Ok((loaded.aggregate, loaded.version)),
        _ => Err(AppError::NotFound("connection")),
    }
}

/// Registers a tenant in the caller's workspace.
pub async fn register_tenant(
    bus: &CommandBus,
    meta: &Metadata,
    entra_tenant_id: EntraTenantId,
    display_name: &str,
    primary_domain: &str,
) -> Result<TenantKey, AppError> {
    let workspace = workspace_of(meta)?;
    let key = TenantKey::new(workspace.clone(), entra_tenant_id);
    let command = TenantCommand::Register {
        workspace,
        entra_tenant_id,
        display_name: display_name.to_owned(),
        primary_domain: primary_domain.to_owned(),
    };
    bus.execute::<Tenant>(&key.to_string(), command, meta)
        .await?;
    Ok(key)
}

/// Renames or archives a tenant of the caller's workspace.
pub async fn change_tenant(
    bus: &CommandBus,
    meta: &Metadata,
    key: &TenantKey,
    command: TenantCommand,
) -> Result<(), AppError> {
    if key.workspace.as_str() != meta.workspace {
        return Err(AppError::NotFound("tenant"));
    }
    if bus
        .load::<Tenant>(&key.to_string())
        .await?
        .aggregate
        .workspace
        .is_none()
    {
        return Err(AppError::NotFound("tenant"));
    }
    bus.execute::<Tenant>(&key.to_string(), command, meta)
        .await?;
    Ok(())
}

/// Creates a connection of a tenant: attached to the tenant (uniqueness, default) and
/// created, in one transaction. The first connection of a provider is its default.
pub async fn create_connection(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    provider: Provider,
    entra_tenant_id: EntraTenantId,
    display_name: &str,
) -> Result<ConnectionId, AppError> {
    let connection_id = ConnectionId::new();
    retrying(|| async {
        let mut uow = bus.begin().await?;
        tenant_in(&mut uow, meta, tenant).await?;
        let attached = uow
            .execute::<Tenant>(
                &tenant.to_string(),
                TenantCommand::AttachConnection {
                    connection_id,
                    provider,
                    entra_tenant_id,
                },
                meta,
            )
            .await?;
        uow.execute::<ProviderConnection>(
            &connection_id.to_string(),
            ConnectionCommand::Create {
                workspace: tenant.workspace.clone(),
                tenant_key: tenant.clone(),
                provider,
                entra_tenant_id,
                display_name: display_name.to_owned(),
            },
            meta,
        )
        .await?;
        if attached.aggregate.default_connection(provider) == Some(connection_id) {
            uow.execute::<ProviderConnection>(
                &connection_id.to_string(),
                ConnectionCommand::MarkDefault,
                meta,
            )
            .await?;
        }
        uow.commit().await?;
        Ok(connection_id)
    })
    .await
}

/// Stores a client credential in the vault and points the connection at it, atomically.
/// The secret goes to the vault only; events get its reference and fingerprint.
pub async fn set_credential(
    bus: &CommandBus,
    vault: &Vault,
    meta: &Metadata,
    connection_id: ConnectionId,
    client_id: &str,
    client_secret: &SecretString,
    tenant_id: Option<EntraTenantId>,
) -> Result<StoredCredential, AppError> {
    let client_id = client_id.trim();
    if client_id.is_empty() || client_id.len() > 200 {
        return Err(AppError::Invalid(
            "client id must be 1-200 characters".into(),
        ));
    }
    let secret_len = client_secret.expose_secret().len();
    if secret_len == 0 || secret_len > 2048 {
        return Err(AppError::Invalid(
            "client secret must be 1-2048 characters".into(),
        ));
    }
    // Permission first, so a refused caller never reaches the vault.
    if !meta.role.allows(domain::Permission::ManageConnections) {
        return Err(AppError::Forbidden(meta.role));
    }
    retrying(|| async {
        let mut uow = bus.begin().await?;
        connection_in(&mut uow, meta, connection_id).await?;
        let stored = vault
            .store(
                uow.connection(),
                &meta.workspace,
                connection_id.as_uuid(),
                client_id,
                client_secret,
                &meta.actor,
            )
            .await?;
        uow.execute::<ProviderConnection>(
            &connection_id.to_string(),
            ConnectionCommand::SetCredential {
                credential_ref: stored.credential_ref,
                fingerprint: stored.fingerprint.clone(),
                tenant_id,
            },
            meta,
        )
        .await?;
        uow.commit().await?;
        Ok(stored)
    })
    .await
}

/// Makes a connection its tenant's default for its provider. The tenant's stream
/// serializes concurrent changes; the old and new connections' flags change in the same
/// transaction, so exactly one connection is default at every commit.
pub async fn make_default(
    bus: &CommandBus,
    meta: &Metadata,
    connection_id: ConnectionId,
) -> Result<(), AppError> {
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let (connection, _) = connection_in(&mut uow, meta, connection_id).await?;
        let tenant = connection
            .tenant_key
            .clone()
            .ok_or(AppError::NotFound("connection"))?;
        let done = uow
            .execute::<Tenant>(
                &tenant.to_string(),
                TenantCommand::MakeDefaultConnection { connection_id },
                meta,
            )
            .await?;
        for event in &done.events {
            if let TenantEvent::DefaultConnectionChanged {
                previous, current, ..
            } = event
            {
                if let Some(previous) = previous {
                    uow.execute::<ProviderConnection>(
                        &previous.to_string(),
                        ConnectionCommand::UnmarkDefault,
                        meta,
                    )
                    .await?;
                }
                uow.execute::<ProviderConnection>(
                    &current.to_string(),
                    ConnectionCommand::MarkDefault,
                    meta,
                )
                .await?;
            }
        }
        uow.commit().await?;
        Ok(())
    })
    .await
}

/// Any other command on a connection of the caller's workspace (consent, disable, ...).
pub async fn change_connection(
    bus: &CommandBus,
    meta: &Metadata,
    connection_id: ConnectionId,
    command: ConnectionCommand,
) -> Result<ProviderConnection, AppError> {
    let loaded = bus
        .load::<ProviderConnection>(&connection_id.to_string())
        .await?;
    match &loaded.aggregate.workspace {
        Some(w) if w.as_str() == meta.workspace => {}
        _ => return Err(AppError::NotFound("connection")),
    }
    Ok(bus
        .execute::<ProviderConnection>(&connection_id.to_string(), command, meta)
        .await?
        .aggregate)
}

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
    pub fn run_id(&self) -> RunId {
        match self {
            Started::Queued(r) | Started::Deduplicated(r) | Started::Blocked(r, _) => *r,
        }
    }
}

/// Why a provider-backed run cannot start, with link-only next steps.
fn precondition(
    tenant: &TenantKey,
    connection: Option<&ProviderConnection>,
) -> Option<(ReasonCode, Vec<NextStep>)> {
    let base = format!("/tenants/{tenant}");
    let step = |label: &str, href: String| NextStep {
        label: label.to_owned(),
        href,
    };
    let Some(c) = connection else {
        return Some((
            ReasonCode::ProviderConnectionMissing,
            vec![step(
                "Add a Microsoft connection",
                format!("{base}/connections/new"),
            )],
        ));
    };
    if c.status == domain::connection::ConnectionStatus::Disabled {
        return Some((
            ReasonCode::ProviderConnectionDisabled,
            vec![step("Enable the connection", format!("{base}/connections"))],
        ));
    }
    if c.credential.is_none() {
        return Some((
            ReasonCode::ProviderCredentialMissing,
            vec![step(
                "Set the connection's credential",
                format!("{base}/connections"),
            )],
        ));
    }
    if !c.consent_granted {
        return Some((
            ReasonCode::ProviderConsentMissing,
            vec![step("Grant admin consent", format!("{base}/connections"))],
        ));
    }
    None
}

/// Starts (or dedupes to) a provider-backed operation on a tenant through its default
/// Microsoft connection. The scope lock and the run are appended in one transaction. An
/// archived tenant is refused.
pub async fn start_operation(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    run_type: &str,
    module: &str,
) -> Result<Started, AppError> {
    start(bus, meta, tenant, run_type, module, None).await
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
    start(bus, meta, tenant, run_type, module, Some(run_id)).await
}

async fn start(
    bus: &CommandBus,
    meta: &Metadata,
    tenant: &TenantKey,
    run_type: &str,
    module: &str,
    requested: Option<RunId>,
) -> Result<Started, AppError> {
    let request = StartRequest {
        tenant: tenant.clone(),
        run_id: requested,
    };
    let mut outcomes = start_operations(bus, meta, &[request], run_type, module).await?;
    outcomes.pop().unwrap_or(Err(AppError::NotFound("tenant")))
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
    let workspace = workspace_of(meta)?;
    // Checked first: a dedupe answer must not reach a role that may not start anything.
    if !meta.role.allows(domain::Permission::StartOperations) {
        return Err(AppError::Forbidden(meta.role));
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(START_CHUNK) {
        let chunk_outcomes = retrying(|| async {
            let mut uow = bus.begin().await?;
            let outcomes =
                start_chunk(bus, &mut uow, meta, &workspace, chunk, run_type, module).await?;
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
    run_type: &str,
    module: &str,
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
    // Read 2: the default connections of the tenants in this workspace.
    let connection_ids: Vec<(&'static str, String)> = chunk
        .iter()
        .filter(|r| r.tenant.workspace.as_str() == meta.workspace)
        .filter_map(|r| tenants.get(&r.tenant.to_string()))
        .filter_map(|t| t.default_connection(Provider::Microsoft))
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
            .and_then(|t| t.default_connection(Provider::Microsoft))
            .and_then(|c| connections.get(&c.to_string()))
            .and_then(|c: &ProviderConnection| c.entra_tenant_id)
            .unwrap_or(r.tenant.entra_tenant_id)
    };
    let lock_ids: Vec<(&'static str, String)> = chunk
        .iter()
        .map(|r| (ScopeLock::TYPE, scope_key(workspace, scope_of(r))))
        .collect();
    let mut streams = uow.fetch_streams(&lock_ids).await?;
    let mut locks: HashMap<String, Staged<ScopeLock>> = HashMap::new();
    for (_, id) in &lock_ids {
        if let Entry::Vacant(slot) = locks.entry(id.clone()) {
            slot.insert(streams.stage::<ScopeLock>(id)?);
        }
    }
    // Decide each start against the staged state (a later tenant of the chunk sees an
    // earlier one's lock), then append everything in one statement.
    let mut runs: Vec<Staged<OperationRun>> = Vec::new();
    let mut outcomes = Vec::with_capacity(chunk.len());
    for r in chunk {
        let tenant = tenants.get(&r.tenant.to_string());
        let connection = tenant
            .and_then(|t| t.default_connection(Provider::Microsoft))
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
            run_type,
            module,
        };
        outcomes.push(decide_start(services, input, r.run_id, lock, &mut runs).await?);
    }
    let mut staged: Vec<&mut dyn StagedStream> = Vec::new();
    staged.extend(locks.values_mut().map(|l| l as &mut dyn StagedStream));
    staged.extend(runs.iter_mut().map(|r| r as &mut dyn StagedStream));
    uow.append_all(&mut staged).await.map_err(|e| match e {
        AppendError::Conflict => AppError::Conflict,
        other => AppError::Internal(Box::new(other)),
    })?;
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
    run_type: &'a str,
    module: &'a str,
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
        run_type,
        module,
    } = input;
    // A tenant of another workspace, or none at all, is "not found".
    let tenant = match tenant {
        Some(t) if tenant_key.workspace.as_str() == meta.workspace && t.workspace.is_some() => t,
        _ => return Ok(Err(AppError::NotFound("tenant"))),
    };
    if let Some((id, run)) = existing {
        if run.exists() {
            return Ok(match (&run.workspace, run.blocked_reason) {
                (Some(w), _) if w.as_str() != meta.workspace => Err(AppError::NotFound("run")),
                (_, Some(reason)) => Ok(Started::Blocked(id, reason)),
                (_, None) => Ok(Started::Queued(id)),
            });
        }
    }
    if tenant.status == TenantStatus::Archived {
        return Ok(Err(TenantError::Archived.into_refusal()));
    }
    if let Some(c) = connection {
        if c.workspace.as_ref().map(|w| w.as_str()) != Some(meta.workspace.as_str()) {
            return Ok(Err(AppError::NotFound("connection")));
        }
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
    let blocked = precondition(tenant_key, connection);
    if blocked.is_none() {
        let acquire = ScopeCommand::Acquire {
            run_id,
            run_type: run_type.to_owned(),
        };
        if let Err(e) = lock.decide(services, acquire, meta).await {
            return match ScopeOrApp::from(e).0 {
                e @ AppError::ScopeBusy { .. } => Ok(Err(e)),
                other => Err(other),
            };
        }
    }
    let context = RunContext {
        provider: Provider::Microsoft,
        connection_id: tenant.default_connection(Provider::Microsoft),
        target_scope: scope,
        tenant_key: tenant_key.clone(),
        module: module.to_owned(),
    };
    let mut run = Staged::<OperationRun>::new(run_id.to_string(), OperationRun::default(), 0);
    let queue = RunCommand::Queue {
        workspace: workspace.clone(),
        run_type: run_type.to_owned(),
        context,
        initiator: meta.actor.clone(),
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
/// same transaction; a running one stops at its next step.
pub async fn cancel_run(
    bus: &CommandBus,
    meta: &Metadata,
    run_id: RunId,
) -> Result<OperationRun, AppError> {
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let run = uow
            .load::<OperationRun>(&run_id.to_string())
            .await?
            .aggregate;
        match &run.workspace {
            Some(w) if w.as_str() == meta.workspace => {}
            _ => return Err(AppError::NotFound("run")),
        }
        let done = uow
            .execute::<OperationRun>(&run_id.to_string(), RunCommand::RequestCancel, meta)
            .await?;
        if done.aggregate.outcome == RunOutcome::Cancelled {
            release_scope(&mut uow, &done.aggregate, run_id, &as_system(meta)).await?;
        }
        uow.commit().await?;
        Ok(done.aggregate)
    })
    .await
}

/// Releases the scope a run held (idempotent). Workflows call this when a run completes.
pub async fn release_scope(
    uow: &mut UnitOfWork,
    run: &OperationRun,
    run_id: RunId,
    meta: &Metadata,
) -> Result<(), AppError> {
    let (Some(workspace), Some(context)) = (&run.workspace, &run.context) else {
        return Ok(());
    };
    let lock_id = scope_key(workspace, context.target_scope);
    uow.execute::<ScopeLock>(&lock_id, ScopeCommand::Release { run_id }, meta)
        .await
        .map_err(|e| ScopeOrApp::from(e).0)?;
    Ok(())
}

/// Sets the caller's workspace's schedule of `run_type` (creating it, changing it, or
/// saving it unchanged); returns its id. See [`ScheduleCommand::Set`] for the timing rules.
pub async fn set_schedule(
    bus: &CommandBus,
    meta: &Metadata,
    run_type: &str,
    interval_minutes: u32,
    enabled: bool,
    first_due_at: Option<DateTime<Utc>>,
) -> Result<String, AppError> {
    let workspace = workspace_of(meta)?;
    let id = schedule_key(&workspace, run_type);
    let command = ScheduleCommand::Set {
        workspace,
        run_type: run_type.to_owned(),
        interval_minutes,
        enabled,
        first_due_at,
    };
    bus.execute::<Schedule>(&id, command, meta).await?;
    Ok(id)
}

/// Disables a schedule of the caller's workspace (one of another workspace is "not found").
pub async fn disable_schedule(
    bus: &CommandBus,
    meta: &Metadata,
    schedule_id: &str,
) -> Result<(), AppError> {
    // Checked first, so a refused role learns nothing about which schedules exist.
    if !meta.role.allows(domain::Permission::ManageSchedules) {
        return Err(AppError::Forbidden(meta.role));
    }
    let schedule = bus.load::<Schedule>(schedule_id).await?.aggregate;
    match &schedule.workspace {
        Some(w) if w.as_str() == meta.workspace => {}
        _ => return Err(AppError::NotFound("schedule")),
    }
    bus.execute::<Schedule>(schedule_id, ScheduleCommand::Disable, meta)
        .await?;
    Ok(())
}
