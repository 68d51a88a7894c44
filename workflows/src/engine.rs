//! The runner: claims due tasks, decides the next action from the run's own history, performs
//! it and records the result as an event against the version it read. Every effect on
//! another aggregate carries an idempotency key (run + step + attempt), so a step performed
//! again after a crash changes nothing twice.

use chrono::Utc;
use domain::connection::ProviderConnection;
use domain::policy::{self, CuratedPolicy};
use domain::run::{FailureSummary, OperationRun, RunCommand};
use domain::tenant::{SnapshotSource, Tenant, TenantCommand};
use domain::{ReasonCode, Role, RunId};
use graph::{AppCredentials, GraphApi, GraphError};
use rand::Rng;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use store::app::{self, AppError};
use store::{BusError, CommandBus, Metadata, Vault, Wakeups};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::plan::{Decision, Plan};
use crate::resync;
use crate::retry::Backoff;
use crate::tasks::{claim, release, Task};

/// Why a step failed: a reason code, a short message, and whether to retry (and when).
#[derive(Debug)]
struct StepFailure {
    reason: ReasonCode,
    message: String,
    transient: bool,
    retry_after: Option<Duration>,
}

impl From<GraphError> for StepFailure {
    fn from(e: GraphError) -> Self {
        Self {
            reason: e.reason,
            transient: e.is_transient(),
            retry_after: e.retry_after,
            message: e.to_string(),
        }
    }
}

impl StepFailure {
    fn permanent(reason: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            transient: false,
            retry_after: None,
        }
    }
}

impl From<AppError> for StepFailure {
    fn from(e: AppError) -> Self {
        let transient = matches!(e, AppError::Conflict | AppError::Internal(_));
        Self {
            reason: e.reason_code(),
            message: e.to_string(),
            transient,
            retry_after: None,
        }
    }
}

fn bus_failure<E: domain::DomainError + Send + Sync + 'static>(e: BusError<E>) -> StepFailure {
    AppError::from(e).into()
}

/// Why the engine could not advance a task (the task stays; its lease expires).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("recording a run's progress failed: {0}")]
    Record(#[from] AppError),
}

/// Advances runs.
pub struct Engine {
    pub bus: CommandBus,
    pub vault: Vault,
    pub graph: Arc<dyn GraphApi>,
    /// This instance's name on leases.
    pub owner: String,
    pub lease: Duration,
    pub backoff: Backoff,
}

fn plan_for(run_type: &str) -> Option<&'static Plan> {
    [&resync::PLAN].into_iter().find(|p| p.run_type == run_type)
}

impl Engine {
    fn pool(&self) -> &PgPool {
        self.bus.pool()
    }

    fn meta(&self, run: &OperationRun, run_id: RunId, key: String) -> Metadata {
        let workspace = run
            .workspace
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_default();
        let mut m = Metadata::new(workspace, format!("workflow:{}", self.owner), Role::System);
        m.correlation_id = run_id.to_string();
        m.with_idempotency_key(key)
    }

    /// Claims one due task and advances its run as far as it can go now. Returns whether
    /// there was a task.
    pub async fn tick(&self) -> Result<bool, EngineError> {
        let Some(task) = claim(self.pool(), &self.owner, self.lease).await? else {
            return Ok(false);
        };
        let next_due = self.advance(&task).await;
        match next_due {
            Ok(due) => {
                release(self.pool(), task.run_id, &self.owner, due).await?;
                Ok(true)
            }
            Err(e) => {
                // Leave the lease to expire: another attempt comes after it.
                tracing::error!(run_id = %task.run_id, error = %e, "advancing a run failed");
                Err(e)
            }
        }
    }

    /// Applies decisions until the run waits or ends; returns when the task is due next.
    async fn advance(&self, task: &Task) -> Result<chrono::DateTime<Utc>, EngineError> {
        let span = tracing::info_span!("run", run_id = %task.run_id, run_type = %task.run_type, workspace = %task.workspace_id);
        self.advance_run(RunId(task.run_id)).instrument(span).await
    }

