//! The contact sync read side (R5, R8.1, R8.2): queries over the `contacts` projection's
//! read models, merged into `QueryRoot` as [`ContactQuery`]. Every role may read (readonly
//! and auditor included); every read runs in the caller's workspace-confined transaction,
//! like the other queries. Mutations are not here.
//!
//! Feature flags (R5.6, seed 002) gate the surfaces, never the data: a surface whose flag
//! is off answers the error `feature_disabled` (with the flag in `extensions.flag`) and
//! deletes nothing, so turning the flag on again shows everything as it was. Flags are read
//! from `rm_contact_settings` in the same transaction as the data.
//!
//! | flag               | surfaces it gates (reads)                                          |
//! |--------------------|--------------------------------------------------------------------|
//! | `ui`               | every surface below except `contactSyncSettings`: `partnerConnection`, `clients`, `tenantMappings`, `mappingPreview`, `contacts`, `contact`, `reconciliationItems`, `contactSyncRuns`, and `node(id:)` for a Client or Contact |
//! | `cipp`             | `partnerConnection` while the connection is of kind `cipp` (its CIPP URL and API client) |
//! | `ambiguous_queue`  | `reconciliationItems` (on top of `ui`)                             |
//! | `field_sync`       | nothing is hidden: `contactSyncSettings.effectiveFieldSync` is empty while it is off (the configured `fieldSync` is kept and shown) |
//! | `client_sync_action` | no read surface ("sync this client now" is a mutation)           |
//!
//! `contactSyncSettings` itself is never gated: it is where the flags are seen (and, with
//! the mutations, turned on).

use std::collections::{BTreeSet, HashMap};

use async_graphql::connection::Connection;
use async_graphql::resolver_utils::EnumType;
use async_graphql::{ComplexObject, Context, Enum, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::contact_settings::{FeatureDisabled, FeatureFlag as DomainFlag};
use domain::tenant_mapping::{propose, ClientSummary, DiscoveredTenant};
use domain::{ContactEvent, EntraTenantId};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::enums::stored;
use super::errors::{feature_disabled, internal, invalid};
use super::page::{connection, Cursor, PageRequest};
use super::query::{caller, parse_uuid, reader};
use super::runs::RunList;
use super::types::{Node, RunNode};

/// The run type of contact syncs in `rm_runs`.
const CONTACT_SYNC_RUN_TYPE: &str = "contacts.sync";
/// The most tenants and clients a preview reads, written into its statements (a bound
/// `LIMIT` is planned again on every execution: `PageRequest::limit`).
const PREVIEW_TENANTS: i64 = 1000;
const PREVIEW_CLIENTS: i64 = 10_000;

// Enums -------------------------------------------------------------------------------

/// Whether the partner connection can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    rename_items = "snake_case",
    remote = "domain::partner_connection::PartnerConnectionStatus"
)]
pub enum PartnerConnectionStatus {
    /// Never configured, or disconnected.
    NotConnected,
    /// Configured; no validation has succeeded since.
    PendingValidation,
    Connected,
    Error,
}

/// How the partner's customer tenants are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case")]
pub enum PartnerConnectionKind {
    /// Microsoft Graph with the partner tenant's own app.
    Direct,
    /// A CIPP instance.
    Cipp,
}

/// Which partner connection kind found a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    rename_items = "snake_case",
    remote = "domain::tenant_mapping::DiscoverySource"
)]
pub enum DiscoverySource {
    /// Microsoft Graph partner customers.
    Direct,
    /// CIPP's tenant list.
    Cipp,
}

/// Whether a client is still served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::ClientStatus")]
pub enum ClientStatus {
    Active,
    Inactive,
}

/// Where a tenant mapping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    rename_items = "snake_case",
    remote = "domain::tenant_mapping::MappingState"
)]
pub enum MappingState {
    /// A verified domain of the tenant is a domain of exactly one client.
    AutoMatched,
    /// Only the names are alike, or several clients are candidates.
    NeedsReview,
    /// Nothing matched (also a tenant no proposal was recorded for yet).
    Skipped,
    /// A person mapped the tenant to a client.
    Confirmed,
}

/// Why a proposal says what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    rename_items = "snake_case",
    remote = "domain::tenant_mapping::MatchReason"
)]
pub enum MatchReason {
    /// One client has one of the tenant's domains.
    DomainMatch,
    /// Several clients have one of the tenant's domains.
    SeveralDomainMatches,
    /// No domain matched; the names are alike. Never matched automatically.
    NameSimilarity,
    NoMatch,
}

/// Whether a contact is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::ContactStatus")]
pub enum ContactStatus {
    Active,
    /// Its Entra user was disabled or deleted; contacts are never deleted.
    Inactive,
}

/// Why a contact became inactive: what happened to its Entra user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::InactiveReason")]
pub enum InactiveReason {
    /// The account was disabled.
    Disabled,
    /// The user was deleted.
    Deleted,
}

/// A contact field Entra may overwrite when the field sync config allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::ContactField")]
pub enum ContactField {
    Name,
    Phone,
    Mobile,
    JobTitle,
    Department,
}

