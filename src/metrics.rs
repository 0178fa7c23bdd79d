//! Prometheus metrics: deliveries by outcome, delivery latency, batch sizes.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    deliveries: Family<OutcomeLabels, Counter>,
    delivery_seconds: Histogram,
    batch_size: Histogram,
    batch_commit_seconds: Histogram,
    projection_waiting: Gauge,
    /// Rejected deliveries not written to the quarantine (over its write budget).
    quarantine_dropped: Counter,
    /// Open client connections, and the cap (`--max-connections`).
    connections: Gauge,
    max_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("enrollhook");
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Webhook deliveries by outcome (stored, duplicate, or the rejection code)",
            deliveries.clone(),
        );
        // 100 µs … ~3 s.
        let delivery_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "delivery_duration_seconds",
            "Time from request to reply for webhook deliveries",
            delivery_seconds.clone(),
        );
        let quarantine_dropped = Counter::default();
        registry.register(
            "quarantine_dropped",
            "Rejected deliveries answered but not kept in the quarantine (over --max-quarantine-rate)",
            quarantine_dropped.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "batch_size",
            "Events per group-commit transaction",
            batch_size.clone(),
        );
        let batch_commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "batch_commit_duration_seconds",
            "Time to store and commit one group-commit batch",
            batch_commit_seconds.clone(),
        );
        let projection_waiting = Gauge::default();
        registry.register(
            "projection_waiting_events",
            "Stored events not yet applied to the projection (SQLite under load follows the log by a few ms)",
            projection_waiting.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Client connections open now",
            connections.clone(),
        );
        let max_connections = Gauge::default();
        registry.register(
            "max_connections",
            "Most client connections served at once (--max-connections); more wait in the kernel's backlog",
            max_connections.clone(),
        );
        Metrics {
            registry,
            connections,
            max_connections,
            deliveries,
            delivery_seconds,
            batch_size,
            batch_commit_seconds,
            projection_waiting,
            quarantine_dropped,
        }
    }

    pub fn observe_delivery(&self, outcome: &'static str, elapsed: Duration) {
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.delivery_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn quarantine_dropped(&self) {
        self.quarantine_dropped.inc();
    }

    pub fn observe_batch(&self, size: usize, elapsed: Duration) {
        self.batch_size.observe(size as f64);
        self.batch_commit_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn set_projection_waiting(&self, events: u64) {
        self.projection_waiting.set(events as i64);
    }

    /// The open-connections gauge, kept by the listener; and records the cap.
    pub fn connections(&self, max: usize) -> Gauge {
        self.max_connections.set(max as i64);
        self.connections.clone()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