    async fn advance_run(&self, run_id: RunId) -> Result<chrono::DateTime<Utc>, EngineError> {
        // Loaded once; afterwards each recorded event hands back the run's new state.
        let loaded = self
            .bus
            .load::<OperationRun>(&run_id.to_string())
            .await
            .map_err(AppError::from)?;
        let (mut run, mut version) = (loaded.aggregate, loaded.version);
        let mut credentials = None;
        for _ in 0..32 {
            let Some(plan) = plan_for(&run.run_type) else {
                if run.is_active() {
                    self.finish(
                        &run,
                        run_id,
                        version,
                        "fail",
                        RunCommand::Fail {
                            failure: FailureSummary {
                                reason: ReasonCode::ValidationFailed,
                                message: format!(
                                    "no workflow runs operations of type {}",
                                    run.run_type
                                ),
                                step: None,
                            },
                        },
                    )
                    .await?;
                }
                return Ok(Utc::now() + chrono::Duration::days(1));
            };
            match plan.decide(&run, Utc::now()) {
                Decision::Done => return Ok(Utc::now() + chrono::Duration::days(1)),
                Decision::WaitUntil(at) => return Ok(at),
                Decision::Start => {
                    (run, version) = self
                        .record(&run, run_id, version, "start", RunCommand::Start)
                        .await?
                }
                Decision::Perform { step, attempt } => {
                    // No "step started" event: a step interrupted by a crash is simply
                    // performed again with the same attempt (its effect is idempotent), and
                    // one commit fewer per step matters for fleet-wide resyncs.
                    let outcome = match self.perform(step, &run, &mut credentials).await {
                        Ok(effect) => {
                            self.complete(&run, run_id, version, step, attempt, effect)
                                .await
                        }
                        Err(f) => Err(f),
                    };
                    match outcome {
                        Ok(next) => (run, version) = next,
                        // The run changed meanwhile (e.g. a cancellation request): nothing
                        // was committed; decide again from its new state.
                        Err(f) if f.reason == ReasonCode::Conflict => {
                            let loaded = self
                                .bus
                                .load::<OperationRun>(&run_id.to_string())
                                .await
                                .map_err(AppError::from)?;
                            (run, version) = (loaded.aggregate, loaded.version);
                        }
                        Err(f) => {
                            let max = plan.step(step).map(|s| s.max_attempts).unwrap_or(1);
                            let retry_at = (f.transient && attempt < max).then(|| {
                                let unit: f64 = rand::thread_rng().gen();
                                Utc::now()
                                    + chrono::Duration::from_std(self.backoff.delay(
                                        attempt,
                                        f.retry_after,
                                        unit,
                                    ))
                                    .unwrap_or_default()
                            });
                            tracing::warn!(step, attempt, reason = %f.reason, retry = retry_at.is_some(), "step failed");
                            let command = RunCommand::FailStep {
                                step: step.to_owned(),
                                attempt,
                                reason: f.reason,
                                message: f.message,
                                retry_at,
                            };
                            (run, version) = self
                                .record(
                                    &run,
                                    run_id,
                                    version,
                                    &format!("{step}:{attempt}:end"),
                                    command,
                                )
                                .await?;
                        }
                    }
                }
                Decision::Cancel => {
                    (run, version) = self
                        .finish(&run, run_id, version, "cancel", RunCommand::Cancel)
                        .await?
                }
                Decision::Succeed => {
                    let counts = summary_counts(&run);
                    (run, version) = self
                        .finish(
                            &run,
                            run_id,
                            version,
                            "succeed",
                            RunCommand::Succeed {
                                summary_counts: counts,
                            },
                        )
                        .await?
                }
                Decision::PartiallySucceed { failed_steps } => {
                    let failures = failed_steps
                        .into_iter()
                        .map(|(step, reason)| FailureSummary {
                            reason,
                            message: format!("step {step} gave up"),
                            step: Some(step.to_owned()),
                        })
                        .collect();
                    let counts = summary_counts(&run);
                    (run, version) = self
                        .finish(
                            &run,
                            run_id,
                            version,
                            "partial",
                            RunCommand::PartiallySucceed {
                                summary_counts: counts,
                                failures,
                            },
                        )
                        .await?
                }
                Decision::Fail { step, reason } => {
                    let failure = FailureSummary {
                        reason,
                        message: format!("step {step} failed"),
                        step: Some(step.to_owned()),
                    };
                    (run, version) = self
                        .finish(&run, run_id, version, "fail", RunCommand::Fail { failure })
                        .await?
                }
            }
        }
        Ok(Utc::now())
    }

