//! The resync read models: `rm_policy_snapshots` (curated policies, hash, diff),
//! `rm_alerts` (drift alerts) and `rm_licenses` (capabilities), from tenant events.

use domain::tenant::{Tenant, TenantEvent};
use sqlx::PgConnection;
use store::{ConsumerError, StoredEvent};

use crate::event::{aggregate_projection, required_meta, serde_name, versioned};

/// Projects snapshots, alerts and licenses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policies;

const NAME: &str = "policies";

const SNAPSHOT: &str = "\
    INSERT INTO rm_policy_snapshots (snapshot_id, workspace_id, tenant_key, hash, policy_count, \
        policies, diff, source, taken_at, run_id, global_position) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (snapshot_id) DO NOTHING";
const ALERT: &str = "\
    INSERT INTO rm_alerts (snapshot_id, workspace_id, tenant_key, kind, raised_at) \
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (snapshot_id) DO NOTHING";
// Replays write the same values, so it needs no version.
const ACKNOWLEDGE: &str = "\
    UPDATE rm_alerts SET acknowledged_at = $2, acknowledged_by = $3 WHERE snapshot_id = $1";
const LICENSES: &str = "\
    INSERT INTO rm_licenses AS l (tenant_key, version, workspace_id, ca_p1, ca_p2, skus, refreshed_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT (tenant_key) DO UPDATE SET version = EXCLUDED.version, ca_p1 = EXCLUDED.ca_p1, \
        ca_p2 = EXCLUDED.ca_p2, skus = EXCLUDED.skus, refreshed_at = EXCLUDED.refreshed_at \
    WHERE l.version < EXCLUDED.version";

aggregate_projection!(
    Policies,
    Tenant,
    NAME,
    apply,
    &["rm_policy_snapshots", "rm_alerts", "rm_licenses"]
);

fn json<T: serde::Serialize>(
    e: &StoredEvent,
    value: &T,
) -> Result<serde_json::Value, ConsumerError> {
    serde_json::to_value(value).map_err(|err| ConsumerError::Refused {
        position: e.position,
        message: format!("cannot encode a read-model value: {err}"),
    })
}

async fn apply(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: TenantEvent,
) -> Result<(), ConsumerError> {
    let workspace = required_meta(e, "workspace")?;
    let tenant = e.aggregate_id.as_str();
    match event {
        TenantEvent::PolicySnapshotted {
            snapshot_id,
            hash,
            policies,
            diff,
            source,
            taken_at,
        } => {
            sqlx::query(SNAPSHOT)
                .bind(snapshot_id)
                .bind(workspace)
                .bind(tenant)
                .bind(hash)
                .bind(policies.len() as i32)
                .bind(json(e, &policies)?)
                .bind(diff.as_ref().map(|d| json(e, d)).transpose()?)
                .bind(serde_name(e, &source)?)
                .bind(taken_at)
                .bind(e.meta("correlation_id"))
                .bind(e.position.global_position)
                .execute(&mut *tx)
                .await?;
        }
        TenantEvent::PolicyDriftDetected {
            snapshot_id,
            kind,
            raised_at,
        } => {
            sqlx::query(ALERT)
                .bind(snapshot_id)
                .bind(workspace)
                .bind(tenant)
                .bind(kind)
                .bind(raised_at)
                .execute(&mut *tx)
                .await?;
        }
        TenantEvent::LicensesRefreshed { capabilities, at } => {
            versioned(LICENSES, tenant, e)
                .bind(workspace)
                .bind(capabilities.ca_p1)
                .bind(capabilities.ca_p2)
                .bind(json(e, &capabilities.skus)?)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        TenantEvent::AlertAcknowledged { snapshot_id, at } => {
            sqlx::query(ACKNOWLEDGE)
                .bind(snapshot_id)
                .bind(at)
                .bind(required_meta(e, "actor")?)
                .execute(&mut *tx)
                .await?;
        }
        _ => {}
    }
    Ok(())
}