/// A contact sync feature flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case", remote = "domain::FeatureFlag")]
pub enum FeatureFlag {
    /// Every contact sync surface.
    Ui,
    /// "Sync this client now".
    ClientSyncAction,
    /// Partner connections through CIPP.
    Cipp,
    /// The field sync config takes effect; while off, local values always win.
    FieldSync,
    /// The reconciliation queue.
    AmbiguousQueue,
}

/// Whether a reconciliation item still waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case")]
pub enum ReconciliationStatus {
    Open,
    Resolved,
}

/// How a reconciliation item was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "snake_case")]
pub enum ReconciliationResolution {
    /// Linked to one of the candidates.
    LinkedExisting,
    /// A new contact was created for the user.
    CreatedNew,
    /// Nothing is done for this user; later syncs leave it alone.
    Ignored,
}

/// `s` as one of `G`'s values, spelled as GraphQL shows them (the stored spelling).
fn spelled<G: EnumType + Copy>(s: &str) -> async_graphql::Result<G> {
    G::items()
        .iter()
        .find(|item| item.name == s)
        .map(|item| item.value)
        .ok_or_else(|| internal(sqlx::Error::Decode(format!("unknown value `{s}`").into())))
}

/// The stored spelling of a GraphQL enum value.
fn spelling<G: EnumType + Copy + PartialEq>(value: G) -> &'static str {
    G::items()
        .iter()
        .find(|item| item.value == value)
        .map(|item| item.name)
        .unwrap_or_default()
}

// Flags -------------------------------------------------------------------------------

/// The flags turned on in the caller's workspace (none before any was set).
async fn enabled_flags(
    ctx: &Context<'_>,
    tx: &mut PgConnection,
) -> async_graphql::Result<BTreeSet<DomainFlag>> {
    let flags: Option<sqlx::types::Json<Vec<String>>> =
        sqlx::query_scalar("SELECT enabled_flags FROM rm_contact_settings WHERE workspace_id = $1")
            .bind(&caller(ctx)?.workspace)
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
    Ok(flags
        .map(|f| f.0)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| DomainFlag::parse(f))
        .collect())
}

/// `Ok` when every flag of `flags` is on in the caller's workspace.
pub(crate) async fn require(
    ctx: &Context<'_>,
    tx: &mut PgConnection,
    flags: &[DomainFlag],
) -> async_graphql::Result<()> {
    let enabled = enabled_flags(ctx, tx).await?;
    match flags.iter().find(|f| !enabled.contains(f)) {
        None => Ok(()),
        Some(&flag) => Err(feature_disabled(FeatureDisabled { flag })),
    }
}

// Types -------------------------------------------------------------------------------

/// The workspace's partner connection: how its customers' tenants are reached for contact
/// sync. Shows the target and the credential's fingerprint, never a secret.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "PartnerConnection")]
pub struct PartnerConnectionNode {
    #[graphql(skip)]
    pub kind: Option<String>,
    #[graphql(skip)]
    pub status: String,
    /// The partner's own Entra tenant.
    pub partner_tenant_id: Option<Uuid>,
    /// The CIPP instance (kind `cipp`).
    pub cipp_base_url: Option<String>,
    /// CIPP's API app that tokens are issued for (kind `cipp`).
    pub cipp_api_client_id: Option<String>,
    /// A keyed fingerprint of the current credential (never the secret).
    pub credential_fingerprint: Option<String>,
    /// When a validation last succeeded (since the last configuration).
    pub validated_at: Option<DateTime<Utc>>,
    pub last_error_reason_code: Option<String>,
    pub last_error_message: Option<String>,
    pub configured_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

#[ComplexObject]
impl PartnerConnectionNode {
    /// Null once disconnected.
    async fn kind(&self) -> async_graphql::Result<Option<PartnerConnectionKind>> {
        self.kind.as_deref().map(spelled).transpose()
    }

    async fn status(&self) -> async_graphql::Result<PartnerConnectionStatus> {
        stored::<domain::PartnerConnectionStatus, _>(&self.status)
    }
}

const PARTNER_COLUMNS: &str = "kind, status, partner_tenant_id, cipp_base_url, \
    cipp_api_client_id, credential_fingerprint, validated_at, last_error_reason_code, \
    last_error_message, configured_at, updated_at";

/// A customer of the MSP: contacts belong to it, discovered tenants are mapped to it.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "Client")]
pub struct ClientNode {
    #[graphql(skip)]
    pub client_id: Uuid,
    pub name: String,
    /// Lowercase, sorted: what tenant mapping matches on.
    pub domains: Vec<String>,
    #[graphql(skip)]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[graphql(skip)]
    pub sort_name: String,
}

#[ComplexObject]
impl ClientNode {
    /// The client id: also its global id (`node`).
    pub(crate) async fn id(&self) -> ID {
        ID(self.client_id.to_string())
    }

