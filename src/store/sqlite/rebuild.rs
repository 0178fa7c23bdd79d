//! `rebuild`: the SQLite projection re-derived from the log (or compared
//! with it, `--check`), in one transaction on the projection file.

use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite, SqliteConnection};

use super::SqliteStore;
use super::apply;
use super::codec::*;
use super::courses;
use super::projector::{attach_projection, projection_path};
use crate::projection::Enrollment;
use crate::store::shared::{learning, rebuild};
use crate::store::*;

impl SqliteStore {
    pub(super) async fn rebuild(&self, dry_run: bool) -> Result<RebuildReport> {
        self.projector.catch_up().await?;
        // One transaction on the projection file: the projector waits while
        // it runs; deliveries do not (the log file's write lock is not taken).
        let mut conn = self.writer.options.connect().await?;
        attach_projection(
            &mut conn,
            &projection_path(self.writer.options.get_filename()),
        )
        .await?;
        let mut tx = conn.begin().await?;
        // The projection file's write lock first (see `begin_projection`).
        sqlx::query("UPDATE projection_cursor SET projected_through_seq = projected_through_seq")
            .execute(&mut *tx)
            .await?;
        // What the projection is meant to reflect: events stored since are
        // applied by the batch writer after this, as usual.
        let through: i64 =
            sqlx::query_scalar("SELECT projected_through_seq FROM projection_cursor")
                .fetch_one(&mut *tx)
                .await?;
        let mut report =
            rebuild::refold_all::<Sqlite>(&mut tx, Some(through), dry_run, async |conn, rows| {
                for e in &rows {
                    upsert_enrollment(conn, e).await?;
                }
                Ok(())
            })
            .await?;
        // The topic index: one row per event up to `through`, as the log says.
        report.index_rows = sqlx::query_scalar::<_, i64>(concat!(
            "SELECT (SELECT COUNT(*) FROM events AS e WHERE e.seq <= ?1 AND NOT EXISTS (
                 SELECT 1 FROM event_topics AS t
                 WHERE t.seq = e.seq AND t.topic = e.topic AND t.resource = ",
            apply::resource_of_topic!(),
            "))
             + (SELECT COUNT(*) FROM event_topics AS t WHERE t.seq > ?1 OR NOT EXISTS (
                 SELECT 1 FROM events AS e WHERE e.seq = t.seq AND e.topic = t.topic))"
        ))
        .bind(through)
        .fetch_one(&mut *tx)
        .await? as u64;
        if !dry_run {
            rebuild::delete_orphans::<Sqlite>(&mut tx).await?;
        }
        // After the enrollments, which the learners copy.
        let learning = learning::rebuild::<Sqlite>(&mut tx, Some(through), dry_run).await?;
        report.learning = learning.rows;
        let topic_index_rows = report.index_rows;
        report.index_rows += learning.index_rows;
        // From the enrollments as rebuilt (a dry run compares with them as stored).
        report.courses = courses::recompute(&mut tx, dry_run).await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            if topic_index_rows > 0 {
                sqlx::query("DELETE FROM event_topics")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(apply::INDEX_TOPICS_FROM_LOG)
                    .bind(0)
                    .bind(through)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(report)
    }
}

/// Writes a projection row (for `rebuild`; batches go through [`BatchWriter`]).
async fn upsert_enrollment(conn: &mut SqliteConnection, e: &Enrollment) -> Result<()> {
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "INSERT INTO enrollments ({ENROLLMENT_WRITE_COLUMNS}) "
    ));
    q.push_values([e], |mut row, e| {
        row.push_bind(&e.source)
            .push_bind(e.enrollment_id)
            .push_bind(e.user_id)
            .push_bind(&e.email)
            .push_bind(&e.first_name)
            .push_bind(&e.last_name)
            .push_bind(e.course_id)
            .push_bind(&e.course_name)
            .push_bind(e.progress)
            .push_bind(e.trial)
            .push_bind(e.completed)
            .push_bind(ts(e.activated_at))
            .push_bind(ts(e.started_at))
            .push_bind(ts(e.completed_at))
            .push_bind(ts(e.expiry_date))
            .push_bind(ts(e.created_at))
            .push_bind(ts(e.updated_at))
            .push_bind(e.days_to_complete())
            .push_bind(e.event_count)
            .push_bind(ts(e.version.updated_at))
            .push_bind(ts(e.version.created_at))
            .push_bind(&e.version.event_id);
    });
    q.push(" ").push(ENROLLMENT_UPSERT_ON_CONFLICT);
    q.build().execute(&mut *conn).await?;
    Ok(())
}
