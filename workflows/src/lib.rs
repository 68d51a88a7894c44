//! The durable saga runtime (R7): workflow definitions as data with a pure `decide`, retry
//! timing, and the leased task table runners claim work from.
//!
//! Status: the building blocks are here and tested; the runner loop that performs steps and
//! the Conditional Access resync workflow itself are the next step (issue 7).

pub mod plan;
pub mod retry;
pub mod tasks;

pub use plan::{Decision, Plan, StepDef};
pub use retry::Backoff;
pub use tasks::{claim, release, Task, TaskFeed};
