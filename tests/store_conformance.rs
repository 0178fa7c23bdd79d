//! One conformance suite for the `Store` trait, run against a fresh SQLite file
//! and a fresh database on the real PostgreSQL server. Each scenario is written
//! once against `Arc<dyn Store>`; `conformance!` runs it on both backends.

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::pg::TestDb;
use enrollhook::projection::{self, Status};
use enrollhook::store::{
    self, ActivityQuery, AppendOutcome, EnrollmentFilter, EventFilter, NewEvent, NewQuarantine,
    PageRequest, Store, StoreError,
};

/// Keeps the database alive for the test's duration; dropped (and deleted) after.
enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] TestDb),
}

struct Fixture {
    store: Arc<dyn Store>,
    url: String,
    _db: Db,
}

async fn sqlite() -> Fixture {
    let (dir, url) = common::fresh_db();
    let store = store::open(&url, true).await.unwrap();
    Fixture {
        store,
        url,
        _db: Db::Sqlite(dir),
    }
}

async fn postgres() -> Fixture {
    let db = TestDb::create().await;
    let store = store::open(&db.url, true).await.unwrap();
    Fixture {
        store,
        url: db.url.clone(),
        _db: Db::Postgres(db),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test] async fn $name() { super::$name(super::sqlite().await).await } )* }
        mod on_postgres { $( #[tokio::test] async fn $name() { super::$name(super::postgres().await).await } )* }
    };
}

conformance!(
    append_stores_once,
    bodies_round_trip_byte_for_byte,
    out_of_order_events_leave_the_newest_state,
    enrollments_filter_and_paginate,
    events_filter_and_paginate,
    course_statistics,
    activity_per_day,
    quarantine_lifecycle,
    rebuild_dry_run_and_real,
    ping_and_bad_cursors,
    retention_drops_old_bodies_but_not_ids_or_the_projection,
    a_replay_during_an_attempt_is_not_recorded_over,
    attempts_page_oldest_or_newest_first,
);

