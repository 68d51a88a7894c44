//! The sealer: a catch-up consumer that extends the chains behind the log. Appends never
//! wait for it; how far behind it is shows as `tenantflow_consumer_lag_events{consumer=
//! "audit_sealer"}` like any consumer's lag.

use sqlx::PgConnection;
use std::collections::HashMap;

use super::chain::{link, stored_hash, Hash, SealedFields, GENESIS};
use crate::log::{Consumer, ConsumerError, Payloads, Position, StoredEvent};

/// The sealer's consumer (and checkpoint) name.
pub const SEALER: &str = "audit_sealer";

/// Every chain gets a head row (`audit_heads`) at each multiple of this many seals.
pub const HEAD_EVERY: i64 = 1000;

/// Seals every event into the global chain and its workspace's chain (`audit_seals`), in
/// the order the log hands them out. Reads every payload.
///
/// Idempotent: an event at or before the last seal's place in the global order is already
/// sealed (the chain is extended strictly in that order), so a batch handed over again
/// seals nothing, and no seal is ever rewritten.
pub struct AuditSealer;

/// The end of the global chain.
struct Tip {
    seal_no: i64,
    position: Position,
    hash: Hash,
}

/// The end of one workspace chain.
#[derive(Clone, Copy)]
struct WorkspaceTip {
    seq: i64,
    hash: Hash,
}

fn damaged(at: Position, what: &str) -> ConsumerError {
    ConsumerError::Refused {
        position: at,
        message: format!("the audit chain's {what} is damaged (a hash is not 32 bytes)"),
    }
}

async fn global_tip(tx: &mut PgConnection, at: Position) -> Result<Option<Tip>, ConsumerError> {
    let row: Option<(i64, i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seal_no, transaction_id::text::bigint, global_position, global_hash \
         FROM audit_seals ORDER BY seal_no DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    row.map(|(seal_no, transaction_id, global_position, hash)| {
        Ok(Tip {
            seal_no,
            position: Position {
                transaction_id,
                global_position,
            },
            hash: stored_hash(&hash).ok_or_else(|| damaged(at, "last seal"))?,
        })
    })
    .transpose()
}

async fn workspace_tips(
    tx: &mut PgConnection,
    workspaces: &[&str],
    at: Position,
) -> Result<HashMap<String, WorkspaceTip>, ConsumerError> {
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT w, s.workspace_seq, s.workspace_hash FROM UNNEST($1::text[]) AS w \
         CROSS JOIN LATERAL (SELECT workspace_seq, workspace_hash FROM audit_seals \
             WHERE workspace_id = w ORDER BY workspace_seq DESC LIMIT 1) s",
    )
    .bind(workspaces)
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter()
        .map(|(w, seq, hash)| {
            let hash = stored_hash(&hash).ok_or_else(|| damaged(at, "workspace tip"))?;
            Ok((w, WorkspaceTip { seq, hash }))
        })
        .collect()
}

/// The seal and head rows of one batch, column by column (one INSERT each).
#[derive(Default)]
struct Rows {
    seal_no: Vec<i64>,
    global_position: Vec<i64>,
    transaction_id: Vec<String>,
    workspace_id: Vec<String>,
    workspace_seq: Vec<i64>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    workspace_hash: Vec<Vec<u8>>,
    global_hash: Vec<Vec<u8>>,
    head_seal_no: Vec<i64>,
    head_chain: Vec<&'static str>,
    head_workspace: Vec<Option<String>>,
    head_seq: Vec<i64>,
    head_position: Vec<i64>,
    head_hash: Vec<Vec<u8>>,
}

impl Rows {
    fn head(
        &mut self,
        seal_no: i64,
        workspace: Option<&str>,
        seq: i64,
        position: i64,
        hash: &Hash,
    ) {
        self.head_seal_no.push(seal_no);
        self.head_chain.push(if workspace.is_some() {
            "workspace"
        } else {
            "global"
        });
        self.head_workspace.push(workspace.map(str::to_owned));
        self.head_seq.push(seq);
        self.head_position.push(position);
        self.head_hash.push(hash.to_vec());
    }
}

