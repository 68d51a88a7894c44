//! The contact sync read models (R5, R8.1), one projection for the six aggregates of
//! contact sync:
//!
//! | aggregate               | table                                                  |
//! |-------------------------|--------------------------------------------------------|
//! | `partner_connection`    | `rm_partner_connections` (one row per workspace)        |
//! | `client`                | `rm_clients`                                           |
//! | `tenant_mapping`        | `rm_tenant_mappings`, `rm_contact_sync_results`         |
//! | `contact`               | `rm_contacts`                                          |
//! | `reconciliation_item`   | `rm_reconciliation_items`                              |
//! | `contact_sync_settings` | `rm_contact_settings` (one row per workspace)           |
//!
//! Each row depends only on its own aggregate's events, so the aggregates are applied one
//! after the other within a batch. Every statement is guarded by the row's `version`
//! (a per-run result row is written once: the mapping records a run only once), so an
//! event applied twice leaves the same rows. Secrets never reach these tables: events carry
//! only the credential's reference and fingerprint, and of those only the fingerprint is
//! kept; a mapping's delta link is kept as "has one".

use cqrs_es::Aggregate;
use domain::contact::{ContactField, ContactStatus};
use domain::partner_connection::{PartnerConnectionStatus, PartnerTarget};
use domain::tenant_mapping::{MappingState, TenantSyncResult};
use domain::{
    Client, ClientEvent, ClientStatus, Contact, ContactEvent, ContactSyncSettings,
    PartnerConnection, PartnerConnectionEvent, ReconciliationEvent, ReconciliationItem, Resolution,
    SettingsEvent, TenantMapping,
};
use domain::{MappingEvent, RunId};
use sqlx::PgConnection;
use store::{Consumer, ConsumerError, Payloads, StoredEvent};
use uuid::Uuid;

use crate::event::{events_of, uuid_id, versioned};
use crate::Projection;

/// Projects the contact sync aggregates into their `rm_*` tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct Contacts;

const NAME: &str = "contacts";

/// The tables this projection owns (truncated together on rebuild).
const TABLES: &[&str] = &[
    "rm_partner_connections",
    "rm_clients",
    "rm_tenant_mappings",
    "rm_contact_sync_results",
    "rm_contacts",
    "rm_reconciliation_items",
    "rm_contact_settings",
];

#[async_trait::async_trait]
impl Consumer for Contacts {
    fn name(&self) -> &str {
        NAME
    }

    fn payloads_of(&self) -> Payloads {
        Payloads::OfAggregates(&[
            PartnerConnection::TYPE,
            Client::TYPE,
            TenantMapping::TYPE,
            Contact::TYPE,
            ReconciliationItem::TYPE,
            ContactSyncSettings::TYPE,
        ])
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        for decoded in events_of::<PartnerConnection>(NAME, events) {
            let (e, event) = decoded?;
            partner_connection(tx, e, event).await?;
        }
        for decoded in events_of::<Client>(NAME, events) {
            let (e, event) = decoded?;
            client(tx, e, event).await?;
        }
        for decoded in events_of::<TenantMapping>(NAME, events) {
            let (e, event) = decoded?;
            mapping(tx, e, event).await?;
        }
        for decoded in events_of::<Contact>(NAME, events) {
            let (e, event) = decoded?;
            contact(tx, e, event).await?;
        }
        for decoded in events_of::<ReconciliationItem>(NAME, events) {
            let (e, event) = decoded?;
            reconciliation(tx, e, event).await?;
        }
        for decoded in events_of::<ContactSyncSettings>(NAME, events) {
            let (e, event) = decoded?;
            settings(tx, e, event).await?;
        }
        Ok(())
    }
}

impl Projection for Contacts {
    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }
}

// Partner connection ------------------------------------------------------------------

