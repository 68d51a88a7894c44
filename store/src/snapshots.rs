//! Aggregate snapshots (migration 000011): the folded state of a long-lived stream at a
//! version, so that loads read the snapshot and the events after it rather than the whole
//! history. A resync adds events to its tenant's stream and every run two to its scope
//! lock's; without snapshots every claim and start would read more each day.
//!
//! Snapshots are written behind the log by [`SnapshotWriter`] and are only ever a shortcut:
//! a load without one (or with an older one) folds more events and gets the same state.

use cqrs_es::Aggregate;
use domain::connection::ProviderConnection;
use domain::scope_lock::ScopeLock;
use domain::tenant::Tenant;
use sqlx::PgConnection;
use std::collections::HashMap;

use crate::bus::{load, BusError};
use crate::log::{Consumer, ConsumerError, Payloads, Position, StoredEvent};

/// The aggregates whose streams are snapshotted, with the version of each one's state shape.
/// **Change the version whenever the aggregate's state struct changes** (a field added,
/// renamed, or computed differently): snapshots of another version are ignored, the stream is
/// folded whole, and the writer replaces them. The `state_shapes` test fails when a shape
/// changes without its version.
pub const SNAPSHOTTED: &[(&str, i32)] = &[
    (Tenant::TYPE, 2),
    (ProviderConnection::TYPE, 2),
    (ScopeLock::TYPE, 1),
];

/// A stream gets a new snapshot once this many events follow its last one (or its start).
pub const EVERY: i64 = 100;

/// How many idempotency keys of the events folded into a snapshot it keeps (newest). A
/// command repeated after a crash comes within a lease's time, a handful of events later.
pub const KEYS_KEPT: usize = 64;

/// The state version of `aggregate_type`'s snapshots this binary reads and writes; `None`
/// for aggregates that are not snapshotted.
pub fn state_version(aggregate_type: &str) -> Option<i32> {
    SNAPSHOTTED
        .iter()
        .find(|(t, _)| *t == aggregate_type)
        .map(|(_, v)| *v)
}

/// The catch-up consumer that writes snapshots: for each snapshotted stream with at least
/// [`EVERY`] events after its snapshot, it loads the aggregate (from that snapshot) and
/// stores its state. It reads no payloads from the log, only which streams moved.
pub struct SnapshotWriter;

pub const WRITER: &str = "aggregate_snapshots";

#[async_trait::async_trait]
impl Consumer for SnapshotWriter {
    fn name(&self) -> &str {
        WRITER
    }