    /// Appends a progress event against the version we decided on.
    async fn record(
        &self,
        run: &OperationRun,
        run_id: RunId,
        version: i64,
        key: &str,
        command: RunCommand,
    ) -> Result<(OperationRun, i64), EngineError> {
        self.append(run, run_id, version, key, command, false).await
    }

    /// Completes the run and frees its scope, in one transaction.
    async fn finish(
        &self,
        run: &OperationRun,
        run_id: RunId,
        version: i64,
        key: &str,
        command: RunCommand,
    ) -> Result<(OperationRun, i64), EngineError> {
        let done = self
            .append(run, run_id, version, key, command, true)
            .await?;
        tracing::info!(outcome = ?done.0.outcome, "run completed");
        Ok(done)
    }

    async fn append(
        &self,
        run: &OperationRun,
        run_id: RunId,
        version: i64,
        key: &str,
        command: RunCommand,
        release_scope: bool,
    ) -> Result<(OperationRun, i64), EngineError> {
        let meta = self.meta(run, run_id, format!("{run_id}:{key}"));
        let mut uow = self.bus.begin().await?;
        let done = uow
            .execute_expecting::<OperationRun>(&run_id.to_string(), Some(version), command, &meta)
            .await
            .map_err(AppError::from)?;
        if release_scope {
            app::release_scope(&mut uow, &done.aggregate, run_id, &meta).await?;
        }
        uow.commit().await?;
        Ok((done.aggregate, done.version))
    }

    async fn credentials(&self, run: &OperationRun) -> Result<AppCredentials, StepFailure> {
        let context = run.context.as_ref().ok_or_else(|| {
            StepFailure::permanent(
                ReasonCode::ProviderConnectionMissing,
                "the run has no connection",
            )
        })?;
        let connection_id = context.connection_id.ok_or_else(|| {
            StepFailure::permanent(
                ReasonCode::ProviderConnectionMissing,
                "the run has no connection",
            )
        })?;
        let connection = self
            .bus
            .load::<ProviderConnection>(&connection_id.to_string())
            .await
            .map_err(bus_failure)?
            .aggregate;
        let credential = connection.credential.ok_or_else(|| {
            StepFailure::permanent(
                ReasonCode::ProviderCredentialMissing,
                "the connection has no credential",
            )
        })?;
        let secret = self
            .vault
            .fetch(self.pool(), credential.credential_ref)
            .await
            .map_err(|_| {
                StepFailure::permanent(
                    ReasonCode::ProviderCredentialMissing,
                    "the credential cannot be read",
                )
            })?;
        let tenant = connection.entra_tenant_id.unwrap_or(context.target_scope);
        Ok(AppCredentials::new(
            tenant.as_uuid(),
            secret.client_id,
            secret.client_secret,
        ))
    }

