//! How SQLite stores our types: timestamps as fixed-width text, the column
//! lists every query reads, and one row mapper per type. Adding a column to a
//! type means changing its list and its mapper here (and a migration).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::forward::subscription::Subscription;
use crate::projection::{Enrollment, Version};
use crate::store::{
    DeliveryAttempt, DeliveryState, OutboxEntry, QuarantineRecord, Result, StoreError, StoredEvent,
    encode_cursor,
};

/// Timestamps are stored as fixed-width RFC 3339 text in UTC, so text order is time order.
pub(super) fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| fmt_ts(&t))
}

pub(super) fn fmt_ts(t: &DateTime<Utc>) -> String {
    // `%Y-%m-%dT%H:%M:%S%.6fZ` through chrono's RFC 3339 writer, which skips
    // parsing a format string on every call (3 % of the batch writer's time).
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(super) fn parse_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>> {
    s.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| StoreError::Corrupt(format!("bad timestamp `{s}` in database")))
    })
    .transpose()
}

pub(super) fn req_ts(s: String) -> Result<DateTime<Utc>> {
    parse_ts(Some(s)).map(|t| t.expect("Some in, Some out"))
}

pub(super) const ENROLLMENT_COLUMNS: &str = "source, enrollment_id, user_id, email, first_name, last_name, \
    course_id, course_name, progress, trial, completed, activated_at, started_at, completed_at, \
    expiry_date, created_at, updated_at, event_count, v_updated_at, v_created_at, v_event_id";

pub(super) const EVENT_COLUMNS: &str =
    "seq, source, event_id, topic, created_at, received_at, enrollment_id, body, pruned_at";

pub(super) fn enrollment_from_row(row: &SqliteRow) -> Result<Enrollment> {
    Ok(Enrollment {
        source: row.try_get("source")?,
        enrollment_id: row.try_get("enrollment_id")?,
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        course_id: row.try_get("course_id")?,
        course_name: row.try_get("course_name")?,
        progress: row.try_get("progress")?,
        trial: row.try_get("trial")?,
        completed: row.try_get("completed")?,
        activated_at: parse_ts(row.try_get("activated_at")?)?,
        started_at: parse_ts(row.try_get("started_at")?)?,
        completed_at: parse_ts(row.try_get("completed_at")?)?,
        expiry_date: parse_ts(row.try_get("expiry_date")?)?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        updated_at: parse_ts(row.try_get("updated_at")?)?,
        event_count: row.try_get("event_count")?,
        version: Version {
            updated_at: parse_ts(row.try_get("v_updated_at")?)?,
            created_at: parse_ts(row.try_get("v_created_at")?)?,
            event_id: row.try_get("v_event_id")?,
        },
    })
}

pub(super) fn event_from_row(row: &SqliteRow) -> Result<StoredEvent> {
    let seq: i64 = row.try_get("seq")?;
    Ok(StoredEvent {
        seq,
        source: row.try_get("source")?,
        event_id: row.try_get("event_id")?,
        topic: row.try_get("topic")?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        received_at: req_ts(row.try_get("received_at")?)?,
        enrollment_id: row.try_get("enrollment_id")?,
        body: row.try_get("body")?,
        pruned_at: parse_ts(row.try_get("pruned_at")?)?,
        position: encode_cursor(&[&seq.to_string()]),
    })
}

pub(super) fn quarantine_from_row(row: &SqliteRow) -> Result<QuarantineRecord> {
    let headers: String = row.try_get("headers")?;
    let body: Vec<u8> = row.try_get("body")?;
    let body_size: i64 = row.try_get("body_size")?;
    Ok(QuarantineRecord {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        received_at: req_ts(row.try_get("received_at")?)?,
        reason_code: row.try_get("reason_code")?,
        reason: row.try_get("reason")?,
        headers: serde_json::from_str(&headers)
            .map_err(|e| StoreError::Corrupt(format!("quarantine headers: {e}")))?,
        truncated: (body.len() as i64) < body_size,
        body,
        body_size,
        resolved_at: parse_ts(row.try_get("resolved_at")?)?,
        resolution: row.try_get("resolution")?,
    })
}

/// The columns an enrollment row is written with, in bind order.
pub(super) const ENROLLMENT_WRITE_COLUMNS: &str = enrollment_write_columns!();

/// Turns an insert of [`ENROLLMENT_WRITE_COLUMNS`] into an upsert.
pub(super) const ENROLLMENT_UPSERT_ON_CONFLICT: &str = enrollment_upsert_on_conflict!();

pub(super) const SUBSCRIPTION_COLUMNS: &str = "id, url, topics, course_ids, sources, secret, previous_secret, \
    previous_secret_until, enabled, disabled_reason, ordered, headers, description, failing_since, \
    created_at, updated_at";

fn json_col<T: serde::de::DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("subscriptions.{col}: {e}")))
}

fn opt_json_col<T: serde::de::DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<Option<T>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("subscriptions.{col}: {e}")))
}

pub(super) fn subscription_from_row(row: &SqliteRow) -> Result<Subscription> {
    Ok(Subscription {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        topics: json_col(row, "topics")?,
        course_ids: opt_json_col(row, "course_ids")?,
        sources: opt_json_col(row, "sources")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: parse_ts(row.try_get("previous_secret_until")?)?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        ordered: row.try_get("ordered")?,
        headers: json_col::<BTreeMap<String, String>>(row, "headers")?,
        description: row.try_get("description")?,
        failing_since: parse_ts(row.try_get("failing_since")?)?,
        created_at: req_ts(row.try_get("created_at")?)?,
        updated_at: req_ts(row.try_get("updated_at")?)?,
    })
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

pub(super) fn attempt_from_row(row: &SqliteRow) -> Result<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        id: row.try_get("id")?,
        outbox_id: row.try_get("outbox_id")?,
        subscription_id: row.try_get("subscription_id")?,
        event_seq: row.try_get("event_seq")?,
        attempt: row.try_get("attempt")?,
        attempted_at: req_ts(row.try_get("attempted_at")?)?,
        status: row.try_get("status")?,
        latency_ms: row.try_get("latency_ms")?,
        error: row.try_get("error")?,
        response: row.try_get("response")?,
    })
}

pub(super) fn outbox_from_row(row: &SqliteRow) -> Result<OutboxEntry> {
    let state: String = row.try_get("state")?;
    let finished: Option<String> = row.try_get("finished_at")?;
    let next: String = row.try_get("next_attempt_at")?;
    Ok(OutboxEntry {
        id: row.try_get("id")?,
        subscription_id: row.try_get("subscription_id")?,
        event_seq: row.try_get("event_seq")?,
        source: row.try_get("source")?,
        event_id: row.try_get("event_id")?,
        topic: row.try_get("topic")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("outbox state `{state}`")))?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: if state == "pending" {
            parse_ts(Some(next))?
        } else {
            None
        },
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: req_ts(row.try_get("created_at")?)?,
        finished_at: parse_ts(finished)?,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_keep_their_fixed_width_format() {
        for (secs, nanos) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (253_402_300_799, 999_999_999),
        ] {
            let t = Utc.timestamp_opt(secs, nanos).unwrap();
            assert_eq!(fmt_ts(&t), t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
    }
}
