//! A run's checkpoint (issue 13, event economy): the progress the workflow engine records
//! for a run (its start, each step's attempts), kept on the run's task row
//! (`workflow_tasks.progress`), off the log. The engine writes it in the same transaction
//! as the effects of the steps it records, so a run resumes from it after a crash exactly
//! as it did from logged progress; the run's end carries it into the log (see
//! [`RunEvent::carried`]), and the task row goes with the run.
//!
//! Every write bumps the checkpoint's version, and the engine writes only at the version
//! it read: a person's command on the run ([`claim`]) makes the engine's next write a
//! conflict, as an append to the run's stream made its next append one before.

use domain::run::RunEvent;
use domain::RunId;
use sqlx::types::Json;
use sqlx::PgConnection;

/// The channel `runUpdated` listens on: the runs projection notifies it for what the log
/// says of a run, the engine for a run's checkpoint.
pub const RUNS_CHANNEL: &str = "tenantflow_runs";

/// Tells `runUpdated` subscribers that a run's checkpoint moved on (its start or a step,
/// which are off the log until the run ends, so this projection does not see them). Sent
/// in the caller's transaction: delivered when it commits, never for a rolled-back step.
pub async fn notify_progress(
    conn: &mut PgConnection,
    run_id: RunId,
    workspace: &str,
    tenant_key: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, json_build_object('run_id', $2::uuid, 'workspace', $3::text, 'tenant_key', $4::text)::text)")
        .bind(RUNS_CHANNEL)
        .bind(run_id.as_uuid())
        .bind(workspace)
        .bind(tenant_key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A run's progress off the log, and the version it was read at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// In the order it was recorded.
    pub progress: Vec<RunEvent>,
    pub version: i32,
}

impl Checkpoint {
    /// The checkpoint a task row holds; empty without a row.
    fn of(row: Option<(Json<Vec<RunEvent>>, i32)>) -> Self {
        row.map(|(Json(progress), version)| Checkpoint { progress, version })
            .unwrap_or_default()
    }
}

/// The checkpoint of `run_id`; empty when the run has no task (not fed yet, or ended).
pub async fn read(conn: &mut PgConnection, run_id: RunId) -> Result<Checkpoint, sqlx::Error> {
    let row =
        sqlx::query_as("SELECT progress, progress_version FROM workflow_tasks WHERE run_id = $1")
            .bind(run_id.as_uuid())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(Checkpoint::of(row))
}

/// The progress in the checkpoint of `run_id`, for readers (the API's role may read no
/// more of a task than its run, workspace and progress).
pub async fn progress(
    conn: &mut PgConnection,
    run_id: RunId,
) -> Result<Vec<RunEvent>, sqlx::Error> {
    let row: Option<(Json<Vec<RunEvent>>,)> =
        sqlx::query_as("SELECT progress FROM workflow_tasks WHERE run_id = $1")
            .bind(run_id.as_uuid())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(Json(progress),)| progress).unwrap_or_default())
}

/// The checkpoint of `run_id` for a person's command on the run, in the command's
/// transaction: the task row stays locked until it commits, and the engine's next write
/// is a conflict (it reads the run again, with the command's effect).
pub async fn claim(conn: &mut PgConnection, run_id: RunId) -> Result<Checkpoint, sqlx::Error> {
    let row = sqlx::query_as(
        "UPDATE workflow_tasks SET progress_version = progress_version + 1, updated_at = now() \
         WHERE run_id = $1 RETURNING progress, progress_version",
    )
    .bind(run_id.as_uuid())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Checkpoint::of(row))
}

/// Appends `progress` to the checkpoint of `run_id` if `owner` still holds the run's task
/// and nobody wrote the checkpoint since `version` was read; returns whether it did (the
/// new version is `version + 1`). Appending nothing still checks both. `releasing`: the
/// scope lock the run frees as it ends, deleted (if the run holds it) by the same
/// statement, so the transaction that ends a run makes one round trip less. When the
/// checkpoint is not written the caller must roll back (the deletion goes with it).
pub async fn append(
    conn: &mut PgConnection,
    run_id: RunId,
    owner: &str,
    version: i32,
    progress: &[RunEvent],
    releasing: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "WITH released AS ( \
             DELETE FROM scope_locks WHERE $5::text IS NOT NULL AND lock_id = $5 AND run_id = $1) \
         UPDATE workflow_tasks SET progress = progress || $4, \
             progress_version = progress_version + 1, updated_at = now() \
         WHERE run_id = $1 AND lease_owner = $2 AND progress_version = $3",
    )
    .bind(run_id.as_uuid())
    .bind(owner)
    .bind(version)
    .bind(Json(progress))
    .bind(releasing)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
