//! SQLite storage for alert incidents (see [`crate::store::alerts`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Sqlite;

use super::SqliteStore;
use crate::store::shared::alerts;
use crate::store::{AlertStore, Incident, Result};

#[async_trait]
impl AlertStore for SqliteStore {
    async fn record_incident(&self, incident: &Incident) -> Result<bool> {
        alerts::record_incident::<Sqlite>(&mut *self.writer.lock().await?, incident).await
    }

    async fn close_incident(
        &self,
        kind: &str,
        subject: &str,
        closed_at: DateTime<Utc>,
        recovered_id: &str,
    ) -> Result<bool> {
        alerts::close_incident::<Sqlite>(
            &mut *self.writer.lock().await?,
            kind,
            subject,
            closed_at,
            recovered_id,
        )
        .await
    }

    async fn open_incident(&self, kind: &str, subject: &str) -> Result<Option<Incident>> {
        let mut conn = self.reader.acquire().await?;
        alerts::open_incident::<Sqlite>(&mut conn, kind, subject).await
    }

    async fn list_incidents(
        &self,
        source: Option<&str>,
        open_only: bool,
        limit: u32,
    ) -> Result<Vec<Incident>> {
        let mut conn = self.reader.acquire().await?;
        alerts::list_incidents::<Sqlite>(&mut conn, source, open_only, limit).await
    }

    async fn last_received(&self, source: &str) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.reader.acquire().await?;
        alerts::last_received::<Sqlite>(&mut conn, source).await
    }
}
