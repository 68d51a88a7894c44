//! The OperationRun aggregate (R2): one operationally relevant action and its lifecycle.
//! Aggregate id: the [`RunId`](crate::RunId). Its events are also the workflow history:
//! steps started, completed or failed, with their attempts. The engine keeps a running run's
//! progress (its start, its steps' attempts) in the run's checkpoint, off the log, and the
//! run's end carries it into the log ([`RunEvent::carried`]; issue 13).
//!
//! Status goes queued -> running -> completed; the outcome says how it completed. Every
//! other move is refused with [`RunError::InvalidTransition`]. Messages and step
//! summaries are sanitized before they reach an event (R2.4).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::canonical::canonical_json;
use crate::sanitize::{sanitize_json, sanitize_message};
use crate::values::{
    clean_name, is_machine_name, ConnectionId, EntraTenantId, Provider, RunId, TenantKey,
    WorkspaceId, MAX_NAME,
};
use crate::{Authorize, DomainError, Permission, ReasonCode, Services};

/// The largest step summary, in bytes of canonical JSON: summaries are counts and ids,
/// never payloads.
pub const MAX_STEP_SUMMARY: usize = 4096;
/// The most named counts, or failures, a run records.
const MAX_ENTRIES: usize = 100;
/// The most next steps a blocked run offers.
const MAX_NEXT_STEPS: usize = 10;

/// Where a run acts: provider, connection, target scope and module (R2.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunContext {
    pub provider: Provider,
    /// `None` when the run was blocked for want of a connection.
    pub connection_id: Option<ConnectionId>,
    /// The Entra tenant the run acts on; with the workspace, the scope it locks.
    pub target_scope: EntraTenantId,
    pub tenant_key: TenantKey,
    /// A machine name such as `conditional_access`.
    pub module: String,
}

/// What a run acts on: one tenant through one of its connections, or its workspace as a
/// whole (a contact sync over every mapped tenant). The target is also the scope the run
/// locks: one tenant, or one module of the workspace.
#[derive(Debug, Clone, PartialEq)]
pub enum RunTarget {
    Tenant(RunContext),
    Workspace {
        /// A machine name such as `contacts`.
        module: String,
        /// What of the workspace the run is limited to (a contact sync of one client:
        /// `client:<id>`); `None`: all of it.
        subject: Option<String>,
    },
}

impl RunTarget {
    /// The module the run is started under.
    pub fn module(&self) -> &str {
        match self {
            RunTarget::Tenant(context) => &context.module,
            RunTarget::Workspace { module, .. } => module,
        }
    }
}

/// A run's subject: `kind:value`, printable ASCII without spaces, at most 100 bytes.
fn is_subject(s: &str) -> bool {
    s.len() <= 100
        && s.split_once(':')
            .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// What a person can do to unblock a run (R2.3). The run records which step applies; the
/// API renders it as a link, because its wording and path belong to the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextStep {
    /// The tenant has no Microsoft connection.
    AddConnection,
    /// The tenant's default connection is disabled.
    EnableConnection,
    /// The default connection has no credential.
    SetCredential,
    /// Admin consent has not been granted to the default connection (or must be granted
    /// again, with the permissions the run needs).
    GrantConsent,
    /// Microsoft's service failed or timed out: its status says whether to wait.
    CheckServiceStatus,
    /// The app registration lacks a Graph permission (or the tenant a license) the run
    /// needs.
    FixPermissions,
    /// Microsoft refused the connection's credential: it needs a new secret.
    ProvideNewSecret,
}

impl NextStep {
    const ALL: [NextStep; 7] = [
        NextStep::AddConnection,
        NextStep::EnableConnection,
        NextStep::SetCredential,
        NextStep::GrantConsent,
        NextStep::CheckServiceStatus,
        NextStep::FixPermissions,
        NextStep::ProvideNewSecret,
    ];

    /// What a person can do after a run failed for `reason`, in the order to try them;
    /// none where nothing but another attempt helps (or the failure is ours).
    pub fn after_failure(reason: ReasonCode) -> &'static [NextStep] {
        match reason {
            ReasonCode::ProviderConnectionMissing => &[NextStep::AddConnection],
            ReasonCode::ProviderConnectionDisabled => &[NextStep::EnableConnection],
            ReasonCode::ProviderCredentialMissing => &[NextStep::SetCredential],
            ReasonCode::ProviderConsentMissing => &[NextStep::GrantConsent],
            ReasonCode::ProviderAuthFailed => &[NextStep::ProvideNewSecret],
            ReasonCode::ProviderPermissionMissing | ReasonCode::LicensePermissionMissing => {
                &[NextStep::FixPermissions, NextStep::GrantConsent]
            }
            ReasonCode::GraphThrottled
            | ReasonCode::GraphUnavailable
            | ReasonCode::GraphTimeout => &[NextStep::CheckServiceStatus],
            _ => &[],
        }
    }

    /// The stored name, in snake_case.
    pub fn as_str(self) -> &'static str {
        match self {
            NextStep::AddConnection => "add_connection",
            NextStep::EnableConnection => "enable_connection",
            NextStep::SetCredential => "set_credential",
            NextStep::GrantConsent => "grant_consent",
            NextStep::CheckServiceStatus => "check_service_status",
            NextStep::FixPermissions => "fix_permissions",
            NextStep::ProvideNewSecret => "provide_new_secret",
        }
    }

    /// The step a link recorded by runs blocked before next steps were typed stands for:
    /// those events hold the rendered link, whose label was one of these.
    fn from_legacy_label(label: &str) -> Option<Self> {
        match label {
            "Add a Microsoft connection" => Some(NextStep::AddConnection),
            "Enable the connection" => Some(NextStep::EnableConnection),
            "Set the connection's credential" => Some(NextStep::SetCredential),
            "Grant admin consent" => Some(NextStep::GrantConsent),
            _ => None,
        }
    }
}

impl Serialize for NextStep {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for NextStep {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        /// A name, or the `{label, href}` link of an event written before the names.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Name(String),
            Link { label: String },
        }
        match Stored::deserialize(deserializer)? {
            Stored::Name(name) => NextStep::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| D::Error::custom(format!("unknown next step `{name}`"))),
            Stored::Link { label } => NextStep::from_legacy_label(&label)
                .ok_or_else(|| D::Error::custom(format!("unknown next step link `{label}`"))),
        }
    }
}

/// Why a run (or one of its parts) failed. The message is sanitized when recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureSummary {
    pub reason: ReasonCode,
    pub message: String,
    pub step: Option<String>,
}

/// What can be asked of a run. People queue and cancel runs; the engine records the rest.
#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    /// Records a new run. The caller acquires the scope lock in the same transaction.
    Queue {
        workspace: WorkspaceId,
        /// A machine name such as `policy.resync`.
        run_type: String,
        target: RunTarget,
        /// Who asked: a user id, or the schedule that started it.
        initiator: String,
        /// The failed, blocked or cancelled run this one starts again.
        retry_of: Option<RunId>,
    },
    Start,
    /// An attempt of a step begins. Replaying the same start records nothing.
    StartStep {
        step: String,
        attempt: u32,
    },
    /// An attempt of a step succeeded, with a small summary (counts, ids).
    CompleteStep {
        step: String,
        attempt: u32,
        summary: serde_json::Value,
    },
    /// An attempt of a step failed; `retry_at` says when the next attempt is due.
    FailStep {
        step: String,
        attempt: u32,
        reason: ReasonCode,
        message: String,
        retry_at: Option<DateTime<Utc>>,
    },
    Succeed {
        summary_counts: BTreeMap<String, i64>,
    },
    PartiallySucceed {
        summary_counts: BTreeMap<String, i64>,
        failures: Vec<FailureSummary>,
    },
    Fail {
        failure: FailureSummary,
    },
    /// The run cannot start (R2.3): it is finalized as blocked with link-only next steps.
    Block {
        reason: ReasonCode,
        next_steps: Vec<NextStep>,
    },
    /// A person asks to stop the run: a queued run is cancelled at once, a running one at
    /// its next step.
    RequestCancel,
    /// The workflow stops the run (after a request, or on its own).
    Cancel,
}

