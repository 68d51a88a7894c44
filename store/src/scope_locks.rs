//! Scope locks as rows of `scope_locks` (issue 13, event economy): the
//! [`ScopeLock`] aggregate still decides (dedupe, scope busy, release), on a state read
//! from its row; what it decides is written to the row in the caller's transaction, not
//! appended to the log. A lock is operational state that lives as long as its run:
//! auditors read who started and ended the run from the run's own events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::scope_lock::{ActiveRun, ScopeEvent, ScopeLock};
use domain::RunId;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{AppendError, Staged, StagedStream};

/// The locks `ids` as this transaction sees them, staged for decisions; a scope without a
/// row is free.
pub async fn fetch(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, Staged<ScopeLock>>, sqlx::Error> {
    let rows: Vec<(String, Uuid, String)> =
        sqlx::query_as("SELECT lock_id, run_id, run_type FROM scope_locks WHERE lock_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    let mut held: HashMap<String, ActiveRun> = rows
        .into_iter()
        .map(|(id, run_id, run_type)| {
            let active = ActiveRun {
                run_id: RunId(run_id),
                run_type,
            };
            (id, active)
        })
        .collect();
    Ok(ids
        .iter()
        .map(|id| {
            let state = ScopeLock {
                active: held.remove(id),
            };
            (id.clone(), Staged::new(id.clone(), state, 0))
        })
        .collect())
}

/// Writes what was decided on `locks`: an acquisition inserts the lock's row (a row
/// inserted meanwhile by another start is a conflict: the caller starts over and finds
/// it), a release deletes the row if the run still holds it.
pub async fn write(
    conn: &mut PgConnection,
    locks: &mut [&mut Staged<ScopeLock>],
) -> Result<(), AppendError> {
    for lock in locks.iter_mut() {
        let id = lock.id().to_owned();
        for event in lock.pending_events() {
            match event {
                ScopeEvent::ScopeAcquired {
                    run_id,
                    run_type,
                    at,
                } => acquire(conn, &id, run_id, &run_type, at).await?,
                ScopeEvent::ScopeReleased { run_id, .. } => release(conn, &id, run_id).await?,
            }
        }
        lock.mark_appended();
    }
    Ok(())
}

async fn acquire(
    conn: &mut PgConnection,
    lock_id: &str,
    run_id: RunId,
    run_type: &str,
    at: DateTime<Utc>,
) -> Result<(), AppendError> {
    let workspace = lock_id.split(':').next().unwrap_or_default();
    let result = sqlx::query(
        "INSERT INTO scope_locks (lock_id, workspace_id, run_id, run_type, acquired_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(lock_id)
    .bind(workspace)
    .bind(run_id.as_uuid())
    .bind(run_type)
    .bind(at)
    .execute(&mut *conn)
    .await;
    result.map(|_| ()).map_err(AppendError::of_insert)
}

/// Frees the scope `lock_id` if `run_id` holds it (idempotent), in the caller's
/// transaction: the one that ends the run.
pub async fn release(
    conn: &mut PgConnection,
    lock_id: &str,
    run_id: RunId,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM scope_locks WHERE lock_id = $1 AND run_id = $2")
        .bind(lock_id)
        .bind(run_id.as_uuid())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