fn t(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn new_event(source: &str, body: &[u8]) -> NewEvent {
    let envelope = enrollhook::thinkific::parse(body, None).unwrap();
    NewEvent::from_envelope(
        source,
        &envelope,
        String::from_utf8(body.to_vec()).unwrap(),
        Utc::now(),
    )
}

/// An enrollment event at `minute` (its version), with `pct` progress.
fn enrollment(
    source: &str,
    id: &str,
    action: &str,
    enrollment: i64,
    course: i64,
    pct: &str,
    minute: i64,
) -> NewEvent {
    new_event(
        source,
        &common::enrollment_event(id, action, enrollment, course, pct, &rfc(t(minute))),
    )
}

fn other_event(source: &str, id: &str, resource: &str, action: &str) -> NewEvent {
    let body = serde_json::json!({"id": id, "resource": resource, "action": action,
        "tenant_id": "59", "created_at": "2024-05-01T12:00:00Z", "payload": {"id": 1}});
    new_event(source, &serde_json::to_vec(&body).unwrap())
}

async fn append_stores_once(f: Fixture) {
    let s = &f.store;
    let a = enrollment("default", "a", "progress", 1, 7, "10", 1);
    let b = enrollment("default", "b", "progress", 2, 7, "20", 1);
    let out = s
        .append_batch(&[a.clone(), b.clone(), a.clone()])
        .await
        .unwrap();
    let (AppendOutcome::Stored { seq: sa }, AppendOutcome::Stored { seq: sb }) = (out[0], out[1])
    else {
        panic!("first occurrences are stored: {out:?}")
    };
    assert_ne!(sa, sb);
    assert_eq!(
        out[2],
        AppendOutcome::Duplicate,
        "a repeat within one batch"
    );

    let c = enrollment("default", "c", "progress", 1, 7, "30", 2);
    let out = s.append_batch(&[b.clone(), c.clone()]).await.unwrap();
    assert_eq!(out[0], AppendOutcome::Duplicate, "a repeat across batches");
    let AppendOutcome::Stored { seq: sc } = out[1] else {
        panic!("{out:?}")
    };
    assert!(sc > sa.max(sb), "the log only grows");

    // The same envelope id from another source is another event.
    let out = s
        .append_batch(&[enrollment("other", "a", "progress", 1, 7, "10", 1)])
        .await
        .unwrap();
    assert!(matches!(out[0], AppendOutcome::Stored { .. }));

    let e1 = s.get_enrollment("default", 1).await.unwrap().unwrap();
    assert_eq!(
        (e1.progress, e1.event_count),
        (30.0, 2),
        "duplicates are not folded twice"
    );
    assert_eq!(
        s.get_enrollment("other", 1)
            .await
            .unwrap()
            .unwrap()
            .event_count,
        1
    );
    assert!(s.get_enrollment("default", 99).await.unwrap().is_none());
    let page = s
        .list_events(&EventFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
}

async fn bodies_round_trip_byte_for_byte(f: Fixture) {
    // Odd spacing, key order, escapes and unknown fields: kept exactly.
    let body = "{ \"resource\":\"enrollment\" ,\"action\":\"progress\",\n\t\"id\": \"20190131192004041953291\",\
        \"tenant_id\":59,\"extra\":{\"z\":1,\"a\":[1.50,\"\\u00e9\"]},\"created_at\":\"2024-05-01T12:00:00.123456Z\",\
        \"payload\":{\"id\":5,\"percentage_completed\":\"24.0\",\"updated_at\":\"2024-05-01T12:00:00Z\",\"user\":{\"email\":\"é@x\"}}}  ";
    let ev = new_event("default", body.as_bytes());
    let received = ev.received_at;
    f.store.append_batch(&[ev]).await.unwrap();
    let stored = f
        .store
        .get_event("default", "20190131192004041953291")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body, body);
    assert_eq!(stored.topic, "enrollment.progress");
    assert_eq!(stored.enrollment_id, Some(5));
    assert_eq!(
        stored.created_at.map(|t| t.timestamp_micros()),
        Some(t(0).timestamp_micros() + 123_456)
    );
    assert_eq!(
        stored.received_at.timestamp_micros(),
        received.timestamp_micros(),
        "µs kept, truncated"
    );
    assert_eq!(
        f.store
            .get_enrollment("default", 5)
            .await
            .unwrap()
            .unwrap()
            .email
            .as_deref(),
        Some("é@x")
    );
}

async fn out_of_order_events_leave_the_newest_state(f: Fixture) {
    let s = &f.store;
    let events = [
        enrollment("default", "e1", "created", 3, 7, "0", 1),
        enrollment("default", "e2", "progress", 3, 7, "24.0", 2),
        enrollment("default", "e3", "completed", 3, 7, "100.0", 3),
        enrollment("default", "e4", "progress", 3, 7, "80.0", 4),
    ];
    // Newest first, then one late batch holding an old and a middle event.
    s.append_batch(&[events[3].clone()]).await.unwrap();
    s.append_batch(&[events[2].clone()]).await.unwrap();
    s.append_batch(&[events[1].clone(), events[0].clone()])
        .await
        .unwrap();
    let stored = s.get_enrollment("default", 3).await.unwrap().unwrap();
    let expected = projection::fold(
        "default",
        events.iter().filter_map(|e| e.enrollment.clone()),
    )
    .unwrap();
    assert_eq!(stored, expected);
    assert!(stored.completed, "completion is sticky");
    assert_eq!(stored.progress, 80.0);
    assert_eq!(stored.event_count, 4);
    assert_eq!(stored.version.event_id, "e4");

    // Old and new for one enrollment inside one batch.
    let more = [
        enrollment("default", "f2", "progress", 4, 7, "50", 2),
        enrollment("default", "f1", "progress", 4, 7, "10", 1),
        enrollment("default", "f3", "progress", 4, 7, "60", 3),
    ];
    s.append_batch(&more[..1]).await.unwrap();
    s.append_batch(&more[1..]).await.unwrap();
    let stored = s.get_enrollment("default", 4).await.unwrap().unwrap();
    assert_eq!((stored.progress, stored.event_count), (60.0, 3));
    let events = s.enrollment_events("default", 4).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["f2", "f1", "f3"],
        "log order"
    );
    assert_eq!(s.rebuild_projection(true).await.unwrap().changed, 0);
}