impl Authorize for RunCommand {
    fn permission(&self) -> Permission {
        match self {
            RunCommand::Queue { .. } | RunCommand::RequestCancel => Permission::StartOperations,
            RunCommand::Start
            | RunCommand::StartStep { .. }
            | RunCommand::CompleteStep { .. }
            | RunCommand::FailStep { .. }
            | RunCommand::Succeed { .. }
            | RunCommand::PartiallySucceed { .. }
            | RunCommand::Fail { .. }
            | RunCommand::Block { .. }
            | RunCommand::Cancel => Permission::RecordProgress,
        }
    }
}

/// What happened to a run. Persisted: variants and fields are never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunEvent {
    RunQueued {
        workspace: WorkspaceId,
        run_type: String,
        /// A tenant run's context; `null` for a run over the whole workspace.
        context: Option<RunContext>,
        initiator: String,
        queued_at: DateTime<Utc>,
        /// The run this one starts again. Absent from runs queued before retries existed,
        /// and left out of the payload when there is none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<RunId>,
        /// The module of a run over the whole workspace (absent for tenant runs, and from
        /// every run queued before workspace runs existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace_module: Option<String>,
        /// What of the workspace such a run is limited to (absent: all of it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace_subject: Option<String>,
    },
    RunStarted {
        at: DateTime<Utc>,
    },
    RunStepStarted {
        step: String,
        attempt: u32,
        at: DateTime<Utc>,
    },
    RunStepCompleted {
        step: String,
        attempt: u32,
        summary: serde_json::Value,
        at: DateTime<Utc>,
    },
    RunStepFailed {
        step: String,
        attempt: u32,
        reason: ReasonCode,
        message: String,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    RunSucceeded {
        summary_counts: BTreeMap<String, i64>,
        at: DateTime<Utc>,
        /// The run's progress (its start and its steps' attempts) that its checkpoint held
        /// off the log, carried into the log by its end (issue 13). Absent for runs whose
        /// progress was logged event by event, and for runs that never started.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        progress: Vec<RunEvent>,
    },
    RunPartiallySucceeded {
        summary_counts: BTreeMap<String, i64>,
        failures: Vec<FailureSummary>,
        at: DateTime<Utc>,
        /// The run's progress (its start and its steps' attempts) that its checkpoint held
        /// off the log, carried into the log by its end (issue 13). Absent for runs whose
        /// progress was logged event by event, and for runs that never started.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        progress: Vec<RunEvent>,
    },
    RunFailed {
        failure: FailureSummary,
        at: DateTime<Utc>,
        /// The run's progress (its start and its steps' attempts) that its checkpoint held
        /// off the log, carried into the log by its end (issue 13). Absent for runs whose
        /// progress was logged event by event, and for runs that never started.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        progress: Vec<RunEvent>,
    },
    RunBlocked {
        reason: ReasonCode,
        next_steps: Vec<NextStep>,
        at: DateTime<Utc>,
    },
    RunCancelRequested {
        at: DateTime<Utc>,
    },
    RunCancelled {
        at: DateTime<Utc>,
        /// The run's progress (its start and its steps' attempts) that its checkpoint held
        /// off the log, carried into the log by its end (issue 13). Absent for runs whose
        /// progress was logged event by event, and for runs that never started.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        progress: Vec<RunEvent>,
    },
}

impl DomainEvent for RunEvent {
    fn event_type(&self) -> String {
        match self {
            RunEvent::RunQueued { .. } => "RunQueued",
            RunEvent::RunStarted { .. } => "RunStarted",
            RunEvent::RunStepStarted { .. } => "RunStepStarted",
            RunEvent::RunStepCompleted { .. } => "RunStepCompleted",
            RunEvent::RunStepFailed { .. } => "RunStepFailed",
            RunEvent::RunSucceeded { .. } => "RunSucceeded",
            RunEvent::RunPartiallySucceeded { .. } => "RunPartiallySucceeded",
            RunEvent::RunFailed { .. } => "RunFailed",
            RunEvent::RunBlocked { .. } => "RunBlocked",
            RunEvent::RunCancelRequested { .. } => "RunCancelRequested",
            RunEvent::RunCancelled { .. } => "RunCancelled",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

impl RunEvent {
    /// When it happened, by the clock of whoever decided it (the engine's for progress).
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            RunEvent::RunQueued { queued_at, .. } => *queued_at,
            RunEvent::RunStarted { at }
            | RunEvent::RunStepStarted { at, .. }
            | RunEvent::RunStepCompleted { at, .. }
            | RunEvent::RunStepFailed { at, .. }
            | RunEvent::RunSucceeded { at, .. }
            | RunEvent::RunPartiallySucceeded { at, .. }
            | RunEvent::RunFailed { at, .. }
            | RunEvent::RunBlocked { at, .. }
            | RunEvent::RunCancelRequested { at }
            | RunEvent::RunCancelled { at, .. } => *at,
        }
    }

    /// Whether it records the run's progress (its start, a step's attempt): what the
    /// engine keeps in the run's checkpoint, off the log, until the run's end carries it
    /// into the log (issue 13).
    pub fn is_progress(&self) -> bool {
        matches!(
            self,
            RunEvent::RunStarted { .. }
                | RunEvent::RunStepStarted { .. }
                | RunEvent::RunStepCompleted { .. }
                | RunEvent::RunStepFailed { .. }
        )
    }

    /// Makes a run's end carry `progress`, the run's progress the log does not hold (its
    /// checkpoint's, and what was decided since): the engine does, as it writes the end.
    /// Other events are left as they are.
    pub fn carry(&mut self, mut more: Vec<RunEvent>) {
        if let RunEvent::RunSucceeded { progress, .. }
        | RunEvent::RunPartiallySucceeded { progress, .. }
        | RunEvent::RunFailed { progress, .. }
        | RunEvent::RunCancelled { progress, .. } = self
        {
            more.retain(RunEvent::is_progress);
            progress.append(&mut more);
        }
    }

    /// The progress a run's end carries (empty for every other event, and for ends logged
    /// after their progress).
    pub fn carried(&self) -> &[RunEvent] {
        match self {
            RunEvent::RunSucceeded { progress, .. }
            | RunEvent::RunPartiallySucceeded { progress, .. }
            | RunEvent::RunFailed { progress, .. }
            | RunEvent::RunCancelled { progress, .. } => progress,
            _ => &[],
        }
    }

    /// The step it is about: a step event's, or the step a failed run failed at.
    pub fn step(&self) -> Option<&str> {
        match self {
            RunEvent::RunStepStarted { step, .. }
            | RunEvent::RunStepCompleted { step, .. }
            | RunEvent::RunStepFailed { step, .. } => Some(step),
            RunEvent::RunFailed { failure, .. } => failure.step.as_deref(),
            _ => None,
        }
    }

    /// The attempt a step event records.
    pub fn attempt(&self) -> Option<u32> {
        match self {
            RunEvent::RunStepStarted { attempt, .. }
            | RunEvent::RunStepCompleted { attempt, .. }
            | RunEvent::RunStepFailed { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    /// The reason it records: a failed step's or run's, a blocked run's.
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            RunEvent::RunStepFailed { reason, .. } | RunEvent::RunBlocked { reason, .. } => {
                Some(*reason)
            }
            RunEvent::RunFailed { failure, .. } => Some(failure.reason),
            _ => None,
        }
    }
}

/// Where a run is in its life (R2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Queued,
    Running,
    Completed,
}

impl RunStatus {
    /// Every status, in a run's order.
    pub const ALL: [RunStatus; 3] = [RunStatus::Queued, RunStatus::Running, RunStatus::Completed];

    /// The status spelled `s` (its [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
        }
    }
}

/// How a run ended; `pending` until it completes (R2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    #[default]
    Pending,
    Succeeded,
    PartiallySucceeded,
    Failed,
    Cancelled,
    Blocked,
}

impl RunOutcome {
    /// Every outcome.
    pub const ALL: [RunOutcome; 6] = [
        RunOutcome::Pending,
        RunOutcome::Succeeded,
        RunOutcome::PartiallySucceeded,
        RunOutcome::Failed,
        RunOutcome::Cancelled,
        RunOutcome::Blocked,
    ];

