//! Broker destinations against the real servers on their default local ports
//! (NATS with JetStream 4222, RabbitMQ 5672, Redis 6379): each test makes its
//! own randomly named stream / exchange and queue / key and removes it. A
//! broker "goes down" through a TCP proxy the test cuts, or by its stream or
//! exchange missing until the test creates it; the machine's brokers are
//! never stopped (other tests use them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::Rng;
use serde_json::{Value, json};

use super::{fast_forwarding, subscribe};
use crate::common::backend::{TestDatabase, on_both_backends};
use crate::common::enrollment_event;
use crate::common::proxy::Proxy;
use enrollhook::forward::{ForwardConfig, signing};

const NATS: &str = "127.0.0.1:4222";
const AMQP: &str = "127.0.0.1:5672";
const REDIS: &str = "127.0.0.1:6379";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Nats,
    Amqp,
    Redis,
}

impl Kind {
    fn upstream(self) -> &'static str {
        match self {
            Kind::Nats => NATS,
            Kind::Amqp => AMQP,
            Kind::Redis => REDIS,
        }
    }
}

/// A message as a consumer reads it.
#[derive(Debug, Clone)]
struct Got {
    /// The id a consumer de-duplicates on: the `webhook-id` header (NATS),
    /// AMQP `message_id`, or the stream entry's `webhook-id` field.
    id: String,
    body: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// One test's place in a broker, with a consumer's connection to it.
struct Place {
    kind: Kind,
    name: String,
    js: Option<jetstream::Context>,
    amqp: Option<(Connection, Channel)>,
    redis: Option<redis::aio::MultiplexedConnection>,
    /// AMQP messages taken off the queue so far (basic.get consumes them).
    taken: tokio::sync::Mutex<Vec<Got>>,
}

impl Place {
    async fn new(kind: Kind) -> Place {
        let suffix: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(12)
            .map(char::from)
            .collect();
        let mut place = Place {
            kind,
            name: format!("eh_test_{suffix}"),
            js: None,
            amqp: None,
            redis: None,
            taken: Default::default(),
        };
        match kind {
            Kind::Nats => {
                let client = async_nats::connect(NATS).await.expect("NATS on 4222");
                place.js = Some(jetstream::new(client));
            }
            Kind::Amqp => {
                let conn = Connection::connect(
                    &format!("amqp://guest:guest@{AMQP}/%2f"),
                    ConnectionProperties::default(),
                )
                .await
                .expect("RabbitMQ on 5672");
                let channel = conn.create_channel().await.unwrap();
                place.amqp = Some((conn, channel));
            }
            Kind::Redis => {
                let client = redis::Client::open(format!("redis://{REDIS}")).unwrap();
                place.redis = Some(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("Redis on 6379"),
                );
            }
        }
        place
    }

    fn channel(&self) -> &Channel {
        &self.amqp.as_ref().unwrap().1
    }

