//! Verification: recompute the chains from `events`, in the order they were sealed, and
//! compare every link with the stored seal. The first difference in a chain is classified
//! (altered, deleted, inserted, reordered) and named by position and stream; a chain is not
//! checked past its first break, the others go on.

use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::chain::{link, workspace_chain, Hash, SealedFields, GENESIS};
use super::read::{self, Items, LogRow, Range, SealLink, SealRow, SEAL_COLUMNS};
use super::AuditError;
use crate::log::Position;

/// An event's stream and place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} #{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }
}

/// What is wrong with the first bad event of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The event at a sealed position is not the one sealed there: its bytes changed.
    Altered,
    /// A sealed event is gone.
    Deleted,
    /// An event that was never sealed sits inside the sealed part of the log.
    Inserted,
    /// A sealed event is still there, but at another place in the order.
    Reordered,
    /// The chain no longer leads to a kept head ([`VerifyOptions::expect`] or `from`).
    HeadMismatch,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Altered => "altered",
            BreakKind::Deleted => "deleted",
            BreakKind::Inserted => "inserted",
            BreakKind::Reordered => "reordered",
            BreakKind::HeadMismatch => "head_mismatch",
        }
    }
}

/// The first bad event of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub kind: BreakKind,
    /// The global position: where the sealed event was (altered, deleted, reordered) or
    /// where the unsealed one is (inserted).
    pub position: i64,
    /// The seal of that position, if it has one.
    pub seal_no: Option<i64>,
    /// The stream of the sealed event (of the inserted one for `Inserted`).
    pub stream: StreamRef,
    /// What was found instead (never names another workspace).
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} event at position {} ({})",
            self.kind.as_str(),
            self.position,
            self.stream
        )?;
        if let Some(seal) = self.seal_no {
            write!(f, ", seal {seal}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// A chain head an auditor kept: a global position and the chain's hash there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptHead {
    pub position: i64,
    pub hash: Hash,
}

impl FromStr for KeptHead {
    type Err = String;
    /// `<global position>:<hex hash>`, as `auditChain` and `audit_heads` show them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (position, hash) = s
            .split_once(':')
            .ok_or_else(|| "expected <position>:<hex hash>".to_owned())?;
        Ok(Self {
            position: position
                .trim()
                .parse()
                .map_err(|_| format!("`{position}` is not a position"))?,
            hash: super::chain::parse_hash(hash)
                .ok_or_else(|| "the hash is not 64 hex digits".to_owned())?,
        })
    }
}

impl fmt::Display for KeptHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.position, hex::encode(self.hash))
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this workspace's chain (else the global chain and every workspace chain).
    pub workspace: Option<String>,
    /// Verify only the part of the chain after this kept head (of the global chain, or of
    /// `workspace`'s).
    pub from: Option<KeptHead>,
    /// Also check that the recomputed chain has this kept head's hash at its position:
    /// the history up to there is the one the head was taken from.
    pub expect: Option<KeptHead>,
}

/// The outcome for one chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// The workspace chain, or `None` for the global chain.
    pub workspace: Option<String>,
    /// Links recomputed and found equal to their seals.
    pub checked: u64,
    /// The last position found good.
    pub through: Option<i64>,
    /// Links of archived events taken from their seals (their segments are checked by
    /// [`crate::archive::verify_archives`]), included in `checked`.
    pub archived: u64,
    pub first_bad: Option<Break>,
}

/// The outcome of a verification.
#[derive(Debug, Clone)]
pub struct Verification {
    pub options: VerifyOptions,
    /// The global chain first (when checked), then workspace chains by name.
    pub chains: Vec<ChainReport>,
    /// The last sealed position when verification started (`None`: nothing sealed).
    pub sealed_through: Option<i64>,
    /// The head of the chain verified at its end, as recomputed (`None` when broken).
    pub head: Option<KeptHead>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.chains.iter().all(|c| c.first_bad.is_none())
    }

    /// The first bad event: the global chain's when it was checked and broke, else the
    /// earliest break of a workspace chain.
    pub fn first_bad(&self) -> Option<&Break> {
        let global = self
            .chains
            .iter()
            .find(|c| c.workspace.is_none())
            .and_then(|c| c.first_bad.as_ref());
        global.or_else(|| {
            self.chains
                .iter()
                .filter_map(|c| c.first_bad.as_ref())
                .min_by_key(|b| (b.seal_no.unwrap_or(i64::MAX), b.position))
        })
    }

    /// Links recomputed (the global chain's count when it was checked).
    pub fn checked(&self) -> u64 {
        self.chains.first().map(|c| c.checked).unwrap_or(0)
    }
}

