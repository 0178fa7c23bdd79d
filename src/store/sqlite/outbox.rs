//! Forwarding's writes to the SQLite outbox, run by the log writer thread
//! ([`super::batch`]) inside the transaction it shares with ingest.
//!
//! A claim or a recorded batch of attempts used to be a transaction of its
//! own on the store's sqlx connection: its own fsync, a few sqlx hand-offs,
//! and the write lock held meanwhile, so every group-commit batch of ingest
//! that came in behind it waited (ingest p50 6.8 ms with one subscription
//! against 0.8 ms without, at 3,000 deliveries/s). As jobs of the writer
//! thread they run back to back with the waiting batches in one transaction
//! and one fsync.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::codec::{fmt_ts, parse_ts, ts};
use crate::store::shared::forward::subscription_ids;
use crate::store::{AttemptRules, ClaimRoom, FinishedAttempt, Health, Result, StoreError};

/// A claimed outbox row: (id, subscription id, event seq, attempts made,
/// the delivery's trace context when it was traced).
pub(super) type ClaimedRow = (i64, String, i64, i64, Option<String>);

/// Leases due deliveries (see `ForwardStore::claim_deliveries`): due, not
/// leased (or the lease expired: a worker died), subscription enabled, and —
/// for ordered subscriptions — no older pending delivery of the same
/// enrollment. Each enabled subscription offers its most due rows, up to its
/// room (one probe of `outbox_due_by_subscription` each); of those, the most
/// due overall are leased, up to the claim's room.
pub(super) fn claim(
    conn: &Connection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    room: &ClaimRoom,
) -> rusqlite::Result<Vec<ClaimedRow>> {
    let now = fmt_ts(&now);
    let subscriptions: Vec<(String, bool)> = conn
        .prepare_cached("SELECT id, ordered FROM subscriptions WHERE enabled = 1")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut due = conn.prepare_cached(
        "SELECT o.id, o.next_attempt_at FROM outbox AS o INDEXED BY outbox_due_by_subscription
         WHERE o.subscription_id = ?1 AND o.state = 'pending' AND o.next_attempt_at <= ?2
           AND (o.lease_until IS NULL OR o.lease_until < ?2)
           AND (?3 = 0 OR o.order_key IS NULL OR NOT EXISTS (
                 SELECT 1 FROM outbox AS p
                 WHERE p.subscription_id = o.subscription_id AND p.order_key = o.order_key
                   AND p.state = 'pending' AND p.id < o.id))
         ORDER BY o.next_attempt_at, o.id
         LIMIT ?4",
    )?;
    // (due at, id): RFC 3339 UTC text with fixed digits sorts as time.
    let mut offered: Vec<(String, i64)> = Vec::new();
    for (subscription, ordered) in &subscriptions {
        let limit = room.of(subscription);
        if limit == 0 {
            continue;
        }
        let rows = due.query_map(params![subscription, now, ordered, i64::from(limit)], |r| {
            Ok((r.get::<_, String>(1)?, r.get::<_, i64>(0)?))
        })?;
        for row in rows {
            offered.push(row?);
        }
    }
    offered.sort_unstable();
    offered.truncate(room.total as usize);
    if offered.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for the claim's rows (their ids as one JSON array), not one each.
    let ids = serde_json::to_string(&offered.iter().map(|(_, id)| *id).collect::<Vec<i64>>())
        .expect("integers serialize");
    let mut lease = conn.prepare_cached(
        "UPDATE outbox SET lease_until = ?1 WHERE id IN (SELECT value FROM json_each(?2))
         RETURNING id, subscription_id, event_seq, attempts, traceparent",
    )?;
    let rows = lease.query_map(params![fmt_ts(&lease_until), ids], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    rows.collect()
}

/// Marks claimed deliveries whose event was pruned from the log dead.
pub(super) fn event_gone(
    conn: &Connection,
    outbox_ids: &[i64],
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    let mut gone = conn.prepare_cached(
        "UPDATE outbox SET state = 'dead', finished_at = ?2,
            last_error = 'the event is no longer in the log (pruned by retention)'
         WHERE id = ?1",
    )?;
    let now = fmt_ts(&now);
    for id in outbox_ids {
        gone.execute(params![id, now])?;
    }
    Ok(())
}

/// What a batch of finished attempts needs from the writer thread: the
/// attempts, and the rules that decide what they leave behind (the health
/// rules read the subscriptions' stored health inside the transaction).
pub(super) struct Finish {
    pub done: Vec<FinishedAttempt>,
    pub rules: Arc<dyn AttemptRules>,
}

/// Records the attempts, moves their outbox rows on, and writes the health
/// changes the rules decide. Returns the ids of the subscriptions it
/// disabled.
pub(super) fn finish(conn: &Connection, f: &Finish) -> Result<Vec<String>> {
    let sql = |e: rusqlite::Error| StoreError::Write(e.to_string());
    let mut record = conn
        .prepare_cached(
            "INSERT INTO delivery_attempts (outbox_id, subscription_id, event_seq, attempt,
                attempted_at, status, latency_ms, error, response)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(sql)?;
    // Only a row still leased and pending: a replay or a second worker may
    // have moved it on meanwhile.
    let mut advance = conn
        .prepare_cached(
            "UPDATE outbox SET state = ?2, attempts = ?3, next_attempt_at = ?4, lease_until = NULL,
                last_status = ?5, last_error = ?6, finished_at = ?7
             WHERE id = ?1 AND state = 'pending' AND lease_until IS NOT NULL",
        )
        .map_err(sql)?;
    for a in &f.done {
        let status = a.status.map(i64::from);
        record
            .execute(params![
                a.outbox_id,
                a.subscription_id,
                a.event_seq,
                i64::from(a.attempt),
                fmt_ts(&a.attempted_at),
                status,
                a.latency_ms,
                a.error,
                a.response,
            ])
            .map_err(sql)?;
        let change = f.rules.outbox_change(a);
        advance
            .execute(params![
                a.outbox_id,
                change.state.as_str(),
                i64::from(a.attempt),
                fmt_ts(&change.next_attempt_at),
                status,
                change.error,
                ts(change.finished_at),
            ])
            .map_err(sql)?;
    }

    let mut read_health = conn
        .prepare_cached("SELECT enabled, failing_since FROM subscriptions WHERE id = ?1")
        .map_err(sql)?;
    let mut stored = HashMap::new();
    for id in subscription_ids(&f.done) {
        let row: Option<(bool, Option<String>)> = read_health
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(sql)?;
        if let Some((enabled, failing_since)) = row {
            let failing_since = parse_ts(failing_since)?;
            stored.insert(
                id.to_owned(),
                Health {
                    enabled,
                    failing_since,
                },
            );
        }
    }

    let mut write_health = conn
        .prepare_cached(
            "UPDATE subscriptions SET failing_since = ?2,
                enabled = CASE WHEN ?3 IS NULL THEN enabled ELSE 0 END,
                disabled_reason = COALESCE(?3, disabled_reason),
                updated_at = COALESCE(?4, updated_at)
             WHERE id = ?1",
        )
        .map_err(sql)?;
    let mut disabled = Vec::new();
    for c in f.rules.health_changes(&f.done, &stored) {
        let (reason, disabled_at) = c.disabled.unzip();
        write_health
            .execute(params![
                c.subscription_id,
                ts(c.failing_since),
                reason,
                ts(disabled_at),
            ])
            .map_err(sql)?;
        if reason.is_some() {
            disabled.push(c.subscription_id);
        }
    }
    Ok(disabled)
}
