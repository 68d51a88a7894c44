//! Contact sync mutations (R5): the partner connection, clients, flags and field sync,
//! discovery, mapping confirmation, syncs and reconciliation. Owner and manager may use
//! them (operators may start a sync); each surface but the flags answers
//! `feature_disabled` while its flag is off (see `app::contacts`).

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject};
use domain::contact::ContactField;
use domain::partner_connection::PartnerConnection;
use domain::{ClientId, ContactId, EntraTenantId, ReconciliationItemId};
use secrecy::SecretString;
use uuid::Uuid;

use app::contacts::{
    ClientChange, MappingConfirmation, PartnerSetup, ResolutionChoice, MAX_CONFIRM,
};

use super::contacts::{ContactField as FieldName, FeatureFlag as Feature, PartnerConnectionKind};
use super::errors::{app_error, invalid};
use super::mutation::{meta, start_payload};
use super::query::state;
use super::types::StartRunPayload;

fn parse<T: std::str::FromStr<Err = domain::ValueError>>(id: &str) -> async_graphql::Result<T> {
    id.parse()
        .map_err(|e: domain::ValueError| invalid(e.to_string()))
}

/// The partner connection and its secret. The secret is stored encrypted and never
/// returned; switching the kind deletes the old kind's secrets.
#[derive(InputObject)]
pub struct PartnerConnectionInput {
    pub kind: PartnerConnectionKind,
    /// The partner's Entra tenant GUID (the app's home tenant).
    pub partner_tenant_id: String,
    /// The app registration's client id.
    pub client_id: String,
    #[graphql(secret)]
    pub client_secret: String,
    /// CIPP only: the instance's base URL.
    pub cipp_base_url: Option<String>,
    /// CIPP only: the client id of CIPP's API app.
    pub cipp_api_client_id: Option<String>,
}

/// The partner connection after a change: never a secret, only its fingerprint.
#[derive(SimpleObject)]
pub struct PartnerConnectionPayload {
    /// Null when not connected.
    pub kind: Option<PartnerConnectionKind>,
    pub status: super::contacts::PartnerConnectionStatus,
    pub credential_fingerprint: Option<String>,
}

impl From<&PartnerConnection> for PartnerConnectionPayload {
    fn from(p: &PartnerConnection) -> Self {
        Self {
            kind: p.target.as_ref().map(|t| match t {
                domain::PartnerTarget::Direct { .. } => PartnerConnectionKind::Direct,
                domain::PartnerTarget::Cipp { .. } => PartnerConnectionKind::Cipp,
            }),
            status: p.status.into(),
            credential_fingerprint: p.secret.as_ref().map(|s| s.fingerprint.clone()),
        }
    }
}

/// The contact sync settings after a change.
#[derive(SimpleObject)]
pub struct ContactSyncSettingsPayload {
    pub enabled_features: Vec<Feature>,
    /// The fields Entra may overwrite, as configured (in effect while `field_sync` is on).
    pub field_sync: Vec<FieldName>,
}

impl From<&domain::ContactSyncSettings> for ContactSyncSettingsPayload {
    fn from(s: &domain::ContactSyncSettings) -> Self {
        Self {
            enabled_features: domain::FeatureFlag::ALL
                .into_iter()
                .filter(|f| s.is_enabled(*f))
                .map(Feature::from)
                .collect(),
            field_sync: ContactField::ALL
                .into_iter()
                .filter(|f| s.field_sync.allows(*f))
                .map(FieldName::from)
                .collect(),
        }
    }
}

#[derive(InputObject)]
pub struct CreateClientInput {
    pub name: String,
    /// Verified domains of the customer (matched against discovered tenants).
    #[graphql(default)]
    pub domains: Vec<String>,
}

/// A contact added by hand (not yet linked to an Entra user).
#[derive(InputObject)]
pub struct CreateContactInput {
    pub client_id: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub mobile: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
}

#[derive(SimpleObject)]
pub struct ContactPayload {
    pub id: Uuid,
}

#[derive(InputObject)]
pub struct UpdateClientInput {
    pub name: Option<String>,
    pub domains: Option<Vec<String>>,
    pub active: Option<bool>,
}

#[derive(SimpleObject)]
pub struct ClientPayload {
    pub id: Uuid,
    pub name: String,
    pub domains: Vec<String>,
    pub status: String,
}

/// One row of a confirm.
#[derive(InputObject)]
pub struct MappingConfirmationInput {
    pub entra_tenant_id: String,
    pub client_id: String,
}

#[derive(SimpleObject)]
pub struct ConfirmMappingsPayload {
    /// Mappings that changed (a row confirmed to the same client already does not).
    pub changed: i32,
    /// Tenants registered as managed tenants by this confirm (with `registerTenants`).
    pub registered_tenants: i32,
}

