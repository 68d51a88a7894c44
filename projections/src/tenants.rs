//! The tenants read model: `rm_tenants`, one row per registered tenant, with its policy
//! intent once an import seeded one.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::tenant::{Tenant, TenantEvent, TenantStatus};
use sqlx::PgConnection;
use store::{ConsumerError, StoredEvent};
use uuid::Uuid;

use crate::event::{events_of, serde_name};

/// Projects [`Tenant`] events into `rm_tenants`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tenants;

const NAME: &str = "tenants";

/// The columns of `rm_tenants`, in this order everywhere below.
const COLUMNS: &str = "tenant_key, version, workspace_id, entra_tenant_id, display_name, \
    primary_domain, status, registered_at, archived_at, last_resynced_at, \
    intent_snapshot_id, intent_hash, intent_seeded_at";
const UPSERT: &str = "\
    INSERT INTO rm_tenants AS t (tenant_key, version, workspace_id, entra_tenant_id, \
        display_name, primary_domain, status, registered_at, archived_at, last_resynced_at, \
        intent_snapshot_id, intent_hash, intent_seeded_at) \
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::uuid[], $5::text[], \
        $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], \
        $11::uuid[], $12::text[], $13::timestamptz[]) \
    ON CONFLICT (tenant_key) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, entra_tenant_id = EXCLUDED.entra_tenant_id, \
        display_name = EXCLUDED.display_name, primary_domain = EXCLUDED.primary_domain, \
        status = EXCLUDED.status, registered_at = EXCLUDED.registered_at, \
        archived_at = EXCLUDED.archived_at, last_resynced_at = EXCLUDED.last_resynced_at, \
        intent_snapshot_id = EXCLUDED.intent_snapshot_id, intent_hash = EXCLUDED.intent_hash, \
        intent_seeded_at = EXCLUDED.intent_seeded_at \
    WHERE t.version < EXCLUDED.version";

#[async_trait::async_trait]
impl store::Consumer for Tenants {
    fn name(&self) -> &str {
        NAME
    }

    fn payloads_of(&self) -> store::Payloads {
        store::Payloads::OfAggregates(&[Tenant::TYPE])
    }

    /// The batch's tenants are read once, changed in memory event by event exactly as one
    /// statement per event would change them (the `version` guard included), and written
    /// back in one statement.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        let keys: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.aggregate_type == Tenant::TYPE)
            .map(|e| e.aggregate_id.as_str())
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let rows: Vec<TenantRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM rm_tenants WHERE tenant_key = ANY($1)"
        ))
        // Planned for every batch (see the runs projection).
        .persistent(false)
        .bind(keys.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut rows: HashMap<String, TenantRow> = rows
            .into_iter()
            .map(|r| (r.tenant_key.clone(), r))
            .collect();
        let mut changed = BTreeSet::new();
        for decoded in events_of::<Tenant>(NAME, events) {
            let (e, event) = decoded?;
            if apply(&mut rows, e, event)? {
                changed.insert(e.aggregate_id.clone());
            }
        }
        let mut c = Columns::default();
        for key in changed {
            if let Some(r) = rows.remove(&key) {
                c.push(r);
            }
        }
        if c.tenant_key.is_empty() {
            return Ok(());
        }
        sqlx::query(UPSERT)
            .bind(c.tenant_key)
            .bind(c.version)
            .bind(c.workspace_id)
            .bind(c.entra_tenant_id)
            .bind(c.display_name)
            .bind(c.primary_domain)
            .bind(c.status)
            .bind(c.registered_at)
            .bind(c.archived_at)
            .bind(c.last_resynced_at)
            .bind(c.intent_snapshot_id)
            .bind(c.intent_hash)
            .bind(c.intent_seeded_at)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

impl crate::Projection for Tenants {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_tenants"]
    }
}

/// An `rm_tenants` row.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TenantRow {
    tenant_key: String,
    version: i64,
    workspace_id: String,
    entra_tenant_id: Uuid,
    display_name: String,
    primary_domain: String,
    status: String,
    registered_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
    last_resynced_at: Option<DateTime<Utc>>,
    intent_snapshot_id: Option<Uuid>,
    intent_hash: Option<String>,
    intent_seeded_at: Option<DateTime<Utc>>,
}

