//! The main file's schema versions and their runner (the rules are shared
//! with PostgreSQL, see [`crate::store::migrate`]).

use chrono::Utc;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

use super::codec::fmt_ts;
use crate::store::{Result, migrate};

/// Schema versions, applied in order, each in its own transaction.
const MIGRATIONS: &[migrate::Migration] = &[
    (1, "initial", include_str!("migrations/0001_initial.sql")),
    (
        2,
        "forwarding",
        include_str!("migrations/0002_forwarding.sql"),
    ),
    (
        3,
        "course totals",
        include_str!("migrations/0003_course_totals.sql"),
    ),
    (
        4,
        "retention",
        include_str!("migrations/0004_retention.sql"),
    ),
    (
        5,
        "projection cursor",
        include_str!("migrations/0005_projection_cursor.sql"),
    ),
    (
        6,
        "projection in a file of its own",
        include_str!("migrations/0006_projection_file.sql"),
    ),
    (
        7,
        "topic index in the projection file",
        include_str!("migrations/0007_topic_index_to_projection.sql"),
    ),
    (
        8,
        "prunable events by arrival",
        include_str!("migrations/0008_prunable_events.sql"),
    ),
    (
        9,
        "topic in the event identity",
        include_str!("migrations/0009_topic_in_event_identity.sql"),
    ),
    (
        10,
        "learning events kept by retention",
        include_str!("migrations/0010_prunable_learning.sql"),
    ),
    (
        11,
        "broker destinations",
        include_str!("migrations/0011_broker_destinations.sql"),
    ),
    (
        12,
        "subscription filter",
        include_str!("migrations/0012_subscription_filter.sql"),
    ),
    (
        13,
        "subscription template",
        include_str!("migrations/0013_subscription_template.sql"),
    ),
    (
        15,
        "alert incidents",
        include_str!("migrations/0015_alert_incidents.sql"),
    ),
    (
        17,
        "outbox traceparent",
        include_str!("migrations/0017_outbox_traceparent.sql"),
    ),
    (
        18,
        "compressed bodies",
        include_str!("migrations/0018_compressed_bodies.sql"),
    ),
    (
        19,
        "fair claims",
        include_str!("migrations/0019_fair_claims.sql"),
    ),
];

/// Brings the main file's schema up to date (with `apply`), or says how.
pub(super) async fn migrate(conn: &mut SqliteConnection, apply: bool) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS enrollhook_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM enrollhook_migrations")
            .fetch_one(&mut *conn)
            .await?;
    for m in migrate::pending(MIGRATIONS, current, apply)? {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.2))
            .execute(&mut *tx)
            .await
            .map_err(|e| migrate::failed(m, e))?;
        sqlx::query(
            "INSERT INTO enrollhook_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        )
        .bind(m.0)
        .bind(m.1)
        .bind(fmt_ts(&Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.0, name = m.1, "applied SQLite migration");
    }
    Ok(())
}
