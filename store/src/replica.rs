//! Reads from a streaming replica (`database_read_url`), within a staleness bound, with
//! read-your-writes for whoever wrote.
//!
//! A sampler asks the primary for its WAL position and the replica for the position it has
//! replayed, once per `sample_every`; the replica's staleness is how long ago the primary
//! was at the newest position the replica has replayed (an upper bound, to one sample).
//! While that is over `max_lag` (or the replica cannot be asked), reads go to the primary.
//! After a caller writes, the primary's position is noted for it, and its reads go to the
//! primary until the replica has replayed that far; each such read moves the mark to the
//! primary's position then, so the caller never sees less than it saw: its own write, and
//! the read models' catching up with it, as on the primary.

use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A WAL position, in bytes from the start.
pub type Lsn = i64;

/// How a replica is used.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaOptions {
    /// Reads go to the primary while the replica is further behind than this.
    pub max_lag: Duration,
    /// How often the replica's position is sampled.
    pub sample_every: Duration,
    /// How long a caller's write is remembered (after that its reads take the replica
    /// as any other's, within `max_lag`).
    pub remember_writes: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            max_lag: Duration::from_secs(5),
            sample_every: Duration::from_millis(250),
            remember_writes: Duration::from_secs(60),
        }
    }
}

/// The primary's positions over the last while, and the replica's replayed one.
#[derive(Debug, Default)]
struct Samples {
    /// (when, the primary's position then), oldest first.
    primary: VecDeque<(Instant, Lsn)>,
    /// The replica's replayed position at the last sample; `None` when it could not be
    /// asked.
    replayed: Option<Lsn>,
}

impl Samples {
    /// How far behind the replica is at `now`: since when the primary has been past the
    /// replica's position. `None` when unknown (treated as too far).
    fn staleness(&self, now: Instant) -> Option<Duration> {
        let replayed = self.replayed?;
        // The newest primary sample the replica has reached: the replica is at least as
        // fresh as the primary was then.
        match self.primary.iter().rev().find(|(_, lsn)| *lsn <= replayed) {
            Some((at, _)) => {
                // Caught up with the newest sample: as fresh as one sample's age allows.
                if self.primary.back().is_some_and(|(_, lsn)| *lsn <= replayed) {
                    Some(Duration::ZERO)
                } else {
                    Some(now.saturating_duration_since(*at))
                }
            }
            None => None,
        }
    }

    fn record(&mut self, at: Instant, primary: Lsn, replayed: Option<Lsn>, keep: Duration) {
        self.primary.push_back((at, primary));
        while self
            .primary
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > keep)
            && self.primary.len() > 1
        {
            self.primary.pop_front();
        }
        self.replayed = replayed;
    }
}

/// A read replica beside the primary.
#[derive(Debug, Clone)]
pub struct ReadReplica {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    primary: PgPool,
    replica: PgPool,
    options: ReplicaOptions,
    samples: Mutex<Samples>,
    /// Per caller: the primary's position after its last write, and when.
    writes: Mutex<HashMap<String, (Lsn, Instant)>>,
}

/// Where a read goes, and why (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRoute {
    Replica,
    /// The caller wrote something the replica has not replayed yet.
    PrimaryOwnWrite,
    /// The replica is further behind than `max_lag`, or cannot be asked.
    PrimaryStale,
}

/// The primary's position: where its next WAL record goes, so past every commit that has
/// returned (the write position can be behind a commit under `synchronous_commit = off`).
const POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";
const REPLAYED: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

