//! The Conditional Access resync workflow (R3): snapshot the policies, refresh licenses
//! (non-fatal), record the resync.

use crate::plan::{Plan, StepDef};

/// Run type of a resync.
pub const RUN_TYPE: &str = "policy.resync";

pub const SNAPSHOT: &str = "snapshot_policies";
pub const LICENSES: &str = "refresh_licenses";
pub const RECORD: &str = "record_resync";

/// The resync plan: a failed snapshot fails the run; a failed license refresh leaves the
/// snapshot standing and the run partially succeeded.
pub const PLAN: Plan = Plan {
    run_type: RUN_TYPE,
    steps: &[
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
    ],
};
