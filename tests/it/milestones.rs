//! Milestones (issue #18 part 1) through the real router on both backends:
//! events of our own derived from the projection, each exactly once whatever
//! the arrival order, duplicates, concurrency, rebuilds and instances.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use crate::common::backend::{Backend, TestDatabase, on_both_backends};
use crate::common::destination::{Destination, Reply};
use crate::common::{SECRET, TestApp, enrollment_event, spawn_with};
use enrollhook::config::ServeConfig;
use enrollhook::maintenance::milestones::{Clock, ScanReport, ScanState, scan_stalled};
use enrollhook::projection::milestones::{MilestoneRules, SourceMilestones};
use enrollhook::store::{EventFilter, PageRequest, Store, StoredEvent};

on_both_backends!(
    a_progress_jump_emits_every_threshold_in_order,
    configured_lessons_emit_lesson_milestones,
    stalled_is_emitted_once_per_stall_with_a_fake_clock,
    a_milestone_subscription_receives_them,
    the_api_lists_configured_milestones,
);

mod concurrent {
    use super::*;
    on_both_backends!(multi_thread:
        exactly_once_under_shuffled_duplicated_and_concurrent_deliveries,
    );
}

fn default_rules(m: SourceMilestones) -> MilestoneRules {
    let mut rules = MilestoneRules::default();
    rules.set("default", m);
    rules
}

/// Every kind but `stalled`, which the real clock would find in these
/// 2024 events at any moment (its own test moves a clock of its own).
fn without_stalled() -> SourceMilestones {
    SourceMilestones {
        stalled_days: None,
        ..SourceMilestones::default()
    }
}

async fn serve_with_milestones(db: TestDatabase, m: SourceMilestones) -> TestApp {
    db.serve(|c| c.milestones = default_rules(m)).await
}

/// Every milestone event in the log, in feed order (after the projection,
/// and on SQLite the move of derived milestones into the log, caught up).
async fn milestones(store: &dyn Store) -> Vec<StoredEvent> {
    store.sync_projection().await.unwrap();
    let mut all = Vec::new();
    let mut page = PageRequest {
        limit: 1000,
        cursor: None,
    };
    loop {
        let filter = EventFilter {
            source: Some("default".into()),
            topic: Some("milestone.*".into()),
            after_seq: None,
        };
        let got = store.list_events(&filter, &page).await.unwrap();
        all.extend(got.items);
        match got.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => return all,
        }
    }
}

fn ids(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.clone()).collect()
}

fn body(e: &StoredEvent) -> Value {
    serde_json::from_str(&e.body).unwrap()
}

async fn deliver_ok(app: &TestApp, body: &[u8]) {
    let (status, reply) = app.deliver(body).await;
    assert_eq!(status, 200, "{reply}");
}

async fn a_progress_jump_emits_every_threshold_in_order(db: TestDatabase) {
    let app = serve_with_milestones(db, without_stalled()).await;
    let store = app.store();
    deliver_ok(
        &app,
        &enrollment_event("e1", "progress", 7, 3, "10.0", "2024-05-01T10:00:00Z"),
    )
    .await;
    assert!(
        milestones(store.as_ref()).await.is_empty(),
        "10 % is no milestone"
    );
    deliver_ok(
        &app,
        &enrollment_event("e2", "progress", 7, 3, "80.0", "2024-05-01T11:00:00Z"),
    )
    .await;
    let found = milestones(store.as_ref()).await;
    assert_eq!(
        ids(&found),
        ["ms-7-progress-25", "ms-7-progress-50", "ms-7-progress-75"]
    );
    for (e, threshold) in found.iter().zip([25.0, 50.0, 75.0]) {
        assert_eq!(e.topic, "milestone.progress");
        let b = body(e);
        assert_eq!(b["payload"]["milestone"]["threshold"], json!(threshold));
        // The enrollment as projected: a receiver needs nothing else.
        let enrollment = &b["payload"]["enrollment"];
        assert_eq!(enrollment["id"], 7);
        assert_eq!(enrollment["progress"], json!(80.0));
        assert_eq!(enrollment["email"], "s7@example.com");
        assert_eq!(enrollment["course_name"], "Course 3");
        assert_eq!(b["payload"]["user"]["id"], 1007);
    }
    // Listed like any other event, by exact topic too.
    let (status, listed) = app
        .get("/api/events?topic=milestone.progress&source=default")
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    // A milestone is not an enrollment event: the projection is untouched.
    let (_, enrollment) = app.get("/api/enrollments/default/7").await;
    assert_eq!(enrollment["enrollment"]["event_count"], 2, "{enrollment}");
    assert_eq!(enrollment["events"].as_array().unwrap().len(), 2);
    // A redelivery and a later, lower progress emit nothing again.
    deliver_ok(
        &app,
        &enrollment_event("e2", "progress", 7, 3, "80.0", "2024-05-01T11:00:00Z"),
    )
    .await;
    deliver_ok(
        &app,
        &enrollment_event("e3", "progress", 7, 3, "40.0", "2024-05-01T12:00:00Z"),
    )
    .await;
    assert_eq!(milestones(store.as_ref()).await.len(), 3);
}

