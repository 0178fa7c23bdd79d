//! An unavailable store answers 503 everywhere (Thinkific retries), never 400 or 500.

use std::time::Duration as StdDuration;

use enrollhook::config::ServeConfig;

use crate::common;
use crate::common::pg::TestDb;

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
        enrollhook::store::quarantine_prune_due(7, 3),
        "small bounds prune every time"
    );
    let due = (1..=100_000)
        .filter(|id| enrollhook::store::quarantine_prune_due(*id, 100_000))
        .count();
    assert_eq!(due, 100_000 / 1562);
}
