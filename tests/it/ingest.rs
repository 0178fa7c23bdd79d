//! Receiving deliveries end to end: the real router on port 0, a real SQLite file.

use crate::common;

use base64::Engine as _;
use common::*;
use enrollhook::thinkific::{samples, sign};
use serde_json::Value;

async fn enrollment(app: &TestApp, id: i64) -> Value {
    let (status, body) = app.get(&format!("/api/enrollments/default/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn quarantine_count(app: &TestApp) -> usize {
    let (_, q) = app.get("/api/quarantine?limit=1000").await;
    q["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn published_samples_end_to_end() {
    let app = spawn_app().await;
    for (sample, id) in [
        (samples::CREATED, "20190131191810790022472"),
        (samples::PROGRESS, "20190131192004041953291"),
        (samples::COMPLETED, "20190131192005552012814"),
    ] {
        let (status, body) = app.deliver(sample.as_bytes()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "stored");
        assert_eq!(body["event_id"], id);
    }

    // The samples carry an expiry_date in 2014: not-completed ones read as expired.
    for (id, progress, status, course) in [
        (3, 0.0, "expired", 68),
        (4, 24.0, "expired", 25),
        (75, 100.0, "completed", 48),
    ] {
        let e = enrollment(&app, id).await;
        assert_eq!(e["enrollment"]["progress"], progress, "{e}");
        assert_eq!(e["enrollment"]["status"], status, "{e}");
        assert_eq!(e["enrollment"]["course_id"], course);
        assert_eq!(e["enrollment"]["course_name"], "[TEST] lorem ipsum");
        assert_eq!(e["enrollment"]["email"], "[TEST] john@doe.com");
        assert_eq!(e["events"].as_array().unwrap().len(), 1);
    }
    let completed = enrollment(&app, 75).await;
    assert_eq!(
        completed["enrollment"]["completed_at"],
        "2014-02-01T00:20:05.522Z"
    );
    assert_eq!(
        completed["events"][0]["body"]["payload"]["percentage_completed"],
        "100.0"
    );

    let (_, list) = app.get("/api/enrollments").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert_eq!(list["next_cursor"], Value::Null);
    let (_, completed) = app.get("/api/enrollments?status=completed").await;
    assert_eq!(completed["items"].as_array().unwrap().len(), 1);
    let (_, by_course) = app.get("/api/enrollments?course_id=25").await;
    assert_eq!(by_course["items"][0]["enrollment_id"], 4);

    let (_, courses) = app.get("/api/courses").await;
    let courses = courses["items"].as_array().unwrap();
    assert_eq!(courses.len(), 3);
    let c48 = courses.iter().find(|c| c["course_id"] == 48).unwrap();
    assert_eq!(
        (c48["enrollments"].as_i64(), c48["completed"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(c48["completion_rate"], 1.0);
    assert_eq!(c48["median_days_to_complete"], 0.0);

    let (_, events) = app.get("/api/events?topic=enrollment.progress").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
    let (_, events) = app.get("/api/events?topic=enrollment.*").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn duplicates_are_stored_once() {
    let app = spawn_app().await;
    let (s1, b1) = app.deliver(samples::PROGRESS.as_bytes()).await;
    let (s2, b2) = app.deliver(samples::PROGRESS.as_bytes()).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        (b1["status"].as_str(), b2["status"].as_str()),
        (Some("stored"), Some("duplicate"))
    );

    // 50 concurrent copies of one new event: one stored, 49 duplicates.
    let body = enrollment_event(
        "evt-concurrent",
        "progress",
        500,
        7,
        "40.0",
        "2024-03-01T00:00:00Z",
    );
    let replies = futures::future::join_all((0..50).map(|_| app.deliver(&body))).await;
    let stored = replies
        .iter()
        .filter(|(s, b)| *s == 200 && b["status"] == "stored")
        .count();
    let dups = replies
        .iter()
        .filter(|(s, b)| *s == 200 && b["status"] == "duplicate")
        .count();
    assert_eq!((stored, dups), (1, 49));

    let e = enrollment(&app, 500).await;
    assert_eq!(e["events"].as_array().unwrap().len(), 1);
    assert_eq!(e["enrollment"]["event_count"], 1);
    let (_, events) = app.get("/api/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn late_progress_does_not_undo_completion() {
    let app = spawn_app().await;
    let completed = enrollment_event("e-3", "completed", 9, 1, "100.0", "2024-03-03T00:00:00Z");
    let older = enrollment_event("e-2", "progress", 9, 1, "24.0", "2024-03-02T00:00:00Z");
    assert_eq!(app.deliver(&completed).await.0, 200);
    assert_eq!(app.deliver(&older).await.0, 200);
    let e = enrollment(&app, 9).await;
    assert_eq!(e["enrollment"]["status"], "completed");
    assert_eq!(e["enrollment"]["progress"], 100.0);
    assert_eq!(e["enrollment"]["event_count"], 2);
    assert_eq!(e["events"].as_array().unwrap().len(), 2);

    // A newer progress after completion: still completed (sticky), progress follows the newest.
    let newer = enrollment_event("e-4", "progress", 9, 1, "90.0", "2024-03-04T00:00:00Z");
    assert_eq!(app.deliver(&newer).await.0, 200);
    let e = enrollment(&app, 9).await;
    assert_eq!(e["enrollment"]["status"], "completed");
    assert_eq!(e["enrollment"]["progress"], 90.0);

    let report = app.store().rebuild_projection(true).await.unwrap();
    assert_eq!(report.changed, 0, "{report:?}");
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_quarantined() {
    let app = spawn_app().await;
    let body = samples::PROGRESS.as_bytes();
    let good = sign(SECRET.as_bytes(), body);

    struct Case<'a> {
        name: &'a str,
        body: Vec<u8>,
        signature: Option<String>,
        status: u16,
        code: &'a str,
        message_has: &'a str,
    }
    let b64 = {
        use hmac::{KeyInit, Mac};
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        m.update(body);
        base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
    };
    let reserialized = serde_json::to_vec(&serde_json::from_slice::<Value>(body).unwrap()).unwrap();
    let signed = |b: &[u8]| Some(sign(SECRET.as_bytes(), b));
    let cases = [
        Case {
            name: "wrong signature",
            body: body.to_vec(),
            signature: Some(sign(b"other-key", body)),
            status: 401,
            code: "signature_mismatch",
            message_has: "API key",
        },
        Case {
            name: "base64 signature",
            body: body.to_vec(),
            signature: Some(b64),
            status: 401,
            code: "signature_malformed",
            message_has: "base64",
        },
        Case {
            name: "re-serialized body",
            body: body.to_vec(),
            signature: signed(&reserialized),
            status: 401,
            code: "signature_mismatch",
            message_has: "re-serialized",
        },
        Case {
            name: "missing header",
            body: body.to_vec(),
            signature: None,
            status: 401,
            code: "signature_missing",
            message_has: "missing",
        },
        Case {
            name: "empty body",
            body: vec![],
            signature: signed(b""),
            status: 400,
            code: "body_empty",
            message_has: "empty",
        },
        Case {
            name: "invalid JSON",
            body: b"{\"id\": ".to_vec(),
            signature: signed(b"{\"id\": "),
            status: 400,
            code: "body_not_json",
            message_has: "not valid JSON",
        },
        Case {
            name: "invalid UTF-8",
            body: b"{\"id\":\"\xff\xfe\"}".to_vec(),
            signature: signed(b"{\"id\":\"\xff\xfe\"}"),
            status: 400,
            code: "body_not_utf8",
            message_has: "UTF-8",
        },
        Case {
            name: "missing envelope field",
            body: br#"{"id":"1","resource":"enrollment","action":"progress"}"#.to_vec(),
            signature: signed(br#"{"id":"1","resource":"enrollment","action":"progress"}"#),
            status: 400,
            code: "envelope_invalid",
            message_has: "`payload` is missing",
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let (status, reply) = app
            .deliver_to("/webhooks/thinkific", &case.body, case.signature.as_deref())
            .await;
        assert_eq!(status, case.status, "{}: {reply}", case.name);
        assert_eq!(reply["error"], case.code, "{}: {reply}", case.name);
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains(case.message_has),
            "{}: {message}",
            case.name
        );
        assert!(message.contains("quarantine"), "{}: {message}", case.name);
        assert!(!message.contains(SECRET), "secrets never appear in replies");
        assert_eq!(quarantine_count(&app).await, i + 1, "{}", case.name);
    }
    // Nothing was stored.
    let (_, events) = app.get("/api/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 0);

    // The quarantine keeps the reason, the raw bytes and the headers.
    let (_, list) = app.get("/api/quarantine").await;
    let newest = &list["items"][0];
    assert_eq!(newest["reason_code"], "envelope_invalid");
    let (_, utf8) = app
        .get(&format!("/api/quarantine/{}", list["items"][1]["id"]))
        .await;
    assert_eq!(utf8["body_encoding"], "base64");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(utf8["body"].as_str().unwrap())
            .unwrap(),
        b"{\"id\":\"\xff\xfe\"}"
    );
    let (_, first) = app
        .get(&format!("/api/quarantine/{}", list["items"][7]["id"]))
        .await;
    assert_eq!(first["body"], samples::PROGRESS);
    assert!(
        first["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-thinkific-hmac-sha256")
    );

    // Too large: 413, not kept. Unknown source: 404, not kept.
    let huge = vec![b' '; 10 * 1024 * 1024];
    let (status, reply) = app
        .deliver_to("/webhooks/thinkific", &huge, Some(&good))
        .await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"], "body_too_large");
    let (status, reply) = app
        .deliver_to("/webhooks/thinkific/nope", body, Some(&good))
        .await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"], "unknown_source");
    assert_eq!(quarantine_count(&app).await, cases.len());
}

#[tokio::test]
async fn unknown_topics_are_stored_not_rejected() {
    let app = spawn_app().await;
    let body = br#"{"id":"77","resource":"order","action":"created","tenant_id":"59","created_at":"2024-01-01T00:00:00Z","payload":{"id":5,"amount_cents":1000}}"#;
    let (status, reply) = app.deliver(body).await;
    assert_eq!(status, 200, "{reply}");
    let body = br#"{"id":"78","resource":"space_ship","action":"launched","payload":{"x":1}}"#;
    let (status, reply) = app.deliver(body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["topic"], "space_ship.launched");
    let (_, events) = app.get("/api/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2);
    assert_eq!(events["items"][0]["body"]["payload"]["amount_cents"], 1000);
    let (_, enrollments) = app.get("/api/enrollments").await;
    assert_eq!(enrollments["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn quarantined_delivery_is_admitted_after_fixing_the_secret() {
    let (dir, url) = fresh_db();
    // First run: misconfigured with the wrong key.
    let mut app = spawn_with(
        dir,
        enrollhook::config::ServeConfig::new(url.clone(), Some("wrong-key")),
    )
    .await;
    let (status, _) = app.deliver(samples::COMPLETED.as_bytes()).await;
    assert_eq!(status, 401);
    let (_, q) = app.get("/api/quarantine").await;
    let id = q["items"][0]["id"].as_i64().unwrap();
    let (status, reply) = app
        .client
        .post(format!("{}/api/quarantine/{id}/retry", app.base))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(
        status,
        422,
        "still rejected with the wrong key: {:?}",
        reply.text().await
    );
    app.stop().await;

    // Second run: the right key. Retry admits it.
    let dir = std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap());
    let app = spawn_with(dir, enrollhook::config::ServeConfig::new(url, Some(SECRET))).await;
    let resp = app
        .client
        .post(format!("{}/api/quarantine/{id}/retry", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["status"], "stored");
    let e = enrollment(&app, 75).await;
    assert_eq!(e["enrollment"]["status"], "completed");
    let (_, q) = app.get(&format!("/api/quarantine/{id}")).await;
    assert_eq!(q["resolution"], "admitted as event 20190131192005552012814");
}

#[tokio::test]
async fn pagination_walks_every_row_once() {
    let app = spawn_app().await;
    for i in 0..25 {
        let body = enrollment_event(
            &format!("p{i}"),
            "created",
            i,
            1 + i % 2,
            "0",
            "2024-01-02T00:00:00Z",
        );
        assert_eq!(app.deliver(&body).await.0, 200);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(&format!("/api/enrollments?limit=10&cursor={cursor}"))
            .await;
        assert_eq!(status, 200);
        for item in page["items"].as_array().unwrap() {
            seen.push(item["enrollment_id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
    let (_, odd) = app.get("/api/enrollments?course_id=2&limit=1000").await;
    assert_eq!(odd["items"].as_array().unwrap().len(), 12);

    // Events tail by position.
    let (_, first) = app.get("/api/events?limit=20").await;
    let last_seq = first["items"][19]["seq"].as_i64().unwrap();
    let (_, rest) = app.get(&format!("/api/events?after={last_seq}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 5);

    for bad in [
        "/api/enrollments?limit=0",
        "/api/enrollments?limit=5000",
        "/api/enrollments?cursor=garbage",
        "/api/enrollments?status=done",
        "/api/enrollments?course_id=abc",
        "/api/enrollments?updated_after=yesterday",
        "/api/enrollments?colour=red",
    ] {
        let (status, reply) = app.get(bad).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().len() > 10,
            "{bad}: {reply}"
        );
    }
    let (status, _) = app.get("/api/enrollments/default/999999").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn api_token_is_required_when_configured() {
    let (dir, url) = fresh_db();
    let mut config = enrollhook::config::ServeConfig::new(url, Some(SECRET));
    config.api_token = Some(enrollhook::config::Secret::new("s3cret-token"));
    let app = spawn_with(dir, config).await;
    let (status, reply) = app.get("/api/enrollments").await;
    assert_eq!(status, 401, "{reply}");
    let (status, _) = app.get("/metrics").await;
    assert_eq!(status, 401);
    let ok = app
        .client
        .get(format!("{}/api/enrollments", app.base))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let wrong = app
        .client
        .get(format!("{}/api/courses", app.base))
        .bearer_auth("s3cret-tokeN")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // Health checks and webhooks do not need the token.
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    assert_eq!(app.deliver(samples::CREATED.as_bytes()).await.0, 200);
}

#[tokio::test]
async fn metrics_count_deliveries() {
    let app = spawn_app().await;
    app.deliver(samples::CREATED.as_bytes()).await;
    app.deliver(samples::CREATED.as_bytes()).await;
    app.deliver_to("/webhooks/thinkific", samples::CREATED.as_bytes(), None)
        .await;
    let resp = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#"enrollhook_deliveries_total{outcome="stored"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"enrollhook_deliveries_total{outcome="duplicate"} 1"#));
    assert!(text.contains(r#"enrollhook_deliveries_total{outcome="signature_missing"} 1"#));
    assert!(text.contains("enrollhook_batch_size_count"));
    assert!(text.contains("enrollhook_delivery_duration_seconds_bucket"));
    assert!(text.contains("enrollhook_projection_waiting_events"));
    // A read of the projection lets it catch up first: nothing waits after it.
    assert_eq!(app.get("/api/enrollments").await.0, 200);
    let (_, metrics) = app.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("enrollhook_projection_waiting_events 0"),
        "{text}"
    );
}

#[tokio::test]
async fn rebuild_gives_the_identical_projection() {
    let app = spawn_app().await;
    // Many enrollments, events delivered in a scrambled order with duplicates.
    let mut bodies = Vec::new();
    for enrollment in 0..20i64 {
        for step in 0..5i64 {
            let action = match step {
                0 => "created",
                4 => "completed",
                _ => "progress",
            };
            let pct = format!("{}.0", step * 25);
            let at = format!("2024-02-{:02}T10:00:00Z", step + 1);
            bodies.push(enrollment_event(
                &format!("r{enrollment}-{step}"),
                action,
                enrollment,
                enrollment % 3,
                &pct,
                &at,
            ));
        }
    }
    // Deterministic shuffle.
    let mut order: Vec<usize> = (0..bodies.len()).collect();
    let mut x: u64 = 42;
    for i in (1..order.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    for i in order.iter().chain(order.iter().take(10)) {
        assert_eq!(app.deliver(&bodies[*i]).await.0, 200);
    }
    let (_, before) = app.get("/api/enrollments?limit=1000").await;
    let report = app.store().rebuild_projection(true).await.unwrap();
    assert_eq!(
        (
            report.events,
            report.enrollments,
            report.changed,
            report.removed
        ),
        (100, 20, 0, 0)
    );
    let report = app.store().rebuild_projection(false).await.unwrap();
    assert_eq!(report.changed, 0);
    let (_, after) = app.get("/api/enrollments?limit=1000").await;
    assert_eq!(before, after);
    for item in after["items"].as_array().unwrap() {
        assert_eq!(item["status"], "completed");
        assert_eq!(item["progress"], 100.0);
        assert_eq!(item["event_count"], 5);
    }
}
