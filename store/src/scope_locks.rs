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
/// it), a release deletes the row if the run still holds it. Acquisitions are inserted
/// together, one statement for a fleet start's chunk instead of one per run; a release
/// first writes the acquisitions decided before it, so the rows change in decision order.
pub async fn write(
    conn: &mut PgConnection,
    locks: &mut [&mut Staged<ScopeLock>],
) -> Result<(), AppendError> {
    let mut acquired = Acquisitions::default();
    for lock in locks.iter_mut() {
        let id = lock.id().to_owned();
        for event in lock.pending_events() {
            match event {
                ScopeEvent::ScopeAcquired {
                    run_id,
                    run_type,
                    at,
                } => acquired.push(&id, run_id, run_type, at),
                ScopeEvent::ScopeReleased { run_id, .. } => {
                    acquired.insert(conn).await?;
                    release(conn, &id, run_id).await?;
                }
            }
        }
    }
    acquired.insert(conn).await?;
    for lock in locks.iter_mut() {
        lock.mark_appended();
    }
    Ok(())
}

/// Lock rows to insert, column by column.
#[derive(Default)]
struct Acquisitions {
    lock_ids: Vec<String>,
    workspaces: Vec<String>,
    run_ids: Vec<Uuid>,
    run_types: Vec<String>,
    at: Vec<DateTime<Utc>>,
}

impl Acquisitions {
    fn push(&mut self, lock_id: &str, run_id: RunId, run_type: String, at: DateTime<Utc>) {
        let workspace = lock_id.split(':').next().unwrap_or_default();
        self.lock_ids.push(lock_id.to_owned());
        self.workspaces.push(workspace.to_owned());
        self.run_ids.push(run_id.as_uuid());
        self.run_types.push(run_type);
        self.at.push(at);
    }

    /// Inserts the rows gathered so far (none: no statement) and forgets them.
    async fn insert(&mut self, conn: &mut PgConnection) -> Result<(), AppendError> {
        if self.lock_ids.is_empty() {
            return Ok(());
        }
        let result = sqlx::query(
            "INSERT INTO scope_locks (lock_id, workspace_id, run_id, run_type, acquired_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::text[], $5::timestamptz[])",
        )
        .bind(&self.lock_ids)
        .bind(&self.workspaces)
        .bind(&self.run_ids)
        .bind(&self.run_types)
        .bind(&self.at)
        .execute(&mut *conn)
        .await;
        *self = Self::default();
        result.map(|_| ()).map_err(AppendError::of_insert)
    }
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
