//! Contact sync use cases (R5): the partner connection and its secret, clients, feature
//! flags and the field sync config, mapping confirmation, reconciliation and starting the
//! discovery and sync runs. Every surface but the flags themselves answers
//! `feature_disabled` while the workspace's `ui` flag is off (and CIPP connections while
//! `cipp` is off, resolutions while `ambiguous_queue` is off, a one-client sync while
//! `client_sync_action` is off); turning a flag off deletes nothing.
//!
//! Streams created here are listed in the stream index (`store::index`) in the same
//! transaction, so workflows find a workspace's clients, mappings and a client's contacts
//! without waiting for a read model.

use domain::contact::{ContactCommand, ContactDetails};
use domain::contact_settings::{
    ContactSyncSettings, FeatureFlag, FieldSyncConfig, SettingsCommand,
};
use domain::partner_connection::{
    PartnerConnection, PartnerConnectionCommand, PartnerConnectionEvent, PartnerTarget, SecretRef,
};
use domain::reconciliation::{ReconciliationCommand, ReconciliationItem, Resolution};
use domain::tenant_mapping::{MappingCommand, MappingState, TenantMapping};
use domain::values::derived_uuid;
use domain::{
    Client, ClientId, Contact, ContactId, EntraTenantId, ReconciliationItemId, WorkspaceId,
};
use secrecy::{ExposeSecret, SecretString};
use store::index::{index_stream, index_streams};
use store::{CommandBus, Metadata, UnitOfWork, Vault};
use uuid::Uuid;

use crate::error::IntoRefusal;
use crate::guard::{caller_workspace, Owned};
use crate::retry::retrying;
use crate::{guard, AppError, Started};

/// The module contact sync runs are started under; its scope serializes discovery and
/// syncs of a workspace.
pub const MODULE: &str = "contacts";
/// Run type of a tenant discovery.
pub const DISCOVER: &str = "contacts.discover";
/// Run type of a contact sync.
pub const SYNC: &str = "contacts.sync";

/// Most rows one confirm may name.
pub const MAX_CONFIRM: usize = 500;

/// How a partner connection reaches the customers, with its secret.
pub enum PartnerSetup {
    /// The partner tenant's own Microsoft app.
    Direct {
        partner_tenant_id: EntraTenantId,
        client_id: String,
        client_secret: SecretString,
    },
    /// A CIPP instance: its URL and API app, and the partner-tenant app CIPP accepts.
    Cipp {
        base_url: String,
        api_client_id: String,
        partner_tenant_id: EntraTenantId,
        client_id: String,
        client_secret: SecretString,
    },
}

impl std::fmt::Debug for PartnerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PartnerSetup::Direct { .. } => "PartnerSetup::Direct([redacted])",
            PartnerSetup::Cipp { .. } => "PartnerSetup::Cipp([redacted])",
        })
    }
}

impl PartnerSetup {
    fn parts(&self) -> (PartnerTarget, &str, &SecretString) {
        match self {
            PartnerSetup::Direct {
                partner_tenant_id,
                client_id,
                client_secret,
            } => (
                PartnerTarget::Direct {
                    partner_tenant_id: *partner_tenant_id,
                },
                client_id,
                client_secret,
            ),
            PartnerSetup::Cipp {
                base_url,
                api_client_id,
                partner_tenant_id,
                client_id,
                client_secret,
            } => (
                PartnerTarget::Cipp {
                    base_url: base_url.clone(),
                    api_client_id: api_client_id.clone(),
                    partner_tenant_id: *partner_tenant_id,
                },
                client_id,
                client_secret,
            ),
        }
    }
}

/// The vault's connection id of a workspace's partner connection (binds its rows).
pub fn partner_vault_id(workspace: &WorkspaceId) -> Uuid {
    derived_uuid("partner_connection", &[workspace.as_str()])
}