const PARTNER_CONFIGURED: &str = "\
    INSERT INTO rm_partner_connections AS p (workspace_id, version, kind, partner_tenant_id, \
        cipp_base_url, cipp_api_client_id, credential_fingerprint, status, configured_at, \
        updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
    ON CONFLICT (workspace_id) DO UPDATE SET version = EXCLUDED.version, kind = EXCLUDED.kind, \
        partner_tenant_id = EXCLUDED.partner_tenant_id, cipp_base_url = EXCLUDED.cipp_base_url, \
        cipp_api_client_id = EXCLUDED.cipp_api_client_id, \
        credential_fingerprint = EXCLUDED.credential_fingerprint, status = EXCLUDED.status, \
        validated_at = NULL, configured_at = EXCLUDED.configured_at, \
        updated_at = EXCLUDED.updated_at \
    WHERE p.version < EXCLUDED.version";
const PARTNER_VALIDATED: &str = "UPDATE rm_partner_connections SET version = $2, status = $3, \
    validated_at = $4, updated_at = $4 WHERE workspace_id = $1 AND version < $2";
const PARTNER_ERRORED: &str = "UPDATE rm_partner_connections SET version = $2, status = $3, \
    last_error_reason_code = $4, last_error_message = $5, updated_at = $6 \
    WHERE workspace_id = $1 AND version < $2";
// The configuration and its secret are gone; the last error stays on record.
const PARTNER_DISCONNECTED: &str = "UPDATE rm_partner_connections SET version = $2, \
    status = $3, kind = NULL, partner_tenant_id = NULL, cipp_base_url = NULL, \
    cipp_api_client_id = NULL, credential_fingerprint = NULL, validated_at = NULL, \
    updated_at = $4 WHERE workspace_id = $1 AND version < $2";