    async fn status(&self) -> async_graphql::Result<ClientStatus> {
        stored::<domain::ClientStatus, _>(&self.status)
    }
}

const CLIENT_COLUMNS: &str =
    "client_id, name, domains, status, created_at, updated_at, lower(name) AS sort_name";

/// A tenant discovery found, with its proposed or confirmed client and its last sync.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "TenantMapping")]
pub struct TenantMappingNode {
    /// `<workspace>:<entra tenant guid>` (shown as `id`).
    #[graphql(skip)]
    pub mapping_key: String,
    pub entra_tenant_id: Uuid,
    pub display_name: String,
    pub default_domain: String,
    /// Other verified domains, when the source lists them.
    pub verified_domains: Vec<String>,
    #[graphql(skip)]
    pub source: String,
    #[graphql(skip)]
    pub state: String,
    #[graphql(skip)]
    pub proposal_state: Option<String>,
    #[graphql(skip)]
    pub proposed_client_id: Option<Uuid>,
    #[graphql(skip)]
    pub proposal_reason: Option<String>,
    #[graphql(skip)]
    pub proposal_candidates: Vec<Uuid>,
    /// The client a person confirmed.
    pub confirmed_client_id: Option<Uuid>,
    /// Who confirmed it.
    pub confirmed_by: Option<String>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub discovered_at: DateTime<Utc>,
    #[graphql(skip)]
    pub last_sync_run_id: Option<Uuid>,
    #[graphql(skip)]
    pub last_sync_at: Option<DateTime<Utc>>,
    #[graphql(skip)]
    pub last_sync_created: Option<i32>,
    #[graphql(skip)]
    pub last_sync_linked: Option<i32>,
    #[graphql(skip)]
    pub last_sync_updated: Option<i32>,
    #[graphql(skip)]
    pub last_sync_inactivated: Option<i32>,
    #[graphql(skip)]
    pub last_sync_reactivated: Option<i32>,
    #[graphql(skip)]
    pub last_sync_queued: Option<i32>,
    #[graphql(skip)]
    pub last_sync_failed_reason: Option<String>,
    /// Whether the next sync reads only changes (a delta link is kept; the link itself
    /// is never shown). False: the next sync reads every user.
    pub has_delta_link: bool,
    #[graphql(skip)]
    pub sort_name: String,
}

#[ComplexObject]
impl TenantMappingNode {
    /// `<workspace>:<entra tenant guid>`.
    async fn id(&self) -> ID {
        ID(self.mapping_key.clone())
    }

    async fn source(&self) -> async_graphql::Result<DiscoverySource> {
        stored::<domain::DiscoverySource, _>(&self.source)
    }

    async fn state(&self) -> async_graphql::Result<MappingState> {
        stored::<domain::MappingState, _>(&self.state)
    }

    /// The proposal discovery recorded; null before one was recorded. Kept after a
    /// confirmation, for the record.
    async fn proposal(&self) -> async_graphql::Result<Option<MappingProposal>> {
        let (Some(state), Some(reason)) = (&self.proposal_state, &self.proposal_reason) else {
            return Ok(None);
        };
        Ok(Some(MappingProposal {
            state: stored::<domain::MappingState, _>(state)?,
            reason: stored::<domain::MatchReason, _>(reason)?,
            client_id: self.proposed_client_id,
            candidate_ids: self.proposal_candidates.clone(),
        }))
    }