impl Owned for Client {
    const NOUN: &'static str = "client";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

impl Owned for Contact {
    const NOUN: &'static str = "contact";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

impl Owned for TenantMapping {
    const NOUN: &'static str = "tenant mapping";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

impl Owned for ReconciliationItem {
    const NOUN: &'static str = "reconciliation item";
    fn workspace(&self) -> Option<&WorkspaceId> {
        self.workspace.as_ref()
    }
}

/// The workspace's contact sync settings (flags off and an empty field config until set).
pub async fn settings(bus: &CommandBus, meta: &Metadata) -> Result<ContactSyncSettings, AppError> {
    let workspace = caller_workspace(meta)?;
    Ok(bus
        .load::<ContactSyncSettings>(workspace.as_str())
        .await?
        .aggregate)
}

/// `Ok` when every flag of `flags` is on in the caller's workspace; otherwise the typed
/// `feature_disabled` refusal of the first that is off.
pub async fn require_flags(
    bus: &CommandBus,
    meta: &Metadata,
    flags: &[FeatureFlag],
) -> Result<ContactSyncSettings, AppError> {
    let settings = settings(bus, meta).await?;
    for flag in flags {
        settings.require(*flag).map_err(|e| e.into_refusal())?;
    }
    Ok(settings)
}

fn require_permission(meta: &Metadata) -> Result<(), AppError> {
    if meta.role.allows(domain::Permission::ManageContactSync) {
        Ok(())
    } else {
        Err(AppError::Forbidden(meta.role))
    }
}

/// Turns a contact sync feature flag on or off. Never gated by a flag itself; turning a
/// flag off hides its surface and deletes nothing.
pub async fn set_feature_flag(
    bus: &CommandBus,
    meta: &Metadata,
    flag: FeatureFlag,
    enabled: bool,
) -> Result<ContactSyncSettings, AppError> {
    let workspace = caller_workspace(meta)?;
    let command = SettingsCommand::SetFeatureFlag {
        workspace: workspace.clone(),
        flag,
        enabled,
    };
    Ok(bus
        .execute::<ContactSyncSettings>(workspace.as_str(), command, meta)
        .await?
        .aggregate)
}

/// Sets which contact fields Entra may overwrite (`ui` flag).
pub async fn set_field_sync(
    bus: &CommandBus,
    meta: &Metadata,
    config: FieldSyncConfig,
) -> Result<ContactSyncSettings, AppError> {
    require_permission(meta)?;
    require_flags(bus, meta, &[FeatureFlag::Ui]).await?;
    let workspace = caller_workspace(meta)?;
    let command = SettingsCommand::SetFieldSync {
        workspace: workspace.clone(),
        config,
    };
    Ok(bus
        .execute::<ContactSyncSettings>(workspace.as_str(), command, meta)
        .await?
        .aggregate)
}

/// Configures the workspace's partner connection: the secret goes to the vault, the event
/// gets its reference and fingerprint. The same target and secret again write nothing.
/// Switching the kind deletes the old kind's vault rows in the same transaction, and the
/// event lists them.
pub async fn configure_partner_connection(
    bus: &CommandBus,
    vault: &Vault,
    meta: &Metadata,
    setup: &PartnerSetup,
) -> Result<PartnerConnection, AppError> {
    let (target, client_id, secret) = setup.parts();
    let client_id = client_id.trim();
    if client_id.is_empty() || client_id.len() > 200 {
        return Err(AppError::Invalid(
            "client id must be 1-200 characters".into(),
        ));
    }
    let secret_len = secret.expose_secret().len();
    if secret_len == 0 || secret_len > 2048 {
        return Err(AppError::Invalid(
            "client secret must be 1-2048 characters".into(),
        ));
    }
    require_permission(meta)?;
    let mut flags = vec![FeatureFlag::Ui];
    if matches!(target, PartnerTarget::Cipp { .. }) {
        flags.push(FeatureFlag::Cipp);
    }
    require_flags(bus, meta, &flags).await?;
    let workspace = caller_workspace(meta)?;
    let fingerprint = vault.fingerprint(workspace.as_str(), client_id, secret);
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let current = uow
            .load::<PartnerConnection>(workspace.as_str())
            .await?
            .aggregate;
        // The same secret under the same kind is kept; a switch of kinds clears every
        // secret of the old kind, so the new kind gets a row of its own.
        let same_kind = current.target.as_ref().map(PartnerTarget::kind) == Some(target.kind());
        let same_secret = same_kind
            && current
                .secret
                .as_ref()
                .is_some_and(|s| s.fingerprint == fingerprint);
        let secret = if same_secret {
            current.secret.clone().expect("checked above")
        } else {
            let stored = vault
                .store(
                    uow.connection(),
                    workspace.as_str(),
                    partner_vault_id(&workspace),
                    client_id,
                    secret,
                    &meta.actor,
                )
                .await?;
            SecretRef {
                credential_ref: stored.credential_ref,
                fingerprint: stored.fingerprint,
            }
        };
        let command = PartnerConnectionCommand::Configure {
            workspace: workspace.clone(),
            target: target.clone(),
            secret,
        };
        let committed = uow
            .execute::<PartnerConnection>(workspace.as_str(), command, meta)
            .await?;
        shred_cleared(&mut uow, vault, &workspace, &committed.events).await?;
        uow.commit().await?;
        Ok(committed.aggregate)
    })
    .await
}

/// Forgets the partner connection and deletes its secrets from the vault.
pub async fn disconnect_partner_connection(
    bus: &CommandBus,
    vault: &Vault,
    meta: &Metadata,
) -> Result<PartnerConnection, AppError> {
    require_permission(meta)?;
    require_flags(bus, meta, &[FeatureFlag::Ui]).await?;
    let workspace = caller_workspace(meta)?;
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let committed = uow
            .execute::<PartnerConnection>(
                workspace.as_str(),
                PartnerConnectionCommand::Disconnect,
                meta,
            )
            .await?;
        shred_cleared(&mut uow, vault, &workspace, &committed.events).await?;
        uow.commit().await?;
        Ok(committed.aggregate)
    })
    .await
}

