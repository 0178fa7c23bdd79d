//! Two events, one id (issue #16): Thinkific's own published samples give
//! `lesson.completed` and `quiz.attempted` one envelope id, so the log keys an
//! event by (source, envelope id, topic); a database of the old schema
//! migrates and keeps its events; forwarded `webhook-id`s stay as they were
//! for the events that had them and differ for the two that share an id.

use std::time::Duration;

use enrollhook::forward::ForwardConfig;
use enrollhook::store::{self, AppendOutcome, EventFilter, NewEvent, PageRequest, StoreError};
use enrollhook::thinkific::samples;
use serde_json::{Value, json};

use crate::common::backend::{Backend, TestDatabase, on_both_backends};
use crate::common::destination::Destination;

on_both_backends!(
    two_topics_with_one_id_are_two_events,
    canceled_and_cancelled_are_one_topic,
    a_database_of_the_old_schema_migrates_and_keeps_its_events,
);

/// The id Thinkific's published `lesson.completed` sample has.
const SHARED_ID: &str = "20191029145629636106318";

/// A `quiz.attempted` in the shape Thinkific documents, with the published
/// `lesson.completed` sample's envelope id (as Thinkific's samples do).
fn quiz_attempted() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": SHARED_ID,
        "resource": "quiz",
        "action": "attempted",
        "tenant_id": "12345",
        "created_at": "2019-10-29T18:56:29.474Z",
        "payload": {
            "attempts": 1, "correct_count": 3, "incorrect_count": 1, "grade": 75.0,
            "result_id": 998877, "quiz": {"id": 55, "name": "Webhooks quiz"},
            "user": {"email": "ninjas@thinkific.com", "first_name": "Robert", "id": 123456,
                     "last_name": "Smith"}
        }
    }))
    .unwrap()
}

