//! CSV for every list of the API: asked for with `?format=csv` or
//! `Accept: text/csv`. Paged lists are streamed page by page from the store
//! (a million enrollments never sit in memory), and every text cell that a
//! spreadsheet would run as a formula is defused.

use std::borrow::Cow;
use std::future::Future;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::ApiError;
use crate::store::{Page, StoreError};

/// What a list is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// `?format=` wins; otherwise `Accept: text/csv` asks for CSV.
pub fn format(param: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    match param {
        Some("csv") => Ok(Format::Csv),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(ApiError::bad_request(format!(
            "format must be json or csv, got `{other}`"
        ))),
        None => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let csv = accept
                .split(',')
                .any(|t| t.split(';').next().is_some_and(|m| m.trim() == "text/csv"));
            Ok(if csv { Format::Csv } else { Format::Json })
        }
    }
}

/// A cell as a spreadsheet will not run it: text that begins with `=`, `+`,
/// `-`, `@`, a tab or a carriage return gets a leading `'` (OWASP's advice for
/// CSV injection). Numbers are written as numbers and never need it.
pub fn safe_cell(text: &str) -> Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{text}")),
        _ => Cow::Borrowed(text),
    }
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => safe_cell(s).into_owned(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // Lists (topics, course ids) as JSON text, defused like any text.
        Some(other) => safe_cell(&other.to_string()).into_owned(),
    }
}

/// The cells of `item` (its JSON form) in the order of `columns`.
pub fn row(columns: &[&str], item: &impl Serialize) -> Vec<String> {
    let value = serde_json::to_value(item).unwrap_or(Value::Null);
    columns.iter().map(|c| cell(value.get(*c))).collect()
}

fn write_rows<T: Serialize>(
    out: &mut csv::Writer<Vec<u8>>,
    columns: &[&str],
    items: &[T],
) -> csv::Result<()> {
    for item in items {
        out.write_record(row(columns, item))?;
    }
    Ok(())
}

fn headers(filename: &str) -> [(header::HeaderName, HeaderValue); 2] {
    let disposition = format!("attachment; filename=\"{filename}.csv\"");
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        ),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&disposition)
                .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
        ),
    ]
}

fn new_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new().from_writer(Vec::with_capacity(64 * 1024))
}

/// A whole list that is already in memory (courses, days of activity).
pub fn table<T: Serialize>(filename: &str, columns: &[&str], items: &[T]) -> Response {
    let mut out = new_writer();
    let written = out
        .write_record(columns)
        .and_then(|()| write_rows(&mut out, columns, items))
        .map_err(std::io::Error::other)
        .and_then(|()| out.into_inner().map_err(|e| e.into_error()));
    match written {
        Ok(bytes) => (headers(filename), bytes).into_response(),
        Err(e) => ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "csv",
            format!("could not write the CSV: {e}"),
        )
        .into_response(),
    }
}