/// `rm_tenants` rows, a column each (for `unnest`).
#[derive(Default)]
struct Columns {
    tenant_key: Vec<String>,
    version: Vec<i64>,
    workspace_id: Vec<String>,
    entra_tenant_id: Vec<Uuid>,
    display_name: Vec<String>,
    primary_domain: Vec<String>,
    status: Vec<String>,
    registered_at: Vec<DateTime<Utc>>,
    archived_at: Vec<Option<DateTime<Utc>>>,
    last_resynced_at: Vec<Option<DateTime<Utc>>>,
    intent_snapshot_id: Vec<Option<Uuid>>,
    intent_hash: Vec<Option<String>>,
    intent_seeded_at: Vec<Option<DateTime<Utc>>>,
}

impl Columns {
    fn push(&mut self, r: TenantRow) {
        self.tenant_key.push(r.tenant_key);
        self.version.push(r.version);
        self.workspace_id.push(r.workspace_id);
        self.entra_tenant_id.push(r.entra_tenant_id);
        self.display_name.push(r.display_name);
        self.primary_domain.push(r.primary_domain);
        self.status.push(r.status);
        self.registered_at.push(r.registered_at);
        self.archived_at.push(r.archived_at);
        self.last_resynced_at.push(r.last_resynced_at);
        self.intent_snapshot_id.push(r.intent_snapshot_id);
        self.intent_hash.push(r.intent_hash);
        self.intent_seeded_at.push(r.intent_seeded_at);
    }
}

/// Applies one event to the rows; whether it changed the tenant's row. Every event advances
/// `version` (events that change nothing shown here too, so a reader can tell the row
/// reflects the tenant as of a command it just sent); registering writes what it says over
/// an older row, and leaves the rest.
fn apply(
    rows: &mut HashMap<String, TenantRow>,
    e: &StoredEvent,
    event: TenantEvent,
) -> Result<bool, ConsumerError> {
    let key = e.aggregate_id.as_str();
    if let TenantEvent::TenantRegistered {
        workspace,
        entra_tenant_id,
        display_name,
        primary_domain,
        registered_at,
    } = event
    {
        let registered = TenantRow {
            tenant_key: key.to_owned(),
            version: e.sequence,
            workspace_id: workspace.to_string(),
            entra_tenant_id: entra_tenant_id.as_uuid(),
            display_name,
            primary_domain,
            status: serde_name(e, &TenantStatus::Active)?,
            registered_at,
            archived_at: None,
            last_resynced_at: None,
            intent_snapshot_id: None,
            intent_hash: None,
            intent_seeded_at: None,
        };
        return Ok(match rows.get_mut(key) {
            None => {
                rows.insert(key.to_owned(), registered);
                true
            }
            Some(row) if row.version < e.sequence => {
                *row = TenantRow {
                    archived_at: row.archived_at,
                    last_resynced_at: row.last_resynced_at,
                    intent_snapshot_id: row.intent_snapshot_id,
                    intent_hash: row.intent_hash.take(),
                    intent_seeded_at: row.intent_seeded_at,
                    ..registered
                };
                true
            }
            Some(_) => false,
        });
    }
    let archived = match &event {
        TenantEvent::TenantArchived { .. } => Some(serde_name(e, &TenantStatus::Archived)?),
        _ => None,
    };
    let Some(row) = rows.get_mut(key).filter(|r| r.version < e.sequence) else {
        return Ok(false);
    };
    row.version = e.sequence;
    match event {
        TenantEvent::TenantRenamed { display_name } => row.display_name = display_name,
        TenantEvent::TenantArchived { archived_at } => {
            row.status = archived.unwrap_or_default();
            row.archived_at = Some(archived_at);
        }
        TenantEvent::TenantResynced { at } => row.last_resynced_at = Some(at),
        // Seeded at the time the event was recorded, so a rebuild finds the same time.
        TenantEvent::PolicyIntentSeeded { snapshot_id, hash } => {
            row.intent_snapshot_id = Some(snapshot_id);
            row.intent_hash = Some(hash);
            row.intent_seeded_at = Some(e.recorded_at);
        }
        // Snapshots, alerts and licenses have read models of their own; here they only
        // advance the version.
        TenantEvent::TenantRegistered { .. }
        | TenantEvent::ConnectionAttached { .. }
        | TenantEvent::DefaultConnectionChanged { .. }
        | TenantEvent::PolicySnapshotted { .. }
        | TenantEvent::PolicyDriftDetected { .. }
        | TenantEvent::AlertAcknowledged { .. }
        | TenantEvent::ConnectionDetached { .. }
        | TenantEvent::LicensesRefreshed { .. } => {}
    }
    Ok(true)
}