/// 24 enrollments: 2 sources × 12 over 3 courses; per source 3 completed, 2 trials.
async fn seed_enrollments(s: &Arc<dyn Store>) {
    let mut batch = Vec::new();
    for (n, source) in ["school-a", "school_b"].iter().enumerate() {
        for i in 0..12i64 {
            let course = 10 + i % 3;
            let id = i * 2 + n as i64 + 1;
            let action = if i % 4 == 0 {
                "completed"
            } else if i % 5 == 0 {
                "trial"
            } else {
                "progress"
            };
            let pct = if i % 4 == 0 {
                "100.0".to_owned()
            } else {
                format!("{}", i * 5)
            };
            batch.push(enrollment(
                source,
                &format!("{source}-{i}"),
                action,
                id,
                course,
                &pct,
                i,
            ));
        }
    }
    s.append_batch(&batch).await.unwrap();
}

async fn all_enrollments(
    s: &Arc<dyn Store>,
    filter: &EnrollmentFilter,
    limit: u32,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_enrollments(filter, &PageRequest { limit, cursor }, Utc::now())
            .await
            .unwrap();
        assert!(page.items.len() <= limit as usize);
        out.extend(
            page.items
                .iter()
                .map(|e| (e.source.clone(), e.enrollment_id)),
        );
        cursor = page.next_cursor;
        if cursor.is_none() {
            return out;
        }
    }
}

async fn enrollments_filter_and_paginate(f: Fixture) {
    let s = &f.store;
    seed_enrollments(s).await;
    let all = all_enrollments(s, &EnrollmentFilter::default(), 7).await;
    assert_eq!(all.len(), 24);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        all, sorted,
        "ordered by (source, enrollment id), byte order"
    );
    assert_eq!(
        all_enrollments(s, &EnrollmentFilter::default(), 1000).await,
        all
    );

    let by = |filter: EnrollmentFilter| async move { all_enrollments(s, &filter, 5).await.len() };
    assert_eq!(
        by(EnrollmentFilter {
            source: Some("school-a".into()),
            ..Default::default()
        })
        .await,
        12
    );
    assert_eq!(
        by(EnrollmentFilter {
            course_id: Some(10),
            ..Default::default()
        })
        .await,
        8
    );
    assert_eq!(
        by(EnrollmentFilter {
            user_id: Some(1003),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        by(EnrollmentFilter {
            email: Some("s3@example.com".into()),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Completed),
            ..Default::default()
        })
        .await,
        6
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Trial),
            ..Default::default()
        })
        .await,
        4
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Active),
            ..Default::default()
        })
        .await,
        14
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Expired),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        by(EnrollmentFilter {
            updated_after: Some(t(9)),
            ..Default::default()
        })
        .await,
        4
    );
    let combined = EnrollmentFilter {
        source: Some("school_b".into()),
        course_id: Some(10),
        status: Some(Status::Completed),
        ..Default::default()
    };
    assert_eq!(by(combined).await, 1);
}

