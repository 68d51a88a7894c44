//! The connections read model: `rm_connections`, one row per provider connection.
//!
//! The row keeps the facts the aggregate derives its status from (disabled, errored,
//! consent, credential reference); the `status` column is generated from them in the
//! migration by the aggregate's rule. Credentials appear as their reference and keyed
//! fingerprint only: the secret is never in an event, so it cannot reach this table.

use domain::connection::{ConnectionEvent, HealthStatus, ProviderConnection};
use sqlx::types::Json;
use sqlx::PgConnection;
use store::{ConsumerError, StoredEvent};

use crate::event::{aggregate_projection, required_meta, serde_name, uuid_id, versioned};

/// Projects [`ProviderConnection`] events into `rm_connections`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connections;

const NAME: &str = "connections";

const CREATE: &str = "\
    INSERT INTO rm_connections AS c (connection_id, version, workspace_id, tenant_key, \
        provider, entra_tenant_id, display_name, health_status, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (connection_id) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, tenant_key = EXCLUDED.tenant_key, \
        provider = EXCLUDED.provider, entra_tenant_id = EXCLUDED.entra_tenant_id, \
        display_name = EXCLUDED.display_name, health_status = EXCLUDED.health_status, \
        created_at = EXCLUDED.created_at \
    WHERE c.version < EXCLUDED.version";
const CREDENTIAL_SET: &str = "UPDATE rm_connections SET version = $2, credential_ref = $3, \
    credential_fingerprint = $4, credential_set_at = $5, credential_set_by = $6 \
    WHERE connection_id = $1 AND version < $2";
// A new credential is a fresh start: the old error no longer stands.
const CREDENTIAL_ROTATED: &str = "UPDATE rm_connections SET version = $2, credential_ref = $3, \
    credential_fingerprint = $4, credential_set_at = $5, credential_set_by = $6, \
    errored = false \
    WHERE connection_id = $1 AND version < $2";
const DEFAULT: &str = "UPDATE rm_connections SET version = $2, is_default = $3 \
    WHERE connection_id = $1 AND version < $2";
const CONSENT_GRANTED: &str = "UPDATE rm_connections SET version = $2, consent_granted = true, \
    scopes_granted = $3, errored = false \
    WHERE connection_id = $1 AND version < $2";
const CONSENT_REVOKED: &str = "UPDATE rm_connections SET version = $2, \
    consent_granted = false, scopes_granted = '[]' \
    WHERE connection_id = $1 AND version < $2";
// A healthy check clears a standing error; any other result leaves it as it was.
const HEALTH_CHECKED: &str = "UPDATE rm_connections SET version = $2, health_status = $3, \
    scopes_granted = $4, last_health_check_at = $5, errored = errored AND NOT $6 \
    WHERE connection_id = $1 AND version < $2";
const ERRORED: &str = "UPDATE rm_connections SET version = $2, errored = true, \
    last_error_reason_code = $3, last_error_message = $4 \
    WHERE connection_id = $1 AND version < $2";
const DISABLED: &str = "UPDATE rm_connections SET version = $2, disabled = $3 \
    WHERE connection_id = $1 AND version < $2";
// The row goes; the events stay in the log (and the audit log says who removed it).
const REMOVED: &str = "DELETE FROM rm_connections WHERE connection_id = $1 AND version < $2";
const RENAMED: &str = "UPDATE rm_connections SET version = $2, display_name = $3 \
    WHERE connection_id = $1 AND version < $2";

aggregate_projection!(
    Connections,
    ProviderConnection,
    NAME,
    apply,
    &["rm_connections"]
);

async fn apply(
    tx: &mut PgConnection,
    e: &StoredEvent,
    event: ConnectionEvent,
) -> Result<(), ConsumerError> {
    let id = uuid_id(e)?;
    let query = match event {
        ConnectionEvent::ConnectionCreated {
            workspace,
            tenant_key,
            provider,
            entra_tenant_id,
            display_name,
            created_at,
        } => versioned(CREATE, id, e)
            .bind(workspace.to_string())
            .bind(tenant_key.to_string())
            .bind(provider.as_str())
            .bind(entra_tenant_id.as_uuid())
            .bind(display_name)
            .bind(serde_name(e, &HealthStatus::default())?)
            .bind(created_at),
        ConnectionEvent::CredentialSet {
            credential_ref,
            fingerprint,
            set_at,
        } => versioned(CREDENTIAL_SET, id, e)
            .bind(credential_ref)
            .bind(fingerprint)
            .bind(set_at)
            .bind(required_meta(e, "actor")?),
        ConnectionEvent::CredentialRotated {
            credential_ref,
            fingerprint,
            rotated_at,
            ..
        } => versioned(CREDENTIAL_ROTATED, id, e)
            .bind(credential_ref)
            .bind(fingerprint)
            .bind(rotated_at)
            .bind(required_meta(e, "actor")?),
        ConnectionEvent::ConnectionMadeDefault => versioned(DEFAULT, id, e).bind(true),
        ConnectionEvent::ConnectionDefaultCleared => versioned(DEFAULT, id, e).bind(false),
        ConnectionEvent::ConsentGranted { scopes, .. } => {
            versioned(CONSENT_GRANTED, id, e).bind(Json(scopes))
        }
        ConnectionEvent::ConsentRevoked { .. } => versioned(CONSENT_REVOKED, id, e),
        ConnectionEvent::HealthChecked {
            health,
            scopes_granted,
            checked_at,
        } => versioned(HEALTH_CHECKED, id, e)
            .bind(serde_name(e, &health)?)
            .bind(Json(scopes_granted))
            .bind(checked_at)
            .bind(health == HealthStatus::Healthy),
        ConnectionEvent::ConnectionErrored {
            reason, message, ..
        } => versioned(ERRORED, id, e)
            .bind(reason.as_str())
            .bind(message),
        ConnectionEvent::ConnectionDisabled { .. } => versioned(DISABLED, id, e).bind(true),
        ConnectionEvent::ConnectionEnabled { .. } => versioned(DISABLED, id, e).bind(false),
        ConnectionEvent::ConnectionRenamed { display_name, .. } => {
            versioned(RENAMED, id, e).bind(display_name)
        }
        ConnectionEvent::ConnectionRemoved { .. } => versioned(REMOVED, id, e),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}
