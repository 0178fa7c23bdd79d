//! How stored things are shown: the JSON of the API and the rows of the CLI.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::projection::{Enrollment, Status};
use crate::store::{AppendOutcome, QuarantineRecord, StoredEvent};

/// One enrollment as the API and CLI show it: flat, with its derived status.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentView {
    pub source: String,
    pub enrollment_id: i64,
    pub status: Status,
    pub progress: f64,
    pub course_id: Option<i64>,
    pub course_name: Option<String>,
    pub user_id: Option<i64>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub trial: bool,
    pub completed: bool,
    pub activated_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub expiry_date: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub days_to_complete: Option<f64>,
    pub event_count: i64,
}

pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn opt(t: Option<DateTime<Utc>>) -> Option<String> {
    t.as_ref().map(rfc3339)
}

impl EnrollmentView {
    pub fn new(e: &Enrollment, now: DateTime<Utc>) -> EnrollmentView {
        EnrollmentView {
            source: e.source.clone(),
            enrollment_id: e.enrollment_id,
            status: e.status(now),
            progress: e.progress,
            course_id: e.course_id,
            course_name: e.course_name.clone(),
            user_id: e.user_id,
            email: e.email.clone(),
            first_name: e.first_name.clone(),
            last_name: e.last_name.clone(),
            trial: e.trial,
            completed: e.completed,
            activated_at: opt(e.activated_at),
            started_at: opt(e.started_at),
            completed_at: opt(e.completed_at),
            expiry_date: opt(e.expiry_date),
            created_at: opt(e.created_at),
            updated_at: opt(e.updated_at),
            days_to_complete: e.days_to_complete().map(|d| (d * 1000.0).round() / 1000.0),
            event_count: e.event_count,
        }
    }
}

/// An event with its original body embedded as JSON.
pub fn event_view(e: &StoredEvent) -> Value {
    let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::String(e.body.clone()));
    json!({
        "seq": e.seq,
        "source": e.source,
        "event_id": e.event_id,
        "topic": e.topic,
        "created_at": opt(e.created_at),
        "received_at": rfc3339(&e.received_at),
        "enrollment_id": e.enrollment_id,
        "body": body,
    })
}

/// A quarantined delivery; with `with_body` the raw body too (as text when it
/// is UTF-8, as base64 otherwise).
pub fn quarantine_view(r: &QuarantineRecord, with_body: bool) -> Value {
    let mut v = json!({
        "id": r.id,
        "source": r.source,
        "received_at": rfc3339(&r.received_at),
        "reason_code": r.reason_code,
        "reason": r.reason,
        "headers": r.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "body_size": r.body_size,
        "resolved_at": opt(r.resolved_at),
        "resolution": r.resolution,
    });
    if with_body {
        let (body, encoding) = match std::str::from_utf8(&r.body) {
            Ok(text) => (text.to_owned(), "utf-8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&r.body),
                "base64",
            ),
        };
        v["body"] = Value::String(body);
        v["body_encoding"] = Value::String(encoding.into());
    }
    v
}

pub fn admitted_resolution(event_id: &str, outcome: AppendOutcome) -> String {
    match outcome {
        AppendOutcome::Stored { .. } => format!("admitted as event {event_id}"),
        AppendOutcome::Duplicate => format!("event {event_id} was already stored"),
    }
}
