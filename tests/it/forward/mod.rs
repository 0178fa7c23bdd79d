//! Forwarding end to end: the real server on port 0, a real SQLite file (the
//! delivery cases also on PostgreSQL), and a stand-in destination server that
//! fails the way real endpoints do.

use crate::common;

use std::time::Duration;

use base64::Engine as _;
use common::backend::{Backend, TestDatabase, on_both_backends};
use common::destination::{Destination, Reply};
use common::process::{BIN, start_server};
use common::*;
use enrollhook::config::ServeConfig;
use enrollhook::forward::{ForwardConfig, signing};
use enrollhook::thinkific::samples;
use serde_json::{Value, json};

fn fast_forwarding(schedule: &str) -> ForwardConfig {
    ForwardConfig {
        schedule: schedule.parse().unwrap(),
        timeout: Duration::from_millis(500),
        allow_private_destinations: true,
        poll_interval: Duration::from_millis(20),
        ..ForwardConfig::default()
    }
}

async fn spawn_forwarding(schedule: &str) -> TestApp {
    spawn_forwarding_on(TestDatabase::create(Backend::Sqlite).await, schedule).await
}

async fn spawn_forwarding_on(db: TestDatabase, schedule: &str) -> TestApp {
    db.serve(|config| config.forward = fast_forwarding(schedule))
        .await
}

