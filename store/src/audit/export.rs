//! Export of one workspace's chain as NDJSON, for auditors who check it with their own
//! tools: each line carries the canonical bytes that were hashed, the previous hash and the
//! hash, so `SHA-256(prev_hash || canonical) == hash` can be checked line by line.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{PgPool, Row};
use std::io::Write;

use super::chain::{stored_hash, Hash, SealedFields, GENESIS};
use super::AuditError;

/// Which part of a workspace's chain to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub workspace: String,
    /// From the first event recorded at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// To the last event recorded before this time.
    pub until: Option<DateTime<Utc>>,
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    pub lines: u64,
    /// The workspace chain's numbers of the first and last line.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The last line's position and hash: a head the export leads to.
    pub head: Option<super::KeptHead>,
}

/// One line of the export.
#[derive(Serialize)]
struct Line<'a> {
    workspace: &'a str,
    /// The event's number in the workspace chain: consecutive, so a gap shows.
    workspace_seq: i64,
    seal_no: i64,
    global_position: i64,
    /// Hex of the chain's hash before this event (`hash_{n-1}`; zeros for the first).
    prev_hash: String,
    /// Hex of `SHA-256(prev_hash bytes || canonical)` as sealed.
    hash: String,
    /// The sealed fields, readable (null if the sealed event is missing from the log).
    event: Option<SealedFields<'a>>,
    /// The canonical bytes that were hashed, as a UTF-8 string (null if missing).
    canonical: Option<&'a str>,
}

/// Writes the sealed events of a workspace's chain, in chain order, one JSON object per
/// line. The lines are the contiguous stretch of the chain from the first event recorded at
/// or after `since` to the last one recorded before `until` (recorded times are not strictly
/// in chain order), so every line's `prev_hash` is the line before's `hash`.
pub async fn export(
    pool: &PgPool,
    options: &ExportOptions,
    out: &mut (dyn Write + Send),
) -> Result<Exported, AuditError> {
    let (first, last): (Option<i64>, Option<i64>) = if options.since.is_none()
        && options.until.is_none()
    {
        sqlx::query_as(
            "SELECT min(workspace_seq), max(workspace_seq) FROM audit_seals WHERE workspace_id = $1",
        )
        .bind(&options.workspace)
        .fetch_one(pool)
        .await?
    } else {
        sqlx::query_as(
            "SELECT min(s.workspace_seq), max(s.workspace_seq) FROM audit_seals s \
             JOIN events e ON e.transaction_id = s.transaction_id AND e.global_position = s.global_position \
             WHERE s.workspace_id = $1 \
               AND ($2::timestamptz IS NULL OR e.recorded_at >= $2) \
               AND ($3::timestamptz IS NULL OR e.recorded_at < $3)",
        )
        .bind(&options.workspace)
        .bind(options.since)
        .bind(options.until)
        .fetch_one(pool)
        .await?
    };
    let mut exported = Exported::default();
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(exported);
    };
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query(
        "SELECT s.workspace_seq, s.seal_no, s.global_position, s.workspace_hash, p.workspace_hash, \
             e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
             e.payload, e.metadata, e.recorded_at \
         FROM audit_seals s \
         LEFT JOIN audit_seals p ON p.workspace_id = s.workspace_id AND p.workspace_seq = s.workspace_seq - 1 \
         LEFT JOIN events e ON e.transaction_id = s.transaction_id AND e.global_position = s.global_position \
         WHERE s.workspace_id = $1 AND s.workspace_seq BETWEEN $2 AND $3 \
         ORDER BY s.workspace_seq",
    )
    .bind(&options.workspace)
    .bind(first)
    .bind(last)
    .fetch(&mut *conn);
    let damaged = |position: i64| AuditError::Unreadable {
        position,
        message: "a stored hash is not 32 bytes".to_owned(),
    };
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get(0)?;
        let seal_no: i64 = row.try_get(1)?;
        let position: i64 = row.try_get(2)?;
        let hash: Hash =
            stored_hash(&row.try_get::<Vec<u8>, _>(3)?).ok_or_else(|| damaged(position))?;
        let previous: Hash = match row.try_get::<Option<Vec<u8>>, _>(4)? {
            Some(p) => stored_hash(&p).ok_or_else(|| damaged(position))?,
            None => GENESIS,
        };
        let aggregate_type: Option<String> = row.try_get(5)?;
        let (payload, metadata): (Option<serde_json::Value>, Option<serde_json::Value>) =
            (row.try_get(10)?, row.try_get(11)?);
        let aggregate_id: Option<String> = row.try_get(6)?;
        let sequence: Option<i64> = row.try_get(7)?;
        let event_type: Option<String> = row.try_get(8)?;
        let event_version: Option<String> = row.try_get(9)?;
        let recorded_at: Option<DateTime<Utc>> = row.try_get(12)?;
        let fields = match (
            &aggregate_type,
            &aggregate_id,
            sequence,
            &event_type,
            &event_version,
            &payload,
            &metadata,
            recorded_at,
        ) {
            (Some(t), Some(i), Some(q), Some(et), Some(ev), Some(p), Some(m), Some(at)) => {
                Some(SealedFields {
                    aggregate_type: t,
                    aggregate_id: i,
                    sequence: q,
                    event_type: et,
                    event_version: ev,
                    payload: p,
                    metadata: m,
                    recorded_at: at,
                    global_position: position,
                })
            }
            _ => None,
        };
        let canonical = match &fields {
            Some(f) => Some(f.canonical_bytes().map_err(|e| AuditError::Unreadable {
                position,
                message: e.to_string(),
            })?),
            None => None,
        };
        let canonical = match canonical {
            Some(bytes) => Some(
                String::from_utf8(bytes).map_err(|e| AuditError::Unreadable {
                    position,
                    message: e.to_string(),
                })?,
            ),
            None => None,
        };
        let line = Line {
            workspace: &options.workspace,
            workspace_seq: seq,
            seal_no,
            global_position: position,
            prev_hash: hex::encode(previous),
            hash: hex::encode(hash),
            event: fields,
            canonical: canonical.as_deref(),
        };
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        exported.lines += 1;
        exported.first_seq.get_or_insert(seq);
        exported.last_seq = Some(seq);
        exported.head = Some(super::KeptHead { position, hash });
    }
    out.flush()?;
    Ok(exported)
}
