//! Test helpers: the real server on port 0 against a fresh SQLite file, and
//! (`backend`) the same cases on both storage backends.
#![allow(dead_code)]

pub mod backend;
pub mod destination;
pub mod pg;
pub mod process;
pub mod proxy;

use std::path::PathBuf;
use std::time::Duration;

use enrollhook::config::ServeConfig;
use enrollhook::server::{self, Running};
use serde_json::Value;

pub const SECRET: &str = "test-school-api-key";

pub struct TestApp {
    /// A PostgreSQL test database, dropped with the app.
    pub pg: Option<pg::TestDb>,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub running: Option<Running>,
    pub base: String,
    pub client: reqwest::Client,
}

pub fn fresh_db() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("enrollhook.db").display());
    (dir, url)
}

pub async fn spawn_app() -> TestApp {
    let (dir, url) = fresh_db();
    spawn_with(dir, ServeConfig::new(url, Some(SECRET))).await
}

pub async fn spawn_with(dir: tempfile::TempDir, config: ServeConfig) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let database_url = config.database_url.clone();
    let running = server::start(config, listener, false).await.unwrap();
    let base = format!("http://{}", running.addr);
    TestApp {
        pg: None,
        dir,
        database_url,
        running: Some(running),
        base,
        client: enrollhook::client::http_client(Duration::from_secs(30)).unwrap(),
    }
}

impl TestApp {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("enrollhook.db")
    }

    pub fn store(&self) -> std::sync::Arc<dyn enrollhook::store::Store> {
        self.running.as_ref().unwrap().store.clone()
    }

    /// POSTs `body` signed with `secret` to the default source.
    pub async fn deliver(&self, body: &[u8]) -> (u16, Value) {
        self.deliver_to(
            "/webhooks/thinkific",
            body,
            Some(&enrollhook::thinkific::sign(SECRET.as_bytes(), body)),
        )
        .await
    }

    pub async fn deliver_to(
        &self,
        path: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header("x-thinkific-hmac-sha256", sig);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

/// An enrollment event body, for tests that need many distinct events.
pub fn enrollment_event(
    event_id: &str,
    action: &str,
    enrollment_id: i64,
    course_id: i64,
    pct: &str,
    updated_at: &str,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": event_id,
        "resource": "enrollment",
        "action": action,
        "tenant_id": "59",
        "created_at": updated_at,
        "payload": {
            "id": enrollment_id,
            "course_id": course_id,
            "course": {"id": course_id, "name": format!("Course {course_id}")},
            "user": {"id": enrollment_id + 1000, "email": format!("s{enrollment_id}@example.com"),
                     "first_name": "Stu", "last_name": "Dent"},
            "percentage_completed": pct,
            "free_trial": false,
            "activated_at": "2024-01-01T00:00:00Z",
            "started_at": "2024-01-01T00:00:00Z",
            "completed_at": null,
            "expiry_date": null,
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": updated_at,
        }
    }))
    .unwrap()
}

/// A plain connection to an enrollhook SQLite database (`sqlite://PATH`) with
/// its projection file attached, as the service reads it: for tests that look
/// at or tamper with the projection behind the service's back.
pub async fn sqlite_with_projection(url: &str) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let path = PathBuf::from(url.trim_start_matches("sqlite://"));
    sqlx::query("ATTACH DATABASE ? AS projection")
        .bind(
            enrollhook::store::sqlite_projector::projection_path(&path)
                .display()
                .to_string(),
        )
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}
