//! The runner: claims due tasks, decides the next action from the run's own history, performs
//! it and records the result as an event against the version it read. Every effect on
//! another aggregate carries an idempotency key (run + step + attempt), so a step performed
//! again after a crash changes nothing twice.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::connection::ProviderConnection;
use domain::policy::{self, CuratedPolicy};
use domain::run::{FailureSummary, OperationRun, RunCommand};
use domain::scope_lock::{scope_key, ScopeCommand, ScopeLock};
use domain::tenant::{SnapshotSource, Tenant, TenantCommand};
use domain::{ReasonCode, Role, RunId};
use graph::{AppCredentials, GraphApi, GraphError};
use rand::Rng;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use store::app::AppError;
use store::{
    AppendError, BusError, CommandBus, Metadata, Staged, StagedStream, UnitOfWork, Vault, Wakeups,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::plan::{Decision, Plan};
use crate::resync;
use crate::retry::Backoff;
use crate::tasks::{claim, extend, release, Task};

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
    #[error("the lease on the run's task was lost to another runner")]
    LeaseLost,
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
    [&resync::PLAN, &resync::IMPORT_PLAN]
        .into_iter()
        .find(|p| p.run_type == run_type)
}

/// After advancing a run: when its task is due again, or that the run ended (and its task
/// went with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Due(DateTime<Utc>),
    Ended,
}

/// The run as the engine carries it between decisions.
type RunState = Staged<OperationRun>;

/// Other streams a step's transaction decides on, appended together with the run.
#[derive(Default)]
struct Effects {
    tenant: Option<Staged<Tenant>>,
    lock: Option<Staged<ScopeLock>>,
}

/// The id of the scope lock a run holds.
fn scope_of(run: &OperationRun) -> Option<String> {
    let (workspace, context) = (run.workspace.as_ref()?, run.context.as_ref()?);
    Some(scope_key(workspace, context.target_scope))
}