/// Reports progress of a verification (a progress bar in the CLI).
pub trait VerifyProgress: Send + Sync {
    /// `total` seals are to be checked.
    fn start(&self, total: u64);
    /// `done` seals have been checked so far.
    fn advance(&self, done: u64);
}

impl VerifyProgress for () {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// An event read back, canonicalized once for every chain it belongs to.
#[derive(Debug)]
struct Recomputed {
    position: i64,
    chain: String,
    stream: StreamRef,
    canonical: Vec<u8>,
}

fn recompute(row: LogRow) -> Result<Recomputed, AuditError> {
    let unreadable = |message: String| AuditError::Unreadable {
        position: row.position.global_position,
        message,
    };
    let payload: serde_json::Value =
        serde_json::from_str(&row.payload).map_err(|e| unreadable(e.to_string()))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&row.metadata).map_err(|e| unreadable(e.to_string()))?;
    let fields = SealedFields {
        aggregate_type: &row.aggregate_type,
        aggregate_id: &row.aggregate_id,
        sequence: row.sequence,
        event_type: &row.event_type,
        event_version: &row.event_version,
        payload: &payload,
        metadata: &metadata,
        recorded_at: row.recorded_at,
        global_position: row.position.global_position,
    };
    let canonical = fields
        .canonical_bytes()
        .map_err(|e| unreadable(e.to_string()))?;
    let chain = workspace_chain(&metadata).to_owned();
    Ok(Recomputed {
        position: row.position.global_position,
        chain,
        stream: StreamRef {
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
        },
        canonical,
    })
}

/// Where a chain and the log first disagree (classified afterwards, with lookups).
#[derive(Debug)]
struct Mismatch {
    seal: Option<Arc<SealLink>>,
    event: Option<Arc<Recomputed>>,
}

/// One chain being recomputed: its seals and its events meet in two queues.
struct ChainWalk {
    global: bool,
    previous: Hash,
    /// A position whose recomputed hash is kept (for [`VerifyOptions::expect`]).
    watch: Option<i64>,
    watched: Option<Hash>,
    seals: VecDeque<Arc<SealLink>>,
    events: VecDeque<Arc<Recomputed>>,
    checked: u64,
    archived: u64,
    through: Option<i64>,
    mismatch: Option<Mismatch>,
}

impl ChainWalk {
    fn new(global: bool, previous: Hash) -> Self {
        Self {
            global,
            previous,
            watch: None,
            watched: None,
            seals: VecDeque::new(),
            events: VecDeque::new(),
            checked: 0,
            archived: 0,
            through: None,
            mismatch: None,
        }
    }

    fn push_seal(&mut self, seal: Arc<SealLink>) {
        if self.mismatch.is_none() {
            self.seals.push_back(seal);
            self.advance();
        }
    }

    fn push_event(&mut self, event: Arc<Recomputed>) {
        if self.mismatch.is_none() {
            self.events.push_back(event);
            self.advance();
        }
    }

    fn advance(&mut self) {
        loop {
            if self.seals.front().is_some_and(|s| s.archived) {
                self.pass_archived();
                if self.mismatch.is_some() {
                    return;
                }
                continue;
            }
            let (Some(seal), Some(event)) = (self.seals.front(), self.events.front()) else {
                return;
            };
            if seal.global_position == event.position {
                let hash = link(&self.previous, &event.canonical);
                let sealed = if self.global {
                    &seal.global_hash
                } else {
                    &seal.workspace_hash
                };
                if sealed.as_slice() == hash.as_slice() {
                    if self.watch == Some(event.position) {
                        self.watched = Some(hash);
                    }
                    self.previous = hash;
                    self.checked += 1;
                    self.through = Some(event.position);
                    self.seals.pop_front();
                    self.events.pop_front();
                    continue;
                }
            }
            self.mismatch = Some(Mismatch {
                seal: self.seals.pop_front(),
                event: self.events.pop_front(),
            });
            self.seals.clear();
            self.events.clear();
            return;
        }
    }

