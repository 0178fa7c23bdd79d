//! A fresh PostgreSQL database per test on the real server, dropped afterwards
//! (also when the test fails: `Drop` runs while a panic unwinds).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server tests use: `ENROLLHOOK_TEST_POSTGRES`, else the local one.
pub fn admin_url() -> String {
    std::env::var("ENROLLHOOK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

async fn admin_connection(admin: &str) -> PgConnection {
    PgConnection::connect(admin).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL tests need a server at {admin} (set ENROLLHOOK_TEST_POSTGRES to use another; \
             `.ci/run` starts the local one, or run \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`): {e}"
        )
    })
}

impl TestDb {
    pub async fn create() -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin = admin_url();
        let name = format!(
            "enrollhook_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut conn = admin_connection(&admin).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.split('?').next().unwrap();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        TestDb { name, url, admin }
    }

    /// The URL with the host and port replaced (to go through a proxy).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let after_at = self
            .url
            .rfind('@')
            .map_or(self.url.find("://").unwrap() + 3, |i| i + 1);
        let path = after_at + self.url[after_at..].find('/').unwrap();
        format!("{}{addr}{}", &self.url[..after_at], &self.url[path..])
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop is synchronous and may run inside a runtime: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Migration 23 undone, rows kept: the log as one unpartitioned table again
/// (with the indexes and keys it had), for tests that take a database back
/// to an older schema to see later migrations run on it.
pub const UNPARTITION_LOG: &str = r#"
    CREATE TABLE events_unpartitioned (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source text COLLATE "C" NOT NULL, event_id text COLLATE "C" NOT NULL,
        topic text COLLATE "C" NOT NULL, created_at timestamptz,
        received_at timestamptz NOT NULL, enrollment_id bigint, body text NOT NULL,
        pruned_at timestamptz, txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        id_taken boolean NOT NULL DEFAULT false, body_dict bigint, body_zstd bytea);
    INSERT INTO events_unpartitioned OVERRIDING SYSTEM VALUE SELECT seq, source, event_id,
        topic, created_at, received_at, enrollment_id, body, pruned_at, txid, id_taken,
        body_dict, body_zstd FROM events;
    SELECT setval('events_unpartitioned_seq_seq', (SELECT last_value FROM events_seq_seq));
    DROP TABLE events;
    DROP TABLE event_ids;
    DROP FUNCTION enrollhook_event_month;
    ALTER TABLE events_unpartitioned RENAME TO events;
    ALTER SEQUENCE events_unpartitioned_seq_seq RENAME TO events_seq_seq;
    ALTER TABLE events ADD CONSTRAINT events_source_event_id_topic_key
        UNIQUE (source, event_id, topic);
    CREATE INDEX events_by_enrollment ON events (source, enrollment_id)
        WHERE enrollment_id IS NOT NULL;
    CREATE INDEX events_by_topic ON events (topic, seq);
    CREATE INDEX events_by_commit ON events (txid, seq);
    CREATE INDEX events_prunable ON events (received_at)
        WHERE enrollment_id IS NULL AND pruned_at IS NULL
          AND topic NOT IN ('lesson.completed', 'quiz.attempted');
"#;