async fn events_filter_and_paginate(f: Fixture) {
    let s = &f.store;
    seed_enrollments(s).await;
    s.append_batch(&[
        other_event("school-a", "o1", "order", "created"),
        other_event("school-a", "o2", "user", "signup"),
        other_event("school_b", "o3", "enrollmentx", "created"),
    ])
    .await
    .unwrap();
    let all = |filter: EventFilter| async move {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = s
                .list_events(&filter, &PageRequest { limit: 4, cursor })
                .await
                .unwrap();
            out.extend(page.items);
            cursor = page.next_cursor;
            if cursor.is_none() {
                return out;
            }
        }
    };
    let every = all(EventFilter::default()).await;
    assert_eq!(every.len(), 27);
    assert!(every.windows(2).all(|w| w[0].seq < w[1].seq), "log order");
    assert_eq!(
        all(EventFilter {
            topic: Some("enrollment.*".into()),
            ..Default::default()
        })
        .await
        .len(),
        24
    );
    assert_eq!(
        all(EventFilter {
            topic: Some("enrollment.trial".into()),
            ..Default::default()
        })
        .await
        .len(),
        4
    );
    assert_eq!(
        all(EventFilter {
            topic: Some("order.created".into()),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        all(EventFilter {
            source: Some("school_b".into()),
            ..Default::default()
        })
        .await
        .len(),
        13
    );
    let after = every[20].seq;
    let tail = all(EventFilter {
        after_seq: Some(after),
        ..Default::default()
    })
    .await;
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        every[21..].iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    assert!(s.get_event("school-a", "o2").await.unwrap().is_some());
    assert!(s.get_event("school_b", "o2").await.unwrap().is_none());
    assert_eq!(s.enrollment_events("school-a", 1).await.unwrap().len(), 1);
}

/// An enrollment event: begun (`created_at`) at `began`, completed at
/// `completed` (a `completed` event), version `minute`.
#[allow(clippy::too_many_arguments)]
fn began(
    source: &str,
    id: &str,
    action: &str,
    enrollment: i64,
    course: Option<i64>,
    began: Option<&str>,
    completed: Option<&str>,
    minute: i64,
) -> NewEvent {
    let pct = if completed.is_some() { "100" } else { "30" };
    let mut body: serde_json::Value = serde_json::from_slice(&common::enrollment_event(
        id,
        action,
        enrollment,
        course.unwrap_or(1),
        pct,
        &rfc(t(minute)),
    ))
    .unwrap();
    let p = &mut body["payload"];
    p["created_at"] = began.into();
    p["activated_at"] = serde_json::Value::Null;
    p["started_at"] = serde_json::Value::Null;
    p["completed_at"] = completed.into();
    if course.is_none() {
        p["course_id"] = serde_json::Value::Null;
        p["course"] = serde_json::Value::Null;
    }
    new_event(source, &serde_json::to_vec(&body).unwrap())
}

async fn activity_per_day(f: Fixture) {
    let s = &f.store;
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2024, 3, d).unwrap();
    let query = |source: Option<&str>, course_id: Option<i64>| ActivityQuery {
        source: source.map(str::to_owned),
        course_id,
        from: day(1),
        to: day(7),
    };
    s.append_batch(&[
        // March 2 (late in the UTC day) twice, March 5 once; one without a course.
        began(
            "a",
            "1",
            "created",
            1,
            Some(7),
            Some("2024-03-02T23:59:59Z"),
            None,
            0,
        ),
        began(
            "a",
            "2",
            "created",
            2,
            Some(8),
            Some("2024-03-02T00:00:00Z"),
            None,
            0,
        ),
        began(
            "a",
            "3",
            "created",
            3,
            None,
            Some("2024-03-05T12:00:00+00:00"),
            None,
            0,
        ),
        // Another school, and days outside the range.
        began(
            "b",
            "4",
            "created",
            4,
            Some(7),
            Some("2024-03-05T01:00:00Z"),
            None,
            0,
        ),
        began(
            "a",
            "5",
            "created",
            5,
            Some(7),
            Some("2024-02-29T23:59:59Z"),
            None,
            0,
        ),
        began(
            "a",
            "6",
            "created",
            6,
            Some(7),
            Some("2024-03-08T00:00:00Z"),
            None,
            0,
        ),
        // No day to count it on: not in the chart.
        began("a", "7", "created", 7, Some(7), None, None, 0),
    ])
    .await
    .unwrap();
    // Enrollment 1 completes on March 6; a newer progress event (a course that
    // gained lessons) keeps that completion day; 2 moves to course 9.
    s.append_batch(&[
        began(
            "a",
            "8",
            "completed",
            1,
            Some(7),
            Some("2024-03-02T23:59:59Z"),
            Some("2024-03-06T10:00:00Z"),
            1,
        ),
        began(
            "a",
            "9",
            "progress",
            1,
            Some(7),
            Some("2024-03-02T23:59:59Z"),
            None,
            2,
        ),
        began(
            "a",
            "10",
            "progress",
            2,
            Some(9),
            Some("2024-03-02T00:00:00Z"),
            None,
            2,
        ),
    ])
    .await
    .unwrap();

    let counts = |days: Vec<store::DayActivity>| -> Vec<(u32, i64, i64)> {
        use chrono::Datelike;
        days.iter()
            .map(|d| (d.date.day(), d.enrolled, d.completed))
            .collect()
    };
    let all = counts(s.activity(&query(None, None)).await.unwrap());
    assert_eq!(
        all,
        vec![
            (1, 0, 0),
            (2, 2, 0),
            (3, 0, 0),
            (4, 0, 0),
            (5, 2, 0),
            (6, 0, 1),
            (7, 0, 0)
        ]
    );
    let a = counts(s.activity(&query(Some("a"), None)).await.unwrap());
    assert_eq!(a[4], (5, 1, 0));
    let course_7 = counts(s.activity(&query(Some("a"), Some(7))).await.unwrap());
    assert_eq!(
        course_7
            .iter()
            .filter(|c| c.1 + c.2 > 0)
            .copied()
            .collect::<Vec<_>>(),
        vec![(2, 1, 0), (6, 0, 1)]
    );
    let course_8 = counts(s.activity(&query(None, Some(8))).await.unwrap());
    assert!(
        course_8.iter().all(|c| c.1 == 0 && c.2 == 0),
        "enrollment 2 moved to course 9"
    );
    let course_9 = counts(s.activity(&query(None, Some(9))).await.unwrap());
    assert_eq!(course_9[1], (2, 1, 0));
    let nobody = counts(s.activity(&query(Some("nobody"), None)).await.unwrap());
    assert_eq!(nobody.len(), 7);
    assert!(nobody.iter().all(|c| c.1 == 0 && c.2 == 0));
    // The range is inclusive at both ends.
    let edges = s
        .activity(&ActivityQuery {
            source: None,
            course_id: None,
            from: chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap(),
            to: day(8),
        })
        .await
        .unwrap();
    assert_eq!(edges.len(), 9);
    assert_eq!((edges[0].enrolled, edges[8].enrolled), (1, 1));

    // A rebuild derives the same counts.
    s.rebuild_projection(false).await.unwrap();
    assert_eq!(counts(s.activity(&query(None, None)).await.unwrap()), all);
}

