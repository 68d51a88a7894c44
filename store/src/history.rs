//! Reading the log back: a stream's events up to a point of the log or of time, the state
//! an aggregate had then (R9.3), and a run's history as a timeline (R9.2).
//!
//! Earlier states are folded from events only, never from `aggregate_snapshots`: a
//! snapshot holds the state at its version, which may lie after the point asked for.
//! Every read takes a connection, so the API reads through its workspace-confined
//! transaction ([`db::workspace_reader`](crate::db::workspace_reader)) and an operator's
//! command may read the whole log.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::connection::ProviderConnection;
use domain::run::{OperationRun, RunEvent};
use domain::schedule::Schedule;
use domain::schedule_tick::ScheduleTick;
use domain::scope_lock::ScopeLock;
use domain::tenant::Tenant;
use domain::{ReasonCode, RunId};
use serde::Serialize;
use sqlx::PgConnection;

use crate::log::{from_row, EventRow, StoredEvent};

/// A point of the log: everything recorded up to it (inclusive) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// A global position: the events at or before it.
    Position(i64),
    /// A time: the events recorded at or before it.
    Time(DateTime<Utc>),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    /// A global position (`1234`) or an RFC 3339 time (`2026-11-23T09:00:00Z`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(position) = s.parse::<i64>() {
            return Ok(AsOf::Position(position));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| AsOf::Time(t.with_timezone(&Utc)))
            .map_err(|_| {
                format!(
                    "`{}` is neither a global position nor an RFC 3339 time",
                    s.chars().take(40).collect::<String>()
                )
            })
    }
}

