//! The outbox rows a batch writes with its events, and the subscriptions
//! they are matched against (shared by the batch and by replay).

use sqlx::postgres::PgConnection;

use crate::forward::subscription::{EventToMatch, Subscription};
use crate::store::*;

/// Puts freshly stored events in the outbox of every matching subscription
/// (inside the events' own transaction), one statement for the batch.
pub(super) async fn enqueue(
    conn: &mut PgConnection,
    subscriptions: &[Subscription],
    stored: &[(&NewEvent, i64)],
) -> Result<()> {
    if subscriptions.is_empty() {
        return Ok(());
    }
    let (mut subs, mut seqs, mut keys, mut at) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut traceparents = Vec::new();
    for (ev, seq) in stored {
        let event = EventToMatch::new(&ev.source, &ev.topic, ev.course_id, &ev.body);
        for s in subscriptions.iter().filter(|s| s.matches(&event)) {
            subs.push(s.id.clone());
            seqs.push(*seq);
            keys.push(ev.order_key());
            at.push(ev.received_at);
            traceparents.push(ev.traceparent.as_deref());
        }
    }
    if subs.is_empty() {
        return Ok(());
    }
    // The NOTIFY rides in the same statement (no extra round trip), once, and
    // only when rows went in; PostgreSQL delivers it when the batch commits.
    sqlx::query(
        "WITH enqueued AS (
             INSERT INTO outbox (subscription_id, event_seq, order_key, state, attempts, next_attempt_at, created_at, traceparent)
             SELECT s, q, k, 'pending', 0, t, t, tp FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $6::text[]) AS u(s, q, k, t, tp)
             ON CONFLICT (subscription_id, event_seq) DO NOTHING
             RETURNING 1)
         SELECT pg_notify($5, '') WHERE EXISTS (SELECT 1 FROM enqueued)",
    )
    .bind(&subs)
    .bind(&seqs)
    .bind(&keys)
    .bind(&at)
    .bind(OUTBOX_CHANNEL)
    .bind(&traceparents)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Tells every instance's forwarder (see `super::wake`) that outbox rows are
/// due; inside a transaction, when it commits.
pub(super) async fn notify(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}