#[async_trait::async_trait]
impl Consumer for AuditSealer {
    fn name(&self) -> &str {
        SEALER
    }

    /// Every field of every event is sealed (said here, not left to the trait's default).
    fn payloads_of(&self) -> Payloads {
        Payloads::All
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let tip = global_tip(tx, first.position).await?;
        let after = tip.as_ref().map(|t| t.position).unwrap_or_default();
        let fresh: Vec<&StoredEvent> = events.iter().filter(|e| e.position > after).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let (mut seal_no, mut global) = tip.map(|t| (t.seal_no, t.hash)).unwrap_or((0, GENESIS));
        let mut chains: Vec<&str> = fresh
            .iter()
            .map(|e| super::chain::workspace_chain(&e.metadata))
            .collect();
        chains.sort_unstable();
        chains.dedup();
        let mut tips = workspace_tips(tx, &chains, first.position).await?;

        let mut rows = Rows::default();
        for e in fresh {
            let fields = SealedFields::from(e);
            let bytes = fields
                .canonical_bytes()
                .map_err(|err| ConsumerError::Refused {
                    position: e.position,
                    message: format!("cannot canonicalize the event: {err}"),
                })?;
            let workspace = fields.workspace_chain();
            let ws = tips.entry(workspace.to_owned()).or_insert(WorkspaceTip {
                seq: 0,
                hash: GENESIS,
            });
            seal_no += 1;
            global = link(&global, &bytes);
            ws.seq += 1;
            ws.hash = link(&ws.hash, &bytes);
            let position = e.position.global_position;
            if seal_no % HEAD_EVERY == 0 {
                rows.head(seal_no, None, seal_no, position, &global);
            }
            if ws.seq % HEAD_EVERY == 0 {
                let ws = *ws;
                rows.head(seal_no, Some(workspace), ws.seq, position, &ws.hash);
            }
            rows.seal_no.push(seal_no);
            rows.global_position.push(position);
            rows.transaction_id
                .push(e.position.transaction_id.to_string());
            rows.workspace_id.push(workspace.to_owned());
            rows.workspace_seq.push(ws.seq);
            rows.aggregate_type.push(e.aggregate_type.clone());
            rows.aggregate_id.push(e.aggregate_id.clone());
            rows.sequence.push(e.sequence);
            rows.workspace_hash.push(ws.hash.to_vec());
            rows.global_hash.push(global.to_vec());
        }
        sqlx::query(
            "INSERT INTO audit_seals (seal_no, global_position, transaction_id, workspace_id, \
                 workspace_seq, aggregate_type, aggregate_id, sequence, workspace_hash, global_hash) \
             SELECT s, g, x::xid8, w, ws, t, i, q, wh, gh FROM UNNEST($1::bigint[], $2::bigint[], \
                 $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::bigint[], \
                 $9::bytea[], $10::bytea[]) AS u(s, g, x, w, ws, t, i, q, wh, gh)",
        )
        .bind(&rows.seal_no)
        .bind(&rows.global_position)
        .bind(&rows.transaction_id)
        .bind(&rows.workspace_id)
        .bind(&rows.workspace_seq)
        .bind(&rows.aggregate_type)
        .bind(&rows.aggregate_id)
        .bind(&rows.sequence)
        .bind(&rows.workspace_hash)
        .bind(&rows.global_hash)
        .execute(&mut *tx)
        .await?;
        if !rows.head_seal_no.is_empty() {
            sqlx::query(
                "INSERT INTO audit_heads (seal_no, chain, workspace_id, chain_seq, global_position, hash) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[])",
            )
            .bind(&rows.head_seal_no)
            .bind(&rows.head_chain)
            .bind(&rows.head_workspace)
            .bind(&rows.head_seq)
            .bind(&rows.head_position)
            .bind(&rows.head_hash)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
