//! The Conditional Access resync workflow (R3): snapshot the policies, refresh licenses
//! (non-fatal), record the resync. An import (R3.4) is the same workflow under its own run
//! type, whose snapshot also becomes the tenant's policy intent.

use crate::plan::{Plan, StepDef};

/// Run type of a resync.
pub const RUN_TYPE: &str = "policy.resync";

/// Run type of a resync whose snapshot is an import: it also seeds the policy intent.
pub const IMPORT_RUN_TYPE: &str = "policy.import";

pub const SNAPSHOT: &str = "snapshot_policies";
pub const LICENSES: &str = "refresh_licenses";
pub const RECORD: &str = "record_resync";

/// A failed snapshot fails the run; a failed license refresh leaves the snapshot standing
/// and the run partially succeeded.
const STEPS: &[StepDef] = &[
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
];

/// The resync plan.
pub const PLAN: Plan = Plan {
    run_type: RUN_TYPE,
    steps: STEPS,
};

/// The import plan: the resync's steps; only the snapshot's source differs.
pub const IMPORT_PLAN: Plan = Plan {
    run_type: IMPORT_RUN_TYPE,
    steps: STEPS,
};