/// Deletes the vault rows the events say are cleared, in the events' transaction.
async fn shred_cleared(
    uow: &mut UnitOfWork,
    vault: &Vault,
    workspace: &WorkspaceId,
    events: &[PartnerConnectionEvent],
) -> Result<(), AppError> {
    for event in events {
        let cleared = match event {
            PartnerConnectionEvent::PartnerConnectionConfigured {
                cleared_credential_refs,
                ..
            }
            | PartnerConnectionEvent::PartnerConnectionDisconnected {
                cleared_credential_refs,
                ..
            } => cleared_credential_refs,
            _ => continue,
        };
        vault
            .shred(uow.connection(), workspace.as_str(), cleared)
            .await?;
    }
    Ok(())
}

/// Creates a client (the MSP's customer record) with its domains.
pub async fn create_client(
    bus: &CommandBus,
    meta: &Metadata,
    name: &str,
    domains: Vec<String>,
) -> Result<ClientId, AppError> {
    require_permission(meta)?;
    require_flags(bus, meta, &[FeatureFlag::Ui]).await?;
    let workspace = caller_workspace(meta)?;
    let client_id = ClientId::default();
    let mut uow = bus.begin().await?;
    let command = domain::client::ClientCommand::Create {
        workspace: workspace.clone(),
        name: name.to_owned(),
        domains,
    };
    uow.execute::<Client>(&client_id.to_string(), command, meta)
        .await?;
    index_stream(
        uow.connection(),
        workspace.as_str(),
        <Client as cqrs_es::Aggregate>::TYPE,
        "",
        &client_id.to_string(),
    )
    .await?;
    uow.commit().await?;
    Ok(client_id)
}

/// What may change of a client; `None`: unchanged.
#[derive(Debug, Default, Clone)]
pub struct ClientChange {
    pub name: Option<String>,
    pub domains: Option<Vec<String>>,
    pub active: Option<bool>,
}

