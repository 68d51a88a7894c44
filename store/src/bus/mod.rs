//! The command bus: loads an aggregate from its events, checks the caller's role, lets the
//! aggregate decide, and appends the new events with optimistic concurrency.
//!
//! We drive cqrs-es aggregates by hand instead of through `CqrsFramework` because its
//! persistence cannot join a caller's transaction, and several of our rules need two
//! aggregates to change together (a scope lock and the run it admits; a tenant's default
//! connection and the connections themselves). A [`UnitOfWork`] appends to several streams
//! in one transaction; [`CommandBus::execute`] is the one-aggregate shortcut with retries.

mod metadata;
mod staging;
mod streams;

use cqrs_es::Aggregate;
use domain::{Authorize, Permission, Role, Services};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::metrics::{CommandLabels, Metrics};
pub(crate) use staging::insert_event_rows;
use staging::{append_streams, collect_rows, mark_appended};
use streams::fetch_streams;

pub use metadata::Metadata;
pub use staging::{AppendError, Decided, EventRows, Staged, StagedStream, INSERT_EVENT_ROWS};
pub(crate) use streams::load;
pub use streams::{LoadRow, Loaded, Streams};

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

/// Executes commands. Cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    pool: PgPool,
    services: Services,
    metrics: Metrics,
    /// Streams this process saw exist: a command on one is decided on its loaded state
    /// straight away (see [`CommandBus::append_as_new`]).
    existing: Arc<Mutex<HashSet<(&'static str, String)>>>,
    announcer: Arc<Announcer>,
    /// Announces queued mail work on [`MAIL_CHANNEL`](crate::log::MAIL_CHANNEL).
    mail_announcer: Arc<Announcer>,
}

/// Announces this process's committed appends on [`EVENTS_CHANNEL`](crate::log::EVENTS_CHANNEL)
/// so every instance's consumers wake (and, on [`MAIL_CHANNEL`](crate::log::MAIL_CHANNEL),
/// committed mail work so every instance's mail worker does). One task per bus sends the notifications, one at a
/// time: commits signalled while one is being sent are covered by the next, so a burst of
/// appends costs a notification or two, and no append's commit waits on the notification
/// queue's lock (a trigger's NOTIFY made every appending transaction do so). Consumers poll
/// as well, for appends whose process died before announcing them.
struct Announcer {
    channel: &'static str,
    queue: OnceLock<mpsc::Sender<()>>,
}

/// The least time between two of a bus's announcements. A consumer woken by one reads
/// every event committed before it, so a burst is announced at most once per gap.
const ANNOUNCE_GAP: std::time::Duration = std::time::Duration::from_millis(2);

impl Announcer {
    fn on(channel: &'static str) -> Arc<Self> {
        Arc::new(Self {
            channel,
            queue: OnceLock::new(),
        })
    }

    /// Called after a commit that appended events (or queued what the channel is for).
    fn announce(&self, pool: &PgPool) {
        let channel = self.channel;
        let queue = self.queue.get_or_init(|| {
            let (sender, mut receiver) = mpsc::channel::<()>(1);
            let pool = pool.clone();
            tokio::spawn(async move {
                while receiver.recv().await.is_some() {
                    if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(channel)
                        .execute(&pool)
                        .await
                    {
                        tracing::debug!(%error, channel, "commits could not be announced; listeners will poll");
                    }
                    // Commits signalled meanwhile wait for the next one: under load this
                    // keeps the notifications (a round trip and a pooled connection each)
                    // to one per gap, while the first append after a quiet spell is
                    // announced at once.
                    tokio::time::sleep(ANNOUNCE_GAP).await;
                }
            });
            sender
        });
        // Full: a notification not sent yet covers this commit too.
        let _ = queue.try_send(());
    }
}

