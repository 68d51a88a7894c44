//! Retention and archival of closed run histories (issue 13, item 3).
//!
//! A run whose history is closed (it completed) longer ago than its workspace's retention
//! ([`DEFAULT_RUN_RETENTION_DAYS`] unless `run_retention` says otherwise) is archived: its
//! stream's events are written, each with its seal (position in both chains, the hashes
//! before and after it), to a gzip-compressed NDJSON segment with a manifest beside it;
//! the segment is fsynced, read back and checked against the chain; only then, in one
//! transaction, are the events removed from `events` (through the append-only trigger's one
//! exception: a DELETE of a stream recorded in `archived_streams` for the archive the
//! session names in `tenantflow.archive`), with a summary of each run kept for the read
//! models (`archived_runs`). Tenant, connection, contact and mailbox streams are never
//! archived: only `operation_run` streams are.
//!
//! The seals stay: they are the chain's links, so `verify` walks the live chain past an
//! archived event on its seal, and [`verify_archives`] recomputes the archived events'
//! links from the segments and checks they are those seals.

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

use crate::audit::chain::{link, stored_hash, workspace_chain, Hash, SealedFields, GENESIS};

/// How long a closed run's history stays in the hot log unless its workspace says
/// otherwise (`run_retention`).
pub const DEFAULT_RUN_RETENTION_DAYS: i32 = 90;

/// The only streams archived: operation runs. A tenant's, connection's, contact's or
/// mailbox's stream is never dropped.
pub const ARCHIVED_STREAM_TYPE: &str = "operation_run";

/// Why archival (or checking archives) could not be done. Nothing was removed from the log.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot write or read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the segment {file} does not read back as written ({problem}); nothing was removed from the log")]
    ReadBack { file: String, problem: String },
    #[error("the log changed while archiving: {written} events were archived but {found} were found to remove; nothing was removed")]
    Changed { written: u64, found: u64 },
    #[error("the event at position {position} cannot be archived: {message}")]
    Unreadable { position: i64, message: String },
    #[error("a retention of {0} days is not possible (0 or more)")]
    BadRetention(i64),
    #[error("the segment's manifest {path} cannot be written: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What to archive and where.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub dir: PathBuf,
    /// Only say what would be archived.
    pub dry_run: bool,
    /// Runs closed before `now` minus their workspace's retention are expired.
    pub now: DateTime<Utc>,
    /// At most this many runs in one segment.
    pub max_runs: i64,
}

/// What an archival did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct ArchiveOutcome {
    pub runs: u64,
    pub events: u64,
    /// The segment written (none when nothing had expired, or dry).
    pub manifest: Option<Manifest>,
    pub segment: Option<PathBuf>,
    /// The segment's size on disk.
    pub bytes: u64,
}

/// The manifest written beside a segment (`<segment>.manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub archive_id: Uuid,
    /// The segment's file name (in the same directory).
    pub file: String,
    /// SHA-256 of the segment file's bytes (hex).
    pub sha256: String,
    pub events: u64,
    pub streams: u64,
    pub first_position: i64,
    pub last_position: i64,
    pub first_seal: i64,
    pub last_seal: i64,
    /// The global chain's hash before the segment's first event (hex): where the
    /// segment's first link hangs on the live chain.
    pub chain_before: String,
    /// The global chain's hash at the segment's last event (hex).
    pub chain_through: String,
    pub archived_at: DateTime<Utc>,
}

/// One archived event: the stored fields and its seal, the hashes before and after it in
/// both chains (hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedEvent {
    pub seal_no: i64,
    pub global_position: i64,
    pub transaction_id: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    pub workspace_id: String,
    pub workspace_seq: i64,
    pub global_before: String,
    pub global_hash: String,
    pub workspace_before: String,
    pub workspace_hash: String,
}

