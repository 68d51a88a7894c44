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
//!
//! `details` holds the safe facts of the events an auditor asks about (see [`details`]):
//! what a run step reported, a run's summary counts (for a resync, `policy_count` and
//! `unchanged`, R3.6), a snapshot's id and size. Never policies, secrets or Graph payloads.

use std::collections::HashMap;

use cqrs_es::Aggregate;
use domain::connection::{ConnectionEvent, ProviderConnection};
use domain::run::{OperationRun, RunEvent};
use domain::scope_lock::{scope_key, ScopeLock};
use domain::tenant::{Tenant, TenantEvent};
use serde_json::{json, Value};
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
        request_id, details) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
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
                .bind(details(e))
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

/// The facts of `e` an auditor needs beyond who/what/when, or `None` for an event that
/// has none. Each fact is named here, so nothing else of a payload is ever copied:
/// - `RunStepCompleted`: `step`, `attempt` and the step's `summary` (sanitized and at most
///   4 KiB by the run aggregate; a resync's snapshot step reports `snapshot_id`,
///   `policy_count` and `unchanged`);
/// - `RunSucceeded`, `RunPartiallySucceeded`: the run's `summary_counts` (a resync's carry
///   `policy_count` and `unchanged` as 0 or 1), and the failed steps' reason codes;
/// - a run's end that carries its progress (issue 13: the engine keeps a run's step
///   attempts off the log until its end): `steps`, each attempt's facts as its own
///   `RunStepCompleted` or `RunStepFailed` gave them before;
/// - `PolicySnapshotted`: `snapshot_id`, `policy_count`, `source` and how many policies
///   were added, removed or modified (never the policies);
/// - `PolicyIntentSeeded`: `snapshot_id`;
/// - failures: `RunStepFailed` (`step`, `attempt`, `reason`, `message`, `retry_at`),
///   `RunFailed` (`reason`, `message`, `step`), `RunBlocked` (`reason`, `next_steps`),
///   `ConnectionErrored` (`reason`, `message`); their messages are sanitized (no secrets,
///   no payloads) by the aggregates that record them.
///
/// A pure function of the event, so replays and rebuilds write the same details. An event
/// that does not decode is still recorded, without details (and the skip is logged).
fn details(e: &StoredEvent) -> Option<Value> {
    let wanted = matches!(
        (e.aggregate_type.as_str(), e.event_type.as_str()),
        (
            OperationRun::TYPE,
            "RunStepCompleted"
                | "RunStepFailed"
                | "RunSucceeded"
                | "RunPartiallySucceeded"
                | "RunFailed"
                | "RunBlocked"
                | "RunCancelled"
        ) | (Tenant::TYPE, "PolicySnapshotted" | "PolicyIntentSeeded")
            | (ProviderConnection::TYPE, "ConnectionErrored")
    );
    if !wanted {
        return None;
    }
    let decoded = if e.aggregate_type == Tenant::TYPE {
        e.decode::<TenantEvent>().map(tenant_details)
    } else if e.aggregate_type == ProviderConnection::TYPE {
        e.decode::<ConnectionEvent>().map(connection_details)
    } else {
        e.decode::<RunEvent>().map(run_details)
    };
    decoded.unwrap_or_else(|err| {
        tracing::warn!(
            consumer = NAME,
            global_position = e.position.global_position,
            error = %err,
            "recording an event without details: its payload does not decode"
        );
        None
    })
}

fn run_details(event: RunEvent) -> Option<Value> {
    let steps: Vec<Value> = event
        .carried()
        .iter()
        .filter_map(|e| run_details(e.clone()))
        .collect();
    let mut details = step_or_end_details(event)?;
    if let (Value::Object(fields), false) = (&mut details, steps.is_empty()) {
        fields.insert("steps".to_owned(), Value::Array(steps));
    }
    Some(details)
}

fn step_or_end_details(event: RunEvent) -> Option<Value> {
    match event {
        RunEvent::RunStepCompleted {
            step,
            attempt,
            summary,
            ..
        } => Some(json!({ "step": step, "attempt": attempt, "summary": summary })),
        // Messages of failures are sanitized when they are recorded.
        RunEvent::RunStepFailed {
            step,
            attempt,
            reason,
            message,
            retry_at,
            ..
        } => Some(json!({
            "step": step, "attempt": attempt, "reason": reason, "message": message,
            "retry_at": retry_at,
        })),
        RunEvent::RunFailed { failure, .. } => Some(json!({
            "reason": failure.reason, "message": failure.message, "step": failure.step,
        })),
        // A cancelled run reports nothing of its own, but what it carries.
        RunEvent::RunCancelled { progress, .. } if !progress.is_empty() => Some(json!({})),
        RunEvent::RunBlocked {
            reason, next_steps, ..
        } => Some(json!({ "reason": reason, "next_steps": next_steps })),
        RunEvent::RunSucceeded { summary_counts, .. } => {
            Some(json!({ "summary_counts": summary_counts }))
        }
        RunEvent::RunPartiallySucceeded {
            summary_counts,
            failures,
            ..
        } => {
            let failed: Vec<Value> = failures
                .iter()
                .map(|f| json!({ "step": f.step, "reason": f.reason }))
                .collect();
            Some(json!({ "summary_counts": summary_counts, "failed_steps": failed }))
        }
        _ => None,
    }
}

fn connection_details(event: ConnectionEvent) -> Option<Value> {
    match event {
        ConnectionEvent::ConnectionErrored {
            reason, message, ..
        } => Some(json!({ "reason": reason, "message": message })),
        _ => None,
    }
}

