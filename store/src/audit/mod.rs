//! The audit hash chain (R9.4): every event sealed into a global chain and its workspace's
//! chain, `hash_n = SHA-256(hash_{n-1} || canonical bytes of event n)`, behind the log by a
//! catch-up consumer; verification that recomputes the chains from the events and names the
//! first altered, deleted, inserted or reordered event; and an NDJSON export that auditors
//! can check without tenantflow. Schema: migration 000013; definition: README.md.

pub mod chain;
mod export;
mod read;
mod sealer;
mod verify;

pub use chain::{Hash, SealedFields, GENESIS, NO_WORKSPACE};
pub use export::{export, ExportOptions, Exported};
pub use sealer::{AuditSealer, HEAD_EVERY, SEALER};
pub use verify::{
    bare_pass, record, unsealed, verify, Break, BreakKind, ChainReport, KeptHead, StreamRef,
    Verification, VerifyOptions, VerifyProgress,
};

/// Why verification or export could not be done (a broken chain is not an error: it is
/// what [`Verification`] reports).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the event at position {position} cannot be read: {message}")]
    Unreadable { position: i64, message: String },
    #[error("no event is sealed at position {0}: a kept head names a sealed position")]
    UnknownHead(i64),
    #[error("the event at position {0} belongs to another workspace's chain")]
    HeadOfAnotherChain(i64),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}
