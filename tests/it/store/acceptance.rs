//! Defects of the storage layer, second round (issue #15, items 3 and 5): the
//! same events accepted by both backends, one refused event isolated from its
//! batch, and a quarantine bounded by bytes. Each runs on a fresh SQLite file
//! and a fresh database on the real PostgreSQL server, where it applies.

use std::sync::Arc;

use crate::common;
use crate::common::backend::on_both_backends;
use crate::common::pg::TestDb;
use crate::store::Fixture;
use chrono::Utc;
use enrollhook::config::ServeConfig;
use enrollhook::store::{self, AppendOutcome, EnrollmentFilter, NewEvent, PageRequest, Store};

on_both_backends!(
    nul_characters_and_long_values_are_stored_alike,
    values_no_backend_can_hold_are_refused_when_parsed,
    quarantine_is_bounded_by_bytes_and_keeps_a_prefix_of_big_bodies,
);

/// An enrollment event whose user and course fields are given as raw JSON.
fn enrollment_body(id: &str, enrollment_id: i64, email: &str, first: &str, course: &str) -> String {
    format!(
        r#"{{"id":"{id}","resource":"enrollment","action":"created","tenant_id":"59",
           "created_at":"2024-01-01T00:00:00Z","payload":{{"id":{enrollment_id},"course_id":7,
           "course":{{"id":7,"name":{course}}},
           "user":{{"id":9,"email":{email},"first_name":{first},"last_name":"L\u0000st"}},
           "percentage_completed":"0.0","free_trial":false,"created_at":"2024-01-01T00:00:00Z",
           "updated_at":"2024-01-01T00:00:00Z"}}}}"#
    )
}

/// `len` letters that do not compress (a linear congruential sequence).
fn noise(len: usize) -> String {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect()
}

fn event(body: String) -> NewEvent {
    let envelope = enrollhook::thinkific::parse(body.as_bytes(), None).unwrap();
    NewEvent::from_envelope("default", &envelope, body, Utc::now())
}

async fn nul_characters_and_long_values_are_stored_alike(fx: Fixture) {
    // Incompressible, or PostgreSQL would compress the index entry under its limit.
    let long_email = format!("\"{}@example.com\"", noise(10 * 1024));
    let long_name = format!("\"{}\"", noise(100 * 1024));
    let bodies = [
        enrollment_body(
            "nul",
            1,
            r#""a\u0000b@example.com""#,
            r#""Z\u0000e""#,
            r#""C\u0000""#,
        ),
        enrollment_body("long-email", 2, &long_email, r#""Zoe""#, r#""Course""#),
        enrollment_body(
            "long-name",
            3,
            r#""c@example.com""#,
            &long_name,
            r#""Course""#,
        ),
    ];
    let events: Vec<NewEvent> = bodies.iter().cloned().map(event).collect();
    let outcomes = fx.store.append_batch(&events).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, AppendOutcome::Stored { .. })),
        "{outcomes:?}"
    );

    let nul = fx
        .store
        .get_enrollment("default", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nul.email.as_deref(), Some("a\u{FFFD}b@example.com"));
    assert_eq!(nul.first_name.as_deref(), Some("Z\u{FFFD}e"));
    assert_eq!(nul.last_name.as_deref(), Some("L\u{FFFD}st"));
    assert_eq!(nul.course_name.as_deref(), Some("C\u{FFFD}"));
    // The raw body stays byte for byte, escape included.
    let stored = fx
        .store
        .get_event("default", "nul", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body, bodies[0]);

    let email = long_email.trim_matches('"').to_owned();
    let filter = EnrollmentFilter {
        email: Some(email.clone()),
        ..EnrollmentFilter::default()
    };
    let page = fx
        .store
        .list_enrollments(&filter, &PageRequest::default(), Utc::now())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].enrollment_id, 2);
    let named = fx
        .store
        .get_enrollment("default", 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(named.first_name.map(|n| n.len()), Some(100 * 1024));
    // A rebuild from the log derives the same projection.
    let report = fx.store.rebuild_projection(true).await.unwrap();
    assert_eq!((report.changed, report.removed), (0, 0), "{report:?}");
}

