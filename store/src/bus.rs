//! The command bus: loads an aggregate from its events, checks the caller's role, lets the
//! aggregate decide, and appends the new events with optimistic concurrency.
//!
//! We drive cqrs-es aggregates by hand instead of through `CqrsFramework` because its
//! persistence cannot join a caller's transaction, and several of our rules need two
//! aggregates to change together (a scope lock and the run it admits; a tenant's default
//! connection and the connections themselves). A [`UnitOfWork`] appends to several streams
//! in one transaction; [`CommandBus::execute`] is the one-aggregate shortcut with retries.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::{Authorize, Permission, Role, Services};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;

use crate::metrics::{CommandLabels, Metrics};
use crate::snapshots;

/// Who asks, on whose behalf, and why: stored as each event's metadata (a JSON object of
/// strings, as postgres-es requires).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub workspace: String,
    pub actor: String,
    pub role: Role,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub request_id: String,
    /// A command carrying a key its aggregate has already applied succeeds without
    /// appending anything (workflow steps may run twice after a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl Metadata {
    /// Metadata for a fresh request by `actor` with `role` in `workspace`.
    pub fn new(workspace: impl Into<String>, actor: impl Into<String>, role: Role) -> Self {
        let request_id = uuid::Uuid::now_v7().to_string();
        Self {
            workspace: workspace.into(),
            actor: actor.into(),
            role,
            correlation_id: request_id.clone(),
            causation_id: None,
            request_id,
            idempotency_key: None,
        }
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn caused_by(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    fn to_json(&self) -> serde_json::Value {
        let map: HashMap<&str, String> = [
            ("workspace", Some(self.workspace.clone())),
            ("actor", Some(self.actor.clone())),
            ("role", Some(self.role.as_str().to_owned())),
            ("correlation_id", Some(self.correlation_id.clone())),
            ("causation_id", self.causation_id.clone()),
            ("request_id", Some(self.request_id.clone())),
            ("idempotency_key", self.idempotency_key.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        serde_json::to_value(map).unwrap_or_default()
    }
}

/// Why a command did not go through.
#[derive(Debug, thiserror::Error)]
pub enum BusError<E: std::error::Error> {
    #[error("the role `{role}` may not do this (it needs {permission:?})")]
    Forbidden { role: Role, permission: Permission },
    #[error(transparent)]
    Domain(E),
    #[error("{aggregate_type} {aggregate_id} was changed concurrently; retry")]
    Conflict {
        aggregate_type: &'static str,
        aggregate_id: String,
    },
    #[error("stored event {sequence} of {aggregate_type} {aggregate_id} cannot be read: {source}")]
    Corrupt {
        aggregate_type: &'static str,
        aggregate_id: String,
        sequence: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl<E: domain::DomainError> BusError<E> {
    /// The stable reason code users see for this failure.
    pub fn reason_code(&self) -> domain::ReasonCode {
        use domain::ReasonCode;
        match self {
            BusError::Forbidden { .. } => ReasonCode::Forbidden,
            BusError::Domain(e) => e.reason_code(),
            BusError::Conflict { .. } => ReasonCode::Conflict,
            BusError::Corrupt { .. } | BusError::Database(_) => ReasonCode::InternalError,
        }
    }
}

impl<E: std::error::Error> BusError<E> {
    fn outcome(&self) -> &'static str {
        match self {
            BusError::Forbidden { .. } => "forbidden",
            BusError::Domain(_) => "rejected",
            BusError::Conflict { .. } => "conflict",
            BusError::Corrupt { .. } | BusError::Database(_) => "error",
        }
    }
}

/// The result of a command: the aggregate's state after it, its version (last sequence)
/// and the events it appended (none when the command changed nothing or was a repeat).
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    pub aggregate: A,
    pub version: i64,
    pub events: Vec<A::Event>,
    /// True when the idempotency key had been applied before.
    pub repeated: bool,
}

/// An aggregate as loaded from its stream.
#[derive(Debug)]
pub struct Loaded<A> {
    pub aggregate: A,
    pub version: i64,
    idempotency_keys: Vec<String>,
}

impl<A> Loaded<A> {
    /// The idempotency keys the stream has seen (those kept in its snapshot, then those
    /// of the events after it), oldest first.
    pub fn idempotency_keys(&self) -> &[String] {
        &self.idempotency_keys
    }
}

/// Executes commands. Cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    pool: PgPool,
    services: Services,
    metrics: Metrics,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandBus")
    }
}

/// How often a one-aggregate command is re-decided after losing an optimistic race. Every
/// round has a winner, so this bounds how many writers one stream can take at once.
pub const CONFLICT_RETRIES: usize = 32;

/// A short random pause before re-deciding after a lost race, growing with the attempt, so
/// contenders on a hot stream spread out instead of colliding again in lockstep.
pub async fn conflict_pause(attempt: usize) {
    use rand::Rng;
    let ceiling_ms = (1u64 << attempt.min(6)).min(50);
    let ms = rand::thread_rng().gen_range(0..=ceiling_ms);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

impl CommandBus {
    pub fn new(pool: PgPool, services: Services, metrics: Metrics) -> Self {
        Self {
            pool,
            services,
            metrics,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Executes one command on one aggregate. A lost optimistic race is retried against
    /// the new state (deciding is pure, so this is safe); a refusal is returned as is.
    pub async fn execute<A>(
        &self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A>, BusError<A::Error>>
    where
        A: Aggregate<Services = Services>,
        A::Command: Authorize + Clone + Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.acquire().await?;
            let result = decide_and_append::<A>(
                &mut conn,
                &self.services,
                id,
                None,
                command.clone(),
                metadata,
            )
            .await;
            match result {
                Err(BusError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    tracing::debug!(
                        aggregate = A::TYPE,
                        id,
                        attempt,
                        "optimistic conflict, retrying"
                    );
                    conflict_pause(attempt).await;
                    continue;
                }
                other => {
                    self.record(A::TYPE, outcome(&other));
                    if let Ok(c) = &other {
                        self.metrics.events_appended.inc_by(c.events.len() as u64);
                    }
                    return other;
                }
            }
        }
    }

    /// Loads an aggregate's current state (for decisions made outside aggregates, such as
    /// which connection a run uses).
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, BusError<A::Error>> {
        let mut conn = self.pool.acquire().await?;
        load::<A>(&mut conn, id).await
    }

    /// Reads several streams (aggregate type, id) in one query, outside any transaction.
    pub async fn fetch_streams(
        &self,
        ids: &[(&'static str, String)],
    ) -> Result<Streams, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        fetch_streams(&mut conn, ids).await
    }

    /// Appends the staged decisions of several streams in one statement, which is its own
    /// transaction: all or nothing, and a conflict when any stream moved since it was read
    /// (its next sequence is taken). The cheapest durable write: one round trip.
    pub async fn append_all(
        &self,
        streams: &mut [&mut dyn StagedStream],
    ) -> Result<(), AppendError> {
        let mut conn = self.pool.acquire().await?;
        let appended = append_streams(&mut conn, streams).await?;
        self.metrics.events_appended.inc_by(appended);
        Ok(())
    }

    /// Starts a transaction in which several commands append atomically.
    pub async fn begin(&self) -> Result<UnitOfWork, sqlx::Error> {
        Ok(UnitOfWork {
            tx: self.pool.begin().await?,
            bus: self.clone(),
            appended: 0,
        })
    }

    fn record(&self, aggregate: &'static str, outcome: &'static str) {
        self.metrics
            .commands
            .get_or_create(&CommandLabels {
                aggregate: aggregate.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

fn outcome<T, E: std::error::Error>(result: &Result<T, BusError<E>>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    }
}

/// Commands appended in one transaction: all or nothing. A conflict aborts the whole
/// transaction; the caller starts over with a new unit of work.
pub struct UnitOfWork {
    tx: Transaction<'static, Postgres>,
    bus: CommandBus,
    appended: u64,
}

impl UnitOfWork {
    /// Executes a command inside this transaction.
    pub async fn execute<A>(
        &mut self,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A>, BusError<A::Error>>
    where
        A: Aggregate<Services = Services>,
        A::Command: Authorize + Send,
    {
        self.execute_expecting::<A>(id, None, command, metadata)
            .await
    }

    /// Like [`execute`](Self::execute), but fails with a conflict unless the aggregate is
    /// at `expected_version` (workflow steps record results against the run they read).
    pub async fn execute_expecting<A>(
        &mut self,
        id: &str,
        expected_version: Option<i64>,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed<A>, BusError<A::Error>>
    where
        A: Aggregate<Services = Services>,
        A::Command: Authorize + Send,
    {
        let result = decide_and_append::<A>(
            &mut self.tx,
            &self.bus.services,
            id,
            expected_version,
            command,
            metadata,
        )
        .await;
        if let Ok(c) = &result {
            self.appended += c.events.len() as u64;
        }
        self.bus.record(A::TYPE, outcome(&result));
        result
    }

    /// Appends the staged decisions of several streams (of any aggregate types) in one
    /// statement: one round trip for a step's whole effect. A conflict on any stream voids
    /// the unit of work. Afterwards the streams hold nothing pending.
    pub async fn append_all(
        &mut self,
        streams: &mut [&mut dyn StagedStream],
    ) -> Result<(), AppendError> {
        let appended = append_streams(&mut self.tx, streams).await?;
        self.appended += appended;
        Ok(())
    }

    /// Reads several streams (aggregate type, id) in one query, for staging.
    pub async fn fetch_streams(
        &mut self,
        ids: &[(&'static str, String)],
    ) -> Result<Streams, sqlx::Error> {
        fetch_streams(&mut self.tx, ids).await
    }

    /// Loads an aggregate as this transaction sees it.
    pub async fn load<A: Aggregate>(&mut self, id: &str) -> Result<Loaded<A>, BusError<A::Error>> {
        load::<A>(&mut self.tx, id).await
    }

    /// The transaction, for writes that must commit with the events (e.g. the vault).
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await?;
        self.bus.metrics.events_appended.inc_by(self.appended);
        Ok(())
    }
}

/// Commands decided against a state the caller already holds (no reload), kept until a
/// statement appends them (see [`CommandBus::append_all`], [`UnitOfWork::append_all`]). For a single
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
    /// `state` as of `version` (e.g. from [`CommandBus::load`]).
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
        let sink = EventSink::default();
        self.state
            .handle(command, services, &sink)
            .await
            .map_err(BusError::Domain)?;
        let events = sink.collect().await;
        let meta = metadata.to_json();
        let event_types: Vec<String> = events.iter().map(|e| e.event_type()).collect();
        for event in events {
            self.state.apply(event.clone());
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

    pub fn state(&self) -> &A {
        &self.state
    }

    pub fn into_state(self) -> A {
        self.state
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
async fn append_streams(
    conn: &mut PgConnection,
    streams: &mut [&mut dyn StagedStream],
) -> Result<u64, AppendError> {
    let mut rows = EventRows::default();
    for s in streams.iter() {
        s.rows(&mut rows)?;
    }
    rows.sort_by_decision();
    insert_rows(conn, &rows).await?;
    for s in streams.iter_mut() {
        s.mark_appended();
    }
    Ok(rows.sequences.len() as u64)
}

/// Inserts event rows in one statement. A sequence that is already taken (someone
/// appended to that stream meanwhile) is a conflict.
async fn insert_rows(conn: &mut PgConnection, rows: &EventRows) -> Result<(), AppendError> {
    if rows.is_empty() {
        return Ok(());
    }
    let result = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT t, i, s, et, ev, p, m FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[]) \
             WITH ORDINALITY AS r(t, i, s, et, ev, p, m, n) ORDER BY n",
    )
    .bind(&rows.aggregate_types)
    .bind(&rows.aggregate_ids)
    .bind(&rows.sequences)
    .bind(&rows.types)
    .bind(&rows.versions)
    .bind(&rows.payloads)
    .bind(&rows.metas)
    .execute(&mut *conn)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
            Err(AppendError::Conflict)
        }
        Err(e) => Err(AppendError::Database(e)),
    }
}

/// Reads several streams (aggregate type, id) in one query: each from its snapshot, if it
/// has one this binary can read, and the events after it.
async fn fetch_streams(
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

/// Why appending several streams at once failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("a stream was changed concurrently; retry")]
    Conflict,
    #[error("an event cannot be serialized: {0}")]
    Corrupt(#[source] serde_json::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
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
    fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Puts the rows in the order they were decided (global positions follow row order).
    fn sort_by_decision(&mut self) {
        if self.order.windows(2).all(|w| w[0] <= w[1]) {
            return;
        }
        let mut idx: Vec<usize> = (0..self.order.len()).collect();
        idx.sort_by_key(|&i| self.order[i]);
        fn permute<T: Clone>(v: &mut Vec<T>, idx: &[usize]) {
            *v = idx.iter().map(|&i| v[i].clone()).collect();
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

/// Several streams read in one query (see [`UnitOfWork::fetch_streams`]).
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
        let loaded = fold::<A>(id, rows)?;
        let mut staged = Staged::new(id, loaded.aggregate, loaded.version);
        staged.keys = loaded.idempotency_keys;
        Ok(staged)
    }
}

async fn decide_and_append<A>(
    conn: &mut PgConnection,
    services: &Services,
    id: &str,
    expected_version: Option<i64>,
    command: A::Command,
    metadata: &Metadata,
) -> Result<Committed<A>, BusError<A::Error>>
where
    A: Aggregate<Services = Services>,
    A::Command: Authorize + Send,
{
    let span = tracing::info_span!(
        "command",
        aggregate = A::TYPE,
        aggregate_id = id,
        workspace = %metadata.workspace,
        correlation_id = %metadata.correlation_id,
    );
    async move {
        let permission = command.permission();
        if !metadata.role.allows(permission) {
            return Err(BusError::Forbidden {
                role: metadata.role,
                permission,
            });
        }
        let loaded = load::<A>(conn, id).await?;
        if expected_version.is_some_and(|v| v != loaded.version) {
            return Err(BusError::Conflict {
                aggregate_type: A::TYPE,
                aggregate_id: id.to_owned(),
            });
        }
        let Loaded {
            mut aggregate,
            version,
            idempotency_keys,
        } = loaded;
        if let Some(key) = &metadata.idempotency_key {
            if idempotency_keys.contains(key) {
                return Ok(Committed {
                    aggregate,
                    version,
                    events: Vec::new(),
                    repeated: true,
                });
            }
        }
        let sink = EventSink::default();
        if let Err(refusal) = aggregate.handle(command, services, &sink).await {
            tracing::debug!(%refusal, "command refused");
            return Err(BusError::Domain(refusal));
        }
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(Committed {
                aggregate,
                version,
                events,
                repeated: false,
            });
        }
        append::<A>(conn, id, version, &events, metadata).await?;
        tracing::debug!(
            events = events.len(),
            version = version + events.len() as i64,
            "command applied"
        );
        Ok(Committed {
            version: version + events.len() as i64,
            aggregate,
            events,
            repeated: false,
        })
    }
    .instrument(span)
    .await
}

/// Appends events after `version` in one statement (atomic even outside a transaction).
async fn append<A: Aggregate>(
    conn: &mut PgConnection,
    id: &str,
    version: i64,
    events: &[A::Event],
    metadata: &Metadata,
) -> Result<(), BusError<A::Error>> {
    let meta = metadata.to_json();
    let mut rows = EventRows::default();
    for (i, event) in events.iter().enumerate() {
        let sequence = version + 1 + i as i64;
        rows.push::<A>(id, sequence, event, &meta, 0)
            .map_err(|source| BusError::Corrupt {
                aggregate_type: A::TYPE,
                aggregate_id: id.to_owned(),
                sequence,
                source,
            })?;
    }
    insert_rows(conn, &rows).await.map_err(|e| match e {
        AppendError::Conflict => BusError::Conflict {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
        },
        AppendError::Database(e) => BusError::Database(e),
        // Serialized above.
        AppendError::Corrupt(source) => BusError::Corrupt {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            sequence: version + 1,
            source,
        },
    })
}
