//! The task table: which runs need work and when, with leases so several instances share
//! the work and a crashed instance's work is picked up again (R7.1, R7.2).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::connection::ProviderConnection;
use domain::run::{OperationRun, RunEvent};
use domain::scope_lock::ScopeLock;
use domain::tenant::Tenant;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use store::{Consumer, ConsumerError, Payloads, SealedCredential, StoredEvent, Streams};
use uuid::Uuid;

/// Keeps `workflow_tasks` in step with the runs: a queued run gets a task due now, a step
/// failure moves it to the retry time, a cancellation request makes it due now, and a
/// completed run's task goes away. Idempotent: inserts ignore existing tasks and updates
/// only ever set values derived from the event.
pub struct TaskFeed;

pub const FEED: &str = "workflow_tasks";

/// The run events the feed needs the payload of (the others it acts on by type alone).
const WITH_PAYLOAD: [&str; 3] = ["RunQueued", "RunStepFailed", "RunCancelRequested"];

/// The run events that end a run (its task goes away).
const ENDING: [&str; 5] = [
    "RunSucceeded",
    "RunPartiallySucceeded",
    "RunFailed",
    "RunBlocked",
    "RunCancelled",
];

#[async_trait::async_trait]
impl Consumer for TaskFeed {
    fn name(&self) -> &str {
        FEED
    }

