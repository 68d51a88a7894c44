//! Prometheus metrics of the whole service, registered in one place (R10.3).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub aggregate: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

/// Every metric tenantflow exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    /// Complete once built: nothing registers later, so no lock is needed.
    registry: Arc<Registry>,
    pub commands: Family<CommandLabels, Counter>,
    pub events_appended: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    /// Events committed but not yet consumed, per consumer.
    pub consumer_lag: Family<ConsumerLabels, Gauge>,
    pub consumer_events: Family<ConsumerLabels, Counter>,
    pub consumer_failures: Family<ConsumerLabels, Counter>,
    /// 1 while a consumer is stopped before an event type this version does not know.
    pub consumer_blocked: Family<ConsumerLabels, Gauge>,
    /// Why each stopped consumer is stopped, for readiness.
    blocked: Arc<Mutex<BTreeMap<String, String>>>,
    /// Seconds the oldest open transaction has held back the log (0: none past the
    /// threshold).
    pub log_horizon_held: Gauge,
    /// Partitions of the event log (each costs every stream load and consumer batch a
    /// little; docs/SCALING.md), as the last maintenance check counted them.
    pub event_partitions: Gauge,
    horizon_warning: Arc<Mutex<Option<String>>>,
    /// Inbound mail (R6): webhook notifications by verdict, mail work by kind and outcome.
    pub mail_notifications: Family<OutcomeLabels, Counter>,
    pub mail_work: Family<OutcomeLabels, Counter>,
    /// GraphQL query requests by where they read (with a read replica configured).
    pub reads: Family<OutcomeLabels, Counter>,
    /// Task claims by the workflow engines: `task` (a run to advance) or `empty`.
    pub engine_claims: Family<OutcomeLabels, Counter>,
    /// List pages answered without async-graphql's validation and execution.
    pub graphql_own_pages: Counter,
}

/// Labels of the counters by outcome (inbound mail, replica reads).
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Records that consumer `name` is stopped, and why.
    pub fn block(&self, name: &str, why: String) {
        self.consumer_blocked
            .get_or_create(&ConsumerLabels {
                consumer: name.to_owned(),
            })
            .set(1);
        if let Ok(mut blocked) = self.blocked.lock() {
            blocked.insert(name.to_owned(), why);
        }
    }

    /// Records that consumer `name` moves again.
    pub fn unblock(&self, name: &str) {
        let was = self
            .blocked
            .lock()
            .map(|mut blocked| blocked.remove(name).is_some())
            .unwrap_or(false);
        if was {
            self.consumer_blocked
                .get_or_create(&ConsumerLabels {
                    consumer: name.to_owned(),
                })
                .set(0);
        }
    }

    /// The consumers that are stopped, and why (for readiness).
    pub fn blocked(&self) -> Vec<(String, String)> {
        self.blocked
            .lock()
            .map(|b| b.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Who holds the log's horizon back, for readiness (`None`: nobody).
    pub fn set_horizon_warning(&self, warning: Option<String>) {
        if let Ok(mut w) = self.horizon_warning.lock() {
            *w = warning;
        }
    }

    /// The readiness warning about the log's horizon, if any.
    pub fn horizon_warning(&self) -> Option<String> {
        self.horizon_warning.lock().ok().and_then(|w| w.clone())
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tenantflow");
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands executed, by aggregate and outcome",
            commands.clone(),
        );
        let events_appended = Counter::default();
        registry.register(
            "events_appended",
            "Events appended to the event store",
            events_appended.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        let consumer_lag = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_lag_events",
            "Committed events a consumer has not processed yet",
            consumer_lag.clone(),
        );
        let consumer_events = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_events",
            "Events processed by a consumer",
            consumer_events.clone(),
        );
        let consumer_failures = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_failures",
            "Failed batches of a consumer (retried)",
            consumer_failures.clone(),
        );
        let consumer_blocked = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_blocked",
            "1 while a consumer waits before an event type this version does not know",
            consumer_blocked.clone(),
        );
        let log_horizon_held = Gauge::default();
        registry.register(
            "log_horizon_held_seconds",
            "How long the oldest open transaction has held back what consumers can read",
            log_horizon_held.clone(),
        );
        let event_partitions = Gauge::default();
        registry.register(
            "event_partitions",
            "Partitions of the event log, empty ones ahead included (counted every maintenance check)",
            event_partitions.clone(),
        );
        let mail_notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mail_notifications",
            "Graph change notifications received by the mail webhook, by verdict",
            mail_notifications.clone(),
        );
        let mail_work = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mail_work",
            "Mail worker items done, by kind and outcome",
            mail_work.clone(),
        );
        let reads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "replica_reads",
            "Query requests by where they read: replica, primary_own_write or primary_stale",
            reads.clone(),
        );
        let engine_claims = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "engine_claims",
            "Task claims by the workflow engines, by outcome: task (a run to advance) or empty",
            engine_claims.clone(),
        );
        let graphql_own_pages = Counter::default();
        registry.register(
            "graphql_own_pages",
            "GraphQL list pages answered without async-graphql's validation and execution (a document it validated before)",
            graphql_own_pages.clone(),
        );
        Self {
            reads,
            engine_claims,
            graphql_own_pages,
            mail_notifications,
            mail_work,
            registry: Arc::new(registry),
            consumer_blocked,
            blocked: Arc::default(),
            log_horizon_held,
            event_partitions,
            horizon_warning: Arc::default(),
            commands,
            events_appended,
            http_requests,
            http_duration,
            consumer_lag,
            consumer_events,
            consumer_failures,
        }
    }

    /// The counter of `family` for `outcome` (made on first use).
    pub fn by_outcome(family: &Family<OutcomeLabels, Counter>, outcome: &str) -> Counter {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .clone()
    }

    /// Counts a list page answered its own way.
    pub fn graphql_own_page(&self) {
        self.graphql_own_pages.inc();
    }

    /// Counts a query request's read by where it went.
    pub fn read_routed(&self, route: crate::ReadRoute) {
        let outcome = match route {
            crate::ReadRoute::Replica => "replica",
            crate::ReadRoute::PrimaryOwnWrite => "primary_own_write",
            crate::ReadRoute::PrimaryStale => "primary_stale",
        };
        Self::by_outcome(&self.reads, outcome).inc();
    }

    /// The engines' claims counter for those that found a task, or for those that did not.
    fn engine_claims_of(&self, found: bool) -> Counter {
        Self::by_outcome(&self.engine_claims, if found { "task" } else { "empty" })
    }

    /// Counts an engine's claim: whether it found a task.
    pub fn engine_claimed(&self, found: bool) {
        self.engine_claims_of(found).inc();
    }

    /// The engines' claims so far: (found a task, found nothing).
    pub fn engine_claims_counted(&self) -> (u64, u64) {
        (
            self.engine_claims_of(true).get(),
            self.engine_claims_of(false).get(),
        )
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