    /// The seal at the front is an archived event's: its stored hash is the link (the
    /// event is not in `events` to recompute it from).
    fn pass_archived(&mut self) {
        let Some(seal) = self.seals.pop_front() else {
            return;
        };
        let sealed = if self.global {
            &seal.global_hash
        } else {
            &seal.workspace_hash
        };
        match super::chain::stored_hash(sealed) {
            Some(hash) => {
                if self.watch == Some(seal.global_position) {
                    self.watched = Some(hash);
                }
                self.previous = hash;
                self.checked += 1;
                self.archived += 1;
                self.through = Some(seal.global_position);
            }
            None => {
                self.mismatch = Some(Mismatch {
                    seal: Some(seal),
                    event: None,
                });
                self.seals.clear();
                self.events.clear();
            }
        }
    }

    /// At the end of both streams: whatever is left unmatched is the mismatch.
    fn finish(&mut self) {
        while self.mismatch.is_none() && self.seals.front().is_some_and(|s| s.archived) {
            self.pass_archived();
        }
        if self.mismatch.is_none() && (!self.seals.is_empty() || !self.events.is_empty()) {
            self.mismatch = Some(Mismatch {
                seal: self.seals.pop_front(),
                event: self.events.pop_front(),
            });
        }
        self.seals.clear();
        self.events.clear();
    }
}

/// The last seal: where the sealed part of the log ends.
async fn last_seal(pool: &PgPool) -> Result<Option<SealRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SEAL_COLUMNS} FROM audit_seals ORDER BY seal_no DESC LIMIT 1"
    ))
    .fetch_optional(pool)
    .await
}

/// The seal `filter` (a condition on `$1`, which is `value`) finds.
async fn seal_where(
    pool: &PgPool,
    filter: &str,
    value: i64,
) -> Result<Option<SealRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SEAL_COLUMNS} FROM audit_seals WHERE {filter}"
    ))
    .bind(value)
    .fetch_optional(pool)
    .await
}

async fn seal_no(pool: &PgPool, seal_no: i64) -> Result<Option<SealRow>, sqlx::Error> {
    seal_where(pool, "seal_no = $1", seal_no).await
}

async fn seal_at(pool: &PgPool, position: i64) -> Result<Option<SealRow>, sqlx::Error> {
    seal_where(pool, "global_position = $1", position).await
}

/// The event now at `position`: its stream and workspace chain. (No index leads there by
/// position alone; this runs at most once per broken chain.)
async fn event_at(
    pool: &PgPool,
    position: i64,
) -> Result<Option<(StreamRef, String)>, sqlx::Error> {
    let row: Option<(String, String, i64, serde_json::Value)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, metadata FROM events WHERE global_position = $1",
    )
    .bind(position)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(aggregate_type, aggregate_id, sequence, metadata)| {
            (
                StreamRef {
                    aggregate_type,
                    aggregate_id,
                    sequence,
                },
                workspace_chain(&metadata).to_owned(),
            )
        }),
    )
}

/// Where the event of `stream` is now, if it still exists.
async fn position_of(pool: &PgPool, stream: &StreamRef) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT global_position FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(&stream.aggregate_type)
    .bind(&stream.aggregate_id)
    .bind(stream.sequence)
    .fetch_optional(pool)
    .await
}

impl Break {
    /// A break at the event `seal` sealed.
    fn at(seal: &SealRow, kind: BreakKind, detail: String) -> Self {
        Self {
            kind,
            position: seal.global_position,
            seal_no: Some(seal.seal_no),
            stream: sealed_stream(seal),
            detail,
        }
    }
}

fn sealed_stream(seal: &SealRow) -> StreamRef {
    StreamRef {
        aggregate_type: seal.aggregate_type.clone(),
        aggregate_id: seal.aggregate_id.clone(),
        sequence: seal.sequence,
    }
}