/// Why the log could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event {event_type} at global position {global_position} cannot be read: {source}")]
    Corrupt {
        global_position: i64,
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the state cannot be shown as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The aggregates whose earlier states can be looked at by name ([`state_json_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    Tenant,
    Connection,
    Run,
    ScopeLock,
    Schedule,
    ScheduleTick,
}

impl AggregateKind {
    pub const ALL: [AggregateKind; 6] = [
        AggregateKind::Tenant,
        AggregateKind::Connection,
        AggregateKind::Run,
        AggregateKind::ScopeLock,
        AggregateKind::Schedule,
        AggregateKind::ScheduleTick,
    ];

    /// The aggregate type its events are stored under.
    pub fn stored_type(self) -> &'static str {
        match self {
            AggregateKind::Tenant => Tenant::TYPE,
            AggregateKind::Connection => ProviderConnection::TYPE,
            AggregateKind::Run => OperationRun::TYPE,
            AggregateKind::ScopeLock => ScopeLock::TYPE,
            AggregateKind::Schedule => Schedule::TYPE,
            AggregateKind::ScheduleTick => ScheduleTick::TYPE,
        }
    }
}

impl std::str::FromStr for AggregateKind {
    type Err = String;

    /// The stored type (`provider_connection`), or `connection` and `run` for short.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let short = match s {
            "connection" => Some(AggregateKind::Connection),
            "run" => Some(AggregateKind::Run),
            _ => None,
        };
        short
            .or_else(|| Self::ALL.into_iter().find(|k| k.stored_type() == s))
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|k| k.stored_type()).collect();
                format!(
                    "unknown aggregate type `{}`; known: {}",
                    s.chars().take(64).collect::<String>(),
                    known.join(", ")
                )
            })
    }
}

/// A stream's events in order, up to `as_of` (all of them without it). Only a gap-free
/// prefix of the stream is returned: should an event recorded at or before the point
/// follow one recorded after it, the stream is cut at the first one after it, so the
/// result is always a state the aggregate really had.
pub async fn stream(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    as_of: Option<AsOf>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let (position, time) = match as_of {
        Some(AsOf::Position(p)) => (Some(p), None),
        Some(AsOf::Time(t)) => (None, Some(t)),
        None => (None, None),
    };
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT transaction_id::text::bigint, global_position, aggregate_type, aggregate_id, \
             sequence, event_type, event_version, payload, metadata, recorded_at \
         FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
             AND ($3::bigint IS NULL OR global_position <= $3) \
             AND ($4::timestamptz IS NULL OR recorded_at <= $4) \
         ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(position)
    .bind(time)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(from_row)
        .enumerate()
        .take_while(|(i, e)| e.sequence == *i as i64 + 1)
        .map(|(_, e)| e)
        .collect())
}

/// Decodes a stored event as an aggregate's event.
pub fn decode<A: Aggregate>(e: &StoredEvent) -> Result<A::Event, HistoryError> {
    serde_json::from_value(e.payload.clone()).map_err(|source| HistoryError::Corrupt {
        global_position: e.position.global_position,
        event_type: e.event_type.clone(),
        source,
    })
}

/// The state `events` (a stream's, in order) fold into.
pub fn fold<A: Aggregate>(events: &[StoredEvent]) -> Result<A, HistoryError> {
    let mut state = A::default();
    for e in events {
        state.apply(decode::<A>(e)?);
    }
    Ok(state)
}

/// An aggregate's state at a point of the log, and the last event folded into it.
#[derive(Debug, Clone, Serialize)]
pub struct StateAt<S> {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The sequence of the last event folded in.
    pub version: i64,
    pub global_position: i64,
    pub recorded_at: DateTime<Utc>,
    pub state: S,
}

/// The state aggregate `A` with `id` had at `as_of`; `None` when it had no events by then
/// (or none the connection may see).
pub async fn state_at<A: Aggregate>(
    conn: &mut PgConnection,
    id: &str,
    as_of: AsOf,
) -> Result<Option<StateAt<A>>, HistoryError> {
    let events = stream(conn, A::TYPE, id, Some(as_of)).await?;
    let Some(last) = events.last() else {
        return Ok(None);
    };
    Ok(Some(StateAt {
        aggregate_type: A::TYPE.to_owned(),
        aggregate_id: id.to_owned(),
        version: last.sequence,
        global_position: last.position.global_position,
        recorded_at: last.recorded_at,
        state: fold::<A>(&events)?,
    }))
}

/// Like [`state_at`], for an aggregate named by its kind, with the state as JSON, as the
/// aggregate serializes it.
pub async fn state_json_at(
    conn: &mut PgConnection,
    kind: AggregateKind,
    id: &str,
    as_of: AsOf,
) -> Result<Option<StateAt<serde_json::Value>>, HistoryError> {
    async fn json<A: Aggregate>(
        conn: &mut PgConnection,
        id: &str,
        as_of: AsOf,
    ) -> Result<Option<StateAt<serde_json::Value>>, HistoryError> {
        let Some(at) = state_at::<A>(conn, id, as_of).await? else {
            return Ok(None);
        };
        Ok(Some(at.try_map(|state| serde_json::to_value(&state))?))
    }
    match kind {
        AggregateKind::Tenant => json::<Tenant>(conn, id, as_of).await,
        AggregateKind::Connection => json::<ProviderConnection>(conn, id, as_of).await,
        AggregateKind::Run => json::<OperationRun>(conn, id, as_of).await,
        AggregateKind::ScopeLock => json::<ScopeLock>(conn, id, as_of).await,
        AggregateKind::Schedule => json::<Schedule>(conn, id, as_of).await,
        AggregateKind::ScheduleTick => json::<ScheduleTick>(conn, id, as_of).await,
    }
}

impl<S> StateAt<S> {
    /// The same point with its state converted.
    pub fn try_map<T, E>(self, convert: impl FnOnce(S) -> Result<T, E>) -> Result<StateAt<T>, E> {
        Ok(StateAt {
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            version: self.version,
            global_position: self.global_position,
            recorded_at: self.recorded_at,
            state: convert(self.state)?,
        })
    }
}

/// One event of a run's history, as a timeline shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunHistoryEntry {
    pub global_position: i64,
    pub sequence: i64,
    /// When the event was committed.
    pub recorded_at: DateTime<Utc>,
    /// When it happened, by the clock of whoever decided it (several events decided one
    /// after another may be committed together).
    pub at: DateTime<Utc>,
    /// Milliseconds from the run's first event to this one, by `at` (0 for an entry made
    /// on its own, outside [`run_history`]).
    pub elapsed_ms: i64,
    pub event_type: String,
    pub step: Option<String>,
    pub attempt: Option<u32>,
    pub reason: Option<ReasonCode>,
    pub actor: Option<String>,
    pub role: Option<String>,
    /// The rest of the event (a step's summary, a failure's message and retry time, a
    /// run's counts or context); `None` when nothing is left. Run events hold no secrets:
    /// the run aggregate sanitizes messages and summaries before recording them.
    pub details: Option<serde_json::Value>,
}

impl RunHistoryEntry {
    /// The entry for one of a run's stored events. An event this binary cannot decode is
    /// still listed, with its payload as details.
    pub fn of(e: &StoredEvent) -> Self {
        let decoded = decode::<OperationRun>(e)
            .inspect_err(|error| tracing::warn!(%error, "a run event this binary cannot read"))
            .ok();
        Self::entry(e, &e.event_type, &e.payload, decoded.as_ref())
    }

    /// The entries for one of a run's stored events: a run's end that carries the run's
    /// progress (issue 13: the engine keeps it off the log until the end) gives an entry
    /// for each carried event first, as that event gave when it was logged on its own,
    /// at the end's place in the log; then the end's own entry.
    pub fn all_of(e: &StoredEvent) -> Vec<Self> {
        let decoded = decode::<OperationRun>(e).ok();
        let carried = decoded.as_ref().map(RunEvent::carried).unwrap_or_default();
        if carried.is_empty() {
            return vec![Self::of(e)];
        }
        let mut entries: Vec<Self> = carried
            .iter()
            .filter_map(|event| {
                let event_type = cqrs_es::DomainEvent::event_type(event);
                let payload = serde_json::to_value(event).ok()?;
                Some(Self::entry(e, &event_type, &payload, Some(event)))
            })
            .collect();
        let mut end = Self::of(e);
        if let Some(serde_json::Value::Object(details)) = &mut end.details {
            details.remove("progress");
            if details.is_empty() {
                end.details = None;
            }
        }
        entries.push(end);
        entries
    }

    fn entry(
        e: &StoredEvent,
        event_type: &str,
        payload: &serde_json::Value,
        decoded: Option<&RunEvent>,
    ) -> Self {
        let fields = |event: &RunEvent| {
            (
                event.at(),
                event.step().map(str::to_owned),
                event.attempt(),
                event.reason(),
            )
        };
        let (at, step, attempt, reason) =
            decoded
                .map(fields)
                .unwrap_or((e.recorded_at, None, None, None));
        // Externally tagged: `{"RunStepFailed": {...}}`. What the entry shows on its own is
        // left out of the details.
        let mut details = match payload.get(event_type) {
            Some(serde_json::Value::Object(fields)) => fields.clone(),
            _ => serde_json::Map::new(),
        };
        if decoded.is_some() {
            for shown in ["at", "queued_at", "step", "attempt", "reason"] {
                details.remove(shown);
            }
        }
        Self {
            global_position: e.position.global_position,
            sequence: e.sequence,
            recorded_at: e.recorded_at,
            at,
            elapsed_ms: 0,
            event_type: event_type.to_owned(),
            step,
            attempt,
            reason,
            actor: e.meta("actor").map(str::to_owned),
            role: e.meta("role").map(str::to_owned),
            details: (!details.is_empty()).then_some(serde_json::Value::Object(details)),
        }
    }
}

/// Every event of a run, in the log's order (for one stream, the order of its sequence).
/// Empty when the run does not exist or the connection may not see it.
pub async fn run_history(
    conn: &mut PgConnection,
    run_id: RunId,
) -> Result<Vec<RunHistoryEntry>, sqlx::Error> {
    let events = stream(conn, OperationRun::TYPE, &run_id.to_string(), None).await?;
    let mut entries: Vec<RunHistoryEntry> =
        events.iter().flat_map(RunHistoryEntry::all_of).collect();
    if let Some(first) = entries.first().map(|e| e.at) {
        for e in &mut entries {
            e.elapsed_ms = (e.at - first).num_milliseconds();
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Position;
    use serde_json::json;

    fn stored(event_type: &str, payload: serde_json::Value) -> StoredEvent {
        StoredEvent {
            position: Position {
                transaction_id: 9,
                global_position: 42,
            },
            aggregate_type: OperationRun::TYPE.into(),
            aggregate_id: "r".into(),
            sequence: 3,
            event_type: event_type.into(),
            event_version: "1.0".into(),
            payload,
            metadata: json!({"actor": "engine", "role": "system", "workspace": "acme"}),
            recorded_at: "2026-11-23T09:00:05Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_failed_step_shows_its_step_attempt_reason_and_the_rest_as_details() {
        let e = stored(
            "RunStepFailed",
            json!({"RunStepFailed": {
                "step": "snapshot_policies", "attempt": 2, "reason": "graph_throttled",
                "message": "429", "retry_at": "2026-11-23T09:00:09Z", "at": "2026-11-23T09:00:04Z"
            }}),
        );
        let entry = RunHistoryEntry::of(&e);
        assert_eq!(entry.step.as_deref(), Some("snapshot_policies"));
        assert_eq!(entry.attempt, Some(2));
        assert_eq!(entry.reason, Some(ReasonCode::GraphThrottled));
        assert_eq!(
            entry.at,
            "2026-11-23T09:00:04Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            (entry.actor.as_deref(), entry.role.as_deref()),
            (Some("engine"), Some("system"))
        );
        assert_eq!(
            entry.details,
            Some(json!({"message": "429", "retry_at": "2026-11-23T09:00:09Z"}))
        );
    }

    #[test]
    fn an_event_this_binary_does_not_know_is_still_listed() {
        let e = stored("RunPaused", json!({"RunPaused": {"by": "x"}}));
        let entry = RunHistoryEntry::of(&e);
        assert_eq!(entry.event_type, "RunPaused");
        assert_eq!(entry.at, e.recorded_at);
        assert_eq!(entry.details, Some(json!({"by": "x"})));
    }

    #[test]
    fn aggregates_are_named_by_stored_type_or_for_short() {
        for kind in AggregateKind::ALL {
            assert_eq!(kind.stored_type().parse(), Ok(kind));
        }
        assert_eq!("run".parse(), Ok(AggregateKind::Run));
        assert_eq!("connection".parse(), Ok(AggregateKind::Connection));
        let unknown = "widget".parse::<AggregateKind>().unwrap_err();
        assert!(
            unknown.contains("known: tenant, provider_connection, operation_run"),
            "{unknown}"
        );
    }

    #[test]
    fn a_point_is_a_position_or_an_rfc3339_time() {
        assert_eq!("17".parse(), Ok(AsOf::Position(17)));
        assert_eq!(
            "2026-11-23T10:00:00+01:00".parse(),
            Ok(AsOf::Time("2026-11-23T09:00:00Z".parse().unwrap()))
        );
        assert!("yesterday".parse::<AsOf>().is_err());
    }
}
