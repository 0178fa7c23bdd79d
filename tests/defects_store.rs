//! Defects of the storage layer (issue #14), each run on a fresh SQLite file
//! and a fresh database on the real PostgreSQL server.

mod common;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use common::pg::TestDb;
use enrollhook::config::ServeConfig;
use enrollhook::store::{self, AppendOutcome, NewEvent, Store};

/// Keeps the database alive for the test's duration; dropped (and deleted) after.
enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] TestDb),
}

struct Fixture {
    store: Arc<dyn Store>,
    _db: Db,
}

async fn sqlite() -> Fixture {
    let (dir, url) = common::fresh_db();
    let store = store::open(&url, true).await.unwrap();
    Fixture {
        store,
        _db: Db::Sqlite(dir),
    }
}

async fn postgres() -> Fixture {
    let db = TestDb::create().await;
    let store = store::open(&db.url, true).await.unwrap();
    Fixture {
        store,
        _db: Db::Postgres(db),
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test] async fn $name() { super::$name(super::sqlite).await } )* }
        mod on_postgres { $( #[tokio::test] async fn $name() { super::$name(super::postgres).await } )* }
    };
}

on_both!(
    retention_drops_only_bodies_older_than_the_cutoff,
    copy_keeps_pruned_events_pruned,
);

/// A non-enrollment event (retention prunes those), received at `received_at`.
fn order_event(id: &str, received_at: DateTime<Utc>) -> NewEvent {
    let body = format!(
        r#"{{"id":"{id}","resource":"order","action":"created","tenant_id":"59","created_at":"2024-01-01T00:00:00Z","payload":{{"id":5,"amount_cents":1000}}}}"#
    );
    let envelope = enrollhook::thinkific::parse(body.as_bytes(), None).unwrap();
    NewEvent::from_envelope("default", &envelope, body, received_at)
}

async fn retention_drops_only_bodies_older_than_the_cutoff<F, Fut>(fixture: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Fixture>,
{
    let f = fixture().await;
    let now = Utc::now();
    // A recent event, then an old one after it in the log (an import, a
    // re-admitted quarantined delivery, a copy into a non-empty database).
    f.store
        .append_batch(&[order_event("recent", now - Duration::days(1))])
        .await
        .unwrap();
    f.store
        .append_batch(&[order_event("old", now - Duration::days(60))])
        .await
        .unwrap();
    let report = f
        .store
        .prune_events(now - Duration::days(30))
        .await
        .unwrap();
    assert_eq!(report.events, 1, "only the old event is pruned");
    let recent = f
        .store
        .get_event("default", "recent")
        .await
        .unwrap()
        .unwrap();
    assert!(recent.pruned_at.is_none(), "a recent body is kept");
    assert!(!recent.body.is_empty());
    let old = f.store.get_event("default", "old").await.unwrap().unwrap();
    assert!(old.pruned_at.is_some());
    assert!(old.body.is_empty());
    // A second run finds nothing more.
    let again = f
        .store
        .prune_events(now - Duration::days(30))
        .await
        .unwrap();
    assert_eq!(again.events, 0);
}

async fn copy_keeps_pruned_events_pruned<F, Fut>(fixture: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Fixture>,
{
    let from = fixture().await;
    let to = fixture().await;
    let now = Utc::now();
    from.store
        .append_batch(&[
            order_event("old", now - Duration::days(60)),
            order_event("recent", now - Duration::days(1)),
        ])
        .await
        .unwrap();
    from.store
        .prune_events(now - Duration::days(30))
        .await
        .unwrap();
    let report = enrollhook::maintenance::copy::copy(from.store.as_ref(), to.store.as_ref())
        .await
        .expect("a pruned log copies");
    assert_eq!((report.events, report.events_added), (2, 2));

    let old = to.store.get_event("default", "old").await.unwrap().unwrap();
    assert!(old.pruned_at.is_some(), "copied as pruned");
    assert!(old.body.is_empty());
    let recent = to
        .store
        .get_event("default", "recent")
        .await
        .unwrap()
        .unwrap();
    assert!(recent.pruned_at.is_none());
    assert!(recent.seq > old.seq, "log order kept");
    // A redelivery of the pruned event is still a duplicate in the copy.
    let again = to
        .store
        .append_batch(&[order_event("old", now)])
        .await
        .unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate]);
    // Copying again adds nothing.
    let twice = enrollhook::maintenance::copy::copy(from.store.as_ref(), to.store.as_ref())
        .await
        .unwrap();
    assert_eq!(twice.events_added, 0);
}

/// A subscription to create, as the API takes it.
fn subscription_json() -> serde_json::Value {
    serde_json::json!({"url": "https://a.example.com/hook", "topics": ["order.created"]})
}

async fn post(app: &common::TestApp, path: &str, body: &serde_json::Value) -> u16 {
    app.client
        .post(format!("{}{path}", app.base))
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// SQLite made unavailable for real: another process holds the write lock
/// longer than the store waits for it. Deliveries and API writes answer 503.
#[tokio::test]
async fn an_unavailable_sqlite_store_answers_503_not_400_or_500() {
    let app = common::spawn_app().await;
    let mut blocker = common::sqlite_with_projection(&app.database_url).await;
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let body = common::enrollment_event("e1", "created", 1, 1, "0.0", "2024-01-01T00:00:00Z");
    let (status, reply) = app.deliver(&body).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(
        post(&app, "/api/subscriptions", &subscription_json()).await,
        503
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();
    let (status, _) = app.deliver(&body).await;
    assert_eq!(status, 200, "available again");
}

/// PostgreSQL made unavailable for real: it refuses the service's connections.
#[tokio::test]
async fn an_unavailable_postgres_store_answers_503_not_400_or_500() {
    let db = TestDb::create().await;
    let (dir, _) = common::fresh_db();
    let app = common::spawn_with(dir, ServeConfig::new(db.url.clone(), Some(common::SECRET))).await;
    let mut admin = {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&common::pg::admin_url())
            .await
            .unwrap()
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
        db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let body = common::enrollment_event("e1", "created", 1, 1, "0.0", "2024-01-01T00:00:00Z");
    let (status, reply) = app.deliver(&body).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(
        post(&app, "/api/subscriptions", &subscription_json()).await,
        503
    );
    let (status, _) = app.get("/api/enrollments").await;
    assert_eq!(status, 503);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// A flood of forged deliveries keeps the quarantine near its bound while
/// pruning only once per `max / 64` of them.
#[test]
fn the_quarantine_is_pruned_once_per_batch_of_inserts() {
    assert!(
        store::quarantine_prune_due(7, 3),
        "small bounds prune every time"
    );
    let due = (1..=100_000)
        .filter(|id| store::quarantine_prune_due(*id, 100_000))
        .count();
    assert_eq!(due, 100_000 / 1562);
}