impl ArchivedEvent {
    /// Recomputes both links from the event's bytes and the hashes before it; the first
    /// that differs from the recorded one, if any.
    fn check_links(&self) -> Result<(), String> {
        let fields = SealedFields {
            aggregate_id: &self.aggregate_id,
            aggregate_type: &self.aggregate_type,
            event_type: &self.event_type,
            event_version: &self.event_version,
            global_position: self.global_position,
            metadata: &self.metadata,
            payload: &self.payload,
            recorded_at: self.recorded_at,
            sequence: self.sequence,
        };
        let canonical = fields.canonical_bytes().map_err(|e| e.to_string())?;
        if workspace_chain(&self.metadata) != self.workspace_id {
            return Err("its workspace is not the chain it was sealed in".to_owned());
        }
        for (chain, before, after) in [
            ("global", &self.global_before, &self.global_hash),
            ("workspace", &self.workspace_before, &self.workspace_hash),
        ] {
            let before = hex_hash(before).ok_or("a hash is not 64 hex digits")?;
            if hex::encode(link(&before, &canonical)) != *after {
                return Err(format!("its bytes do not give the sealed {chain} hash"));
            }
        }
        Ok(())
    }
}

fn hex_hash(s: &str) -> Option<Hash> {
    crate::audit::chain::parse_hash(s)
}

fn hash_of(bytes: &[u8], position: i64) -> Result<Hash, ArchiveError> {
    stored_hash(bytes).ok_or(ArchiveError::Unreadable {
        position,
        message: "its seal's hash is not 32 bytes".to_owned(),
    })
}

/// Sets a workspace's retention of closed run histories (days; 0 archives every closed
/// run at the next archival).
pub async fn set_retention(pool: &PgPool, workspace: &str, days: i64) -> Result<(), ArchiveError> {
    let days = i32::try_from(days)
        .ok()
        .filter(|d| *d >= 0)
        .ok_or(ArchiveError::BadRetention(days))?;
    sqlx::query(
        "INSERT INTO run_retention (workspace_id, days) VALUES ($1, $2) \
         ON CONFLICT (workspace_id) DO UPDATE SET days = EXCLUDED.days, updated_at = now()",
    )
    .bind(workspace)
    .bind(days)
    .execute(pool)
    .await?;
    Ok(())
}

/// The expired runs whose every event is sealed, oldest first: their ids.
async fn expired_runs(pool: &PgPool, options: &ArchiveOptions) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT r.run_id FROM rm_runs r \
         LEFT JOIN run_retention rr ON rr.workspace_id = r.workspace_id \
         WHERE r.completed_at IS NOT NULL \
           AND r.completed_at <= $1 - make_interval(days => coalesce(rr.days, $2)) \
           AND NOT EXISTS (SELECT 1 FROM archived_runs a WHERE a.run_id = r.run_id) \
           AND NOT EXISTS (SELECT 1 FROM events e LEFT JOIN audit_seals s ON s.global_position = e.global_position \
                           WHERE e.aggregate_type = $3 AND e.aggregate_id = r.run_id::text AND s.seal_no IS NULL) \
         ORDER BY r.completed_at, r.run_id LIMIT $4",
    )
    .bind(options.now)
    .bind(DEFAULT_RUN_RETENTION_DAYS)
    .bind(ARCHIVED_STREAM_TYPE)
    .bind(options.max_runs)
    .fetch_all(pool)
    .await
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    seal_no: i64,
    global_position: i64,
    transaction_id: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: serde_json::Value,
    metadata: serde_json::Value,
    recorded_at: DateTime<Utc>,
    workspace_id: String,
    workspace_seq: i64,
    global_hash: Vec<u8>,
    workspace_hash: Vec<u8>,
    global_before: Option<Vec<u8>>,
    workspace_before: Option<Vec<u8>>,
}

