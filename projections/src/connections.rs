//! The connections read model: `rm_connections`, one row per provider connection.
//!
//! The row keeps the facts the aggregate derives its status from (disabled, errored,
//! consent, credential reference); the `status` column is generated from them in the
//! migration by the aggregate's rule. Credentials appear as their reference and keyed
//! fingerprint only: the secret is never in an event, so it cannot reach this table.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::connection::{ConnectionEvent, HealthStatus, ProviderConnection};
use sqlx::PgConnection;
use store::{ConsumerError, StoredEvent};
use uuid::Uuid;

use crate::event::{events_of, required_meta, serde_name, to_json, uuid_id};

/// Projects [`ProviderConnection`] events into `rm_connections`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connections;

const NAME: &str = "connections";

/// The columns of `rm_connections` this projection writes (`status` is generated from
/// them), in this order everywhere below.
const COLUMNS: &str = "connection_id, version, workspace_id, tenant_key, provider, \
    entra_tenant_id, display_name, is_default, disabled, errored, health_status, \
    consent_granted, scopes_granted, credential_ref, credential_fingerprint, \
    credential_set_at, credential_set_by, last_health_check_at, last_error_reason_code, \
    last_error_message, created_at";
const UPSERT: &str = "\
    INSERT INTO rm_connections AS c (connection_id, version, workspace_id, tenant_key, \
        provider, entra_tenant_id, display_name, is_default, disabled, errored, \
        health_status, consent_granted, scopes_granted, credential_ref, \
        credential_fingerprint, credential_set_at, credential_set_by, last_health_check_at, \
        last_error_reason_code, last_error_message, created_at) \
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
        $6::uuid[], $7::text[], $8::bool[], $9::bool[], $10::bool[], $11::text[], \
        $12::bool[], $13::jsonb[], $14::uuid[], $15::text[], $16::timestamptz[], $17::text[], \
        $18::timestamptz[], $19::text[], $20::text[], $21::timestamptz[]) \
    ON CONFLICT (connection_id) DO UPDATE SET version = EXCLUDED.version, \
        workspace_id = EXCLUDED.workspace_id, tenant_key = EXCLUDED.tenant_key, \
        provider = EXCLUDED.provider, entra_tenant_id = EXCLUDED.entra_tenant_id, \
        display_name = EXCLUDED.display_name, is_default = EXCLUDED.is_default, \
        disabled = EXCLUDED.disabled, errored = EXCLUDED.errored, \
        health_status = EXCLUDED.health_status, consent_granted = EXCLUDED.consent_granted, \
        scopes_granted = EXCLUDED.scopes_granted, credential_ref = EXCLUDED.credential_ref, \
        credential_fingerprint = EXCLUDED.credential_fingerprint, \
        credential_set_at = EXCLUDED.credential_set_at, \
        credential_set_by = EXCLUDED.credential_set_by, \
        last_health_check_at = EXCLUDED.last_health_check_at, \
        last_error_reason_code = EXCLUDED.last_error_reason_code, \
        last_error_message = EXCLUDED.last_error_message, created_at = EXCLUDED.created_at \
    WHERE c.version < EXCLUDED.version";
const REMOVE: &str = "DELETE FROM rm_connections WHERE connection_id = ANY($1)";

#[async_trait::async_trait]
impl store::Consumer for Connections {
    fn name(&self) -> &str {
        NAME
    }

    fn payloads_of(&self) -> store::Payloads {
        store::Payloads::OfAggregates(&[ProviderConnection::TYPE])
    }

    /// The batch's connections are read once, changed in memory event by event exactly as
    /// one statement per event would change them (the `version` guard included), and
    /// written back in one statement (and one for those removed).
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        let ids: BTreeSet<Uuid> = events
            .iter()
            .filter(|e| e.aggregate_type == ProviderConnection::TYPE)
            .filter_map(|e| e.aggregate_id.parse().ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let found: Vec<ConnectionRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM rm_connections WHERE connection_id = ANY($1)"
        ))
        // Planned for every batch (see the runs projection).
        .persistent(false)
        .bind(ids.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        // `None`: removed.
        let mut rows: HashMap<Uuid, Option<ConnectionRow>> = found
            .into_iter()
            .map(|r| (r.connection_id, Some(r)))
            .collect();
        let mut changed = BTreeSet::new();
        for decoded in events_of::<ProviderConnection>(NAME, events) {
            let (e, event) = decoded?;
            let id = uuid_id(e)?;
            if apply(&mut rows, id, e, event)? {
                changed.insert(id);
            }
        }
        let mut c = Columns::default();
        let mut removed = Vec::new();
        for id in changed {
            match rows.remove(&id).flatten() {
                Some(row) => c.push(row),
                None => removed.push(id),
            }
        }
        if !removed.is_empty() {
            sqlx::query(REMOVE).bind(removed).execute(&mut *tx).await?;
        }
        if c.connection_id.is_empty() {
            return Ok(());
        }
        sqlx::query(UPSERT)
            .bind(c.connection_id)
            .bind(c.version)
            .bind(c.workspace_id)
            .bind(c.tenant_key)
            .bind(c.provider)
            .bind(c.entra_tenant_id)
            .bind(c.display_name)
            .bind(c.is_default)
            .bind(c.disabled)
            .bind(c.errored)
            .bind(c.health_status)
            .bind(c.consent_granted)
            .bind(c.scopes_granted)
            .bind(c.credential_ref)
            .bind(c.credential_fingerprint)
            .bind(c.credential_set_at)
            .bind(c.credential_set_by)
            .bind(c.last_health_check_at)
            .bind(c.last_error_reason_code)
            .bind(c.last_error_message)
            .bind(c.created_at)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

impl crate::Projection for Connections {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_connections"]
    }
}