/// Names a mismatch. `workspace` is the chain's (`None`: global); details never name an
/// event of another workspace.
async fn classify(
    pool: &PgPool,
    m: Mismatch,
    workspace: Option<&str>,
) -> Result<Break, AuditError> {
    let seal =
        match m.seal {
            Some(link) => Some(seal_no(pool, link.seal_no).await?.ok_or(
                AuditError::Unreadable {
                    position: link.global_position,
                    message: format!("seal {} vanished during verification", link.seal_no),
                },
            )?),
            None => None,
        };
    match (seal, m.event) {
        (Some(seal), Some(event)) if seal.global_position == event.position => {
            let sealed = sealed_stream(&seal);
            let (kind, detail) = if event.stream == sealed {
                (
                    BreakKind::Altered,
                    "its bytes differ from the sealed ones".to_owned(),
                )
            } else {
                match position_of(pool, &sealed).await? {
                    Some(now) => (
                        BreakKind::Reordered,
                        format!("the sealed event is now at position {now}"),
                    ),
                    None => (
                        BreakKind::Altered,
                        "another event has taken its place".to_owned(),
                    ),
                }
            };
            Ok(Break::at(&seal, kind, detail))
        }
        (seal, Some(event)) => {
            let sealed_as = seal_at(pool, event.position).await?;
            match (seal, sealed_as) {
                (_, None) => Ok(Break {
                    kind: BreakKind::Inserted,
                    position: event.position,
                    seal_no: None,
                    stream: event.stream.clone(),
                    detail: "it was never sealed".to_owned(),
                }),
                (Some(seal), Some(_)) => missing(pool, &seal, workspace).await,
                (None, Some(sealed_as)) => {
                    // Sealed, but not where this chain has it.
                    let moved_in = workspace.is_some_and(|w| sealed_as.workspace_id != w);
                    Ok(Break {
                        kind: if moved_in {
                            BreakKind::Altered
                        } else {
                            BreakKind::Reordered
                        },
                        position: event.position,
                        seal_no: Some(sealed_as.seal_no),
                        stream: event.stream.clone(),
                        detail: if moved_in {
                            "its workspace was changed to this one".to_owned()
                        } else {
                            "it comes later in the order than it was sealed".to_owned()
                        },
                    })
                }
            }
        }
        (Some(seal), None) => missing(pool, &seal, workspace).await,
        (None, None) => Err(AuditError::Unreadable {
            position: 0,
            message: "an empty mismatch".to_owned(),
        }),
    }
}

/// The sealed event was not found where the chain expected it.
async fn missing(
    pool: &PgPool,
    seal: &SealRow,
    workspace: Option<&str>,
) -> Result<Break, AuditError> {
    let sealed = sealed_stream(seal);
    let (kind, detail) = match event_at(pool, seal.global_position).await? {
        None => match position_of(pool, &sealed).await? {
            None => (BreakKind::Deleted, "no event has its place or its stream position".to_owned()),
            Some(now) => (
                BreakKind::Reordered,
                format!("the sealed event is now at position {now}"),
            ),
        },
        Some((_, chain)) if workspace.is_some_and(|w| w != chain) => (
            BreakKind::Altered,
            "its workspace was changed".to_owned(),
        ),
        Some((found, _)) if found != sealed => (
            BreakKind::Reordered,
            format!("its position now holds {found}"),
        ),
        Some(_) => (
            BreakKind::Reordered,
            "it is still at its position, but at another place in the order (its transaction id changed)".to_owned(),
        ),
    };
    Ok(Break::at(seal, kind, detail))
}

