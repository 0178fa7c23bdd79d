//! Issue #15, the holes an attacker finds: each test drives the real router (on
//! port 0, a real SQLite file) the way the attack does, often over a raw TCP
//! connection so that Host, Origin and timing are exactly the attacker's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use enrollhook::config::{Secret, ServeConfig};
use enrollhook::thinkific::{samples, sign};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(app: &TestApp) -> SocketAddr {
    app.running.as_ref().unwrap().addr
}

/// Sends one HTTP/1.1 request as written (plus `Connection: close` and a
/// Content-Length) and returns the status and the JSON (or text) body.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status, json)
}

const SUBSCRIPTION: &[u8] = br#"{"url":"https://attacker.example/c","topics":["*"]}"#;

async fn subscriptions(app: &TestApp) -> usize {
    let (status, list) = app.get("/api/subscriptions").await;
    assert_eq!(status, 200, "{list}");
    list["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn dns_rebinding_a_foreign_host_is_refused_without_a_token() {
    let app = spawn_app().await;
    let a = addr(&app);
    let evil = format!("attacker.example:{}", a.port());
    let host = [
        ("Host", evil.as_str()),
        ("Content-Type", "application/json"),
    ];

    // The reproduction of the issue: this answered 201.
    let (status, body) = raw(a, "POST", "/api/subscriptions", &host, SUBSCRIPTION).await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"], "host_not_allowed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--allowed-hosts"),
        "{body}"
    );
    assert_eq!(subscriptions(&app).await, 0);
    for path in [
        "/api/enrollments",
        "/api/quarantine",
        "/metrics",
        "/dashboard",
    ] {
        let (status, body) = raw(a, "GET", path, &host, b"").await;
        assert_eq!(status, 421, "{path}: {body}");
    }
    // An empty bearer token is no token: still loopback trust, still checked.
    let with_empty = [("Host", evil.as_str()), ("Authorization", "Bearer ")];
    assert_eq!(
        raw(a, "GET", "/api/enrollments", &with_empty, b"").await.0,
        421
    );

    // Names of this server are served, with or without the port.
    let port = a.port().to_string();
    for name in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = raw(a, "GET", "/api/enrollments", &[("Host", &name)], b"").await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(
            raw(a, "GET", "/dashboard", &[("Host", &name)], b"").await.0,
            200
        );
    }
    // Deliveries carry the deployment's public Host and are signed: never checked.
    let body = samples::CREATED.as_bytes();
    let signature = sign(SECRET.as_bytes(), body);
    let (status, reply) = raw(
        a,
        "POST",
        "/webhooks/thinkific",
        &[
            ("Host", "enroll.school.example"),
            ("X-Thinkific-Hmac-Sha256", &signature),
        ],
        body,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    // Health probes come with an IP for Host.
    assert_eq!(
        raw(a, "GET", "/healthz", &[("Host", "10.1.2.3:8080")], b"")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn allowed_hosts_adds_names_the_api_answers_to() {
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.allowed_hosts = vec!["enroll.internal".into()];
    let app = spawn_with(dir, config).await;
    let a = addr(&app);
    let (status, body) = raw(
        a,
        "GET",
        "/api/enrollments",
        &[("Host", "enroll.internal:8080")],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = raw(
        a,
        "GET",
        "/api/enrollments",
        &[("Host", "other.internal")],
        b"",
    )
    .await;
    assert_eq!(status, 421);
}

#[tokio::test]
async fn cross_site_state_changes_are_refused_in_both_modes() {
    // No token: a page on another origin posting to 127.0.0.1 (no rebinding needed).
    let app = spawn_app().await;
    let a = addr(&app);
    let own = format!("127.0.0.1:{}", a.port());
    let own_origin = format!("http://{own}");
    let foreign = |origin: &'static str| {
        [
            ("Host", own.clone()),
            ("Origin", origin.to_owned()),
            ("Content-Type", "text/plain".to_owned()),
        ]
    };
    let h = foreign("https://attacker.example");
    let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (status, body) = raw(a, "POST", "/api/subscriptions", &h, SUBSCRIPTION).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "origin_not_allowed");
    // Bodiless cross-site posts: replay, quarantine retry.
    assert_eq!(
        raw(a, "POST", "/api/subscriptions/sub_x/replay", &h, b"")
            .await
            .0,
        403
    );
    assert_eq!(
        raw(a, "POST", "/api/quarantine/1/retry", &h, b"").await.0,
        403
    );
    let null = foreign("null");
    let null: Vec<(&str, &str)> = null.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(
        raw(a, "POST", "/api/subscriptions", &null, SUBSCRIPTION)
            .await
            .0,
        403
    );
    // A local page on another port is another origin too.
    let local = foreign("http://127.0.0.1:3000");
    let local: Vec<(&str, &str)> = local.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(
        raw(a, "POST", "/api/subscriptions", &local, SUBSCRIPTION)
            .await
            .0,
        403
    );
    assert_eq!(subscriptions(&app).await, 0);
    // Reads are not state changes; same-origin and Origin-less writes pass.
    assert_eq!(raw(a, "GET", "/api/enrollments", &h, b"").await.0, 200);
    let same = [
        ("Host", own.as_str()),
        ("Origin", own_origin.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, body) = raw(a, "POST", "/api/subscriptions", &same, SUBSCRIPTION).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = raw(
        a,
        "POST",
        "/api/subscriptions",
        &[("Content-Type", "application/json")],
        SUBSCRIPTION,
    )
    .await;
    assert_eq!(status, 201);
    // Deliveries are not checked: Thinkific sends no Origin, but a proxy might.
    let body = samples::PROGRESS.as_bytes();
    let signature = sign(SECRET.as_bytes(), body);
    let delivery = [
        ("Origin", "https://thinkific.com"),
        ("X-Thinkific-Hmac-Sha256", signature.as_str()),
    ];
    assert_eq!(
        raw(a, "POST", "/webhooks/thinkific", &delivery, body)
            .await
            .0,
        200
    );

    // With a token the Host is not checked, but a foreign Origin still is.
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.api_token = Some(Secret::new("admin-token"));
    let app = spawn_with(dir, config).await;
    let a = addr(&app);
    let auth = [
        ("Host", "enroll.school.example"),
        ("Authorization", "Bearer admin-token"),
        ("Content-Type", "application/json"),
    ];
    assert_eq!(raw(a, "GET", "/api/enrollments", &auth, b"").await.0, 200);
    let mut cross = auth.to_vec();
    cross.push(("Origin", "https://attacker.example"));
    let (status, body) = raw(a, "POST", "/api/subscriptions", &cross, SUBSCRIPTION).await;
    assert_eq!(status, 403, "{body}");
    let mut same = auth.to_vec();
    same.push(("Origin", "https://enroll.school.example"));
    let (status, body) = raw(a, "POST", "/api/subscriptions", &same, SUBSCRIPTION).await;
    assert_eq!(status, 201, "{body}");
}

async fn app_with(adjust: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    adjust(&mut config);
    spawn_with(dir, config).await
}

/// Starts a request with a 1,000-byte body and sends one byte every 100 ms;
/// returns how long the server kept the connection and what it answered.
async fn trickle(addr: SocketAddr) -> (Duration, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    write
        .write_all(b"POST /webhooks/thinkific HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nX-Thinkific-Hmac-Sha256: 00\r\n\r\n{")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), read.read_to_end(&mut buf)).await;
    writer.abort();
    (
        started.elapsed(),
        String::from_utf8_lossy(&buf).into_owned(),
    )
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_at_the_read_timeout_in_total() {
    let app = app_with(|c| c.read_timeout = Duration::from_millis(800)).await;
    let (elapsed, answer) = trickle(addr(&app)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        elapsed < Duration::from_millis(800 + 700),
        "held for {elapsed:?}"
    );
    // Others are served normally.
    assert_eq!(app.deliver(samples::CREATED.as_bytes()).await.0, 200);
}

#[tokio::test]
async fn connections_over_the_cap_are_not_served_concurrently() {
    let app = app_with(|c| c.max_connections = 2).await;
    let a = addr(&app);
    // Two clients hold both slots (started requests, headers unfinished).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third connects (the kernel's backlog takes it) but is not served...
    let third = tokio::spawn(raw(a, "GET", "/healthz", &[("Host", "127.0.0.1")], b""));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond the cap of 2"
    );
    // ...until a slot frees up.
    drop(held.pop());
    let (status, _) = tokio::time::timeout(Duration::from_secs(3), third)
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert_eq!(status, 200);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The gauge and the limit are in /metrics (this request is the one open connection).
    assert_eq!(metric(&app, "enrollhook_max_connections").await, 2);
    let open = metric(&app, "enrollhook_connections").await;
    assert!((1..=2).contains(&open), "{open} open connections");
}