async fn two_topics_with_one_id_are_two_events(db: TestDatabase) {
    let dest = Destination::start().await;
    let app = db
        .serve(|c| {
            c.forward = ForwardConfig {
                allow_private_destinations: true,
                poll_interval: Duration::from_millis(20),
                ..ForwardConfig::default()
            }
        })
        .await;
    let resp = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .json(&json!({"url": dest.url, "topics": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    let lesson = samples::LESSON_COMPLETED.as_bytes();
    let quiz = quiz_attempted();
    for (body, status) in [
        (lesson, "stored"),
        (&quiz[..], "stored"),
        (lesson, "duplicate"),
        (&quiz[..], "duplicate"),
    ] {
        let (code, reply) = app.deliver(body).await;
        assert_eq!(
            (code, reply["status"].as_str()),
            (200, Some(status)),
            "{reply}"
        );
    }

    // The id alone names two events: 409 with both topics and what to do.
    let path = format!("/api/events/default/{SHARED_ID}");
    let (code, reply) = app.get(&path).await;
    assert_eq!(code, 409, "{reply}");
    assert_eq!(reply["error"], "ambiguous_event");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("lesson.completed, quiz.attempted") && message.contains("?topic="),
        "{message}"
    );
    let (code, raw) = app.get(&format!("{path}/raw")).await;
    assert_eq!(code, 409, "{raw}");
    for (topic, body) in [("lesson.completed", lesson), ("quiz.attempted", &quiz[..])] {
        let (code, view) = app.get(&format!("{path}?topic={topic}")).await;
        assert_eq!((code, view["topic"].as_str()), (200, Some(topic)), "{view}");
        let raw = app
            .client
            .get(format!("{}{path}/raw?topic={topic}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status().as_u16(), 200);
        assert_eq!(raw.bytes().await.unwrap(), body, "byte for byte");
        let (code, deliveries) = app.get(&format!("{path}/deliveries?topic={topic}")).await;
        assert_eq!(code, 200, "{deliveries}");
        assert_eq!(deliveries["items"].as_array().unwrap().len(), 1);
    }
    let (code, _) = app.get(&format!("{path}?topic=order.created")).await;
    assert_eq!(code, 404);

    // Both are forwarded, with two webhook-ids: the first stored keeps the
    // form every earlier event had.
    let received = dest.wait_for(2, Duration::from_secs(10)).await;
    let mut ids: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                body["resource"].as_str().unwrap().to_owned(),
                r.headers["webhook-id"].to_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("lesson".to_owned(), format!("evt_default_{SHARED_ID}")),
            (
                "quiz".to_owned(),
                format!("evq_7_default_14_quiz.attempted_{SHARED_ID}")
            ),
        ]
    );
}

/// The SQL of the schema before this change, applied as the old runner did.
const OLD_SQLITE: &[&str] = &[
    include_str!("../../src/store/sqlite/migrations/0001_initial.sql"),
    include_str!("../../src/store/sqlite/migrations/0002_forwarding.sql"),
    include_str!("../../src/store/sqlite/migrations/0003_course_totals.sql"),
    include_str!("../../src/store/sqlite/migrations/0004_retention.sql"),
    include_str!("../../src/store/sqlite/migrations/0005_projection_cursor.sql"),
    include_str!("../../src/store/sqlite/migrations/0006_projection_file.sql"),
    include_str!("../../src/store/sqlite/migrations/0007_topic_index_to_projection.sql"),
    include_str!("../../src/store/sqlite/migrations/0008_prunable_events.sql"),
];
const OLD_POSTGRES: &[&str] = &[
    include_str!("../../src/store/postgres/migrations/0001_initial.sql"),
    include_str!("../../src/store/postgres/migrations/0002_forwarding.sql"),
    include_str!("../../src/store/postgres/migrations/0003_retention.sql"),
    include_str!("../../src/store/postgres/migrations/0004_commit_order.sql"),
    include_str!("../../src/store/postgres/migrations/0005_activity.sql"),
    include_str!("../../src/store/postgres/migrations/0006_prunable_events.sql"),
    include_str!("../../src/store/postgres/migrations/0007_long_values.sql"),
];

/// Builds the old schema and stores, as the old batch writer did: the
/// published lesson.completed, an enrollment event, and a cancellation
/// spelled as the sample spells it. Returns the seqs given.
async fn old_database(db: &TestDatabase) -> Vec<i64> {
    let cancel = json!({"id": "30000000000000000000001", "resource": "subscription",
        "action": "canceled", "created_at": "2024-05-01T12:00:00Z", "payload": {"id": 4}})
    .to_string();
    let progress = String::from_utf8(crate::common::enrollment_event(
        "30000000000000000000002",
        "progress",
        77,
        5,
        "40.0",
        "2024-05-01T12:00:00Z",
    ))
    .unwrap();
    let rows: [(i64, &str, &str, Option<i64>, &str); 3] = [
        (
            1,
            SHARED_ID,
            "lesson.completed",
            None,
            samples::LESSON_COMPLETED,
        ),
        (
            2,
            "30000000000000000000001",
            "subscription.canceled",
            None,
            &cancel,
        ),
        (
            5,
            "30000000000000000000002",
            "enrollment.progress",
            Some(77),
            &progress,
        ),
    ];
    match db.backend {
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&format!("{}?mode=rwc", db.url))
                .await
                .unwrap();
            sqlx::raw_sql(
                "CREATE TABLE enrollhook_migrations (
                    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            for (i, sql) in OLD_SQLITE.iter().enumerate() {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO enrollhook_migrations VALUES (?, 'old', '2024-01-01')")
                    .bind(i as i64 + 1)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            for (seq, id, topic, enrollment, body) in rows {
                sqlx::query(
                    "INSERT INTO events (seq, source, event_id, topic, created_at, received_at,
                        enrollment_id, body)
                     VALUES (?, 'default', ?, ?, NULL, '2024-05-01T12:00:00.000000Z', ?, ?)",
                )
                .bind(seq)
                .bind(id)
                .bind(topic)
                .bind(enrollment)
                .bind(body)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
        Backend::Postgres => {
            let mut conn = db.pg().unwrap().connect().await;
            sqlx::raw_sql(
                "CREATE TABLE enrollhook_migrations (
                    version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            for (i, sql) in OLD_POSTGRES.iter().enumerate() {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO enrollhook_migrations VALUES ($1, 'old', now())")
                    .bind(i as i64 + 1)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            for (seq, id, topic, enrollment, body) in rows {
                sqlx::query(
                    "INSERT INTO events (seq, source, event_id, topic, created_at, received_at,
                        enrollment_id, body)
                     OVERRIDING SYSTEM VALUE
                     VALUES ($1, 'default', $2, $3, NULL, now(), $4, $5)",
                )
                .bind(seq)
                .bind(id)
                .bind(topic)
                .bind(enrollment)
                .bind(body)
                .execute(&mut conn)
                .await
                .unwrap();
            }
            sqlx::query("SELECT setval('events_seq_seq', 5)")
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    rows.iter().map(|r| r.0).collect()
}

fn parsed(body: &[u8]) -> NewEvent {
    let envelope = enrollhook::thinkific::parse(body, None).unwrap();
    NewEvent::from_envelope(
        "default",
        &envelope,
        String::from_utf8(body.to_vec()).unwrap(),
        chrono::Utc::now(),
    )
}

async fn a_database_of_the_old_schema_migrates_and_keeps_its_events(db: TestDatabase) {
    let seqs = old_database(&db).await;
    let s = store::open(&db.url, true).await.unwrap();

    let events = s
        .list_events(&EventFilter::default(), &PageRequest::default())
        .await
        .unwrap()
        .items;
    let kept: Vec<(i64, &str, bool)> = events
        .iter()
        .map(|e| (e.seq, e.topic.as_str(), e.id_taken))
        .collect();
    assert_eq!(
        kept,
        vec![
            (seqs[0], "lesson.completed", false),
            (seqs[1], "subscription.cancelled", false),
            (seqs[2], "enrollment.progress", false),
        ],
        "every event kept, at its seq, in one spelling, with the webhook-id it had"
    );
    assert_eq!(events[0].body, samples::LESSON_COMPLETED, "byte for byte");
    let by_topic = EventFilter {
        topic: Some("subscription.cancelled".into()),
        ..EventFilter::default()
    };
    let found = s
        .list_events(&by_topic, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        found.items.len(),
        1,
        "the topic index follows the renamed topic"
    );
    if db.backend == Backend::Postgres {
        // The old writer projected in the event's transaction; the rows above
        // went in behind its back, so derive the projection from the migrated log.
        s.rebuild_projection(false).await.unwrap();
    }
    let enrollment = s.get_enrollment("default", 77).await.unwrap().unwrap();
    assert_eq!(enrollment.progress, 40.0, "the projection follows the log");

    // Redeliveries of the old events are duplicates, the cancellation in
    // either spelling; another topic under a stored id is a new event.
    let cancel = |action: &str| {
        json!({"id": "30000000000000000000001", "resource": "subscription", "action": action,
            "created_at": "2024-05-01T12:00:00Z", "payload": {"id": 4}})
        .to_string()
    };
    let out = s
        .append_batch(&[
            parsed(samples::LESSON_COMPLETED.as_bytes()),
            parsed(cancel("canceled").as_bytes()),
            parsed(cancel("cancelled").as_bytes()),
            parsed(&quiz_attempted()),
        ])
        .await
        .unwrap();
    assert_eq!(out[..3], [AppendOutcome::Duplicate; 3], "{out:?}");
    let AppendOutcome::Stored { seq } = out[3] else {
        panic!("{out:?}")
    };
    assert!(seq > seqs[2], "the log keeps growing after its old end");

    match s.get_event("default", SHARED_ID, None).await {
        Err(StoreError::Ambiguous { topics, .. }) => {
            assert_eq!(topics, ["lesson.completed", "quiz.attempted"])
        }
        other => panic!("{other:?}"),
    }
    let quiz = s
        .get_event("default", SHARED_ID, Some("quiz.attempted"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        quiz.id_taken,
        "the second of an id gets a webhook-id of its own"
    );
    let old = s
        .get_event("default", SHARED_ID, Some("lesson.completed"))
        .await
        .unwrap()
        .unwrap();
    assert!(!old.id_taken);
    let by_old_spelling = s
        .get_event(
            "default",
            "30000000000000000000001",
            Some("subscription.canceled"),
        )
        .await
        .unwrap();
    assert_eq!(by_old_spelling.unwrap().seq, seqs[1]);
}

async fn canceled_and_cancelled_are_one_topic(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    let resp = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .json(&json!({"url": "https://hooks.example.com/x", "topics": ["subscription.canceled"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["topics"], json!(["subscription.cancelled"]));

    // The sample's spelling, byte for byte.
    let body = br#"{"id":"40000000000000000000001","resource":"subscription","action":"canceled","created_at":"2024-05-01T12:00:00Z","payload":{"id":4}}"#;
    let (code, reply) = app.deliver(body).await;
    assert_eq!(
        (code, reply["status"].as_str()),
        (200, Some("stored")),
        "{reply}"
    );
    let respelled = String::from_utf8_lossy(body).replace("\"canceled\"", "\"cancelled\"");
    let (code, reply) = app.deliver(respelled.as_bytes()).await;
    assert_eq!(
        (code, reply["status"].as_str()),
        (200, Some("duplicate")),
        "{reply}"
    );

    for topic in ["subscription.canceled", "subscription.cancelled"] {
        let (code, page) = app.get(&format!("/api/events?topic={topic}")).await;
        assert_eq!(code, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{topic}: {page}");
        assert_eq!(items[0]["topic"], "subscription.cancelled");
    }
    let raw = app
        .client
        .get(format!(
            "{}/api/events/default/40000000000000000000001/raw",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        &raw.bytes().await.unwrap()[..],
        &body[..],
        "the raw body is kept"
    );
    let deliveries = app
        .get("/api/events/default/40000000000000000000001/deliveries?topic=subscription.canceled")
        .await;
    assert_eq!(deliveries.0, 200, "{}", deliveries.1);
    assert_eq!(
        deliveries.1["items"].as_array().unwrap().len(),
        1,
        "the subscription matched"
    );
}
