//! What a workflow is to the engine, and the registry of the workflows an engine runs.
//!
//! The engine knows no workflow by name: it asks the registry for the workflow of a run's
//! type, decides the next step with the workflow's [`Plan`], calls [`Workflow::perform`]
//! for the step's outside work, and records the [`Effect`] it returns together with the
//! step's completion. Adding a workflow is a module with a type implementing [`Workflow`]
//! and one [`Registry::register`] line in [`Registry::standard`].

use chrono::{DateTime, Utc};
use domain::connection::{ConnectionCommand, ProviderConnection};
use domain::run::{FailureSummary, OperationRun, StepStatus};
use domain::tenant::{Tenant, TenantCommand};
use domain::{ReasonCode, RunId};
use graph::{AppCredentials, GraphApi, GraphError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use store::{CommandBus, Vault};

use crate::plan::Plan;

/// A workflow the engine can run.
#[async_trait::async_trait]
pub trait Workflow: Send + Sync + 'static {
    /// Its steps, in order, under its run type (`policy.resync`).
    fn plan(&self) -> &Plan;

    /// The module its runs are started under (`conditional_access`).
    fn module(&self) -> &'static str;

    /// Whether a schedule may start runs of this type across a workspace's tenants.
    fn schedulable(&self) -> bool {
        false
    }

    /// Whether its runs act on the whole workspace (one run, no tenant, the module's scope
    /// locked; started with `app::start_workspace_operation`) rather than on one tenant.
    fn over_workspace(&self) -> bool {
        false
    }

    /// A step's outside work (Graph calls, never inside a transaction). What it found is
    /// returned as the effect to record with the step's completion. Steps whose
    /// [`StepDef::calls_out`](crate::StepDef::calls_out) is false are performed right after
    /// the step before them, with no credentials, and must not call out.
    async fn perform(&self, step: &str, cx: &StepContext<'_>) -> Result<Effect, StepFailure>;

    /// The step's summary (kept on the run and shown to people), once its effect was
    /// decided.
    fn summarize(&self, _step: &str, _applied: &Applied<'_>) -> serde_json::Value {
        serde_json::json!({})
    }

    /// Items a run's steps worked through that failed without failing their step (the
    /// tenants of a contact sync): a run with any ends partially succeeded, with these as
    /// its failures. Default: none.
    fn item_failures(&self, _run: &OperationRun) -> Vec<FailureSummary> {
        Vec::new()
    }

    /// The run's summary counts when it ends. Default: the steps completed.
    fn summary_counts(&self, run: &OperationRun) -> BTreeMap<String, i64> {
        steps_completed(run)
    }
}

/// The summary counts every run has: how many of its steps completed.
pub fn steps_completed(run: &OperationRun) -> BTreeMap<String, i64> {
    let completed = run
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
        .count();
    BTreeMap::from([("steps_completed".to_owned(), completed as i64)])
}

/// What a step's work hands the engine to record with the step's completion, in the same
/// statement (both or neither). Effects carry the idempotency key of the step's attempt,
/// so a step performed again after a crash changes nothing twice.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Nothing beyond the step's completion.
    None,
    /// Nothing beyond the step's completion, whose summary this is: a step of a run over
    /// the whole workspace, which wrote its per-item results itself (see
    /// [`StepContext::store`]), reports what it did.
    Report(serde_json::Value),
    /// A command decided on the run's tenant.
    Tenant(TenantCommand),
    /// Commands decided, in order, on the run's connection (a health check's finding).
    Connection(Vec<ConnectionCommand>),
}

/// What a step may use: the run, the time, Graph and (for a tenant run's steps that call
/// out) the credentials of the run's connection. A run over the whole workspace has no
/// connection: its workflow reads what it needs (its own credentials from the vault, the
/// streams it works on) through [`StepContext::store`], and writes its per-item results
/// there, each under an idempotency key of the run, so a step performed again after a
/// crash finds what it already wrote.
pub struct StepContext<'a> {
    pub run: &'a OperationRun,
    pub run_id: RunId,
    /// Now, by the engine's clock.
    pub now: DateTime<Utc>,
    pub graph: &'a dyn GraphApi,
    credentials: Option<&'a AppCredentials>,
    /// The run's connection as read with the claim (a tenant run's).
    pub connection: Option<&'a ProviderConnection>,
    store: Option<(&'a CommandBus, &'a Vault)>,
}