async fn partner_connection(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: PartnerConnectionEvent,
) -> Result<(), ConsumerError> {
    let workspace = e.aggregate_id.as_str();
    let query = match event {
        PartnerConnectionEvent::PartnerConnectionConfigured {
            target,
            secret,
            configured_at,
            ..
        } => {
            let kind = target.kind();
            let (partner_tenant_id, base_url, api_client_id) = match target {
                PartnerTarget::Direct { partner_tenant_id } => {
                    (partner_tenant_id.as_uuid(), None, None)
                }
                PartnerTarget::Cipp {
                    base_url,
                    api_client_id,
                    partner_tenant_id,
                } => (
                    partner_tenant_id.as_uuid(),
                    Some(base_url),
                    Some(api_client_id),
                ),
            };
            versioned(PARTNER_CONFIGURED, workspace, e)
                .bind(kind)
                .bind(partner_tenant_id)
                .bind(base_url)
                .bind(api_client_id)
                .bind(secret.fingerprint)
                .bind(PartnerConnectionStatus::PendingValidation.as_str())
                .bind(configured_at)
        }
        PartnerConnectionEvent::PartnerConnectionValidated { validated_at } => {
            versioned(PARTNER_VALIDATED, workspace, e)
                .bind(PartnerConnectionStatus::Connected.as_str())
                .bind(validated_at)
        }
        PartnerConnectionEvent::PartnerConnectionErrored {
            reason,
            message,
            at,
        } => versioned(PARTNER_ERRORED, workspace, e)
            .bind(PartnerConnectionStatus::Error.as_str())
            .bind(reason.as_str())
            .bind(message)
            .bind(at),
        PartnerConnectionEvent::PartnerConnectionDisconnected { at, .. } => {
            versioned(PARTNER_DISCONNECTED, workspace, e)
                .bind(PartnerConnectionStatus::NotConnected.as_str())
                .bind(at)
        }
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

// Clients ------------------------------------------------------------------------------

const CLIENT_CREATED: &str = "\
    INSERT INTO rm_clients AS c (client_id, version, workspace_id, name, domains, status, \
        created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
    ON CONFLICT (client_id) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, name = EXCLUDED.name, domains = EXCLUDED.domains, \
        status = EXCLUDED.status, created_at = EXCLUDED.created_at, \
        updated_at = EXCLUDED.updated_at \
    WHERE c.version < EXCLUDED.version";
const CLIENT_RENAMED: &str = "UPDATE rm_clients SET version = $2, name = $3, updated_at = $4 \
    WHERE client_id = $1 AND version < $2";
const CLIENT_DOMAINS: &str = "UPDATE rm_clients SET version = $2, domains = $3, \
    updated_at = $4 WHERE client_id = $1 AND version < $2";
const CLIENT_STATUS: &str = "UPDATE rm_clients SET version = $2, status = $3, updated_at = $4 \
    WHERE client_id = $1 AND version < $2";

async fn client(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: ClientEvent,
) -> Result<(), ConsumerError> {
    let id = uuid_id(e)?;
    let query = match event {
        ClientEvent::ClientCreated {
            workspace,
            name,
            domains,
            created_at,
        } => versioned(CLIENT_CREATED, id, e)
            .bind(workspace.to_string())
            .bind(name)
            .bind(domains)
            .bind(ClientStatus::Active.as_str())
            .bind(created_at),
        ClientEvent::ClientRenamed { name, at } => {
            versioned(CLIENT_RENAMED, id, e).bind(name).bind(at)
        }
        ClientEvent::ClientDomainsSet { domains, at } => {
            versioned(CLIENT_DOMAINS, id, e).bind(domains).bind(at)
        }
        ClientEvent::ClientDeactivated { at } => versioned(CLIENT_STATUS, id, e)
            .bind(ClientStatus::Inactive.as_str())
            .bind(at),
        ClientEvent::ClientReactivated { at } => versioned(CLIENT_STATUS, id, e)
            .bind(ClientStatus::Active.as_str())
            .bind(at),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

// Tenant mappings and per-run sync results ---------------------------------------------

// Found again (new name or domains): the discovery facts change, the mapping stays.
const DISCOVERED: &str = "\
    INSERT INTO rm_tenant_mappings AS m (mapping_key, version, workspace_id, entra_tenant_id, \
        display_name, default_domain, verified_domains, source, state, discovered_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
    ON CONFLICT (mapping_key) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, entra_tenant_id = EXCLUDED.entra_tenant_id, \
        display_name = EXCLUDED.display_name, default_domain = EXCLUDED.default_domain, \
        verified_domains = EXCLUDED.verified_domains, source = EXCLUDED.source, \
        discovered_at = EXCLUDED.discovered_at \
    WHERE m.version < EXCLUDED.version";
const PROPOSED: &str = "UPDATE rm_tenant_mappings SET version = $2, state = $3, \
    proposal_state = $3, proposed_client_id = $4, proposal_reason = $5, \
    proposal_candidates = $6 \
    WHERE mapping_key = $1 AND version < $2";
// Confirmed to another client: that client's contact book starts from a full read.
const CONFIRMED: &str = "UPDATE rm_tenant_mappings SET version = $2, state = $3, \
    has_delta_link = has_delta_link AND confirmed_client_id IS NULL, \
    confirmed_client_id = $4, confirmed_by = $5, confirmed_at = $6 \
    WHERE mapping_key = $1 AND version < $2";
const SYNC_RECORDED: &str = "UPDATE rm_tenant_mappings SET version = $2, \
    last_sync_run_id = $3, last_sync_at = $4, last_sync_created = $5, last_sync_linked = $6, \
    last_sync_updated = $7, last_sync_inactivated = $8, last_sync_reactivated = $9, \
    last_sync_queued = $10, last_sync_failed_reason = $11, \
    has_delta_link = has_delta_link OR $12 \
    WHERE mapping_key = $1 AND version < $2";
// The client is the one the mapping is confirmed to as of this event: the mapping's row
// is read before it is updated by the same event, and results are written once.
const SYNC_RESULT: &str = "\
    INSERT INTO rm_contact_sync_results (mapping_key, version, run_id, entra_tenant_id, \
        workspace_id, client_id, created, linked, updated, inactivated, reactivated, queued, \
        failed_reason, recorded_at) \
    SELECT $1, $2, $3, m.entra_tenant_id, m.workspace_id, m.confirmed_client_id, $5, $6, $7, \
        $8, $9, $10, $11, $4 \
    FROM rm_tenant_mappings m WHERE m.mapping_key = $1 AND m.version < $2 \
    ON CONFLICT (run_id, entra_tenant_id) DO NOTHING";
const DELTA_RESET: &str = "UPDATE rm_tenant_mappings SET version = $2, has_delta_link = false \
    WHERE mapping_key = $1 AND version < $2";

async fn mapping(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: MappingEvent,
) -> Result<(), ConsumerError> {
    let key = e.aggregate_id.as_str();
    let query = match event {
        MappingEvent::TenantDiscovered {
            workspace,
            tenant,
            source,
            discovered_at,
        } => versioned(DISCOVERED, key, e)
            .bind(workspace.to_string())
            .bind(tenant.entra_tenant_id.as_uuid())
            .bind(tenant.display_name)
            .bind(tenant.default_domain)
            .bind(tenant.verified_domains)
            .bind(crate::event::serde_name(e, &source)?)
            .bind(MappingState::default().as_str())
            .bind(discovered_at),
        MappingEvent::MappingProposed { proposal, .. } => {
            let candidates: Vec<Uuid> = proposal.candidates.iter().map(|c| c.0).collect();
            versioned(PROPOSED, key, e)
                .bind(proposal.state.as_str())
                .bind(proposal.client_id.map(|c| c.0))
                .bind(proposal.reason.as_str())
                .bind(candidates)
        }
        MappingEvent::MappingConfirmed {
            client_id,
            confirmed_by,
            confirmed_at,
        } => versioned(CONFIRMED, key, e)
            .bind(MappingState::Confirmed.as_str())
            .bind(client_id.0)
            .bind(confirmed_by)
            .bind(confirmed_at),
        MappingEvent::ContactSyncRecorded {
            run_id,
            result,
            delta_link,
            at,
        } => {
            sync_result(tx, key, e, run_id, &result, at).await?;
            let [created, linked, updated, inactivated, reactivated, queued] = counts(&result);
            versioned(SYNC_RECORDED, key, e)
                .bind(run_id.0)
                .bind(at)
                .bind(created)
                .bind(linked)
                .bind(updated)
                .bind(inactivated)
                .bind(reactivated)
                .bind(queued)
                .bind(result.failed.map(|r| r.as_str()))
                .bind(delta_link.is_some())
        }
        MappingEvent::DeltaLinkReset { .. } => versioned(DELTA_RESET, key, e),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

/// A result's counts as the table's integers, in column order.
fn counts(r: &TenantSyncResult) -> [i32; 6] {
    [
        r.created,
        r.linked,
        r.updated,
        r.inactivated,
        r.reactivated,
        r.queued,
    ]
    .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
}

async fn sync_result(
    tx: &mut PgConnection,
    key: &str,
    e: &StoredEvent,
    run_id: RunId,
    result: &TenantSyncResult,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ConsumerError> {
    let [created, linked, updated, inactivated, reactivated, queued] = counts(result);
    versioned(SYNC_RESULT, key, e)
        .bind(run_id.0)
        .bind(at)
        .bind(created)
        .bind(linked)
        .bind(updated)
        .bind(inactivated)
        .bind(reactivated)
        .bind(queued)
        .bind(result.failed.map(|r| r.as_str()))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

// Contacts -----------------------------------------------------------------------------

const CONTACT_CREATED: &str = "\
    INSERT INTO rm_contacts AS c (contact_id, version, workspace_id, client_id, name, email, \
        phone, mobile, job_title, department, status, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
    ON CONFLICT (contact_id) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, client_id = EXCLUDED.client_id, \
        name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone, \
        mobile = EXCLUDED.mobile, job_title = EXCLUDED.job_title, \
        department = EXCLUDED.department, status = EXCLUDED.status, \
        inactive_reason = NULL, entra_tenant_id = NULL, entra_object_id = NULL, \
        created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at \
    WHERE c.version < EXCLUDED.version";
const CONTACT_LINKED: &str = "UPDATE rm_contacts SET version = $2, entra_tenant_id = $3, \
    entra_object_id = $4, updated_at = $5 WHERE contact_id = $1 AND version < $2";
/// Each field: whether the event changed it, and its new value.
const CONTACT_FIELDS: &str = "UPDATE rm_contacts SET version = $2, updated_at = $3, \
    name = CASE WHEN $4 THEN COALESCE($5, name) ELSE name END, \
    phone = CASE WHEN $6 THEN $7 ELSE phone END, \
    mobile = CASE WHEN $8 THEN $9 ELSE mobile END, \
    job_title = CASE WHEN $10 THEN $11 ELSE job_title END, \
    department = CASE WHEN $12 THEN $13 ELSE department END \
    WHERE contact_id = $1 AND version < $2";
const CONTACT_STATUS: &str = "UPDATE rm_contacts SET version = $2, status = $3, \
    inactive_reason = $4, updated_at = $5 WHERE contact_id = $1 AND version < $2";

async fn contact(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: ContactEvent,
) -> Result<(), ConsumerError> {
    let id = uuid_id(e)?;
    let query = match event {
        ContactEvent::ContactCreated {
            workspace,
            client_id,
            details,
            created_at,
        } => versioned(CONTACT_CREATED, id, e)
            .bind(workspace.to_string())
            .bind(client_id.0)
            .bind(details.name)
            .bind(details.email)
            .bind(details.phone)
            .bind(details.mobile)
            .bind(details.job_title)
            .bind(details.department)
            .bind(ContactStatus::Active.as_str())
            .bind(created_at),
        ContactEvent::ContactLinked { entra_user, at } => versioned(CONTACT_LINKED, id, e)
            .bind(entra_user.entra_tenant_id.as_uuid())
            .bind(entra_user.object_id)
            .bind(at),
        ContactEvent::ContactFieldsUpdated { changes, at } => {
            let mut query = versioned(CONTACT_FIELDS, id, e).bind(at);
            for field in [
                ContactField::Name,
                ContactField::Phone,
                ContactField::Mobile,
                ContactField::JobTitle,
                ContactField::Department,
            ] {
                let change = changes.get(&field);
                query = query
                    .bind(change.is_some())
                    .bind(change.and_then(|c| c.new.clone()));
            }
            query
        }
        ContactEvent::ContactMarkedInactive { reason, at } => versioned(CONTACT_STATUS, id, e)
            .bind(ContactStatus::Inactive.as_str())
            .bind(Some(reason.as_str()))
            .bind(at),
        ContactEvent::ContactReactivated { at } => versioned(CONTACT_STATUS, id, e)
            .bind(ContactStatus::Active.as_str())
            .bind(None::<&str>)
            .bind(at),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

// Reconciliation queue -----------------------------------------------------------------

/// Queued again while open (new candidates): the item shows the latest queueing.
const QUEUED: &str = "\
    INSERT INTO rm_reconciliation_items AS r (item_id, version, workspace_id, client_id, \
        entra_tenant_id, entra_object_id, upstream_display_name, upstream_emails, candidates, \
        status, queued_run_id, queued_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10, $11) \
    ON CONFLICT (item_id) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, client_id = EXCLUDED.client_id, \
        entra_tenant_id = EXCLUDED.entra_tenant_id, entra_object_id = EXCLUDED.entra_object_id, \
        upstream_display_name = EXCLUDED.upstream_display_name, \
        upstream_emails = EXCLUDED.upstream_emails, candidates = EXCLUDED.candidates, \
        queued_run_id = EXCLUDED.queued_run_id, queued_at = EXCLUDED.queued_at \
    WHERE r.version < EXCLUDED.version";
const RESOLVED: &str = "UPDATE rm_reconciliation_items SET version = $2, status = 'resolved', \
    resolution = $3, resolution_contact_id = $4, resolved_by = $5, resolved_at = $6 \
    WHERE item_id = $1 AND version < $2";

async fn reconciliation(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: ReconciliationEvent,
) -> Result<(), ConsumerError> {
    let id = uuid_id(e)?;
    let query = match event {
        ReconciliationEvent::ReconciliationQueued {
            workspace,
            client_id,
            entra_user,
            upstream,
            candidates,
            run_id,
            queued_at,
        } => {
            let candidates: Vec<Uuid> = candidates.iter().map(|c| c.0).collect();
            versioned(QUEUED, id, e)
                .bind(workspace.to_string())
                .bind(client_id.0)
                .bind(entra_user.entra_tenant_id.as_uuid())
                .bind(entra_user.object_id)
                .bind(upstream.display_name)
                .bind(upstream.emails)
                .bind(candidates)
                .bind(run_id.map(|r| r.0))
                .bind(queued_at)
        }
        ReconciliationEvent::ReconciliationResolved {
            resolution,
            resolved_by,
            resolved_at,
        } => {
            let (kind, contact) = match resolution {
                Resolution::LinkedExisting { contact_id } => ("linked_existing", Some(contact_id)),
                Resolution::CreatedNew { contact_id } => ("created_new", Some(contact_id)),
                Resolution::Ignored => ("ignored", None),
            };
            versioned(RESOLVED, id, e)
                .bind(kind)
                .bind(contact.map(|c| c.0))
                .bind(resolved_by)
                .bind(resolved_at)
        }
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

// Settings -----------------------------------------------------------------------------

const FIELD_SYNC: &str = "\
    INSERT INTO rm_contact_settings AS s (workspace_id, version, field_sync, updated_at) \
    VALUES ($1, $2, $3, $4) \
    ON CONFLICT (workspace_id) DO UPDATE SET version = EXCLUDED.version, \
        field_sync = EXCLUDED.field_sync, updated_at = EXCLUDED.updated_at \
    WHERE s.version < EXCLUDED.version";
/// The flag joins or leaves the sorted set of enabled flags.
const FLAG_SET: &str = "\
    INSERT INTO rm_contact_settings AS s (workspace_id, version, enabled_flags, updated_at) \
    VALUES ($1, $2, CASE WHEN $4 THEN jsonb_build_array($3::text) ELSE '[]'::jsonb END, $5) \
    ON CONFLICT (workspace_id) DO UPDATE SET version = EXCLUDED.version, \
        updated_at = EXCLUDED.updated_at, \
        enabled_flags = (SELECT COALESCE(jsonb_agg(f ORDER BY f), '[]'::jsonb) FROM ( \
            SELECT value FROM jsonb_array_elements_text(s.enabled_flags) WHERE value <> $3 \
            UNION SELECT $3::text WHERE $4) AS flags(f)) \
    WHERE s.version < EXCLUDED.version";

async fn settings(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: SettingsEvent,
) -> Result<(), ConsumerError> {
    let workspace = e.aggregate_id.as_str();
    let query = match event {
        SettingsEvent::FieldSyncConfigured { config, at, .. } => {
            // A BTreeSet: already sorted and unique.
            let fields: Vec<&str> = config.fields.iter().map(|f| f.as_str()).collect();
            versioned(FIELD_SYNC, workspace, e)
                .bind(sqlx::types::Json(fields))
                .bind(at)
        }
        SettingsEvent::FeatureFlagSet {
            flag, enabled, at, ..
        } => versioned(FLAG_SET, workspace, e)
            .bind(flag.as_str())
            .bind(enabled)
            .bind(at),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}
