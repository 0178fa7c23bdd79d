//! Alerts (`enrollhook.*`): raised once per incident, recovered once,
//! delivered to the subscriptions that ask for them, on both backends, with
//! stand-in receivers and the real worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::common;

use chrono::Utc;
use common::backend::{TestDatabase, on_both_backends};
use common::destination::{Destination, Reply};
use common::*;
use enrollhook::alerts::{AlertConfig, Clock};
use enrollhook::config::{FileConfig, Secret, ServeConfig, Sources};
use enrollhook::forward::ForwardConfig;
use enrollhook::thinkific::samples;
use serde_json::{Value, json};

on_both_backends!(
    a_failing_subscription_raises_failing_then_disabled_then_recovered_once_each,
    a_dead_delivery_raises_exhausted_once,
    an_alert_subscription_that_fails_does_not_alert_about_itself,
    a_flood_of_forged_deliveries_raises_signatures_failing_once_then_recovers,
    a_silent_source_raises_source_silent_and_recovers,
    a_school_token_sees_only_its_own_alerts,
);

const ADMIN: &str = "admin-token";

/// A clock the test moves forward (seconds added to the real time).
fn movable_clock() -> (Clock, Arc<AtomicI64>) {
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock =
        Clock::new(move || Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
    (clock, offset)
}

fn forwarding(schedule: &str, alerts: AlertConfig) -> ForwardConfig {
    ForwardConfig {
        schedule: schedule.parse().unwrap(),
        timeout: Duration::from_millis(500),
        allow_private_destinations: true,
        poll_interval: Duration::from_millis(20),
        alerts,
        ..ForwardConfig::default()
    }
}

fn fast_checks() -> AlertConfig {
    AlertConfig {
        check_every: Duration::from_millis(100),
        ..AlertConfig::default()
    }
}

async fn subscribe(app: &TestApp, body: Value) -> String {
    let resp = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let v: Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let resp = app
        .client
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The alert bodies a destination received, as (topic, body).
fn alerts_received(dest: &Destination) -> Vec<(String, Value)> {
    dest.received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .filter(|b| b["resource"] == "enrollhook")
        .map(|b| (format!("enrollhook.{}", b["action"].as_str().unwrap()), b))
        .collect()
}

fn topics(alerts: &[(String, Value)]) -> Vec<&str> {
    alerts.iter().map(|(t, _)| t.as_str()).collect()
}

/// Waits until `dest` received an alert of `topic` (panics after 15 s).
async fn wait_for_alert(dest: &Destination, topic: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        if let Some((_, b)) = alerts_received(dest).into_iter().find(|(t, _)| t == topic) {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no {topic} arrived; got {:?}",
            topics(&alerts_received(dest))
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Each topic of `alerts` exactly once.
fn each_once(alerts: &[(String, Value)], expected: &[&str]) {
    for topic in expected {
        let n = alerts.iter().filter(|(t, _)| t == topic).count();
        assert_eq!(n, 1, "{topic} {n} times in {:?}", topics(alerts));
    }
}

async fn serve_admin(db: TestDatabase, forward: ForwardConfig) -> TestApp {
    db.serve(|c| {
        c.api_token = Some(Secret::new(ADMIN));
        c.forward = forward;
    })
    .await
}

async fn a_failing_subscription_raises_failing_then_disabled_then_recovered_once_each(
    db: TestDatabase,
) {
    let alert_dest = Destination::start().await;
    let crm = Destination::start().await;
    crm.answer_always(Reply::Status(500));
    let mut forward = forwarding(
        "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms",
        AlertConfig {
            failing_after: 3,
            ..fast_checks()
        },
    );
    forward.disable_after = Duration::from_millis(1200);
    let app = serve_admin(db, forward).await;
    subscribe(
        &app,
        json!({"url": alert_dest.url, "topics": ["enrollhook.*"], "description": "ops"}),
    )
    .await;
    let crm_id = subscribe(
        &app,
        json!({"url": crm.url, "topics": ["enrollment.*"], "description": "the CRM"}),
    )
    .await;
    assert_eq!(app.deliver(samples::PROGRESS.as_bytes()).await.0, 200);

    let failing = wait_for_alert(&alert_dest, "enrollhook.subscription.failing").await;
    let p = &failing["payload"];
    assert_eq!(p["subscription"]["id"], crm_id.as_str());
    assert!(p["consecutive_failures"].as_u64().unwrap() >= 3, "{p}");
    assert_eq!(p["last_failure"]["status"], 500);
    let summary = p["summary"].as_str().unwrap();
    assert!(summary.contains("answered 500"), "{summary}");
    assert!(summary.contains("the CRM"), "{summary}");
    // Only scheme and host of the destination are shown.
    assert!(!p.to_string().contains("/hook"), "{p}");

    let disabled = wait_for_alert(&alert_dest, "enrollhook.subscription.disabled").await;
    assert_eq!(disabled["payload"]["subscription"]["id"], crm_id.as_str());
    assert!(
        disabled["payload"]["what_to_do"]
            .as_str()
            .unwrap()
            .contains(&format!("/api/subscriptions/{crm_id}")),
        "{disabled}"
    );

    let (status, alerts) = get_as(&app, ADMIN, "/api/alerts").await;
    assert_eq!(status, 200);
    let open: Vec<&str> = alerts["open"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(open, ["subscription.disabled", "subscription.failing"]);
    // Not scoped to one source: the reserved source.
    assert_eq!(alerts["open"][0]["source"], "enrollhook");

    // The CRM is fixed; resumed, its pending delivery goes through.
    crm.answer_always(Reply::Status(200));
    let resp = app
        .client
        .patch(format!("{}/api/subscriptions/{crm_id}", app.base))
        .bearer_auth(ADMIN)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let recovered = wait_for_alert(&alert_dest, "enrollhook.subscription.recovered").await;
    assert_eq!(recovered["payload"]["subscription"]["id"], crm_id.as_str());
    assert_eq!(recovered["payload"]["ended"].as_array().unwrap().len(), 2);

    // More traffic, more time: nothing is raised twice.
    assert_eq!(app.deliver(samples::COMPLETED.as_bytes()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = alerts_received(&alert_dest);
    each_once(
        &got,
        &[
            "enrollhook.subscription.failing",
            "enrollhook.subscription.disabled",
            "enrollhook.subscription.recovered",
        ],
    );
    assert_eq!(got.len(), 3, "{:?}", topics(&got));
    let (_, alerts) = get_as(&app, ADMIN, "/api/alerts").await;
    assert_eq!(alerts["open"].as_array().unwrap().len(), 0, "{alerts}");
    for i in alerts["recent"].as_array().unwrap() {
        assert_eq!(i["recovered_id"], recovered["id"], "{i}");
    }
    // Alerts are events of the log: listed, and the projection rebuilds over them.
    let (_, events) = get_as(&app, ADMIN, "/api/events?source=enrollhook").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 3, "{events}");
    let report = app.store().rebuild_projection(true).await.unwrap();
    assert_eq!(report.changed + report.removed, 0, "{report:?}");
}

async fn a_dead_delivery_raises_exhausted_once(db: TestDatabase) {
    let alert_dest = Destination::start().await;
    let crm = Destination::start().await;
    crm.answer_always(Reply::Status(500));
    let app = serve_admin(
        db,
        forwarding(
            "50ms,50ms",
            AlertConfig {
                failing_after: 50,
                ..fast_checks()
            },
        ),
    )
    .await;
    subscribe(
        &app,
        json!({"url": alert_dest.url, "topics": ["enrollhook.subscription.exhausted"]}),
    )
    .await;
    let crm_id = subscribe(
        &app,
        json!({"url": crm.url, "topics": ["enrollment.*"], "sources": ["default"]}),
    )
    .await;
    assert_eq!(app.deliver(samples::PROGRESS.as_bytes()).await.0, 200);

    let exhausted = wait_for_alert(&alert_dest, "enrollhook.subscription.exhausted").await;
    let p = &exhausted["payload"];
    assert_eq!(p["subscription"]["id"], crm_id.as_str());
    assert_eq!(p["delivery"]["topic"], "enrollment.progress");
    assert_eq!(p["delivery"]["source"], "default");
    assert_eq!(p["delivery"]["attempts"], 3);
    assert!(p["summary"].as_str().unwrap().contains("went dead"), "{p}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = alerts_received(&alert_dest);
    assert_eq!(topics(&got), ["enrollhook.subscription.exhausted"]);
    // It concerns an event of `default`: that source's alert.
    let (_, alerts) = get_as(&app, ADMIN, "/api/alerts?source=default").await;
    assert_eq!(
        alerts["recent"][0]["kind"], "subscription.exhausted",
        "{alerts}"
    );
    assert!(
        alerts["recent"][0]["closed_at"].is_string(),
        "a point alert"
    );
}

async fn an_alert_subscription_that_fails_does_not_alert_about_itself(db: TestDatabase) {
    let ops = Destination::start().await;
    ops.answer_always(Reply::Status(500));
    let crm = Destination::start().await;
    crm.answer_always(Reply::Status(500));
    let app = serve_admin(
        db,
        forwarding(
            "50ms,50ms,50ms",
            AlertConfig {
                failing_after: 2,
                ..fast_checks()
            },
        ),
    )
    .await;
    let ops_id = subscribe(&app, json!({"url": ops.url, "topics": ["enrollhook.*"]})).await;
    let crm_id = subscribe(&app, json!({"url": crm.url, "topics": ["enrollment.*"]})).await;
    assert_eq!(app.deliver(samples::PROGRESS.as_bytes()).await.0, 200);

    // The CRM fails: ops is told (and fails to take it), and fails again
    // for the exhausted alert: ops is failing too.
    wait_for_alert(&ops, "enrollhook.subscription.exhausted").await;
    let store = app.store();
    let start = std::time::Instant::now();
    loop {
        let open = store.list_incidents(None, true, 100).await.unwrap();
        if open.iter().any(|i| i.subject == ops_id) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "ops never failing: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let every delivery die.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Ops never received an alert about itself, and its dead alert
    // deliveries raised nothing: the chain stopped.
    for (topic, body) in alerts_received(&ops) {
        assert_ne!(
            body["payload"]["subscription"]["id"],
            ops_id.as_str(),
            "{topic}"
        );
    }
    let incidents = store.list_incidents(None, false, 100).await.unwrap();
    let mut kinds: Vec<(String, String)> = incidents
        .iter()
        .map(|i| {
            (
                i.kind.clone(),
                i.subject.split('/').next().unwrap().to_owned(),
            )
        })
        .collect();
    kinds.sort();
    let mut expected = vec![
        ("subscription.exhausted".to_owned(), crm_id.clone()),
        ("subscription.failing".to_owned(), crm_id.clone()),
        ("subscription.failing".to_owned(), ops_id.clone()),
    ];
    expected.sort();
    assert_eq!(kinds, expected);
    let (_, events) = get_as(&app, ADMIN, "/api/events?source=enrollhook").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2, "{events}");
}

/// Two schools with their own keys and tokens; the admin token.
fn two_schools(c: &mut ServeConfig) {
    let file = FileConfig::parse(
        r#"
        [[source]]
        name = "school-a"
        secret = "key-a"
        api_token = "token-a"
        [[source]]
        name = "school-b"
        secret = "key-b"
        api_token = "token-b"
        "#,
    )
    .unwrap();
    c.sources = Sources::resolve(None, &file);
    c.insecure_skip_verification = false;
    c.api_token = Some(Secret::new(ADMIN));
    c.max_quarantine_rate = 1000;
}

async fn forge(app: &TestApp, source: &str, n: usize) {
    for i in 0..n {
        let body = enrollment_event(
            &format!("forged-{i}"),
            "progress",
            1,
            1,
            "10.0",
            "2026-01-01T00:00:00Z",
        );
        // Signed with a wrong key: what a rotated API key looks like.
        let wrong = enrollhook::thinkific::sign(b"an-old-api-key", &body);
        let (status, _) = app
            .deliver_to(
                &format!("/webhooks/thinkific/{source}"),
                &body,
                Some(&wrong),
            )
            .await;
        assert_eq!(status, 401);
    }
}

async fn a_flood_of_forged_deliveries_raises_signatures_failing_once_then_recovers(
    db: TestDatabase,
) {
    let ops = Destination::start().await;
    let (clock, offset) = movable_clock();
    let alerts = AlertConfig {
        signature_failures: 5,
        clock,
        ..fast_checks()
    };
    let app = db
        .serve(|c| {
            two_schools(c);
            c.forward = forwarding("50ms", alerts);
        })
        .await;
    subscribe(&app, json!({"url": ops.url, "topics": ["enrollhook.signatures.failing", "enrollhook.signatures.recovered"]})).await;
    forge(&app, "school-a", 5).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        alerts_received(&ops).is_empty(),
        "five is not more than five"
    );

    forge(&app, "school-a", 7).await;
    let failing = wait_for_alert(&ops, "enrollhook.signatures.failing").await;
    let p = &failing["payload"];
    assert_eq!(p["source"], "school-a");
    assert!(p["rejected"].as_u64().unwrap() > 5, "{p}");
    assert_eq!(p["newest"][0]["reason_code"], "signature_mismatch");
    assert!(p["newest"][0]["quarantine_id"].is_i64(), "{p}");
    assert!(
        p["what_to_do"]
            .as_str()
            .unwrap()
            .contains("API key of source `school-a`"),
        "{p}"
    );
    // The flood goes on: still one alert.
    forge(&app, "school-a", 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        topics(&alerts_received(&ops)),
        ["enrollhook.signatures.failing"]
    );

    // Ten minutes later the window is empty: recovered, once.
    offset.store(600, Ordering::SeqCst);
    let recovered = wait_for_alert(&ops, "enrollhook.signatures.recovered").await;
    assert_eq!(recovered["payload"]["source"], "school-a");
    tokio::time::sleep(Duration::from_millis(400)).await;
    each_once(
        &alerts_received(&ops),
        &[
            "enrollhook.signatures.failing",
            "enrollhook.signatures.recovered",
        ],
    );
    assert_eq!(alerts_received(&ops).len(), 2);
}

async fn a_silent_source_raises_source_silent_and_recovers(db: TestDatabase) {
    let ops = Destination::start().await;
    let (clock, offset) = movable_clock();
    let mut alerts = AlertConfig {
        clock,
        ..fast_checks()
    };
    alerts
        .silent_after
        .insert("default".into(), Duration::from_secs(3600));
    let app = serve_admin(db, forwarding("50ms", alerts)).await;
    subscribe(
        &app,
        json!({"url": ops.url, "topics": ["enrollhook.*"], "sources": ["default"]}),
    )
    .await;
    assert_eq!(app.deliver(samples::PROGRESS.as_bytes()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(alerts_received(&ops).is_empty());

    offset.store(2 * 3600, Ordering::SeqCst);
    let silent = wait_for_alert(&ops, "enrollhook.source.silent").await;
    assert_eq!(silent["payload"]["source"], "default");
    assert!(silent["payload"]["last_delivery"].is_string());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(alerts_received(&ops).len(), 1, "once");

    // Deliveries are stamped with the real time: the clock comes back to it
    // for the delivery that ends the silence.
    offset.store(0, Ordering::SeqCst);
    assert_eq!(app.deliver(samples::COMPLETED.as_bytes()).await.0, 200);
    wait_for_alert(&ops, "enrollhook.source.recovered").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    each_once(
        &alerts_received(&ops),
        &["enrollhook.source.silent", "enrollhook.source.recovered"],
    );
}

async fn a_school_token_sees_only_its_own_alerts(db: TestDatabase) {
    let alerts = AlertConfig {
        signature_failures: 2,
        ..fast_checks()
    };
    let app = db
        .serve(|c| {
            two_schools(c);
            c.forward = forwarding("50ms", alerts);
        })
        .await;
    forge(&app, "school-a", 3).await;
    forge(&app, "school-b", 3).await;
    let start = std::time::Instant::now();
    loop {
        let (_, all) = get_as(&app, ADMIN, "/api/alerts").await;
        if all["open"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, own) = get_as(&app, "token-a", "/api/alerts").await;
    assert_eq!(status, 200);
    for list in ["open", "recent"] {
        let sources: Vec<&str> = own[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, ["school-a"], "{own}");
    }
    let (status, _) = get_as(&app, "token-a", "/api/alerts?source=school-b").await;
    assert_eq!(status, 403);
    let (status, _) = get_as(&app, "token-a", "/api/alerts?source=enrollhook").await;
    assert_eq!(status, 403);
    // The alert events themselves are the school's events too.
    let (_, events) = get_as(&app, "token-b", "/api/events").await;
    let alert_topics: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(alert_topics, ["enrollhook.signatures.failing"], "{events}");

    // `enrollhook alerts` reads the same incidents.
    let out = std::process::Command::new(common::process::BIN)
        .args(["alerts", "--database", &app.database_url, "--open"])
        .args(["--source", "school-a", "--format", "json"])
        .env_remove("ENROLLHOOK_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["kind"], "signatures.failing");
    assert_eq!(listed[0]["source"], "school-a");
}
