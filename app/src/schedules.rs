//! Schedules: a workspace's recurring runs of one type.

use chrono::{DateTime, Utc};
use domain::schedule::{schedule_key, Schedule, ScheduleCommand};
use store::{CommandBus, Metadata};

use crate::guard::{self, caller_workspace};
use crate::AppError;

/// Sets the caller's workspace's schedule of `run_type` (creating it, changing it, or
/// saving it unchanged); returns its id. See [`ScheduleCommand::Set`] for the timing rules.
pub async fn set_schedule(
    bus: &CommandBus,
    meta: &Metadata,
    run_type: &str,
    interval_minutes: u32,
    enabled: bool,
    first_due_at: Option<DateTime<Utc>>,
) -> Result<String, AppError> {
    let workspace = caller_workspace(meta)?;
    let id = schedule_key(&workspace, run_type);
    let command = ScheduleCommand::Set {
        workspace,
        run_type: run_type.to_owned(),
        interval_minutes,
        enabled,
        first_due_at,
    };
    bus.execute::<Schedule>(&id, command, meta).await?;
    Ok(id)
}

/// Disables a schedule of the caller's workspace.
pub async fn disable_schedule(
    bus: &CommandBus,
    meta: &Metadata,
    schedule_id: &str,
) -> Result<(), AppError> {
    // Checked first, so a refused role learns nothing about which schedules exist.
    if !meta.role.allows(domain::Permission::ManageSchedules) {
        return Err(AppError::Forbidden(meta.role));
    }
    guard::load::<Schedule>(bus, meta, schedule_id).await?;
    bus.execute::<Schedule>(schedule_id, ScheduleCommand::Disable, meta)
        .await?;
    Ok(())
}