/// Changes a client's name, domains or status, atomically.
pub async fn change_client(
    bus: &CommandBus,
    meta: &Metadata,
    client_id: ClientId,
    change: &ClientChange,
) -> Result<Client, AppError> {
    use domain::client::ClientCommand;
    require_permission(meta)?;
    require_flags(bus, meta, &[FeatureFlag::Ui]).await?;
    let id = client_id.to_string();
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let mut client = guard::load::<Client>(&mut uow, meta, &id).await?.aggregate;
        let mut commands = Vec::new();
        if let Some(name) = &change.name {
            commands.push(ClientCommand::Rename { name: name.clone() });
        }
        if let Some(domains) = &change.domains {
            commands.push(ClientCommand::SetDomains {
                domains: domains.clone(),
            });
        }
        match change.active {
            Some(true) => commands.push(ClientCommand::Reactivate),
            Some(false) => commands.push(ClientCommand::Deactivate),
            None => {}
        }
        for command in commands {
            client = uow.execute::<Client>(&id, command, meta).await?.aggregate;
        }
        uow.commit().await?;
        Ok(client)
    })
    .await
}

/// Adds a contact by hand to a client's book (the MSP's own record of a person, not yet
/// linked to Entra); the next sync links it when one of the user's addresses matches.
pub async fn create_contact(
    bus: &CommandBus,
    meta: &Metadata,
    client_id: ClientId,
    details: ContactDetails,
) -> Result<ContactId, AppError> {
    require_permission(meta)?;
    require_flags(bus, meta, &[FeatureFlag::Ui]).await?;
    let workspace = caller_workspace(meta)?;
    let contact_id = ContactId::default();
    let mut uow = bus.begin().await?;
    guard::load::<Client>(&mut uow, meta, &client_id.to_string()).await?;
    let create = ContactCommand::Create {
        workspace: workspace.clone(),
        client_id,
        details,
        entra_user: None,
    };
    uow.execute::<Contact>(&contact_id.to_string(), create, meta)
        .await?;
    index_contacts(&mut uow, &workspace, client_id, &[contact_id]).await?;
    uow.commit().await?;
    Ok(contact_id)
}

/// One row of a confirm: a discovered tenant and the client it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingConfirmation {
    pub entra_tenant_id: EntraTenantId,
    pub client_id: ClientId,
}

/// Confirms one or many mappings in one transaction: all or none. Each names a discovered
/// tenant and an active client of the caller's workspace. Returns how many changed.
pub async fn confirm_mappings(
    bus: &CommandBus,
    meta: &Metadata,
    rows: &[MappingConfirmation],
) -> Result<usize, AppError> {
    confirm_and_register(bus, meta, rows, false)
        .await
        .map(|(changed, _)| changed)
}

