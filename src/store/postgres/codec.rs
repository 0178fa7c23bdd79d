//! How PostgreSQL stores our types: the column lists every query reads and
//! one row mapper per type. Adding a column to a type means changing its
//! list and its mapper here (and a migration).

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use crate::forward::subscription::Subscription;
use crate::projection::{Enrollment, Version};
use crate::store::{
    DeliveryAttempt, DeliveryState, OutboxEntry, QuarantineRecord, Result, StoreError, StoredEvent,
    encode_cursor,
};

/// PostgreSQL keeps microseconds and rounds; we truncate, as the SQLite store does.
pub(super) fn us(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

pub(super) fn us_opt(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.map(us)
}

pub(super) const ENROLLMENT_COLUMNS: &str = "source, enrollment_id, user_id, email, first_name, last_name, \
    course_id, course_name, progress, trial, completed, activated_at, started_at, completed_at, \
    expiry_date, created_at, updated_at, event_count, v_updated_at, v_created_at, v_event_id";

pub(super) const EVENT_COLUMNS: &str = "seq, source, event_id, topic, created_at, received_at, enrollment_id, body, pruned_at, \
     txid::text AS txid_text";

pub(super) fn enrollment_from_row(row: &PgRow) -> Result<Enrollment> {
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
        activated_at: row.try_get("activated_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        expiry_date: row.try_get("expiry_date")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        event_count: row.try_get("event_count")?,
        version: Version {
            updated_at: row.try_get("v_updated_at")?,
            created_at: row.try_get("v_created_at")?,
            event_id: row.try_get("v_event_id")?,
        },
    })
}

pub(super) fn event_from_row(row: &PgRow) -> Result<StoredEvent> {
    let seq: i64 = row.try_get("seq")?;
    Ok(StoredEvent {
        seq,
        source: row.try_get("source")?,
        event_id: row.try_get("event_id")?,
        topic: row.try_get("topic")?,
        created_at: row.try_get("created_at")?,
        received_at: row.try_get("received_at")?,
        enrollment_id: row.try_get("enrollment_id")?,
        body: row.try_get("body")?,
        pruned_at: row.try_get("pruned_at")?,
        position: encode_cursor(&[&row.try_get::<String, _>("txid_text")?, &seq.to_string()]),
    })
}

pub(super) fn quarantine_from_row(row: &PgRow) -> Result<QuarantineRecord> {
    let headers: sqlx::types::Json<Vec<(String, String)>> = row.try_get("headers")?;
    let body: Vec<u8> = row.try_get("body")?;
    let body_size: i64 = row.try_get("body_size")?;
    Ok(QuarantineRecord {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        received_at: row.try_get("received_at")?,
        reason_code: row.try_get("reason_code")?,
        reason: row.try_get("reason")?,
        headers: headers.0,
        truncated: (body.len() as i64) < body_size,
        body,
        body_size,
        resolved_at: row.try_get("resolved_at")?,
        resolution: row.try_get("resolution")?,
    })
}

pub(super) const SUBSCRIPTION_COLUMNS: &str = "id, url, topics, course_ids, sources, secret, previous_secret, \
    previous_secret_until, enabled, disabled_reason, ordered, headers, description, failing_since, \
    created_at, updated_at";

pub(super) fn subscription_from_row(row: &PgRow) -> Result<Subscription> {
    let topics: Json<Vec<String>> = row.try_get("topics")?;
    let course_ids: Option<Json<Vec<i64>>> = row.try_get("course_ids")?;
    let sources: Option<Json<Vec<String>>> = row.try_get("sources")?;
    let headers: Json<BTreeMap<String, String>> = row.try_get("headers")?;
    Ok(Subscription {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        topics: topics.0,
        course_ids: course_ids.map(|j| j.0),
        sources: sources.map(|j| j.0),
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row.try_get("previous_secret_until")?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        ordered: row.try_get("ordered")?,
        headers: headers.0,
        description: row.try_get("description")?,
        failing_since: row.try_get("failing_since")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn attempt_from_row(row: &PgRow) -> Result<DeliveryAttempt> {
    let attempt: i32 = row.try_get("attempt")?;
    let status: Option<i32> = row.try_get("status")?;
    Ok(DeliveryAttempt {
        id: row.try_get("id")?,
        outbox_id: row.try_get("outbox_id")?,
        subscription_id: row.try_get("subscription_id")?,
        event_seq: row.try_get("event_seq")?,
        attempt: attempt.into(),
        attempted_at: row.try_get("attempted_at")?,
        status: status.map(i64::from),
        latency_ms: row.try_get("latency_ms")?,
        error: row.try_get("error")?,
        response: row.try_get("response")?,
    })
}

pub(super) fn outbox_from_row(row: &PgRow) -> Result<OutboxEntry> {
    let state: String = row.try_get("state")?;
    let attempts: i32 = row.try_get("attempts")?;
    let last_status: Option<i32> = row.try_get("last_status")?;
    let next: DateTime<Utc> = row.try_get("next_attempt_at")?;
    Ok(OutboxEntry {
        id: row.try_get("id")?,
        subscription_id: row.try_get("subscription_id")?,
        event_seq: row.try_get("event_seq")?,
        source: row.try_get("source")?,
        event_id: row.try_get("event_id")?,
        topic: row.try_get("topic")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("outbox state `{state}`")))?,
        attempts: attempts.into(),
        next_attempt_at: (state == "pending").then_some(next),
        last_status: last_status.map(i64::from),
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}
