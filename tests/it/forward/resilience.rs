//! Forwarding through kills, abandoned requests, failing destinations and
//! two instances sharing one outbox.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_kill() {
    let dest = Destination::start().await;
    // Fail the first three attempts; the process is killed after the first.
    dest.script([Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    let (_dir, url) = fresh_db();
    let mut server = start_server(
        &url,
        SECRET,
        &[
            "--retry-schedule",
            "1s,1s,1s,1s",
            "--allow-private-destinations",
            // A delivery in flight when the process dies waits for its lease
            // (timeout + 5 s) before another attempt.
            "--forward-timeout",
            "2s",
        ],
    );
    let client = enrollhook::client::http_client(Duration::from_secs(5)).unwrap();
    let resp = client
        .post(format!("{}/api/subscriptions", server.base))
        .json(&json!({"url": dest.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let out = std::process::Command::new(BIN)
        .args([
            "send",
            "completed",
            "--url",
            &format!("{}/webhooks/thinkific", server.base),
            "--secret",
            SECRET,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    dest.wait_for(1, Duration::from_secs(5)).await;
    server.kill();

    let _server = start_server(
        &url,
        SECRET,
        &[
            "--retry-schedule",
            "1s,1s,1s,1s",
            "--allow-private-destinations",
            // A delivery in flight when the process dies waits for its lease
            // (timeout + 5 s) before another attempt.
            "--forward-timeout",
            "2s",
        ],
    );
    let got = dest.wait_for(4, Duration::from_secs(20)).await;
    assert!(got.iter().all(|r| r.body == samples::COMPLETED.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abruptly_dropped_ingest_still_forwards_every_stored_event() {
    let dest = Destination::start().await;
    let app = spawn_forwarding("50ms").await;
    subscribe(&app, json!({"url": dest.url, "topics": ["*"]})).await;
    // Many clients; each request is abandoned after a random short time.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, base) = (app.client.clone(), app.base.clone());
        let body = enrollment_event(
            &format!("drop-{i}"),
            "progress",
            i,
            1,
            "10.0",
            "2024-06-01T00:00:00Z",
        );
        let sig = enrollhook::thinkific::sign(SECRET.as_bytes(), &body);
        tasks.push(tokio::spawn(async move {
            let request = client
                .post(format!("{base}/webhooks/thinkific"))
                .header("x-thinkific-hmac-sha256", sig)
                .body(body)
                .send();
            let _ =
                tokio::time::timeout(Duration::from_micros(100 + (i as u64 * 37) % 3000), request)
                    .await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, events) = app.get("/api/events?limit=1000").await;
    let stored = events["items"].as_array().unwrap().len();
    let got = dest.wait_for(stored, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<String> = dest
        .received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        stored,
        "every stored event forwarded exactly once ({} requests)",
        got.len()
    );
}

#[tokio::test]
async fn a_subscription_failing_for_too_long_is_disabled() {
    let dest = Destination::start().await;
    dest.answer_always(Reply::Status(500));
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    // "Days" in production; a fraction of a second here.
    config.forward = ForwardConfig {
        disable_after: Duration::from_millis(300),
        ..fast_forwarding("100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms")
    };
    let app = spawn_with(dir, config).await;
    let sub = subscribe(&app, json!({"url": dest.url})).await;
    let id = sub["id"].as_str().unwrap();
    app.deliver(samples::CREATED.as_bytes()).await;
    let start = std::time::Instant::now();
    loop {
        let (_, s) = app.get(&format!("/api/subscriptions/{id}")).await;
        if s["enabled"] == false {
            assert!(
                s["disabled_reason"]
                    .as_str()
                    .unwrap()
                    .contains("failed since"),
                "{s}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not disabled: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts_when_disabled = dest.received().len();
    assert!(attempts_when_disabled >= 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        dest.received().len(),
        attempts_when_disabled,
        "a disabled subscription gets nothing"
    );
    // Re-enabling resumes the pending delivery.
    dest.answer_always(Reply::Status(200));
    let resp = app
        .client
        .patch(format!("{}/api/subscriptions/{id}", app.base))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    dest.wait_for(attempts_when_disabled + 1, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_outbox_without_double_delivery() {
    let dest = Destination::start().await;
    let first = spawn_forwarding_on(TestDatabase::create(Backend::Postgres).await, "50ms").await;
    let url = first.pg.as_ref().unwrap().url.clone();
    let (dir, _) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.forward = fast_forwarding("50ms");
    let second = spawn_with(dir, config).await;
    subscribe(&first, json!({"url": dest.url, "topics": ["*"]})).await;
    // Deliveries alternate between the instances; both workers drain the outbox.
    let mut sends = Vec::new();
    for i in 0..100 {
        let app = if i % 2 == 0 { &first } else { &second };
        let body = enrollment_event(
            &format!("share-{i}"),
            "progress",
            i,
            1,
            "5.0",
            "2024-07-01T00:00:00Z",
        );
        sends.push(async move { app.deliver(&body).await.0 });
    }
    assert!(
        futures::future::join_all(sends)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    let got = dest.wait_for(100, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids: Vec<String> = dest
        .received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (ids.len(), dest.received().len()),
        (100, 100),
        "each event delivered once ({} seen)",
        got.len()
    );
}

on_both_backends!(a_hanging_destination_leaves_room_for_the_others);

/// One destination never answers (each attempt waits out a long timeout)
/// and has a backlog; another answers at once. The first may hold only its
/// own share of the deliveries in flight, so the second gets every one of
/// its deliveries while the first still hangs. (Before per-subscription
/// room, the hanging one's attempts took every slot within a few claims
/// and the healthy one waited for the timeouts.)
async fn a_hanging_destination_leaves_room_for_the_others(db: TestDatabase) {
    let hanging = Destination::start().await;
    hanging.answer_always(Reply::Hang(Duration::from_secs(60)));
    let healthy = Destination::start().await;
    let app = db
        .serve(|config| {
            config.forward = ForwardConfig {
                timeout: Duration::from_secs(30),
                concurrency: 8,
                per_subscription: 3,
                ..fast_forwarding("1s")
            }
        })
        .await;
    let stuck = subscribe(&app, json!({"url": hanging.url, "topics": ["*"]})).await;
    subscribe(&app, json!({"url": healthy.url, "topics": ["*"]})).await;
    for i in 0..40 {
        let body = enrollment_event(
            &format!("hang-{i}"),
            "progress",
            i,
            1,
            "5.0",
            "2024-07-01T00:00:00Z",
        );
        assert_eq!(app.deliver(&body).await.0, 200);
    }
    let got = healthy.wait_for(40, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 40, "the healthy destination got every delivery");
    // The hanging one holds its share, no more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hanging.received().len(), 3, "in flight to the hanging one");
    let (_, pending) = app
        .get(&format!(
            "/api/subscriptions/{}/deliveries?state=pending&limit=100",
            stuck["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        pending["items"].as_array().map(Vec::len),
        Some(40),
        "{pending}"
    );
}