/// Recomputes the chains the options name from `events` and compares them with the seals.
pub async fn verify(
    pool: &PgPool,
    options: &VerifyOptions,
    progress: &dyn VerifyProgress,
) -> Result<Verification, AuditError> {
    let Some(last) = last_seal(pool).await? else {
        return Ok(Verification {
            options: options.clone(),
            chains: Vec::new(),
            sealed_through: None,
            head: None,
        });
    };
    let through = Position {
        transaction_id: last.transaction_id,
        global_position: last.global_position,
    };
    let mut range = Range {
        after: Position::default(),
        through,
        after_seal: 0,
        through_seal: last.seal_no,
        workspace: options.workspace.clone(),
    };
    let mut start = GENESIS;
    if let Some(head) = options.from {
        let seal = seal_at(pool, head.position)
            .await?
            .ok_or(AuditError::UnknownHead(head.position))?;
        if let Some(w) = &options.workspace {
            if &seal.workspace_id != w {
                return Err(AuditError::HeadOfAnotherChain(head.position));
            }
        }
        let (stored, after_seal) = match options.workspace {
            Some(_) => (&seal.workspace_hash, seal.workspace_seq),
            None => (&seal.global_hash, seal.seal_no),
        };
        if stored.as_slice() != head.hash.as_slice() {
            let broken = Break::at(
                &seal,
                BreakKind::HeadMismatch,
                format!(
                    "the stored chain has {} here, not the kept head's hash: the chain was rewritten up to here",
                    hex::encode(stored)
                ),
            );
            return Ok(Verification {
                options: options.clone(),
                chains: vec![ChainReport {
                    workspace: options.workspace.clone(),
                    checked: 0,
                    through: None,
                    archived: 0,
                    first_bad: Some(broken),
                }],
                sealed_through: Some(last.global_position),
                head: None,
            });
        }
        range.after = Position {
            transaction_id: seal.transaction_id,
            global_position: seal.global_position,
        };
        range.after_seal = after_seal;
        start = head.hash;
    }
    // A kept head to pass through: it must be a sealed position of the chain verified.
    let expected = match options.expect {
        None => None,
        Some(head) => {
            let seal = seal_at(pool, head.position)
                .await?
                .ok_or(AuditError::UnknownHead(head.position))?;
            if options
                .workspace
                .as_ref()
                .is_some_and(|w| &seal.workspace_id != w)
            {
                return Err(AuditError::HeadOfAnotherChain(head.position));
            }
            Some((head, seal))
        }
    };
    let total = match &options.workspace {
        None => last.seal_no - range.after_seal,
        Some(w) => {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM audit_seals WHERE workspace_id = $1 AND workspace_seq > $2 AND seal_no <= $3",
            )
            .bind(w)
            .bind(range.after_seal)
            .bind(last.seal_no)
            .fetch_one(pool)
            .await?
        }
    };
    progress.start(total.max(0) as u64);

    // The global chain (unless one workspace is asked for), and the workspace chains.
    let mut global = options
        .workspace
        .is_none()
        .then(|| ChainWalk::new(true, start));
    if let Some(g) = global.as_mut() {
        g.watch = expected.as_ref().map(|(head, _)| head.position);
    }
    // A workspace chain watches for the kept head when it is the one chain verified.
    let watch = expected
        .as_ref()
        .filter(|_| options.workspace.is_some())
        .map(|(head, _)| head.position);
    let mut workspaces: HashMap<String, ChainWalk> = HashMap::new();
    // With `--from`, only the chain the head belongs to is checked.
    let workspace_chains = options.from.is_none() || options.workspace.is_some();
    let mut seals = Items::new(read::seals(pool, &range));
    let mut events = Items::new(read::map_chunks(read::events(pool, &range), recompute));
    let mut done: u64 = 0;
    loop {
        let seal = seals.next().await?.map(Arc::new);
        let event = events.next().await?.map(Arc::new);
        if seal.is_none() && event.is_none() {
            break;
        }
        if let Some(g) = global.as_mut() {
            if let Some(s) = &seal {
                g.push_seal(s.clone());
            }
            if let Some(e) = &event {
                g.push_event(e.clone());
            }
        }
        if workspace_chains {
            if let Some(s) = seal {
                let pushed = s.clone();
                in_chain(&mut workspaces, &s.workspace_id, start, watch, |w| {
                    w.push_seal(pushed)
                });
            }
            if let Some(e) = event {
                let pushed = e.clone();
                in_chain(&mut workspaces, &e.chain, start, watch, |w| {
                    w.push_event(pushed)
                });
            }
        }
        done += 1;
        if done % 4096 == 0 {
            progress.advance(done);
        }
    }
    progress.advance(total.max(0) as u64);

    let mut chains = Vec::new();
    let mut head = None;
    if let Some(mut g) = global {
        g.finish();
        if g.mismatch.is_none() {
            head = g.through.map(|position| KeptHead {
                position,
                hash: g.previous,
            });
        }
        chains.push(report(pool, None, g, expected.as_ref()).await?);
    }
    let mut names: Vec<String> = workspaces.keys().cloned().collect();
    names.sort();
    for name in names {
        if let Some(mut w) = workspaces.remove(&name) {
            w.finish();
            if options.workspace.is_some() && w.mismatch.is_none() {
                head = w.through.map(|position| KeptHead {
                    position,
                    hash: w.previous,
                });
            }
            let expect = expected.as_ref().filter(|_| options.workspace.is_some());
            chains.push(report(pool, Some(name), w, expect).await?);
        }
    }
    if let (Some(w), true) = (&options.workspace, chains.is_empty()) {
        // Nothing of this workspace is sealed (after the head): an empty, intact chain.
        chains.push(ChainReport {
            workspace: Some(w.clone()),
            checked: 0,
            through: None,
            archived: 0,
            first_bad: None,
        });
    }
    Ok(Verification {
        options: options.clone(),
        chains,
        sealed_through: Some(last.global_position),
        head,
    })
}