/// The command that ends a run, for a decision that ends it.
fn ending(decision: &Decision, run: &OperationRun) -> Option<(&'static str, RunCommand)> {
    Some(match decision {
        Decision::Cancel => ("cancel", RunCommand::Cancel),
        Decision::Succeed => (
            "succeed",
            RunCommand::Succeed {
                summary_counts: summary_counts(run),
            },
        ),
        Decision::PartiallySucceed { failed_steps } => (
            "partial",
            RunCommand::PartiallySucceed {
                summary_counts: summary_counts(run),
                failures: failed_steps
                    .iter()
                    .map(|(step, reason)| FailureSummary {
                        reason: *reason,
                        message: format!("step {step} gave up"),
                        step: Some((*step).to_owned()),
                    })
                    .collect(),
            },
        ),
        Decision::Fail { step, reason } => (
            "fail",
            RunCommand::Fail {
                failure: FailureSummary {
                    reason: *reason,
                    message: format!("step {step} failed"),
                    step: Some((*step).to_owned()),
                },
            },
        ),
        Decision::Start | Decision::Perform { .. } | Decision::WaitUntil(_) | Decision::Done => {
            return None
        }
    })
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
        let span = tracing::info_span!("run", run_id = %task.run_id, run_type = %task.run_type, workspace = %task.workspace_id);
        match self.advance(&task).instrument(span).await {
            Ok(Next::Due(at)) => {
                release(self.pool(), task.run_id, &self.owner, at).await?;
                Ok(true)
            }
            Ok(Next::Ended) => Ok(true),
            Err(EngineError::LeaseLost) => {
                // Another runner holds the run now; what we committed stands (each append
                // was checked against the run's version).
                tracing::warn!(run_id = %task.run_id, "lease lost; leaving the run to its new holder");
                Ok(true)
            }
            Err(e) => {
                // Leave the lease to expire: another attempt comes after it.
                tracing::error!(run_id = %task.run_id, error = %e, "advancing a run failed");
                Err(e)
            }
        }
    }

    async fn load_run(&self, run_id: RunId) -> Result<RunState, EngineError> {
        let loaded = self
            .bus
            .load::<OperationRun>(&run_id.to_string())
            .await
            .map_err(AppError::from)?;
        Ok(Staged::new(
            run_id.to_string(),
            loaded.aggregate,
            loaded.version,
        ))
    }

    /// Extends the task's lease when half of it is used up, so a long run keeps it; fails
    /// when the lease was lost (then this runner must not perform another step).
    async fn keep_lease(
        &self,
        task: &Task,
        lease_until: &mut DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let half = chrono::Duration::from_std(self.lease / 2).unwrap_or_default();
        if *lease_until - Utc::now() > half {
            return Ok(());
        }
        match extend(self.pool(), task.run_id, &self.owner, self.lease).await? {
            Some(until) => {
                *lease_until = until;
                Ok(())
            }
            None => Err(EngineError::LeaseLost),
        }
    }

    /// Applies decisions until the run waits or ends. The run is loaded once; afterwards
    /// decisions are made against the state the engine carries, and written together with
    /// the next step's result, so a resync costs a few transactions rather than one per
    /// decision.
    async fn advance(&self, task: &Task) -> Result<Next, EngineError> {
        let run_id = RunId(task.run_id);
        let mut run = self.load_run(run_id).await?;
        let mut lease_until = task.lease_until;
        let mut credentials = None;
        for _ in 0..32 {
            let Some(plan) = plan_for(&run.state().run_type) else {
                if !run.state().is_active() {
                    return Ok(Next::Due(Utc::now() + chrono::Duration::days(1)));
                }
                let failure = FailureSummary {
                    reason: ReasonCode::ValidationFailed,
                    message: format!(
                        "no workflow runs operations of type {}",
                        run.state().run_type
                    ),
                    step: None,
                };
                self.stage(&mut run, run_id, "fail", RunCommand::Fail { failure })
                    .await?;
                return match self.settle(None, task, &mut run).await? {
                    true => Ok(Next::Ended),
                    false => Ok(Next::Due(Utc::now())),
                };
            };
            let decision = plan.decide(run.state(), Utc::now());
            match decision {
                Decision::Done => return Ok(Next::Due(Utc::now() + chrono::Duration::days(1))),
                Decision::WaitUntil(at) => {
                    self.settle(Some(plan), task, &mut run).await?;
                    return Ok(Next::Due(at));
                }
                // Not written on its own: it goes with the first step's result.
                Decision::Start => {
                    self.stage(&mut run, run_id, "start", RunCommand::Start)
                        .await?
                }
                Decision::Perform { step, attempt } => {
                    self.keep_lease(task, &mut lease_until).await?;
                    // No "step started" event: a step interrupted by a crash is simply
                    // performed again with the same attempt (its effect is idempotent).
                    let before = run.clone();
                    let outcome = match self.perform(step, run.state(), &mut credentials).await {
                        Ok(effect) => {
                            self.complete(plan, task, &mut run, step, attempt, effect)
                                .await
                        }
                        Err(f) => Err(f),
                    };
                    if outcome.is_err() {
                        // Nothing of the attempt was written: back to what was decided
                        // before it.
                        run = before;
                    }
                    match outcome {
                        Ok(true) => return Ok(Next::Ended),
                        Ok(false) => {}
                        // The run changed meanwhile (e.g. a cancellation request): nothing
                        // was committed; decide again from its new state.
                        Err(f) if f.reason == ReasonCode::Conflict => {
                            run = self.load_run(run_id).await?;
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
                            let key = format!("{step}:{attempt}:end");
                            self.stage(&mut run, run_id, &key, command).await?;
                            if self.settle(Some(plan), task, &mut run).await? {
                                return Ok(Next::Ended);
                            }
                        }
                    }
                }
                Decision::Cancel
                | Decision::Succeed
                | Decision::PartiallySucceed { .. }
                | Decision::Fail { .. } => {
                    if self.settle(Some(plan), task, &mut run).await? {
                        return Ok(Next::Ended);
                    }
                }
            }
        }
        self.settle(None, task, &mut run).await?;
        Ok(Next::Due(Utc::now()))
    }

    /// Decides a run command against the carried state, to be written by the next settle.
    async fn stage(
        &self,
        run: &mut RunState,
        run_id: RunId,
        key: &str,
        command: RunCommand,
    ) -> Result<(), EngineError> {
        let meta = self.meta(run.state(), run_id, format!("{run_id}:{key}"));
        run.decide(self.bus.services(), command, &meta)
            .await
            .map_err(AppError::from)?;
        Ok(())
    }

    /// Writes the run's staged decisions in a new transaction; see [`Engine::finish_in`].
    async fn settle(
        &self,
        plan: Option<&Plan>,
        task: &Task,
        run: &mut RunState,
    ) -> Result<bool, EngineError> {
        let needs_end =
            plan.is_some_and(|p| ending(&p.decide(run.state(), Utc::now()), run.state()).is_some());
        if !run.has_pending() && !needs_end {
            return Ok(false);
        }
        let uow = self.bus.begin().await?;
        Ok(self
            .finish_in(uow, plan, task, run, Effects::default())
            .await?)
    }

    /// Appends the run's staged decisions in `uow` and commits. When the plan then says
    /// the run is over, its end, the release of its scope and the removal of its task go
    /// into the same transaction. Returns whether the run ended.
    async fn finish_in(
        &self,
        mut uow: UnitOfWork,
        plan: Option<&Plan>,
        task: &Task,
        run: &mut RunState,
        mut effects: Effects,
    ) -> Result<bool, AppError> {
        let run_id = RunId(task.run_id);
        let end = match plan {
            Some(plan) => ending(&plan.decide(run.state(), Utc::now()), run.state()),
            // No plan: a failure staged by the caller ends it.
            None => None,
        };
        if let Some((key, command)) = end {
            let meta = self.meta(run.state(), run_id, format!("{run_id}:{key}"));
            run.decide(self.bus.services(), command, &meta).await?;
        }
        let ended = !run.state().is_active();
        if ended {
            // The scope is free again in the same transaction that ends the run.
            let lock = match effects.lock.as_mut() {
                Some(lock) => lock,
                None => match scope_of(run.state()) {
                    Some(id) => effects.lock.insert(uow.stage::<ScopeLock>(&id).await?),
                    None => return Err(AppError::Invalid("the run has no scope".into())),
                },
            };
            let meta = self.meta(run.state(), run_id, format!("{run_id}:release"));
            lock.decide(self.bus.services(), ScopeCommand::Release { run_id }, &meta)
                .await?;
        }
        let mut streams: Vec<&mut dyn StagedStream> = vec![run];
        streams.extend(effects.tenant.as_mut().map(|t| t as &mut dyn StagedStream));
        streams.extend(effects.lock.as_mut().map(|l| l as &mut dyn StagedStream));
        uow.append_all(&mut streams).await.map_err(|e| match e {
            AppendError::Conflict => AppError::Conflict,
            other => AppError::Internal(Box::new(other)),
        })?;
        // The task itself is removed by the task feed when it reads the run's end; until
        // then this runner's lease keeps others away from it.
        uow.commit()
            .await
            .map_err(|e| AppError::Internal(Box::new(e)))?;
        if ended {
            tracing::info!(outcome = ?run.state().outcome, "run completed");
        }
        Ok(ended)
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
                    // An import run's snapshot also seeds the tenant's policy intent.
                    source: if run.run_type == resync::IMPORT_RUN_TYPE {
                        SnapshotSource::Import
                    } else {
                        SnapshotSource::Graph
                    },
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
    /// Steps after it that call nothing outside are performed in the same transaction, and
    /// so is the run's end when it comes. Returns whether the run ended.
    async fn complete(
        &self,
        plan: &Plan,
        task: &Task,
        run: &mut RunState,
        step: &'static str,
        attempt: u32,
        effect: TenantCommand,
    ) -> Result<bool, StepFailure> {
        let mut uow = self
            .bus
            .begin()
            .await
            .map_err(|e| AppError::Internal(Box::new(e)))?;
        let (Some(context), Some(lock_id)) = (run.state().context.as_ref(), scope_of(run.state()))
        else {
            return Err(StepFailure::permanent(
                ReasonCode::InternalError,
                "the run has no context",
            ));
        };
        // The tenant and the run's scope lock (released if the run ends here) in one read.
        let tenant_id = context.tenant_key.to_string();
        let mut streams = uow
            .fetch_streams(&[
                (Tenant::TYPE, tenant_id.clone()),
                (ScopeLock::TYPE, lock_id.clone()),
            ])
            .await
            .map_err(|e| AppError::Internal(Box::new(e)))?;
        let mut tenant = streams.stage::<Tenant>(&tenant_id).map_err(bus_failure)?;
        let lock = streams.stage::<ScopeLock>(&lock_id).map_err(bus_failure)?;
        let (mut step, mut attempt) = (step, attempt);
        let mut summary = self
            .apply_effect(&mut tenant, run, task, step, attempt, effect)
            .await?;
        loop {
            let run_id = RunId(task.run_id);
            let command = RunCommand::CompleteStep {
                step: step.to_owned(),
                attempt,
                summary,
            };
            let key = format!("{step}:{attempt}:end");
            self.stage(run, run_id, &key, command)
                .await
                .map_err(|e| StepFailure::permanent(ReasonCode::InternalError, e.to_string()))?;
            // The next step, if it needs nothing from outside, rides along.
            let Decision::Perform {
                step: next,
                attempt: next_attempt,
            } = plan.decide(run.state(), Utc::now())
            else {
                break;
            };
            if plan.step(next).is_none_or(|d| d.calls_out) {
                break;
            }
            // A failure here is left for the step's own turn, where it is recorded.
            let Ok(next_effect) = self.perform(next, run.state(), &mut None).await else {
                break;
            };
            match self
                .apply_effect(&mut tenant, run, task, next, next_attempt, next_effect)
                .await
            {
                Ok(s) => (step, attempt, summary) = (next, next_attempt, s),
                Err(_) => break,
            }
        }
        let effects = Effects {
            tenant: Some(tenant),
            lock: Some(lock),
        };
        self.finish_in(uow, Some(plan), task, run, effects)
            .await
            .map_err(StepFailure::from)
    }

    /// Decides a step's effect on the run's tenant (appended with the step's completion);
    /// returns the step's summary.
    async fn apply_effect(
        &self,
        tenant: &mut Staged<Tenant>,
        run: &RunState,
        task: &Task,
        step: &str,
        attempt: u32,
        effect: TenantCommand,
    ) -> Result<serde_json::Value, StepFailure> {
        let run_id = RunId(task.run_id);
        let meta = self.meta(run.state(), run_id, format!("{run_id}:{step}:{attempt}"));
        let (count, is_snapshot) = match &effect {
            TenantCommand::RecordSnapshot { policies, .. } => (policies.len(), true),
            _ => (0, false),
        };
        let before = tenant.state().last_snapshot.as_ref().map(|s| s.snapshot_id);
        let done = tenant
            .decide(self.bus.services(), effect, &meta)
            .await
            .map_err(bus_failure)?;
        let state = tenant.state();
        Ok(if is_snapshot {
            let after = state.last_snapshot.as_ref().map(|s| s.snapshot_id);
            // Unchanged: no new snapshot was written, even if an import seeded the intent
            // with the existing one. A repeated attempt's events were written earlier and
            // may hold a snapshot, so it is not reported unchanged.
            serde_json::json!({
                "snapshot_id": after,
                "unchanged": before == after && !done.repeated,
                "policy_count": count,
            })
        } else if let Some(c) = &state.capabilities {
            serde_json::json!({ "ca_p1": c.ca_p1, "ca_p2": c.ca_p2 })
        } else {
            serde_json::json!({})
        })
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

/// The run's summary counts, from its steps' summaries: the steps completed, and the
/// snapshot's `policy_count` and `unchanged` (0 or 1), so the run itself (and its audit
/// entry) says what a resync found (R3.6).
fn summary_counts(run: &OperationRun) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    counts.insert(
        "steps_completed".to_owned(),
        run.steps
            .iter()
            .filter(|s| s.status == domain::run::StepStatus::Completed)
            .count() as i64,
    );
    let snapshot = run
        .step(resync::SNAPSHOT)
        .filter(|s| s.status == domain::run::StepStatus::Completed)
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
