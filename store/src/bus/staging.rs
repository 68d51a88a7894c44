//! Decisions staged on a state the caller holds, and the one INSERT that appends the staged
//! decisions of any number of streams, in the order they were decided.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::{Authorize, Services};
use sqlx::PgConnection;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{BusError, Loaded, Metadata};

/// Commands decided against a state the caller already holds (no reload), kept until a
/// statement appends them (see [`CommandBus::append_all`](super::CommandBus::append_all), [`UnitOfWork::append_all`](super::UnitOfWork::append_all)). For a single
/// writer that carries an aggregate across several decisions, such as the workflow engine
/// with its run: each decision costs no query, and a concurrent change still surfaces as
/// a conflict when appending. Idempotency keys are not checked here: the caller decides
/// from the very state the keys were applied to.
#[derive(Debug, Clone)]
pub struct Staged<A: Aggregate> {
    id: String,
    state: A,
    base_version: i64,
    /// Decided events with their metadata and their place in the order of all decisions
    /// (see [`decision_order`]).
    pending: Vec<(A::Event, serde_json::Value, u64)>,
    /// Idempotency keys applied to the stream (when loaded with them), and staged since.
    keys: Vec<String>,
}

/// What [`Staged::decide`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The types of the events the command produced (now pending), in order.
    pub event_types: Vec<String>,
    /// The command's idempotency key had been applied before: it was skipped.
    pub repeated: bool,
}

impl<A: Aggregate<Services = Services>> Staged<A>
where
    A::Command: Authorize,
{
    /// A loaded aggregate, with the idempotency keys of its stream.
    pub fn loaded(id: impl Into<String>, loaded: Loaded<A>) -> Self {
        let mut staged = Self::new(id, loaded.aggregate, loaded.version);
        staged.keys = loaded.idempotency_keys;
        staged
    }

    /// `state` as of `version` (e.g. from [`CommandBus::load`](super::CommandBus::load)).
    pub fn new(id: impl Into<String>, state: A, version: i64) -> Self {
        Self {
            id: id.into(),
            state,
            base_version: version,
            pending: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Decides `command` against the current (staged) state and applies its events to
    /// it; nothing is written yet. A refusal leaves the state as it was.
    pub async fn decide(
        &mut self,
        services: &Services,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Decided, BusError<A::Error>> {
        let permission = command.permission();
        if !metadata.role.allows(permission) {
            return Err(BusError::Forbidden {
                role: metadata.role,
                permission,
            });
        }
        if let Some(key) = &metadata.idempotency_key {
            if self.keys.contains(key) {
                return Ok(Decided {
                    event_types: Vec::new(),
                    repeated: true,
                });
            }
        }
        // `EventSink::write` applies each event to the state as `handle` writes it, so the
        // state is current once `handle` returns; applying the events again here would
        // count them twice. Aggregates refuse before they write, so a refusal leaves the
        // state as it was.
        let sink = EventSink::default();
        self.state
            .handle(command, services, &sink)
            .await
            .map_err(BusError::Domain)?;
        let events = sink.collect().await;
        let meta = metadata.to_json();
        let event_types: Vec<String> = events.iter().map(|e| e.event_type()).collect();
        for event in events {
            self.pending.push((event, meta.clone(), decision_order()));
        }
        if !event_types.is_empty() {
            self.keys.extend(metadata.idempotency_key.clone());
        }
        Ok(Decided {
            event_types,
            repeated: false,
        })
    }

    /// The stream's aggregate id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state(&self) -> &A {
        &self.state
    }

    /// The state, for facts kept outside the log (a run's checkpoint): a change made here
    /// is never appended.
    pub fn state_mut(&mut self) -> &mut A {
        &mut self.state
    }

    /// Takes the pending events `off_log` selects out of what will be appended (the state
    /// keeps them): the caller writes them elsewhere, such as a run's checkpoint.
    pub fn take_pending(&mut self, off_log: impl Fn(&A::Event) -> bool) -> Vec<A::Event> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(e, ..)| off_log(e));
        self.pending = kept;
        taken.into_iter().map(|(e, ..)| e).collect()
    }

    /// The events decided and not yet appended, to complete before they are (a run's end
    /// takes the run's progress held off the log); the state is not changed.
    pub fn pending_mut(&mut self) -> impl Iterator<Item = &mut A::Event> {
        self.pending.iter_mut().map(|(e, ..)| e)
    }

    pub fn into_state(self) -> A {
        self.state
    }

    /// How many events are decided and not yet appended.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The events decided and not yet appended, in order.
    pub fn pending_events(&self) -> Vec<A::Event> {
        self.pending.iter().map(|(e, ..)| e.clone()).collect()
    }

    /// The version the state will have once the pending events are appended.
    pub fn version(&self) -> i64 {
        self.base_version + self.pending.len() as i64
    }
}

