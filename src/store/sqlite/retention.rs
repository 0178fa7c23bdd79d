//! Retention on SQLite: old bodies emptied, old attempts and finished
//! deliveries deleted, in short rounds beside the writer; and the import of
//! events whose bodies retention had emptied elsewhere.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, QueryBuilder, Sqlite};

use super::SqliteStore;
use crate::store::dialect::{Cols, Dialect};
use crate::store::shared::retention;
use crate::store::*;

impl SqliteStore {
    pub(super) async fn prune(&self, cutoff: DateTime<Utc>) -> Result<PruneReport> {
        // The write lock for one round at a time: deliveries go between rounds.
        let writer = &self.writer;
        retention::prune::<Sqlite, _, _>(cutoff, move |mut q| async move {
            Ok(q.build()
                .execute(&mut *writer.lock().await?)
                .await?
                .rows_affected())
        })
        .await
    }

    pub(super) async fn import_pruned(&self, events: &[StoredEvent]) -> Result<Vec<AppendOutcome>> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let outcomes = insert_pruned(&mut tx, events).await?;
        tx.commit().await?;
        drop(writer);
        // The topic index follows the log (the projector reads these back).
        self.projector.catch_up().await?;
        Ok(outcomes)
    }
}

/// Inserts events whose bodies retention emptied elsewhere (see
/// [`Store::append_pruned`]); `conn` is a transaction the caller commits.
async fn insert_pruned(
    conn: &mut SqliteConnection,
    events: &[StoredEvent],
) -> Result<Vec<AppendOutcome>> {
    let mut outcomes = Vec::with_capacity(events.len());
    for e in events {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (source, event_id, topic, created_at, received_at,
                enrollment_id, body, pruned_at, id_taken) VALUES (",
        );
        q.separated(", ")
            .push_bind(e.source.clone())
            .push_bind(e.event_id.clone())
            .push_bind(e.topic.clone())
            .push_bind(Sqlite::opt_time(e.created_at))
            .push_bind(Sqlite::time(e.received_at))
            .push_bind(e.enrollment_id)
            .push_unseparated(", ''")
            .push_bind(Sqlite::opt_time(e.pruned_at));
        // As in the batch writers: an id an earlier event already has is taken.
        q.push(", EXISTS (SELECT 1 FROM events WHERE source = ")
            .push_bind(e.source.clone())
            .push(" AND event_id = ")
            .push_bind(e.event_id.clone())
            .push(")");
        q.push(") ON CONFLICT (source, event_id, topic) DO NOTHING RETURNING seq");
        let row = q.build().fetch_optional(&mut *conn).await?;
        outcomes.push(match row {
            Some(row) => AppendOutcome::Stored {
                seq: row.int("seq")?,
            },
            None => AppendOutcome::Duplicate,
        });
    }
    Ok(outcomes)
}
