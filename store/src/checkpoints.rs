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

/// A runner's write of a run's checkpoint, made with the events it decided
/// ([`CommandBus::append_checkpointed`](crate::CommandBus::append_checkpointed)): `progress`
/// is appended to the checkpoint of `run_id` if `owner` still holds the run's task and
/// nobody wrote the checkpoint since `version` was read (the new version is `version + 1`).
/// Writing no progress still checks both.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub run_id: RunId,
    pub owner: &'a str,
    pub version: i32,
    pub progress: &'a [RunEvent],
    /// The scope lock the run frees as it ends, deleted (if the run holds it) by the same
    /// statement.
    pub releasing: Option<&'a str>,
    /// The run's workspace and tenant, to tell `runUpdated` subscribers of the progress
    /// ([`RUNS_CHANNEL`]); delivered when the write commits, never for a refused one.
    pub notify: Option<(&'a str, Option<&'a str>)>,
}

/// The SQLSTATE of a checkpoint write refused because the checkpoint moved (migration
/// 20261203000020): the statement fails, so the events written with it go too.
const CHECKPOINT_MOVED: &str = "TF409";

/// The events, the checkpoint, the freed scope and the notification in one statement.
/// Data-modifying CTEs all run to completion; when the checkpoint's UPDATE matched no row,
/// `tenantflow_checkpoint_written` raises and the whole statement rolls back.
const WRITE_WITH_EVENTS: &str = concat!(
    "WITH released AS ( \
         DELETE FROM scope_locks WHERE $12::text IS NOT NULL AND lock_id = $12 AND run_id = $8), \
     moved AS ( \
         UPDATE workflow_tasks SET progress = progress || $11, \
             progress_version = progress_version + 1, updated_at = now() \
         WHERE run_id = $8 AND lease_owner = $9 AND progress_version = $10 RETURNING run_id), \
     appended AS (",
    crate::bus::insert_event_rows!(),
    ") \
     SELECT tenantflow_checkpoint_written((SELECT count(*) FROM moved)), \
            CASE WHEN $13::text IS NOT NULL THEN pg_notify($15::text, json_build_object( \
                'run_id', $8::uuid, 'workspace', $13::text, 'tenant_key', $14::text)::text) END"
);

/// Writes `rows` and the checkpoint `write` in one statement; `false` (nothing written)
/// when the checkpoint moved.
pub(crate) async fn write_with_events(
    conn: &mut PgConnection,
    rows: &crate::EventRows,
    write: &Write<'_>,
) -> Result<bool, crate::AppendError> {
    let (workspace, tenant) = match write.notify {
        Some((workspace, tenant)) => (Some(workspace), tenant),
        None => (None, None),
    };
    let done = rows
        .bind(sqlx::query(WRITE_WITH_EVENTS))
        .bind(write.run_id.as_uuid())
        .bind(write.owner)
        .bind(write.version)
        .bind(Json(write.progress))
        .bind(write.releasing)
        .bind(workspace)
        .bind(tenant)
        .bind(RUNS_CHANNEL)
        .execute(&mut *conn)
        .await;
    match done {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(CHECKPOINT_MOVED) => Ok(false),
        Err(e) => Err(crate::AppendError::of_insert(e)),
    }
}
