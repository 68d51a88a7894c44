//! The runner: claims due tasks, decides the next action from the run's own history (its
//! logged events and its checkpoint), performs it and records the result in the run's
//! checkpoint, with the step's effects as events, against the versions it read. The run's
//! end carries the checkpoint into the log (issue 13). Every effect on another aggregate
//! carries an idempotency key (run + step + attempt), so a step performed again after a
//! crash changes nothing twice.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::connection::{ConnectionCommand, ProviderConnection};
use domain::run::{FailureSummary, OperationRun, RunCommand, RunEvent};
use domain::tenant::Tenant;
use domain::{DomainError, ReasonCode, Role, RunId};
use graph::{AppCredentials, GraphApi};
use rand::Rng;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{
    AppendError, BusError, CommandBus, Metadata, SealedCredential, Staged, StagedStream, Streams,
    Vault, Wakeups,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::plan::{Decision, Plan};
use crate::retry::Backoff;
use crate::tasks::{claim_with_streams, extend, release, Claimed, Task};
use crate::workflow::{Applied, Effect, Registry, StepContext, StepFailure, Workflow};

/// A refusal or failure of the bus while deciding a step's effect, as the step's failure:
/// a domain refusal will not change on retry; anything else might.
fn bus_failure<E: DomainError>(e: BusError<E>) -> StepFailure {
    StepFailure {
        reason: e.reason_code(),
        transient: !matches!(e, BusError::Domain(_) | BusError::Forbidden { .. }),
        retry_after: None,
        message: e.to_string(),
    }
}

/// Why the engine could not advance a task (the task stays; its lease expires).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("appending the run's progress failed: {0}")]
    Append(#[from] AppendError),
    #[error("a stream of the run cannot be read: {0}")]
    Unreadable(String),
    #[error("the run refused the engine's decision ({reason}): {message}")]
    Refused { reason: ReasonCode, message: String },
    #[error("the run holds no scope lock")]
    NoScope,
    #[error("the lease on the run's task was lost to another runner")]
    LeaseLost,
}

impl<E: DomainError> From<BusError<E>> for EngineError {
    fn from(e: BusError<E>) -> Self {
        match e {
            BusError::Database(e) => EngineError::Database(e),
            BusError::Corrupt { .. } => EngineError::Unreadable(e.to_string()),
            other => EngineError::Refused {
                reason: other.reason_code(),
                message: other.to_string(),
            },
        }
    }
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
    /// How long a completed step's result may wait to be written together with the next
    /// step's (one statement instead of two). When the next step's outside work takes
    /// longer, the result is written meanwhile. Zero writes every step on its own.
    pub write_window: Duration,
    /// The workflows this engine runs.
    pub workflows: Registry,
}

impl Engine {
    /// The default [`Engine::write_window`].
    pub const DEFAULT_WRITE_WINDOW: Duration = Duration::from_millis(250);

    /// The default [`Engine::lease`].
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

    /// An engine running the product's workflows ([`Registry::standard`]) with the default
    /// lease, backoff and write window.
    pub fn new(
        bus: CommandBus,
        vault: Vault,
        graph: Arc<dyn GraphApi>,
        owner: impl Into<String>,
    ) -> Self {
        Self {
            bus,
            vault,
            graph,
            owner: owner.into(),
            lease: Self::DEFAULT_LEASE,
            backoff: Backoff::default(),
            write_window: Self::DEFAULT_WRITE_WINDOW,
            workflows: Registry::standard(),
        }
    }

    /// Adds workflow `W` to those this engine runs.
    pub fn register<W: Workflow + Default>(&mut self) -> &mut Self {
        self.workflows.register::<W>();
        self
    }
}

/// After advancing a run: when its task is due again, or that the run ended (and its task
/// went with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Due(DateTime<Utc>),
    Ended,
}