    /// The outside work of a step (Graph calls, never inside a transaction). What it
    /// found is returned as the command to apply to the tenant.
    /// `app` caches the run's credentials for its later steps: the connection and the vault
    /// are read once per run, not once per step.
    async fn perform(
        &self,
        step: &str,
        run: &OperationRun,
        app: &mut Option<AppCredentials>,
    ) -> Result<TenantCommand, StepFailure> {
        if app.is_none() && matches!(step, resync::SNAPSHOT | resync::LICENSES) {
            *app = Some(self.credentials(run).await?);
        }
        match step {
            resync::SNAPSHOT => {
                let app = app.as_ref().ok_or_else(|| {
                    StepFailure::permanent(ReasonCode::ProviderCredentialMissing, "no credential")
                })?;
                let fetched = self.graph.list_conditional_access_policies(app).await?;
                let raw: Vec<serde_json::Value> = fetched
                    .into_iter()
                    .map(|p| serde_json::Value::Object(p.json))
                    .collect();
                let policies: Vec<CuratedPolicy> = policy::curate(&raw).map_err(|e| {
                    StepFailure::permanent(ReasonCode::GraphMalformedResponse, e.to_string())
                })?;
                Ok(TenantCommand::RecordSnapshot {
                    snapshot_id: Uuid::now_v7(),
                    policies,
                    source: SnapshotSource::Graph,
                })
            }
            resync::LICENSES => {
                let app = app.as_ref().ok_or_else(|| {
                    StepFailure::permanent(ReasonCode::ProviderCredentialMissing, "no credential")
                })?;
                let skus = self.graph.list_subscribed_skus(app).await.map_err(|e| {
                    // The token already worked for the policies: a 401 or 403 here means the
                    // app lacks the directory permission licenses need.
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
                Ok(TenantCommand::RecordLicenses {
                    capabilities: policy::capabilities(&raw),
                })
            }
            resync::RECORD => Ok(TenantCommand::RecordResync {
                at: run.started_at.unwrap_or_else(Utc::now),
            }),
            other => Err(StepFailure::permanent(
                ReasonCode::InternalError,
                format!("unknown step {other}"),
            )),
        }
    }

    /// Applies a step's effect to the tenant and completes the step, in one transaction:
    /// either both are recorded or neither. The effect carries the idempotency key of this
    /// step attempt, so a step performed again after a crash changes the tenant only once.
    async fn complete(
        &self,
        run: &OperationRun,
        run_id: RunId,
        version: i64,
        step: &str,
        attempt: u32,
        effect: TenantCommand,
    ) -> Result<(OperationRun, i64), StepFailure> {
        let tenant_id = run
            .context
            .as_ref()
            .map(|c| c.tenant_key.to_string())
            .ok_or_else(|| {
                StepFailure::permanent(ReasonCode::InternalError, "the run has no context")
            })?;
        let meta = self.meta(run, run_id, format!("{run_id}:{step}:{attempt}"));
        let mut uow = self
            .bus
            .begin()
            .await
            .map_err(|e| AppError::Internal(Box::new(e)))?;
        let (count, is_snapshot) = match &effect {
            TenantCommand::RecordSnapshot { policies, .. } => (policies.len(), true),
            _ => (0, false),
        };
        let done = uow
            .execute::<Tenant>(&tenant_id, effect, &meta)
            .await
            .map_err(bus_failure)?;
        let summary = if is_snapshot {
            serde_json::json!({
                "snapshot_id": done.aggregate.last_snapshot.as_ref().map(|s| s.snapshot_id),
                "unchanged": done.events.is_empty() && !done.repeated,
                "policy_count": count,
            })
        } else if let Some(c) = &done.aggregate.capabilities {
            serde_json::json!({ "ca_p1": c.ca_p1, "ca_p2": c.ca_p2 })
        } else {
            serde_json::json!({})
        };
        let command = RunCommand::CompleteStep {
            step: step.to_owned(),
            attempt,
            summary,
        };
        let run_meta = self.meta(run, run_id, format!("{run_id}:{step}:{attempt}:end"));
        let recorded = uow
            .execute_expecting::<OperationRun>(
                &run_id.to_string(),
                Some(version),
                command,
                &run_meta,
            )
            .await
            .map_err(bus_failure)?;
        uow.commit()
            .await
            .map_err(|e| AppError::Internal(Box::new(e)))?;
        Ok((recorded.aggregate, recorded.version))
    }

    /// Runs until `shutdown`: advances every due task, then waits for new events or the
    /// next poll (retries come due without an event).
    pub async fn run(self, mut wakeups: Wakeups, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            wakeups.mark_seen();
            // A failed tick was logged; its lease expires and the task comes back.
            let busy = self.tick().await.unwrap_or_default();
            if busy {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wakeups.wait(Duration::from_millis(250)) => {}
            }
        }
    }
}

/// The run's summary counts, from its steps' summaries.
fn summary_counts(run: &OperationRun) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    counts.insert(
        "steps_completed".to_owned(),
        run.steps
            .iter()
            .filter(|s| s.status == domain::run::StepStatus::Completed)
            .count() as i64,
    );
    counts
}