    fn payloads_of(&self) -> Payloads {
        Payloads::OfEvents(&WITH_PAYLOAD)
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        // New tasks and ended runs are written in one statement each per batch; the rare
        // due-time changes in between go one by one, after the inserts before them.
        let mut queued = NewTasks::default();
        let mut ended: Vec<Uuid> = Vec::new();
        // Whether this batch made work due now (a new task, a cancellation): then the
        // engines are woken when it commits.
        let mut made_due = false;
        for e in events
            .iter()
            .filter(|e| e.aggregate_type == OperationRun::TYPE)
        {
            let run_id = Uuid::try_parse(&e.aggregate_id).map_err(|_| ConsumerError::Refused {
                position: e.position,
                message: "run id is not a UUID".into(),
            })?;
            if ENDING.contains(&e.event_type.as_str()) {
                ended.push(run_id);
                continue;
            }
            if !WITH_PAYLOAD.contains(&e.event_type.as_str()) {
                continue;
            }
            match e.decode::<RunEvent>()? {
                RunEvent::RunQueued {
                    workspace,
                    run_type,
                    queued_at,
                    context,
                    ..
                } => {
                    made_due = true;
                    queued.run_ids.push(run_id);
                    queued.workspaces.push(workspace.as_str().to_owned());
                    queued.run_types.push(run_type);
                    queued.due.push(queued_at);
                    let tenant = context.as_ref().map(|c| c.tenant_key.to_string());
                    queued.tenants.push(tenant);
                    queued.connections.push(
                        context
                            .as_ref()
                            .and_then(|c| c.connection_id.map(|c| c.to_string())),
                    );
                }
                RunEvent::RunStepFailed {
                    retry_at: Some(at), ..
                } => {
                    queued.flush(tx).await?;
                    sqlx::query("UPDATE workflow_tasks SET due_at = GREATEST(due_at, $2), updated_at = now() WHERE run_id = $1")
                        .bind(run_id)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                }
                RunEvent::RunCancelRequested { at } => {
                    made_due = true;
                    queued.flush(tx).await?;
                    sqlx::query("UPDATE workflow_tasks SET due_at = LEAST(due_at, $2), updated_at = now() WHERE run_id = $1")
                        .bind(run_id)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                }
                _ => {}
            }
        }
        queued.flush(tx).await?;
        // An ended run needs no more work, whatever came before it in the batch.
        if !ended.is_empty() {
            sqlx::query("DELETE FROM workflow_tasks WHERE run_id = ANY($1)")
                .bind(&ended)
                .execute(&mut *tx)
                .await?;
        }
        if made_due {
            // Delivered at commit, once per batch: the feed commits a few times a second
            // under load, so the notification queue's lock costs nothing measurable here.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(store::log::TASKS_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// Tasks of newly queued runs, inserted together.
#[derive(Default)]
struct NewTasks {
    run_ids: Vec<Uuid>,
    workspaces: Vec<String>,
    run_types: Vec<String>,
    due: Vec<DateTime<Utc>>,
    tenants: Vec<Option<String>>,
    connections: Vec<Option<String>>,
}

impl NewTasks {
    async fn flush(&mut self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.run_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            // No `lock_id`: scope locks are rows now (issue 13), so the claim reads no
            // scope lock stream.
            "INSERT INTO workflow_tasks (run_id, workspace_id, run_type, due_at, tenant_id, connection_id) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[]) \
             ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(&self.run_ids)
        .bind(&self.workspaces)
        .bind(&self.run_types)
        .bind(&self.due)
        .bind(&self.tenants)
        .bind(&self.connections)
        .execute(&mut *tx)
        .await?;
        *self = Self::default();
        Ok(())
    }
}

/// A claimed task: the runner holds its lease until `lease_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub run_id: Uuid,
    pub workspace_id: String,
    pub run_type: String,
    pub lease_until: DateTime<Utc>,
}

/// Claims the most overdue task (due at `now`, by the engine's clock) that nobody holds
/// (or whose lease expired).
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Task>, sqlx::Error> {
    Ok(claim_with_streams(pool, owner, lease, now)
        .await?
        .map(|claimed| claimed.task))
}

/// A claimed task with what its run's steps decide on, read in the claiming statement.
#[derive(Debug)]
pub struct Claimed {
    pub task: Task,
    /// The run, its tenant, its connection and its scope lock (those the task names).
    pub streams: Streams,
    /// The connection's newest vault row; the engine uses it only if it is the one the
    /// connection names.
    pub credential: Option<SealedCredential>,
    /// The run's checkpoint, from the task row the claim updated.
    pub checkpoint: store::checkpoints::Checkpoint,
}

/// A row of `tenantflow_claim_task`: the claimed task, one row of a stream it names (or
/// none), and the connection's newest vault row (or none).
#[derive(sqlx::FromRow)]
struct ClaimRow {
    run_id: Uuid,
    workspace_id: String,
    run_type: String,
    lease_until: DateTime<Utc>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    is_snapshot: Option<bool>,
    sequence: Option<i64>,
    payload: Option<serde_json::Value>,
    idempotency_key: Option<String>,
    snapshot_keys: Option<Vec<String>>,
    vault_id: Option<Uuid>,
    vault_connection_id: Option<Uuid>,
    client_id: Option<String>,
    nonce: Option<Vec<u8>>,
    ciphertext: Option<Vec<u8>>,
    /// The task row's progress as JSON text (the same on every row; parsed once).
    progress: String,
    progress_version: i32,
}

/// Claims like [`claim`] and, in the same statement, reads the streams the run's steps
/// decide on, the connection's newest credential and the run's checkpoint.
pub async fn claim_with_streams(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Claimed>, sqlx::Error> {
    // The statement lives in a function (migrations 000010 to 000012) whose plan is made
    // once per connection and can only look rows up by key. Streams are read from their
    // snapshots on.
    let types = [
        OperationRun::TYPE,
        Tenant::TYPE,
        ProviderConnection::TYPE,
        ScopeLock::TYPE,
    ];
    let state_versions = types.map(store::snapshots::state_version);
    let rows: Vec<ClaimRow> =
        sqlx::query_as("SELECT * FROM tenantflow_claim_task($1, $2, $3, $4, $5)")
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(types)
            .bind(state_versions)
            .bind(now)
            .fetch_all(pool)
            .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let task = Task {
        run_id: first.run_id,
        workspace_id: first.workspace_id.clone(),
        run_type: first.run_type.clone(),
        lease_until: first.lease_until,
    };
    let credential = match first {
        ClaimRow {
            vault_id: Some(id),
            vault_connection_id: Some(connection_id),
            client_id: Some(client_id),
            nonce: Some(nonce),
            ciphertext: Some(ciphertext),
            ..
        } => Some(SealedCredential {
            id: *id,
            connection_id: *connection_id,
            client_id: client_id.clone(),
            nonce: nonce.clone(),
            ciphertext: ciphertext.clone(),
        }),
        _ => None,
    };
    let checkpoint = store::checkpoints::Checkpoint {
        progress: serde_json::from_str(&first.progress)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        version: first.progress_version,
    };
    let mut streams = Streams::default();
    for row in rows {
        if let (Some(t), Some(i), Some(is_snapshot), Some(sequence), Some(payload)) = (
            row.aggregate_type,
            row.aggregate_id,
            row.is_snapshot,
            row.sequence,
            row.payload,
        ) {
            streams.push(
                t,
                i,
                (
                    is_snapshot,
                    sequence,
                    payload,
                    row.idempotency_key,
                    row.snapshot_keys,
                ),
            );
        }
    }
    Ok(Some(Claimed {
        task,
        streams,
        credential,
        checkpoint,
    }))
}

/// Gives a task back, due again at `due_at`. Only the lease holder can; returns whether
/// it still held the lease (a runner that lost it must not assume anything).
pub async fn release(
    pool: &PgPool,
    run_id: Uuid,
    owner: &str,
    due_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE workflow_tasks SET lease_owner = NULL, lease_until = NULL, due_at = $3, updated_at = now() \
         WHERE run_id = $1 AND lease_owner = $2",
    )
    .bind(run_id)
    .bind(owner)
    .bind(due_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends the lease of a task this runner holds; `None` when it no longer holds it (it
/// expired and another runner claimed the task): the runner must stop working on it.
pub async fn extend(
    pool: &PgPool,
    run_id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE workflow_tasks SET lease_until = now() + make_interval(secs => $3), updated_at = now() \
         WHERE run_id = $1 AND lease_owner = $2 RETURNING lease_until",
    )
    .bind(run_id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}
