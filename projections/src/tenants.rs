//! The tenants read model: `rm_tenants`, one row per registered tenant, with its policy
//! intent once an import seeded one.

use domain::tenant::{Tenant, TenantEvent, TenantStatus};
use sqlx::PgConnection;
use store::{ConsumerError, StoredEvent};

use crate::event::{aggregate_projection, serde_name, versioned};

/// Projects [`Tenant`] events into `rm_tenants`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tenants;

const NAME: &str = "tenants";

const REGISTER: &str = "\
    INSERT INTO rm_tenants AS t (tenant_key, version, workspace_id, entra_tenant_id, \
        display_name, primary_domain, status, registered_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
    ON CONFLICT (tenant_key) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, entra_tenant_id = EXCLUDED.entra_tenant_id, \
        display_name = EXCLUDED.display_name, primary_domain = EXCLUDED.primary_domain, \
        status = EXCLUDED.status, registered_at = EXCLUDED.registered_at \
    WHERE t.version < EXCLUDED.version";
const RENAME: &str = "UPDATE rm_tenants SET version = $2, display_name = $3 \
    WHERE tenant_key = $1 AND version < $2";
const ARCHIVE: &str = "UPDATE rm_tenants SET version = $2, status = $3, archived_at = $4 \
    WHERE tenant_key = $1 AND version < $2";
const RESYNCED: &str = "UPDATE rm_tenants SET version = $2, last_resynced_at = $3 \
    WHERE tenant_key = $1 AND version < $2";
/// An import's snapshot became the tenant's intended policies (R3.4); seeded at the time
/// the event was recorded, so a rebuild finds the same time.
const INTENT: &str = "UPDATE rm_tenants SET version = $2, intent_snapshot_id = $3, \
    intent_hash = $4, intent_seeded_at = $5 WHERE tenant_key = $1 AND version < $2";
/// Events that change nothing shown here still advance `version`, so a reader can tell
/// the row reflects the tenant as of a command it just sent.
const TOUCH: &str = "UPDATE rm_tenants SET version = $2 WHERE tenant_key = $1 AND version < $2";

aggregate_projection!(Tenants, Tenant, NAME, apply, &["rm_tenants"]);

async fn apply(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: TenantEvent,
) -> Result<(), ConsumerError> {
    let key = e.aggregate_id.as_str();
    let query = match event {
        TenantEvent::TenantRegistered {
            workspace,
            entra_tenant_id,
            display_name,
            primary_domain,
            registered_at,
        } => versioned(REGISTER, key, e)
            .bind(workspace.to_string())
            .bind(entra_tenant_id.as_uuid())
            .bind(display_name)
            .bind(primary_domain)
            .bind(serde_name(e, &TenantStatus::Active)?)
            .bind(registered_at),
        TenantEvent::TenantRenamed { display_name } => versioned(RENAME, key, e).bind(display_name),
        TenantEvent::TenantArchived { archived_at } => versioned(ARCHIVE, key, e)
            .bind(serde_name(e, &TenantStatus::Archived)?)
            .bind(archived_at),
        TenantEvent::TenantResynced { at } => versioned(RESYNCED, key, e).bind(at),
        TenantEvent::PolicyIntentSeeded { snapshot_id, hash } => versioned(INTENT, key, e)
            .bind(snapshot_id)
            .bind(hash)
            .bind(e.recorded_at),
        // Snapshots, alerts and licenses get read models of their own with the resync
        // workflow; here they only advance the version.
        TenantEvent::ConnectionAttached { .. }
        | TenantEvent::DefaultConnectionChanged { .. }
        | TenantEvent::PolicySnapshotted { .. }
        | TenantEvent::PolicyDriftDetected { .. }
        | TenantEvent::AlertAcknowledged { .. }
        | TenantEvent::ConnectionDetached { .. }
        | TenantEvent::LicensesRefreshed { .. } => versioned(TOUCH, key, e),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}