/// The runs' events with their seals, in the order sealed.
async fn sealed_events(pool: &PgPool, runs: &[String]) -> Result<Vec<ArchivedEvent>, ArchiveError> {
    let rows: Vec<SealedRow> = sqlx::query_as(
        "SELECT s.seal_no, e.global_position, e.transaction_id::text::bigint AS transaction_id, \
             e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
             e.payload, e.metadata, e.recorded_at, s.workspace_id, s.workspace_seq, \
             s.global_hash, s.workspace_hash, \
             (SELECT p.global_hash FROM audit_seals p WHERE p.seal_no = s.seal_no - 1) AS global_before, \
             (SELECT p.workspace_hash FROM audit_seals p \
                 WHERE p.workspace_id = s.workspace_id AND p.workspace_seq = s.workspace_seq - 1) AS workspace_before \
         FROM events e JOIN audit_seals s ON s.global_position = e.global_position \
         WHERE e.aggregate_type = $1 AND e.aggregate_id = ANY($2) \
         ORDER BY s.seal_no",
    )
    .bind(ARCHIVED_STREAM_TYPE)
    .bind(runs)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let position = r.global_position;
            let before = |h: Option<Vec<u8>>| -> Result<String, ArchiveError> {
                Ok(hex::encode(match h {
                    Some(bytes) => hash_of(&bytes, position)?,
                    None => GENESIS,
                }))
            };
            Ok(ArchivedEvent {
                global_hash: hex::encode(hash_of(&r.global_hash, position)?),
                workspace_hash: hex::encode(hash_of(&r.workspace_hash, position)?),
                global_before: before(r.global_before)?,
                workspace_before: before(r.workspace_before)?,
                seal_no: r.seal_no,
                global_position: r.global_position,
                transaction_id: r.transaction_id,
                aggregate_type: r.aggregate_type,
                aggregate_id: r.aggregate_id,
                sequence: r.sequence,
                event_type: r.event_type,
                event_version: r.event_version,
                payload: r.payload,
                metadata: r.metadata,
                recorded_at: r.recorded_at,
                workspace_id: r.workspace_id,
                workspace_seq: r.workspace_seq,
            })
        })
        .collect()
}

/// Archives expired run histories: one segment of at most `max_runs` runs. Nothing is
/// removed from the log unless the segment and its manifest were written, fsynced, read
/// back and found to hold exactly the events removed, each linking into the chain.
pub async fn archive(
    pool: &PgPool,
    options: &ArchiveOptions,
) -> Result<ArchiveOutcome, ArchiveError> {
    let runs = expired_runs(pool, options).await?;
    if runs.is_empty() {
        return Ok(ArchiveOutcome::default());
    }
    let ids: Vec<String> = runs.iter().map(Uuid::to_string).collect();
    let events = sealed_events(pool, &ids).await?;
    let mut per_stream: BTreeMap<&str, i64> = BTreeMap::new();
    for e in &events {
        *per_stream.entry(e.aggregate_id.as_str()).or_default() += 1;
    }
    if options.dry_run {
        return Ok(ArchiveOutcome {
            runs: runs.len() as u64,
            events: events.len() as u64,
            ..ArchiveOutcome::default()
        });
    }
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(ArchiveOutcome::default());
    };
    fs::create_dir_all(&options.dir).map_err(io_err(&options.dir))?;
    let archive_id = Uuid::now_v7();
    let file = format!(
        "runs-{}-{}.ndjson.gz",
        options.now.format("%Y%m%dT%H%M%SZ"),
        archive_id.simple()
    );
    let path = options.dir.join(&file);
    write_segment(&path, &events)?;
    // Read back from the disk: every event there, in order, each linking as sealed.
    let read_back = check_segment(&path, &file)?;
    if !read_back.seals.iter().eq(events.iter().map(|e| &e.seal_no)) {
        return Err(ArchiveError::ReadBack {
            file,
            problem: "it does not hold the events written".to_owned(),
        });
    }
    let sha256 = read_back.sha256;
    let manifest = Manifest {
        archive_id,
        file: file.clone(),
        sha256,
        events: events.len() as u64,
        streams: per_stream.len() as u64,
        first_position: events
            .iter()
            .map(|e| e.global_position)
            .min()
            .unwrap_or(first.global_position),
        last_position: events
            .iter()
            .map(|e| e.global_position)
            .max()
            .unwrap_or(last.global_position),
        first_seal: first.seal_no,
        last_seal: last.seal_no,
        chain_before: first.global_before.clone(),
        chain_through: last.global_hash.clone(),
        archived_at: options.now,
    };
    write_manifest(&options.dir, &manifest)?;
    let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
    remove_archived(pool, &manifest, &per_stream).await?;
    tracing::info!(
        archive = %archive_id,
        runs = runs.len(),
        events = manifest.events,
        bytes,
        file = %path.display(),
        "closed run histories archived"
    );
    Ok(ArchiveOutcome {
        runs: runs.len() as u64,
        events: manifest.events,
        manifest: Some(manifest),
        segment: Some(path),
        bytes,
    })
}

