//! Tenants: registering one in the caller's workspace, renaming or archiving it.

use domain::tenant::{Tenant, TenantCommand};
use domain::{EntraTenantId, TenantKey};
use store::{CommandBus, Metadata};

use crate::guard::{self, caller_workspace};
use crate::AppError;

/// Registers a tenant in the caller's workspace.
pub async fn register_tenant(
    bus: &CommandBus,
    meta: &Metadata,
    entra_tenant_id: EntraTenantId,
    display_name: &str,
    primary_domain: &str,
) -> Result<TenantKey, AppError> {
    let workspace = caller_workspace(meta)?;
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
    let id = key.to_string();
    guard::load::<Tenant>(bus, meta, &id).await?;
    bus.execute::<Tenant>(&id, command, meta).await?;
    Ok(())
}
