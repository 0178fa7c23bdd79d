//! Retention on SQLite: old bodies emptied, old attempts and finished
//! deliveries deleted, in short rounds beside the writer; and the import of
//! events whose bodies retention had emptied elsewhere.

use chrono::{DateTime, Utc};
use sqlx::Connection;

use super::SqliteStore;
use super::codec::*;
use crate::store::*;

impl SqliteStore {
    pub(super) async fn prune(&self, cutoff: DateTime<Utc>) -> Result<PruneReport> {
        let cutoff = fmt_ts(&cutoff);
        let mut report = PruneReport::default();
        // Each body by its own event's age (seq order is not arrival order:
        // an import or a re-admitted delivery can be older than the events
        // before it), in rounds of a few thousand, each its own short
        // transaction, found through the partial index of what is prunable
        // (migration 8), which pruned events leave.
        loop {
            let done = sqlx::query(
                "UPDATE events SET body = '', pruned_at = ?1 WHERE seq IN (
                     SELECT seq FROM events
                     WHERE received_at < ?2 AND enrollment_id IS NULL AND pruned_at IS NULL
                     ORDER BY received_at LIMIT ?3)",
            )
            .bind(fmt_ts(&Utc::now()))
            .bind(&cutoff)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .execute(&mut *self.writer.lock().await?)
            .await?;
            report.events += done.rows_affected();
            if (done.rows_affected() as i64) < PRUNE_EVENTS_PER_ROUND {
                break;
            }
        }
        loop {
            // Attempt ids follow time: look at the oldest few thousand only.
            let done = sqlx::query(
                "DELETE FROM delivery_attempts WHERE attempted_at < ?1 AND id IN
                    (SELECT id FROM delivery_attempts ORDER BY id LIMIT ?2)",
            )
            .bind(&cutoff)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .execute(&mut *self.writer.lock().await?)
            .await?;
            report.delivery_attempts += done.rows_affected();
            if done.rows_affected() == 0 {
                break;
            }
        }
        loop {
            let done = sqlx::query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                    WHERE state != 'pending' AND finished_at < ? LIMIT ?)",
            )
            .bind(&cutoff)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .execute(&mut *self.writer.lock().await?)
            .await?;
            report.deliveries += done.rows_affected();
            if (done.rows_affected() as i64) < PRUNE_EVENTS_PER_ROUND {
                break;
            }
        }
        Ok(report)
    }

    pub(super) async fn import_pruned(&self, events: &[StoredEvent]) -> Result<Vec<AppendOutcome>> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut outcomes = Vec::with_capacity(events.len());
        for e in events {
            let seq: Option<i64> = sqlx::query_scalar(
                "INSERT INTO events (source, event_id, topic, created_at, received_at,
                    enrollment_id, body, pruned_at)
                 VALUES (?, ?, ?, ?, ?, ?, '', ?)
                 ON CONFLICT (source, event_id) DO NOTHING RETURNING seq",
            )
            .bind(&e.source)
            .bind(&e.event_id)
            .bind(&e.topic)
            .bind(ts(e.created_at))
            .bind(fmt_ts(&e.received_at))
            .bind(e.enrollment_id)
            .bind(ts(e.pruned_at))
            .fetch_optional(&mut *tx)
            .await?;
            outcomes.push(
                seq.map_or(AppendOutcome::Duplicate, |seq| AppendOutcome::Stored {
                    seq,
                }),
            );
        }
        tx.commit().await?;
        drop(writer);
        // The topic index follows the log (the projector reads these back).
        self.projector.catch_up().await?;
        Ok(outcomes)
    }
}