/// An `rm_connections` row, without its generated `status`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ConnectionRow {
    connection_id: Uuid,
    version: i64,
    workspace_id: String,
    tenant_key: String,
    provider: String,
    entra_tenant_id: Uuid,
    display_name: String,
    is_default: bool,
    disabled: bool,
    errored: bool,
    health_status: String,
    consent_granted: bool,
    scopes_granted: serde_json::Value,
    credential_ref: Option<Uuid>,
    credential_fingerprint: Option<String>,
    credential_set_at: Option<DateTime<Utc>>,
    credential_set_by: Option<String>,
    last_health_check_at: Option<DateTime<Utc>>,
    last_error_reason_code: Option<String>,
    last_error_message: Option<String>,
    created_at: DateTime<Utc>,
}

/// `rm_connections` rows, a column each (for `unnest`).
#[derive(Default)]
struct Columns {
    connection_id: Vec<Uuid>,
    version: Vec<i64>,
    workspace_id: Vec<String>,
    tenant_key: Vec<String>,
    provider: Vec<String>,
    entra_tenant_id: Vec<Uuid>,
    display_name: Vec<String>,
    is_default: Vec<bool>,
    disabled: Vec<bool>,
    errored: Vec<bool>,
    health_status: Vec<String>,
    consent_granted: Vec<bool>,
    scopes_granted: Vec<serde_json::Value>,
    credential_ref: Vec<Option<Uuid>>,
    credential_fingerprint: Vec<Option<String>>,
    credential_set_at: Vec<Option<DateTime<Utc>>>,
    credential_set_by: Vec<Option<String>>,
    last_health_check_at: Vec<Option<DateTime<Utc>>>,
    last_error_reason_code: Vec<Option<String>>,
    last_error_message: Vec<Option<String>>,
    created_at: Vec<DateTime<Utc>>,
}

impl Columns {
    fn push(&mut self, r: ConnectionRow) {
        self.connection_id.push(r.connection_id);
        self.version.push(r.version);
        self.workspace_id.push(r.workspace_id);
        self.tenant_key.push(r.tenant_key);
        self.provider.push(r.provider);
        self.entra_tenant_id.push(r.entra_tenant_id);
        self.display_name.push(r.display_name);
        self.is_default.push(r.is_default);
        self.disabled.push(r.disabled);
        self.errored.push(r.errored);
        self.health_status.push(r.health_status);
        self.consent_granted.push(r.consent_granted);
        self.scopes_granted.push(r.scopes_granted);
        self.credential_ref.push(r.credential_ref);
        self.credential_fingerprint.push(r.credential_fingerprint);
        self.credential_set_at.push(r.credential_set_at);
        self.credential_set_by.push(r.credential_set_by);
        self.last_health_check_at.push(r.last_health_check_at);
        self.last_error_reason_code.push(r.last_error_reason_code);
        self.last_error_message.push(r.last_error_message);
        self.created_at.push(r.created_at);
    }
}