fn tenant_details(event: TenantEvent) -> Option<Value> {
    match event {
        TenantEvent::PolicySnapshotted {
            snapshot_id,
            policies,
            diff,
            source,
            ..
        } => Some(json!({
            "snapshot_id": snapshot_id,
            "policy_count": policies.len(),
            "source": source,
            "changes": diff.map(|d| json!({
                "added": d.added.len(),
                "removed": d.removed.len(),
                "modified": d.modified.len(),
            })),
        })),
        TenantEvent::PolicyIntentSeeded { snapshot_id, .. } => {
            Some(json!({ "snapshot_id": snapshot_id }))
        }
        _ => None,
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
        workspace,
        context: Some(context),
        ..
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

#[cfg(test)]
mod tests {
    use super::*;
    use domain::run::FailureSummary;
    use domain::tenant::SnapshotSource;
    use domain::ReasonCode;
    use std::collections::BTreeMap;

    fn stored<E: serde::Serialize + cqrs_es::DomainEvent>(
        aggregate_type: &str,
        event: E,
    ) -> StoredEvent {
        StoredEvent {
            position: store::Position::default(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: "a".into(),
            sequence: 1,
            event_type: event.event_type(),
            event_version: "1.0".into(),
            payload: serde_json::to_value(&event).unwrap(),
            metadata: Value::Null,
            recorded_at: chrono::Utc::now(),
        }
    }

    fn counts(policy_count: i64, unchanged: i64) -> BTreeMap<String, i64> {
        BTreeMap::from([
            ("steps_completed".to_owned(), 3),
            ("policy_count".to_owned(), policy_count),
            ("unchanged".to_owned(), unchanged),
        ])
    }

    #[test]
    fn a_resyncs_end_carries_its_policy_count_and_unchanged_flag() {
        let succeeded = RunEvent::RunSucceeded {
            summary_counts: counts(4, 1),
            at: chrono::Utc::now(),
            progress: vec![],
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, succeeded)),
            Some(
                json!({"summary_counts": {"steps_completed": 3, "policy_count": 4, "unchanged": 1}})
            )
        );
        let partial = RunEvent::RunPartiallySucceeded {
            summary_counts: counts(4, 0),
            failures: vec![FailureSummary {
                reason: ReasonCode::LicensePermissionMissing,
                message: "step refresh_licenses gave up".into(),
                step: Some("refresh_licenses".into()),
            }],
            at: chrono::Utc::now(),
            progress: vec![],
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, partial)),
            Some(json!({
                "summary_counts": {"steps_completed": 3, "policy_count": 4, "unchanged": 0},
                "failed_steps": [{"step": "refresh_licenses", "reason": "license_permission_missing"}],
            }))
        );
    }

    #[test]
    fn failures_carry_their_reason_message_and_next_steps() {
        let failed = RunEvent::RunFailed {
            failure: FailureSummary {
                reason: ReasonCode::ProviderAuthFailed,
                message: "token request refused".into(),
                step: Some("fetch_policies".into()),
            },
            at: chrono::Utc::now(),
            progress: vec![],
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, failed)),
            Some(json!({
                "reason": "provider_auth_failed", "message": "token request refused",
                "step": "fetch_policies",
            }))
        );
        let blocked = RunEvent::RunBlocked {
            reason: ReasonCode::ProviderConsentMissing,
            next_steps: vec![domain::run::NextStep::GrantConsent],
            at: chrono::Utc::now(),
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, blocked)),
            Some(json!({ "reason": "provider_consent_missing", "next_steps": ["grant_consent"] }))
        );
        let errored = ConnectionEvent::ConnectionErrored {
            reason: ReasonCode::GraphUnavailable,
            message: "service unavailable".into(),
            at: chrono::Utc::now(),
        };
        assert_eq!(
            details(&stored(ProviderConnection::TYPE, errored)),
            Some(json!({ "reason": "graph_unavailable", "message": "service unavailable" }))
        );
    }

    #[test]
    fn a_completed_step_carries_its_summary() {
        let summary = json!({"snapshot_id": null, "policy_count": 2, "unchanged": true});
        let completed = RunEvent::RunStepCompleted {
            step: "snapshot_policies".into(),
            attempt: 1,
            summary: summary.clone(),
            at: chrono::Utc::now(),
        };
        assert_eq!(
            details(&stored(OperationRun::TYPE, completed)),
            Some(json!({"step": "snapshot_policies", "attempt": 1, "summary": summary}))
        );
    }

    #[test]
    fn a_snapshot_carries_its_id_and_size_but_never_its_policies() {
        let raw = json!({"id": "p1", "displayName": "Secret-looking policy name", "state": "enabled",
            "conditions": {}, "grantControls": null, "sessionControls": null});
        let policies = domain::policy::curate(&[raw]).unwrap();
        let id = uuid::Uuid::now_v7();
        let snapshotted = TenantEvent::PolicySnapshotted {
            snapshot_id: id,
            hash: "h".into(),
            policies,
            diff: None,
            source: SnapshotSource::Import,
            taken_at: chrono::Utc::now(),
        };
        let found = details(&stored(Tenant::TYPE, snapshotted)).unwrap();
        assert_eq!(
            found,
            json!({"snapshot_id": id, "policy_count": 1, "source": "import", "changes": null})
        );
        assert!(!found.to_string().contains("Secret-looking"));
    }

    #[test]
    fn other_events_and_undecodable_ones_have_no_details() {
        let started = RunEvent::RunStarted {
            at: chrono::Utc::now(),
        };
        assert_eq!(details(&stored(OperationRun::TYPE, started)), None);
        let mut broken = stored(
            OperationRun::TYPE,
            RunEvent::RunSucceeded {
                summary_counts: counts(1, 0),
                at: chrono::Utc::now(),
                progress: vec![],
            },
        );
        broken.payload = json!({"RunSucceeded": {"summary_counts": "many"}});
        assert_eq!(details(&broken), None);
    }
}