/// A deterministic shuffle (no dependency on a random source in tests).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

/// One enrollment's life: a free trial, bought, progress, completion.
fn life(enrollment: i64) -> Vec<Vec<u8>> {
    let at = |h: u32| format!("2024-05-01T{h:02}:00:00Z");
    let event = |n: u32, action: &str, pct: &str, trial: bool| {
        let mut v: Value = serde_json::from_slice(&enrollment_event(
            &format!("{enrollment}-{n}"),
            action,
            enrollment,
            3,
            pct,
            &at(n),
        ))
        .unwrap();
        v["payload"]["free_trial"] = json!(trial);
        serde_json::to_vec(&v).unwrap()
    };
    vec![
        event(1, "trial", "0.0", true),
        event(2, "progress", "20.0", true),
        event(3, "created", "20.0", false),
        event(4, "progress", "60.0", false),
        event(5, "progress", "90.0", false),
        event(6, "completed", "100.0", false),
    ]
}

fn expected_for(enrollment: i64) -> Vec<String> {
    let mut ids: Vec<String> = [
        "completed",
        "progress-25",
        "progress-50",
        "progress-75",
        "trial-converted",
    ]
    .iter()
    .map(|k| format!("ms-{enrollment}-{k}"))
    .collect();
    ids.sort();
    ids
}

async fn exactly_once_under_shuffled_duplicated_and_concurrent_deliveries(db: TestDatabase) {
    let app = serve_with_milestones(db, without_stalled()).await;
    let store = app.store();
    let enrollments: Vec<i64> = (1..=8).collect();
    let mut bodies: Vec<Vec<u8>> = enrollments.iter().flat_map(|&e| life(e)).collect();
    // Every event twice, in a shuffled order, 16 at a time.
    bodies.extend(bodies.clone());
    shuffle(&mut bodies, 18);
    for chunk in bodies.chunks(16) {
        futures::future::join_all(chunk.iter().map(|b| deliver_ok(&app, b))).await;
    }
    let found = milestones(store.as_ref()).await;
    let mut by_enrollment: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for e in &found {
        let b = body(e);
        by_enrollment
            .entry(b["payload"]["enrollment_id"].as_i64().unwrap())
            .or_default()
            .push(e.event_id.clone());
    }
    for e in &enrollments {
        let mut got = by_enrollment.remove(e).unwrap_or_default();
        got.sort();
        assert_eq!(got, expected_for(*e), "enrollment {e}");
    }
    assert!(by_enrollment.is_empty());
    // Thresholds of one enrollment are in the log lowest first.
    let progress_of_1: Vec<String> = ids(&found)
        .into_iter()
        .filter(|id| id.starts_with("ms-1-progress"))
        .collect();
    assert_eq!(
        progress_of_1,
        ["ms-1-progress-25", "ms-1-progress-50", "ms-1-progress-75"]
    );

    // A rebuild re-derives the projection, neither breaking on milestone
    // events nor emitting them again.
    let report = store.rebuild_projection(false).await.unwrap();
    assert_eq!(report.enrollments, 8, "{report:?}");
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (
            check.changed,
            check.removed,
            check.index_rows,
            check.learning
        ),
        (0, 0, 0, 0),
        "{check:?}"
    );
    for b in bodies.iter().take(10) {
        deliver_ok(&app, b).await;
    }
    assert_eq!(milestones(store.as_ref()).await.len(), found.len());
}