    /// The outcome spelled `s` (its [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Pending => "pending",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::PartiallySucceeded => "partially_succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Blocked => "blocked",
        }
    }
}

display_as_str!(RunStatus, RunOutcome, StepStatus);

/// Why a run command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("the run does not exist")]
    NotFound,
    #[error("the run already exists")]
    AlreadyExists,
    #[error("a {status} run cannot {action}")]
    InvalidTransition {
        status: RunStatus,
        action: &'static str,
    },
    #[error("the run type must be 1-64 characters of a-z, 0-9, '.', '_' and '-'")]
    InvalidRunType,
    #[error("the module must be 1-64 characters of a-z, 0-9, '.', '_' and '-'")]
    InvalidModule,
    #[error("the initiator must be 1-200 characters")]
    InvalidInitiator,
    #[error("a step needs a name of 1-64 characters of a-z, 0-9, '.', '_' and '-', and an attempt from 1")]
    InvalidStep,
    #[error("step {step} already completed")]
    StepCompleted { step: String },
    #[error("attempt {attempt} of step {step} is stale: attempt {latest} is already recorded")]
    StaleAttempt {
        step: String,
        attempt: u32,
        latest: u32,
    },
    #[error("invalid summary: {0}")]
    InvalidSummary(&'static str),
    #[error("a blocked run offers at most 10 next steps")]
    InvalidNextStep,
    #[error("the run's target tenant belongs to another workspace")]
    WorkspaceMismatch,
    #[error("a {outcome} run cannot be retried: only failed, blocked or cancelled runs can")]
    NotRetryable { outcome: RunOutcome },
}

impl DomainError for RunError {
    fn reason_code(&self) -> ReasonCode {
        match self {
            RunError::NotFound => ReasonCode::NotFound,
            RunError::AlreadyExists => ReasonCode::AlreadyExists,
            RunError::InvalidTransition { .. }
            | RunError::StepCompleted { .. }
            | RunError::NotRetryable { .. } => ReasonCode::InvalidTransition,
            // Another worker recorded a later attempt: a lost race, not bad input.
            RunError::StaleAttempt { .. } => ReasonCode::Conflict,
            RunError::InvalidRunType
            | RunError::InvalidModule
            | RunError::InvalidInitiator
            | RunError::InvalidStep
            | RunError::InvalidSummary(_)
            | RunError::InvalidNextStep
            | RunError::WorkspaceMismatch => ReasonCode::ValidationFailed,
        }
    }
}

/// Where a step's last recorded attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Started,
    Completed,
    Failed,
}

impl StepStatus {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Started => "started",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
        }
    }
}

/// A step's last recorded attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub step: String,
    pub attempt: u32,
    pub status: StepStatus,
    pub reason: Option<ReasonCode>,
    pub retry_at: Option<DateTime<Utc>>,
    /// What a completed attempt reported (its `RunStepCompleted` summary), so the run's
    /// end can carry a step's facts into its summary counts.
    #[serde(default)]
    pub summary: Option<serde_json::Value>,
}

/// A run's state, folded from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OperationRun {
    pub workspace: Option<WorkspaceId>,
    pub run_type: String,
    pub context: Option<RunContext>,
    pub initiator: String,
    pub status: RunStatus,
    pub outcome: RunOutcome,
    pub cancel_requested: bool,
    /// In the order they first ran.
    pub steps: Vec<StepState>,
    pub summary_counts: BTreeMap<String, i64>,
    pub failure_summary: Vec<FailureSummary>,
    pub blocked_reason: Option<ReasonCode>,
    pub next_steps: Vec<NextStep>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The run this one starts again, if it is a retry.
    #[serde(default)]
    pub retry_of: Option<RunId>,
    /// The module of a run over the whole workspace (then `context` is `None`).
    #[serde(default)]
    pub workspace_module: Option<String>,
    /// What of the workspace a run over it is limited to.
    #[serde(default)]
    pub workspace_subject: Option<String>,
}

impl OperationRun {
    /// Whether the run was queued.
    pub fn exists(&self) -> bool {
        self.queued_at.is_some()
    }

    /// The module the run was started under.
    pub fn module(&self) -> Option<&str> {
        match (&self.context, &self.workspace_module) {
            (Some(context), _) => Some(&context.module),
            (None, module) => module.as_deref(),
        }
    }

    /// What the run acts on, as it was queued.
    pub fn target(&self) -> Option<RunTarget> {
        match (&self.context, &self.workspace_module) {
            (Some(context), _) => Some(RunTarget::Tenant(context.clone())),
            (None, Some(module)) => Some(RunTarget::Workspace {
                module: module.clone(),
                subject: self.workspace_subject.clone(),
            }),
            (None, None) => None,
        }
    }

    /// The id of the scope lock the run holds while active: its tenant's scope, or its
    /// module's scope in the workspace.
    pub fn scope_lock_id(&self) -> Option<String> {
        let workspace = self.workspace.as_ref()?;
        match (&self.context, &self.workspace_module) {
            (Some(context), _) => Some(crate::scope_lock::scope_key(
                workspace,
                context.target_scope,
            )),
            (None, Some(module)) => Some(crate::scope_lock::workspace_scope_key(workspace, module)),
            (None, None) => None,
        }
    }

    /// Whether the run is queued or running.
    pub fn is_active(&self) -> bool {
        self.exists() && self.status != RunStatus::Completed
    }

    /// Whether a new run may start this one again: only a run that ended without doing
    /// its work (failed, blocked or cancelled) can be retried.
    pub fn check_retryable(&self) -> Result<(), RunError> {
        if !self.exists() {
            return Err(RunError::NotFound);
        }
        match self.outcome {
            RunOutcome::Failed | RunOutcome::Blocked | RunOutcome::Cancelled => Ok(()),
            outcome => Err(RunError::NotRetryable { outcome }),
        }
    }

    /// The last recorded attempt of `step`.
    pub fn step(&self, step: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.step == step)
    }

    fn require(&self, allowed: &[RunStatus], action: &'static str) -> Result<(), RunError> {
        if !self.exists() {
            return Err(RunError::NotFound);
        }
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(RunError::InvalidTransition {
                status: self.status,
                action,
            })
        }
    }

    /// Whether recording `next` for `attempt` of `step` is new (`true`), a replay of what
    /// is already recorded (`false`: workflows re-issue steps after a crash), or refused.
    fn step_is_new(&self, step: &str, attempt: u32, next: StepStatus) -> Result<bool, RunError> {
        use StepStatus::*;
        self.require(&[RunStatus::Running], "record a step")?;
        if !is_machine_name(step) || attempt == 0 {
            return Err(RunError::InvalidStep);
        }
        let Some(last) = self.step(step) else {
            return Ok(true);
        };
        let stale = || RunError::StaleAttempt {
            step: step.to_owned(),
            attempt,
            latest: last.attempt,
        };
        match (last.status, next) {
            (Completed, Completed) if attempt == last.attempt => Ok(false),
            (Completed, _) => Err(RunError::StepCompleted {
                step: step.to_owned(),
            }),
            _ if attempt > last.attempt => Ok(true),
            _ if attempt < last.attempt => Err(stale()),
            // The same attempt: a replay, the end of a started attempt, or a failed
            // attempt reused (the next attempt needs the next number).
            (Started, Started) | (Failed, Failed) => Ok(false),
            (Started, _) => Ok(true),
            (Failed, _) => Err(stale()),
        }
    }

    fn record_step(&mut self, state: StepState) {
        match self.steps.iter_mut().find(|s| s.step == state.step) {
            Some(s) => *s = state,
            None => self.steps.push(state),
        }
    }

    /// Applies the progress a run's end carries, in order (a state that holds it already,
    /// the engine's, is left as it is).
    fn carry_in(&mut self, progress: Vec<RunEvent>) {
        for e in progress.into_iter().filter(RunEvent::is_progress) {
            self.apply(e);
        }
    }

    fn complete(&mut self, outcome: RunOutcome, at: DateTime<Utc>) {
        self.status = RunStatus::Completed;
        self.outcome = outcome;
        self.completed_at = Some(at);
    }
}

