//! OpenTelemetry traces over OTLP/HTTP (protobuf): one trace per delivery and a
//! span per forward attempt in it. Off unless an endpoint is given
//! (`serve --otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); then a `tracing-opentelemetry` layer
//! is added to the subscriber, seeing only the spans of [`TARGET`].
//!
//! Our spans are `tracing` spans with target [`TARGET`]: the log output never
//! shows them (the fmt layer filters them out), and with tracing off no layer
//! wants them, so they are disabled callsites that cost nothing.
//!
//! Sampling is decided once per delivery, before its first span is built
//! (head sampling, [`delivery_sampled`]): an unsampled delivery creates no
//! span at all, and spans below the root are made only inside a sampled trace
//! ([`in_trace`]). Building unsampled deliveries' spans for the SDK to drop
//! cost 13–19 % of ingest at 1 % sampling (BENCHMARKS.md).
//!
//! Spans are handed to a batch processor on the tokio runtime with a bounded
//! queue (2,048 spans; more are dropped and counted by the SDK), so an
//! exporter that is slow or unreachable never holds up a delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span exported (and of nothing else).
pub const TARGET: &str = "enrollhook::otel";

const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// What turns tracing on and how much of it is kept.
#[derive(Debug, Clone, Default)]
pub struct OtlpSettings {
    /// `--otlp-endpoint`: the collector's base URL (`/v1/traces` is appended
    /// unless given) or the full traces URL.
    pub endpoint: Option<String>,
    /// `--otlp-sample`: the share of deliveries traced, 0..=1 (None: the
    /// standard `OTEL_TRACES_SAMPLER`/`_ARG`, else every delivery).
    pub sample: Option<f64>,
}

impl OtlpSettings {
    /// Whether tracing is on: an endpoint flag or a standard variable is set.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
            || ENDPOINT_VARS
                .iter()
                .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
    }
}

/// The share of deliveries traced, as `f64` bits (1.0: every one).
static HEAD_SAMPLE: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Whether a new delivery is traced: drawn at the ratio [`provider`] set.
/// Without tracing no layer wants our spans, so the answer does not matter.
pub fn delivery_sampled() -> bool {
    let ratio = f64::from_bits(HEAD_SAMPLE.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// Whether the current span is one of ours (a sampled delivery's trace):
/// child spans are made only then, never as roots of traces of their own.
pub fn in_trace() -> bool {
    tracing::Span::current()
        .metadata()
        .is_some_and(|m| m.target() == TARGET)
}

/// A span of ours under `parent`, or none when `parent` is not traced (an
/// unsampled delivery builds no span): `child_span!(&span, "verify")`.
macro_rules! child_span {
    ($parent:expr, $name:literal $(, $($fields:tt)*)?) => {{
        let parent: &tracing::Span = $parent;
        if parent.is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(target: $crate::telemetry::TARGET, parent: parent, $name
                $(, $($fields)*)?)
        }
    }};
}
pub(crate) use child_span;

/// The ratio of `OTEL_TRACES_SAMPLER=traceidratio` or
/// `parentbased_traceidratio` with `OTEL_TRACES_SAMPLER_ARG` (default 1).
fn env_ratio() -> Option<f64> {
    let sampler = std::env::var("OTEL_TRACES_SAMPLER").ok()?;
    if !matches!(sampler.trim(), "traceidratio" | "parentbased_traceidratio") {
        return None;
    }
    Some(
        std::env::var("OTEL_TRACES_SAMPLER_ARG")
            .ok()
            .and_then(|a| parse_ratio(&a).ok())
            .unwrap_or(1.0),
    )
}

/// The traces URL for `--otlp-endpoint`: like `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// a base URL gets `/v1/traces`.
pub fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(endpoint).with_context(|| {
        format!("--otlp-endpoint {endpoint:?} is not a URL; give the collector's OTLP/HTTP address, e.g. http://localhost:4318")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!(
            "--otlp-endpoint {endpoint:?}: only OTLP over HTTP is supported (http:// or https://, usually port 4318)"
        );
    }
    let trimmed = endpoint.trim_end_matches('/');
    Ok(if trimmed.ends_with("/v1/traces") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    })
}

/// Checks `--otlp-sample` (a ratio).
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{text:?} is not a share between 0 and 1 (e.g. 0.01 traces one delivery in a hundred)"
        )),
    }
}

/// Builds the exporter and the tracer provider (on the current tokio runtime).
/// The caller adds [`layer`] to its subscriber and calls [`shutdown`] at exit.
pub fn provider(settings: &OtlpSettings) -> anyhow::Result<SdkTracerProvider> {
    crate::client::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("enrollhook/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &settings.endpoint {
        exporter = exporter.with_endpoint(traces_url(endpoint)?);
    }
    let exporter = exporter
        .build()
        .context("cannot set up the OTLP exporter")?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(2048)
                .with_max_export_batch_size(512)
                .build(),
        )
        .build();
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "enrollhook".to_owned());
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        );
    // A ratio (--otlp-sample, or the standard variables' ratio samplers) is
    // drawn per delivery by `delivery_sampled`; the SDK then keeps every root
    // it is given. Other standard samplers (always_off…) the SDK applies itself.
    if let Some(ratio) = settings.sample.or_else(env_ratio) {
        HEAD_SAMPLE.store(ratio.to_bits(), Ordering::Relaxed);
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    }
    Ok(builder.build())
}

/// The layer that turns [`TARGET`]'s spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("enrollhook"))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.target() == TARGET
        }))
}

/// Exports what is queued and stops the exporter (graceful shutdown). Off the
/// runtime's worker threads: the processor's shutdown blocks on its task.
pub async fn shutdown(provider: SdkTracerProvider) {
    let done =
        tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5)));
    if let Ok(Err(e)) = done.await {
        eprintln!("warning: could not flush the last traces: {e}");
    }
}

/// The span's W3C `traceparent`, when it is exported (tracing on and sampled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() || !sc.is_sampled() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0
}

/// The span context a stored `traceparent` names (None: missing or malformed).
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let carrier = Carrier(Some(traceparent.to_owned()));
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the remote span `traceparent` names.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(sc) = span_context(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// The sampled span context of `span`, to link to.
pub fn sampled_context(span: &tracing::Span) -> Option<SpanContext> {
    let sc = span.context().span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then_some(sc)
}

/// Links `span` to `other` (a span of another trace it relates to).
pub fn add_link(span: &tracing::Span, other: SpanContext) {
    span.add_link(other);
}

/// A carrier for one `traceparent` header.
#[derive(Default)]
struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent")
            .then_some(self.0.as_deref())
            .flatten()
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_ratios() {
        assert_eq!(
            traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert!(traces_url("localhost:4317").is_err());
        assert!(traces_url("grpc://c:4317").is_err());
        assert_eq!(parse_ratio("0.01"), Ok(0.01));
        assert!(parse_ratio("2").is_err() && parse_ratio("x").is_err());
    }

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_ignored() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = span_context(tp).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_sampled());
        assert!(span_context("00-garbage").is_none());
        assert!(span_context("").is_none());
    }
}
