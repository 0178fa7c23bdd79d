//! What a scheduled reconciliation keeps of each run (see
//! `maintenance::reconcile`): one row per source and run, its report as JSON,
//! and the point the next run resumes from.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One finished run for one source.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReconciliationRecord {
    pub id: i64,
    pub source: String,
    #[schema(value_type = String)]
    pub started_at: DateTime<Utc>,
    #[schema(value_type = String)]
    pub finished_at: DateTime<Utc>,
    /// Where the next run starts (`query[updated_after]`); None when this run failed.
    #[schema(value_type = Option<String>)]
    pub resume_from: Option<DateTime<Utc>>,
    /// What the run found: `read`, `stored`, `reconciliation` (per course and in
    /// total), `webhooks` (the `webhooks check` of the source's URL, when known).
    #[schema(value_type = Object)]
    pub report: serde_json::Value,
    /// Why the run stopped, when it failed (what it stored before stays stored).
    pub error: Option<String>,
}

/// A run to record (the id is given by the database).
#[derive(Debug, Clone)]
pub struct NewReconciliation {
    pub source: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub resume_from: Option<DateTime<Utc>>,
    pub report: serde_json::Value,
    pub error: Option<String>,
}