/// The place of a decided event in the order of every decision this process made. Staged
/// streams are appended together, and their events must reach the log in the order they
/// were decided (a run's end after the snapshot it reports), not stream by stream.
fn decision_order() -> u64 {
    static DECIDED: AtomicU64 = AtomicU64::new(0);
    DECIDED.fetch_add(1, Ordering::Relaxed)
}

/// Appends the staged decisions of `streams` in one INSERT, in the order they were decided;
/// returns how many events.
pub(super) async fn append_streams(
    conn: &mut PgConnection,
    streams: &mut [&mut dyn StagedStream],
) -> Result<u64, AppendError> {
    let rows = collect_rows(streams)?;
    insert_rows(conn, &rows).await?;
    mark_appended(streams);
    Ok(rows.len())
}

/// The pending events of `streams` as rows, in the order they were decided.
pub(super) fn collect_rows(streams: &[&mut dyn StagedStream]) -> Result<EventRows, AppendError> {
    let mut rows = EventRows::default();
    for s in streams.iter() {
        s.rows(&mut rows)?;
    }
    rows.sort_by_decision();
    Ok(rows)
}

/// After the rows of [`collect_rows`] were written: the streams' pending events are theirs.
pub(super) fn mark_appended(streams: &mut [&mut dyn StagedStream]) {
    for s in streams.iter_mut() {
        s.mark_appended();
    }
}

/// The INSERT of event rows bound as `$1`..`$7` by [`EventRows::bind`], in the order
/// decided (global positions follow row order). A macro, so statements that append events
/// with other writes (a run's checkpoint, `store::checkpoints`) are built from the same
/// text at compile time.
macro_rules! insert_event_rows {
    () => {
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT t, i, s, et, ev, p, m FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[]) \
             WITH ORDINALITY AS r(t, i, s, et, ev, p, m, n) ORDER BY n"
    };
}
pub(crate) use insert_event_rows;

/// The statement of [`insert_event_rows`], for writers outside this crate that copy rows the
/// bus wrote (`bench resync`'s floor writes a run's events as the engine wrote them).
pub const INSERT_EVENT_ROWS: &str = insert_event_rows!();

/// Inserts event rows in one statement. A sequence that is already taken (someone
/// appended to that stream meanwhile) is a conflict.
async fn insert_rows(conn: &mut PgConnection, rows: &EventRows) -> Result<(), AppendError> {
    if rows.is_empty() {
        return Ok(());
    }
    let result = rows
        .bind(sqlx::query(insert_event_rows!()))
        .execute(&mut *conn)
        .await;
    result.map(|_| ()).map_err(AppendError::of_insert)
}