/// The walk of workspace chain `name`, begun from `start` when first seen; `step` is
/// applied to it (a name is copied only for a chain not seen before).
fn in_chain(
    walks: &mut HashMap<String, ChainWalk>,
    name: &str,
    start: Hash,
    watch: Option<i64>,
    step: impl FnOnce(&mut ChainWalk),
) {
    match walks.get_mut(name) {
        Some(walk) => step(walk),
        None => {
            let mut walk = ChainWalk::new(false, start);
            walk.watch = watch;
            step(&mut walk);
            walks.insert(name.to_owned(), walk);
        }
    }
}

async fn report(
    pool: &PgPool,
    workspace: Option<String>,
    walk: ChainWalk,
    expect: Option<&(KeptHead, SealRow)>,
) -> Result<ChainReport, AuditError> {
    // A kept head the recomputed chain passed with another hash comes first: everything
    // before it matched the seals, so history and seals were rewritten together.
    let head_broken = expect.and_then(|(head, seal)| {
        let broken = |detail: String| Break::at(seal, BreakKind::HeadMismatch, detail);
        match walk.watched {
            Some(hash) if hash == head.hash => None,
            Some(hash) => Some(broken(format!(
                "the recomputed chain has {} here, not the kept head's hash: \
                 history and seals up to here were rewritten",
                hex::encode(hash)
            ))),
            // Not reached: the walk broke before it, and that is the first bad event.
            None if walk.mismatch.is_some() => None,
            None => Some(broken(
                "the verified part of the chain does not reach the kept head".to_owned(),
            )),
        }
    });
    let first_bad = match (head_broken, walk.mismatch) {
        (Some(b), _) => Some(b),
        (None, Some(m)) => Some(classify(pool, m, workspace.as_deref()).await?),
        (None, None) => None,
    };
    Ok(ChainReport {
        workspace,
        checked: walk.checked,
        through: walk.through,
        archived: walk.archived,
        first_bad,
    })
}