/// Writes the segment under a temporary name, fsyncs it, renames it into place and fsyncs
/// the directory: after this returns, the segment survives a crash.
fn write_segment(path: &Path, events: &[ArchivedEvent]) -> Result<(), ArchiveError> {
    let partial = path.with_extension("gz.partial");
    let out = File::create(&partial).map_err(io_err(&partial))?;
    let mut gz = GzEncoder::new(BufWriter::new(out), Compression::default());
    for e in events {
        let line = serde_json::to_vec(e).map_err(|source| ArchiveError::Unreadable {
            position: e.global_position,
            message: source.to_string(),
        })?;
        gz.write_all(&line).map_err(io_err(&partial))?;
        gz.write_all(b"\n").map_err(io_err(&partial))?;
    }
    let out = gz.finish().map_err(io_err(&partial))?;
    let out = out
        .into_inner()
        .map_err(|e| io_err(&partial)(e.into_error()))?;
    out.sync_all().map_err(io_err(&partial))?;
    durable_rename(&partial, path)
}

fn durable_rename(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    fs::rename(from, to).map_err(io_err(to))?;
    let dir = to.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn manifest_path(dir: &Path, file: &str) -> PathBuf {
    dir.join(format!("{file}.manifest.json"))
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ArchiveError> {
    let path = manifest_path(dir, &manifest.file);
    let partial = path.with_extension("json.partial");
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|source| ArchiveError::Manifest {
        path: path.clone(),
        source,
    })?;
    let mut out = File::create(&partial).map_err(io_err(&partial))?;
    out.write_all(&bytes).map_err(io_err(&partial))?;
    out.sync_all().map_err(io_err(&partial))?;
    durable_rename(&partial, &path)
}

/// What reading a segment back found.
#[derive(Debug)]
struct SegmentRead {
    sha256: String,
    /// The seal numbers of the events read, in file order.
    seals: Vec<i64>,
}

/// Reads a segment: its SHA-256, and every event with its links recomputed.
fn check_segment(path: &Path, file: &str) -> Result<SegmentRead, ArchiveError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let mut seals = Vec::new();
    let problem = |problem: String| ArchiveError::ReadBack {
        file: file.to_owned(),
        problem,
    };
    let reader = BufReader::new(GzDecoder::new(&bytes[..]));
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| problem(format!("line {}: {e}", n + 1)))?;
        let event: ArchivedEvent =
            serde_json::from_str(&line).map_err(|e| problem(format!("line {}: {e}", n + 1)))?;
        event.check_links().map_err(|p| {
            problem(format!(
                "the event at position {}: {p}",
                event.global_position
            ))
        })?;
        seals.push(event.seal_no);
    }
    Ok(SegmentRead { sha256, seals })
}

