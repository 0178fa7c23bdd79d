//! Traces over OTLP (issue #21, part 4): the real binary exporting to a
//! stand-in OTLP/HTTP collector (axum on port 0, protobuf decoded with
//! `opentelemetry-proto`), forwarding to the stand-in destination.

use crate::common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::backend::{Backend, TestDatabase, on_both_backends};
use common::destination::Destination;
use common::process::{BIN, Server, start_server};
use common::{SECRET, enrollment_event};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// A stand-in OTLP/HTTP collector: keeps every span it is sent.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Collector {
            url: format!("http://{addr}"),
            spans,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

async fn export(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?));
        assert_eq!(service.as_deref(), Some("enrollhook"));
        for scope in resource.scope_spans {
            spans.lock().unwrap().extend(scope.spans);
        }
    }
    Vec::new() // an empty ExportTraceServiceResponse: all accepted
}

fn text(v: &AnyValue) -> Option<String> {
    match v {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Migrates `db` and subscribes `url` to every enrollment event, through the CLI.
fn subscribe(db: &TestDatabase, url: &str) {
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--database", &db.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["migrate"]);
    run(&[
        "subscriptions",
        "add",
        "--url",
        url,
        "--topic",
        "enrollment.*",
        "--allow-private",
    ]);
}

/// The binary on `db`, exporting traces to `endpoint` at the share `sample`,
/// forwarding to the stand-in destination on loopback.
fn traced_server(db: &TestDatabase, endpoint: &str, sample: &str) -> Server {
    start_server(
        &db.url,
        SECRET,
        &[
            "--otlp-endpoint",
            endpoint,
            "--otlp-sample",
            sample,
            "--allow-private-destinations",
        ],
    )
}

async fn deliver(server: &Server, body: &[u8]) -> u16 {
    enrollhook::client::http_client(Duration::from_secs(30))
        .unwrap()
        .post(format!("{}/webhooks/thinkific", server.base))
        .header("content-type", "application/json")
        .header(
            "x-thinkific-hmac-sha256",
            enrollhook::thinkific::sign(SECRET.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The traceparent column of every outbox row.
async fn stored_traceparents(db: &TestDatabase) -> Vec<Option<String>> {
    let sql = "SELECT traceparent FROM outbox ORDER BY id";
    match db.backend {
        Backend::Sqlite => {
            use sqlx::Connection as _;
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
        Backend::Postgres => {
            let mut conn = db.pg().unwrap().connect().await;
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
    }
}

/// A graceful stop (SIGTERM), which flushes the queued spans.
fn stop(mut server: Server) {
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).success());
}

async fn a_delivery_is_one_trace_with_its_forward_attempt(db: TestDatabase) {
    let collector = Collector::start().await;
    let destination = Destination::start().await;
    subscribe(&db, &destination.url);
    let server = traced_server(&db, &collector.url, "1");
    let body = enrollment_event("evt-traced", "created", 7, 3, "0.0", "2024-02-01T00:00:00Z");
    assert_eq!(deliver(&server, &body).await, 200);
    let received = destination.wait_for(1, Duration::from_secs(20)).await;
    let header = received[0]
        .headers
        .get("traceparent")
        .expect("the destination gets a traceparent")
        .to_str()
        .unwrap()
        .to_owned();
    let stored = stored_traceparents(&db).await;
    stop(server);

    let spans = collector.spans();
    let [root] = named(&spans, "webhook")[..] else {
        panic!("one webhook span: {spans:#?}");
    };
    let root: &Span = root;
    assert!(
        root.parent_span_id.is_empty(),
        "the webhook span is the root"
    );
    assert_eq!(attribute(root, "source").as_deref(), Some("default"));
    assert_eq!(attribute(root, "outcome").as_deref(), Some("stored"));
    assert_eq!(attribute(root, "event_id").as_deref(), Some("evt-traced"));
    assert_eq!(
        attribute(root, "topic").as_deref(),
        Some("enrollment.created")
    );
    let child_of = |name: &str, parent: &Span| -> Span {
        let found = named(&spans, name);
        assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
        let span = found[0].clone();
        assert_eq!(span.trace_id, parent.trace_id, "{name} is in the trace");
        assert_eq!(span.parent_span_id, parent.span_id, "{name}'s parent");
        span
    };
    child_of("verify", root);
    child_of("parse", root);
    let commit = child_of("commit", root);
    assert_eq!(attribute(&commit, "batch.size").as_deref(), Some("1"));
    let batch = child_of("batch", &commit);
    if db.backend == Backend::Postgres {
        child_of("projection", &batch); // in the batch's transaction
    }

    // The stored traceparent names the delivery; the attempt is its child,
    // and the header the destination got names the attempt.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        stored,
        [Some(format!(
            "00-{}-{}-01",
            hex(&root.trace_id),
            hex(&root.span_id)
        ))]
    );
    let attempt = child_of("forward", root);
    assert_eq!(
        header,
        format!("00-{}-{}-01", hex(&attempt.trace_id), hex(&attempt.span_id))
    );
    assert_eq!(attribute(&attempt, "attempt").as_deref(), Some("1"));
    assert_eq!(
        attribute(&attempt, "http.response.status_code").as_deref(),
        Some("200")
    );

    // Never the body, nor a student's e-mail.
    for span in &spans {
        for kv in &span.attributes {
            let value = kv.value.as_ref().and_then(|v| text(v.value.as_ref()?));
            assert!(
                !value.unwrap_or_default().contains("@example.com"),
                "{} carries {kv:?}",
                span.name
            );
        }
    }
}

async fn without_an_endpoint_nothing_is_traced(db: TestDatabase) {
    let destination = Destination::start().await;
    subscribe(&db, &destination.url);
    let server = start_server(&db.url, SECRET, &["--allow-private-destinations"]);
    let body = enrollment_event("evt-plain", "created", 8, 3, "0.0", "2024-02-01T00:00:00Z");
    assert_eq!(deliver(&server, &body).await, 200);
    let received = destination.wait_for(1, Duration::from_secs(20)).await;
    assert!(received[0].headers.get("traceparent").is_none());
    assert_eq!(stored_traceparents(&db).await, [None]);
    stop(server);
}

/// Sampling is decided per delivery before any span is built: at 0.5 some
/// deliveries are traced and some not, every span exported belongs to a
/// traced delivery's trace (no orphan `verify`, `commit`, `batch` or
/// `projection` roots from the others), and only traced deliveries carry a
/// `traceparent` to their forward attempts.
async fn sampling_keeps_whole_traces_of_some_deliveries(db: TestDatabase) {
    let collector = Collector::start().await;
    let destination = Destination::start().await;
    subscribe(&db, &destination.url);
    let server = traced_server(&db, &collector.url, "0.5");
    const DELIVERIES: i64 = 40;
    for n in 0..DELIVERIES {
        let body = enrollment_event(
            &format!("evt-sampled-{n}"),
            "created",
            200 + n,
            3,
            "0.0",
            "2024-02-01T00:00:00Z",
        );
        assert_eq!(deliver(&server, &body).await, 200);
    }
    let received = destination
        .wait_for(DELIVERIES as usize, Duration::from_secs(30))
        .await;
    let stored = stored_traceparents(&db).await;
    stop(server);

    let spans = collector.spans();
    let roots = named(&spans, "webhook");
    // Each delivery is traced with probability 1/2: all 40 or none would
    // happen once in 2^39 runs.
    assert!(
        !roots.is_empty() && roots.len() < DELIVERIES as usize,
        "{} of {DELIVERIES} deliveries traced",
        roots.len()
    );
    for span in &spans {
        assert!(
            roots.iter().any(|r| r.trace_id == span.trace_id),
            "{} is in no traced delivery's trace",
            span.name
        );
        if span.name != "webhook" {
            assert!(
                spans.iter().any(|p| p.span_id == span.parent_span_id),
                "{}'s parent was exported",
                span.name
            );
        }
    }
    assert_eq!(named(&spans, "verify").len(), roots.len());
    assert_eq!(named(&spans, "commit").len(), roots.len());
    let headers = received
        .iter()
        .filter(|r| r.headers.contains_key("traceparent"))
        .count();
    assert_eq!(
        headers,
        roots.len(),
        "only traced deliveries carry a traceparent"
    );
    assert_eq!(stored.iter().flatten().count(), roots.len());
}

on_both_backends!(multi_thread: a_delivery_is_one_trace_with_its_forward_attempt,
    without_an_endpoint_nothing_is_traced, sampling_keeps_whole_traces_of_some_deliveries);

/// A collector that accepts connections and never answers: deliveries and
/// forwarding go on, and a graceful stop still ends (the flush is bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_collector_never_holds_up_deliveries() {
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let db = TestDatabase::create(Backend::Sqlite).await;
    let destination = Destination::start().await;
    subscribe(&db, &destination.url);
    let server = traced_server(&db, &endpoint, "1");
    for n in 0..20 {
        let body = enrollment_event(
            &format!("evt-{n}"),
            "created",
            100 + n,
            3,
            "0.0",
            "2024-02-01T00:00:00Z",
        );
        assert_eq!(deliver(&server, &body).await, 200);
    }
    let received = destination.wait_for(20, Duration::from_secs(30)).await;
    assert!(
        received
            .iter()
            .all(|r| r.headers.contains_key("traceparent"))
    );
    stop(server);
    drop(black_hole);
}