/// A paged list, streamed: `first` is the page already read (so a bad filter
/// or cursor is answered 400 before anything is sent); `next(cursor)` reads
/// the page after `cursor`. With `max_rows`, stops after that many. A store
/// failure midway aborts the download (the client sees it cut, never a
/// silently short file).
pub fn paged<T, F, Fut>(
    filename: &str,
    columns: &'static [&'static str],
    first: Page<T>,
    max_rows: Option<u64>,
    mut next: F,
) -> Response
where
    T: Serialize + Send + 'static,
    F: FnMut(String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T>, StoreError>> + Send,
{
    // Two chunks of room: the store is read only as fast as the client takes them.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut page = first;
        let mut left = max_rows.unwrap_or(u64::MAX);
        let mut header = Some(columns);
        loop {
            if left < page.items.len() as u64 {
                page.items.truncate(left as usize);
                page.next_cursor = None;
            }
            left -= page.items.len() as u64;
            // One writer per page: its buffer is the chunk sent.
            let mut out = new_writer();
            let written = match header.take() {
                Some(h) => out.write_record(h),
                None => Ok(()),
            }
            .and_then(|()| write_rows(&mut out, columns, &page.items))
            .map_err(std::io::Error::other)
            .and_then(|()| out.into_inner().map_err(|e| e.into_error()));
            let chunk = match written {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return; // the client went away
            }
            let Some(cursor) = page.next_cursor.take().filter(|_| left > 0) else {
                return;
            };
            page = match next(cursor).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "CSV export stopped: the store failed");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (headers(filename), Body::from_stream(chunks)).into_response()
}

/// Columns of each list, in the order of its JSON fields.
pub mod columns {
    pub const ENROLLMENTS: &[&str] = &[
        "source",
        "enrollment_id",
        "status",
        "progress",
        "course_id",
        "course_name",
        "user_id",
        "email",
        "first_name",
        "last_name",
        "trial",
        "completed",
        "activated_at",
        "started_at",
        "completed_at",
        "expiry_date",
        "created_at",
        "updated_at",
        "days_to_complete",
        "event_count",
    ];
    pub const COURSES: &[&str] = &[
        "source",
        "course_id",
        "name",
        "enrollments",
        "active",
        "trial",
        "completed",
        "expired",
        "completion_rate",
        "average_progress",
        "median_days_to_complete",
        "lessons_seen",
        "stalled",
    ];
    pub const ACTIVITY: &[&str] = &["date", "enrolled", "completed"];
    pub const QUIZZES: &[&str] = &[
        "source",
        "quiz_id",
        "quiz_name",
        "course_id",
        "students",
        "attempts",
        "average_best_grade",
        "median_best_grade",
    ];
    /// A stalled student: the enrollment, then where and since when it stopped.
    pub fn stalled() -> Vec<&'static str> {
        let mut columns = ENROLLMENTS.to_vec();
        columns.extend([
            "lessons_completed",
            "last_lesson_id",
            "last_lesson_name",
            "last_lesson_at",
            "last_activity_at",
            "days_inactive",
        ]);
        columns
    }
    /// The body stays out: the JSON list and `/raw` give it.
    pub const EVENTS: &[&str] = &[
        "seq",
        "source",
        "event_id",
        "topic",
        "created_at",
        "received_at",
        "enrollment_id",
        "pruned_at",
        "position",
    ];
    pub const QUARANTINE: &[&str] = &[
        "id",
        "source",
        "received_at",
        "reason_code",
        "reason",
        "body_size",
        "truncated",
        "resolved_at",
        "resolution",
    ];
    pub const ATTEMPTS: &[&str] = &[
        "id",
        "outbox_id",
        "subscription_id",
        "event_seq",
        "attempt",
        "attempted_at",
        "status",
        "latency_ms",
        "error",
        "response",
    ];
    pub const DELIVERIES: &[&str] = &[
        "id",
        "subscription_id",
        "event_seq",
        "source",
        "event_id",
        "topic",
        "state",
        "attempts",
        "next_attempt_at",
        "last_status",
        "last_error",
        "created_at",
        "finished_at",
    ];
    /// Never the secret.
    pub const SUBSCRIPTIONS: &[&str] = &[
        "id",
        "url",
        "topics",
        "course_ids",
        "sources",
        "filter",
        "template",
        "enabled",
        "disabled_reason",
        "ordered",
        "description",
        "failing_since",
        "created_at",
        "updated_at",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formula_cells_are_defused_and_others_kept() {
        for text in ["=HYPERLINK(\"x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(safe_cell(text), format!("'{text}"));
        }
        for text in ["", "plain", "a=b", "1-2", "'quoted"] {
            assert_eq!(safe_cell(text), text);
        }
    }

    #[test]
    fn rows_follow_the_columns_and_keep_numbers_as_numbers() {
        let item = json!({"a": "=cmd", "b": -1.5, "c": null, "d": ["x"], "e": true});
        assert_eq!(
            row(&["e", "d", "c", "b", "a", "missing"], &item),
            vec!["true", "[\"x\"]", "", "-1.5", "'=cmd", ""]
        );
    }

    #[test]
    fn format_comes_from_the_parameter_then_the_accept_header() {
        let mut h = HeaderMap::new();
        assert_eq!(format(None, &h).unwrap(), Format::Json);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/csv; q=1, */*"),
        );
        assert_eq!(format(None, &h).unwrap(), Format::Csv);
        assert_eq!(format(Some("json"), &h).unwrap(), Format::Json);
        assert_eq!(format(Some("csv"), &HeaderMap::new()).unwrap(), Format::Csv);
        assert!(format(Some("xlsx"), &h).is_err());
    }
}