/// What to do with a reconciliation item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case")]
pub enum ReconciliationAction {
    /// Link the user to one of the candidates (`contactId`).
    Link,
    /// Create a new contact for the user.
    CreateNew,
    /// Leave the user alone in later syncs.
    Ignore,
}

#[derive(SimpleObject)]
pub struct ReconciliationPayload {
    pub id: Uuid,
    pub resolution: Option<super::contacts::ReconciliationResolution>,
    pub resolved_by: Option<String>,
}

#[derive(Default)]
pub struct ContactMutation;

#[Object]
impl ContactMutation {
    /// Turns a contact sync feature on or off (Owner, Manager). Off hides its surface with
    /// `feature_disabled` and deletes nothing.
    async fn set_contact_sync_feature(
        &self,
        ctx: &Context<'_>,
        feature: Feature,
        enabled: bool,
    ) -> async_graphql::Result<ContactSyncSettingsPayload> {
        let settings =
            app::contacts::set_feature_flag(&state(ctx)?.bus, &meta(ctx)?, feature.into(), enabled)
                .await
                .map_err(app_error)?;
        Ok((&settings).into())
    }

    /// Sets which contact fields Entra may overwrite (Owner, Manager); the others keep
    /// their local values. Takes effect while the `field_sync` feature is on.
    async fn set_contact_field_sync(
        &self,
        ctx: &Context<'_>,
        fields: Vec<FieldName>,
    ) -> async_graphql::Result<ContactSyncSettingsPayload> {
        let config = domain::FieldSyncConfig::allowing(fields.into_iter().map(ContactField::from));
        let settings = app::contacts::set_field_sync(&state(ctx)?.bus, &meta(ctx)?, config)
            .await
            .map_err(app_error)?;
        Ok((&settings).into())
    }

    /// Connects (or re-configures) the workspace's partner connection (Owner, Manager). Validated by the next discovery.
    async fn configure_partner_connection(
        &self,
        ctx: &Context<'_>,
        input: PartnerConnectionInput,
    ) -> async_graphql::Result<PartnerConnectionPayload> {
        let partner_tenant_id: EntraTenantId = parse(&input.partner_tenant_id)?;
        let client_secret = SecretString::from(input.client_secret);
        let setup = match input.kind {
            PartnerConnectionKind::Direct => PartnerSetup::Direct {
                partner_tenant_id,
                client_id: input.client_id,
                client_secret,
            },
            PartnerConnectionKind::Cipp => PartnerSetup::Cipp {
                base_url: input
                    .cipp_base_url
                    .ok_or_else(|| invalid("cippBaseUrl is required for a CIPP connection"))?,
                api_client_id: input
                    .cipp_api_client_id
                    .ok_or_else(|| invalid("cippApiClientId is required for a CIPP connection"))?,
                partner_tenant_id,
                client_id: input.client_id,
                client_secret,
            },
        };
        let s = state(ctx)?;
        let partner =
            app::contacts::configure_partner_connection(&s.bus, &s.vault, &meta(ctx)?, &setup)
                .await
                .map_err(app_error)?;
        Ok((&partner).into())
    }

    /// Disconnects the partner connection and deletes its secrets (Owner, Manager).
    async fn disconnect_partner_connection(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<PartnerConnectionPayload> {
        let s = state(ctx)?;
        let partner = app::contacts::disconnect_partner_connection(&s.bus, &s.vault, &meta(ctx)?)
            .await
            .map_err(app_error)?;
        Ok((&partner).into())
    }

    /// Creates a client: the customer record contacts belong to (Owner, Manager).
    async fn create_client(
        &self,
        ctx: &Context<'_>,
        input: CreateClientInput,
    ) -> async_graphql::Result<ClientPayload> {
        let bus = &state(ctx)?.bus;
        let meta = meta(ctx)?;
        let id = app::contacts::create_client(bus, &meta, &input.name, input.domains)
            .await
            .map_err(app_error)?;
        client_payload(ctx, id).await
    }

    /// Renames a client, replaces its domains, or (de)activates it (Owner, Manager).
    async fn update_client(
        &self,
        ctx: &Context<'_>,
        id: String,
        input: UpdateClientInput,
    ) -> async_graphql::Result<ClientPayload> {
        let client_id: ClientId = parse(&id)?;
        let change = ClientChange {
            name: input.name,
            domains: input.domains,
            active: input.active,
        };
        app::contacts::change_client(&state(ctx)?.bus, &meta(ctx)?, client_id, &change)
            .await
            .map_err(app_error)?;
        client_payload(ctx, client_id).await
    }

    /// Adds a contact to a client's book by hand (Owner, Manager). The next sync links it
    /// to the Entra user one of whose addresses is its email.
    async fn create_contact(
        &self,
        ctx: &Context<'_>,
        input: CreateContactInput,
    ) -> async_graphql::Result<ContactPayload> {
        let client_id: ClientId = parse(&input.client_id)?;
        let email = match input.email.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(
                domain::normalize_email(raw).ok_or_else(|| invalid("email is not an address"))?,
            ),
        };
        let details = domain::contact::ContactDetails {
            name: input.name,
            email,
            phone: input.phone,
            mobile: input.mobile,
            job_title: input.job_title,
            department: input.department,
        };
        let id = app::contacts::create_contact(&state(ctx)?.bus, &meta(ctx)?, client_id, details)
            .await
            .map_err(app_error)?;
        Ok(ContactPayload { id: id.as_uuid() })
    }

