//! Persistence: the PostgreSQL event store, the command bus, the gap-free global log,
//! the credential vault, the embedded cluster, the service's metrics and the audit hash
//! chain. `events` is partitioned by global position (see [`partitions`]).

pub mod archive;
pub mod audit;
pub mod bus;
pub mod checkpoints;
pub mod db;
pub mod embedded;
pub mod history;
pub mod horizon;
pub mod index;
pub mod log;
pub mod metrics;
pub mod partitions;
pub mod replica;
pub mod scope_locks;
pub mod snapshots;
pub mod vault;

pub use audit::AuditSealer;
pub use bus::{
    AppendError, BusError, CommandBus, Committed, Decided, EventRows, Loaded, Metadata, Staged,
    StagedStream, Streams, UnitOfWork,
};
pub use db::{connect, migrate, DbError, MIGRATOR};
pub use embedded::{EmbeddedError, EmbeddedOptions, EmbeddedPostgres};
pub use log::{
    Consumer, ConsumerError, ConsumerRunner, Payloads, Position, Progress, RunnerOptions,
    StoredEvent, Wakeups,
};
pub use metrics::Metrics;
pub use replica::{ReadReplica, ReadRoute, ReplicaOptions};
pub use snapshots::SnapshotWriter;
pub use vault::{DelegatedTokens, MailboxSecret, SealedCredential, Vault, VaultError};