    /// The client a person confirmed.
    async fn confirmed_client(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<ClientNode>> {
        let Some(id) = self.confirmed_client_id else {
            return Ok(None);
        };
        Ok(clients_by_id(ctx, &[id]).await?.remove(&id))
    }

    /// What the last contact sync did in this tenant; null before the first.
    async fn last_sync(&self) -> Option<TenantSyncResultNode> {
        let (run_id, recorded_at) = (self.last_sync_run_id?, self.last_sync_at?);
        Some(TenantSyncResultNode {
            run_id,
            entra_tenant_id: self.entra_tenant_id,
            client_id: self.confirmed_client_id,
            created: self.last_sync_created.unwrap_or(0),
            linked: self.last_sync_linked.unwrap_or(0),
            updated: self.last_sync_updated.unwrap_or(0),
            inactivated: self.last_sync_inactivated.unwrap_or(0),
            reactivated: self.last_sync_reactivated.unwrap_or(0),
            queued: self.last_sync_queued.unwrap_or(0),
            failed_reason: self.last_sync_failed_reason.clone(),
            recorded_at,
        })
    }
}

const MAPPING_COLUMNS: &str = "mapping_key, entra_tenant_id, display_name, default_domain, \
    verified_domains, source, state, proposal_state, proposed_client_id, proposal_reason, \
    proposal_candidates, \
    confirmed_client_id, confirmed_by, confirmed_at, discovered_at, last_sync_run_id, \
    last_sync_at, last_sync_created, last_sync_linked, last_sync_updated, \
    last_sync_inactivated, last_sync_reactivated, last_sync_queued, last_sync_failed_reason, \
    has_delta_link, lower(display_name) AS sort_name";

/// A proposed mapping of a discovered tenant to a client.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex)]
pub struct MappingProposal {
    /// `auto_matched`, `needs_review` or `skipped`; never `confirmed`.
    pub state: MappingState,
    pub reason: MatchReason,
    /// The client an automatic match proposes.
    pub client_id: Option<Uuid>,
    /// Every client considered plausible.
    pub candidate_ids: Vec<Uuid>,
}

#[ComplexObject]
impl MappingProposal {
    /// The client an automatic match proposes.
    async fn client(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ClientNode>> {
        let Some(id) = self.client_id else {
            return Ok(None);
        };
        Ok(clients_by_id(ctx, &[id]).await?.remove(&id))
    }

    /// Every client considered plausible, by name.
    async fn candidates(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ClientNode>> {
        let mut found: Vec<ClientNode> = clients_by_id(ctx, &self.candidate_ids)
            .await?
            .into_values()
            .collect();
        found.sort_by(|a, b| (&a.sort_name, a.client_id).cmp(&(&b.sort_name, b.client_id)));
        Ok(found)
    }
}

/// A discovered tenant as the preview would map it now, against the current clients.
#[derive(Debug, Clone, SimpleObject)]
pub struct MappingPreview {
    /// The mapping's id, `<workspace>:<entra tenant guid>`.
    pub mapping_id: ID,
    pub entra_tenant_id: Uuid,
    pub display_name: String,
    pub default_domain: String,
    /// Where the mapping stands now (the preview changes nothing).
    pub current_state: MappingState,
    pub proposal: MappingProposal,
}

/// What one contact sync did in one mapped tenant.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(name = "ContactSyncTenantResult")]
pub struct TenantSyncResultNode {
    pub run_id: Uuid,
    pub entra_tenant_id: Uuid,
    /// The client the tenant was mapped to then.
    pub client_id: Option<Uuid>,
    pub created: i32,
    pub linked: i32,
    pub updated: i32,
    pub inactivated: i32,
    pub reactivated: i32,
    /// Users sent to the reconciliation queue.
    pub queued: i32,
    /// Set when this tenant's sync failed (the counts are what was done before).
    pub failed_reason: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

/// A person at a client, optionally linked to the Entra user it mirrors.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "Contact")]
pub struct ContactNode {
    #[graphql(skip)]
    pub contact_id: Uuid,
    pub client_id: Uuid,
    pub name: String,
    /// Normalized: trimmed and lowercase.
    pub email: Option<String>,
    pub phone: Option<String>,
    pub mobile: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    #[graphql(skip)]
    pub status: String,
    #[graphql(skip)]
    pub inactive_reason: Option<String>,
    #[graphql(skip)]
    pub entra_tenant_id: Option<Uuid>,
    #[graphql(skip)]
    pub entra_object_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[graphql(skip)]
    pub sort_name: String,
}

#[ComplexObject]
impl ContactNode {
    /// The contact id: also its global id (`node`).
    pub(crate) async fn id(&self) -> ID {
        ID(self.contact_id.to_string())
    }

    async fn status(&self) -> async_graphql::Result<ContactStatus> {
        stored::<domain::ContactStatus, _>(&self.status)
    }

    /// Why the contact is inactive; null while active.
    async fn inactive_reason(&self) -> async_graphql::Result<Option<InactiveReason>> {
        self.inactive_reason
            .as_deref()
            .map(stored::<domain::InactiveReason, _>)
            .transpose()
    }

    /// Whether the contact is linked to an Entra user.
    async fn linked(&self) -> bool {
        self.entra_object_id.is_some()
    }

    /// The Entra user the contact mirrors; null while unlinked.
    async fn entra_user(&self) -> Option<EntraUser> {
        Some(EntraUser {
            entra_tenant_id: self.entra_tenant_id?,
            object_id: self.entra_object_id?,
        })
    }

    async fn client(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ClientNode>> {
        Ok(clients_by_id(ctx, &[self.client_id])
            .await?
            .remove(&self.client_id))
    }

    /// Every change of the contact, oldest first, read from its events: complete even
    /// while the read models catch up.
    async fn history(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ContactHistoryEvent>> {
        let mut tx = reader(ctx).await?;
        let events = store::history::stream(
            &mut tx,
            domain::Contact::TYPE,
            &self.contact_id.to_string(),
            None,
        )
        .await
        .map_err(internal)?;
        events.iter().map(ContactHistoryEvent::of).collect()
    }
}

const CONTACT_COLUMNS: &str = "contact_id, client_id, name, email, phone, mobile, job_title, \
    department, status, inactive_reason, entra_tenant_id, entra_object_id, created_at, \
    updated_at, lower(name) AS sort_name";

/// An Entra user, by its tenant and object id.
#[derive(Debug, Clone, SimpleObject)]
pub struct EntraUser {
    pub entra_tenant_id: Uuid,
    pub object_id: Uuid,
}

/// One change of a contact's field: what it was and what it became.
#[derive(Debug, Clone, SimpleObject)]
pub struct ContactFieldChange {
    /// `email` for the address set at creation; otherwise a field Entra may overwrite.
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// One event of a contact's history.
#[derive(Debug, Clone, SimpleObject)]
pub struct ContactHistoryEvent {
    /// The event's global position.
    pub position: i64,
    /// The contact's version after it.
    pub sequence: i64,
    /// When the event was committed.
    pub recorded_at: DateTime<Utc>,
    /// When it happened, by the clock of whoever decided it.
    pub at: DateTime<Utc>,
    /// `ContactCreated`, `ContactLinked`, `ContactFieldsUpdated`, `ContactMarkedInactive`
    /// or `ContactReactivated`.
    #[graphql(name = "type")]
    pub event_type: String,
    /// Who recorded it (a person's subject, or `workflow:<instance>` for a sync).
    pub actor: Option<String>,
    pub role: Option<String>,
    /// The fields it set (a creation: every field given).
    pub changes: Vec<ContactFieldChange>,
    /// The Entra user it linked the contact to.
    pub entra_user: Option<EntraUser>,
    /// Why it marked the contact inactive.
    pub inactive_reason: Option<InactiveReason>,
}

impl ContactHistoryEvent {
    fn of(e: &store::StoredEvent) -> async_graphql::Result<Self> {
        let event = store::history::decode::<domain::Contact>(e)
            .map_err(|err| internal(sqlx::Error::Decode(Box::new(err))))?;
        let change = |field: &str, new: Option<String>| ContactFieldChange {
            field: field.to_owned(),
            old: None,
            new,
        };
        let (at, changes, entra_user, inactive_reason) = match event {
            ContactEvent::ContactCreated {
                details,
                created_at,
                ..
            } => {
                let mut changes = vec![
                    change("name", Some(details.name.clone())),
                    change("email", details.email.clone()),
                ];
                for field in [
                    domain::ContactField::Phone,
                    domain::ContactField::Mobile,
                    domain::ContactField::JobTitle,
                    domain::ContactField::Department,
                ] {
                    if let Some(v) = details.get(field) {
                        changes.push(change(field.as_str(), Some(v.to_owned())));
                    }
                }
                (created_at, changes, None, None)
            }
            ContactEvent::ContactLinked { entra_user, at } => (
                at,
                Vec::new(),
                Some(EntraUser {
                    entra_tenant_id: entra_user.entra_tenant_id.as_uuid(),
                    object_id: entra_user.object_id,
                }),
                None,
            ),
            ContactEvent::ContactFieldsUpdated { changes, at } => (
                at,
                changes
                    .into_iter()
                    .map(|(field, c)| ContactFieldChange {
                        field: field.as_str().to_owned(),
                        old: c.old,
                        new: c.new,
                    })
                    .collect(),
                None,
                None,
            ),
            ContactEvent::ContactMarkedInactive { reason, at } => {
                (at, Vec::new(), None, Some(InactiveReason::from(reason)))
            }
            ContactEvent::ContactReactivated { at } => (at, Vec::new(), None, None),
        };
        Ok(Self {
            position: e.position.global_position,
            sequence: e.sequence,
            recorded_at: e.recorded_at,
            at,
            event_type: e.event_type.clone(),
            actor: e.meta("actor").map(str::to_owned),
            role: e.meta("role").map(str::to_owned),
            changes,
            entra_user,
            inactive_reason,
        })
    }
}

/// An Entra user the sync could not place on its own: several contacts are plausible.
#[derive(Debug, Clone, SimpleObject, sqlx::FromRow)]
#[graphql(complex, name = "ReconciliationItem")]
pub struct ReconciliationItemNode {
    #[graphql(skip)]
    pub item_id: Uuid,
    /// The client whose contacts are the candidates.
    pub client_id: Uuid,
    pub entra_tenant_id: Uuid,
    /// The Entra user's object id.
    pub entra_object_id: Uuid,
    /// The user's display name upstream.
    pub upstream_display_name: Option<String>,
    /// The normalized addresses the user answers to.
    pub upstream_emails: Vec<String>,
    /// The plausible contacts' ids.
    pub candidate_ids: Vec<Uuid>,
    #[graphql(skip)]
    pub status: String,
    #[graphql(skip)]
    pub resolution: Option<String>,
    /// The contact a resolution linked or created.
    pub resolution_contact_id: Option<Uuid>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The sync run that queued it last.
    pub queued_run_id: Option<Uuid>,
    pub queued_at: DateTime<Utc>,
}

#[ComplexObject]
impl ReconciliationItemNode {
    async fn id(&self) -> ID {
        ID(self.item_id.to_string())
    }

    async fn status(&self) -> async_graphql::Result<ReconciliationStatus> {
        spelled(&self.status)
    }

    /// How it was resolved; null while open.
    async fn resolution(&self) -> async_graphql::Result<Option<ReconciliationResolution>> {
        self.resolution.as_deref().map(spelled).transpose()
    }

    /// The plausible contacts, by name.
    async fn candidates(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ContactNode>> {
        let mut tx = reader(ctx).await?;
        sqlx::query_as(&format!(
            "SELECT {CONTACT_COLUMNS} FROM rm_contacts WHERE contact_id = ANY($1) \
             AND workspace_id = $2 ORDER BY lower(name), contact_id"
        ))
        .bind(&self.candidate_ids)
        .bind(&caller(ctx)?.workspace)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)
    }
}

const ITEM_COLUMNS: &str = "item_id, client_id, entra_tenant_id, entra_object_id, \
    upstream_display_name, upstream_emails, candidates AS candidate_ids, status, resolution, \
    resolution_contact_id, resolved_by, resolved_at, queued_run_id, queued_at";

/// A contact sync run with what it did in each mapped tenant.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex)]
pub struct ContactSyncRun {
    /// The run itself (status, outcome, steps, history).
    pub run: RunNode,
}

#[ComplexObject]
impl ContactSyncRun {
    /// The run id.
    async fn id(&self) -> ID {
        ID(self.run.run_id.to_string())
    }

    /// One result per tenant the run has recorded, by tenant.
    async fn tenant_results(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<TenantSyncResultNode>> {
        let mut tx = reader(ctx).await?;
        sqlx::query_as(
            "SELECT run_id, entra_tenant_id, client_id, created, linked, updated, inactivated, \
             reactivated, queued, failed_reason, recorded_at FROM rm_contact_sync_results \
             WHERE run_id = $1 AND workspace_id = $2 ORDER BY entra_tenant_id LIMIT 1000",
        )
        .bind(self.run.run_id)
        .bind(&caller(ctx)?.workspace)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)
    }
}

/// The workspace's contact sync settings: the field sync config and the feature flags.
#[derive(Debug, Clone, SimpleObject)]
pub struct ContactSyncSettingsNode {
    /// The fields Entra may overwrite, as configured.
    pub field_sync: Vec<ContactField>,
    /// The fields Entra overwrites now: `fieldSync` while the `field_sync` flag is on,
    /// none while it is off (local values win).
    pub effective_field_sync: Vec<ContactField>,
    /// Every flag, on or off.
    pub flags: Vec<FeatureFlagState>,
    /// When the settings last changed; null while never set.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A feature flag and whether it is on.
#[derive(Debug, Clone, SimpleObject)]
pub struct FeatureFlagState {
    pub flag: FeatureFlag,
    pub enabled: bool,
}

// Lookups -----------------------------------------------------------------------------

/// The clients of `ids` the caller's workspace has.
async fn clients_by_id(
    ctx: &Context<'_>,
    ids: &[Uuid],
) -> async_graphql::Result<HashMap<Uuid, ClientNode>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut tx = reader(ctx).await?;
    let rows: Vec<ClientNode> = sqlx::query_as(&format!(
        "SELECT {CLIENT_COLUMNS} FROM rm_clients WHERE client_id = ANY($1) AND workspace_id = $2"
    ))
    .bind(ids)
    .bind(&caller(ctx)?.workspace)
    .fetch_all(&mut *tx)
    .await
    .map_err(internal)?;
    Ok(rows.into_iter().map(|c| (c.client_id, c)).collect())
}

/// A client or contact by its id, for `node(id:)`; `None` when neither has it. Behind the
/// `ui` flag, as the lists are.
pub(crate) async fn node(
    ctx: &Context<'_>,
    tx: &mut PgConnection,
    id: Uuid,
) -> async_graphql::Result<Option<Node>> {
    let client: Option<ClientNode> = sqlx::query_as(&format!(
        "SELECT {CLIENT_COLUMNS} FROM rm_clients WHERE client_id = $1 AND workspace_id = $2"
    ))
    .bind(id)
    .bind(&caller(ctx)?.workspace)
    .fetch_optional(&mut *tx)
    .await
    .map_err(internal)?;
    let found = match client {
        Some(c) => Some(Node::Client(c)),
        None => {
            let contact: Option<ContactNode> = sqlx::query_as(&format!(
                "SELECT {CONTACT_COLUMNS} FROM rm_contacts WHERE contact_id = $1 AND workspace_id = $2"
            ))
            .bind(id)
            .bind(&caller(ctx)?.workspace)
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
            contact.map(Node::Contact)
        }
    };
    if found.is_some() {
        require(ctx, tx, &[DomainFlag::Ui]).await?;
    }
    Ok(found)
}

/// `text` escaped for `LIKE` (its `%`, `_` and `\` match only themselves), lowercase.
fn like_escaped(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Appends the keyset condition `(lower-name, id) > (cursor)` when the page has a cursor.
fn after_name(
    q: &mut QueryBuilder<'_, Postgres>,
    page: &PageRequest,
    name_expr: &str,
    id_expr: &str,
    what: &str,
) -> async_graphql::Result<()> {
    if let (Some(name), Some(id)) = (page.key_str(0)?, page.key_str(1)?) {
        q.push(format!(" AND ({name_expr}, {id_expr}) > ("))
            .push_bind(name)
            .push(", ");
        match what {
            // Mapping ids are keys, not UUIDs.
            "mapping" => q.push_bind(id),
            _ => q.push_bind(parse_uuid(&id, what)?),
        };
        q.push(")");
    }
    Ok(())
}

// Queries -----------------------------------------------------------------------------

/// The contact sync queries.
#[derive(Default)]
pub struct ContactQuery;

#[Object]
impl ContactQuery {
    // R5.1, R5.6.
    /// The workspace's partner connection for contact sync: its kind, target, status and
    /// credential fingerprint (never a secret). Null when none was ever configured. Behind
    /// the `ui` flag, and the `cipp` flag while its kind is `cipp`.
    async fn partner_connection(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<PartnerConnectionNode>> {
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui]).await?;
        let found: Option<PartnerConnectionNode> = sqlx::query_as(&format!(
            "SELECT {PARTNER_COLUMNS} FROM rm_partner_connections WHERE workspace_id = $1"
        ))
        .bind(&caller(ctx)?.workspace)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        if found.as_ref().and_then(|p| p.kind.as_deref()) == Some("cipp") {
            require(ctx, &mut tx, &[DomainFlag::Cipp]).await?;
        }
        Ok(found)
    }

    // R5.2.
    /// The workspace's clients, by name (case-insensitive); `status` keeps those in it.
    /// Behind the `ui` flag.
    async fn clients(
        &self,
        ctx: &Context<'_>,
        status: Option<ClientStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, ClientNode>> {
        let page = PageRequest::parse(first, after)?;
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui]).await?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {CLIENT_COLUMNS} FROM rm_clients WHERE workspace_id = "
        ));
        q.push_bind(&caller(ctx)?.workspace);
        if let Some(s) = status {
            q.push(" AND status = ")
                .push_bind(domain::ClientStatus::from(s).as_str());
        }
        after_name(&mut q, &page, "lower(name)", "client_id", "client")?;
        q.push(" ORDER BY lower(name), client_id LIMIT ")
            .push(page.limit());
        let rows: Vec<ClientNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |c| {
            vec![c.sort_name.clone().into(), c.client_id.to_string().into()]
        }))
    }

    // R5.2, R5.3.
    /// The tenants discovery found, by name, each with its proposal, confirmed client and
    /// last sync; `state` keeps those in it. Behind the `ui` flag.
    async fn tenant_mappings(
        &self,
        ctx: &Context<'_>,
        state: Option<MappingState>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, TenantMappingNode>> {
        let page = PageRequest::parse(first, after)?;
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui]).await?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {MAPPING_COLUMNS} FROM rm_tenant_mappings WHERE workspace_id = "
        ));
        q.push_bind(&caller(ctx)?.workspace);
        if let Some(s) = state {
            q.push(" AND state = ")
                .push_bind(domain::MappingState::from(s).as_str());
        }
        after_name(
            &mut q,
            &page,
            "lower(display_name)",
            "mapping_key",
            "mapping",
        )?;
        q.push(" ORDER BY lower(display_name), mapping_key LIMIT ")
            .push(page.limit());
        let rows: Vec<TenantMappingNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |m| {
            vec![m.sort_name.clone().into(), m.mapping_key.clone().into()]
        }))
    }

    // R5.2: the preview writes nothing.
    /// How every discovered tenant (up to 1000, by name) would be mapped now against the
    /// workspace's current clients: computed when asked, it writes nothing. Only a
    /// confirmation maps a tenant. Behind the `ui` flag.
    async fn mapping_preview(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<MappingPreview>> {
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui]).await?;
        let workspace = &caller(ctx)?.workspace;
        let mappings: Vec<TenantMappingNode> = sqlx::query_as(&format!(
            "SELECT {MAPPING_COLUMNS} FROM rm_tenant_mappings WHERE workspace_id = $1 \
             ORDER BY lower(display_name), mapping_key LIMIT {PREVIEW_TENANTS}"
        ))
        .bind(workspace)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
        let clients: Vec<ClientNode> = sqlx::query_as(&format!(
            "SELECT {CLIENT_COLUMNS} FROM rm_clients WHERE workspace_id = $1 \
             ORDER BY lower(name), client_id LIMIT {PREVIEW_CLIENTS}"
        ))
        .bind(workspace)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
        let summaries = clients
            .into_iter()
            .map(|c| {
                Ok(ClientSummary {
                    client_id: domain::ClientId(c.client_id),
                    status: stored::<domain::ClientStatus, ClientStatus>(&c.status)?.into(),
                    name: c.name,
                    domains: c.domains,
                })
            })
            .collect::<async_graphql::Result<Vec<_>>>()?;
        let tenants: Vec<DiscoveredTenant> = mappings
            .iter()
            .map(|m| DiscoveredTenant {
                entra_tenant_id: EntraTenantId::from(m.entra_tenant_id),
                display_name: m.display_name.clone(),
                default_domain: m.default_domain.clone(),
                verified_domains: m.verified_domains.clone(),
            })
            .collect();
        let proposals = propose(&tenants, &summaries);
        mappings
            .into_iter()
            .zip(proposals)
            .map(|(m, p)| {
                Ok(MappingPreview {
                    mapping_id: ID(m.mapping_key),
                    entra_tenant_id: m.entra_tenant_id,
                    display_name: m.display_name,
                    default_domain: m.default_domain,
                    current_state: stored::<domain::MappingState, _>(&m.state)?,
                    proposal: MappingProposal {
                        state: p.state.into(),
                        reason: p.reason.into(),
                        client_id: p.client_id.map(|c| c.0),
                        candidate_ids: p.candidates.into_iter().map(|c| c.0).collect(),
                    },
                })
            })
            .collect()
    }

    // R5.4, R8.2.
    /// The workspace's contacts by name (case-insensitive), then id. Filters: `clientId`,
    /// `status`, `linked` (to an Entra user or not), and `search`: contacts whose email
    /// starts with it, or whose name or one of its words does (case-insensitive). Behind
    /// the `ui` flag.
    #[allow(clippy::too_many_arguments)]
    async fn contacts(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "clientId")] client_id: Option<String>,
        status: Option<ContactStatus>,
        linked: Option<bool>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, ContactNode>> {
        let page = PageRequest::parse(first, after)?;
        let client_id = client_id.map(|c| parse_uuid(&c, "client")).transpose()?;
        let search = search.filter(|s| !s.trim().is_empty());
        if search.as_ref().is_some_and(|s| s.chars().count() > 200) {
            return Err(invalid("`search` is at most 200 characters"));
        }
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui]).await?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {CONTACT_COLUMNS} FROM rm_contacts WHERE workspace_id = "
        ));
        q.push_bind(&caller(ctx)?.workspace);
        if let Some(c) = client_id {
            q.push(" AND client_id = ").push_bind(c);
        }
        if let Some(s) = status {
            q.push(" AND status = ")
                .push_bind(domain::ContactStatus::from(s).as_str());
        }
        match linked {
            Some(true) => q.push(" AND entra_object_id IS NOT NULL"),
            Some(false) => q.push(" AND entra_object_id IS NULL"),
            None => &mut q,
        };
        if let Some(search) = search {
            let escaped = like_escaped(&search);
            q.push(" AND (email LIKE ")
                .push_bind(format!("{escaped}%"))
                .push(" OR lower(name) LIKE ")
                .push_bind(format!("{escaped}%"))
                .push(" OR lower(name) LIKE ")
                .push_bind(format!("% {escaped}%"))
                .push(")");
        }
        after_name(&mut q, &page, "lower(name)", "contact_id", "contact")?;
        q.push(" ORDER BY lower(name), contact_id LIMIT ")
            .push(page.limit());
        let rows: Vec<ContactNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |c| {
            vec![c.sort_name.clone().into(), c.contact_id.to_string().into()]
        }))
    }

    // R5.4, R5.5: history from the contact's events.
    /// One contact, with its history; null when the workspace has none with this id.
    /// Behind the `ui` flag.
    async fn contact(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<ContactNode>> {
        let id = parse_uuid(&id, "contact")?;
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui]).await?;
        sqlx::query_as(&format!(
            "SELECT {CONTACT_COLUMNS} FROM rm_contacts WHERE contact_id = $1 AND workspace_id = $2"
        ))
        .bind(id)
        .bind(&caller(ctx)?.workspace)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)
    }

    // R5.4, R5.6.
    /// The reconciliation queue: upstream users with several plausible contacts, oldest
    /// first; `status` keeps the open or the resolved ones. Behind the `ui` and
    /// `ambiguous_queue` flags.
    async fn reconciliation_items(
        &self,
        ctx: &Context<'_>,
        status: Option<ReconciliationStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, ReconciliationItemNode>> {
        let page = PageRequest::parse(first, after)?;
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui, DomainFlag::AmbiguousQueue]).await?;
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {ITEM_COLUMNS} FROM rm_reconciliation_items WHERE workspace_id = "
        ));
        q.push_bind(&caller(ctx)?.workspace);
        if let Some(s) = status {
            q.push(" AND status = ").push_bind(spelling(s));
        }
        if let Some((at, id)) = page.time_and_id("reconciliation item")? {
            q.push(" AND (queued_at, item_id) > (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY queued_at, item_id LIMIT ")
            .push(page.limit());
        let rows: Vec<ReconciliationItemNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        Ok(connection(&page, rows, |i| {
            vec![
                i.queued_at.to_rfc3339().into(),
                i.item_id.to_string().into(),
            ]
        }))
    }

    // R5.3.
    /// Contact sync runs, newest first, each with its per-tenant results. Behind the `ui`
    /// flag.
    async fn contact_sync_runs(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<Cursor, ContactSyncRun>> {
        let page = PageRequest::parse(first, after)?;
        let mut tx = reader(ctx).await?;
        require(ctx, &mut tx, &[DomainFlag::Ui]).await?;
        let mut list = RunList::page(&caller(ctx)?.workspace, &page)?;
        list.run_type = Some(CONTACT_SYNC_RUN_TYPE.to_owned());
        let mut q = list.query();
        let rows: Vec<RunNode> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(internal)?;
        let runs = rows.into_iter().map(|run| ContactSyncRun { run }).collect();
        Ok(connection(&page, runs, |r| {
            vec![
                r.run.queued_at.to_rfc3339().into(),
                r.run.run_id.to_string().into(),
            ]
        }))
    }

    // R5.5, R5.6.
    /// The workspace's contact sync settings: which fields Entra may overwrite and which
    /// feature flags are on. Never behind a flag (it is where flags are seen).
    async fn contact_sync_settings(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<ContactSyncSettingsNode> {
        let mut tx = reader(ctx).await?;
        let row: Option<(sqlx::types::Json<Vec<String>>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT field_sync, updated_at FROM rm_contact_settings WHERE workspace_id = $1",
        )
        .bind(&caller(ctx)?.workspace)
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        let enabled = enabled_flags(ctx, &mut tx).await?;
        let (fields, updated_at) = match row {
            Some((fields, at)) => (fields.0, Some(at)),
            None => (Vec::new(), None),
        };
        let field_sync: Vec<ContactField> = fields
            .iter()
            .filter_map(|f| domain::ContactField::parse(f))
            .map(ContactField::from)
            .collect();
        let effective_field_sync = match enabled.contains(&DomainFlag::FieldSync) {
            true => field_sync.clone(),
            false => Vec::new(),
        };
        Ok(ContactSyncSettingsNode {
            field_sync,
            effective_field_sync,
            flags: DomainFlag::ALL
                .into_iter()
                .map(|flag| FeatureFlagState {
                    flag: flag.into(),
                    enabled: enabled.contains(&flag),
                })
                .collect(),
            updated_at,
        })
    }
}
