//! The database's schema versions and their runner (the rules are shared
//! with SQLite, see [`crate::store::migrate`]).

use sqlx::postgres::PgPool;

use crate::store::{Result, migrate};

/// Schema versions, applied in order.
const MIGRATIONS: &[migrate::Migration] = &[
    (1, "initial", include_str!("migrations/0001_initial.sql")),
    (
        2,
        "forwarding",
        include_str!("migrations/0002_forwarding.sql"),
    ),
    (
        3,
        "retention",
        include_str!("migrations/0003_retention.sql"),
    ),
    (
        4,
        "commit order",
        include_str!("migrations/0004_commit_order.sql"),
    ),
    (5, "activity", include_str!("migrations/0005_activity.sql")),
    (
        6,
        "prunable events by arrival",
        include_str!("migrations/0006_prunable_events.sql"),
    ),
    (
        7,
        "long values",
        include_str!("migrations/0007_long_values.sql"),
    ),
    (
        8,
        "topic in the event identity",
        include_str!("migrations/0008_topic_in_event_identity.sql"),
    ),
    (9, "learning", include_str!("migrations/0009_learning.sql")),
    (
        10,
        "broker destinations",
        include_str!("migrations/0010_broker_destinations.sql"),
    ),
    (
        11,
        "subscription filter",
        include_str!("migrations/0011_subscription_filter.sql"),
    ),
    (
        12,
        "subscription template",
        include_str!("migrations/0012_subscription_template.sql"),
    ),
    (
        14,
        "alert incidents",
        include_str!("migrations/0014_alert_incidents.sql"),
    ),
    (
        15,
        "stall buckets",
        include_str!("migrations/0015_stall_buckets.sql"),
    ),
    (
        16,
        "outbox traceparent",
        include_str!("migrations/0016_outbox_traceparent.sql"),
    ),
    (
        17,
        "compressed bodies",
        include_str!("migrations/0017_compressed_bodies.sql"),
    ),
    (
        18,
        "course totals",
        include_str!("migrations/0018_course_totals.sql"),
    ),
    (
        19,
        "course totals version",
        include_str!("migrations/0019_course_totals_version.sql"),
    ),
    (
        20,
        "lesson completion counts",
        include_str!("migrations/0020_lesson_completion_counts.sql"),
    ),
    (
        21,
        "fair claims",
        include_str!("migrations/0021_fair_claims.sql"),
    ),
    (
        22,
        "enrolled learners per course",
        include_str!("migrations/0022_course_learners.sql"),
    ),
    (
        23,
        "event log partitioned by month",
        include_str!("migrations/0023_partitioned_event_log.sql"),
    ),
];

/// The migration that adds the learning projection.
const LEARNING: i64 = 9;
/// The migration that adds the per-course totals.
const COURSE_TOTALS: i64 = 18;

/// Advisory lock key serialising migrations of concurrently starting instances
/// ("enrollhk" in ASCII). Enrollment lock keys use the two-int form, so they
/// never collide with this one.
const MIGRATION_LOCK: i64 = 0x656e_726f_6c6c_686b;

/// Applies missing migrations in one transaction, under an advisory lock so
/// that instances starting together migrate once.
pub(super) async fn migrate(pool: &PgPool, apply: bool) -> Result<()> {
    let mut tx = pool.begin().await?;
    if apply {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS enrollhook_migrations (
                version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
    }
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('enrollhook_migrations') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
    let current: i64 = if exists {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM enrollhook_migrations")
            .fetch_one(&mut *tx)
            .await?
    } else {
        0
    };
    let pending = migrate::pending(MIGRATIONS, current, apply)?;
    if pending.is_empty() {
        return Ok(());
    }
    for m in pending {
        sqlx::raw_sql(sqlx::AssertSqlSafe(m.2))
            .execute(&mut *tx)
            .await
            .map_err(|e| migrate::failed(m, e))?;
        sqlx::query(
            "INSERT INTO enrollhook_migrations (version, name, applied_at) VALUES ($1, $2, now())",
        )
        .bind(m.0)
        .bind(m.1)
        .execute(&mut *tx)
        .await?;
        tracing::info!(version = m.0, name = m.1, "applying PostgreSQL migration");
    }
    if current > 0 && pending.iter().any(|m| m.0 == LEARNING) {
        // The learning tables are new: derive them from the events already
        // received, in the migration's transaction (other instances wait).
        tracing::info!("deriving lessons and quizzes from the event log (once, after migration 9)");
        crate::store::shared::learning::rebuild::<sqlx::Postgres>(&mut tx, None, false).await?;
    }
    if current > 0 && pending.iter().any(|m| m.0 == COURSE_TOTALS) {
        // Totals of the enrollments already projected, with `rebuild`'s query.
        super::courses::recompute(&mut tx, false).await?;
    }
    tx.commit().await?;
    Ok(())
}