async fn course_statistics(f: Fixture) {
    let s = &f.store;
    let ev = |id: &str, action: &str, enrollment_id: i64, pct: &str, started: i64, minute: i64| {
        let mut body: serde_json::Value = serde_json::from_slice(&common::enrollment_event(
            id,
            action,
            enrollment_id,
            5,
            pct,
            &rfc(t(minute)),
        ))
        .unwrap();
        body["payload"]["started_at"] = rfc(t(0) - Duration::days(started)).into();
        body["payload"]["completed_at"] = rfc(t(minute)).into();
        new_event("default", &serde_json::to_vec(&body).unwrap())
    };
    s.append_batch(&[
        ev("s1", "completed", 1, "100", 2, 0),
        ev("s2", "completed", 2, "100", 4, 0),
        ev("s3", "completed", 3, "100", 9, 0),
        ev("s4", "completed", 4, "100", 10, 0),
        ev("s5", "progress", 5, "40", 1, 0),
        ev("s6", "trial", 6, "20", 1, 0),
    ])
    .await
    .unwrap();
    // An expired enrollment of another course.
    let mut body: serde_json::Value = serde_json::from_slice(&common::enrollment_event(
        "x1",
        "progress",
        7,
        6,
        "50",
        &rfc(t(0)),
    ))
    .unwrap();
    body["payload"]["expiry_date"] = "2020-01-01T00:00:00Z".into();
    s.append_batch(&[new_event("other", &serde_json::to_vec(&body).unwrap())])
        .await
        .unwrap();

    let stats = s.course_stats(None, Utc::now()).await.unwrap();
    assert_eq!(stats.len(), 2);
    let c5 = &stats[0];
    assert_eq!(
        (c5.source.as_str(), c5.course_id, c5.name.as_deref()),
        ("default", 5, Some("Course 5"))
    );
    assert_eq!(
        (
            c5.enrollments,
            c5.active,
            c5.trial,
            c5.completed,
            c5.expired
        ),
        (6, 1, 1, 4, 0)
    );
    assert_eq!(c5.completion_rate, 4.0 / 6.0);
    assert_eq!(c5.average_progress, 460.0 / 6.0);
    assert_eq!(c5.median_days_to_complete, Some(6.5));
    let c6 = &stats[1];
    assert_eq!(
        (c6.source.as_str(), c6.expired, c6.median_days_to_complete),
        ("other", 1, None)
    );
    assert_eq!(
        s.course_stats(Some("other"), Utc::now()).await.unwrap(),
        vec![c6.clone()]
    );
    assert!(
        s.course_stats(Some("nobody"), Utc::now())
            .await
            .unwrap()
            .is_empty()
    );
}