async fn configured_lessons_emit_lesson_milestones(db: TestDatabase) {
    let app = serve_with_milestones(
        db,
        SourceMilestones {
            lessons: vec![55],
            ..without_stalled()
        },
    )
    .await;
    let store = app.store();
    let lesson = |id: &str, lesson_id: i64| {
        serde_json::to_vec(&json!({"id": id, "resource": "lesson", "action": "completed",
            "tenant_id": "59", "created_at": "2024-05-02T10:00:00Z", "payload": {
                "course": {"id": 3, "name": "Course 3"},
                "chapter": {"id": 900, "name": "Chapter 1", "position": 1},
                "lesson": {"id": lesson_id, "name": format!("Lesson {lesson_id}"), "position": 1, "type": "Video"},
                "user": {"id": 1007, "email": "s7@example.com"},
                "enrollment": {"id": 7}}}))
        .unwrap()
    };
    // The lesson before its enrollment, another lesson, and a redelivery.
    deliver_ok(&app, &lesson("l1", 55)).await;
    deliver_ok(&app, &lesson("l2", 56)).await;
    deliver_ok(&app, &lesson("l1", 55)).await;
    deliver_ok(
        &app,
        &enrollment_event("e1", "created", 7, 3, "5.0", "2024-05-01T10:00:00Z"),
    )
    .await;
    deliver_ok(&app, &lesson("l3", 55)).await; // completed again: the same milestone
    let found = milestones(store.as_ref()).await;
    assert_eq!(ids(&found), ["ms-u1007-c3-lesson-55"]);
    let b = body(&found[0]);
    assert_eq!(found[0].topic, "milestone.lesson");
    assert_eq!(b["payload"]["milestone"]["lesson_id"], 55);
    assert_eq!(b["payload"]["milestone"]["lesson_name"], "Lesson 55");
    assert_eq!(b["payload"]["user"]["id"], 1007);
}

fn day(d: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::days(d)
}

