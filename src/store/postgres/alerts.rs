//! PostgreSQL storage for alert incidents (see [`crate::store::alerts`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Postgres;

use super::PostgresStore;
use crate::store::shared::alerts;
use crate::store::{AlertStore, Incident, Result};

#[async_trait]
impl AlertStore for PostgresStore {
    async fn record_incident(&self, incident: &Incident) -> Result<bool> {
        let mut conn = self.writer().acquire().await?;
        alerts::record_incident::<Postgres>(&mut conn, incident).await
    }

    async fn close_incident(
        &self,
        kind: &str,
        subject: &str,
        closed_at: DateTime<Utc>,
        recovered_id: &str,
    ) -> Result<bool> {
        let mut conn = self.writer().acquire().await?;
        alerts::close_incident::<Postgres>(&mut conn, kind, subject, closed_at, recovered_id).await
    }

    async fn open_incident(&self, kind: &str, subject: &str) -> Result<Option<Incident>> {
        let mut conn = self.writer().acquire().await?;
        alerts::open_incident::<Postgres>(&mut conn, kind, subject).await
    }

    async fn list_incidents(
        &self,
        source: Option<&str>,
        open_only: bool,
        limit: u32,
    ) -> Result<Vec<Incident>> {
        let mut conn = self.reader().acquire().await?;
        alerts::list_incidents::<Postgres>(&mut conn, source, open_only, limit).await
    }

    async fn last_received(&self, source: &str) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.reader().acquire().await?;
        alerts::last_received::<Postgres>(&mut conn, source).await
    }
}