/// Why appending several streams at once failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("a stream was changed concurrently; retry")]
    Conflict,
    /// The log has no partition for the positions being appended: partition maintenance
    /// (at start-up and every few minutes while serving, see `store::partitions`) has
    /// not kept ahead. Nothing was written.
    #[error("the event log has no partition for new events; run `tenantflow migrate` (or serve) to create partitions ahead: {0}")]
    NoPartition(#[source] sqlx::Error),
    #[error("an event cannot be serialized: {0}")]
    Corrupt(#[source] serde_json::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl AppendError {
    /// A failed INSERT: a key taken meanwhile (a stream's next sequence, a scope's lock) is
    /// a conflict; a position beyond the last partition is [`AppendError::NoPartition`];
    /// anything else the database's error.
    pub fn of_insert(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                AppendError::Conflict
            }
            // A row routed to no partition is a check violation naming the partitioned
            // table.
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some("23514")
                    && db.message().starts_with("no partition of relation") =>
            {
                AppendError::NoPartition(sqlx::Error::Database(db))
            }
            e => AppendError::Database(e),
        }
    }
}

/// Event rows for one INSERT, column by column.
#[derive(Debug, Default)]
pub struct EventRows {
    aggregate_types: Vec<&'static str>,
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<serde_json::Value>,
    metas: Vec<serde_json::Value>,
    /// Each row's [`decision_order`].
    order: Vec<u64>,
}

impl EventRows {
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// How many rows.
    pub fn len(&self) -> u64 {
        self.sequences.len() as u64
    }

    /// Binds the rows as `$1`..`$7` of [`insert_event_rows`].
    pub(crate) fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.aggregate_types)
            .bind(&self.aggregate_ids)
            .bind(&self.sequences)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(&self.metas)
    }

    /// Puts the rows in the order they were decided (global positions follow row order).
    fn sort_by_decision(&mut self) {
        if self.order.windows(2).all(|w| w[0] <= w[1]) {
            return;
        }
        let mut idx: Vec<usize> = (0..self.order.len()).collect();
        idx.sort_by_key(|&i| self.order[i]);
        // Moves, never clones: payloads can be large.
        fn permute<T>(v: &mut Vec<T>, idx: &[usize]) {
            let mut old: Vec<Option<T>> = v.drain(..).map(Some).collect();
            *v = idx.iter().filter_map(|&i| old[i].take()).collect();
        }
        permute(&mut self.aggregate_types, &idx);
        permute(&mut self.aggregate_ids, &idx);
        permute(&mut self.sequences, &idx);
        permute(&mut self.types, &idx);
        permute(&mut self.versions, &idx);
        permute(&mut self.payloads, &idx);
        permute(&mut self.metas, &idx);
        permute(&mut self.order, &idx);
    }

    fn push<A: Aggregate>(
        &mut self,
        id: &str,
        sequence: i64,
        event: &A::Event,
        meta: &serde_json::Value,
        order: u64,
    ) -> Result<(), serde_json::Error> {
        self.payloads.push(serde_json::to_value(event)?);
        self.order.push(order);
        self.aggregate_types.push(A::TYPE);
        self.aggregate_ids.push(id.to_owned());
        self.sequences.push(sequence);
        self.types.push(event.event_type());
        self.versions.push(event.event_version());
        self.metas.push(meta.clone());
        Ok(())
    }
}

/// A stream with decisions waiting to be appended, whatever its aggregate type.
pub trait StagedStream: Send {
    /// Adds the pending events as rows.
    fn rows(&self, rows: &mut EventRows) -> Result<(), AppendError>;
    /// The pending events were appended.
    fn mark_appended(&mut self);
}

impl<A: Aggregate> StagedStream for Staged<A> {
    fn rows(&self, rows: &mut EventRows) -> Result<(), AppendError> {
        for (i, (event, meta, order)) in self.pending.iter().enumerate() {
            rows.push::<A>(
                &self.id,
                self.base_version + 1 + i as i64,
                event,
                meta,
                *order,
            )
            .map_err(AppendError::Corrupt)?;
        }
        Ok(())
    }

    fn mark_appended(&mut self) {
        self.base_version += self.pending.len() as i64;
        self.pending.clear();
    }
}
