//! The audit log read model: `rm_audit_log`, one row per event of any aggregate — who did
//! what, when, to which tenant — from the event's metadata.
//!
//! The tenant of a row comes only from the log itself, so a rebuild finds the same one:
//! - a tenant's events: the tenant's key (its aggregate id);
//! - an event whose payload names a tenant key (`tenant_key` or `context.tenant_key`, as a
//!   connection's or a run's first event does): that key;
//! - an event whose payload names a run (`run_id`, as scope lock events do): the run's;
//! - any other event: the tenant of its aggregate's earlier rows, if any.
//!
//! A scope is acquired just before its run is queued, in the same transaction, so the
//! acquisition is recorded before its run's tenant is known; queueing the run fills it in.

use std::collections::HashMap;

use cqrs_es::Aggregate;
use domain::run::{OperationRun, RunEvent};
use domain::scope_lock::{scope_key, ScopeLock};
use domain::tenant::Tenant;
use serde_json::Value;
use sqlx::PgConnection;
use store::{Consumer, ConsumerError, StoredEvent};

use crate::event::required_meta;
use crate::Projection;

/// Records every event in `rm_audit_log`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLog;

const NAME: &str = "audit_log";

const INSERT: &str = "\
    INSERT INTO rm_audit_log (global_position, workspace_id, recorded_at, actor, role, \
        action, aggregate_type, aggregate_id, tenant_key, correlation_id, causation_id, \
        request_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
    ON CONFLICT (global_position) DO NOTHING";
const TENANT_OF: &str = "SELECT tenant_key FROM rm_audit_log \
    WHERE aggregate_type = $1 AND aggregate_id = $2 AND tenant_key IS NOT NULL \
    ORDER BY global_position LIMIT 1";
const FILL_IN: &str = "UPDATE rm_audit_log SET tenant_key = $1 \
    WHERE aggregate_type = $2 AND aggregate_id = $3 AND tenant_key IS NULL";

#[async_trait::async_trait]
impl Consumer for AuditLog {
    fn name(&self) -> &str {
        NAME
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        let mut tenants = KnownTenants::default();
        for e in events {
            let tenant_key = tenants.of(tx, e).await?;
            sqlx::query(INSERT)
                .bind(e.position.global_position)
                .bind(required_meta(e, "workspace")?)
                .bind(e.recorded_at)
                .bind(required_meta(e, "actor")?)
                .bind(required_meta(e, "role")?)
                .bind(&e.event_type)
                .bind(&e.aggregate_type)
                .bind(&e.aggregate_id)
                .bind(&tenant_key)
                .bind(e.meta("correlation_id"))
                .bind(e.meta("causation_id"))
                .bind(e.meta("request_id"))
                .execute(&mut *tx)
                .await?;
            if let Some(key) = tenant_key {
                fill_in_scope(tx, e, &key).await?;
                tenants.remember(e, key);
            }
        }
        Ok(())
    }
}

impl Projection for AuditLog {
    fn tables(&self) -> &'static [&'static str] {
        &["rm_audit_log"]
    }
}

/// The tenant of each aggregate seen so far in a batch (`None`: it has none yet), in front
/// of the rows already written.
#[derive(Default)]
struct KnownTenants(HashMap<(String, String), Option<String>>);

impl KnownTenants {
    async fn of(
        &mut self,
        tx: &mut PgConnection,
        e: &StoredEvent,
    ) -> Result<Option<String>, ConsumerError> {
        if e.aggregate_type == Tenant::TYPE {
            return Ok(Some(e.aggregate_id.clone()));
        }
        let fields = e.payload.as_object().and_then(|p| p.values().next());
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(fields?, |v, k| v.get(k))
                .and_then(Value::as_str)
        };
        if let Some(key) = field(&["tenant_key"]).or_else(|| field(&["context", "tenant_key"])) {
            return Ok(Some(key.to_owned()));
        }
        match field(&["run_id"]) {
            Some(run_id) => self.lookup(tx, OperationRun::TYPE, run_id).await,
            None => self.lookup(tx, &e.aggregate_type, &e.aggregate_id).await,
        }
    }

    async fn lookup(
        &mut self,
        tx: &mut PgConnection,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<String>, ConsumerError> {
        let id = (aggregate_type.to_owned(), aggregate_id.to_owned());
        if let Some(known) = self.0.get(&id) {
            return Ok(known.clone());
        }
        let found: Option<String> = sqlx::query_scalar(TENANT_OF)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_optional(&mut *tx)
            .await?;
        self.0.insert(id, found.clone());
        Ok(found)
    }

    fn remember(&mut self, e: &StoredEvent, tenant_key: String) {
        let id = (e.aggregate_type.clone(), e.aggregate_id.clone());
        self.0.insert(id, Some(tenant_key));
    }
}

/// When a run is queued, its scope lock's rows recorded before it (the acquisition) get
/// the run's tenant.
async fn fill_in_scope(
    tx: &mut PgConnection,
    e: &StoredEvent,
    tenant_key: &str,
) -> Result<(), ConsumerError> {
    if e.aggregate_type != OperationRun::TYPE || e.event_type != "RunQueued" {
        return Ok(());
    }
    let RunEvent::RunQueued {
        workspace, context, ..
    } = e.decode::<RunEvent>()?
    else {
        return Ok(());
    };
    sqlx::query(FILL_IN)
        .bind(tenant_key)
        .bind(ScopeLock::TYPE)
        .bind(scope_key(&workspace, context.target_scope))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
