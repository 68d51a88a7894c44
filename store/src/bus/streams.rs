//! Reading streams: one aggregate, or several in one query, each from its snapshot (when
//! this binary can read it) and the events after it.

use cqrs_es::Aggregate;
use domain::{Authorize, Services};
use sqlx::PgConnection;
use std::collections::HashMap;

use super::{BusError, Staged};
use crate::snapshots;

/// An aggregate as loaded from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    pub aggregate: A,
    pub version: i64,
    pub(super) idempotency_keys: Vec<String>,
}

impl<A> Loaded<A> {
    /// The idempotency keys the stream has seen (those kept in its snapshot, then those
    /// of the events after it), oldest first.
    pub fn idempotency_keys(&self) -> &[String] {
        &self.idempotency_keys
    }
}

/// Reads several streams (aggregate type, id) in one query: each from its snapshot, if it
/// has one this binary can read, and the events after it.
pub(super) async fn fetch_streams(
    conn: &mut PgConnection,
    ids: &[(&'static str, String)],
) -> Result<Streams, sqlx::Error> {
    let types: Vec<&str> = ids.iter().map(|(t, _)| *t).collect();
    let names: Vec<&str> = ids.iter().map(|(_, i)| i.as_str()).collect();
    let versions: Vec<Option<i32>> = types.iter().map(|t| snapshots::state_version(t)).collect();
    type Row = (
        String,
        String,
        bool,
        i64,
        serde_json::Value,
        Option<String>,
        Option<Vec<String>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "WITH wanted AS ( \
             SELECT w.t, w.i, sn.version AS snap_version, sn.state, sn.idempotency_keys \
             FROM UNNEST($1::text[], $2::text[], $3::int[]) AS w(t, i, sv) \
             LEFT JOIN aggregate_snapshots sn \
                 ON sn.aggregate_type = w.t AND sn.aggregate_id = w.i AND sn.state_version = w.sv) \
         SELECT t, i, true, snap_version, state, NULL::text, idempotency_keys \
             FROM wanted WHERE snap_version IS NOT NULL \
         UNION ALL \
         SELECT e.aggregate_type, e.aggregate_id, false, e.sequence, e.payload, \
                e.metadata ->> 'idempotency_key', NULL::text[] \
             FROM wanted w JOIN events e ON e.aggregate_type = w.t AND e.aggregate_id = w.i \
                 AND e.sequence > COALESCE(w.snap_version, 0) \
         ORDER BY 1, 2, 3 DESC, 4",
    )
    // Planned at every call: a plan cached while `events` was small would keep scanning
    // it whole after it has grown (until the next ANALYZE).
    .persistent(false)
    .bind(&types)
    .bind(&names)
    .bind(&versions)
    .fetch_all(&mut *conn)
    .await?;
    let mut streams = Streams::default();
    for (t, i, is_snapshot, sequence, payload, key, keys) in rows {
        streams.push(t, i, (is_snapshot, sequence, payload, key, keys));
    }
    Ok(streams)
}

/// Loads an aggregate: from its snapshot (if it has one this binary can read) and the
/// events after it, or from all of its events.
pub(crate) async fn load<A: Aggregate>(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Loaded<A>, BusError<A::Error>> {
    let rows: Vec<LoadRow> = sqlx::query_as(
        "WITH snap AS ( \
                 SELECT version, state, idempotency_keys FROM aggregate_snapshots \
                 WHERE aggregate_type = $1 AND aggregate_id = $2 AND state_version = $3) \
             SELECT true, version, state, NULL::text, idempotency_keys FROM snap \
             UNION ALL \
             SELECT false, sequence, payload, metadata ->> 'idempotency_key', NULL::text[] \
             FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
                 AND sequence > COALESCE((SELECT version FROM snap), 0) \
             ORDER BY 1 DESC, 2",
    )
    .bind(A::TYPE)
    .bind(id)
    .bind(snapshots::state_version(A::TYPE))
    .fetch_all(&mut *conn)
    .await?;
    fold(id, rows.into_iter().map(StreamRow::from).collect())
}

/// A row of a stream load: whether it is the snapshot, its sequence (the snapshot's
/// version), payload (the snapshot's state), the event's idempotency key, the snapshot's keys.
pub type LoadRow = (
    bool,
    i64,
    serde_json::Value,
    Option<String>,
    Option<Vec<String>>,
);

impl From<LoadRow> for StreamRow {
    fn from((is_snapshot, sequence, payload, key, keys): LoadRow) -> Self {
        if is_snapshot {
            StreamRow::Snapshot {
                version: sequence,
                state: payload,
                keys: keys.unwrap_or_default(),
            }
        } else {
            StreamRow::Event {
                sequence,
                payload,
                key,
            }
        }
    }
}

/// What a stream load reads: the stream's snapshot (first, if any) and its events after it.
#[derive(Debug)]
enum StreamRow {
    Snapshot {
        version: i64,
        state: serde_json::Value,
        keys: Vec<String>,
    },
    Event {
        sequence: i64,
        payload: serde_json::Value,
        key: Option<String>,
    },
}

/// Folds a stream's rows (its snapshot, then events in sequence order) into the aggregate.
fn fold<A: Aggregate>(id: &str, rows: Vec<StreamRow>) -> Result<Loaded<A>, BusError<A::Error>> {
    let mut aggregate = A::default();
    let mut version = 0;
    let mut idempotency_keys = Vec::new();
    let corrupt = |sequence, source| BusError::Corrupt {
        aggregate_type: A::TYPE,
        aggregate_id: id.to_owned(),
        sequence,
        source,
    };
    for row in rows {
        match row {
            StreamRow::Snapshot {
                version: at,
                state,
                keys,
            } => {
                aggregate = serde_json::from_value(state).map_err(|e| corrupt(at, e))?;
                version = at;
                idempotency_keys = keys;
            }
            StreamRow::Event {
                sequence,
                payload,
                key,
            } => {
                let event: A::Event =
                    serde_json::from_value(payload).map_err(|e| corrupt(sequence, e))?;
                aggregate.apply(event);
                version = sequence;
                idempotency_keys.extend(key);
            }
        }
    }
    Ok(Loaded {
        aggregate,
        version,
        idempotency_keys,
    })
}

/// Several streams read in one query (see [`UnitOfWork::fetch_streams`](super::UnitOfWork::fetch_streams)).
#[derive(Debug, Default)]
pub struct Streams(HashMap<(String, String), Vec<StreamRow>>);

impl Streams {
    /// Adds a row of a stream as a snapshot-aware read returns it (the snapshot first, then
    /// events in sequence order), for readers that fetch streams with queries of their own
    /// (e.g. together with a claim).
    pub fn push(&mut self, aggregate_type: String, aggregate_id: String, row: LoadRow) {
        self.0
            .entry((aggregate_type, aggregate_id))
            .or_default()
            .push(row.into());
    }

    /// Adds the streams of `other` (read separately).
    pub fn extend(&mut self, other: Streams) {
        self.0.extend(other.0);
    }

    /// Whether the stream was read and has events (and was not taken yet).
    pub fn contains(&self, aggregate_type: &str, aggregate_id: &str) -> bool {
        self.0
            .contains_key(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
    }

    /// Takes the stream of aggregate `A` with `id`, ready to stage decisions on (an empty
    /// stream when it was not asked for, has no events, or was taken already).
    pub fn stage<A: Aggregate<Services = Services>>(
        &mut self,
        id: &str,
    ) -> Result<Staged<A>, BusError<A::Error>>
    where
        A::Command: Authorize,
    {
        let rows = self
            .0
            .remove(&(A::TYPE.to_owned(), id.to_owned()))
            .unwrap_or_default();
        Ok(Staged::loaded(id, fold::<A>(id, rows)?))
    }
}
