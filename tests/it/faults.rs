//! Storage faults: the service answers 503 (so Thinkific retries), stays up,
//! and recovers by itself.

use crate::common;

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

/// A tmpfs of a given size, mounted for the test's duration (needs root, as in CI).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts it, or fails the test: a test that needs root is `#[ignore]`d,
    /// and whoever runs it (`.ci/run`, as root) must get it run, not skipped.
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => SmallDisk { dir },
            other => panic!(
                "mounting a {size} tmpfs failed ({other:?}): this test needs root \
                 (run `cargo test --test it -- --ignored` as root, as `.ci/run` does)"
            ),
        }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: the server may still hold the database open for a moment.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An enrollment event padded to about 100 KB (Thinkific bodies are small;
/// big ones fill the small disk quickly).
fn padded_event(n: u32) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(samples::PROGRESS).unwrap();
    v["id"] = format!("disk-full-{n}").into();
    v["payload"]["id"] = (900_000 + i64::from(n)).into();
    // Random, so it stays ~100 KB after the log's compression.
    let padding: String = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric)
        .take(100_000)
        .map(char::from)
        .collect();
    v["payload"]["padding"] = padding.into();
    serde_json::to_vec(&v).unwrap()
}

/// Needs root to mount a small disk, so it is ignored by a plain `cargo test`
/// (libtest cannot decide at run time to ignore a test, and a test that
/// passes without running cannot fail). `.ci/run` runs as root and runs the
/// ignored tests after `cargo test`; there, a failed mount fails the test.
#[tokio::test]
#[ignore = "needs root to mount a tmpfs: `.ci/run` runs it (cargo test --test it -- --ignored)"]
async fn a_full_disk_gets_503_then_recovers_when_space_is_freed() {
    let disk = SmallDisk::mount("4m");
    let url = format!(
        "sqlite://{}",
        disk.dir.path().join("enrollhook.db").display()
    );
    let app = spawn_with(
        tempfile::tempdir().unwrap(),
        enrollhook::config::ServeConfig::new(url, Some(SECRET)),
    )
    .await;

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..200 {
        let (status, reply) = app.deliver(&padded_event(n)).await;
        match status {
            200 => acknowledged.push(n),
            503 => {
                assert_eq!(reply["error"], "storage_unavailable", "{reply}");
                refused = Some(n);
                break;
            }
            other => panic!("unexpected {other}: {reply}"),
        }
    }
    let refused = refused.expect("a 4 MB disk fills up with 100 KB events");
    assert!(!acknowledged.is_empty());
    // The service is up and still answers reads while the disk is full.
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/api/enrollments").await.0, 200);

    // Space is freed (here: the disk grows); Thinkific's retry is stored.
    disk.resize("64m");
    let (status, reply) = app.deliver(&padded_event(refused)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("stored")),
        "{reply}"
    );

    // Everything acknowledged is there, exactly once, and nothing half-stored.
    let (_, events) = app.get("/api/events?limit=1000").await;
    let ids: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), acknowledged.len() + 1);
    for n in acknowledged.iter().chain([&refused]) {
        assert!(ids.contains(&format!("disk-full-{n}").as_str()));
    }
    drop(app);
}
