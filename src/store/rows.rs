//! Row mappers written once for both backends: which columns make which of
//! our types. How each kind of column is read is the backend's ([`Cols`], in
//! its codec). Adding a column to a type means changing its column list and
//! its mapper here (and a migration per backend).

use std::collections::BTreeMap;

use crate::forward::subscription::{EventFilter, Subscription};
use crate::projection::{Enrollment, Version};
use crate::store::bodies;
use crate::store::dialect::Cols;
use crate::store::{
    DeliveryAttempt, DeliveryState, Health, OutboxEntry, QuarantineRecord, Result, StoreError,
    StoredEvent,
};

pub(crate) const ENROLLMENT_COLUMNS: &str = "source, enrollment_id, user_id, email, first_name, last_name, \
    course_id, course_name, progress, trial, completed, activated_at, started_at, completed_at, \
    expiry_date, created_at, updated_at, event_count, v_updated_at, v_created_at, v_event_id";

pub(crate) const SUBSCRIPTION_COLUMNS: &str = "id, url, topics, course_ids, sources, secret, previous_secret, \
    previous_secret_until, enabled, disabled_reason, ordered, headers, description, failing_since, \
    created_at, updated_at, subject, exchange, routing_key, stream, maxlen, filter, template";

pub(crate) fn enrollment_from_row(row: &impl Cols) -> Result<Enrollment> {
    Ok(Enrollment {
        source: row.text("source")?,
        enrollment_id: row.int("enrollment_id")?,
        user_id: row.opt_int("user_id")?,
        email: row.opt_text("email")?,
        first_name: row.opt_text("first_name")?,
        last_name: row.opt_text("last_name")?,
        course_id: row.opt_int("course_id")?,
        course_name: row.opt_text("course_name")?,
        progress: row.float("progress")?,
        trial: row.flag("trial")?,
        completed: row.flag("completed")?,
        activated_at: row.opt_time("activated_at")?,
        started_at: row.opt_time("started_at")?,
        completed_at: row.opt_time("completed_at")?,
        expiry_date: row.opt_time("expiry_date")?,
        created_at: row.opt_time("created_at")?,
        updated_at: row.opt_time("updated_at")?,
        event_count: row.int("event_count")?,
        version: Version {
            updated_at: row.opt_time("v_updated_at")?,
            created_at: row.opt_time("v_created_at")?,
            event_id: row.text("v_event_id")?,
        },
    })
}

/// A row of the backend's `EVENT_COLUMNS`.
pub(crate) fn event_from_row(row: &impl Cols) -> Result<StoredEvent> {
    let seq = row.int("seq")?;
    let (source, event_id, topic) = (
        row.text("source")?,
        row.text("event_id")?,
        row.text("topic")?,
    );
    let body = log_body(row, &source, &event_id, &topic)?;
    Ok(StoredEvent {
        seq,
        source,
        event_id,
        topic,
        created_at: row.opt_time("created_at")?,
        received_at: row.time("received_at")?,
        enrollment_id: row.opt_int("enrollment_id")?,
        body,
        pruned_at: row.opt_time("pruned_at")?,
        id_taken: row.flag("id_taken")?,
        position: row.event_position(seq)?,
    })
}

/// The body of an event row as received, compressed or not (see
/// [`bodies`]); the row must have `body`, `body_zstd` and `body_dict`.
pub(crate) fn log_body(
    row: &impl Cols,
    source: &str,
    event_id: &str,
    topic: &str,
) -> Result<String> {
    bodies::decode(
        &|| format!("event `{event_id}` ({topic}) of source `{source}`"),
        row.text("body")?,
        row.opt_bytes("body_zstd")?,
        row.opt_int("body_dict")?,
    )
}

pub(crate) fn quarantine_from_row(row: &impl Cols) -> Result<QuarantineRecord> {
    let body = row.bytes("body")?;
    let body_size = row.int("body_size")?;
    Ok(QuarantineRecord {
        id: row.int("id")?,
        source: row.text("source")?,
        received_at: row.time("received_at")?,
        reason_code: row.text("reason_code")?,
        reason: row.text("reason")?,
        headers: row.json("headers", "quarantine headers")?,
        truncated: (body.len() as i64) < body_size,
        body,
        body_size,
        resolved_at: row.opt_time("resolved_at")?,
        resolution: row.opt_text("resolution")?,
    })
}

pub(crate) fn subscription_from_row(row: &impl Cols) -> Result<Subscription> {
    Ok(Subscription {
        id: row.text("id")?,
        url: row.text("url")?,
        topics: row.json("topics", "subscriptions.topics")?,
        course_ids: row.opt_json("course_ids", "subscriptions.course_ids")?,
        sources: row.opt_json("sources", "subscriptions.sources")?,
        secret: row.text("secret")?,
        previous_secret: row.opt_text("previous_secret")?,
        previous_secret_until: row.opt_time("previous_secret_until")?,
        enabled: row.flag("enabled")?,
        disabled_reason: row.opt_text("disabled_reason")?,
        ordered: row.flag("ordered")?,
        headers: row.json::<BTreeMap<String, String>>("headers", "subscriptions.headers")?,
        filter: row
            .opt_json::<serde_json::Value>("filter", "subscriptions.filter")?
            .map(EventFilter::new)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("subscriptions.filter: {e}")))?,
        template: row.opt_json("template", "subscriptions.template")?,
        description: row.opt_text("description")?,
        failing_since: row.opt_time("failing_since")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        subject: row.opt_text("subject")?,
        exchange: row.opt_text("exchange")?,
        routing_key: row.opt_text("routing_key")?,
        stream: row.opt_text("stream")?,
        maxlen: row.opt_int("maxlen")?,
    })
}

pub(crate) fn attempt_from_row(row: &impl Cols) -> Result<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        id: row.int("id")?,
        outbox_id: row.int("outbox_id")?,
        subscription_id: row.text("subscription_id")?,
        event_seq: row.int("event_seq")?,
        attempt: row.int4("attempt")?,
        attempted_at: row.time("attempted_at")?,
        status: row.opt_int4("status")?,
        latency_ms: row.float("latency_ms")?,
        error: row.opt_text("error")?,
        response: row.opt_text("response")?,
    })
}

/// A row of `o.*` and its event's source, event id and topic.
pub(crate) fn outbox_from_row(row: &impl Cols) -> Result<OutboxEntry> {
    let state = row.text("state")?;
    let pending = state == "pending";
    Ok(OutboxEntry {
        id: row.int("id")?,
        subscription_id: row.text("subscription_id")?,
        event_seq: row.int("event_seq")?,
        source: row.text("source")?,
        event_id: row.text("event_id")?,
        topic: row.text("topic")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("outbox state `{state}`")))?,
        attempts: row.int4("attempts")?,
        next_attempt_at: if pending {
            Some(row.time("next_attempt_at")?)
        } else {
            None
        },
        last_status: row.opt_int4("last_status")?,
        last_error: row.opt_text("last_error")?,
        created_at: row.time("created_at")?,
        finished_at: row.opt_time("finished_at")?,
    })
}

/// A row of `SELECT id, enabled, failing_since FROM subscriptions`.
pub(crate) fn health_from_row(row: &impl Cols) -> Result<(String, Health)> {
    let health = Health {
        enabled: row.flag("enabled")?,
        failing_since: row.opt_time("failing_since")?,
    };
    Ok((row.text("id")?, health))
}
