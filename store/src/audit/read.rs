//! Reading the log and the seals for verification: one streaming query each, in the order
//! the chains were built, fed through bounded channels so that PostgreSQL, row decoding,
//! canonicalizing and hashing overlap.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use super::AuditError;
use crate::log::Position;

/// Rows per message between a reader task and the verifier.
const CHUNK: usize = 1024;

/// An event as verify reads it: payload and metadata as PostgreSQL's text of the jsonb
/// (the bytes the bare pass hashes; verify parses and canonicalizes them).
#[derive(Debug)]
pub(crate) struct LogRow {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
}

/// What verification compares of a seal, as streamed. The rest of the row is read only
/// for a chain's first bad event: less for PostgreSQL to send.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SealLink {
    pub seal_no: i64,
    pub global_position: i64,
    pub workspace_id: String,
    pub workspace_hash: Vec<u8>,
    pub global_hash: Vec<u8>,
    /// The sealed event's stream was archived (`tenantflow archive`): its event is in a
    /// segment, not in `events`.
    pub archived: bool,
}

/// `archived` is a hashed subplan: `archived_streams` is read once per query.
const LINK_COLUMNS: &str = "seal_no, global_position, workspace_id, workspace_hash, global_hash, \
     (aggregate_type, aggregate_id) IN (SELECT aggregate_type, aggregate_id FROM archived_streams) AS archived";

/// A seal as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SealRow {
    pub seal_no: i64,
    pub global_position: i64,
    pub transaction_id: i64,
    pub workspace_id: String,
    pub workspace_seq: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub workspace_hash: Vec<u8>,
    pub global_hash: Vec<u8>,
}

pub(crate) const SEAL_COLUMNS: &str =
    "seal_no, global_position, transaction_id::text::bigint AS transaction_id, workspace_id, \
     workspace_seq, aggregate_type, aggregate_id, sequence, workspace_hash, global_hash";

/// Which events (or seals) a reader streams.
#[derive(Debug, Clone)]
pub(crate) struct Range {
    /// Strictly after this place in the global order (the start: the default).
    pub after: Position,
    /// Up to and including this place (the last seal's).
    pub through: Position,
    /// Seals strictly after this number (`seal_no`, or `workspace_seq` with `workspace`).
    pub after_seal: i64,
    /// Seals up to and including this `seal_no` (the last seal's).
    pub through_seal: i64,
    /// Only this workspace chain.
    pub workspace: Option<String>,
}

/// Items in chunks, or the error that ended them.
pub(crate) type Chunks<T> = mpsc::Receiver<Result<Vec<T>, AuditError>>;

fn log_row(row: sqlx::postgres::PgRow) -> Result<LogRow, sqlx::Error> {
    Ok(LogRow {
        position: Position {
            transaction_id: row.try_get(0)?,
            global_position: row.try_get(1)?,
        },
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        sequence: row.try_get(4)?,
        event_type: row.try_get(5)?,
        event_version: row.try_get(6)?,
        payload: row.try_get(7)?,
        metadata: row.try_get(8)?,
        recorded_at: row.try_get(9)?,
    })
}

/// Sends a stream's items on in chunks until it ends, fails, or nobody listens.
async fn forward<T, S>(
    rows: S,
    tx: &mpsc::Sender<Result<Vec<T>, AuditError>>,
) -> Result<(), sqlx::Error>
where
    S: futures::Stream<Item = Result<T, sqlx::Error>>,
{
    futures::pin_mut!(rows);
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(item) = rows.try_next().await? {
        chunk.push(item);
        if chunk.len() == CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.send(Ok(full)).await.is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk)).await;
    }
    Ok(())
}

/// Runs `read` in a task of its own, which sends what it reads on; an error it returns is
/// the channel's last message.
fn spawn_reader<T, Fut>(
    read: impl FnOnce(mpsc::Sender<Result<Vec<T>, AuditError>>) -> Fut,
) -> Chunks<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let errors = tx.clone();
    let run = read(tx);
    tokio::spawn(async move {
        if let Err(e) = run.await {
            let _ = errors.send(Err(e.into())).await;
        }
    });
    rx
}