/// Records the archive and removes its streams' events, in one transaction.
async fn remove_archived(
    pool: &PgPool,
    manifest: &Manifest,
    per_stream: &BTreeMap<&str, i64>,
) -> Result<(), ArchiveError> {
    let ids: Vec<&str> = per_stream.keys().copied().collect();
    let counts: Vec<i64> = per_stream.values().copied().collect();
    let sha = hex::decode(&manifest.sha256).unwrap_or_default();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO event_archives (archive_id, file_name, sha256, events, streams, \
             first_position, last_position, first_seal, last_seal, archived_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(manifest.archive_id)
    .bind(&manifest.file)
    .bind(sha)
    .bind(manifest.events as i64)
    .bind(manifest.streams as i64)
    .bind(manifest.first_position)
    .bind(manifest.last_position)
    .bind(manifest.first_seal)
    .bind(manifest.last_seal)
    .bind(manifest.archived_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO archived_streams (aggregate_type, aggregate_id, archive_id, events) \
         SELECT $1, i, $2, n FROM UNNEST($3::text[], $4::bigint[]) AS s(i, n)",
    )
    .bind(ARCHIVED_STREAM_TYPE)
    .bind(manifest.archive_id)
    .bind(&ids)
    .bind(&counts)
    .execute(&mut *tx)
    .await?;
    // The runs' summaries: the read model's row as it is, and one audit row in place of
    // the run's many (at its last event's position, which nothing else will take).
    sqlx::query(
        "INSERT INTO archived_runs (run_id, workspace_id, archive_id, run_row, audit_row) \
         SELECT r.run_id, r.workspace_id, $1, to_jsonb(r), \
             (SELECT to_jsonb(a) || jsonb_build_object('action', 'RunArchived', 'details', \
                  jsonb_build_object('archive', $3::text, 'events', count(*) OVER ())) \
              FROM rm_audit_log a WHERE a.aggregate_type = $4 AND a.aggregate_id = r.run_id::text \
              ORDER BY a.global_position DESC LIMIT 1) \
         FROM rm_runs r WHERE r.run_id::text = ANY($2)",
    )
    .bind(manifest.archive_id)
    .bind(&ids)
    .bind(&manifest.file)
    .bind(ARCHIVED_STREAM_TYPE)
    .execute(&mut *tx)
    .await?;
    // The append-only trigger lets this transaction delete exactly the streams recorded
    // above for this archive, and nothing else.
    sqlx::query("SELECT set_config('tenantflow.archive', $1, true)")
        .bind(manifest.archive_id.to_string())
        .execute(&mut *tx)
        .await?;
    let removed =
        sqlx::query("DELETE FROM events WHERE aggregate_type = $1 AND aggregate_id = ANY($2)")
            .bind(ARCHIVED_STREAM_TYPE)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if removed != manifest.events {
        tx.rollback().await?;
        return Err(ArchiveError::Changed {
            written: manifest.events,
            found: removed,
        });
    }
    // A stream's first sequence stays claimed: the stream cannot be created again.
    sqlx::query(
        "DELETE FROM stream_sequences WHERE aggregate_type = $1 AND aggregate_id = ANY($2) AND sequence > 1",
    )
    .bind(ARCHIVED_STREAM_TYPE)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT tenantflow_summarize_archived_runs($1)")
        .bind(manifest.archive_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A problem an archive check found, naming the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveProblem {
    pub file: String,
    pub detail: String,
}

impl std::fmt::Display for ArchiveProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.detail)
    }
}

/// The outcome of checking a directory of segments against the live chain.
#[derive(Debug, Clone, Default)]
pub struct ArchiveVerification {
    pub segments: u64,
    pub events: u64,
    pub problems: Vec<ArchiveProblem>,
}

impl ArchiveVerification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

type ArchiveRow = (Uuid, String, Vec<u8>, i64);