/// Like [`confirm_mappings`]; with `register`, each confirmed tenant that is not a managed
/// tenant of the workspace yet is registered as one (R1.1) after the confirm commits, with
/// its discovered name and default domain. Returns how many mappings changed and how many
/// tenants were registered.
pub async fn confirm_and_register(
    bus: &CommandBus,
    meta: &Metadata,
    rows: &[MappingConfirmation],
    register: bool,
) -> Result<(usize, usize), AppError> {
    let changed = confirm_rows(bus, meta, rows).await?;
    let mut registered = 0;
    if register {
        if !meta.role.allows(domain::Permission::ManageTenants) {
            return Err(AppError::Forbidden(meta.role));
        }
        let workspace = caller_workspace(meta)?;
        for row in rows {
            let key = TenantMapping::key(&workspace, row.entra_tenant_id);
            let mapping = bus.load::<TenantMapping>(&key).await?.aggregate;
            let Some(tenant) = mapping.tenant else {
                continue;
            };
            match crate::register_tenant(
                bus,
                meta,
                row.entra_tenant_id,
                &tenant.display_name,
                &tenant.default_domain,
            )
            .await
            {
                Ok(_) => registered += 1,
                Err(AppError::Refused {
                    code: domain::ReasonCode::AlreadyExists,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((changed, registered))
}

async fn confirm_rows(
    bus: &CommandBus,
    meta: &Metadata,
    rows: &[MappingConfirmation],
) -> Result<usize, AppError> {
    require_permission(meta)?;
    if rows.is_empty() || rows.len() > MAX_CONFIRM {
        return Err(AppError::Invalid(format!(
            "a confirm names 1 to {MAX_CONFIRM} mappings"
        )));
    }
    require_flags(bus, meta, &[FeatureFlag::Ui]).await?;
    let workspace = caller_workspace(meta)?;
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let mut changed = 0;
        for row in rows {
            let client_key = row.client_id.to_string();
            let client = guard::load::<Client>(&mut uow, meta, &client_key)
                .await?
                .aggregate;
            if client.status != domain::client::ClientStatus::Active {
                return Err(AppError::Refused {
                    code: domain::ReasonCode::ValidationFailed,
                    message: "the client is inactive".into(),
                });
            }
            let key = TenantMapping::key(&workspace, row.entra_tenant_id);
            guard::load::<TenantMapping>(&mut uow, meta, &key).await?;
            let command = MappingCommand::Confirm {
                client_id: row.client_id,
                actor: meta.actor.clone(),
            };
            let committed = uow.execute::<TenantMapping>(&key, command, meta).await?;
            if !committed.events.is_empty() {
                changed += 1;
            }
        }
        uow.commit().await?;
        Ok(changed)
    })
    .await
}

/// Resolves a reconciliation item: links the user to one of the candidates, creates a new
/// contact for it (the id the sync would give it), or ignores it for later syncs; the
/// contact's change and the resolution commit together (`ambiguous_queue` flag).
pub async fn resolve_reconciliation(
    bus: &CommandBus,
    meta: &Metadata,
    item_id: ReconciliationItemId,
    choice: ResolutionChoice,
) -> Result<ReconciliationItem, AppError> {
    require_permission(meta)?;
    require_flags(bus, meta, &[FeatureFlag::Ui, FeatureFlag::AmbiguousQueue]).await?;
    let workspace = caller_workspace(meta)?;
    let id = item_id.to_string();
    retrying(|| async {
        let mut uow = bus.begin().await?;
        let item = guard::load::<ReconciliationItem>(&mut uow, meta, &id)
            .await?
            .aggregate;
        let (Some(client_id), Some(entra_user)) = (item.client_id, item.entra_user) else {
            return Err(AppError::NotFound("reconciliation item"));
        };
        let resolution = match choice {
            ResolutionChoice::Link(contact_id) => {
                if !item.candidates.contains(&contact_id) {
                    return Err(AppError::Invalid(
                        "the contact is not one of the item's candidates".into(),
                    ));
                }
                let key = contact_id.to_string();
                guard::load::<Contact>(&mut uow, meta, &key).await?;
                uow.execute::<Contact>(&key, ContactCommand::Link { entra_user }, meta)
                    .await?;
                Resolution::LinkedExisting { contact_id }
            }
            ResolutionChoice::CreateNew => {
                let contact_id = ContactId::for_entra_user(&workspace, client_id, &entra_user);
                let key = contact_id.to_string();
                let name = item
                    .upstream
                    .display_name
                    .clone()
                    .or_else(|| item.upstream.emails.first().cloned())
                    .unwrap_or_else(|| entra_user.object_id.to_string());
                let details = ContactDetails {
                    name,
                    email: item.upstream.emails.first().cloned(),
                    ..ContactDetails::default()
                };
                let create = ContactCommand::Create {
                    workspace: workspace.clone(),
                    client_id,
                    details,
                    entra_user: Some(entra_user),
                };
                uow.execute::<Contact>(&key, create, meta).await?;
                index_contacts(&mut uow, &workspace, client_id, &[contact_id]).await?;
                Resolution::CreatedNew { contact_id }
            }
            ResolutionChoice::Ignore => Resolution::Ignored,
        };
        let resolve = ReconciliationCommand::Resolve {
            resolution,
            actor: meta.actor.clone(),
        };
        let item = uow
            .execute::<ReconciliationItem>(&id, resolve, meta)
            .await?
            .aggregate;
        uow.commit().await?;
        Ok(item)
    })
    .await
}

/// What a person chose for a reconciliation item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolutionChoice {
    Link(ContactId),
    CreateNew,
    Ignore,
}

/// Lists contacts under their client in the stream index (in the creating transaction), in
/// one statement.
pub async fn index_contacts(
    uow: &mut UnitOfWork,
    workspace: &WorkspaceId,
    client_id: ClientId,
    contact_ids: &[ContactId],
) -> Result<(), AppError> {
    let ids: Vec<String> = contact_ids.iter().map(ContactId::to_string).collect();
    index_streams(
        uow.connection(),
        workspace.as_str(),
        <Contact as cqrs_es::Aggregate>::TYPE,
        &client_id.to_string(),
        &ids,
    )
    .await?;
    Ok(())
}

/// Starts a tenant discovery through the partner connection (`ui` flag; a CIPP connection
/// also needs `cipp`).
pub async fn start_discovery(bus: &CommandBus, meta: &Metadata) -> Result<Started, AppError> {
    require_permission(meta)?;
    let settings = require_flags(bus, meta, &[FeatureFlag::Ui]).await?;
    require_partner(bus, meta, &settings).await?;
    crate::start_workspace_operation(bus, meta, DISCOVER, MODULE).await
}

/// Starts a contact sync of every confirmed mapping, or of one client's (`ui` flag; one
/// client also needs `client_sync_action`).
pub async fn start_contact_sync(
    bus: &CommandBus,
    meta: &Metadata,
    client: Option<ClientId>,
) -> Result<Started, AppError> {
    if !meta.role.allows(domain::Permission::StartOperations) {
        return Err(AppError::Forbidden(meta.role));
    }
    let mut flags = vec![FeatureFlag::Ui];
    if client.is_some() {
        flags.push(FeatureFlag::ClientSyncAction);
    }
    let settings = require_flags(bus, meta, &flags).await?;
    require_partner(bus, meta, &settings).await?;
    let subject = match client {
        Some(client_id) => {
            guard::load::<Client>(bus, meta, &client_id.to_string()).await?;
            Some(format!("client:{client_id}"))
        }
        None => None,
    };
    crate::start_workspace_operation_on(bus, meta, SYNC, MODULE, subject.as_deref()).await
}

/// The client a sync run is limited to (its subject), if any.
pub fn sync_subject_client(subject: Option<&str>) -> Option<ClientId> {
    subject?.strip_prefix("client:")?.parse().ok()
}

/// The partner connection must be configured (and a CIPP one needs the `cipp` flag).
async fn require_partner(
    bus: &CommandBus,
    meta: &Metadata,
    settings: &ContactSyncSettings,
) -> Result<PartnerConnection, AppError> {
    let partner = bus
        .load::<PartnerConnection>(&meta.workspace)
        .await?
        .aggregate;
    match &partner.target {
        None => Err(AppError::Refused {
            code: domain::ReasonCode::ProviderConnectionMissing,
            message: "configure the partner connection first".into(),
        }),
        Some(PartnerTarget::Cipp { .. }) => {
            settings
                .require(FeatureFlag::Cipp)
                .map_err(|e| e.into_refusal())?;
            Ok(partner)
        }
        Some(PartnerTarget::Direct { .. }) => Ok(partner),
    }
}

/// Whether a mapping is one a sync reads (confirmed to a client).
pub fn is_synced(mapping: &TenantMapping) -> bool {
    mapping.state == MappingState::Confirmed && mapping.confirmed_client_id.is_some()
}