impl ReadReplica {
    /// Starts sampling the replica (until `shutdown`).
    pub fn start(
        primary: PgPool,
        replica: PgPool,
        options: ReplicaOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let this = Self {
            inner: Arc::new(Inner {
                primary,
                replica,
                options,
                samples: Mutex::new(Samples::default()),
                writes: Mutex::new(HashMap::new()),
            }),
        };
        let sampler = this.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(options.sample_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => sampler.sample().await,
                }
            }
        });
        this
    }

    /// One sample of both positions.
    pub async fn sample(&self) {
        let primary: Result<Lsn, _> = sqlx::query_scalar(POSITION)
            .fetch_one(&self.inner.primary)
            .await;
        let Ok(primary) = primary else {
            // Without the primary's position nothing is known: keep the last samples.
            return;
        };
        let replayed = self.replayed().await;
        if replayed.is_none() {
            tracing::warn!(
                "the read replica cannot be asked for its position; reading from the primary"
            );
        }
        let keep = self.inner.options.max_lag * 2 + self.inner.options.sample_every;
        self.lock_samples()
            .record(Instant::now(), primary, replayed, keep);
    }

    async fn replayed(&self) -> Option<Lsn> {
        // NULL on a server that is not a standby: it is then no replica of ours.
        sqlx::query_scalar::<_, Option<Lsn>>(REPLAYED)
            .fetch_one(&self.inner.replica)
            .await
            .ok()
            .flatten()
    }

    fn lock_samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.inner
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Lsn, Instant)>> {
        self.inner
            .writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that `caller` has just written (its commit is behind it): its reads go to the
    /// primary until the replica has replayed this far.
    pub async fn wrote(&self, caller: &str) -> Result<(), sqlx::Error> {
        let at: Lsn = sqlx::query_scalar(POSITION)
            .fetch_one(&self.inner.primary)
            .await?;
        let now = Instant::now();
        let mut writes = self.lock_writes();
        let forget = self.inner.options.remember_writes;
        writes.retain(|_, (_, when)| now.saturating_duration_since(*when) < forget);
        writes.insert(caller.to_owned(), (at, now));
        Ok(())
    }

    /// Where `caller`'s next read goes.
    pub async fn route(&self, caller: &str) -> ReadRoute {
        let now = Instant::now();
        let fresh = self
            .lock_samples()
            .staleness(now)
            .is_some_and(|s| s <= self.inner.options.max_lag);
        if !fresh {
            return ReadRoute::PrimaryStale;
        }
        let written = self.lock_writes().get(caller).copied();
        let Some((lsn, when)) = written else {
            return ReadRoute::Replica;
        };
        if now.saturating_duration_since(when) >= self.inner.options.remember_writes {
            return ReadRoute::Replica;
        }
        let replayed = self.replayed().await;
        match replayed {
            Some(replayed) if replayed >= lsn => {
                self.lock_writes().remove(caller);
                ReadRoute::Replica
            }
            _ => {
                // It reads the primary now, and must not see less afterwards: the replica
                // is its again once it has replayed what the primary has at this read (the
                // read models may have caught up with its write meanwhile).
                if let Ok(at) = sqlx::query_scalar::<_, Lsn>(POSITION)
                    .fetch_one(&self.inner.primary)
                    .await
                {
                    if let Some(entry) = self.lock_writes().get_mut(caller) {
                        entry.0 = entry.0.max(at);
                    }
                }
                ReadRoute::PrimaryOwnWrite
            }
        }
    }

    /// The pool `caller`'s next read uses.
    pub async fn pool_for(&self, caller: &str) -> (&PgPool, ReadRoute) {
        let route = self.route(caller).await;
        let pool = match route {
            ReadRoute::Replica => &self.inner.replica,
            ReadRoute::PrimaryOwnWrite | ReadRoute::PrimaryStale => &self.inner.primary,
        };
        (pool, route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(start: Instant, primary: &[(u64, Lsn)], replayed: Option<Lsn>) -> Samples {
        let mut s = Samples::default();
        for &(ms, lsn) in primary {
            s.record(
                start + Duration::from_millis(ms),
                lsn,
                replayed,
                Duration::from_secs(60),
            );
        }
        s
    }

    #[test]
    fn a_replica_at_the_newest_sample_is_fresh() {
        let t = Instant::now();
        let s = samples(t, &[(0, 100), (250, 200)], Some(200));
        assert_eq!(
            s.staleness(t + Duration::from_secs(10)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_replica_behind_is_as_stale_as_the_newest_sample_it_has_reached() {
        let t = Instant::now();
        let s = samples(t, &[(0, 100), (1000, 200), (2000, 300)], Some(250));
        // It has 200 (the primary's position at 1 s), not 300.
        assert_eq!(
            s.staleness(t + Duration::from_millis(7000)),
            Some(Duration::from_millis(6000))
        );
    }

    #[test]
    fn a_replica_behind_every_sample_or_unreachable_is_of_unknown_staleness() {
        let t = Instant::now();
        assert_eq!(samples(t, &[(0, 100)], Some(50)).staleness(t), None);
        assert_eq!(samples(t, &[(0, 100)], None).staleness(t), None);
        assert_eq!(Samples::default().staleness(t), None);
    }

    #[test]
    fn old_samples_are_dropped_but_the_newest_is_kept() {
        let t = Instant::now();
        let mut s = Samples::default();
        s.record(t, 1, Some(1), Duration::from_secs(1));
        s.record(
            t + Duration::from_secs(5),
            2,
            Some(1),
            Duration::from_secs(1),
        );
        assert_eq!(s.primary.len(), 1);
        // Behind the one sample left: unknown, so reads go to the primary.
        assert_eq!(s.staleness(t + Duration::from_secs(5)), None);
    }
}