/// Streams the events of `range` in the consumers' order, in chunks.
pub(crate) fn events(pool: &PgPool, range: &Range) -> Chunks<LogRow> {
    let (pool, range) = (pool.clone(), range.clone());
    spawn_reader(|tx| async move {
        let mut conn = pool.acquire().await?;
        // The workspace test is `chain::workspace_chain` in SQL; its second clause lets
        // PostgreSQL use the events_workspace index. ORDER BY names the table's columns:
        // a bare `transaction_id` would be the bigint output column, which no index has,
        // and PostgreSQL would sort the whole log.
        let rows = sqlx::query(
                "SELECT transaction_id::text::bigint, global_position, aggregate_type, aggregate_id, \
                     sequence, event_type, event_version, payload::text, metadata::text, recorded_at \
                 FROM events \
                 WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                   AND (transaction_id, global_position) <= ($3::text::xid8, $4) \
                   AND ($5::text IS NULL OR ( \
                       CASE WHEN jsonb_typeof(metadata -> 'workspace') = 'string' \
                            THEN metadata ->> 'workspace' ELSE '' END = $5 \
                       AND ($5 = '' OR metadata ->> 'workspace' = $5))) \
                 ORDER BY events.transaction_id, events.global_position",
            )
            .persistent(false)
            .bind(range.after.transaction_id.to_string())
            .bind(range.after.global_position)
            .bind(range.through.transaction_id.to_string())
            .bind(range.through.global_position)
            .bind(range.workspace.as_deref())
            .fetch(&mut *conn)
            .and_then(|row| async move { log_row(row) });
        forward(rows, &tx).await
    })
}

/// Streams the seals of `range` in the order sealed, in chunks.
pub(crate) fn seals(pool: &PgPool, range: &Range) -> Chunks<SealLink> {
    let (pool, range) = (pool.clone(), range.clone());
    spawn_reader(|tx| async move {
        let mut conn = pool.acquire().await?;
        let sql = match range.workspace {
            None => format!(
                "SELECT {LINK_COLUMNS} FROM audit_seals WHERE seal_no > $1 AND seal_no <= $2 \
                     ORDER BY seal_no"
            ),
            Some(_) => format!(
                "SELECT {LINK_COLUMNS} FROM audit_seals WHERE workspace_seq > $1 \
                     AND seal_no <= $2 AND workspace_id = $3 ORDER BY workspace_seq"
            ),
        };
        let mut query = sqlx::query_as::<_, SealLink>(&sql)
            .persistent(false)
            .bind(range.after_seal)
            .bind(range.through_seal);
        if let Some(w) = &range.workspace {
            query = query.bind(w.clone());
        }
        forward(query.fetch(&mut *conn), &tx).await
    })
}

/// Converts every item of a chunked channel with `f`, in a task of its own, so that the
/// conversion overlaps with whatever consumes its output.
pub(crate) fn map_chunks<T, U>(mut rx: Chunks<T>, f: fn(T) -> Result<U, AuditError>) -> Chunks<U>
where
    T: Send + 'static,
    U: Send + 'static,
{
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            let mapped = chunk.and_then(|items| items.into_iter().map(f).collect());
            let failed = mapped.is_err();
            if tx.send(mapped).await.is_err() || failed {
                return;
            }
        }
    });
    out
}

/// Pulls items one at a time out of a chunked channel.
pub(crate) struct Items<T> {
    rx: Chunks<T>,
    chunk: std::vec::IntoIter<T>,
}

impl<T> Items<T> {
    pub fn new(rx: Chunks<T>) -> Self {
        Self {
            rx,
            chunk: Vec::new().into_iter(),
        }
    }

    pub async fn next(&mut self) -> Result<Option<T>, AuditError> {
        loop {
            if let Some(item) = self.chunk.next() {
                return Ok(Some(item));
            }
            match self.rx.recv().await {
                Some(chunk) => self.chunk = chunk?.into_iter(),
                None => return Ok(None),
            }
        }
    }
}