/// Applies one event to the rows; whether it changed the connection's row.
fn apply(
    rows: &mut HashMap<Uuid, Option<ConnectionRow>>,
    id: Uuid,
    e: &StoredEvent,
    event: ConnectionEvent,
) -> Result<bool, ConsumerError> {
    if let ConnectionEvent::ConnectionCreated {
        workspace,
        tenant_key,
        provider,
        entra_tenant_id,
        display_name,
        created_at,
    } = event
    {
        let created = ConnectionRow {
            connection_id: id,
            version: e.sequence,
            workspace_id: workspace.to_string(),
            tenant_key: tenant_key.to_string(),
            provider: provider.as_str().to_owned(),
            entra_tenant_id: entra_tenant_id.as_uuid(),
            display_name,
            is_default: false,
            disabled: false,
            errored: false,
            health_status: serde_name(e, &HealthStatus::default())?,
            consent_granted: false,
            scopes_granted: serde_json::json!([]),
            credential_ref: None,
            credential_fingerprint: None,
            credential_set_at: None,
            credential_set_by: None,
            last_health_check_at: None,
            last_error_reason_code: None,
            last_error_message: None,
            created_at,
        };
        let slot = rows.entry(id).or_insert(None);
        return Ok(match slot {
            None => {
                *slot = Some(created);
                true
            }
            Some(row) if row.version < e.sequence => {
                // What the creation says over an older row; the rest of it stays.
                row.version = created.version;
                row.workspace_id = created.workspace_id;
                row.tenant_key = created.tenant_key;
                row.provider = created.provider;
                row.entra_tenant_id = created.entra_tenant_id;
                row.display_name = created.display_name;
                row.health_status = created.health_status;
                row.created_at = created.created_at;
                true
            }
            Some(_) => false,
        });
    }
    // What the event needs from its metadata and names, as its statement's binds did.
    let actor = match &event {
        ConnectionEvent::CredentialSet { .. } | ConnectionEvent::CredentialRotated { .. } => {
            Some(required_meta(e, "actor")?.to_owned())
        }
        _ => None,
    };
    let scopes = match &event {
        ConnectionEvent::ConsentGranted { scopes, .. } => Some(to_json(e, scopes)?),
        ConnectionEvent::HealthChecked { scopes_granted, .. } => Some(to_json(e, scopes_granted)?),
        _ => None,
    };
    let health = match &event {
        ConnectionEvent::HealthChecked { health, .. } => Some(serde_name(e, health)?),
        _ => None,
    };
    let Some(slot) = rows.get_mut(&id) else {
        return Ok(false);
    };
    if slot.as_ref().is_none_or(|r| r.version >= e.sequence) {
        return Ok(false);
    }
    if let ConnectionEvent::ConnectionRemoved { .. } = event {
        // The row goes; the events stay in the log (and the audit log says who removed it).
        *slot = None;
        return Ok(true);
    }
    let Some(row) = slot.as_mut() else {
        return Ok(false);
    };
    row.version = e.sequence;
    match event {
        ConnectionEvent::ConnectionCreated { .. } | ConnectionEvent::ConnectionRemoved { .. } => {}
        ConnectionEvent::CredentialSet {
            credential_ref,
            fingerprint,
            set_at,
        } => {
            row.credential_ref = Some(credential_ref);
            row.credential_fingerprint = Some(fingerprint);
            row.credential_set_at = Some(set_at);
            row.credential_set_by = actor;
        }
        // A new credential is a fresh start: the old error no longer stands.
        ConnectionEvent::CredentialRotated {
            credential_ref,
            fingerprint,
            rotated_at,
            ..
        } => {
            row.credential_ref = Some(credential_ref);
            row.credential_fingerprint = Some(fingerprint);
            row.credential_set_at = Some(rotated_at);
            row.credential_set_by = actor;
            row.errored = false;
        }
        ConnectionEvent::ConnectionMadeDefault => row.is_default = true,
        ConnectionEvent::ConnectionDefaultCleared => row.is_default = false,
        ConnectionEvent::ConsentGranted { .. } => {
            row.consent_granted = true;
            row.scopes_granted = scopes.unwrap_or_default();
            row.errored = false;
        }
        ConnectionEvent::ConsentRevoked { .. } => {
            row.consent_granted = false;
            row.scopes_granted = serde_json::json!([]);
        }
        // A healthy check clears a standing error; any other result leaves it as it was.
        ConnectionEvent::HealthChecked {
            health: status,
            checked_at,
            ..
        } => {
            row.health_status = health.unwrap_or_default();
            row.scopes_granted = scopes.unwrap_or_default();
            row.last_health_check_at = Some(checked_at);
            row.errored = row.errored && status != HealthStatus::Healthy;
        }
        ConnectionEvent::ConnectionErrored {
            reason, message, ..
        } => {
            row.errored = true;
            row.last_error_reason_code = Some(reason.as_str().to_owned());
            row.last_error_message = Some(message);
        }
        ConnectionEvent::ConnectionDisabled { .. } => row.disabled = true,
        ConnectionEvent::ConnectionEnabled { .. } => row.disabled = false,
        ConnectionEvent::ConnectionRenamed { display_name, .. } => row.display_name = display_name,
    }
    Ok(true)
}