    fn payloads_of(&self) -> Payloads {
        Payloads::OfAggregates(&[])
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), ConsumerError> {
        // The newest sequence of each snapshotted stream in the batch.
        let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
        for e in events {
            if state_version(&e.aggregate_type).is_some() {
                let seq = newest
                    .entry((e.aggregate_type.as_str(), e.aggregate_id.as_str()))
                    .or_default();
                *seq = (*seq).max(e.sequence);
            }
        }
        // Cheap test first: only streams far enough past their snapshot are loaded.
        let candidates: Vec<(&str, &str, i64)> = newest
            .into_iter()
            .filter(|(_, seq)| *seq >= EVERY)
            .map(|((t, i), seq)| (t, i, seq))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let types: Vec<&str> = candidates.iter().map(|c| c.0).collect();
        let ids: Vec<&str> = candidates.iter().map(|c| c.1).collect();
        let versions: Vec<Option<i32>> = types.iter().map(|t| state_version(t)).collect();
        let taken: HashMap<(String, String), i64> = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT s.aggregate_type, s.aggregate_id, s.version \
             FROM UNNEST($1::text[], $2::text[], $3::int[]) AS w(t, i, sv) \
             JOIN aggregate_snapshots s ON s.aggregate_type = w.t AND s.aggregate_id = w.i \
                 AND s.state_version = w.sv",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&versions)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(t, i, v)| ((t, i), v))
        .collect();
        for (t, i, seq) in candidates {
            let since = taken
                .get(&(t.to_owned(), i.to_owned()))
                .copied()
                .unwrap_or(0);
            if seq - since < EVERY {
                continue;
            }
            let at = events[events.len() - 1].position;
            match t {
                Tenant::TYPE => write::<Tenant>(tx, i, at).await?,
                ProviderConnection::TYPE => write::<ProviderConnection>(tx, i, at).await?,
                ScopeLock::TYPE => write::<ScopeLock>(tx, i, at).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Loads aggregate `A` (from its current snapshot) and stores its state as the new one.
async fn write<A: Aggregate>(
    tx: &mut PgConnection,
    id: &str,
    at: Position,
) -> Result<(), ConsumerError> {
    let refused = |message: String| ConsumerError::Refused {
        position: at,
        message: format!("cannot snapshot {} {id}: {message}", A::TYPE),
    };
    let loaded = load::<A>(tx, id).await.map_err(|e| match e {
        BusError::Database(db) => ConsumerError::Database(db),
        other => refused(other.to_string()),
    })?;
    let state = serde_json::to_value(&loaded.aggregate).map_err(|e| refused(e.to_string()))?;
    let keys = loaded.idempotency_keys();
    let keys = &keys[keys.len().saturating_sub(KEYS_KEPT)..];
    sqlx::query(
        "INSERT INTO aggregate_snapshots (aggregate_type, aggregate_id, version, state_version, state, idempotency_keys) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
             SET version = EXCLUDED.version, state_version = EXCLUDED.state_version, \
                 state = EXCLUDED.state, idempotency_keys = EXCLUDED.idempotency_keys, taken_at = now() \
             WHERE aggregate_snapshots.version < EXCLUDED.version \
                OR aggregate_snapshots.state_version <> EXCLUDED.state_version",
    )
    .bind(A::TYPE)
    .bind(id)
    .bind(loaded.version)
    .bind(state_version(A::TYPE))
    .bind(state)
    .bind(keys)
    .execute(&mut *tx)
    .await?;
    tracing::debug!(
        aggregate = A::TYPE,
        id,
        version = loaded.version,
        "snapshot written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{de::DeserializeOwned, Serialize};

    /// The top-level fields of a state, and whether it reads back what it wrote.
    fn fields_of<A: Serialize + DeserializeOwned + Default>() -> Vec<String> {
        let value = serde_json::to_value(A::default()).unwrap();
        let back: A = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), value);
        value.as_object().unwrap().keys().cloned().collect()
    }

    /// When this fails, a snapshotted state's shape changed: raise its version in
    /// [`SNAPSHOTTED`] (old snapshots are then ignored and rewritten), and then the
    /// expectation here. (It sees top-level fields only; a change inside a field's own
    /// type needs the same care.)
    #[test]
    fn state_shapes() {
        let expected: &[(&str, i32, Vec<String>, &[&str])] = &[
            (
                Tenant::TYPE,
                2,
                fields_of::<Tenant>(),
                &[
                    "capabilities",
                    "connections",
                    "defaults",
                    "display_name",
                    "entra_tenant_id",
                    "intent",
                    "last_alert_at",
                    "last_resynced_at",
                    "last_snapshot",
                    "open_alerts",
                    "primary_domain",
                    "status",
                    "workspace",
                ],
            ),
            (
                ProviderConnection::TYPE,
                2,
                fields_of::<ProviderConnection>(),
                &[
                    "consent_granted",
                    "consent_granted_at",
                    "created",
                    "credential",
                    "credential_history",
                    "disabled",
                    "display_name",
                    "entra_tenant_id",
                    "errored",
                    "health_status",
                    "is_default",
                    "last_error_message",
                    "last_error_reason_code",
                    "last_health_check_at",
                    "provider",
                    "removed",
                    "scopes_granted",
                    "status",
                    "tenant_key",
                    "workspace",
                ],
            ),
            (ScopeLock::TYPE, 1, fields_of::<ScopeLock>(), &["active"]),
        ];
        assert_eq!(SNAPSHOTTED.len(), expected.len());
        for (aggregate, version, actual, fields) in expected {
            assert_eq!(state_version(aggregate), Some(*version), "{aggregate}");
            assert_eq!(actual, fields, "{aggregate}: raise its state version");
        }
    }
}