/// Stores the outcome, one `audit_verifications` row per chain checked (the API shows a
/// workspace its own chain's latest).
pub async fn record(pool: &PgPool, verification: &Verification) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for chain in &verification.chains {
        let bad = chain.first_bad.as_ref();
        sqlx::query(
            "INSERT INTO audit_verifications (workspace_id, from_position, through_position, \
                 events_checked, ok, first_bad_kind, first_bad_position, first_bad) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&chain.workspace)
        .bind(verification.options.from.map(|h| h.position))
        .bind(chain.through)
        .bind(chain.checked as i64)
        .bind(bad.is_none())
        .bind(bad.map(|b| b.kind.as_str()))
        .bind(bad.map(|b| b.position))
        .bind(bad.map(|b| b.to_string()))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// The bench's baseline: the same query as [`verify`] over the whole sealed log, hashing
/// each row's bytes as read (`SHA-256(previous || row bytes)`) with no parsing, no
/// canonical form and no seals. Returns the rows read and the last hash.
pub async fn bare_pass(pool: &PgPool) -> Result<(u64, Hash), AuditError> {
    use sha2::{Digest, Sha256};
    let Some(last) = last_seal(pool).await? else {
        return Ok((0, GENESIS));
    };
    let range = Range {
        after: Position::default(),
        through: Position {
            transaction_id: last.transaction_id,
            global_position: last.global_position,
        },
        after_seal: 0,
        through_seal: last.seal_no,
        workspace: None,
    };
    let mut events = Items::new(read::events(pool, &range));
    let mut previous = GENESIS;
    let mut rows = 0;
    while let Some(row) = events.next().await? {
        let mut h = Sha256::new();
        h.update(previous);
        h.update(row.position.global_position.to_be_bytes());
        h.update(row.aggregate_type.as_bytes());
        h.update(row.aggregate_id.as_bytes());
        h.update(row.sequence.to_be_bytes());
        h.update(row.event_type.as_bytes());
        h.update(row.event_version.as_bytes());
        h.update(row.payload.as_bytes());
        h.update(row.metadata.as_bytes());
        h.update(row.recorded_at.timestamp_micros().to_be_bytes());
        previous = h.finalize().into();
        rows += 1;
    }
    Ok((rows, previous))
}

/// How many events follow the last seal (not in the chain yet: the sealer's lag).
pub async fn unsealed(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let after = last_seal(pool)
        .await?
        .map(|s| (s.transaction_id, s.global_position))
        .unwrap_or((0, 0));
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
    )
    .bind(after.0.to_string())
    .bind(after.1)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, bytes: &str) -> Arc<Recomputed> {
        Arc::new(Recomputed {
            position,
            chain: "acme".to_owned(),
            stream: StreamRef {
                aggregate_type: "tenant".to_owned(),
                aggregate_id: format!("acme:{position}"),
                sequence: 1,
            },
            canonical: bytes.as_bytes().to_vec(),
        })
    }

    /// Seals for `events` as the sealer would write them (both chains the same here).
    fn sealed(events: &[Arc<Recomputed>]) -> Vec<Arc<SealLink>> {
        let mut previous = GENESIS;
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                previous = link(&previous, &e.canonical);
                Arc::new(SealLink {
                    seal_no: i as i64 + 1,
                    global_position: e.position,
                    workspace_id: e.chain.clone(),
                    workspace_hash: previous.to_vec(),
                    global_hash: previous.to_vec(),
                    archived: false,
                })
            })
            .collect()
    }

    fn walk(seals: &[Arc<SealLink>], events: &[Arc<Recomputed>]) -> ChainWalk {
        let mut w = ChainWalk::new(true, GENESIS);
        for i in 0..seals.len().max(events.len()) {
            if let Some(s) = seals.get(i) {
                w.push_seal(s.clone());
            }
            if let Some(e) = events.get(i) {
                w.push_event(e.clone());
            }
        }
        w.finish();
        w
    }

    fn log() -> Vec<Arc<Recomputed>> {
        (1..=5).map(|p| event(p, &format!("event {p}"))).collect()
    }

    #[test]
    fn an_untouched_chain_walks_to_its_end() {
        let events = log();
        let w = walk(&sealed(&events), &events);
        assert!(w.mismatch.is_none());
        assert_eq!((w.checked, w.through), (5, Some(5)));
    }

    #[test]
    fn changed_bytes_stop_the_walk_at_that_seal() {
        let events = log();
        let seals = sealed(&events);
        let mut changed = events.clone();
        changed[2] = event(3, "event 3, changed");
        let w = walk(&seals, &changed);
        let m = w.mismatch.unwrap();
        assert_eq!(m.seal.unwrap().global_position, 3);
        assert_eq!(m.event.unwrap().position, 3);
        assert_eq!(w.checked, 2);
    }

    #[test]
    fn a_missing_event_meets_the_next_one_at_its_seal() {
        let events = log();
        let seals = sealed(&events);
        let mut gone = events.clone();
        gone.remove(1);
        let m = walk(&seals, &gone).mismatch.unwrap();
        assert_eq!(
            (m.seal.unwrap().global_position, m.event.unwrap().position),
            (2, 3)
        );
    }

    #[test]
    fn what_is_left_over_at_the_end_is_the_mismatch() {
        let events = log();
        let seals = sealed(&events);
        let m = walk(&seals, &events[..4]).mismatch.unwrap();
        assert_eq!(m.seal.unwrap().global_position, 5);
        assert!(m.event.is_none());
        let mut more = events.clone();
        more.push(event(6, "event 6"));
        let m = walk(&seals, &more).mismatch.unwrap();
        assert!(m.seal.is_none());
        assert_eq!(m.event.unwrap().position, 6);
    }

    #[test]
    fn kept_heads_read_and_print_as_position_and_hex() {
        let head = KeptHead {
            position: 42,
            hash: link(&GENESIS, b"x"),
        };
        assert_eq!(head.to_string().parse::<KeptHead>(), Ok(head));
        assert!("42".parse::<KeptHead>().is_err());
        assert!("x:00".parse::<KeptHead>().is_err());
    }
}
