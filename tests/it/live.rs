//! The live stream (`/api/stream`), CSV exports and test deliveries, through
//! the real router on both backends, and the stream across two instances of
//! one PostgreSQL database.

use std::time::Duration;

use crate::common;

use common::backend::{TestDatabase, on_both_backends};
use common::destination::{Destination, Reply};
use common::*;
use enrollhook::config::{FileConfig, Secret, ServeConfig, Sources};
use enrollhook::thinkific::sign;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token";

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// A client of `/api/stream` that reads it message by message.
pub struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    pub async fn open(
        app: &TestApp,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = app.client.get(format!("{}/api/stream", app.base));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.unwrap()
    }

    pub async fn connect(
        app: &TestApp,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Stream {
        let response = Stream::open(app, token, last_event_id).await;
        assert_eq!(response.status().as_u16(), 200, "{:?}", response.headers());
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream {
            response,
            buffer: String::new(),
        }
    }

    /// The next message, or None when none comes within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(Message {
                    event,
                    id,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `delivery` message (others skipped), or None within `wait`.
    pub async fn next_delivery(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.next(left).await?;
            if m.event == "delivery" {
                return Some(m);
            }
        }
    }

    /// Every message that arrives within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Message> {
        let mut all = Vec::new();
        while let Some(m) = self.next(wait).await {
            all.push(m);
        }
        all
    }
}

