//! The conformance suite of the storage traits (`Store`, `ForwardStore`): every
//! case is written once against `Arc<dyn Store>` and runs on a fresh SQLite
//! file and on a fresh database of the real PostgreSQL server
//! (`on_both_backends!`, with a [`Fixture`] as the starting point). What only
//! one backend has (SQLite's projection file) is in `sqlite_files`.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use enrollhook::store::{self, NewEvent, Store};

use crate::common;
use crate::common::backend::{Backend, Setup, TestDatabase};

mod acceptance;
mod batch;
mod bodies;
mod forward;
mod log;
mod projection;
mod quarantine;
mod retention;
mod sqlite_files;

/// A store opened (and migrated) on a fresh database of one backend.
pub(crate) struct Fixture {
    pub(crate) backend: Backend,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) url: String,
    /// Deleted when the fixture is dropped.
    _db: TestDatabase,
}

impl Setup for Fixture {
    async fn setup(backend: Backend) -> Fixture {
        let db = TestDatabase::create(backend).await;
        Fixture {
            backend,
            store: store::open(&db.url, true).await.unwrap(),
            url: db.url.clone(),
            _db: db,
        }
    }
}

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

/// Runs a statement on the fixture's database behind the store's back.
async fn tamper(f: &Fixture, sql: &str) {
    if f.backend == Backend::Sqlite {
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

/// An enrollment event of course `1 + enrollment % 4` at `at` (RFC 3339).
fn batch_event(
    source: &str,
    id: &str,
    action: &str,
    enrollment: i64,
    pct: &str,
    at: &str,
) -> NewEvent {
    let body = common::enrollment_event(id, action, enrollment, 1 + enrollment % 4, pct, at);
    new_event(source, &body)
}
