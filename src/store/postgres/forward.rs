//! PostgreSQL storage for forwarding (see [`super::forward`]). Claims use
//! `FOR UPDATE SKIP LOCKED` plus a lease, so instances sharing the database
//! never have one delivery in flight twice.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, Postgres};

use super::PostgresStore;
use super::codec::*;
use crate::forward::subscription::Subscription;
use crate::store::shared::forward;
use crate::store::*;

#[async_trait]
impl ForwardStore for PostgresStore {
    async fn insert_subscription(&self, s: &Subscription) -> Result<()> {
        forward::insert_subscription::<Postgres>(s)
            .build()
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn update_subscription(&self, s: &Subscription) -> Result<bool> {
        let done = forward::update_subscription::<Postgres>(s)
            .build()
            .execute(self.writer())
            .await?;
        let updated = done.rows_affected() == 1;
        // Re-enabled, its pending deliveries are due again.
        if updated && s.enabled {
            super::outbox::notify(&mut *self.writer().acquire().await?).await?;
        }
        Ok(updated)
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool> {
        let mut conn = self.writer().acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("DELETE FROM outbox WHERE subscription_id = $1 AND state = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>> {
        let row = forward::subscriptions_query::<Postgres>(Some(id))
            .build()
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows = forward::subscriptions_query::<Postgres>(None)
            .build()
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        room: &ClaimRoom,
    ) -> Result<Vec<ClaimedDelivery>> {
        let mut conn = self.writer().acquire().await?;
        let mut tx = conn.begin().await?;
        forwarding_commit_without_flush(&mut tx).await?;
        // Each enabled subscription offers its most due rows, up to its room
        // (one probe of `outbox_due_by_subscription` each); the most due of
        // those overall are leased. SKIP LOCKED: rows another instance is
        // claiming right now are left to it.
        let (busy, busy_room): (Vec<&str>, Vec<i64>) = room
            .busy
            .iter()
            .map(|(id, n)| (id.as_str(), i64::from(*n)))
            .unzip();
        let claimed: Vec<(i64, String, i64, i32, Option<String>)> = sqlx::query_as(
            "UPDATE outbox SET lease_until = $1
             WHERE id IN (
                SELECT d.id FROM subscriptions AS s
                LEFT JOIN unnest($4::text[], $5::bigint[]) AS busy(id, room) ON busy.id = s.id
                CROSS JOIN LATERAL (
                    SELECT o.id, o.next_attempt_at FROM outbox AS o
                    WHERE o.subscription_id = s.id AND o.state = 'pending'
                      AND o.next_attempt_at <= $2
                      AND (o.lease_until IS NULL OR o.lease_until < $2)
                      AND (NOT s.ordered OR o.order_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM outbox AS p
                            WHERE p.subscription_id = o.subscription_id
                              AND p.order_key = o.order_key
                              AND p.state = 'pending' AND p.id < o.id))
                    ORDER BY o.next_attempt_at, o.id
                    LIMIT LEAST(COALESCE(busy.room, $6), $3)
                    FOR UPDATE OF o SKIP LOCKED) AS d
                WHERE s.enabled
                ORDER BY d.next_attempt_at, d.id
                LIMIT $3)
             RETURNING id, subscription_id, event_seq, attempts, traceparent",
        )
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(room.total))
        .bind(&busy)
        .bind(&busy_room)
        .bind(i64::from(room.per_subscription))
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let subscriptions = forward::subscriptions_by_id::<Postgres>(&mut tx).await?;
        let seqs: Vec<i64> = claimed.iter().map(|c| c.2).collect();
        let events: HashMap<i64, StoredEvent> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY($1) AND pruned_at IS NULL"
        )))
        .bind(&seqs)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| event_from_row(r).map(|e| (e.seq, e)))
        .collect::<Result<_>>()?;
        let claimed = claimed
            .into_iter()
            .map(|(id, subscription, seq, attempts, traceparent)| {
                (id, subscription, seq, i64::from(attempts), traceparent)
            })
            .collect();
        let (out, gone) = forward::claimed_deliveries(claimed, subscriptions, events);
        for outbox_id in gone {
            forward::outbox_event_gone::<Postgres>(&mut tx, outbox_id, now).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt],
        rules: std::sync::Arc<dyn AttemptRules>,
    ) -> Result<Vec<String>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.writer().acquire().await?;
        let mut tx = conn.begin().await?;
        forwarding_commit_without_flush(&mut tx).await?;
        let changes: Vec<OutboxChange> = done.iter().map(|f| rules.outbox_change(f)).collect();
        // One statement records every attempt and moves every delivery on.
        sqlx::query(
            "WITH v AS (
                SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::int4[],
                    $5::timestamptz[], $6::int4[], $7::float8[], $8::text[], $9::text[],
                    $10::text[], $11::timestamptz[], $12::text[], $13::timestamptz[])
                AS v(outbox_id, subscription_id, event_seq, attempt, attempted_at, status,
                     latency_ms, error, response, state, next_attempt_at, last_error, finished_at)),
             attempts AS (
                INSERT INTO delivery_attempts (outbox_id, subscription_id, event_seq, attempt,
                    attempted_at, status, latency_ms, error, response)
                SELECT outbox_id, subscription_id, event_seq, attempt, attempted_at, status,
                    latency_ms, error, response FROM v)
             UPDATE outbox AS o SET state = v.state, attempts = v.attempt,
                next_attempt_at = v.next_attempt_at, lease_until = NULL,
                last_status = v.status, last_error = v.last_error, finished_at = v.finished_at
             FROM v WHERE o.id = v.outbox_id AND o.state = 'pending' AND o.lease_until IS NOT NULL",
        )
        .bind(done.iter().map(|f| f.outbox_id).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|f| f.subscription_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(done.iter().map(|f| f.event_seq).collect::<Vec<_>>())
        .bind(done.iter().map(|f| f.attempt as i32).collect::<Vec<_>>())
        .bind(done.iter().map(|f| f.attempted_at).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|f| f.status.map(i32::from))
                .collect::<Vec<_>>(),
        )
        .bind(done.iter().map(|f| f.latency_ms).collect::<Vec<_>>())
        .bind(done.iter().map(|f| f.error.as_deref()).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|f| f.response.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(changes.iter().map(|c| c.state.as_str()).collect::<Vec<_>>())
        .bind(
            changes
                .iter()
                .map(|c| c.next_attempt_at)
                .collect::<Vec<_>>(),
        )
        .bind(
            changes
                .iter()
                .map(|c| c.error.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(changes.iter().map(|c| c.finished_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;

        let ids = forward::subscription_ids(done);
        // Locked in id order: instances recording attempts of one subscription
        // at the same time apply them one after the other.
        let rows = sqlx::query(
            "SELECT id, enabled, failing_since FROM subscriptions WHERE id = ANY($1)
             ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let stored = rows
            .iter()
            .map(health_from_row)
            .collect::<Result<HashMap<_, _>>>()?;
        let disabled =
            forward::write_health::<Postgres>(&mut tx, rules.health_changes(done, &stored)).await?;
        tx.commit().await?;
        Ok(disabled)
    }

    async fn list_attempts(
        &self,
        subscription_id: Option<&str>,
        event_seq: Option<i64>,
        page: &PageRequest,
        newest_first: bool,
    ) -> Result<Page<DeliveryAttempt>> {
        forward::list_attempts(
            self.reader(),
            subscription_id,
            event_seq,
            page,
            newest_first,
        )
        .await
    }

    async fn list_deliveries(
        &self,
        f: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<OutboxEntry>> {
        forward::list_deliveries(self.reader(), f, page).await
    }

    async fn replay(&self, scope: &ReplayScope, now: DateTime<Utc>) -> Result<u64> {
        let mut conn = self.writer().acquire().await?;
        let mut tx = conn.begin().await?;
        let count = forward::replay::<Postgres>(&mut tx, scope, now, EVENT_COLUMNS).await?;
        if count > 0 {
            super::outbox::notify(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn outbox_pending(&self) -> Result<i64> {
        forward::outbox_pending(self.reader()).await
    }

    fn outbox_wake(&self) -> OutboxWake {
        self.wake.clone()
    }

    fn listen_for_outbox(&self) -> Option<tokio::task::JoinHandle<()>> {
        Some(super::wake::spawn_listener(
            (*self.writer().connect_options()).clone(),
            self.wake.clone(),
        ))
    }
}

/// Claims and recorded attempts commit without waiting for their WAL flush
/// (`synchronous_commit = off` for that transaction only): each one's flush
/// used to queue with the delivery batches' on the WAL, adding its wait to
/// ingest's answers. Losing one in a crash of the server or the machine (the
/// last few hundred ms) never corrupts anything and only sends a delivery
/// again with the same `webhook-id`, which at-least-once delivery allows; the
/// next batch's flush makes them durable anyway. Events and outbox rows are
/// never written this way.
async fn forwarding_commit_without_flush(tx: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    Ok(())
}