/// One scan by hand; `serve`'s own scan may hold the turn (PostgreSQL's
/// advisory lock) for a moment: then again.
async fn scan(store: &dyn Store, now: DateTime<Utc>, state: &mut ScanState) -> ScanReport {
    loop {
        let r = scan_stalled(store, now, state).await.unwrap();
        if !r.not_our_turn {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stalled_is_emitted_once_per_stall_with_a_fake_clock(db: TestDatabase) {
    let now = Arc::new(Mutex::new(day(0)));
    let clock = {
        let now = now.clone();
        Clock::new(move || *now.lock().unwrap())
    };
    let app = db
        .serve(|c| {
            c.milestones = default_rules(SourceMilestones::default());
            c.clock = clock;
            c.stalled_check_every = Duration::from_millis(50);
        })
        .await;
    let store = app.store();
    let at = |d: i64| day(d).to_rfc3339();
    deliver_ok(
        &app,
        &enrollment_event("e1", "progress", 7, 3, "10.0", &at(0)),
    )
    .await;
    // A second, completed enrollment never stalls.
    deliver_ok(
        &app,
        &enrollment_event("e2", "completed", 8, 3, "100.0", &at(0)),
    )
    .await;
    let stalled = |events: Vec<StoredEvent>| -> Vec<StoredEvent> {
        events
            .into_iter()
            .filter(|e| e.topic == "milestone.stalled")
            .collect()
    };

    // Driven by hand: 13 days inactive is not stalled, 15 is, once.
    let mut state = ScanState::default();
    let r = scan(store.as_ref(), day(13), &mut state).await;
    assert_eq!(r.stored, 0);
    let r = scan(store.as_ref(), day(15), &mut state).await;
    assert_eq!((r.read, r.stored), (1, 1));
    let r = scan(store.as_ref(), day(16), &mut state).await;
    assert_eq!(
        (r.read, r.stored),
        (0, 0),
        "the next scan reads only what stalled since"
    );
    // A restarted process scans everything again: a duplicate.
    let r = scan(store.as_ref(), day(17), &mut ScanState::default()).await;
    assert_eq!((r.read, r.stored), (1, 0));
    let found = stalled(milestones(store.as_ref()).await);
    assert_eq!(found.len(), 1);
    let b = body(&found[0]);
    assert_eq!(b["payload"]["milestone"]["days"], 14);
    assert_eq!(
        b["payload"]["milestone"]["inactive_since"],
        "2024-01-01T00:00:00.000000Z"
    );
    assert_eq!(b["payload"]["enrollment"]["id"], 7);

    // Activity ends the stall; 14 quiet days later it is a new one.
    deliver_ok(
        &app,
        &enrollment_event("e3", "progress", 7, 3, "20.0", &at(20)),
    )
    .await;
    let r = scan(store.as_ref(), day(21), &mut state).await;
    assert_eq!(r.stored, 0);
    let r = scan(store.as_ref(), day(35), &mut state).await;
    assert_eq!(r.stored, 1);
    let found = stalled(milestones(store.as_ref()).await);
    assert_eq!(found.len(), 2);
    assert_ne!(found[0].event_id, found[1].event_id);

    // The same by `serve`'s own schedule, on its clock: more activity, then
    // the clock moves past the new stall.
    deliver_ok(
        &app,
        &enrollment_event("e4", "progress", 7, 3, "30.0", &at(40)),
    )
    .await;
    *now.lock().unwrap() = day(60);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = stalled(milestones(store.as_ref()).await).len();
        if n == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve's scan emitted {n} of 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stalled(milestones(store.as_ref()).await).len(),
        3,
        "once per stall"
    );
}

async fn a_milestone_subscription_receives_them(db: TestDatabase) {
    let dest = Destination::start().await;
    dest.answer_always(Reply::Status(200));
    let app = db
        .serve(|c| {
            c.milestones = default_rules(without_stalled());
            c.forward = enrollhook::forward::ForwardConfig {
                allow_private_destinations: true,
                poll_interval: Duration::from_millis(20),
                timeout: Duration::from_millis(500),
                ..Default::default()
            };
        })
        .await;
    let resp = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .json(&json!({"url": dest.url, "topics": ["milestone.*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    deliver_ok(
        &app,
        &enrollment_event("e1", "progress", 7, 3, "30.0", "2024-05-01T10:00:00Z"),
    )
    .await;
    deliver_ok(
        &app,
        &enrollment_event("e2", "completed", 7, 3, "100.0", "2024-05-01T11:00:00Z"),
    )
    .await;
    app.store().sync_projection().await.unwrap();
    let got = dest.wait_for(4, Duration::from_secs(10)).await;
    let mut topics: Vec<String> = got
        .iter()
        .map(|r| r.headers["x-enrollhook-topic"].to_str().unwrap().to_owned())
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            "milestone.completed",
            "milestone.progress",
            "milestone.progress",
            "milestone.progress"
        ]
    );
    for r in &got {
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["resource"], "milestone");
        assert_eq!(b["payload"]["enrollment"]["id"], 7);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        dest.received().len(),
        4,
        "the enrollment events are not milestones"
    );
}

async fn the_api_lists_configured_milestones(db: TestDatabase) {
    let app = serve_with_milestones(
        db,
        SourceMilestones {
            progress: vec![50.0],
            stalled_days: None,
            lessons: vec![9],
            ..SourceMilestones::default()
        },
    )
    .await;
    let (status, listed) = app.get("/api/milestones").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["items"],
        json!([{
            "source": "default",
            "progress": [50.0],
            "completed": true,
            "trial_converted": true,
            "stalled_days": null,
            "lessons": [9],
            "topics": ["milestone.progress", "milestone.completed", "milestone.trial_converted", "milestone.lesson"],
        }])
    );
    let (status, listed) = app.get("/api/milestones?source=other").await;
    assert_eq!((status, listed["items"].clone()), (200, json!([])));
}

/// Two servers on one PostgreSQL database, the same deliveries sent to both
/// at once: every milestone once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_emit_each_milestone_once() {
    let db = crate::common::pg::TestDb::create().await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut config = ServeConfig::new(db.url.clone(), Some(SECRET));
        config.milestones = default_rules(without_stalled());
        apps.push(spawn_with(tempfile::tempdir().unwrap(), config).await);
    }
    let enrollments: Vec<i64> = (1..=6).collect();
    let mut bodies: Vec<Vec<u8>> = enrollments.iter().flat_map(|&e| life(e)).collect();
    shuffle(&mut bodies, 7);
    for chunk in bodies.chunks(8) {
        futures::future::join_all(
            chunk
                .iter()
                .flat_map(|b| [deliver_ok(&apps[0], b), deliver_ok(&apps[1], b)]),
        )
        .await;
    }
    let found = milestones(apps[0].store().as_ref()).await;
    let mut all: Vec<String> = ids(&found);
    all.sort();
    let mut expected: Vec<String> = enrollments.iter().flat_map(|&e| expected_for(e)).collect();
    expected.sort();
    assert_eq!(all, expected);
    let _ = Backend::Postgres;
}

