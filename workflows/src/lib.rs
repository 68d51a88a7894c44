//! The durable saga runtime (R7): a registry of workflows (each a plan with a pure
//! `decide`, the outside work of its steps and their effects), the engine that runs them,
//! retry timing, the leased task table runners claim work from, and the scheduler that
//! starts a workspace's fleet of runs on a recurring schedule.
//!
//! Workflows: [`resync`] (Conditional Access resync and import), [`health`] (connection
//! health checks), [`contacts`] (tenant discovery and contact sync).
pub mod contacts;
pub mod engine;
pub mod health;
pub mod mail;
pub mod plan;
pub mod resync;
pub mod retry;
pub mod scheduler;
pub mod tasks;
pub mod workflow;

pub use engine::{Engine, EngineError};
pub use plan::{Decision, Plan, StepDef};
pub use retry::Backoff;
pub use scheduler::{Pass, Scheduler, SchedulerError};
pub use tasks::{claim, release, Task, TaskFeed};
pub use workflow::{
    steps_completed, Applied, Effect, Registry, StepContext, StepFailure, UnknownRunType, Workflow,
};