fn check_counts(counts: &BTreeMap<String, i64>) -> Result<(), RunError> {
    if counts.len() > MAX_ENTRIES {
        return Err(RunError::InvalidSummary("at most 100 named counts"));
    }
    if !counts.keys().all(|k| is_machine_name(k)) {
        return Err(RunError::InvalidSummary(
            "count names are 1-64 characters of a-z, 0-9, '.', '_' and '-'",
        ));
    }
    Ok(())
}

fn sanitize_failure(f: FailureSummary) -> Result<FailureSummary, RunError> {
    if f.step.as_deref().is_some_and(|s| !is_machine_name(s)) {
        return Err(RunError::InvalidStep);
    }
    Ok(FailureSummary {
        reason: f.reason,
        message: sanitize_message(&f.message),
        step: f.step,
    })
}

fn clean_next_steps(steps: Vec<NextStep>) -> Result<Vec<NextStep>, RunError> {
    if steps.len() > MAX_NEXT_STEPS {
        return Err(RunError::InvalidNextStep);
    }
    Ok(steps)
}

impl Aggregate for OperationRun {
    const TYPE: &'static str = "operation_run";
    type Command = RunCommand;
    type Event = RunEvent;
    type Error = RunError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: RunCommand,
        services: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), RunError> {
        use RunStatus::*;
        let at = services.clock.now();
        match command {
            RunCommand::Queue {
                workspace,
                run_type,
                target,
                initiator,
                retry_of,
            } => {
                if self.exists() {
                    return Err(RunError::AlreadyExists);
                }
                if !is_machine_name(&run_type) {
                    return Err(RunError::InvalidRunType);
                }
                if !is_machine_name(target.module()) {
                    return Err(RunError::InvalidModule);
                }
                let (context, workspace_module, workspace_subject) = match target {
                    RunTarget::Tenant(context) => {
                        if context.tenant_key.workspace != workspace {
                            return Err(RunError::WorkspaceMismatch);
                        }
                        (Some(context), None, None)
                    }
                    RunTarget::Workspace { module, subject } => {
                        if subject.as_deref().is_some_and(|s| !is_subject(s)) {
                            return Err(RunError::InvalidModule);
                        }
                        (None, Some(module), subject)
                    }
                };
                let initiator =
                    clean_name(&initiator, MAX_NAME).ok_or(RunError::InvalidInitiator)?;
                let event = RunEvent::RunQueued {
                    workspace,
                    run_type,
                    context,
                    initiator,
                    queued_at: at,
                    retry_of,
                    workspace_module,
                    workspace_subject,
                };
                sink.write(event, self).await;
            }
            RunCommand::Start => {
                self.require(&[Queued], "start")?;
                sink.write(RunEvent::RunStarted { at }, self).await;
            }
            RunCommand::StartStep { step, attempt } => {
                if self.step_is_new(&step, attempt, StepStatus::Started)? {
                    let event = RunEvent::RunStepStarted { step, attempt, at };
                    sink.write(event, self).await;
                }
            }
            RunCommand::CompleteStep {
                step,
                attempt,
                summary,
            } => {
                if self.step_is_new(&step, attempt, StepStatus::Completed)? {
                    let summary = sanitize_json(&summary);
                    if canonical_json(&summary).len() > MAX_STEP_SUMMARY {
                        return Err(RunError::InvalidSummary(
                            "a step summary is at most 4 KiB of JSON",
                        ));
                    }
                    let event = RunEvent::RunStepCompleted {
                        step,
                        attempt,
                        summary,
                        at,
                    };
                    sink.write(event, self).await;
                }
            }
            RunCommand::FailStep {
                step,
                attempt,
                reason,
                message,
                retry_at,
            } => {
                if self.step_is_new(&step, attempt, StepStatus::Failed)? {
                    let event = RunEvent::RunStepFailed {
                        step,
                        attempt,
                        reason,
                        message: sanitize_message(&message),
                        retry_at,
                        at,
                    };
                    sink.write(event, self).await;
                }
            }
            RunCommand::Succeed { summary_counts } => {
                self.require(&[Running], "succeed")?;
                check_counts(&summary_counts)?;
                let event = RunEvent::RunSucceeded {
                    summary_counts,
                    at,
                    progress: Vec::new(),
                };
                sink.write(event, self).await;
            }
            RunCommand::PartiallySucceed {
                summary_counts,
                failures,
            } => {
                self.require(&[Running], "partially succeed")?;
                check_counts(&summary_counts)?;
                if failures.len() > MAX_ENTRIES {
                    return Err(RunError::InvalidSummary("at most 100 failures"));
                }
                let failures = failures
                    .into_iter()
                    .map(sanitize_failure)
                    .collect::<Result<_, _>>()?;
                let event = RunEvent::RunPartiallySucceeded {
                    summary_counts,
                    failures,
                    at,
                    progress: Vec::new(),
                };
                sink.write(event, self).await;
            }
            RunCommand::Fail { failure } => {
                // A queued run may fail too: its workflow can find a problem before it
                // starts work.
                self.require(&[Queued, Running], "fail")?;
                let event = RunEvent::RunFailed {
                    failure: sanitize_failure(failure)?,
                    at,
                    progress: Vec::new(),
                };
                sink.write(event, self).await;
            }
            RunCommand::Block { reason, next_steps } => {
                self.require(&[Queued], "be blocked")?;
                let event = RunEvent::RunBlocked {
                    reason,
                    next_steps: clean_next_steps(next_steps)?,
                    at,
                };
                sink.write(event, self).await;
            }
            RunCommand::RequestCancel => {
                self.require(&[Queued, Running], "be cancelled")?;
                if self.status == Queued {
                    let progress = Vec::new();
                    sink.write(RunEvent::RunCancelled { at, progress }, self)
                        .await;
                } else if !self.cancel_requested {
                    sink.write(RunEvent::RunCancelRequested { at }, self).await;
                }
            }
            RunCommand::Cancel => {
                self.require(&[Queued, Running], "be cancelled")?;
                let progress = Vec::new();
                sink.write(RunEvent::RunCancelled { at, progress }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: RunEvent) {
        match event {
            RunEvent::RunQueued {
                workspace,
                run_type,
                context,
                initiator,
                queued_at,
                retry_of,
                workspace_module,
                workspace_subject,
            } => {
                self.workspace = Some(workspace);
                self.run_type = run_type;
                self.context = context;
                self.workspace_module = workspace_module;
                self.workspace_subject = workspace_subject;
                self.initiator = initiator;
                self.queued_at = Some(queued_at);
                self.retry_of = retry_of;
            }
            RunEvent::RunStarted { at } => {
                self.status = RunStatus::Running;
                self.started_at = Some(at);
            }
            RunEvent::RunStepStarted { step, attempt, .. } => self.record_step(StepState {
                step,
                attempt,
                status: StepStatus::Started,
                reason: None,
                retry_at: None,
                summary: None,
            }),
            RunEvent::RunStepCompleted {
                step,
                attempt,
                summary,
                ..
            } => self.record_step(StepState {
                step,
                attempt,
                status: StepStatus::Completed,
                reason: None,
                retry_at: None,
                summary: Some(summary),
            }),
            RunEvent::RunStepFailed {
                step,
                attempt,
                reason,
                retry_at,
                ..
            } => self.record_step(StepState {
                step,
                attempt,
                status: StepStatus::Failed,
                reason: Some(reason),
                retry_at,
                summary: None,
            }),
            RunEvent::RunSucceeded {
                summary_counts,
                at,
                progress,
            } => {
                self.carry_in(progress);
                self.summary_counts = summary_counts;
                self.complete(RunOutcome::Succeeded, at);
            }
            RunEvent::RunPartiallySucceeded {
                summary_counts,
                failures,
                at,
                progress,
            } => {
                self.carry_in(progress);
                self.summary_counts = summary_counts;
                self.failure_summary = failures;
                self.complete(RunOutcome::PartiallySucceeded, at);
            }
            RunEvent::RunFailed {
                failure,
                at,
                progress,
            } => {
                self.carry_in(progress);
                self.failure_summary = vec![failure];
                self.complete(RunOutcome::Failed, at);
            }
            RunEvent::RunBlocked {
                reason,
                next_steps,
                at,
            } => {
                self.blocked_reason = Some(reason);
                self.next_steps = next_steps;
                self.complete(RunOutcome::Blocked, at);
            }
            RunEvent::RunCancelRequested { .. } => self.cancel_requested = true,
            RunEvent::RunCancelled { at, progress } => {
                self.carry_in(progress);
                self.complete(RunOutcome::Cancelled, at)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_event_types_match_payload_tags, guid, now, services, tenant_key, workspace,
    };
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    type F = TestFramework<OperationRun>;

    fn context() -> RunContext {
        RunContext {
            provider: Provider::Microsoft,
            connection_id: Some(ConnectionId(uuid::Uuid::from_u128(1))),
            target_scope: guid(),
            tenant_key: tenant_key(),
            module: "policies".into(),
        }
    }
    fn queue() -> RunCommand {
        RunCommand::Queue {
            workspace: workspace(),
            run_type: "policy.resync".into(),
            target: RunTarget::Tenant(context()),
            initiator: "alice".into(),
            retry_of: None,
        }
    }
    fn queued() -> RunEvent {
        RunEvent::RunQueued {
            workspace: workspace(),
            run_type: "policy.resync".into(),
            context: Some(context()),
            initiator: "alice".into(),
            queued_at: now(),
            retry_of: None,
            workspace_module: None,
            workspace_subject: None,
        }
    }
    fn started() -> RunEvent {
        RunEvent::RunStarted { at: now() }
    }
    fn running() -> Vec<RunEvent> {
        vec![queued(), started()]
    }
    fn with(mut events: Vec<RunEvent>, more: RunEvent) -> Vec<RunEvent> {
        events.push(more);
        events
    }
    fn state(events: Vec<RunEvent>) -> OperationRun {
        let mut r = OperationRun::default();
        for e in events {
            r.apply(e);
        }
        r
    }
    fn start_step(attempt: u32) -> RunCommand {
        RunCommand::StartStep {
            step: "fetch".into(),
            attempt,
        }
    }
    fn step_started(attempt: u32) -> RunEvent {
        RunEvent::RunStepStarted {
            step: "fetch".into(),
            attempt,
            at: now(),
        }
    }
    fn complete_step(attempt: u32) -> RunCommand {
        RunCommand::CompleteStep {
            step: "fetch".into(),
            attempt,
            summary: json!({"policies": 3}),
        }
    }
    fn step_completed(attempt: u32) -> RunEvent {
        RunEvent::RunStepCompleted {
            step: "fetch".into(),
            attempt,
            summary: json!({"policies": 3}),
            at: now(),
        }
    }
    fn fail_step(attempt: u32) -> RunCommand {
        RunCommand::FailStep {
            step: "fetch".into(),
            attempt,
            reason: ReasonCode::GraphThrottled,
            message: "429".into(),
            retry_at: None,
        }
    }
    fn step_failed(attempt: u32) -> RunEvent {
        RunEvent::RunStepFailed {
            step: "fetch".into(),
            attempt,
            reason: ReasonCode::GraphThrottled,
            message: "429".into(),
            retry_at: None,
            at: now(),
        }
    }
    fn failure(message: &str) -> FailureSummary {
        FailureSummary {
            reason: ReasonCode::GraphUnavailable,
            message: message.into(),
            step: Some("fetch".into()),
        }
    }
    fn counts(n: i64) -> BTreeMap<String, i64> {
        BTreeMap::from([("policies".to_owned(), n)])
    }
    /// One of each command but `Queue`.
    fn every_command_after_queue() -> Vec<RunCommand> {
        vec![
            RunCommand::Start,
            start_step(1),
            complete_step(1),
            fail_step(1),
            RunCommand::Succeed {
                summary_counts: counts(1),
            },
            RunCommand::PartiallySucceed {
                summary_counts: counts(1),
                failures: vec![],
            },
            RunCommand::Fail {
                failure: failure("x"),
            },
            RunCommand::Block {
                reason: ReasonCode::ProviderConnectionMissing,
                next_steps: vec![],
            },
            RunCommand::RequestCancel,
            RunCommand::Cancel,
        ]
    }
    fn blocked(next_steps: Vec<NextStep>) -> RunEvent {
        RunEvent::RunBlocked {
            reason: ReasonCode::ProviderConnectionMissing,
            next_steps,
            at: now(),
        }
    }

    #[test]
    fn every_failure_mode_of_a_resync_has_a_recovery_step() {
        for (reason, step) in [
            (ReasonCode::GraphUnavailable, NextStep::CheckServiceStatus),
            (ReasonCode::GraphTimeout, NextStep::CheckServiceStatus),
            (
                ReasonCode::ProviderPermissionMissing,
                NextStep::FixPermissions,
            ),
            (ReasonCode::ProviderConsentMissing, NextStep::GrantConsent),
            (ReasonCode::ProviderAuthFailed, NextStep::ProvideNewSecret),
        ] {
            assert_eq!(
                NextStep::after_failure(reason).first(),
                Some(&step),
                "{reason}"
            );
        }
        assert!(NextStep::after_failure(ReasonCode::InternalError).is_empty());
        // Each step round-trips through its stored name.
        for step in NextStep::ALL {
            let json = serde_json::to_value(step).unwrap();
            assert_eq!(serde_json::from_value::<NextStep>(json).unwrap(), step);
        }
    }

    #[test]
    fn a_run_is_queued_pending() {
        F::with(services())
            .given_no_previous_events()
            .when(queue())
            .then_expect_events(vec![queued()]);
        let r = state(vec![queued()]);
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Queued, RunOutcome::Pending)
        );
        assert_eq!(r.context, Some(context()));
        assert!(r.is_active());
    }

    #[test]
    fn a_run_cannot_be_queued_twice() {
        F::with(services())
            .given(vec![queued()])
            .when(queue())
            .then_expect_error(RunError::AlreadyExists);
    }

    #[test]
    fn a_malformed_run_type_module_or_initiator_is_refused() {
        let cases = [
            (
                "Policy Resync!",
                "policies",
                "alice",
                RunError::InvalidRunType,
            ),
            (
                "policy.resync",
                "Conditional Access",
                "alice",
                RunError::InvalidModule,
            ),
            (
                "policy.resync",
                "policies",
                "  ",
                RunError::InvalidInitiator,
            ),
        ];
        for (run_type, module, initiator, error) in cases {
            F::with(services())
                .given_no_previous_events()
                .when(RunCommand::Queue {
                    workspace: workspace(),
                    run_type: run_type.into(),
                    target: RunTarget::Tenant(RunContext {
                        module: module.into(),
                        ..context()
                    }),
                    initiator: initiator.into(),
                    retry_of: None,
                })
                .then_expect_error(error);
        }
    }

    #[test]
    fn a_run_for_a_tenant_of_another_workspace_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(RunCommand::Queue {
                workspace: "other".parse().unwrap(),
                run_type: "policy.resync".into(),
                target: RunTarget::Tenant(context()),
                initiator: "alice".into(),
                retry_of: None,
            })
            .then_expect_error(RunError::WorkspaceMismatch);
    }

    #[test]
    fn a_run_over_the_whole_workspace_has_no_tenant_and_locks_its_module() {
        let queue = RunCommand::Queue {
            workspace: workspace(),
            run_type: "contacts.sync".into(),
            target: RunTarget::Workspace {
                module: "contacts".into(),
                subject: None,
            },
            initiator: "alice".into(),
            retry_of: None,
        };
        let workspace_queued = RunEvent::RunQueued {
            workspace: workspace(),
            run_type: "contacts.sync".into(),
            context: None,
            initiator: "alice".into(),
            queued_at: now(),
            retry_of: None,
            workspace_module: Some("contacts".into()),
            workspace_subject: None,
        };
        F::with(services())
            .given_no_previous_events()
            .when(queue)
            .then_expect_events(vec![workspace_queued.clone()]);
        let run = state(vec![workspace_queued]);
        assert_eq!(run.context, None);
        assert_eq!(run.module(), Some("contacts"));
        assert_eq!(run.scope_lock_id().as_deref(), Some("acme:contacts"));
        assert_eq!(
            run.target(),
            Some(RunTarget::Workspace {
                module: "contacts".into(),
                subject: None,
            })
        );
        let tenant_run = state(vec![queued()]);
        assert_eq!(tenant_run.module(), Some("policies"));
        assert_eq!(
            tenant_run.scope_lock_id(),
            Some(crate::scope_lock::scope_key(&workspace(), guid()))
        );
    }

    #[test]
    fn a_workspace_run_with_a_module_that_is_no_machine_name_is_refused() {
        F::with(services())
            .given_no_previous_events()
            .when(RunCommand::Queue {
                workspace: workspace(),
                run_type: "contacts.sync".into(),
                target: RunTarget::Workspace {
                    module: "Contacts!".into(),
                    subject: None,
                },
                initiator: "alice".into(),
                retry_of: None,
            })
            .then_expect_error(RunError::InvalidModule);
    }

    #[test]
    fn a_run_queued_before_workspace_runs_existed_reads_as_a_tenant_run() {
        let mut stored = serde_json::to_value(queued()).unwrap();
        stored["RunQueued"]
            .as_object_mut()
            .unwrap()
            .remove("workspace_module");
        assert!(stored["RunQueued"]["context"].is_object());
        let read: RunEvent = serde_json::from_value(stored).unwrap();
        assert_eq!(read, queued());
        // And a workspace run leaves no tenant context in its payload.
        let workspace_run = RunEvent::RunQueued {
            workspace: workspace(),
            run_type: "contacts.sync".into(),
            context: None,
            initiator: "alice".into(),
            queued_at: now(),
            retry_of: None,
            workspace_module: Some("contacts".into()),
            workspace_subject: None,
        };
        let payload = serde_json::to_value(&workspace_run).unwrap();
        assert!(payload["RunQueued"]["context"].is_null());
        assert_eq!(payload["RunQueued"]["workspace_module"], "contacts");
    }

    fn earlier_run() -> RunId {
        RunId(uuid::Uuid::from_u128(7))
    }

    #[test]
    fn a_retry_is_queued_linked_to_the_run_it_starts_again() {
        let retry = RunCommand::Queue {
            workspace: workspace(),
            run_type: "policy.resync".into(),
            target: RunTarget::Tenant(context()),
            initiator: "alice".into(),
            retry_of: Some(earlier_run()),
        };
        let retried = RunEvent::RunQueued {
            workspace: workspace(),
            run_type: "policy.resync".into(),
            context: Some(context()),
            initiator: "alice".into(),
            queued_at: now(),
            retry_of: Some(earlier_run()),
            workspace_module: None,
            workspace_subject: None,
        };
        F::with(services())
            .given_no_previous_events()
            .when(retry)
            .then_expect_events(vec![retried.clone()]);
        assert_eq!(state(vec![retried]).retry_of, Some(earlier_run()));
        assert_eq!(state(vec![queued()]).retry_of, None);
    }

    #[test]
    fn a_run_queued_before_retries_existed_still_reads_and_links_nothing() {
        // The payload of a `RunQueued` written before `retry_of` existed.
        let stored = json!({ "RunQueued": {
            "workspace": "acme",
            "run_type": "policy.resync",
            "context": serde_json::to_value(context()).unwrap(),
            "initiator": "alice",
            "queued_at": "2026-11-23T09:00:00Z"
        }});
        let event: RunEvent = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(event, queued());
        // And a run that retries nothing is still written the old way.
        assert_eq!(serde_json::to_value(queued()).unwrap(), stored);
    }

    #[test]
    fn only_a_failed_blocked_or_cancelled_run_can_be_retried() {
        let ended = |end: RunEvent| state(with(running(), end));
        let retryable = [
            ended(RunEvent::RunFailed {
                failure: failure("x"),
                at: now(),
                progress: vec![],
            }),
            state(vec![queued(), blocked(vec![NextStep::AddConnection])]),
            ended(RunEvent::RunCancelled {
                at: now(),
                progress: vec![],
            }),
        ];
        for run in retryable {
            assert_eq!(run.check_retryable(), Ok(()), "{:?}", run.outcome);
        }
        let succeeded = ended(RunEvent::RunSucceeded {
            summary_counts: counts(1),
            at: now(),
            progress: vec![],
        });
        let refused = succeeded.check_retryable().unwrap_err();
        assert_eq!(
            refused,
            RunError::NotRetryable {
                outcome: RunOutcome::Succeeded
            }
        );
        assert_eq!(refused.reason_code(), ReasonCode::InvalidTransition);
        assert_eq!(
            refused.to_string(),
            "a succeeded run cannot be retried: only failed, blocked or cancelled runs can"
        );
        // Nor one still under way, nor one that does not exist.
        assert_eq!(
            state(running()).check_retryable(),
            Err(RunError::NotRetryable {
                outcome: RunOutcome::Pending
            })
        );
        assert_eq!(
            OperationRun::default().check_retryable(),
            Err(RunError::NotFound)
        );
    }

    #[test]
    fn an_event_tells_its_time_step_attempt_and_reason() {
        let failed_run = RunEvent::RunFailed {
            failure: failure("x"),
            at: now(),
            progress: vec![],
        };
        assert_eq!(step_failed(2).step(), Some("fetch"));
        assert_eq!(step_failed(2).attempt(), Some(2));
        assert_eq!(step_failed(2).reason(), Some(ReasonCode::GraphThrottled));
        assert_eq!(failed_run.step(), Some("fetch"));
        assert_eq!(failed_run.attempt(), None);
        assert_eq!(failed_run.reason(), Some(ReasonCode::GraphUnavailable));
        assert_eq!((queued().step(), queued().reason()), (None, None));
        assert_eq!(queued().at(), now());
        assert_eq!(step_completed(1).at(), now());
    }

    #[test]
    fn commands_on_a_missing_run_are_refused() {
        for command in [RunCommand::Start, start_step(1), RunCommand::RequestCancel] {
            F::with(services())
                .given_no_previous_events()
                .when(command)
                .then_expect_error(RunError::NotFound);
        }
    }

    #[test]
    fn a_queued_run_starts_running() {
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::Start)
            .then_expect_events(vec![started()]);
        let r = state(running());
        assert_eq!(r.status, RunStatus::Running);
        assert_eq!(r.started_at, Some(now()));
    }

    #[test]
    fn a_running_run_cannot_start_again() {
        F::with(services())
            .given(running())
            .when(RunCommand::Start)
            .then_expect_error(RunError::InvalidTransition {
                status: RunStatus::Running,
                action: "start",
            });
    }

    #[test]
    fn a_run_goes_queued_running_completed_with_timestamps() {
        F::with(services())
            .given(running())
            .when(RunCommand::Succeed {
                summary_counts: counts(3),
            })
            .then_expect_events(vec![RunEvent::RunSucceeded {
                summary_counts: counts(3),
                at: now(),
                progress: vec![],
            }]);
        let r = state(with(
            running(),
            RunEvent::RunSucceeded {
                summary_counts: counts(3),
                at: now(),
                progress: vec![],
            },
        ));
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Completed, RunOutcome::Succeeded)
        );
        assert_eq!((r.started_at, r.completed_at), (Some(now()), Some(now())));
        assert_eq!(r.summary_counts["policies"], 3);
        assert!(!r.is_active());
    }

    #[test]
    fn only_a_running_run_succeeds() {
        let cases = [
            (
                RunCommand::Succeed {
                    summary_counts: counts(1),
                },
                "a queued run cannot succeed",
            ),
            (
                RunCommand::PartiallySucceed {
                    summary_counts: counts(1),
                    failures: vec![],
                },
                "a queued run cannot partially succeed",
            ),
        ];
        for (command, message) in cases {
            F::with(services())
                .given(vec![queued()])
                .when(command)
                .then_expect_error_message(message);
        }
    }

    #[test]
    fn a_completed_run_refuses_every_transition() {
        for command in every_command_after_queue() {
            let result = F::with(services())
                .given(with(
                    running(),
                    RunEvent::RunCancelled {
                        at: now(),
                        progress: vec![],
                    },
                ))
                .when(command.clone())
                .inspect_result();
            match result {
                Err(RunError::InvalidTransition { status, .. }) => {
                    assert_eq!(status, RunStatus::Completed, "{command:?}")
                }
                other => panic!("{command:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn transition_errors_read_as_a_sentence() {
        let e = RunError::InvalidTransition {
            status: RunStatus::Completed,
            action: "start",
        };
        assert_eq!(e.to_string(), "a completed run cannot start");
        assert_eq!(e.reason_code(), ReasonCode::InvalidTransition);
    }

    #[test]
    fn steps_are_only_recorded_while_running() {
        F::with(services())
            .given(vec![queued()])
            .when(complete_step(1))
            .then_expect_error(RunError::InvalidTransition {
                status: RunStatus::Queued,
                action: "record a step",
            });
    }

    #[test]
    fn a_step_is_started_then_completed() {
        F::with(services())
            .given(running())
            .when(start_step(1))
            .then_expect_events(vec![step_started(1)]);
        F::with(services())
            .given(with(running(), step_started(1)))
            .when(complete_step(1))
            .then_expect_events(vec![step_completed(1)]);
        let r = state(vec![
            queued(),
            started(),
            step_started(1),
            step_completed(1),
        ]);
        assert_eq!(
            r.step("fetch").map(|s| s.status),
            Some(StepStatus::Completed)
        );
    }

    #[test]
    fn a_step_summary_is_sanitized() {
        F::with(services())
            .given(running())
            .when(RunCommand::CompleteStep {
                step: "token".into(),
                attempt: 1,
                summary: json!({"access_token": "abc", "note": "Bearer xyz"}),
            })
            .then_expect_events(vec![RunEvent::RunStepCompleted {
                step: "token".into(),
                attempt: 1,
                summary: json!({"access_token": "[redacted]", "note": "Bearer [redacted]"}),
                at: now(),
            }]);
    }

    #[test]
    fn an_oversized_step_summary_is_refused() {
        // About 14 bytes per id: 400 ids are well over 4 KiB.
        let ids: Vec<String> = (0..400).map(|i| format!("policy-{i:04}")).collect();
        F::with(services())
            .given(running())
            .when(RunCommand::CompleteStep {
                step: "fetch".into(),
                attempt: 1,
                summary: json!({ "ids": ids }),
            })
            .then_expect_error(RunError::InvalidSummary(
                "a step summary is at most 4 KiB of JSON",
            ));
    }

    #[test]
    fn a_malformed_step_name_or_attempt_zero_is_refused() {
        for (step, attempt) in [("Fetch Policies", 1), ("fetch", 0)] {
            F::with(services())
                .given(running())
                .when(RunCommand::StartStep {
                    step: step.into(),
                    attempt,
                })
                .then_expect_error(RunError::InvalidStep);
        }
    }

    #[test]
    fn replaying_a_recorded_step_records_nothing() {
        let cases = [
            (step_started(1), start_step(1)),
            (step_completed(1), complete_step(1)),
            (step_failed(1), fail_step(1)),
        ];
        for (recorded, replayed) in cases {
            F::with(services())
                .given(with(running(), recorded))
                .when(replayed)
                .then_expect_events(vec![]);
        }
    }

    #[test]
    fn a_stale_attempt_is_refused_as_a_conflict() {
        let stale = RunError::StaleAttempt {
            step: "fetch".into(),
            attempt: 1,
            latest: 2,
        };
        for command in [start_step(1), complete_step(1), fail_step(1)] {
            F::with(services())
                .given(vec![queued(), started(), step_failed(1), step_started(2)])
                .when(command)
                .then_expect_error(stale.clone());
        }
        assert_eq!(stale.reason_code(), ReasonCode::Conflict);
        // A failed attempt is over: its number cannot start or complete again.
        F::with(services())
            .given(with(running(), step_failed(1)))
            .when(complete_step(1))
            .then_expect_error(RunError::StaleAttempt {
                step: "fetch".into(),
                attempt: 1,
                latest: 1,
            });
    }

    #[test]
    fn a_completed_step_does_not_run_again() {
        for command in [start_step(2), complete_step(2), fail_step(2)] {
            F::with(services())
                .given(with(running(), step_completed(1)))
                .when(command)
                .then_expect_error(RunError::StepCompleted {
                    step: "fetch".into(),
                });
        }
    }

    #[test]
    fn a_completed_step_keeps_its_summary_until_another_attempt_replaces_it() {
        let done = state(with(running(), step_completed(1)));
        assert_eq!(
            done.step("fetch").unwrap().summary,
            Some(json!({"policies": 3}))
        );
        let retried = state(with(with(running(), step_completed(1)), step_failed(2)));
        assert_eq!(retried.step("fetch").unwrap().summary, None);
    }

    #[test]
    fn a_failed_step_keeps_its_reason_retry_time_and_a_sanitized_message() {
        let retry = now() + chrono::Duration::seconds(5);
        F::with(services())
            .given(with(running(), step_started(2)))
            .when(RunCommand::FailStep {
                step: "fetch".into(),
                attempt: 2,
                reason: ReasonCode::GraphThrottled,
                message: "429 with Bearer eyJtoken".into(),
                retry_at: Some(retry),
            })
            .then_expect_events(vec![RunEvent::RunStepFailed {
                step: "fetch".into(),
                attempt: 2,
                reason: ReasonCode::GraphThrottled,
                message: "429 with Bearer [redacted]".into(),
                retry_at: Some(retry),
                at: now(),
            }]);
    }

    #[test]
    fn a_retry_starts_the_next_attempt() {
        F::with(services())
            .given(with(running(), step_failed(1)))
            .when(start_step(2))
            .then_expect_events(vec![step_started(2)]);
        let r = state(vec![queued(), started(), step_failed(1), step_started(2)]);
        let step = r.step("fetch").unwrap();
        assert_eq!((step.attempt, step.status), (2, StepStatus::Started));
        assert_eq!(r.steps.len(), 1);
    }

    #[test]
    fn a_partially_successful_run_keeps_counts_and_sanitized_failures() {
        F::with(services())
            .given(running())
            .when(RunCommand::PartiallySucceed {
                summary_counts: counts(2),
                failures: vec![failure("tenant x: password=hunter2")],
            })
            .then_expect_events(vec![RunEvent::RunPartiallySucceeded {
                summary_counts: counts(2),
                failures: vec![failure("tenant x: password=[redacted]")],
                at: now(),
                progress: vec![],
            }]);
        let r = state(with(
            running(),
            RunEvent::RunPartiallySucceeded {
                summary_counts: counts(2),
                failures: vec![failure("x")],
                at: now(),
                progress: vec![],
            },
        ));
        assert_eq!(r.outcome, RunOutcome::PartiallySucceeded);
        assert_eq!(r.failure_summary, vec![failure("x")]);
    }

    #[test]
    fn summary_counts_must_be_few_and_named_like_machines() {
        let badly_named = BTreeMap::from([("Policies Created".to_owned(), 1)]);
        let too_many = (0..=MAX_ENTRIES).map(|i| (format!("c{i}"), 1)).collect();
        for summary_counts in [badly_named, too_many] {
            let result = F::with(services())
                .given(running())
                .when(RunCommand::Succeed { summary_counts })
                .inspect_result();
            assert!(
                matches!(result, Err(RunError::InvalidSummary(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn a_failed_run_keeps_a_sanitized_failure_summary() {
        F::with(services())
            .given(running())
            .when(RunCommand::Fail {
                failure: failure("502 from graph, secret=abc"),
            })
            .then_expect_events(vec![RunEvent::RunFailed {
                failure: failure("502 from graph, secret=[redacted]"),
                at: now(),
                progress: vec![],
            }]);
        let r = state(with(
            running(),
            RunEvent::RunFailed {
                failure: failure("x"),
                at: now(),
                progress: vec![],
            },
        ));
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Completed, RunOutcome::Failed)
        );
        assert_eq!(r.failure_summary, vec![failure("x")]);
    }

    #[test]
    fn a_queued_run_can_fail_before_it_starts() {
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::Fail {
                failure: failure("x"),
            })
            .then_expect_events(vec![RunEvent::RunFailed {
                failure: failure("x"),
                at: now(),
                progress: vec![],
            }]);
    }

    #[test]
    fn a_queued_run_is_blocked_with_a_reason_and_next_steps() {
        let steps = vec![NextStep::AddConnection];
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::Block {
                reason: ReasonCode::ProviderConnectionMissing,
                next_steps: steps.clone(),
            })
            .then_expect_events(vec![blocked(steps.clone())]);
        let r = state(vec![queued(), blocked(steps.clone())]);
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Completed, RunOutcome::Blocked)
        );
        assert_eq!(
            r.blocked_reason,
            Some(ReasonCode::ProviderConnectionMissing)
        );
        assert_eq!(r.next_steps, steps);
        assert_eq!(r.completed_at, Some(now()));
        assert_eq!(r.started_at, None);
    }

    #[test]
    fn more_next_steps_than_a_run_offers_are_refused() {
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::Block {
                reason: ReasonCode::ProviderConsentMissing,
                next_steps: vec![NextStep::GrantConsent; MAX_NEXT_STEPS + 1],
            })
            .then_expect_error(RunError::InvalidNextStep);
    }

    #[test]
    fn next_steps_are_stored_by_name() {
        let json = serde_json::to_value(NextStep::ALL).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                "add_connection",
                "enable_connection",
                "set_credential",
                "grant_consent",
                "check_service_status",
                "fix_permissions",
                "provide_new_secret"
            ])
        );
        let back: Vec<NextStep> = serde_json::from_value(json).unwrap();
        assert_eq!(back, NextStep::ALL);
        assert!(serde_json::from_value::<NextStep>(serde_json::json!("call_support")).is_err());
    }

    #[test]
    fn a_run_blocked_when_next_steps_were_links_still_reads() {
        // The payload of a `RunBlocked` written before next steps had names.
        let stored = serde_json::json!({ "RunBlocked": {
            "reason": "provider_credential_missing",
            "next_steps": [
                { "label": "Add a Microsoft connection", "href": "/tenants/acme:x/connections/new" },
                { "label": "Enable the connection", "href": "/tenants/acme:x/connections" },
                { "label": "Set the connection's credential", "href": "/tenants/acme:x/connections" },
                { "label": "Grant admin consent", "href": "/tenants/acme:x/connections" }
            ],
            "at": "2026-01-01T00:00:00Z"
        }});
        let RunEvent::RunBlocked { next_steps, .. } = serde_json::from_value(stored).unwrap()
        else {
            panic!("not a RunBlocked");
        };
        assert_eq!(next_steps, NextStep::ALL[..4]);
        let unknown = serde_json::json!({ "label": "Call us", "href": "/support" });
        assert!(serde_json::from_value::<NextStep>(unknown).is_err());
    }

    #[test]
    fn a_running_run_cannot_be_blocked() {
        F::with(services())
            .given(running())
            .when(RunCommand::Block {
                reason: ReasonCode::ProviderConsentMissing,
                next_steps: vec![],
            })
            .then_expect_error(RunError::InvalidTransition {
                status: RunStatus::Running,
                action: "be blocked",
            });
    }

    #[test]
    fn cancelling_a_queued_run_cancels_it_at_once() {
        F::with(services())
            .given(vec![queued()])
            .when(RunCommand::RequestCancel)
            .then_expect_events(vec![RunEvent::RunCancelled {
                at: now(),
                progress: vec![],
            }]);
        let r = state(vec![
            queued(),
            RunEvent::RunCancelled {
                at: now(),
                progress: vec![],
            },
        ]);
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Completed, RunOutcome::Cancelled)
        );
    }

    #[test]
    fn cancelling_a_running_run_is_a_request_recorded_once() {
        F::with(services())
            .given(running())
            .when(RunCommand::RequestCancel)
            .then_expect_events(vec![RunEvent::RunCancelRequested { at: now() }]);
        let requested = with(running(), RunEvent::RunCancelRequested { at: now() });
        assert!(state(requested.clone()).cancel_requested);
        assert!(state(requested.clone()).is_active());
        F::with(services())
            .given(requested)
            .when(RunCommand::RequestCancel)
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_workflow_cancels_a_running_run() {
        F::with(services())
            .given(with(running(), RunEvent::RunCancelRequested { at: now() }))
            .when(RunCommand::Cancel)
            .then_expect_events(vec![RunEvent::RunCancelled {
                at: now(),
                progress: vec![],
            }]);
    }

    #[test]
    fn people_queue_and_cancel_runs_only_the_engine_records_progress() {
        assert_eq!(queue().permission(), Permission::StartOperations);
        for c in every_command_after_queue() {
            let expected = match c {
                RunCommand::RequestCancel => Permission::StartOperations,
                _ => Permission::RecordProgress,
            };
            assert_eq!(c.permission(), expected, "{c:?}");
        }
    }

    #[test]
    fn statuses_and_outcomes_are_spelled_in_snake_case() {
        for s in [RunStatus::Queued, RunStatus::Running, RunStatus::Completed] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for o in [
            RunOutcome::Pending,
            RunOutcome::Succeeded,
            RunOutcome::PartiallySucceeded,
            RunOutcome::Failed,
            RunOutcome::Cancelled,
            RunOutcome::Blocked,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for s in [
            StepStatus::Started,
            StepStatus::Completed,
            StepStatus::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.to_string());
        }
    }

    #[test]
    fn a_runs_end_carries_the_progress_kept_off_the_log_and_folds_into_the_same_run() {
        let progress = vec![started(), step_failed(1), step_completed(2)];
        let mut end = RunEvent::RunSucceeded {
            summary_counts: counts(1),
            at: now(),
            progress: vec![],
        };
        // Only progress is carried.
        end.carry(vec![queued()]);
        assert!(end.carried().is_empty());
        end.carry(progress.clone());
        assert_eq!(end.carried(), progress.as_slice());
        // Folded from the log (queued, then the end), the run is what the engine had.
        let logged = state(vec![queued(), end.clone()]);
        let mut engine = state(vec![queued()]);
        for e in progress {
            engine.apply(e);
        }
        engine.apply(end);
        assert_eq!(
            serde_json::to_value(&logged).unwrap(),
            serde_json::to_value(&engine).unwrap()
        );
        let step = logged.step("fetch").unwrap();
        assert_eq!((step.attempt, step.status), (2, StepStatus::Completed));
        assert_eq!(logged.started_at, Some(now()));
        assert_eq!(logged.outcome, RunOutcome::Succeeded);
    }

    #[test]
    fn an_end_logged_before_ends_carried_progress_still_reads() {
        let stored = serde_json::json!({ "RunSucceeded": {
            "summary_counts": { "steps_completed": 3 },
            "at": "2026-01-01T00:00:00Z"
        }});
        let end: RunEvent = serde_json::from_value(stored.clone()).unwrap();
        assert!(end.carried().is_empty());
        // Written back the same: an end that carries nothing says nothing of it.
        assert_eq!(serde_json::to_value(&end).unwrap(), stored);
    }

    #[test]
    fn event_types_match_their_stored_tags() {
        assert_event_types_match_payload_tags(&[
            queued(),
            started(),
            step_started(1),
            step_completed(1),
            step_failed(1),
            RunEvent::RunSucceeded {
                summary_counts: counts(1),
                at: now(),
                progress: vec![],
            },
            RunEvent::RunPartiallySucceeded {
                summary_counts: counts(1),
                failures: vec![],
                at: now(),
                progress: vec![],
            },
            RunEvent::RunFailed {
                failure: failure("x"),
                at: now(),
                progress: vec![],
            },
            blocked(vec![]),
            RunEvent::RunCancelRequested { at: now() },
            RunEvent::RunCancelled {
                at: now(),
                progress: vec![],
            },
        ]);
    }
}
