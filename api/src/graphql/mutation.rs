//! Mutations: each maps to an application service (a command), checked against the
//! caller's role and workspace. Refusals come back as errors with a stable `code`
//! extension and change nothing.

use app::Started;
use async_graphql::{Context, Enum, InputObject, Object, ID};
use chrono::{DateTime, Utc};
use domain::connection::ConnectionCommand;
use domain::tenant::TenantCommand;
use domain::{ConnectionId, EntraTenantId, Provider, RunId, TenantKey};
use secrecy::SecretString;
use store::Metadata;

use super::errors::{app_error, invalid};
use super::query::{caller, state};
use super::types::*;

pub(super) fn meta(ctx: &Context<'_>) -> async_graphql::Result<Metadata> {
    let c = caller(ctx)?;
    // A role that may change nothing (readonly, auditor) is refused every mutation here,
    // before any use case runs: no answer of one (a dedupe, a not found) reaches it.
    if !c.role.may_change_anything() {
        return Err(app_error(app::AppError::Forbidden(c.role)));
    }
    let mut m = Metadata::new(c.workspace.clone(), c.subject.clone(), c.role);
    if let Ok(request_id) = ctx.data::<RequestId>() {
        m.request_id = request_id.0.clone();
        m.correlation_id = request_id.0.clone();
    }
    Ok(m)
}

/// The HTTP request's id (from `x-request-id`, or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn tenant_key(id: &str) -> async_graphql::Result<TenantKey> {
    id.parse()
        .map_err(|e: domain::ValueError| invalid(e.to_string()))
}

fn entra(id: &str) -> async_graphql::Result<EntraTenantId> {
    id.parse()
        .map_err(|e: domain::ValueError| invalid(e.to_string()))
}

fn connection_id(id: &str) -> async_graphql::Result<ConnectionId> {
    id.parse()
        .map_err(|e: domain::ValueError| invalid(e.to_string()))
}

fn run_id(id: &str) -> async_graphql::Result<RunId> {
    id.parse()
        .map_err(|e: domain::ValueError| invalid(e.to_string()))
}

#[derive(InputObject)]
pub struct RegisterTenantInput {
    /// The Entra tenant GUID (domains are labels only).
    pub entra_tenant_id: String,
    pub display_name: String,
    pub primary_domain: String,
}

#[derive(InputObject)]
pub struct CreateConnectionInput {
    #[graphql(name = "tenantId")]
    pub tenant_id: String,
    pub entra_tenant_id: String,
    pub display_name: String,
}

/// A client credential. The secret is stored encrypted and never returned.
#[derive(InputObject)]
pub struct CredentialInput {
    pub connection_id: String,
    pub client_id: String,
    #[graphql(secret)]
    pub client_secret: String,
    /// Optional; must equal the connection's Entra tenant.
    pub tenant_id: Option<String>,
}

/// A recurring operation on every tenant of the caller's workspace.
#[derive(InputObject)]
pub struct ScheduleInput {
    /// The operation; `policy.resync` (the Conditional Access resync) is the one that can
    /// be scheduled today.
    #[graphql(default_with = "workflows::resync::RUN_TYPE.to_owned()")]
    pub run_type: String,
    /// Minutes between runs: 5 to 10080 (7 days).
    pub interval_minutes: i32,
    #[graphql(default = true)]
    pub enabled: bool,
    /// When the first run is due; later ones follow every interval from it. Without it, a
    /// new, re-timed or re-enabled schedule first runs one interval from now, and one saved
    /// with its interval unchanged keeps its times.
    pub first_run_at: Option<DateTime<Utc>>,
}

/// Where a resync's policies count as coming from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Enum)]
pub enum ResyncSource {
    /// A plain resync: a snapshot of what the tenant has.
    #[default]
    Graph,
    /// An import: the snapshot also becomes the tenant's policy intent.
    Import,
}

#[derive(Default)]
pub struct CoreMutation;

#[Object]
impl CoreMutation {
    /// Adds a mailbox of a tenant; its subscription is created right after (Owner, Manager).
    async fn add_mailbox(
        &self,
        ctx: &Context<'_>,
        input: super::mail::AddMailboxInput,
    ) -> async_graphql::Result<super::mail::MailboxPayload> {
        super::mail::add_mailbox(ctx, meta(ctx)?, input).await
    }