/// SQLite derives milestones on its projector and keeps them in the
/// projection file until they are in the log. A crash after the projection
/// step committed but before they were moved leaves them there: the next
/// start moves them, once.
#[tokio::test]
async fn sqlite_moves_milestones_a_crash_left_pending_into_the_log() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let url = db.url.clone();
    let mut app = serve_with_milestones(db, without_stalled()).await;
    deliver_ok(
        &app,
        &enrollment_event("e1", "progress", 7, 3, "30.0", "2024-05-01T10:00:00Z"),
    )
    .await;
    let found = milestones(app.store().as_ref()).await;
    assert_eq!(ids(&found), ["ms-7-progress-25"]);
    app.stop().await;

    // Back to the moment of the crash: the projection step committed, its
    // milestone pending, not in the log.
    {
        let mut conn = crate::common::sqlite_with_projection(&url).await;
        let seq = found[0].seq;
        sqlx::query("DELETE FROM events WHERE seq = ?")
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("DELETE FROM event_topics WHERE seq = ?")
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("DELETE FROM event_users WHERE seq = ?")
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE projection_cursor SET projected_through_seq = (SELECT MAX(seq) FROM events)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO milestones_pending (source, event_id, topic, body) VALUES (?, ?, ?, ?)",
        )
        .bind(&found[0].source)
        .bind(&found[0].event_id)
        .bind(&found[0].topic)
        .bind(&found[0].body)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let store =
        enrollhook::store::open_with_milestones(&url, true, default_rules(without_stalled()))
            .await
            .unwrap();
    let again = milestones(store.as_ref()).await;
    assert_eq!(ids(&again), ["ms-7-progress-25"]);
    assert_eq!(again[0].body, found[0].body);
    let pending: i64 = {
        let mut conn = crate::common::sqlite_with_projection(&url).await;
        sqlx::query_scalar("SELECT COUNT(*) FROM milestones_pending")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(pending, 0, "forgotten once in the log");
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (check.changed, check.removed, check.index_rows),
        (0, 0, 0),
        "{check:?}"
    );
}

#[test]
fn the_cli_lists_milestones_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enrollhook.toml");
    let run = |toml: &str, args: &[&str]| {
        std::fs::write(&file, toml).unwrap();
        std::process::Command::new(crate::common::process::BIN)
            .arg("--config")
            .arg(&file)
            .arg("milestones")
            .args(args)
            .env_remove("ENROLLHOOK_SECRET")
            .output()
            .unwrap()
    };
    let toml = "[[source]]\nname = \"acme\"\nsecret = \"k\"\n[source.milestones]\nprogress = [50]\nstalled_days = false\n";
    let o = run(toml, &["--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed[0]["source"], "acme");
    assert_eq!(listed[0]["progress"], json!([50.0]));
    assert_eq!(listed[0]["stalled_days"], Value::Null);
    assert_eq!(
        listed[0]["topics"],
        json!([
            "milestone.progress",
            "milestone.completed",
            "milestone.trial_converted"
        ])
    );
    let o = run(toml, &[]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("acme") && table.contains("50"), "{table}");
    let o = run("[milestones]\nprogress = [0]\n", &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[milestones]") && err.contains("progress threshold 0"),
        "{err}"
    );
}

/// A SQLite projection file re-derived from scratch (deleted, from an older
/// version) does not derive milestones again: what it re-derives reached
/// them long ago, or before they were configured.
#[tokio::test]
async fn a_re_derived_sqlite_projection_emits_no_milestones_again() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let url = db.url.clone();
    let fifty = SourceMilestones {
        progress: vec![50.0],
        ..without_stalled()
    };
    let mut app = serve_with_milestones(db, fifty).await;
    deliver_ok(
        &app,
        &enrollment_event("e1", "progress", 7, 3, "80.0", "2024-05-01T10:00:00Z"),
    )
    .await;
    assert_eq!(
        ids(&milestones(app.store().as_ref()).await),
        ["ms-7-progress-50"]
    );
    let projection = enrollhook::store::sqlite_projector::projection_path(&app.db_path());
    app.stop().await;
    std::fs::remove_file(&projection).unwrap();
    for companion in ["-wal", "-shm"] {
        let mut path = projection.clone().into_os_string();
        path.push(companion);
        let _ = std::fs::remove_file(path);
    }
    // 75 % is configured only now: the re-derived enrollment passed it before.
    let both = SourceMilestones {
        progress: vec![50.0, 75.0],
        ..without_stalled()
    };
    let store = enrollhook::store::open_with_milestones(&url, true, default_rules(both))
        .await
        .unwrap();
    assert_eq!(ids(&milestones(store.as_ref()).await), ["ms-7-progress-50"]);
    let enrollment = store.get_enrollment("default", 7).await.unwrap().unwrap();
    assert_eq!(enrollment.progress, 80.0, "re-derived");
}
