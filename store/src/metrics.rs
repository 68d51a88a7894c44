//! Prometheus metrics of the whole service, registered in one place (R10.3).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

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
        Self {
            registry: Arc::new(registry),
            commands,
            events_appended,
            http_requests,
            http_duration,
            consumer_lag,
            consumer_events,
            consumer_failures,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