async fn subscribe(app: &TestApp, body: Value) -> Value {
    let resp = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    resp.json().await.unwrap()
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let resp = app
        .client
        .post(format!("{}{path}", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// Checks a Standard Webhooks signature the way a receiver would.
fn verify_standard_webhook(secret: &str, r: &destination::Received) {
    let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_owned();
    let (id, ts) = (
        h("webhook-id"),
        h("webhook-timestamp").parse::<i64>().unwrap(),
    );
    let expected = signing::sign(secret, &id, ts, &r.body).unwrap();
    assert!(
        h("webhook-signature").split(' ').any(|s| s == expected),
        "signature must verify"
    );
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
}

use common::destination;

mod brokers;
mod ids;
mod resilience;
mod templates;
mod wake;

on_both_backends!(
    every_event_arrives_through_failures_timeouts_and_429,
    filters_choose_what_is_forwarded,
    payload_filters_choose_what_is_forwarded_and_bad_ones_are_refused,
    gone_disables_the_subscription,
    exhausted_deliveries_go_dead_and_can_be_replayed,
    ordered_subscriptions_deliver_an_enrollment_in_order,
);

async fn every_event_arrives_through_failures_timeouts_and_429(db: TestDatabase) {
    let dest = Destination::start().await;
    // 500, 503, a timeout, 429 with Retry-After: 1, then success.
    dest.script([
        Reply::Status(500),
        Reply::Status(503),
        Reply::Hang(Duration::from_secs(2)),
        Reply::RetryAfter(429, 1),
        Reply::Status(200),
    ]);
    let app = spawn_forwarding_on(db, "50ms,50ms,50ms,50ms,50ms").await;
    let sub = subscribe(
        &app,
        json!({"url": dest.url, "topics": ["enrollment.*"], "headers": {"X-Team": "crm"}}),
    )
    .await;
    let secret = sub["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = sub["id"].as_str().unwrap().to_owned();

    assert_eq!(app.deliver(samples::PROGRESS.as_bytes()).await.0, 200);
    let got = dest.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
    // The body is the original Thinkific event, byte for byte; the id is stable.
    for r in &got {
        assert_eq!(r.body, samples::PROGRESS.as_bytes());
        assert_eq!(r.headers["webhook-id"], got[0].headers["webhook-id"]);
        assert_eq!(r.headers["x-team"], "crm");
        assert_eq!(r.headers["x-enrollhook-topic"], "enrollment.progress");
        verify_standard_webhook(&secret, r);
    }
    // Retry-After: 1 was honoured (the schedule alone would have retried after ~50 ms).
    assert!(
        got[4].at - got[3].at >= Duration::from_millis(950),
        "{:?}",
        got[4].at - got[3].at
    );

    // Every attempt is recorded, per subscription and per event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, attempts) = app.get(&format!("/api/subscriptions/{id}/attempts")).await;
    let statuses: Vec<Value> = attempts["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![json!(500), json!(503), Value::Null, json!(429), json!(200)]
    );
    assert!(
        attempts["items"][2]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{}",
        attempts["items"][2]
    );
    assert_eq!(attempts["items"][0]["response"], "answered 500");
    let (_, per_event) = app
        .get("/api/events/default/20190131192004041953291/attempts")
        .await;
    assert_eq!(per_event["items"].as_array().unwrap().len(), 5);

    // Newest first, two at a time: the same attempts backwards, then nothing.
    let mut newest_first = Vec::new();
    let mut path = format!("/api/subscriptions/{id}/attempts?order=desc&limit=2");
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        newest_first.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["status"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => {
                path = format!("/api/subscriptions/{id}/attempts?order=desc&limit=2&cursor={c}")
            }
            None => break,
        }
    }
    assert_eq!(
        newest_first,
        vec![json!(200), json!(429), Value::Null, json!(503), json!(500)]
    );
    let (status, error) = app
        .get(&format!("/api/subscriptions/{id}/attempts?order=newest"))
        .await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().contains("asc"),
        "{error}"
    );

    let (_, deliveries) = app
        .get(&format!(
            "/api/subscriptions/{id}/deliveries?state=delivered"
        ))
        .await;
    assert_eq!(deliveries["items"].as_array().unwrap().len(), 1);
    assert_eq!(deliveries["items"][0]["attempts"], 5);
}

async fn filters_choose_what_is_forwarded(db: TestDatabase) {
    let dest = Destination::start().await;
    let app = spawn_forwarding_on(db, "50ms").await;
    subscribe(
        &app,
        json!({"url": dest.url, "topics": ["enrollment.completed", "order.*"], "course_ids": [48]}),
    )
    .await;
    for s in [samples::CREATED, samples::PROGRESS, samples::COMPLETED] {
        assert_eq!(app.deliver(s.as_bytes()).await.0, 200);
    }
    app.deliver(br#"{"id":"o1","resource":"order","action":"created","payload":{"course_id":48}}"#)
        .await;
    app.deliver(br#"{"id":"o2","resource":"order","action":"created","payload":{"course_id":1}}"#)
        .await;
    let got = dest.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An unordered subscription sends deliveries concurrently: they may
    // arrive in either order (ordered subscriptions are tested apart).
    let mut ids: Vec<String> = dest
        .received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(got.len(), 2);
    assert_eq!(
        ids,
        vec!["evt_default_20190131192005552012814", "evt_default_o1"]
    );
}

async fn payload_filters_choose_what_is_forwarded_and_bad_ones_are_refused(db: TestDatabase) {
    let dest = Destination::start().await;
    let app = spawn_forwarding_on(db, "50ms").await;
    // Only paying students past a quarter of the course (Thinkific sends "24.0").
    subscribe(
        &app,
        json!({"url": dest.url, "topics": ["enrollment.*"],
               "filter": {"payload.free_trial": false, "payload.percentage_completed": {"$gt": 24}}}),
    )
    .await;
    for s in [samples::CREATED, samples::PROGRESS, samples::COMPLETED] {
        assert_eq!(app.deliver(s.as_bytes()).await.0, 200);
    }
    dest.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let topics: Vec<String> = dest
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["action"].to_string())
        .collect();
    assert_eq!(topics, vec!["\"completed\""], "progress 24.0 is not > 24");

    let (status, error) = post_json(
        &app,
        "/api/subscriptions",
        json!({"url": dest.url, "filter": {"payload.course.id": {"$between": [1, 2]}}}),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(r#"$["payload.course.id"]["$between"]"#),
        "{message}"
    );
    assert!(message.contains("$gte"), "says what is allowed: {message}");
}

async fn gone_disables_the_subscription(db: TestDatabase) {
    let dest = Destination::start().await;
    dest.answer_always(Reply::Status(410));
    let app = spawn_forwarding_on(db, "50ms,50ms").await;
    let sub = subscribe(&app, json!({"url": dest.url, "topics": ["*"]})).await;
    let id = sub["id"].as_str().unwrap();
    app.deliver(samples::CREATED.as_bytes()).await;
    dest.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, s) = app.get(&format!("/api/subscriptions/{id}")).await;
    assert_eq!(s["enabled"], false);
    assert!(
        s["disabled_reason"].as_str().unwrap().contains("410"),
        "{s}"
    );
    // Nothing more is sent to it.
    app.deliver(samples::PROGRESS.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dest.received().len(), 1);
    let (_, dead) = app
        .get(&format!("/api/subscriptions/{id}/deliveries?state=dead"))
        .await;
    assert_eq!(dead["items"].as_array().unwrap().len(), 1);
}

async fn exhausted_deliveries_go_dead_and_can_be_replayed(db: TestDatabase) {
    let dest = Destination::start().await;
    dest.answer_always(Reply::Status(500));
    let app = spawn_forwarding_on(db, "30ms,30ms").await;
    let sub = subscribe(&app, json!({"url": dest.url, "topics": ["*"]})).await;
    let id = sub["id"].as_str().unwrap();
    app.deliver(samples::CREATED.as_bytes()).await;
    app.deliver(samples::PROGRESS.as_bytes()).await;
    dest.wait_for(6, Duration::from_secs(5)).await; // 3 attempts each
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dest.received().len(), 6, "no attempts beyond the schedule");
    let (_, dead) = app
        .get(&format!("/api/subscriptions/{id}/deliveries?state=dead"))
        .await;
    assert_eq!(dead["items"].as_array().unwrap().len(), 2);
    assert!(
        dead["items"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts")
    );

    // The destination recovers; replay every dead delivery.
    dest.answer_always(Reply::Status(200));
    let (status, replayed) = post_json(
        &app,
        &format!("/api/subscriptions/{id}/replay"),
        json!({"dead": true}),
    )
    .await;
    assert_eq!((status, replayed["replayed"].as_u64()), (200, Some(2)));
    dest.wait_for(8, Duration::from_secs(5)).await;
    // Replay one event, and a time range.
    let (status, replayed) = post_json(
        &app,
        "/api/events/default/20190131191810790022472/replay",
        json!({}),
    )
    .await;
    assert_eq!((status, replayed["replayed"].as_u64()), (200, Some(1)));
    dest.wait_for(9, Duration::from_secs(5)).await;
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let (status, replayed) = post_json(
        &app,
        &format!("/api/subscriptions/{id}/replay"),
        json!({"since": since}),
    )
    .await;
    assert_eq!((status, replayed["replayed"].as_u64()), (200, Some(2)));
    dest.wait_for(11, Duration::from_secs(5)).await;
    let (status, _) = post_json(&app, &format!("/api/subscriptions/{id}/replay"), json!({})).await;
    assert_eq!(status, 400);
}

async fn ordered_subscriptions_deliver_an_enrollment_in_order(db: TestDatabase) {
    let dest = Destination::start().await;
    // Every message fails once: without ordering, later events would overtake.
    dest.fail_first_attempt_of_each_message();
    let app = spawn_forwarding_on(db, "100ms").await;
    subscribe(
        &app,
        json!({"url": dest.url, "topics": ["enrollment.*"], "ordered": true}),
    )
    .await;
    for i in 0..5 {
        let body = enrollment_event(
            &format!("ord-{i}"),
            "progress",
            7,
            1,
            &format!("{}.0", i * 20),
            &format!("2024-05-01T00:00:0{i}Z"),
        );
        assert_eq!(app.deliver(&body).await.0, 200);
    }
    let got = dest.wait_for(10, Duration::from_secs(10)).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..5)
        .flat_map(|i| vec![format!("evt_default_ord-{i}"); 2])
        .collect();
    assert_eq!(
        ids, expected,
        "each event is attempted until it succeeds before the next starts"
    );
}

#[tokio::test]
async fn secret_rotation_signs_with_both_during_grace() {
    let dest = Destination::start().await;
    let app = spawn_forwarding("50ms").await;
    let sub = subscribe(&app, json!({"url": dest.url, "topics": ["*"]})).await;
    let (id, old) = (
        sub["id"].as_str().unwrap(),
        sub["secret"].as_str().unwrap().to_owned(),
    );
    let (status, rotated) = post_json(
        &app,
        &format!("/api/subscriptions/{id}/rotate-secret"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    app.deliver(samples::CREATED.as_bytes()).await;
    let got = dest.wait_for(1, Duration::from_secs(5)).await;
    verify_standard_webhook(&old, &got[0]);
    verify_standard_webhook(&new, &got[0]);
    let sigs = got[0].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(sigs.split(' ').count(), 2);
    let first = sigs.split(' ').next().unwrap().strip_prefix("v1,").unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(first)
            .unwrap()
            .len(),
        32
    );
}

#[tokio::test]
async fn subscriptions_crud_and_validation() {
    let (dir, url) = fresh_db();
    // Default: private destinations refused.
    let app = spawn_with(dir, ServeConfig::new(url, Some(SECRET))).await;
    let (status, err) = post_json(
        &app,
        "/api/subscriptions",
        json!({"url": "http://127.0.0.1:9999/x"}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("--allow-private-destinations")
    );
    for bad in [
        json!({"url": "https://a.example.com", "topics": ["Nope"]}),
        json!({"topics": ["*"]}),
        json!({"url": "https://a.example.com", "secret": "short"}),
        json!({"url": "https://a.example.com", "headers": {"webhook-id": "x"}}),
    ] {
        let (status, err) = post_json(&app, "/api/subscriptions", bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {err}");
    }
    let (status, _) = post_json(
        &app,
        "/api/subscriptions",
        json!({"url": "https://a.example.com", "colour": "red"}),
    )
    .await;
    assert_eq!(status, 400);

    let sub = subscribe(&app, json!({"url": "https://crm.example.com/hooks", "topics": ["enrollment.*"], "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"})).await;
    let id = sub["id"].as_str().unwrap();
    assert_eq!(sub["secret"], "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    let (_, list) = app.get("/api/subscriptions").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(
        list["items"][0].get("secret").is_none(),
        "lists do not show secrets"
    );

    let resp = app
        .client
        .patch(format!("{}/api/subscriptions/{id}", app.base))
        .json(&json!({"enabled": false, "course_ids": [68]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(
        (updated["enabled"].as_bool(), updated["course_ids"].clone()),
        (Some(false), json!([68]))
    );
    assert_eq!(
        updated["url"], "https://crm.example.com/hooks",
        "PATCH keeps what it does not name"
    );

    let resp = app
        .client
        .delete(format!("{}/api/subscriptions/{id}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(app.get(&format!("/api/subscriptions/{id}")).await.0, 404);
}

#[tokio::test]
async fn private_destinations_are_refused_at_delivery_time_too() {
    // A subscription stored while private destinations were allowed (or a DNS
    // name that now resolves to a private address) is refused when sending.
    let dest = Destination::start().await;
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.forward = ForwardConfig {
        allow_private_destinations: false,
        ..fast_forwarding("50ms")
    };
    let app = spawn_with(dir, config).await;
    let input: enrollhook::forward::SubscriptionInput =
        serde_json::from_value(json!({"url": dest.url.replace("127.0.0.1", "localhost")})).unwrap();
    let sub = input
        .create("sub_private".into(), chrono::Utc::now(), true)
        .unwrap();
    app.store().insert_subscription(&sub).await.unwrap();
    app.deliver(samples::CREATED.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(dest.received().len(), 0);
    let (_, attempts) = app.get("/api/subscriptions/sub_private/attempts").await;
    let error = attempts["items"][0]["error"].as_str().unwrap();
    assert!(error.contains("private"), "{error}");
}
