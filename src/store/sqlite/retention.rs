//! Retention on SQLite: old bodies emptied, old attempts and finished
//! deliveries deleted, in short rounds beside the writer; and the import of
//! events whose bodies retention had emptied elsewhere.

use chrono::{DateTime, Utc};
use sqlx::{Connection, Sqlite};

use super::SqliteStore;
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
        let outcomes = retention::insert_pruned::<Sqlite>(&mut tx, events).await?;
        tx.commit().await?;
        drop(writer);
        // The topic index follows the log (the projector reads these back).
        self.projector.catch_up().await?;
        Ok(outcomes)
    }
}
