//! Crash safety with the real binary: kill it (SIGKILL) during a burst of
//! deliveries; after a restart every delivery that was answered 2xx is there,
//! exactly once, and the projection equals a rebuild; the same with the
//! simulator's realistic traffic and retries through three kills, on SQLite
//! and PostgreSQL. And SIGTERM: stop accepting, finish in-flight deliveries,
//! exit cleanly.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backend::{TestDatabase, on_both_backends};
use common::process::{BIN, start_server};
use common::{SECRET, enrollment_event, fresh_db};
use serde_json::Value;

/// Sends distinct events from `workers` concurrent clients until the server stops
/// answering; returns the event ids that were acknowledged with 2xx.
async fn burst(base: String, workers: usize, per_worker: usize, acked: Arc<Mutex<Vec<String>>>) {
    let client = enrollhook::client::http_client(Duration::from_secs(10)).unwrap();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_worker {
                let id = format!("crash-{w}-{i}");
                let body = enrollment_event(
                    &id,
                    "progress",
                    (w * 1000 + i % 50) as i64,
                    w as i64,
                    &format!("{}.0", i % 100),
                    &format!("2024-04-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60),
                );
                let sig = enrollhook::thinkific::sign(SECRET.as_bytes(), &body);
                let resp = client
                    .post(format!("{base}/webhooks/thinkific"))
                    .header("x-thinkific-hmac-sha256", sig)
                    .body(body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push(id),
                    Ok(_) => {}
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn all_event_ids(client: &reqwest::Client, base: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!("{base}/api/events?limit=1000&cursor={cursor}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            // enrollhook's own alerts (say, `signatures.failing` for the
            // simulator's forged deliveries) are not Thinkific's events.
            let topic = item["topic"].as_str().unwrap();
            if topic.starts_with("enrollhook.") {
                eprintln!("own event: {topic} {}", item["event_id"]);
                continue;
            }
            ids.push(item["event_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return ids,
        }
    }
}

/// How many times each event id was stored.
fn count_ids(ids: &[String]) -> HashMap<&str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    counts
}

/// `enrollhook rebuild --check`: the projection equals a rebuild from the log.
fn assert_projection_equals_rebuild(url: &str) {
    let out = std::process::Command::new(BIN)
        .args(["rebuild", "--check", "--database", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

on_both_backends!(
    multi_thread: sigkill_during_a_burst_loses_nothing_acknowledged,
    simulated_traffic_survives_repeated_kills,
);

async fn sigkill_during_a_burst_loses_nothing_acknowledged(db: TestDatabase) {
    let url = db.url.clone();
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3 {
        let mut server = start_server(&url, SECRET, &[]);
        let sender = tokio::spawn(burst(server.base.clone(), 16, 10_000, acked.clone()));
        // Let the burst run, then kill the server in the middle of it.
        let before = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < before + 300 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        sender.await.unwrap();
        eprintln!(
            "round {round}: {} acknowledged so far",
            acked.lock().unwrap().len()
        );
    }

    let server = start_server(&url, SECRET, &[]);
    let client = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
    let stored = all_event_ids(&client, &server.base).await;
    let counts = count_ids(&stored);
    let acked = acked.lock().unwrap();
    assert!(acked.len() >= 900);
    for id in acked.iter() {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "acknowledged event {id} must be stored exactly once"
        );
    }
    assert!(counts.values().all(|&n| n == 1));
    drop(server);

    assert_projection_equals_rebuild(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries() {
    let (_dir, url) = fresh_db();
    let mut server = start_server(&url, SECRET, &[]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sender = tokio::spawn(burst(server.base.clone(), 8, 100_000, acked.clone()));
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "graceful exit: {status:?}");
    sender.await.unwrap();

    let server = start_server(&url, SECRET, &[]);
    let client = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
    let stored: std::collections::HashSet<String> = all_event_ids(&client, &server.base)
        .await
        .into_iter()
        .collect();
    for id in acked.lock().unwrap().iter() {
        assert!(
            stored.contains(id),
            "acknowledged {id} missing after graceful shutdown"
        );
    }
}

/// The simulator (realistic lifecycles, duplicates, late and forged deliveries,
/// retries like Thinkific's) drives the server while it is killed three times
/// and restarted on the same address. At the end the simulator's own check of
/// the API must match its expected state, every expected event is stored
/// exactly once, and the projection equals a rebuild.
async fn simulated_traffic_survives_repeated_kills(db: TestDatabase) {
    let url = db.url.as_str();
    let listen = format!("127.0.0.1:{}", common::process::free_port());
    let mut server = common::process::start_server_on(&listen, url, SECRET, &[]);
    let base = server.base.clone();
    let simulator = tokio::process::Command::new(BIN)
        .args(["simulate", "--url", &format!("{base}/webhooks/thinkific")])
        // Paced, so the traffic outlasts the three kills on any machine.
        .args([
            "--secret",
            SECRET,
            "--students",
            "200",
            "--courses",
            "5",
            "--rate",
            "1500",
        ])
        .args([
            "--duplicates",
            "0.05",
            "--reorder",
            "0.05",
            "--bad-signatures",
            "0.02",
        ])
        .args([
            "--concurrency",
            "16",
            "--retries",
            "9",
            "--seed",
            "11",
            "--quiet",
        ])
        .args(["--verify", &base])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(400 + 250 * round)).await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(150)).await;
        server = common::process::start_server_on(&listen, url, SECRET, &[]);
    }
    let out = tokio::time::timeout(Duration::from_secs(240), simulator.wait_with_output())
        .await
        .expect("the simulator finished")
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "simulator: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("matches the expected state"), "{report}");
    let retries: u64 = report
        .split("retries ")
        .nth(1)
        .and_then(|r| r.split(',').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no retry count in: {report}"));
    assert!(
        retries > 0,
        "the kills must interrupt the traffic: {report}"
    );

    // "expected final state (source `default`): N events, ..."
    let expected_events: usize = report
        .lines()
        .find_map(|l| l.split("): ").nth(1)?.split(" events").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no expected event count in: {report}"));
    let client = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
    let stored = all_event_ids(&client, &base).await;
    let counts = count_ids(&stored);
    assert!(counts.values().all(|&n| n == 1), "an event stored twice");
    assert_eq!(stored.len(), expected_events, "every event exactly once");
    drop(server);

    assert_projection_equals_rebuild(url);
}
