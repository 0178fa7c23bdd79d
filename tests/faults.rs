//! Storage faults: the service answers 503 (so Thinkific retries), stays up,
//! and recovers by itself.

mod common;

use common::*;
use enrollhook::thinkific::samples;
use sqlx::Connection;

#[tokio::test]
async fn a_locked_database_gets_503_then_recovers() {
    let app = spawn_app().await;
    assert_eq!(app.deliver(samples::CREATED.as_bytes()).await.0, 200);

    // Another process holds the write lock (a backup tool, a stuck script…).
    let url = format!("sqlite://{}", app.db_path().display());
    let mut intruder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut intruder)
        .await
        .unwrap();

    let (status, reply) = app.deliver(samples::PROGRESS.as_bytes()).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"], "storage_unavailable");
    assert!(reply["message"].as_str().unwrap().contains("retry"));
    // Reads still work from WAL snapshots; health stays up.
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/api/enrollments").await.0, 200);

    sqlx::query("ROLLBACK")
        .execute(&mut intruder)
        .await
        .unwrap();
    drop(intruder);

    // Thinkific's retry now succeeds; nothing was half-stored.
    let (status, reply) = app.deliver(samples::PROGRESS.as_bytes()).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("stored")));
    let (_, events) = app.get("/api/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 2);
}