    /// Tests a mailbox's connection; the finding shows as `lastTest` (Owner, Manager, Operator).
    async fn test_mailbox(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<super::mail::MailboxPayload> {
        super::mail::act(ctx, meta(ctx)?, id, super::mail::MailboxAction::Test).await
    }

    /// Renews a mailbox's subscription now (Owner, Manager, Operator).
    async fn renew_mailbox(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<super::mail::MailboxPayload> {
        super::mail::act(ctx, meta(ctx)?, id, super::mail::MailboxAction::Renew).await
    }

    /// Disables a mailbox: its notifications are ignored, its subscription deleted (Owner, Manager).
    async fn disable_mailbox(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<super::mail::MailboxPayload> {
        super::mail::act(ctx, meta(ctx)?, id, super::mail::MailboxAction::Disable).await
    }

    /// Registers a tenant in the caller's workspace (Owner, Manager).
    async fn register_tenant(
        &self,
        ctx: &Context<'_>,
        input: RegisterTenantInput,
    ) -> async_graphql::Result<TenantPayload> {
        let id = entra(&input.entra_tenant_id)?;
        let key = app::register_tenant(
            &state(ctx)?.bus,
            &meta(ctx)?,
            id,
            &input.display_name,
            &input.primary_domain,
        )
        .await
        .map_err(app_error)?;
        Ok(TenantPayload {
            id: key.to_string(),
        })
    }

    async fn rename_tenant(
        &self,
        ctx: &Context<'_>,
        id: String,
        display_name: String,
    ) -> async_graphql::Result<TenantPayload> {
        change_tenant(ctx, &id, TenantCommand::Rename { display_name }).await
    }

    async fn archive_tenant(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<TenantPayload> {
        change_tenant(ctx, &id, TenantCommand::Archive).await
    }

    /// Adds a Microsoft connection to a tenant (Owner, Manager). The first one becomes
    /// the default.
    async fn create_connection(
        &self,
        ctx: &Context<'_>,
        input: CreateConnectionInput,
    ) -> async_graphql::Result<ConnectionPayload> {
        let key = tenant_key(&input.tenant_id)?;
        let id = app::create_connection(
            &state(ctx)?.bus,
            &meta(ctx)?,
            &key,
            Provider::Microsoft,
            entra(&input.entra_tenant_id)?,
            &input.display_name,
        )
        .await
        .map_err(app_error)?;
        Ok(ConnectionPayload { id: id.as_uuid() })
    }

    /// Sets (or rotates) a connection's client credential (Owner, Manager).
    async fn set_credential(
        &self,
        ctx: &Context<'_>,
        input: CredentialInput,
    ) -> async_graphql::Result<CredentialPayload> {
        let id = connection_id(&input.connection_id)?;
        let tenant = input.tenant_id.as_deref().map(entra).transpose()?;
        let secret = SecretString::from(input.client_secret);
        let s = state(ctx)?;
        let stored = app::set_credential(
            &s.bus,
            &s.vault,
            &meta(ctx)?,
            id,
            &input.client_id,
            &secret,
            tenant,
        )
        .await
        .map_err(app_error)?;
        Ok(CredentialPayload {
            connection_id: id.as_uuid(),
            fingerprint: stored.fingerprint,
        })
    }

    /// Makes a connection its tenant's default (Owner, Manager); atomic.
    async fn make_default_connection(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<ConnectionPayload> {
        let id = connection_id(&id)?;
        app::make_default(&state(ctx)?.bus, &meta(ctx)?, id)
            .await
            .map_err(app_error)?;
        Ok(ConnectionPayload { id: id.as_uuid() })
    }

    /// Records that admin consent was granted with these scopes (Owner, Manager).
    async fn grant_consent(
        &self,
        ctx: &Context<'_>,
        id: String,
        scopes: Vec<String>,
    ) -> async_graphql::Result<ConnectionPayload> {
        change_connection(ctx, &id, ConnectionCommand::GrantConsent { scopes }).await
    }

    /// Records that admin consent was withdrawn (Owner, Manager).
    async fn revoke_consent(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<ConnectionPayload> {
        change_connection(ctx, &id, ConnectionCommand::RevokeConsent).await
    }

    /// Disables a connection (Owner, Manager): runs that would go through it are blocked
    /// with `provider_connection_disabled` until it is enabled again. Disabling a disabled
    /// connection is refused with `provider_connection_disabled`.
    async fn disable_connection(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<ConnectionPayload> {
        change_connection(ctx, &id, ConnectionCommand::Disable).await
    }

    /// Renames a connection (Owner, Manager): 1-200 characters, no control characters.
    async fn rename_connection(
        &self,
        ctx: &Context<'_>,
        id: String,
        display_name: String,
    ) -> async_graphql::Result<ConnectionPayload> {
        change_connection(ctx, &id, ConnectionCommand::Rename { display_name }).await
    }

    /// Removes a connection from its tenant (Owner, Manager). The tenant's default may be
    /// removed only when it is its last connection: otherwise make another the default
    /// first (`invalid_transition`). Its history stays in the event log and audit log.
    async fn remove_connection(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<ConnectionPayload> {
        let id = connection_id(&id)?;
        app::remove_connection(&state(ctx)?.bus, &meta(ctx)?, id)
            .await
            .map_err(app_error)?;
        Ok(ConnectionPayload { id: id.as_uuid() })
    }

    /// Enables a disabled connection again (Owner, Manager).
    async fn enable_connection(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<ConnectionPayload> {
        change_connection(ctx, &id, ConnectionCommand::Enable).await
    }

    /// Acknowledges a tenant's open drift alert, named by the snapshot that raised it
    /// (Owner, Manager, Operator). An alert that is not open (unknown, or acknowledged
    /// already) is `not_found`.
    async fn acknowledge_alert(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId")] tenant_id: String,
        snapshot_id: String,
    ) -> async_graphql::Result<AlertPayload> {
        let snapshot_id = uuid::Uuid::try_parse(snapshot_id.trim())
            .map_err(|_| invalid("`snapshotId` is not a valid snapshot id"))?;
        change_tenant(
            ctx,
            &tenant_id,
            TenantCommand::AcknowledgeAlert { snapshot_id },
        )
        .await?;
        Ok(AlertPayload { snapshot_id })
    }

    /// Starts a Conditional Access resync of a tenant (Owner, Manager, Operator), or
    /// returns the active one. With `source: IMPORT` the run (`policy.import`) also makes
    /// the policies it reads the tenant's policy intent. It goes through the tenant's
    /// default connection, or through `connectionId` (one of the tenant's connections).
    async fn resync_tenant(
        &self,
        ctx: &Context<'_>,
        id: String,
        #[graphql(default)] source: ResyncSource,
        connection_id: Option<String>,
    ) -> async_graphql::Result<StartRunPayload> {
        let run_type = match source {
            ResyncSource::Graph => workflows::resync::RUN_TYPE,
            ResyncSource::Import => workflows::resync::IMPORT_RUN_TYPE,
        };
        start(ctx, &id, run_type, None, connection_id.as_deref()).await
    }

    /// Starts an operation of a given type on a tenant. The type must be one a workflow
    /// runs (the error lists them); `module`, if given, must be that workflow's. It goes
    /// through the tenant's default connection, or through `connectionId` (one of the
    /// tenant's connections; another is `not_found`).
    async fn start_operation(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "tenantId")] tenant_id: String,
        #[graphql(name = "type")] run_type: String,
        module: Option<String>,
        connection_id: Option<String>,
    ) -> async_graphql::Result<StartRunPayload> {
        start(
            ctx,
            &tenant_id,
            &run_type,
            module.as_deref(),
            connection_id.as_deref(),
        )
        .await
    }

    /// Sets the workspace's schedule of an operation (Owner, Manager): each time it is due,
    /// the operation starts on every tenant that is not archived, one run per tenant. A
    /// tenant with a run of the same type active keeps it (no second run); a tenant busy
    /// with another type is left alone; a tenant without a usable connection gets a
    /// blocked run. After downtime, a schedule runs once, not once per missed interval.
    async fn set_schedule(
        &self,
        ctx: &Context<'_>,
        input: ScheduleInput,
    ) -> async_graphql::Result<SchedulePayload> {
        let registry = &state(ctx)?.workflows;
        if !registry
            .get(&input.run_type)
            .is_some_and(|w| w.schedulable())
        {
            return Err(invalid(format!(
                "operations of type `{}` cannot be scheduled (expected one of: {})",
                input.run_type.chars().take(64).collect::<String>(),
                registry.schedulable_run_types().join(", ")
            )));
        }
        // Out of range either way: the domain's refusal says what is accepted.
        let interval = u32::try_from(input.interval_minutes).unwrap_or(0);
        let id = app::set_schedule(
            &state(ctx)?.bus,
            &meta(ctx)?,
            &input.run_type,
            interval,
            input.enabled,
            input.first_run_at,
        )
        .await
        .map_err(app_error)?;
        Ok(SchedulePayload { id })
    }

    /// Disables a schedule (Owner, Manager); `setSchedule` enables it again.
    async fn disable_schedule(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<SchedulePayload> {
        app::disable_schedule(&state(ctx)?.bus, &meta(ctx)?, &id)
            .await
            .map_err(app_error)?;
        Ok(SchedulePayload { id })
    }

    /// Starts a failed, blocked or cancelled run again (Owner, Manager, Operator): a new
    /// run of the same type, tenant and module whose `retryOf` names the old one. Like
    /// any start it returns the active run of the same type instead (`DEDUPLICATED`), is
    /// refused with `scope_busy` while a run of another type holds the tenant, and is
    /// `BLOCKED` when the tenant still cannot run it. Other runs are refused with
    /// `invalid_transition`.
    async fn retry_run(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<StartRunPayload> {
        let id = run_id(&id)?;
        let s = state(ctx)?;
        let started = app::retry_run(&s.bus, &meta(ctx)?, id, &s.workflows.run_types())
            .await
            .map_err(app_error)?;
        Ok(start_payload(&started))
    }

    /// Cancels a run: at once when queued, at its next step when running.
    async fn cancel_run(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<CancelRunPayload> {
        let id = run_id(&id)?;
        let run = app::cancel_run(&state(ctx)?.bus, &meta(ctx)?, id)
            .await
            .map_err(app_error)?;
        Ok(CancelRunPayload {
            run_id: id.as_uuid(),
            cancelled: run.outcome == domain::run::RunOutcome::Cancelled,
            cancel_requested: run.cancel_requested,
        })
    }
}

/// A command to a tenant the caller names by id.
async fn change_tenant(
    ctx: &Context<'_>,
    id: &str,
    command: TenantCommand,
) -> async_graphql::Result<TenantPayload> {
    let key = tenant_key(id)?;
    app::change_tenant(&state(ctx)?.bus, &meta(ctx)?, &key, command)
        .await
        .map_err(app_error)?;
    Ok(TenantPayload {
        id: key.to_string(),
    })
}

/// A command to a connection the caller names by id.
async fn change_connection(
    ctx: &Context<'_>,
    id: &str,
    command: ConnectionCommand,
) -> async_graphql::Result<ConnectionPayload> {
    let id = connection_id(id)?;
    app::change_connection(&state(ctx)?.bus, &meta(ctx)?, id, command)
        .await
        .map_err(app_error)?;
    Ok(ConnectionPayload { id: id.as_uuid() })
}

/// Starts a run of `run_type`, which a registered workflow must run (an unknown type is
/// refused here, before anything is written, with the list of known ones).
async fn start(
    ctx: &Context<'_>,
    tenant: &str,
    run_type: &str,
    module: Option<&str>,
    connection: Option<&str>,
) -> async_graphql::Result<StartRunPayload> {
    let key = tenant_key(tenant)?;
    let connection = connection.map(connection_id).transpose()?;
    let workflow = state(ctx)?
        .workflows
        .known(run_type)
        .map_err(|e| invalid(e.to_string()))?;
    if workflow.over_workspace() {
        return Err(invalid(format!(
            "operations of type `{run_type}` run over the whole workspace, not on a tenant"
        )));
    }
    let module = match module {
        Some(m) if m != workflow.module() => {
            return Err(invalid(format!(
                "operations of type `{run_type}` run in module `{}`",
                workflow.module()
            )))
        }
        _ => workflow.module(),
    };
    let (bus, meta) = (&state(ctx)?.bus, &meta(ctx)?);
    let started = match connection {
        Some(c) => app::start_operation_through(bus, meta, &key, c, run_type, module).await,
        None => app::start_operation(bus, meta, &key, run_type, module).await,
    }
    .map_err(app_error)?;
    Ok(start_payload(&started))
}

/// What a start (or a retry) answers.
pub(super) fn start_payload(started: &Started) -> StartRunPayload {
    let (status, reason) = match started {
        Started::Queued(_) => (StartStatus::Queued, None),
        Started::Deduplicated(_) => (StartStatus::Deduplicated, None),
        Started::Blocked(_, r) => (StartStatus::Blocked, Some(r.as_str().to_owned())),
    };
    StartRunPayload {
        run_id: started.run_id().as_uuid(),
        status,
        reason_code: reason,
    }
}