    /// Starts a discovery of the partner's customer tenants, which records them and
    /// proposes a client for each. Look at the proposals before confirming.
    async fn discover_tenants(&self, ctx: &Context<'_>) -> async_graphql::Result<StartRunPayload> {
        let started = app::contacts::start_discovery(&state(ctx)?.bus, &meta(ctx)?)
            .await
            .map_err(app_error)?;
        Ok(start_payload(&started))
    }

    /// Confirms mappings of discovered tenants to clients, all or none (Owner, Manager). At most 500 rows. With `registerTenants`, each confirmed tenant that is not a
    /// managed tenant yet is registered as one, with its discovered name and domain.
    async fn confirm_tenant_mappings(
        &self,
        ctx: &Context<'_>,
        rows: Vec<MappingConfirmationInput>,
        #[graphql(default)] register_tenants: bool,
    ) -> async_graphql::Result<ConfirmMappingsPayload> {
        if rows.len() > MAX_CONFIRM {
            return Err(invalid(format!(
                "a confirm names at most {MAX_CONFIRM} rows"
            )));
        }
        let rows = rows
            .iter()
            .map(|r| {
                Ok(MappingConfirmation {
                    entra_tenant_id: parse(&r.entra_tenant_id)?,
                    client_id: parse(&r.client_id)?,
                })
            })
            .collect::<async_graphql::Result<Vec<_>>>()?;
        let (changed, registered) = app::contacts::confirm_and_register(
            &state(ctx)?.bus,
            &meta(ctx)?,
            &rows,
            register_tenants,
        )
        .await
        .map_err(app_error)?;
        Ok(ConfirmMappingsPayload {
            changed: changed as i32,
            registered_tenants: registered as i32,
        })
    }

    /// Starts a contact sync of every confirmed mapping, or of one client's. A sync
    /// already running is returned instead of a second.
    async fn sync_contacts(
        &self,
        ctx: &Context<'_>,
        client_id: Option<String>,
    ) -> async_graphql::Result<StartRunPayload> {
        let client = client_id.as_deref().map(parse::<ClientId>).transpose()?;
        let started = app::contacts::start_contact_sync(&state(ctx)?.bus, &meta(ctx)?, client)
            .await
            .map_err(app_error)?;
        Ok(start_payload(&started))
    }

    /// Resolves a reconciliation item: link one of its candidates, create a new contact,
    /// or ignore the user in later syncs (Owner, Manager). Recorded with its actor.
    async fn resolve_reconciliation_item(
        &self,
        ctx: &Context<'_>,
        id: String,
        action: ReconciliationAction,
        contact_id: Option<String>,
    ) -> async_graphql::Result<ReconciliationPayload> {
        let item_id: ReconciliationItemId = parse(&id)?;
        let choice = match action {
            ReconciliationAction::Link => {
                let contact = contact_id
                    .as_deref()
                    .ok_or_else(|| invalid("contactId is required to link"))?;
                ResolutionChoice::Link(parse::<ContactId>(contact)?)
            }
            ReconciliationAction::CreateNew => ResolutionChoice::CreateNew,
            ReconciliationAction::Ignore => ResolutionChoice::Ignore,
        };
        let item =
            app::contacts::resolve_reconciliation(&state(ctx)?.bus, &meta(ctx)?, item_id, choice)
                .await
                .map_err(app_error)?;
        Ok(ReconciliationPayload {
            id: item_id.as_uuid(),
            resolution: item.resolution.map(|r| {
                use super::contacts::ReconciliationResolution as R;
                match r {
                    domain::Resolution::LinkedExisting { .. } => R::LinkedExisting,
                    domain::Resolution::CreatedNew { .. } => R::CreatedNew,
                    domain::Resolution::Ignored => R::Ignored,
                }
            }),
            resolved_by: item.resolved_by,
        })
    }
}

async fn client_payload(ctx: &Context<'_>, id: ClientId) -> async_graphql::Result<ClientPayload> {
    let client = state(ctx)?
        .bus
        .load::<domain::Client>(&id.to_string())
        .await
        .map_err(|e| app_error(app::AppError::from(e)))?
        .aggregate;
    Ok(ClientPayload {
        id: id.as_uuid(),
        name: client.name,
        domains: client.domains,
        status: client.status.as_str().to_owned(),
    })
}