fn rejected(n: u8) -> NewQuarantine {
    NewQuarantine {
        source: "default".into(),
        received_at: t(i64::from(n)) + Duration::nanoseconds(123_456_789),
        reason_code: "bad_signature".into(),
        reason: format!("signature {n} does not match"),
        headers: vec![
            ("x-thinkific-hmac-sha256".into(), format!("sig{n}")),
            ("content-type".into(), "application/json".into()),
        ],
        body: vec![0xff, n, b'{'],
    }
}

async fn quarantine_lifecycle(f: Fixture) {
    let s = &f.store;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(s.quarantine(rejected(n)).await.unwrap());
    }
    let first = s
        .list_quarantine(
            None,
            &PageRequest {
                limit: 2,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[2], ids[1]],
        "newest first"
    );
    let rest = s
        .list_quarantine(
            None,
            &PageRequest {
                limit: 2,
                cursor: first.next_cursor,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert!(rest.next_cursor.is_none());

    let r = s.get_quarantine(ids[1]).await.unwrap().unwrap();
    assert_eq!(r.body, vec![0xff, 1, b'{'], "raw bytes, even invalid UTF-8");
    assert_eq!(r.body_size, 3);
    assert_eq!(r.header("X-Thinkific-Hmac-Sha256"), Some("sig1"));
    assert_eq!(r.headers[1].0, "content-type", "header order kept");
    assert_eq!(r.received_at, t(1) + Duration::microseconds(123_456));
    assert!(r.resolved_at.is_none());
    s.resolve_quarantine(ids[1], "admitted as event 42")
        .await
        .unwrap();
    let r = s.get_quarantine(ids[1]).await.unwrap().unwrap();
    assert_eq!(r.resolution.as_deref(), Some("admitted as event 42"));
    assert!(r.resolved_at.is_some());
    assert!(s.get_quarantine(-1).await.unwrap().is_none());

    // Bounded: pruning keeps the newest.
    assert_eq!(s.prune_quarantine(10, u64::MAX).await.unwrap(), 0);
    assert_eq!(s.prune_quarantine(2, u64::MAX).await.unwrap(), 1);
    assert!(s.get_quarantine(ids[0]).await.unwrap().is_none());
    assert!(s.get_quarantine(ids[1]).await.unwrap().is_some());

    // Importing recognises what is already there.
    assert!(!s.import_quarantine(&r).await.unwrap());
    let mut moved = r.clone();
    moved.body = b"other".to_vec();
    assert!(s.import_quarantine(&moved).await.unwrap());
    assert!(!s.import_quarantine(&moved).await.unwrap());
    let newest = &s
        .list_quarantine(None, &PageRequest::default())
        .await
        .unwrap()
        .items[0];
    assert_eq!(
        (newest.resolution.as_deref(), newest.resolved_at),
        (Some("admitted as event 42"), r.resolved_at)
    );
}

/// Runs a statement on the fixture's database behind the store's back.
async fn tamper(f: &Fixture, sql: &str) {
    if f.url.starts_with("sqlite:") {
        let mut conn = common::sqlite_with_projection(&f.url).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    } else {
        let pool = sqlx::PgPool::connect(&f.url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

async fn rebuild_dry_run_and_real(f: Fixture) {
    let s = &f.store;
    seed_enrollments(s).await;
    let clean = s.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (
            clean.events,
            clean.enrollments,
            clean.changed,
            clean.removed
        ),
        (24, 24, 0, 0)
    );
    let before = s.get_enrollment("school-a", 3).await.unwrap().unwrap();

    tamper(
        &f,
        "UPDATE enrollments SET progress = 1 WHERE enrollment_id = 3; \
                DELETE FROM enrollments WHERE enrollment_id = 5; \
                UPDATE enrollments SET enrollment_id = 1000 WHERE enrollment_id = 7",
    )
    .await;
    let dry = s.rebuild_projection(true).await.unwrap();
    assert_eq!((dry.changed, dry.removed), (3, 1));
    assert_eq!(
        s.get_enrollment("school-a", 3)
            .await
            .unwrap()
            .unwrap()
            .progress,
        1.0,
        "dry run changes nothing"
    );

    let real = s.rebuild_projection(false).await.unwrap();
    assert_eq!((real.changed, real.removed), (3, 1));
    assert_eq!(
        s.get_enrollment("school-a", 3).await.unwrap().unwrap(),
        before
    );
    assert!(s.get_enrollment("school-a", 1000).await.unwrap().is_none());
    assert_eq!(s.rebuild_projection(true).await.unwrap().changed, 0);
}

async fn ping_and_bad_cursors(f: Fixture) {
    let s = &f.store;
    s.ping().await.unwrap();
    assert!(["sqlite", "postgres"].contains(&s.backend()));
    let bad = PageRequest {
        limit: 5,
        cursor: Some("not a cursor".into()),
    };
    assert!(matches!(
        s.list_events(&EventFilter::default(), &bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.list_enrollments(&EnrollmentFilter::default(), &bad, Utc::now())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.list_quarantine(None, &bad).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn retention_drops_old_bodies_but_not_ids_or_the_projection(f: Fixture) {
    let s = &f.store;
    let long_ago = Utc::now() - Duration::days(100);
    let aged = |mut e: NewEvent| {
        e.received_at = long_ago;
        e
    };
    let old_order = aged(other_event("default", "o-old", "order", "created"));
    let old_enrollment = aged(enrollment("default", "e-old", "progress", 1, 7, "40", 1));
    let new_order = other_event("default", "o-new", "order", "created");
    s.append_batch(&[old_order.clone(), old_enrollment.clone()])
        .await
        .unwrap();
    s.append_batch(std::slice::from_ref(&new_order))
        .await
        .unwrap();
    let before = s.get_enrollment("default", 1).await.unwrap().unwrap();

    let cutoff = Utc::now() - Duration::days(90);
    let report = s.prune_events(cutoff).await.unwrap();
    assert_eq!(
        report.events, 1,
        "only the old non-enrollment event: {report:?}"
    );
    assert_eq!(
        s.prune_events(cutoff).await.unwrap().events,
        0,
        "idempotent"
    );

    let events = s
        .list_events(
            &EventFilter::default(),
            &PageRequest {
                limit: 100,
                cursor: None,
            },
        )
        .await
        .unwrap()
        .items;
    let by_id = |id: &str| events.iter().find(|e| e.event_id == id).unwrap().clone();
    let pruned = by_id("o-old");
    assert!(
        pruned.pruned_at.is_some() && pruned.body.is_empty(),
        "{pruned:?}"
    );
    let kept = by_id("e-old");
    assert!(kept.pruned_at.is_none() && kept.body == old_enrollment.body);
    assert_eq!(by_id("o-new").body, new_order.body);
    let view = enrollhook::views::event_view(&pruned);
    assert!(view.body.is_null() && view.pruned_at.is_some());

    // The id stays: a redelivery of the pruned event is still a duplicate.
    let again = s.append_batch(&[old_order]).await.unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate]);
    // The projection is untouched and still equals a rebuild from the log.
    assert_eq!(
        s.get_enrollment("default", 1).await.unwrap().unwrap(),
        before
    );
    let check = s.rebuild_projection(true).await.unwrap();
    assert_eq!((check.changed, check.removed), (0, 0), "{check:?}");
}

/// Replaying a delivery while an attempt of it is in flight: when that attempt
/// is recorded afterwards, the replayed delivery must stay pending (and be
/// delivered again), not be marked delivered by the earlier attempt.
/// Subscription `sub_1` (every topic) and one stored event, `e1`, for it.
async fn subscribe_and_store_one_event(s: &Arc<dyn Store>) {
    use enrollhook::forward::subscription::SubscriptionInput;
    let input: SubscriptionInput =
        serde_json::from_value(serde_json::json!({"url": "https://crm.example.com/hook"})).unwrap();
    let sub = input.create("sub_1".into(), Utc::now(), false).unwrap();
    s.insert_subscription(&sub).await.unwrap();
    let event = enrollment("default", "e1", "progress", 1, 7, "10", 1);
    s.append_batch(std::slice::from_ref(&event)).await.unwrap();
}

/// The record of one answered attempt at a claimed delivery.
fn answered(
    d: &enrollhook::store::ClaimedDelivery,
    at: DateTime<Utc>,
    status: u16,
    next: enrollhook::forward::policy::Next,
) -> enrollhook::store::FinishedAttempt {
    enrollhook::store::FinishedAttempt {
        outbox_id: d.outbox_id,
        subscription_id: d.subscription.id.clone(),
        event_seq: d.event.seq,
        attempt: d.attempts + 1,
        attempted_at: at,
        status: Some(status),
        latency_ms: 1.0,
        error: None,
        response: None,
        next,
    }
}

async fn a_replay_during_an_attempt_is_not_recorded_over(f: Fixture) {
    use enrollhook::forward::policy::Next;
    use enrollhook::store::{DeliveryFilter, DeliveryState, ReplayScope};

    let s = &f.store;
    subscribe_and_store_one_event(s).await;

    let now = Utc::now();
    let claimed = s
        .claim_deliveries(now, now + Duration::seconds(20), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The attempt is in flight; meanwhile someone replays the event.
    let replay = ReplayScope::Event {
        source: "default".into(),
        event_id: "e1".into(),
        subscription_id: None,
    };
    assert_eq!(s.replay(&replay, now).await.unwrap(), 1);
    let finished = answered(&claimed[0], now, 200, Next::Delivered);
    s.finish_attempts(
        &[finished],
        &enrollhook::forward::health::Rules {
            disable_failing_before: now - Duration::days(5),
        },
    )
    .await
    .unwrap();

    let pending = s
        .list_deliveries(
            &DeliveryFilter {
                state: Some(DeliveryState::Pending),
                ..Default::default()
            },
            &PageRequest {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap()
        .items;
    assert_eq!(pending.len(), 1, "the replay is still to be delivered");
    let again = s
        .claim_deliveries(now, now + Duration::seconds(20), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "and can be claimed at once");
}

/// Every attempt's status, `limit` 2 at a time, by subscription or by event.
async fn attempt_statuses(
    s: &Arc<dyn Store>,
    subscription: Option<&str>,
    event_seq: Option<i64>,
    newest_first: bool,
) -> Vec<i64> {
    let mut page = PageRequest {
        limit: 2,
        cursor: None,
    };
    let mut statuses = Vec::new();
    loop {
        let got = s
            .list_attempts(subscription, event_seq, &page, newest_first)
            .await
            .unwrap();
        statuses.extend(got.items.iter().map(|a| a.status.unwrap()));
        match got.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => return statuses,
        }
    }
}

/// Attempts page forwards in the order they were made, or backwards from the
/// newest (what the dashboard shows), by subscription or by event.
async fn attempts_page_oldest_or_newest_first(f: Fixture) {
    use enrollhook::forward::policy::Next;
    let s = &f.store;
    subscribe_and_store_one_event(s).await;
    let now = Utc::now();
    let mut seq = 0;
    for attempt in 1..=5i64 {
        let at = now + Duration::minutes(attempt);
        let claimed = s
            .claim_deliveries(at, at + Duration::seconds(20), 10)
            .await
            .unwrap();
        seq = claimed[0].event.seq;
        let next = if attempt < 5 {
            Next::Retry { at }
        } else {
            Next::Delivered
        };
        let finished = answered(&claimed[0], at, 500 + attempt as u16, next);
        s.finish_attempts(
            &[finished],
            &enrollhook::forward::health::Rules {
                disable_failing_before: now - Duration::days(5),
            },
        )
        .await
        .unwrap();
    }
    let oldest_first = [501, 502, 503, 504, 505];
    let newest_first = [505, 504, 503, 502, 501];
    assert_eq!(
        attempt_statuses(s, Some("sub_1"), None, false).await,
        oldest_first
    );
    assert_eq!(
        attempt_statuses(s, Some("sub_1"), None, true).await,
        newest_first
    );
    assert_eq!(
        attempt_statuses(s, None, Some(seq), true).await,
        newest_first
    );
}