/// Checks every archive the log records against the segments in `dir`: the segment is
/// there, its SHA-256 is its manifest's and the recorded one, every event's links
/// recompute from its bytes, its hashes are the live seals at its seal numbers, and the
/// hashes before it are the live seals before it (so each segment hangs on the live chain
/// where its events were sealed); and the segment holds every sealed event of its streams.
pub async fn verify_archives(
    pool: &PgPool,
    dir: &Path,
) -> Result<ArchiveVerification, ArchiveError> {
    let archives: Vec<ArchiveRow> = sqlx::query_as(
        "SELECT archive_id, file_name, sha256, events FROM event_archives ORDER BY archived_at, archive_id",
    )
    .fetch_all(pool)
    .await?;
    let mut report = ArchiveVerification::default();
    for (archive_id, file, sha, events) in archives {
        report.segments += 1;
        let mut problem = |detail: String| {
            report.problems.push(ArchiveProblem {
                file: file.clone(),
                detail,
            })
        };
        let path = dir.join(&file);
        let manifest: Option<Manifest> = fs::read(manifest_path(dir, &file))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match &manifest {
            None => problem("its manifest is missing or unreadable".to_owned()),
            Some(m) if m.archive_id != archive_id || m.events != events as u64 => {
                problem("its manifest is not the one recorded for it".to_owned())
            }
            Some(_) => {}
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                problem(format!("the segment cannot be read: {e}"));
                continue;
            }
        };
        let digest = Sha256::digest(&bytes);
        if digest.as_slice() != sha.as_slice() {
            problem(
                "its SHA-256 is not the one recorded when it was archived (the file was changed)"
                    .to_owned(),
            );
        }
        if manifest
            .as_ref()
            .is_some_and(|m| m.sha256 != hex::encode(digest))
        {
            problem("its SHA-256 is not its manifest's".to_owned());
        }
        let mut read = Vec::new();
        if let Err(e) = GzDecoder::new(&bytes[..]).read_to_end(&mut read) {
            problem(format!("it does not decompress: {e}"));
            continue;
        }
        let mut found = 0u64;
        let mut links: Vec<ArchivedEvent> = Vec::new();
        for (n, line) in read.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<ArchivedEvent>(line) {
                Ok(e) => {
                    if let Err(p) = e.check_links() {
                        problem(format!(
                            "altered event at position {} ({} {} #{}): {p}",
                            e.global_position, e.aggregate_type, e.aggregate_id, e.sequence
                        ));
                    }
                    found += 1;
                    links.push(e);
                }
                Err(e) => problem(format!("line {} is not an archived event: {e}", n + 1)),
            }
        }
        if found != events as u64 {
            problem(format!("it holds {found} events; {events} were archived"));
        }
        for p in live_links(pool, archive_id, &links).await? {
            problem(p);
        }
        report.events += found;
    }
    Ok(report)
}

/// Compares the archived events' links with the live seals: their own, the ones before
/// them, and that every sealed event of the archive's streams is in the segment.
async fn live_links(
    pool: &PgPool,
    archive_id: Uuid,
    links: &[ArchivedEvent],
) -> Result<Vec<String>, sqlx::Error> {
    type Live = (
        i64,
        i64,
        String,
        String,
        i64,
        Vec<u8>,
        Vec<u8>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let live: Vec<Live> = sqlx::query_as(
        "SELECT s.seal_no, s.global_position, s.aggregate_id, s.workspace_id, s.sequence, \
             s.global_hash, s.workspace_hash, \
             (SELECT p.global_hash FROM audit_seals p WHERE p.seal_no = s.seal_no - 1), \
             (SELECT p.workspace_hash FROM audit_seals p \
                 WHERE p.workspace_id = s.workspace_id AND p.workspace_seq = s.workspace_seq - 1) \
         FROM archived_streams a JOIN audit_seals s \
             ON s.aggregate_type = a.aggregate_type AND s.aggregate_id = a.aggregate_id \
         WHERE a.archive_id = $1 ORDER BY s.seal_no",
    )
    .bind(archive_id)
    .fetch_all(pool)
    .await?;
    let by_seal: HashMap<i64, &ArchivedEvent> = links.iter().map(|e| (e.seal_no, e)).collect();
    let mut problems = Vec::new();
    let hex_or_genesis = |h: &Option<Vec<u8>>| hex::encode(h.as_deref().unwrap_or(&GENESIS));
    for (
        seal_no,
        position,
        aggregate_id,
        workspace,
        sequence,
        global,
        ws,
        global_before,
        ws_before,
    ) in &live
    {
        let Some(e) = by_seal.get(seal_no) else {
            problems.push(format!(
                "deleted event at position {position} (operation_run {aggregate_id} #{sequence}): sealed, archived, and not in the segment"
            ));
            continue;
        };
        let linked = e.global_position == *position
            && e.workspace_id == *workspace
            && e.global_hash == hex::encode(global)
            && e.workspace_hash == hex::encode(ws)
            && e.global_before == hex_or_genesis(global_before)
            && e.workspace_before == hex_or_genesis(ws_before);
        if !linked {
            problems.push(format!(
                "the event at position {position} (operation_run {aggregate_id} #{sequence}) does not link into the live chain at seal {seal_no}"
            ));
        }
    }
    if live.len() < links.len() {
        problems.push(format!(
            "inserted: it holds {} events of which the live chain sealed {}",
            links.len(),
            live.len()
        ));
    }
    Ok(problems)
}