    /// The stream (NATS) or exchange (AMQP) exists; Redis creates keys itself.
    async fn create_target(&self) {
        match self.kind {
            Kind::Nats => {
                self.js
                    .as_ref()
                    .unwrap()
                    .create_stream(jetstream::stream::Config {
                        name: self.name.clone(),
                        subjects: vec![format!("{}.>", self.name)],
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            Kind::Amqp => {
                self.channel()
                    .exchange_declare(
                        self.name.as_str().into(),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            auto_delete: false,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
            }
            Kind::Redis => {}
        }
    }

    /// AMQP: a queue bound to the exchange for every routing key.
    async fn bind_queue(&self) {
        let ch = self.channel();
        ch.queue_declare(
            self.name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            self.name.as_str().into(),
            self.name.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }

    /// Everything a subscription needs to send here, through `port` (the
    /// broker's own, or a proxy's).
    fn subscription(&self, port: u16, password: &str) -> Value {
        match self.kind {
            Kind::Nats => json!({
                "url": format!("nats://127.0.0.1:{port}"),
                "subject": format!("{}.{{source}}.{{topic}}", self.name),
            }),
            Kind::Amqp => json!({
                "url": format!("amqp://guest:{password}@127.0.0.1:{port}/%2f"),
                "exchange": self.name,
                "routing_key": "thinkific.{source}.{topic}",
            }),
            Kind::Redis => json!({
                "url": format!("redis://127.0.0.1:{port}"),
                "stream": format!("{}:{{source}}", self.name),
                "maxlen": 10000,
            }),
        }
    }

    fn port(&self) -> u16 {
        self.kind
            .upstream()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Every message the broker holds for a consumer, in order.
    async fn messages(&self) -> Vec<Got> {
        match self.kind {
            Kind::Nats => {
                let Ok(mut stream) = self.js.as_ref().unwrap().get_stream(&self.name).await else {
                    return Vec::new();
                };
                let last = stream.info().await.unwrap().state.last_sequence;
                let mut out = Vec::new();
                for seq in 1..=last {
                    let m = stream.get_raw_message(seq).await.unwrap();
                    let headers: BTreeMap<String, String> = m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v[0].as_str().to_owned()))
                        .collect();
                    out.push(Got {
                        id: headers["webhook-id"].clone(),
                        body: m.payload.to_vec(),
                        headers,
                    });
                }
                out
            }
            Kind::Amqp => {
                let mut taken = self.taken.lock().await;
                loop {
                    let got = self
                        .channel()
                        .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true })
                        .await;
                    let Ok(Some(m)) = got else { break };
                    let p = &m.delivery.properties;
                    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
                    let mut headers: BTreeMap<String, String> = p
                        .headers()
                        .as_ref()
                        .unwrap()
                        .inner()
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                AMQPValue::LongString(s) => s.to_string(),
                                other => format!("{other:?}"),
                            };
                            (k.to_string(), v)
                        })
                        .collect();
                    headers.insert("routing-key".into(), m.delivery.routing_key.to_string());
                    taken.push(Got {
                        id: p.message_id().as_ref().unwrap().to_string(),
                        body: m.delivery.data.clone(),
                        headers,
                    });
                }
                taken.clone()
            }
            Kind::Redis => {
                let mut conn = self.redis.clone().unwrap();
                let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(format!("{}:default", self.name))
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                entries
                    .into_iter()
                    .map(|(_, mut fields)| {
                        let body = fields.remove("body").unwrap();
                        let headers: BTreeMap<String, String> = fields
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
                            .collect();
                        Got {
                            id: headers["webhook-id"].clone(),
                            body,
                            headers,
                        }
                    })
                    .collect()
            }
        }
    }

