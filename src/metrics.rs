//! Prometheus metrics: deliveries by outcome, delivery latency, batch sizes.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Live dashboard streams open now, and the cap (`--max-streams`).
    streams: Gauge,
    max_streams: Gauge,
    /// Deliveries stored, duplicate and rejected: what live streams show.
    totals: [AtomicU64; 3],
}

/// Deliveries since this instance started, by kind (see [`Metrics::delivery_totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryTotals {
    pub stored: u64,
    pub duplicate: u64,
    pub rejected: u64,
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
        let streams = Gauge::default();
        registry.register(
            "streams",
            "Live dashboard streams (/api/stream) open now",
            streams.clone(),
        );
        let max_streams = Gauge::default();
        registry.register(
            "max_streams",
            "Most live streams served at once (--max-streams); more are refused with 503",
            max_streams.clone(),
        );
        Metrics {
            registry,
            streams,
            max_streams,
            totals: Default::default(),
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
        let kind = match outcome {
            "stored" => 0,
            "duplicate" => 1,
            _ => 2,
        };
        self.totals[kind].fetch_add(1, Ordering::Relaxed);
        self.delivery_seconds.observe(elapsed.as_secs_f64());
    }

    /// Deliveries this instance answered since it started.
    pub fn delivery_totals(&self) -> DeliveryTotals {
        let [stored, duplicate, rejected] = &self.totals;
        DeliveryTotals {
            stored: stored.load(Ordering::Relaxed),
            duplicate: duplicate.load(Ordering::Relaxed),
            rejected: rejected.load(Ordering::Relaxed),
        }
    }

    /// The open-streams gauge, kept by the stream slots; and records the cap.
    pub fn streams(&self, max: usize) -> Gauge {
        self.max_streams.set(max as i64);
        self.streams.clone()
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
