//! The durable saga runtime (R7): workflow definitions as data with a pure `decide`, retry
//! timing, and the leased task table runners claim work from.
//!
pub mod engine;
pub mod plan;
pub mod resync;
pub mod retry;
pub mod tasks;

pub use engine::{Engine, EngineError};
pub use plan::{Decision, Plan, StepDef};
pub use retry::Backoff;
pub use tasks::{claim, release, Task, TaskFeed};