/// Most streams remembered as existing; past it the memory starts over (a forgotten stream
/// costs one refused append, once).
const EXISTING_REMEMBERED: usize = 100_000;

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
            existing: Arc::default(),
            announcer: Announcer::on(crate::log::EVENTS_CHANNEL),
            mail_announcer: Announcer::on(crate::log::MAIL_CHANNEL),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The metrics this bus counts into (shared with whoever made it).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
        let result = match self.append_as_new::<A>(id, &command, metadata).await {
            Ok(Some(created)) => Ok(created),
            Ok(None) => self.decide_on_loaded::<A>(id, command, metadata).await,
            Err(e) => Err(e),
        };
        self.record(A::TYPE, outcome(&result));
        if let Ok(c) = &result {
            self.metrics.events_appended.inc_by(c.events.len() as u64);
            if !c.events.is_empty() {
                self.announcer.announce(&self.pool);
            }
            if c.version > 0 {
                self.remember(A::TYPE, id);
            }
        }
        result
    }

    /// Loads, decides and appends; a lost optimistic race is decided again on the new
    /// state.
    async fn decide_on_loaded<A>(
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
                }
                other => return other,
            }
        }
    }

    /// A command that creates its stream (a tenant registered, a connection created) is
    /// decided on the empty state and appended as the stream's first events: one round
    /// trip instead of a read and an append. A stream that exists already holds sequence 1,
    /// so the append is a conflict and nothing is written; so is a command the empty state
    /// refuses or that decides nothing there. `None` then: decide on the loaded state.
    /// (This rests on a stream's first event staying in `events`: whatever archives
    /// streams must keep their heads.)
    async fn append_as_new<A>(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
    ) -> Result<Option<Committed<A>>, BusError<A::Error>>
    where
        A: Aggregate<Services = Services>,
        A::Command: Authorize + Clone + Send,
    {
        if !metadata.role.allows(command.permission()) || self.exists(A::TYPE, id) {
            return Ok(None);
        }
        let mut stage = Staged::new(id, A::default(), 0);
        match stage
            .decide(&self.services, command.clone(), metadata)
            .await
        {
            Ok(decided) if !decided.event_types.is_empty() => {}
            _ => return Ok(None),
        }
        let events = stage.pending_events();
        let mut conn = self.pool.acquire().await?;
        match append_streams(&mut conn, &mut [&mut stage]).await {
            Ok(_) => Ok(Some(Committed {
                version: stage.version(),
                aggregate: stage.into_state(),
                events,
                repeated: false,
            })),
            Err(AppendError::Conflict) => {
                self.remember(A::TYPE, id);
                Ok(None)
            }
            Err(e) => Err(bus_error::<A>(e, id, stage.version())),
        }
    }

    fn exists(&self, aggregate_type: &'static str, id: &str) -> bool {
        self.existing
            .lock()
            .is_ok_and(|known| known.contains(&(aggregate_type, id.to_owned())))
    }

    fn remember(&self, aggregate_type: &'static str, id: &str) {
        if let Ok(mut known) = self.existing.lock() {
            if known.len() >= EXISTING_REMEMBERED {
                known.clear();
            }
            known.insert((aggregate_type, id.to_owned()));
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
        if appended > 0 {
            self.announcer.announce(&self.pool);
        }
        Ok(())
    }

    /// Appends the staged decisions of several streams together with a runner's write of a
    /// run's checkpoint ([`checkpoints::Write`](crate::checkpoints::Write)), in one
    /// statement that is its own transaction: one round trip where a transaction of the
    /// two writes took four. Returns `false`, with nothing written, when the checkpoint
    /// moved since it was read (another runner, or a person's command on the run); a stream
    /// that moved is a conflict, as for [`append_all`](Self::append_all).
    pub async fn append_checkpointed(
        &self,
        streams: &mut [&mut dyn StagedStream],
        write: &crate::checkpoints::Write<'_>,
    ) -> Result<bool, AppendError> {
        let rows = collect_rows(streams)?;
        let mut conn = self.pool.acquire().await?;
        if !crate::checkpoints::write_with_events(&mut conn, &rows, write).await? {
            return Ok(false);
        }
        mark_appended(streams);
        self.metrics.events_appended.inc_by(rows.len());
        if !rows.is_empty() {
            self.announcer.announce(&self.pool);
        }
        Ok(true)
    }

    /// Starts a transaction in which several commands append atomically.
    pub async fn begin(&self) -> Result<UnitOfWork, sqlx::Error> {
        Ok(UnitOfWork {
            tx: self.pool.begin().await?,
            bus: self.clone(),
            appended: 0,
            mail_work: false,
        })
    }

    /// Tells every instance's mail worker that mail work was committed (call it after the
    /// commit that queued the work; [`UnitOfWork::queued_mail_work`] does it for a unit of
    /// work). Sent after the commit, never inside it: a NOTIFY in the transaction would make
    /// it hold the notification queue's lock through its commit.
    pub fn announce_mail_work(&self) {
        self.mail_announcer.announce(&self.pool);
    }

    /// Announces events committed without the bus's own append methods (`bench resync`'s
    /// floor copies a run's events with [`INSERT_EVENT_ROWS`]), as those methods announce
    /// theirs: after the commit, one notification for a burst.
    pub fn announce_appends(&self) {
        self.announcer.announce(&self.pool);
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
    /// Whether this transaction queued mail work (announced when it commits).
    mail_work: bool,
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

    /// Marks that this transaction queued mail work: its commit wakes the mail workers
    /// ([`CommandBus::announce_mail_work`]).
    pub fn queued_mail_work(&mut self) {
        self.mail_work = true;
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await?;
        self.bus.metrics.events_appended.inc_by(self.appended);
        if self.appended > 0 {
            self.bus.announcer.announce(&self.bus.pool);
        }
        if self.mail_work {
            self.bus.announce_mail_work();
        }
        Ok(())
    }
}

/// A failed append of stream `id` of `A`, at `sequence`, as the bus reports it.
fn bus_error<A: Aggregate>(e: AppendError, id: &str, sequence: i64) -> BusError<A::Error> {
    match e {
        AppendError::Conflict => BusError::Conflict {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
        },
        AppendError::Corrupt(source) => BusError::Corrupt {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            sequence,
            source,
        },
        AppendError::Database(e) | AppendError::NoPartition(e) => BusError::Database(e),
    }
}

/// The one-aggregate command path: load, decide on a stage (the same decision path as
/// staged appends: role, idempotency, `handle`), append what was decided in one statement.
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
        // A role that may not do this costs no read.
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
        let mut stage = Staged::loaded(id, loaded);
        let decided = match stage.decide(services, command, metadata).await {
            Ok(d) => d,
            Err(refusal) => {
                tracing::debug!(%refusal, "command refused");
                return Err(refusal);
            }
        };
        let events = stage.pending_events();
        if !events.is_empty() {
            let version = stage.version();
            append_streams(conn, &mut [&mut stage])
                .await
                .map_err(|e| bus_error::<A>(e, id, version))?;
            tracing::debug!(events = events.len(), version, "command applied");
        }
        Ok(Committed {
            version: stage.version(),
            aggregate: stage.into_state(),
            events,
            repeated: decided.repeated,
        })
    }
    .instrument(span)
    .await
}
