//! The Conditional Access resync workflow (R3): snapshot the policies, refresh licenses
//! (non-fatal), record the resync. An import (R3.4) is the same workflow under its own run
//! type, whose snapshot also becomes the tenant's policy intent.

use std::collections::BTreeMap;

use domain::policy::{self, CuratedPolicy};
use domain::run::{OperationRun, StepStatus};
use domain::tenant::{SnapshotSource, TenantCommand};
use domain::ReasonCode;
use uuid::Uuid;

use crate::plan::{Plan, StepDef};
use crate::workflow::{steps_completed, Applied, Effect, StepContext, StepFailure, Workflow};

/// Run type of a resync.
pub const RUN_TYPE: &str = "policy.resync";

/// Run type of a resync whose snapshot is an import: it also seeds the policy intent.
pub const IMPORT_RUN_TYPE: &str = "policy.import";

/// The module resync and import runs are started under.
pub const MODULE: &str = "conditional_access";

pub const SNAPSHOT: &str = "snapshot_policies";
pub const LICENSES: &str = "refresh_licenses";
pub const RECORD: &str = "record_resync";

/// A failed snapshot fails the run; a failed license refresh leaves the snapshot standing
/// and the run partially succeeded.
const STEPS: &[StepDef] = &[
    StepDef {
        name: SNAPSHOT,
        max_attempts: 5,
        fatal: true,
        calls_out: true,
    },
    StepDef {
        name: LICENSES,
        max_attempts: 3,
        fatal: false,
        calls_out: true,
    },
    StepDef {
        name: RECORD,
        max_attempts: 5,
        fatal: true,
        calls_out: false,
    },
];

/// The resync plan.
pub const PLAN: Plan = Plan {
    run_type: RUN_TYPE,
    steps: STEPS,
};

/// The import plan: the resync's steps; only the snapshot's source differs.
pub const IMPORT_PLAN: Plan = Plan {
    run_type: IMPORT_RUN_TYPE,
    steps: STEPS,
};

/// A resync: what the tenant has now becomes its latest snapshot.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resync;

/// An import: a resync whose snapshot also seeds the tenant's policy intent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Import;

#[async_trait::async_trait]
impl Workflow for Resync {
    fn plan(&self) -> &Plan {
        &PLAN
    }
    fn module(&self) -> &'static str {
        MODULE
    }
    fn schedulable(&self) -> bool {
        true
    }
    async fn perform(&self, step: &str, cx: &StepContext<'_>) -> Result<Effect, StepFailure> {
        perform(step, cx, SnapshotSource::Graph).await
    }
    fn summarize(&self, step: &str, applied: &Applied<'_>) -> serde_json::Value {
        summarize(step, applied)
    }
    fn summary_counts(&self, run: &OperationRun) -> BTreeMap<String, i64> {
        summary_counts(run)
    }
}

#[async_trait::async_trait]
impl Workflow for Import {
    fn plan(&self) -> &Plan {
        &IMPORT_PLAN
    }
    fn module(&self) -> &'static str {
        MODULE
    }
    async fn perform(&self, step: &str, cx: &StepContext<'_>) -> Result<Effect, StepFailure> {
        perform(step, cx, SnapshotSource::Import).await
    }
    fn summarize(&self, step: &str, applied: &Applied<'_>) -> serde_json::Value {
        summarize(step, applied)
    }
    fn summary_counts(&self, run: &OperationRun) -> BTreeMap<String, i64> {
        summary_counts(run)
    }
}

async fn perform(
    step: &str,
    cx: &StepContext<'_>,
    source: SnapshotSource,
) -> Result<Effect, StepFailure> {
    let command = match step {
        SNAPSHOT => {
            let fetched = cx
                .graph
                .list_conditional_access_policies(cx.credentials()?)
                .await?;
            let raw: Vec<serde_json::Value> = fetched
                .into_iter()
                .map(|p| serde_json::Value::Object(p.json))
                .collect();
            let policies: Vec<CuratedPolicy> = policy::curate(&raw).map_err(|e| {
                StepFailure::permanent(ReasonCode::GraphMalformedResponse, e.to_string())
            })?;
            TenantCommand::RecordSnapshot {
                snapshot_id: Uuid::now_v7(),
                policies,
                source,
            }
        }
        LICENSES => {
            let skus = cx
                .graph
                .list_subscribed_skus(cx.credentials()?)
                .await
                .map_err(|e| {
                    // The token already worked for the policies: a 401 or 403 here means
                    // the app lacks the directory permission licenses need.
                    e.remap(
                        ReasonCode::ProviderPermissionMissing,
                        ReasonCode::LicensePermissionMissing,
                    )
                    .remap(
                        ReasonCode::ProviderAuthFailed,
                        ReasonCode::LicensePermissionMissing,
                    )
                })?;
            let raw: Vec<serde_json::Value> = skus
                .iter()
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect();
            TenantCommand::RecordLicenses {
                capabilities: policy::capabilities(&raw),
            }
        }
        RECORD => TenantCommand::RecordResync {
            at: cx.run.started_at.unwrap_or(cx.now),
        },
        other => return Err(StepFailure::unknown_step(other)),
    };
    Ok(Effect::Tenant(command))
}

/// A snapshot step says which snapshot it wrote, how many policies it read and whether
/// they were unchanged; a license step, the Conditional Access plans found.
fn summarize(step: &str, applied: &Applied<'_>) -> serde_json::Value {
    match (step, applied.effect) {
        (SNAPSHOT, Effect::Tenant(TenantCommand::RecordSnapshot { policies, .. })) => {
            let snapshotted = applied.event_types.iter().any(|t| t == "PolicySnapshotted");
            // Unchanged: no new snapshot was written, even if an import seeded the intent
            // with the existing one. A repeated attempt's events were written earlier and
            // may hold a snapshot, so it is not reported unchanged.
            serde_json::json!({
                "snapshot_id": applied.tenant.and_then(|t| t.last_snapshot.as_ref().map(|s| s.snapshot_id)),
                "unchanged": !snapshotted && !applied.repeated,
                "policy_count": policies.len(),
            })
        }
        (LICENSES, _) => match applied.tenant.and_then(|t| t.capabilities.as_ref()) {
            Some(c) => serde_json::json!({ "ca_p1": c.ca_p1, "ca_p2": c.ca_p2 }),
            None => serde_json::json!({}),
        },
        _ => serde_json::json!({}),
    }
}

/// The run's summary counts, from its steps' summaries: the steps completed, and the
/// snapshot's `policy_count` and `unchanged` (0 or 1), so the run itself (and its audit
/// entry) says what a resync found (R3.6).
fn summary_counts(run: &OperationRun) -> BTreeMap<String, i64> {
    let mut counts = steps_completed(run);
    let snapshot = run
        .step(SNAPSHOT)
        .filter(|s| s.status == StepStatus::Completed)
        .and_then(|s| s.summary.as_ref());
    if let Some(summary) = snapshot {
        if let Some(n) = summary["policy_count"].as_i64() {
            counts.insert("policy_count".to_owned(), n);
        }
        if let Some(unchanged) = summary["unchanged"].as_bool() {
            counts.insert("unchanged".to_owned(), i64::from(unchanged));
        }
    }
    counts
}
