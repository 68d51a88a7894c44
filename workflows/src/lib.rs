//! The durable saga runtime (R7): workflow definitions as data with a pure `decide`, retry
//! timing, the leased task table runners claim work from, and the scheduler that starts a
//! workspace's fleet of runs on a recurring schedule.
pub mod engine;
pub mod plan;
pub mod resync;
pub mod retry;
pub mod scheduler;
pub mod tasks;

pub use engine::{Engine, EngineError};
pub use plan::{Decision, Plan, StepDef};
pub use retry::Backoff;
pub use scheduler::{Pass, Scheduler, SchedulerError};
pub use tasks::{claim, release, Task, TaskFeed};