    /// Waits until the broker holds at least `n` messages.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Got> {
        let start = std::time::Instant::now();
        loop {
            let got = self.messages().await;
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < timeout,
                "only {} of {n} messages arrived in {timeout:?} ({:?})",
                got.len(),
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn remove(self) {
        match self.kind {
            Kind::Nats => {
                let _ = self.js.as_ref().unwrap().delete_stream(&self.name).await;
            }
            Kind::Amqp => {
                let ch = self.channel();
                let _ = ch
                    .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = ch
                    .exchange_delete(self.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            Kind::Redis => {
                let mut conn = self.redis.clone().unwrap();
                let _: redis::RedisResult<i64> = redis::cmd("DEL")
                    .arg(format!("{}:default", self.name))
                    .query_async(&mut conn)
                    .await;
            }
        }
    }
}

/// The real server forwarding on `schedule`, private destinations allowed
/// (the brokers are on localhost). A generous attempt timeout: a loaded CI
/// machine must not turn a slow confirm into a retry (a duplicate on
/// RabbitMQ and Redis, which these tests count).
async fn serve(db: TestDatabase, schedule: &str) -> crate::common::TestApp {
    db.serve(|config| {
        config.forward = ForwardConfig {
            timeout: Duration::from_secs(3),
            ..fast_forwarding(schedule)
        }
    })
    .await
}

/// A retry schedule of `n` attempts `every` apart.
fn every(delay: &str, n: usize) -> String {
    vec![delay; n].join(",")
}

/// `n` distinct enrollment events of enrollment 7, in log order, and their ids.
fn events(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let body = enrollment_event(
                &id,
                "progress",
                7,
                1,
                &format!("{}.0", i % 100),
                &format!("2024-05-01T00:{:02}:{:02}Z", i / 60, i % 60),
            );
            (id, body)
        })
        .collect()
}

/// Each message: the id its broker carries is the stable delivery id, the
/// body is the event byte for byte, the headers say topic and source, and
/// the Standard Webhooks signature verifies.
fn check_messages(got: &[Got], sent: &[(String, Vec<u8>)], sub: &Value) {
    let secret = sub["secret"].as_str().unwrap();
    let bodies: HashMap<String, &Vec<u8>> = sent
        .iter()
        .map(|(id, body)| (format!("evt_default_{id}"), body))
        .collect();
    for m in got {
        assert_eq!(m.headers["webhook-id"], m.id);
        if let Some(nats_id) = m.headers.get("Nats-Msg-Id") {
            // JetStream's de-duplication key: this delivery (event and subscription).
            assert_eq!(
                nats_id,
                &format!("{}:{}", m.id, sub["id"].as_str().unwrap())
            );
        }
        assert_eq!(&m.body, bodies[&m.id], "the original body, byte for byte");
        assert_eq!(m.headers["x-enrollhook-topic"], "enrollment.progress");
        assert_eq!(m.headers["x-enrollhook-source"], "default");
        assert!(m.headers["x-enrollhook-event-time"].starts_with("2024-05-01T00:"));
        let ts: i64 = m.headers["webhook-timestamp"].parse().unwrap();
        let expected = signing::sign(secret, &m.id, ts, &m.body).unwrap();
        assert!(
            m.headers["webhook-signature"]
                .split(' ')
                .any(|s| s == expected),
            "signature verifies"
        );
    }
}

fn ids(got: &[Got]) -> Vec<String> {
    got.iter().map(|m| m.id.clone()).collect()
}

async fn attempts(app: &crate::common::TestApp, sub: &str) -> Vec<Value> {
    let (status, page) = app
        .get(&format!("/api/subscriptions/{sub}/attempts?limit=1000"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// Waits until `n` attempts of `sub` are recorded, and returns them all.
async fn wait_for_attempts(app: &crate::common::TestApp, sub: &str, n: usize) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let recorded = attempts(app, sub).await;
        if recorded.len() >= n {
            return recorded;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "only {} of {n} attempts recorded",
            recorded.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until some attempt of `sub` failed with an error containing `needle`.
async fn wait_for_error(app: &crate::common::TestApp, sub: &str, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let found = attempts(app, sub).await.into_iter().find_map(|a| {
            a["error"]
                .as_str()
                .filter(|e| e.contains(needle))
                .map(str::to_owned)
        });
        if let Some(e) = found {
            return e;
        }
        let errors: Vec<Value> = attempts(app, sub)
            .await
            .into_iter()
            .map(|a| a["error"].clone())
            .collect();
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no attempt failed with `{needle}`: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Every event exactly once, with its id; a replay is dropped by JetStream's
// duplicate window and arrives again with the same id on RabbitMQ and Redis.
async fn delivers_every_event_once(db: TestDatabase, kind: Kind) {
    let place = Place::new(kind).await;
    place.create_target().await;
    if kind == Kind::Amqp {
        place.bind_queue().await;
    }
    let app = serve(db, "50ms,100ms,200ms,400ms,800ms").await;
    let mut input = place.subscription(place.port(), "guest");
    input["topics"] = json!(["enrollment.*"]);
    let sub = subscribe(&app, input).await;
    let sub_id = sub["id"].as_str().unwrap();
    let sent = events("once", 20);
    for (_, body) in &sent {
        assert_eq!(app.deliver(body).await.0, 200);
    }
    let got = place.wait_for(20, Duration::from_secs(15)).await;
    check_messages(&got, &sent, &sub);
    let expected: HashSet<String> = sent
        .iter()
        .map(|(id, _)| format!("evt_default_{id}"))
        .collect();
    assert_eq!(ids(&got).into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(got.len(), 20, "each event once");
    if kind == Kind::Amqp {
        assert_eq!(
            got[0].headers["routing-key"],
            "thinkific.default.enrollment.progress"
        );
    }
    // The broker's receipt is kept with the attempt (recorded in batches,
    // just after the broker confirmed).
    let recorded = wait_for_attempts(&app, sub_id, 20).await;
    assert_eq!(recorded.len(), 20);
    for a in &recorded {
        assert!(a["error"].is_null(), "{a}");
        assert!(!a["response"].as_str().unwrap().is_empty());
    }

    // Replay one event: a second publish with the same id.
    let (status, _) = app
        .client
        .post(format!("{}/api/events/default/once-3/replay", app.base))
        .json(&json!({}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200);
    let replayed = wait_for_attempts(&app, sub_id, 21).await.pop().unwrap();
    assert!(replayed["error"].is_null(), "{replayed}");
    let got = place.messages().await;
    match kind {
        Kind::Nats => {
            assert!(
                replayed["response"].as_str().unwrap().contains("duplicate"),
                "{replayed}"
            );
            assert_eq!(got.len(), 20, "JetStream dropped the duplicate");
        }
        Kind::Amqp | Kind::Redis => {
            assert_eq!(got.len(), 21);
            assert_eq!(
                got[20].id, "evt_default_once-3",
                "same id: consumers de-duplicate on it"
            );
        }
    }
    place.remove().await;
}

// The broker goes away (every connection cut, nothing listening) and comes
// back: nothing is lost, nothing arrives twice.
async fn survives_a_cut_connection(db: TestDatabase, kind: Kind) {
    let place = Place::new(kind).await;
    place.create_target().await;
    if kind == Kind::Amqp {
        place.bind_queue().await;
    }
    let proxy = Proxy::start(kind.upstream()).await;
    let app = serve(db, &every("100ms", 30)).await;
    let sub = subscribe(&app, place.subscription(proxy.port, "guest")).await;
    let sub_id = sub["id"].as_str().unwrap();
    let sent = events("cut", 10);
    for (_, body) in &sent[..5] {
        assert_eq!(app.deliver(body).await.0, 200);
    }
    place.wait_for(5, Duration::from_secs(15)).await;

    proxy.cut();
    for (_, body) in &sent[5..] {
        assert_eq!(app.deliver(body).await.0, 200);
    }
    // Attempts fail while the broker is away...
    let start = std::time::Instant::now();
    while !attempts(&app, sub_id)
        .await
        .iter()
        .any(|a| !a["error"].is_null())
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "an attempt failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(place.messages().await.len(), 5);
    // ...and succeed once it is back.
    proxy.resume();
    let got = place.wait_for(10, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if got.len() == 10 {
        place.messages().await
    } else {
        got
    };
    check_messages(&got, &sent, &sub);
    let mut expected: Vec<String> = sent
        .iter()
        .map(|(id, _)| format!("evt_default_{id}"))
        .collect();
    let mut seen = ids(&got);
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "every event once");
    place.remove().await;
}

// Ordered subscriptions: one enrollment's events reach the broker in log
// order, also when the broker was unreachable while they were queued (each
// delivery waits for the one before; unordered retries would interleave).
async fn ordered_keeps_an_enrollment_in_order(db: TestDatabase, kind: Kind) {
    let place = Place::new(kind).await;
    place.create_target().await;
    if kind == Kind::Amqp {
        place.bind_queue().await;
    }
    let proxy = Proxy::closed(kind.upstream()).await;
    let app = serve(db, &every("200ms", 30)).await;
    let mut input = place.subscription(proxy.port, "guest");
    input["ordered"] = json!(true);
    let sub = subscribe(&app, input).await;
    let sent = events("ord", 8);
    for (_, body) in &sent {
        assert_eq!(app.deliver(body).await.0, 200);
    }
    wait_for_error(&app, sub["id"].as_str().unwrap(), "connect").await;
    proxy.resume();
    let got = place.wait_for(8, Duration::from_secs(20)).await;
    let expected: Vec<String> = sent
        .iter()
        .map(|(id, _)| format!("evt_default_{id}"))
        .collect();
    assert_eq!(ids(&got), expected, "log order");
    place.remove().await;
}

macro_rules! per_broker {
    ($($case:ident: $($name:ident = $kind:ident),+;)+) => {
        $($(
            async fn $name(db: TestDatabase) {
                $case(db, Kind::$kind).await
            }
        )+)+
    };
}

/// A template's body is the message on a broker too, signed as sent, with
/// its content type; the other headers are the usual ones.
async fn a_template_shapes_the_message(db: TestDatabase, kind: Kind) {
    let place = Place::new(kind).await;
    place.create_target().await;
    if kind == Kind::Amqp {
        place.bind_queue().await;
    }
    let app = serve(db, "50ms,100ms").await;
    let mut input = place.subscription(place.port(), "guest");
    input["topics"] = json!(["enrollment.*"]);
    input["template"] = json!({
        "body": "{{ student.email }} is at {{ progress }} %",
        "content_type": "text/plain; charset=utf-8",
    });
    let sub = subscribe(&app, input).await;
    let event = enrollment_event("tpl1", "progress", 7, 3, "40.0", "2024-05-01T00:00:00Z");
    assert_eq!(app.deliver(&event).await.0, 200);
    let got = place.wait_for(1, Duration::from_secs(10)).await;
    let m = &got[0];
    assert_eq!(m.body, b"s7@example.com is at 40 %");
    assert_eq!(m.id, "evt_default_tpl1");
    assert_eq!(m.headers["x-enrollhook-topic"], "enrollment.progress");
    assert_eq!(m.headers["content-type"], "text/plain; charset=utf-8");
    let ts: i64 = m.headers["webhook-timestamp"].parse().unwrap();
    let expected = signing::sign(sub["secret"].as_str().unwrap(), &m.id, ts, &m.body).unwrap();
    assert!(
        m.headers["webhook-signature"]
            .split(' ')
            .any(|s| s == expected),
        "signature over the rendered bytes"
    );
    place.remove().await;
}

per_broker! {
    a_template_shapes_the_message:
        nats_a_template_shapes_the_message = Nats,
        amqp_a_template_shapes_the_message = Amqp,
        redis_a_template_shapes_the_message = Redis;
    delivers_every_event_once:
        nats_delivers_every_event_once = Nats,
        amqp_delivers_every_event_once = Amqp,
        redis_delivers_every_event_once = Redis;
    survives_a_cut_connection:
        nats_survives_a_cut_connection = Nats,
        amqp_survives_a_cut_connection = Amqp,
        redis_survives_a_cut_connection = Redis;
    ordered_keeps_an_enrollment_in_order:
        nats_ordered_keeps_an_enrollment_in_order = Nats,
        amqp_ordered_keeps_an_enrollment_in_order = Amqp,
        redis_ordered_keeps_an_enrollment_in_order = Redis;
}

// NATS: two subscriptions publish every event into one stream (on subjects
// of their own); JetStream's de-duplication, keyed per delivery, keeps both.
async fn nats_two_subscriptions_into_one_stream_both_arrive(db: TestDatabase) {
    let place = Place::new(Kind::Nats).await;
    place.create_target().await;
    let app = serve(db, &every("100ms", 10)).await;
    let first = subscribe(&app, place.subscription(place.port(), "")).await;
    let mut second = place.subscription(place.port(), "");
    second["subject"] = json!(format!("{}.second.{{topic}}", place.name));
    let second = subscribe(&app, second).await;
    let sent = events("two", 3);
    for (_, body) in &sent {
        assert_eq!(app.deliver(body).await.0, 200);
    }
    let got = place.wait_for(6, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(place.messages().await.len(), 6);
    for sub in [&first, &second] {
        let mine: Vec<Got> = got
            .iter()
            .filter(|m| m.headers["Nats-Msg-Id"].ends_with(sub["id"].as_str().unwrap()))
            .cloned()
            .collect();
        assert_eq!(mine.len(), 3, "{}", sub["id"]);
        check_messages(&mine, &sent, sub);
    }
    place.remove().await;
}

// NATS: no stream takes the subject yet. Attempts fail with that said, then
// the stream is created and every event arrives once.
async fn nats_a_missing_stream_is_retried(db: TestDatabase) {
    let place = Place::new(Kind::Nats).await;
    let app = serve(db, &every("100ms", 30)).await;
    let sub = subscribe(&app, place.subscription(place.port(), "")).await;
    let sent = events("nostream", 3);
    for (_, body) in &sent {
        assert_eq!(app.deliver(body).await.0, 200);
    }
    let e = wait_for_error(&app, sub["id"].as_str().unwrap(), "no JetStream stream").await;
    assert!(e.contains(&place.name), "names the subject: {e}");
    place.create_target().await;
    let got = place.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 3);
    place.remove().await;
}

// RabbitMQ: the exchange is missing (the broker closes the channel: 404),
// then exists without a queue (a mandatory publish comes back: a failure,
// not a success), then a queue is bound and every event arrives once.
async fn amqp_a_missing_exchange_and_an_unroutable_message_are_retried(db: TestDatabase) {
    let place = Place::new(Kind::Amqp).await;
    let app = serve(db, &every("100ms", 30)).await;
    let sub = subscribe(&app, place.subscription(place.port(), "guest")).await;
    let sub_id = sub["id"].as_str().unwrap();
    let sent = events("unroutable", 3);
    for (_, body) in &sent {
        assert_eq!(app.deliver(body).await.0, 200);
    }
    let e = wait_for_error(&app, sub_id, "NOT_FOUND").await;
    assert!(e.contains(&place.name), "names the exchange: {e}");
    place.create_target().await;
    let e = wait_for_error(&app, sub_id, "no queue took the message").await;
    assert!(e.contains("bind a queue"), "{e}");
    let (_, deliveries) = app
        .get(&format!(
            "/api/subscriptions/{sub_id}/deliveries?state=delivered"
        ))
        .await;
    assert_eq!(
        deliveries["items"].as_array().unwrap().len(),
        0,
        "returned is not delivered"
    );
    place.bind_queue().await;
    let got = place.wait_for(3, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(place.messages().await.len(), got.len());
    assert_eq!(got.len(), 3);
    place.remove().await;
}

// A wrong password: a clear error on the subscription's attempts, the
// password in neither the error nor the API's answers.
async fn a_wrong_credential_is_a_clear_error(db: TestDatabase) {
    let app = serve(db, "1s").await;
    // RabbitMQ refuses the login.
    let place = Place::new(Kind::Amqp).await;
    let sub = subscribe(&app, place.subscription(place.port(), "Wr0ngPassw0rd")).await;
    assert_eq!(sub["url"], "amqp://guest:***@127.0.0.1:5672/%2f");
    // Redis without a password configured refuses AUTH.
    let redis_sub = subscribe(
        &app,
        json!({"url": "redis://:Wr0ngPassw0rd@127.0.0.1:6379", "stream": "eh_test_never"}),
    )
    .await;
    // A NATS server of our own that wants a user and password.
    let nats = NatsWithPassword::start().await;
    let nats_sub = subscribe(
        &app,
        json!({"url": format!("nats://enrollhook:Wr0ngPassw0rd@127.0.0.1:{}", nats.port), "subject": "eh_test.x"}),
    )
    .await;
    app.deliver(&events("cred", 1)[0].1).await;
    let e = wait_for_error(&app, sub["id"].as_str().unwrap(), "RabbitMQ").await;
    assert!(
        e.contains("ACCESS_REFUSED") || e.contains("authentication"),
        "{e}"
    );
    let e_redis = wait_for_error(&app, redis_sub["id"].as_str().unwrap(), "Redis").await;
    assert!(e_redis.to_ascii_lowercase().contains("auth"), "{e_redis}");
    let e_nats = wait_for_error(&app, nats_sub["id"].as_str().unwrap(), "NATS").await;
    assert!(
        e_nats.to_ascii_lowercase().contains("authorization"),
        "{e_nats}"
    );
    for text in [e, e_redis, e_nats] {
        assert!(!text.contains("Wr0ngPassw0rd"), "{text}");
    }
    let (_, list) = app.get("/api/subscriptions").await;
    assert!(!list.to_string().contains("Wr0ngPassw0rd"), "{list}");
    let (_, one) = app
        .get(&format!(
            "/api/subscriptions/{}",
            sub["id"].as_str().unwrap()
        ))
        .await;
    assert!(!one.to_string().contains("Wr0ngPassw0rd"), "{one}");
    // Sending the URL back as shown keeps the stored password (PATCH).
    let resp = app
        .client
        .patch(format!(
            "{}/api/subscriptions/{}",
            app.base,
            sub["id"].as_str().unwrap()
        ))
        .json(&json!({"url": "amqp://guest:***@127.0.0.1:5672/%2f", "description": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let stored = app
        .store()
        .get_subscription(sub["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.url.contains("Wr0ngPassw0rd"));
}

/// `nats-server` (the binary the machine's NATS runs) on a port of its own,
/// requiring a user and password.
struct NatsWithPassword {
    port: u16,
    child: tokio::process::Child,
}

impl NatsWithPassword {
    async fn start() -> NatsWithPassword {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--user", "enrollhook", "--pass", "right-password"])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH (the machine's NATS package)");
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        NatsWithPassword { port, child }
    }
}

impl Drop for NatsWithPassword {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

on_both_backends!(
    multi_thread: nats_delivers_every_event_once,
    nats_a_template_shapes_the_message,
    amqp_a_template_shapes_the_message,
    redis_a_template_shapes_the_message,
    amqp_delivers_every_event_once,
    redis_delivers_every_event_once,
    nats_survives_a_cut_connection,
    amqp_survives_a_cut_connection,
    redis_survives_a_cut_connection,
    nats_ordered_keeps_an_enrollment_in_order,
    amqp_ordered_keeps_an_enrollment_in_order,
    redis_ordered_keeps_an_enrollment_in_order,
    nats_a_missing_stream_is_retried,
    nats_two_subscriptions_into_one_stream_both_arrive,
    amqp_a_missing_exchange_and_an_unroutable_message_are_retried,
    a_wrong_credential_is_a_clear_error,
);