/// Posts `n` enrollment events signed with the wrong key; their statuses.
async fn forge(app: &TestApp, n: i64) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let body = enrollment_event(
            &format!("forged-{i}"),
            "progress",
            i,
            1,
            "1.0",
            "2024-01-01T00:00:00Z",
        );
        let (status, _) = app
            .deliver_to(
                "/webhooks/thinkific",
                &body,
                Some(&sign(b"not-the-key", &body)),
            )
            .await;
        statuses.push(status);
    }
    statuses
}

/// The value of an unlabelled metric in `/metrics`.
async fn metric(app: &TestApp, name: &str) -> i64 {
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    let prefix = format!("{name} ");
    metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{name} in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn forged_deliveries_do_not_use_up_the_source_budget() {
    let app = app_with(|c| c.rate_limit = Some(10)).await;
    let forged = forge(&app, 40).await;
    // The flood gets its own budget: a tenth of 10/s, so one 401, then 429s.
    let rejected = forged.iter().filter(|s| **s == 401).count();
    assert!((1..=2).contains(&rejected), "{forged:?}");
    assert!(forged.iter().all(|s| [401, 429].contains(s)), "{forged:?}");
    // Thinkific's real deliveries, right after, still have the whole budget.
    for i in 0..10 {
        let body = enrollment_event(
            &format!("real-{i}"),
            "progress",
            i,
            1,
            "1.0",
            "2024-01-01T00:00:00Z",
        );
        let (status, reply) = app.deliver(&body).await;
        assert_eq!(status, 200, "real delivery {i}: {reply}");
    }
    // Forgeries over their budget are not quarantined (that bounds its writes).
    let (_, q) = app.get("/api/quarantine?limit=1000").await;
    assert_eq!(q["items"].as_array().unwrap().len(), rejected);
}

/// Issue #15, item 3: without any rate limit configured, a flood of forged
/// deliveries is still answered one by one, but only a bounded number a second
/// is written to the quarantine; the rest cost a counter.
#[tokio::test]
async fn a_flood_of_forged_deliveries_costs_a_counter_not_disk() {
    let app = app_with(|c| c.max_quarantine_rate = 5).await;
    let statuses = forge(&app, 60).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let (_, q) = app.get("/api/quarantine?limit=1000").await;
    let kept = q["items"].as_array().unwrap().len();
    // 5 a second (bursts of 5): the loop takes well under the seconds it would
    // need to earn more than a few refills.
    assert!((5..=20).contains(&kept), "{kept} kept");
    let dropped = metric(&app, "enrollhook_quarantine_dropped_total").await as usize;
    assert_eq!(
        kept + dropped,
        60,
        "every forged delivery is kept or counted"
    );
}

/// Issue #15, item 3: a forged 1 MiB body costs the quarantine 64 KiB, and says so.
#[tokio::test]
async fn an_oversized_forged_body_is_kept_as_a_bounded_prefix() {
    let app = spawn_app().await;
    let mut v: Value = serde_json::from_str(samples::PROGRESS).unwrap();
    v["payload"]["padding"] = "x".repeat(1_000_000).into();
    let body = serde_json::to_vec(&v).unwrap();
    let (status, reply) = app
        .deliver_to(
            "/webhooks/thinkific",
            &body,
            Some(&sign(b"not-the-key", &body)),
        )
        .await;
    assert_eq!(status, 401, "{reply}");
    let (_, q) = app.get("/api/quarantine").await;
    let record = &q["items"][0];
    assert_eq!(record["body_size"], body.len() as i64);
    assert_eq!(record["truncated"], true);
    let (_, one) = app.get(&format!("/api/quarantine/{}", record["id"])).await;
    let kept = one["body"].as_str().unwrap();
    assert!(
        kept.len() <= 64 * 1024 * 4 / 3 + 4,
        "{} bytes shown",
        kept.len()
    );
}

#[tokio::test]
async fn a_nat64_destination_of_the_metadata_service_is_refused_with_the_reason() {
    let app = spawn_app().await;
    for (url, reason) in [
        ("http://[64:ff9b::a9fe:a9fe]/latest", "NAT64"),
        ("http://[::127.0.0.1]:8080/", "IPv4-compatible"),
        ("http://[2002:a00:1::1]/", "6to4"),
        ("http://[fec0::1]/", "site-local"),
        ("http://198.18.0.1/", "benchmarking"),
        ("http://240.0.0.1/", "reserved"),
    ] {
        let resp = app
            .client
            .post(format!("{}/api/subscriptions", app.base))
            .json(&json!({"url": url, "topics": ["*"]}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        // 422 like every other refused destination (the API's contract).
        assert_eq!(status, 422, "{url}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(reason),
            "{url}: {body}"
        );
    }
    assert_eq!(subscriptions(&app).await, 0);
}

#[tokio::test]
async fn the_unsigned_topic_header_never_decides_the_topic() {
    let app = spawn_app().await;
    let a = addr(&app);
    // Signed, but without resource/action: the header used to supply them.
    let body = br#"{"id":"no-topic-1","payload":{"id":5,"course_id":1}}"#;
    let signature = sign(SECRET.as_bytes(), body);
    let headers = [
        ("X-Thinkific-Hmac-Sha256", signature.as_str()),
        ("X-Thinkific-Topic", "enrollment.completed"),
    ];
    let (status, reply) = raw(a, "POST", "/webhooks/thinkific", &headers, body).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"], "envelope_invalid");
    assert!(
        reply["message"].as_str().unwrap().contains("not signed"),
        "{reply}"
    );
    assert!(
        reply["message"].as_str().unwrap().contains("quarantine"),
        "{reply}"
    );
    // A header that disagrees with the signed body is not believed.
    let body = samples::PROGRESS.as_bytes();
    let signature = sign(SECRET.as_bytes(), body);
    let headers = [
        ("X-Thinkific-Hmac-Sha256", signature.as_str()),
        ("X-Thinkific-Topic", "enrollment.completed"),
    ];
    let (status, reply) = raw(a, "POST", "/webhooks/thinkific", &headers, body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["topic"], "enrollment.progress");
}

#[tokio::test]
async fn the_raw_body_of_an_event_is_served_byte_for_byte() {
    let app = spawn_app().await;
    // Spacing, key order and a large integer that the JSON view would change.
    let body = br#"{"zeta": 12345678901234567890123,  "id":"raw-1","resource":"order","action":"created","payload":{"b":1, "a":2}}"#;
    assert_eq!(app.deliver(body).await.0, 200);
    let resp = app
        .client
        .get(format!("{}/api/events/default/raw-1/raw", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(&bytes[..], &body[..]);
    enrollhook::thinkific::verify(
        SECRET.as_bytes(),
        &bytes,
        Some(sign(SECRET.as_bytes(), body).as_bytes()),
    )
    .unwrap();
    assert_eq!(app.get("/api/events/default/nope/raw").await.0, 404);
}

#[tokio::test]
async fn the_quarantine_keeps_only_the_documented_headers() {
    let app = spawn_app().await;
    let headers = [
        ("X-Thinkific-Hmac-Sha256", "00"),
        ("X-Thinkific-Topic", "enrollment.created"),
        ("Content-Type", "application/json"),
        ("User-Agent", "Thinkific"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Real-IP", "203.0.113.9"),
        ("Cookie", "session=secret"),
    ];
    let (status, _) = raw(
        addr(&app),
        "POST",
        "/webhooks/thinkific",
        &headers,
        samples::CREATED.as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let (_, q) = app.get("/api/quarantine").await;
    let id = q["items"][0]["id"].as_i64().unwrap();
    let (_, record) = app.get(&format!("/api/quarantine/{id}")).await;
    let mut kept: Vec<String> = record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_owned())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            "content-type",
            "user-agent",
            "x-thinkific-hmac-sha256",
            "x-thinkific-topic"
        ]
    );
}
