//! Provider connections: creating one, its credential, which one is the default, and the
//! rest of its lifecycle (consent, disable, ...).

use domain::connection::{ConnectionCommand, ProviderConnection};
use domain::tenant::{Tenant, TenantCommand, TenantEvent};
use domain::{ConnectionId, EntraTenantId, Provider, TenantKey};
use secrecy::{ExposeSecret, SecretString};
use store::vault::{StoredCredential, Vault};
use store::{CommandBus, Metadata};

use crate::guard;
use crate::retry::retrying;
use crate::AppError;

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
        guard::load::<Tenant>(&mut uow, meta, &tenant.to_string()).await?;
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
        guard::load::<ProviderConnection>(&mut uow, meta, &connection_id.to_string()).await?;
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
        let connection =
            guard::load::<ProviderConnection>(&mut uow, meta, &connection_id.to_string())
                .await?
                .aggregate;
        let tenant = connection
            .tenant_key
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

/// Removes a connection: the connection and its tenant record it in one transaction. The
/// tenant's default is removed only when it is the tenant's last connection of its
/// provider (`invalid_transition` otherwise: make another the default first). The
/// credential stays in the vault, as rotated ones do, for the audit trail.
pub async fn remove_connection(
    bus: &CommandBus,
    meta: &Metadata,
    connection_id: ConnectionId,
) -> Result<(), AppError> {
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let id = connection_id.to_string();
        let connection = guard::load::<ProviderConnection>(&mut uow, meta, &id)
            .await?
            .aggregate;
        let tenant = connection
            .tenant_key
            .ok_or(AppError::NotFound("connection"))?;
        uow.execute::<Tenant>(
            &tenant.to_string(),
            TenantCommand::DetachConnection { connection_id },
            meta,
        )
        .await?;
        uow.execute::<ProviderConnection>(&id, ConnectionCommand::Remove, meta)
            .await?;
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
    let id = connection_id.to_string();
    guard::load::<ProviderConnection>(bus, meta, &id).await?;
    Ok(bus
        .execute::<ProviderConnection>(&id, command, meta)
        .await?
        .aggregate)
}