fn event_ids(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.event == "delivery")
        .map(|m| m.data["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn deliver_event(app: &TestApp, id: &str, enrollment: i64) {
    let body = enrollment_event(
        id,
        "progress",
        enrollment,
        7,
        "10.0",
        "2024-05-01T00:00:00Z",
    );
    let (status, reply) = app.deliver(&body).await;
    assert_eq!(status, 200, "{reply}");
}

const WAIT: Duration = Duration::from_secs(3);

/// A delivery shows on an open stream; a stream resumed with the id of the
/// last message it saw gets exactly what was stored meanwhile, in order; a
/// new stream starts at the feed's end.
async fn stream_resumes_after_last_event_id_without_gaps_or_repeats(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    deliver_event(&app, "before", 1).await;
    let mut live = Stream::connect(&app, None, None).await;
    deliver_event(&app, "e1", 2).await;
    let first = live.next_delivery(WAIT).await.expect("e1 shown live");
    assert_eq!(first.data["event_id"], "e1", "the stream starts at the end");
    assert_eq!(first.data["topic"], "enrollment.progress");
    let resume_at = first.id.clone().expect("deliveries carry their position");
    drop(live);

    for (i, id) in ["e2", "e3", "e4"].iter().enumerate() {
        deliver_event(&app, id, 3 + i as i64).await;
    }
    let mut resumed = Stream::connect(&app, None, Some(&resume_at)).await;
    let seen = resumed.drain(Duration::from_millis(1500)).await;
    assert_eq!(event_ids(&seen), ["e2", "e3", "e4"]);
    // The other messages: the quarantine's state and this instance's counters.
    let counters = seen
        .iter()
        .find(|m| m.event == "counters")
        .expect("counters");
    assert_eq!(counters.data["stored"], 5);
    assert!(seen.iter().any(|m| m.event == "quarantine"));

    // A rejected delivery changes the quarantine message at once.
    let (status, _) = app
        .deliver_to("/webhooks/thinkific", b"{\"id\":\"x\"}", Some("bad"))
        .await;
    assert_eq!(status, 401);
    let q = loop {
        let m = resumed.next(WAIT).await.expect("quarantine change");
        if m.event == "quarantine" {
            break m;
        }
    };
    assert!(q.data["newest_id"].as_i64().unwrap() >= 1);

    // A position the feed never gave is refused, saying why.
    let bad = Stream::open(&app, None, Some("not-a-position")).await;
    assert_eq!(bad.status().as_u16(), 400);
}

/// A school's token streams that school's deliveries only, and no counters.
async fn a_school_streams_its_own_deliveries_only(db: TestDatabase) {
    let app = db.serve(two_schools).await;
    let mut a = Stream::connect(&app, Some("token-a"), None).await;
    let mut admin = Stream::connect(&app, Some(ADMIN), None).await;
    for (school, key, id) in [("school-b", "key-b", "b1"), ("school-a", "key-a", "a1")] {
        let body = enrollment_event(id, "created", 1, 7, "0", "2024-05-01T00:00:00Z");
        let (status, reply) = app
            .deliver_to(
                &format!("/webhooks/thinkific/{school}"),
                &body,
                Some(&sign(key.as_bytes(), &body)),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    let seen = a.drain(Duration::from_millis(1500)).await;
    assert_eq!(event_ids(&seen), ["a1"]);
    assert!(seen.iter().all(|m| m.event != "counters"), "{seen:?}");
    assert_eq!(
        event_ids(&admin.drain(Duration::from_millis(500)).await),
        ["b1", "a1"]
    );
    let wrong = Stream::open(&app, Some("nope"), None).await;
    assert_eq!(wrong.status().as_u16(), 401);
}

fn two_schools(config: &mut ServeConfig) {
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
    config.sources = Sources::resolve(None, &file);
    config.insecure_skip_verification = false;
    config.api_token = Some(Secret::new(ADMIN));
}

async fn metric(app: &TestApp, name: &str) -> i64 {
    let (status, text) = app.get("/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .parse()
        .unwrap()
}

/// `--max-streams` caps the streams; /metrics shows them; a closed stream
/// gives its slot back.
async fn streams_are_capped_and_counted(db: TestDatabase) {
    let app = db.serve(|c| c.max_streams = 1).await;
    let first = Stream::connect(&app, None, None).await;
    let refused = Stream::open(&app, None, None).await;
    assert_eq!(refused.status().as_u16(), 503);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("--max-streams"),
        "{body}"
    );
    assert_eq!(metric(&app, "enrollhook_streams").await, 1);
    assert_eq!(metric(&app, "enrollhook_max_streams").await, 1);
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&app, "enrollhook_streams").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Stream::connect(&app, None, None).await;
}

fn parse_csv(text: &str) -> Vec<Vec<String>> {
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

async fn get_text(app: &TestApp, path: &str, accept: &str) -> (u16, String, String) {
    let r = app
        .client
        .get(format!("{}{path}", app.base))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, r.text().await.unwrap())
}

/// The CSV of the enrollments is the JSON list, every page of it (more than
/// one CSV page), with formula cells defused; the other lists answer CSV too.
async fn csv_exports_equal_the_json_lists_and_are_formula_safe(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    let n = 1_005;
    let bodies: Vec<Vec<u8>> = (1..=n)
        .map(|i| {
            let mut body: Value = serde_json::from_slice(&enrollment_event(
                &format!("ev{i}"),
                "created",
                i,
                7 + i % 3,
                "0",
                "2024-05-01T00:00:00Z",
            ))
            .unwrap();
            if i == 2 {
                body["payload"]["user"]["first_name"] = json!("=HYPERLINK(\"http://evil\")");
                body["payload"]["user"]["last_name"] = json!("-2+3");
            }
            serde_json::to_vec(&body).unwrap()
        })
        .collect();
    for chunk in bodies.chunks(50) {
        let sent = futures::future::join_all(chunk.iter().map(|b| app.deliver(b))).await;
        assert!(sent.iter().all(|(s, _)| *s == 200));
    }
    let mut json_rows = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(&format!("/api/enrollments?limit=1000&cursor={cursor}"))
            .await;
        assert_eq!(status, 200, "{page}");
        json_rows.extend(page["items"].as_array().unwrap().clone());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let (status, content_type, text) = get_text(&app, "/api/enrollments", "text/csv").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/csv; charset=utf-8");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), n as usize);
    assert_eq!(rows.len(), json_rows.len());
    for (row, item) in rows.iter().zip(&json_rows) {
        for (column, cell) in header.iter().zip(row) {
            let expected = match &item[column] {
                Value::Null => String::new(),
                Value::String(s) if s.starts_with(['=', '+', '-', '@']) => format!("'{s}"),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(cell, &expected, "{column} of {item}");
        }
    }
    let evil = rows.iter().find(|r| r[1] == "2").unwrap();
    assert!(
        evil.contains(&"'=HYPERLINK(\"http://evil\")".to_owned()),
        "{evil:?}"
    );
    assert!(evil.contains(&"'-2+3".to_owned()), "{evil:?}");

    // ?format=csv works as well, and limit caps the whole download.
    let (_, _, first_ten) = get_text(&app, "/api/enrollments?format=csv&limit=10", "*/*").await;
    assert_eq!(parse_csv(&first_ten), rows[..10].to_vec());
    // Every list answers CSV.
    for path in [
        "/api/courses?format=csv",
        "/api/activity?format=csv&days=3",
        "/api/events?format=csv",
        "/api/quarantine?format=csv",
        "/api/subscriptions?format=csv",
    ] {
        let (status, content_type, text) = get_text(&app, path, "*/*").await;
        assert_eq!(
            (status, content_type.as_str()),
            (200, "text/csv; charset=utf-8"),
            "{path}: {text}"
        );
    }
    let (_, _, courses) = get_text(&app, "/api/courses", "text/csv").await;
    assert_eq!(parse_csv(&courses).len(), 3);
    let (_, _, events) = get_text(&app, "/api/events?format=csv", "*/*").await;
    assert_eq!(parse_csv(&events).len(), n as usize);
    let (status, _, text) = get_text(&app, "/api/enrollments?format=xlsx", "*/*").await;
    assert_eq!(status, 400);
    assert!(text.contains("json or csv"), "{text}");
}

/// The quizzes list (the dashboard's *Quizzes* CSV) answers CSV: its JSON
/// list cell by cell, a formula-looking quiz name defused.
async fn the_quiz_list_exports_as_csv(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    let quiz = |id: &str, quiz: i64, name: &str, user: i64, grade: f64| {
        serde_json::to_vec(&json!({"id": id, "resource": "quiz", "action": "attempted",
            "tenant_id": "1", "created_at": "2024-05-03T10:00:00Z", "payload": {
                "attempts": 1, "correct_count": 1, "incorrect_count": 0, "grade": grade,
                "result_id": 1, "quiz": {"id": quiz, "name": name},
                "user": {"id": user, "email": format!("u{user}@example.com")}}}))
        .unwrap()
    };
    for body in [
        quiz("q1", 7, "Checkpoint", 1, 40.0),
        quiz("q2", 7, "Checkpoint", 2, 90.0),
        quiz("q3", 8, "=HYPERLINK(\"http://evil\")", 1, 55.5),
    ] {
        assert_eq!(app.deliver(&body).await.0, 200);
    }
    let (status, list) = app.get("/api/quizzes").await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    for path in ["/api/quizzes?format=csv", "/api/quizzes"] {
        let (status, content_type, text) = get_text(&app, path, "text/csv").await;
        assert_eq!(
            (status, content_type.as_str()),
            (200, "text/csv; charset=utf-8"),
            "{path}: {text}"
        );
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            header,
            [
                "source",
                "quiz_id",
                "quiz_name",
                "course_id",
                "students",
                "attempts",
                "average_best_grade",
                "median_best_grade"
            ]
        );
        let rows = parse_csv(&text);
        assert_eq!(rows.len(), items.len(), "{text}");
        for (row, item) in rows.iter().zip(items) {
            for (column, cell) in header.iter().zip(row) {
                let expected = match &item[column] {
                    Value::Null => String::new(),
                    Value::String(s) if s.starts_with(['=', '+', '-', '@']) => format!("'{s}"),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert_eq!(cell, &expected, "{column} of {item}");
            }
        }
        assert_eq!(rows[0][4..], ["2", "2", "65.0", "65.0"], "{text}");
        assert_eq!(rows[1][2], "'=HYPERLINK(\"http://evil\")", "{text}");
    }
    let (status, _, text) = get_text(&app, "/api/quizzes?format=xml", "*/*").await;
    assert_eq!(status, 400);
    assert!(text.contains("json or csv"), "{text}");
}

/// A test delivery is signed and sent as a real one, and its answer shown;
/// it is neither queued nor recorded.
async fn a_test_delivery_reports_the_destinations_answer(db: TestDatabase) {
    let app = db
        .serve(|c| c.forward.allow_private_destinations = true)
        .await;
    let destination = Destination::start().await;
    let created = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .json(&json!({"url": destination.url, "topics": ["enrollment.*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let sub: Value = created.json().await.unwrap();
    let id = sub["id"].as_str().unwrap();
    let test = |app: &TestApp| {
        app.client
            .post(format!(
                "{}/api/subscriptions/{id}/test?send=true",
                app.base
            ))
            .send()
    };
    let ok: Value = test(&app).await.unwrap().json().await.unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["status"], 200);
    let got = destination.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["x-enrollhook-topic"], "enrollhook.test");
    assert!(got[0].headers.contains_key("webhook-signature"));
    destination.answer_always(Reply::Status(500));
    let failed: Value = test(&app).await.unwrap().json().await.unwrap();
    assert_eq!(
        (failed["ok"].clone(), failed["status"].clone()),
        (json!(false), json!(500)),
        "{failed}"
    );
    assert!(
        failed["error"].as_str().unwrap().contains("500"),
        "{failed}"
    );
    let (_, attempts) = app.get(&format!("/api/subscriptions/{id}/attempts")).await;
    assert_eq!(attempts["items"], json!([]), "tests are not recorded");
    let (status, _) = app.get("/api/subscriptions/sub_nope").await;
    assert_eq!(status, 404);
}

/// Open streams end when the server stops: a graceful stop does not wait
/// for them (it would wait 30 s, then cut them).
async fn open_streams_do_not_hold_up_a_graceful_stop(db: TestDatabase) {
    let mut app = db.serve(|_| {}).await;
    let mut stream = Stream::connect(&app, None, None).await;
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("the server stopped with a stream open");
    // What was sent before comes out, then the end (not a 3 s wait).
    let started = std::time::Instant::now();
    stream.drain(WAIT).await;
    assert!(started.elapsed() < WAIT, "the stream did not end");
}

on_both_backends!(
    open_streams_do_not_hold_up_a_graceful_stop,
    stream_resumes_after_last_event_id_without_gaps_or_repeats,
    a_school_streams_its_own_deliveries_only,
    streams_are_capped_and_counted,
    csv_exports_equal_the_json_lists_and_are_formula_safe,
    the_quiz_list_exports_as_csv,
    a_test_delivery_reports_the_destinations_answer
);

/// Two instances on one PostgreSQL database: a stream on one shows what the
/// other stores (by the poll), and a stream resumed on the other instance
/// continues where the first left off.
#[tokio::test]
async fn a_stream_follows_deliveries_of_another_instance() {
    let db = TestDatabase::create(common::backend::Backend::Postgres).await;
    let url = db.url.clone();
    let a = db.serve(|_| {}).await;
    let (dir, _) = fresh_db();
    let b = spawn_with(dir, ServeConfig::new(url, Some(SECRET))).await;
    let mut on_a = Stream::connect(&a, None, None).await;
    deliver_event(&b, "via-b", 1).await;
    let seen = on_a
        .next_delivery(Duration::from_secs(3))
        .await
        .expect("another instance's delivery shows within the poll");
    assert_eq!(seen.data["event_id"], "via-b");
    drop(on_a);
    deliver_event(&a, "via-a", 2).await;
    let mut on_b = Stream::connect(&b, None, seen.id.as_deref()).await;
    assert_eq!(
        event_ids(&on_b.drain(Duration::from_millis(1500)).await),
        ["via-a"]
    );
}