impl<'a> StepContext<'a> {
    pub(crate) fn new(
        run: &'a OperationRun,
        run_id: RunId,
        now: DateTime<Utc>,
        graph: &'a dyn GraphApi,
        credentials: Option<&'a AppCredentials>,
    ) -> Self {
        Self {
            run,
            run_id,
            now,
            graph,
            credentials,
            connection: None,
            store: None,
        }
    }

    pub(crate) fn with_connection(mut self, connection: Option<&'a ProviderConnection>) -> Self {
        self.connection = connection;
        self
    }

    pub(crate) fn with_store(mut self, bus: &'a CommandBus, vault: &'a Vault) -> Self {
        self.store = Some((bus, vault));
        self
    }

    /// The command bus and the vault, for workflows over a whole workspace.
    pub fn store(&self) -> Result<(&'a CommandBus, &'a Vault), StepFailure> {
        self.store.ok_or_else(|| {
            StepFailure::permanent(ReasonCode::InternalError, "the step has no store")
        })
    }

    /// The run connection's app credentials (read once per run, for steps that call out).
    pub fn credentials(&self) -> Result<&'a AppCredentials, StepFailure> {
        self.credentials.ok_or_else(|| {
            StepFailure::permanent(ReasonCode::ProviderCredentialMissing, "no credential")
        })
    }
}

/// A step's effect once decided: the types of the events it produced, the run's tenant
/// after it, and whether the attempt had been recorded before (a repeat after a crash
/// changes nothing, and its events are already in the log).
pub struct Applied<'a> {
    pub effect: &'a Effect,
    pub event_types: &'a [String],
    pub tenant: Option<&'a Tenant>,
    /// The run's connection after it.
    pub connection: Option<&'a ProviderConnection>,
    pub repeated: bool,
}

/// Why a step failed: a reason code, a short message, and whether to retry (and when).
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub reason: ReasonCode,
    /// Short and safe to show (no secrets, no payloads).
    pub message: String,
    pub transient: bool,
    /// The earliest retry the other side asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl StepFailure {
    /// A failure that retrying will not mend.
    pub fn permanent(reason: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            transient: false,
            retry_after: None,
        }
    }

    /// A step the workflow's plan does not have (a run recorded by another version).
    pub fn unknown_step(step: &str) -> Self {
        Self::permanent(ReasonCode::InternalError, format!("unknown step {step}"))
    }
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

/// The workflows an engine runs, by run type. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    workflows: Vec<Arc<dyn Workflow>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.run_types()).finish()
    }
}

impl Registry {
    /// Every workflow of the product.
    pub fn standard() -> Self {
        let mut registry = Self::default();
        registry
            .register::<crate::resync::Resync>()
            .register::<crate::resync::Import>()
            .register::<crate::health::HealthCheck>()
            .register::<crate::contacts::Discover>()
            .register::<crate::contacts::Sync>();
        registry
    }

    /// Adds workflow `W`. A second workflow of the same run type replaces the first.
    pub fn register<W: Workflow + Default>(&mut self) -> &mut Self {
        self.add(Arc::new(W::default()))
    }

    /// Adds a workflow value (one that needs configuration).
    pub fn add(&mut self, workflow: Arc<dyn Workflow>) -> &mut Self {
        let run_type = workflow.plan().run_type;
        self.workflows.retain(|w| w.plan().run_type != run_type);
        self.workflows.push(workflow);
        self
    }

    /// The workflow that runs operations of `run_type`.
    pub fn get(&self, run_type: &str) -> Option<&dyn Workflow> {
        self.workflows
            .iter()
            .find(|w| w.plan().run_type == run_type)
            .map(|w| w.as_ref())
    }

    /// Every run type, in registration order.
    pub fn run_types(&self) -> Vec<&'static str> {
        self.workflows.iter().map(|w| w.plan().run_type).collect()
    }

    /// The run types a schedule may start.
    pub fn schedulable_run_types(&self) -> Vec<&'static str> {
        self.workflows
            .iter()
            .filter(|w| w.schedulable())
            .map(|w| w.plan().run_type)
            .collect()
    }

    /// The workflow of `run_type`, or a refusal that lists the known types.
    pub fn known(&self, run_type: &str) -> Result<&dyn Workflow, UnknownRunType> {
        self.get(run_type).ok_or_else(|| UnknownRunType {
            run_type: run_type.chars().take(64).collect(),
            known: self.run_types(),
        })
    }
}

/// An operation type no registered workflow runs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no workflow runs operations of type `{run_type}`; known types: {}", known.join(", "))]
pub struct UnknownRunType {
    pub run_type: String,
    pub known: Vec<&'static str>,
}