async fn values_no_backend_can_hold_are_refused_when_parsed(fx: Fixture) {
    // A lone surrogate in a projected field, and timestamps outside what
    // PostgreSQL holds (before 4713 BC) or chrono does (year 300000).
    let surrogate = enrollment_body("s", 1, r#""a@b.c""#, r#""\ud800""#, r#""C""#);
    assert!(enrollhook::thinkific::parse(surrogate.as_bytes(), None).is_err());
    for when in [
        "-5000-01-01T00:00:00",
        "+300000-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
    ] {
        let body = enrollment_body("t", 1, r#""a@b.c""#, r#""Z""#, r#""C""#).replace(
            r#""updated_at":"2024-01-01T00:00:00Z""#,
            &format!(r#""updated_at":"{when}""#),
        );
        assert!(
            enrollhook::thinkific::parse(body.as_bytes(), None).is_err(),
            "{when} parsed"
        );
    }
    // The extremes that parse are stored by the backend.
    let body = enrollment_body("far", 1, r#""a@b.c""#, r#""Z""#, r#""C""#).replace(
        r#""updated_at":"2024-01-01T00:00:00Z""#,
        r#""updated_at":"9999-12-31T23:59:59.999999Z""#,
    );
    let outcomes = fx.store.append_batch(&[event(body)]).await.unwrap();
    assert!(matches!(outcomes[0], AppendOutcome::Stored { .. }));
}

async fn quarantine_is_bounded_by_bytes_and_keeps_a_prefix_of_big_bodies(fx: Fixture) {
    let (keep, max_bytes) = (100_000u64, 8 * 1024 * 1024u64);
    let kept = store::QUARANTINE_BODY_KEPT;
    // Twice the byte bound in bodies of 1 MiB (each kept as 64 KiB), as the
    // webhook endpoint does it: prune when due.
    let inserts = 2 * max_bytes as usize / kept;
    for _ in 0..inserts {
        let id = fx
            .store
            .quarantine(store::NewQuarantine {
                source: "default".into(),
                received_at: Utc::now(),
                reason_code: "not_json".into(),
                reason: "not JSON: \0".into(),
                headers: vec![],
                body: vec![b'x'; 1024 * 1024],
            })
            .await
            .unwrap();
        if store::quarantine_prune_due_within(id, keep, max_bytes) {
            fx.store.prune_quarantine(keep, max_bytes).await.unwrap();
        }
    }
    let mut total = 0usize;
    let mut records = 0usize;
    let mut page = PageRequest {
        limit: 1000,
        cursor: None,
    };
    loop {
        let p = fx.store.list_quarantine(None, &page).await.unwrap();
        for r in &p.items {
            assert_eq!(r.body.len(), kept);
            assert_eq!(r.body_size, 1024 * 1024);
            assert!(r.truncated);
            assert_eq!(r.reason, "not JSON: \u{FFFD}");
            total += r.body.len();
            records += 1;
        }
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    let step = (max_bytes / 64 / kept as u64).max(1) as usize * kept;
    assert!(
        total <= max_bytes as usize + step,
        "{total} bytes in {records} records kept, bound {max_bytes} + {step}"
    );
    assert!(
        total >= max_bytes as usize - kept,
        "pruned too much: {total}"
    );

    // A small body is kept whole and not marked.
    let id = fx
        .store
        .quarantine(store::NewQuarantine {
            source: "default".into(),
            received_at: Utc::now(),
            reason_code: "not_json".into(),
            reason: "small".into(),
            headers: vec![],
            body: b"{}".to_vec(),
        })
        .await
        .unwrap();
    let r = fx.store.get_quarantine(id).await.unwrap().unwrap();
    assert_eq!(
        (r.body.as_slice(), r.body_size, r.truncated),
        (&b"{}"[..], 2, false)
    );
}

/// A good enrollment delivery with a distinct id.
fn good(i: i64) -> Vec<u8> {
    common::enrollment_event(
        &format!("good-{i}"),
        "created",
        i,
        7,
        "0.0",
        "2024-01-01T00:00:00Z",
    )
}

/// Issue #15, item 5: 40 good deliveries and one the database refuses, sent
/// together through the real router on PostgreSQL. The database refuses it
/// for real: a CHECK constraint made by the test (after the acceptance fixes
/// nothing a sender can put in an event is refused any more).
#[tokio::test]
async fn a_refused_event_fails_alone_and_is_quarantined_on_postgres() {
    let db = TestDb::create().await;
    drop(store::open(&db.url, true).await.unwrap());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query(
        // On the envelope id: bodies are stored compressed (`body` is empty).
        "ALTER TABLE events ADD CONSTRAINT poison CHECK (event_id <> 'poison-marker')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (dir, _) = common::fresh_db();
    let mut config = ServeConfig::new(db.url.clone(), Some(common::SECRET));
    config.writers = Some(1);
    let mut server = common::spawn_with(dir, config).await;
    let app = Arc::new(app_ref(&mut server));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..41 {
        let app = app.clone();
        tasks.spawn(async move {
            let body = if i == 20 {
                String::from_utf8(good(1000))
                    .unwrap()
                    .replace("good-1000", "poison-marker")
                    .into_bytes()
            } else {
                good(i)
            };
            (i, app.deliver(&body).await)
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        answers.push(r.unwrap());
    }
    answers.sort_by_key(|(i, _)| *i);
    for (i, (status, body)) in &answers {
        if *i == 20 {
            assert_eq!(*status, 400, "{body}");
            assert_eq!(body["error"], "store_rejected", "{body}");
        } else {
            assert_eq!(*status, 200, "delivery {i}: {body}");
        }
    }
    let store = app.store();
    let q = store
        .list_quarantine(None, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(q.items.len(), 1);
    assert_eq!(q.items[0].reason_code, "store_rejected");
    assert!(
        q.items[0].reason.contains("poison"),
        "{}",
        q.items[0].reason
    );
    let stored = store
        .list_enrollments(
            &EnrollmentFilter::default(),
            &PageRequest::default(),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(stored.items.len(), 40);
    drop(store);
    drop(app);
    server.stop().await;
    drop(db);
}

/// The test app without its ownership (the test keeps it alive).
fn app_ref(app: &mut common::TestApp) -> AppHandle {
    AppHandle {
        base: app.base.clone(),
        client: app.client.clone(),
        store: app.store(),
    }
}

struct AppHandle {
    base: String,
    client: reqwest::Client,
    store: Arc<dyn Store>,
}

impl AppHandle {
    async fn deliver(&self, body: &[u8]) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}/webhooks/thinkific", self.base))
            .header("content-type", "application/json")
            .header(
                "x-thinkific-hmac-sha256",
                enrollhook::thinkific::sign(common::SECRET.as_bytes(), body),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
}
