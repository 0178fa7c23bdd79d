//! Storage for alerts: the incidents behind `enrollhook.*` events (see
//! `crate::alerts`). The alert events themselves are ordinary events of the
//! log; this table only remembers which incidents are open, so that each is
//! raised once and recovered once, and keeps a short history to list.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Result;

/// One incident: something that broke (`kind`, e.g. `subscription.failing`)
/// about one thing (`subject`: a subscription id, a source name), since when.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: i64,
    /// The alert's topic without `enrollhook.`, e.g. `subscription.failing`.
    pub kind: String,
    pub subject: String,
    /// The source the alert belongs to (`enrollhook` when it concerns no
    /// single source: only the admin token sees those).
    pub source: String,
    pub started_at: DateTime<Utc>,
    pub opened_at: DateTime<Utc>,
    /// The envelope id of the alert event in the log.
    pub alert_id: String,
    pub summary: String,
    /// The alert event's payload.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// When it ended (None: open). Point alerts (`subscription.exhausted`)
    /// are closed when raised.
    pub closed_at: Option<DateTime<Utc>>,
    /// The envelope id of the matching `…recovered` event.
    pub recovered_id: Option<String>,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Records an incident (`id` is ignored). An open one (no `closed_at`)
    /// is refused while another of its kind and subject is open: returns
    /// whether it was recorded.
    async fn record_incident(&self, incident: &Incident) -> Result<bool>;
    /// Closes the open incident of `kind` and `subject`, naming its
    /// recovery event; returns whether one was open.
    async fn close_incident(
        &self,
        kind: &str,
        subject: &str,
        closed_at: DateTime<Utc>,
        recovered_id: &str,
    ) -> Result<bool>;
    /// The open incident of `kind` and `subject`, if any.
    async fn open_incident(&self, kind: &str, subject: &str) -> Result<Option<Incident>>;
    /// Open incidents, or the newest `limit` incidents (open or not), of one
    /// source or all; newest first.
    async fn list_incidents(
        &self,
        source: Option<&str>,
        open_only: bool,
        limit: u32,
    ) -> Result<Vec<Incident>>;
    /// When the newest event of `source` arrived (for `source.silent`).
    async fn last_received(&self, source: &str) -> Result<Option<DateTime<Utc>>>;
}