/// What the engine carries for a run between decisions: the streams its steps decide on,
/// read with the claim, and what was decided on them since (staged until appended).
#[derive(Clone)]
struct Carried {
    run: Staged<OperationRun>,
    tenant: Option<Staged<Tenant>>,
    connection: Option<Staged<ProviderConnection>>,
    /// The connection's newest vault row, read with the claim.
    sealed: Option<SealedCredential>,
    /// The run's progress in its checkpoint (off the log), as of `checkpoint`.
    unlogged: Vec<RunEvent>,
    /// The version of the run's checkpoint `unlogged` was read at.
    checkpoint: i32,
}

/// How appending what was decided went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Written; the run goes on.
    Open,
    /// Written; the run ended.
    Ended,
    /// A stream moved since it was read: nothing was written.
    Conflict,
    /// Nothing written yet: what was decided waits to go with the next step's result.
    Pending,
}

/// How performing a step's outside work went.
enum Performed {
    /// The work is done (or failed).
    Done(Result<Effect, StepFailure>),
    /// Writing earlier results while the step worked found that a stream had moved: the
    /// step's work was dropped, and the run must be read again.
    Conflict,
}

/// The command that ends a run, for a decision that ends it.
fn ending(
    decision: &Decision,
    workflow: &dyn Workflow,
    run: &OperationRun,
) -> Option<(&'static str, RunCommand)> {
    Some(match decision {
        Decision::Cancel => ("cancel", RunCommand::Cancel),
        Decision::Succeed => {
            let failures = workflow.item_failures(run);
            if failures.is_empty() {
                (
                    "succeed",
                    RunCommand::Succeed {
                        summary_counts: workflow.summary_counts(run),
                    },
                )
            } else {
                (
                    "partial",
                    RunCommand::PartiallySucceed {
                        summary_counts: workflow.summary_counts(run),
                        failures,
                    },
                )
            }
        }
        Decision::PartiallySucceed { failed_steps } => (
            "partial",
            RunCommand::PartiallySucceed {
                summary_counts: workflow.summary_counts(run),
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

    /// Now, by the engine's clock (the bus's services'): the only time the engine reads,
    /// so a test can move it.
    fn now(&self) -> DateTime<Utc> {
        self.bus.services().clock.now()
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
        // The lease is measured from before the claim on this process's monotonic clock,
        // so it is never thought longer than the database made it.
        let asked = Instant::now();
        let claimed = claim_with_streams(self.pool(), &self.owner, self.lease, self.now()).await?;
        self.bus.metrics().engine_claimed(claimed.is_some());
        let Some(claimed) = claimed else {
            return Ok(false);
        };
        let Claimed {
            task,
            streams,
            credential,
            checkpoint,
        } = claimed;
        let span = tracing::info_span!("run", run_id = %task.run_id, run_type = %task.run_type, workspace = %task.workspace_id);
        match self
            .advance(&task, asked + self.lease, streams, checkpoint, credential)
            .instrument(span)
            .await
        {
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

    /// The run and the streams its steps decide on, from `streams` and `checkpoint` (read
    /// with the claim); whatever is missing there is read now.
    async fn carry(
        &self,
        run_id: RunId,
        mut streams: Streams,
        checkpoint: Option<store::checkpoints::Checkpoint>,
    ) -> Result<Carried, EngineError> {
        let id = run_id.to_string();
        if !streams.contains(OperationRun::TYPE, &id) {
            streams = self
                .bus
                .fetch_streams(&[(OperationRun::TYPE, id.clone())])
                .await?;
        }
        let mut run = streams.stage::<OperationRun>(&id)?;
        // The run's progress since its last logged event is in its checkpoint, not the log.
        let checkpoint = match checkpoint {
            Some(read) => read,
            None => store::checkpoints::read(&mut *self.pool().acquire().await?, run_id).await?,
        };
        let unlogged = match run.state().is_active() {
            true => checkpoint.progress,
            false => Vec::new(),
        };
        for event in &unlogged {
            run.state_mut().apply(event.clone());
        }
        let context = run.state().context.clone();
        let tenant_id = context.as_ref().map(|c| c.tenant_key.to_string());
        let connection_id = context
            .as_ref()
            .and_then(|c| c.connection_id)
            .map(|c| c.to_string());
        let mut missing = Vec::new();
        for (t, i) in [
            (Tenant::TYPE, &tenant_id),
            (ProviderConnection::TYPE, &connection_id),
        ] {
            if let Some(i) = i.as_ref().filter(|i| !streams.contains(t, i)) {
                missing.push((t, i.clone()));
            }
        }
        if !missing.is_empty() {
            // Tasks fed before they named their streams, or streams that are empty.
            let more = self.bus.fetch_streams(&missing).await?;
            streams.extend(more);
        }
        let tenant = match &tenant_id {
            Some(i) => Some(streams.stage::<Tenant>(i)?),
            None => None,
        };
        let connection = match &connection_id {
            Some(i) => Some(streams.stage::<ProviderConnection>(i)?),
            None => None,
        };
        Ok(Carried {
            run,
            tenant,
            connection,
            sealed: None,
            unlogged,
            checkpoint: checkpoint.version,
        })
    }

    /// Reads the run and its streams again (after a conflict).
    async fn reload(&self, run_id: RunId) -> Result<Carried, EngineError> {
        self.carry(run_id, Streams::default(), None).await
    }

    /// Extends the task's lease when half of it is used up, so a long run keeps it; fails
    /// when the lease was lost (then this runner must not perform another step).
    async fn keep_lease(&self, task: &Task, lease_ends: &mut Instant) -> Result<(), EngineError> {
        if lease_ends.saturating_duration_since(Instant::now()) > self.lease / 2 {
            return Ok(());
        }
        let asked = Instant::now();
        match extend(self.pool(), task.run_id, &self.owner, self.lease).await? {
            Some(_) => {
                *lease_ends = asked + self.lease;
                Ok(())
            }
            None => Err(EngineError::LeaseLost),
        }
    }

    /// Applies decisions until the run waits or ends. The streams are read once, with the
    /// claim; afterwards decisions are made against the state the engine carries and
    /// appended together with the next step's result, each write a single statement
    /// checked against the versions read.
    async fn advance(
        &self,
        task: &Task,
        mut lease_ends: Instant,
        streams: Streams,
        checkpoint: store::checkpoints::Checkpoint,
        sealed: Option<SealedCredential>,
    ) -> Result<Next, EngineError> {
        let run_id = RunId(task.run_id);
        let mut c = self.carry(run_id, streams, Some(checkpoint)).await?;
        c.sealed = sealed;
        let mut credentials = None;
        // Since when decided results wait, unwritten, for the next step's.
        let mut pending_since: Option<Instant> = None;
        for _ in 0..32 {
            let Ok(wf) = self.workflows.known(&c.run.state().run_type) else {
                if !c.run.state().is_active() {
                    return Ok(Next::Due(self.now() + chrono::Duration::days(1)));
                }
                // Runs are refused at start unless a workflow runs their type; this one
                // was queued by a binary that knew a workflow this one does not.
                let failure = FailureSummary {
                    reason: ReasonCode::ValidationFailed,
                    message: format!(
                        "no workflow runs operations of type {}",
                        c.run.state().run_type
                    ),
                    step: None,
                };
                self.stage(&mut c, run_id, "fail", RunCommand::Fail { failure })
                    .await?;
                match self.settle(None, task, &mut c).await? {
                    Settled::Ended => return Ok(Next::Ended),
                    Settled::Open | Settled::Pending => return Ok(Next::Due(self.now())),
                    Settled::Conflict => {
                        c = self.reload(run_id).await?;
                        continue;
                    }
                }
            };
            let decision = wf.plan().decide(c.run.state(), self.now());
            let settled = match decision {
                Decision::Done => return Ok(Next::Due(self.now() + chrono::Duration::days(1))),
                Decision::WaitUntil(at) => match self.settle(Some(wf), task, &mut c).await? {
                    Settled::Conflict => Settled::Conflict,
                    _ => return Ok(Next::Due(at)),
                },
                // Not written on its own: it goes with the first step's result.
                Decision::Start => {
                    self.stage(&mut c, run_id, "start", RunCommand::Start)
                        .await?;
                    Settled::Pending
                }
                Decision::Perform { step, attempt } => {
                    self.keep_lease(task, &mut lease_ends).await?;
                    // No "step started" event: a step interrupted by a crash is simply
                    // performed again with the same attempt (its effect is idempotent).
                    match self
                        .perform_step(wf, step, task, &mut c, &mut credentials, &mut pending_since)
                        .await?
                    {
                        // Writing the earlier results found that the run moved (the step's
                        // work was dropped).
                        Performed::Conflict => Settled::Conflict,
                        Performed::Done(done) => {
                            self.record_step(wf, task, &mut c, (step, attempt), done)
                                .await?
                        }
                    }
                }
                Decision::Cancel
                | Decision::Succeed
                | Decision::PartiallySucceed { .. }
                | Decision::Fail { .. } => self.settle(Some(wf), task, &mut c).await?,
            };
            match settled {
                Settled::Ended => return Ok(Next::Ended),
                Settled::Open => pending_since = None,
                Settled::Pending => {
                    pending_since.get_or_insert_with(Instant::now);
                }
                // The run (or its tenant) changed meanwhile, e.g. a cancellation request:
                // nothing was written; decide again from the new state.
                Settled::Conflict => {
                    c = self.reload(run_id).await?;
                    pending_since = None;
                }
            }
        }
        self.settle(None, task, &mut c).await?;
        Ok(Next::Due(self.now()))
    }

    /// Records a performed step: its effect and completion (with the steps that ride along)
    /// are decided and written now or with the next step's result; a failure is recorded
    /// with its retry time, on the state decided before the attempt.
    async fn record_step(
        &self,
        wf: &dyn Workflow,
        task: &Task,
        c: &mut Carried,
        (step, attempt): (&'static str, u32),
        done: Result<Effect, StepFailure>,
    ) -> Result<Settled, EngineError> {
        let run_id = RunId(task.run_id);
        let before = c.clone();
        let outcome = match done {
            Ok(effect) => self.complete(wf, c, run_id, step, attempt, effect).await,
            Err(f) => Err(f),
        };
        Ok(match outcome {
            // The result goes with the next step's when that one calls out
            // (and comes within the write window); otherwise it is written now.
            Ok(()) if self.writes_later(wf.plan(), c) => Settled::Pending,
            Ok(()) => self.settle(Some(wf), task, c).await?,
            Err(f) => {
                // Nothing of the attempt was written: back to what was decided
                // before it, and the failure recorded.
                *c = before;
                let max = wf.plan().step(step).map(|s| s.max_attempts).unwrap_or(1);
                let retry_at = (f.transient && attempt < max).then(|| {
                    let unit: f64 = rand::thread_rng().gen();
                    self.now()
                        + chrono::Duration::from_std(self.backoff.delay(
                            attempt,
                            f.retry_after,
                            unit,
                        ))
                        .unwrap_or_default()
                });
                tracing::warn!(step, attempt, reason = %f.reason, retry = retry_at.is_some(), "step failed");
                // Microsoft refused the connection's credential for good: the connection
                // says so (status `error`) until a new credential, consent or healthy
                // check, whichever workflow found it (R1.3).
                let auth_failure = f.reason == ReasonCode::ProviderAuthFailed && !f.transient;
                let (f_reason, f_message) = (f.reason, f.message.clone());
                let command = RunCommand::FailStep {
                    step: step.to_owned(),
                    attempt,
                    reason: f.reason,
                    message: f.message,
                    retry_at,
                };
                let key = format!("{step}:{attempt}:end");
                self.stage(c, run_id, &key, command).await?;
                if auth_failure {
                    self.record_connection_error(c, run_id, (step, attempt), f_reason, &f_message)
                        .await;
                }
                self.settle(Some(wf), task, c).await?
            }
        })
    }

    /// Decides a run command against the carried state, to be written by the next settle.
    async fn stage(
        &self,
        c: &mut Carried,
        run_id: RunId,
        key: &str,
        command: RunCommand,
    ) -> Result<(), EngineError> {
        let meta = self.meta(c.run.state(), run_id, format!("{run_id}:{key}"));
        c.run.decide(self.bus.services(), command, &meta).await?;
        Ok(())
    }

    /// Appends what was decided for the run. When the plan then says the run is over, its
    /// end and the release of its scope go into the same statement.
    async fn settle(
        &self,
        wf: Option<&dyn Workflow>,
        task: &Task,
        c: &mut Carried,
    ) -> Result<Settled, EngineError> {
        let run_id = RunId(task.run_id);
        if let Some((key, command)) = wf.and_then(|wf| {
            let decision = wf.plan().decide(c.run.state(), self.now());
            ending(&decision, wf, c.run.state())
        }) {
            self.stage(c, run_id, key, command).await?;
        }
        let ended = !c.run.state().is_active();
        let idle = c.run.pending_count() == 0
            && c.tenant.as_ref().is_none_or(|t| t.pending_count() == 0)
            && c.connection.as_ref().is_none_or(|t| t.pending_count() == 0);
        if !ended && idle {
            // Nothing decided since the last write (a run waiting for a retry).
            return Ok(Settled::Open);
        }
        // The run's progress goes to its checkpoint, not the log; its end carries it all.
        let mut progress = c.run.take_pending(RunEvent::is_progress);
        if ended {
            let mut all = c.unlogged.clone();
            all.append(&mut progress);
            // The end is the last thing decided.
            if let Some(end) = c.run.pending_mut().last() {
                end.carry(all);
            }
        }
        let lock_id = match ended {
            true => Some(c.run.state().scope_lock_id().ok_or(EngineError::NoScope)?),
            false => None,
        };
        // Progress off the log: live dashboards hear of it with the write (its end,
        // through the log).
        let run = c.run.state();
        let notify_to = match (&run.workspace, ended || progress.is_empty()) {
            (Some(workspace), false) => Some((
                workspace.to_string(),
                run.context.as_ref().map(|t| t.tenant_key.to_string()),
            )),
            _ => None,
        };
        let notify = notify_to.as_ref().map(|(w, t)| (w.as_str(), t.as_deref()));
        let write = store::checkpoints::Write {
            run_id,
            owner: &self.owner,
            version: c.checkpoint,
            progress: &progress,
            releasing: lock_id.as_deref(),
            notify,
        };
        let mut streams: Vec<&mut dyn StagedStream> = vec![&mut c.run];
        streams.extend(c.tenant.as_mut().map(|t| t as &mut dyn StagedStream));
        streams.extend(c.connection.as_mut().map(|t| t as &mut dyn StagedStream));
        // One statement: the effects, the run's events, its checkpoint and (when it
        // ended) its scope. The task itself is removed by the task feed when it reads the
        // run's end; until then this runner's lease keeps others away from it.
        match self.bus.append_checkpointed(&mut streams, &write).await {
            Ok(true) => {}
            // A stream moved, or the checkpoint did (a person's command on the run, or
            // another runner): nothing is written.
            Ok(false) | Err(AppendError::Conflict) => return Ok(Settled::Conflict),
            Err(other) => return Err(other.into()),
        }
        c.checkpoint += 1;
        c.unlogged.append(&mut progress);
        if ended {
            tracing::info!(outcome = ?c.run.state().outcome, "run completed");
            return Ok(Settled::Ended);
        }
        Ok(Settled::Open)
    }

    /// Stages a provider failure on the run's connection, to be written with the step's
    /// failure. A connection that cannot take it (disabled meanwhile) is left as it is:
    /// the run's own failure is what matters.
    async fn record_connection_error(
        &self,
        c: &mut Carried,
        run_id: RunId,
        (step, attempt): (&str, u32),
        reason: ReasonCode,
        message: &str,
    ) {
        let meta = self.meta(
            c.run.state(),
            run_id,
            format!("{run_id}:{step}:{attempt}:connection_error"),
        );
        let Some(connection) = c.connection.as_mut() else {
            return;
        };
        let command = ConnectionCommand::RecordError {
            reason,
            message: message.to_owned(),
        };
        if let Err(e) = connection.decide(self.bus.services(), command, &meta).await {
            tracing::debug!(error = %e, "the connection did not take the provider error");
        }
    }

    async fn credentials(&self, c: &Carried) -> Result<AppCredentials, StepFailure> {
        let run = c.run.state();
        let context = run.context.as_ref().ok_or_else(|| {
            StepFailure::permanent(
                ReasonCode::ProviderConnectionMissing,
                "the run has no connection",
            )
        })?;
        let connection = c.connection.as_ref().map(|s| s.state()).ok_or_else(|| {
            StepFailure::permanent(
                ReasonCode::ProviderConnectionMissing,
                "the run has no connection",
            )
        })?;
        let credential = connection.credential.as_ref().ok_or_else(|| {
            StepFailure::permanent(
                ReasonCode::ProviderCredentialMissing,
                "the connection has no credential",
            )
        })?;
        // The row read with the claim, if it is the one the connection names; otherwise
        // (a rotation since, or an older task) the vault is asked.
        let secret = match c
            .sealed
            .as_ref()
            .filter(|s| s.id == credential.credential_ref)
        {
            Some(sealed) => self.vault.open(sealed),
            None => {
                self.vault
                    .fetch(self.pool(), credential.credential_ref)
                    .await
            }
        }
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

    /// Performs a step's outside work. Results decided earlier and not yet written
    /// (`pending_since`) wait for it only until the write window ends: if the work takes
    /// longer, they are written meanwhile, so they are neither held back by a slow step nor
    /// lost with it.
    /// `app` caches the run's credentials for its later steps: the connection and the vault
    /// are read once per run, not once per step, and only for steps that call out.
    async fn perform_step(
        &self,
        wf: &dyn Workflow,
        step: &str,
        task: &Task,
        c: &mut Carried,
        app: &mut Option<AppCredentials>,
        pending_since: &mut Option<Instant>,
    ) -> Result<Performed, EngineError> {
        let calls_out = wf.plan().step(step).is_some_and(|d| d.calls_out);
        // A tenant run calls out through its connection; a run over the whole workspace
        // has none, and its workflow finds what it calls out with itself.
        let tenant_run = c.run.state().context.is_some();
        if app.is_none() && calls_out && tenant_run {
            match self.credentials(c).await {
                Ok(found) => *app = Some(found),
                Err(f) => return Ok(Performed::Done(Err(f))),
            }
        }
        // The run as decided so far: the step works on a copy, so what waits unwritten can
        // be written meanwhile.
        let run = c.run.state().clone();
        let connection = c.connection.as_ref().map(|s| s.state().clone());
        let cx = StepContext::new(
            &run,
            RunId(task.run_id),
            self.now(),
            self.graph.as_ref(),
            app.as_ref(),
        )
        .with_connection(connection.as_ref())
        .with_store(&self.bus, &self.vault);
        let work = wf.perform(step, &cx);
        tokio::pin!(work);
        if let Some(since) = *pending_since {
            let left = self.write_window.saturating_sub(since.elapsed());
            tokio::select! {
                biased;
                done = &mut work => return Ok(Performed::Done(done)),
                () = tokio::time::sleep(left) => {}
            }
            if self.settle(None, task, c).await? == Settled::Conflict {
                return Ok(Performed::Conflict);
            }
            *pending_since = None;
        }
        // A long step (a contact sync over many tenants) keeps the run's lease while it
        // works, so no other runner takes the run meanwhile.
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Ok(Performed::Done(done)),
                () = tokio::time::sleep(self.lease / 2) => {
                    if extend(self.pool(), task.run_id, &self.owner, self.lease).await?.is_none() {
                        return Err(EngineError::LeaseLost);
                    }
                }
            }
        }
    }

    /// Whether what was just decided can wait for the next step's result: the window is
    /// open and the next step calls out (one that does not is performed at once).
    fn writes_later(&self, plan: &Plan, c: &Carried) -> bool {
        if self.write_window.is_zero() {
            return false;
        }
        match plan.decide(c.run.state(), self.now()) {
            Decision::Perform { step, .. } => plan.step(step).is_some_and(|d| d.calls_out),
            _ => false,
        }
    }

    /// Decides a step's effect and the step's completion, to be appended in one
    /// statement: either both are recorded or neither. The effect carries the idempotency
    /// key of this step attempt, so a step performed again after a crash changes the
    /// tenant only once. Steps after it that call nothing outside are decided too, so they
    /// go into the same statement, and so does the run's end when it comes.
    async fn complete(
        &self,
        wf: &dyn Workflow,
        c: &mut Carried,
        run_id: RunId,
        step: &'static str,
        attempt: u32,
        effect: Effect,
    ) -> Result<(), StepFailure> {
        let plan = wf.plan();
        let (mut step, mut attempt) = (step, attempt);
        let mut summary = self
            .apply_effect(wf, c, run_id, step, attempt, effect)
            .await?;
        loop {
            let command = RunCommand::CompleteStep {
                step: step.to_owned(),
                attempt,
                summary,
            };
            let key = format!("{step}:{attempt}:end");
            self.stage(c, run_id, &key, command)
                .await
                .map_err(|e| StepFailure::permanent(ReasonCode::InternalError, e.to_string()))?;
            // The next step, if it needs nothing from outside, rides along.
            let Decision::Perform {
                step: next,
                attempt: next_attempt,
            } = plan.decide(c.run.state(), self.now())
            else {
                break;
            };
            if plan.step(next).is_none_or(|d| d.calls_out) {
                break;
            }
            // A failure here is left for the step's own turn, where it is recorded.
            let cx = StepContext::new(c.run.state(), run_id, self.now(), self.graph.as_ref(), None)
                .with_connection(c.connection.as_ref().map(|s| s.state()))
                .with_store(&self.bus, &self.vault);
            let Ok(next_effect) = wf.perform(next, &cx).await else {
                break;
            };
            match self
                .apply_effect(wf, c, run_id, next, next_attempt, next_effect)
                .await
            {
                Ok(s) => (step, attempt, summary) = (next, next_attempt, s),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Decides a step's effect (appended with the step's completion); returns the step's
    /// summary.
    async fn apply_effect(
        &self,
        wf: &dyn Workflow,
        c: &mut Carried,
        run_id: RunId,
        step: &str,
        attempt: u32,
        effect: Effect,
    ) -> Result<serde_json::Value, StepFailure> {
        let meta = self.meta(c.run.state(), run_id, format!("{run_id}:{step}:{attempt}"));
        let decided = match &effect {
            Effect::Report(summary) => return Ok(summary.clone()),
            Effect::None => store::Decided {
                event_types: Vec::new(),
                repeated: false,
            },
            Effect::Tenant(command) => {
                let tenant = c.tenant.as_mut().ok_or_else(|| {
                    StepFailure::permanent(ReasonCode::InternalError, "the run has no tenant")
                })?;
                tenant
                    .decide(self.bus.services(), command.clone(), &meta)
                    .await
                    .map_err(bus_failure)?
            }
            Effect::Connection(commands) => {
                let connection = c.connection.as_mut().ok_or_else(|| {
                    StepFailure::permanent(ReasonCode::InternalError, "the run has no connection")
                })?;
                let mut decided = store::Decided {
                    event_types: Vec::new(),
                    repeated: false,
                };
                // One idempotency key per command of the attempt.
                for (i, command) in commands.iter().enumerate() {
                    let meta = self.meta(
                        c.run.state(),
                        run_id,
                        format!("{run_id}:{step}:{attempt}:{i}"),
                    );
                    let d = connection
                        .decide(self.bus.services(), command.clone(), &meta)
                        .await
                        .map_err(bus_failure)?;
                    decided.event_types.extend(d.event_types);
                    decided.repeated |= d.repeated;
                }
                decided
            }
        };
        Ok(wf.summarize(
            step,
            &Applied {
                effect: &effect,
                event_types: &decided.event_types,
                tenant: c.tenant.as_ref().map(|t| t.state()),
                connection: c.connection.as_ref().map(|t| t.state()),
                repeated: decided.repeated,
            },
        ))
    }

    /// Runs until `shutdown`: advances every due task, then waits for `wakeups` or the
    /// next poll (retries and expired leases come due without a notification). The
    /// runtime passes the task feed's wakeups ([`store::log::TASKS_CHANNEL`]), which fire
    /// when work came due, not on every append.
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
