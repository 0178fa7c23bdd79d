//! SQLite storage for forwarding (see [`super::forward`]).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, QueryBuilder, Sqlite};

use super::SqliteStore;
use super::codec::*;
use crate::forward::subscription::Subscription;
use crate::store::shared::forward;
use crate::store::*;

/// Rows per multi-row statement of recorded attempts (9 parameters each).
const ATTEMPT_ROWS_PER_STATEMENT: usize = 500;

#[async_trait]
impl ForwardStore for SqliteStore {
    async fn insert_subscription(&self, s: &Subscription) -> Result<()> {
        forward::insert_subscription::<Sqlite>(s)
            .build()
            .execute(&mut *self.writer.lock().await?)
            .await?;
        Ok(())
    }

    async fn update_subscription(&self, s: &Subscription) -> Result<bool> {
        let done = forward::update_subscription::<Sqlite>(s)
            .build()
            .execute(&mut *self.writer.lock().await?)
            .await?;
        let updated = done.rows_affected() == 1;
        // Re-enabled, its pending deliveries are due again.
        if updated && s.enabled {
            self.wake.raise();
        }
        Ok(updated)
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM outbox WHERE subscription_id = ? AND state = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>> {
        let row = forward::subscriptions_query::<Sqlite>(Some(id))
            .build()
            .fetch_optional(&mut *self.writer.lock().await?)
            .await?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows = forward::subscriptions_query::<Sqlite>(None)
            .build()
            .fetch_all(&mut *self.writer.lock().await?)
            .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>> {
        let now_s = fmt_ts(&now);
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        // Due, not leased (or the lease expired: a worker died), subscription
        // enabled, and — for ordered subscriptions — no older pending delivery
        // of the same enrollment.
        let claimed: Vec<(i64, String, i64, i64, Option<String>)> = sqlx::query_as(
            "UPDATE outbox SET lease_until = ?1
             WHERE id IN (
                SELECT o.id FROM outbox AS o JOIN subscriptions AS s ON s.id = o.subscription_id
                WHERE o.state = 'pending' AND o.next_attempt_at <= ?2
                  AND (o.lease_until IS NULL OR o.lease_until < ?2)
                  AND s.enabled = 1
                  AND (s.ordered = 0 OR o.order_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM outbox AS p
                        WHERE p.subscription_id = o.subscription_id AND p.order_key = o.order_key
                          AND p.state = 'pending' AND p.id < o.id))
                ORDER BY o.next_attempt_at, o.id
                LIMIT ?3)
             RETURNING id, subscription_id, event_seq, attempts, traceparent",
        )
        .bind(fmt_ts(&lease_until))
        .bind(&now_s)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let subscriptions = forward::subscriptions_by_id::<Sqlite>(&mut tx).await?;
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE pruned_at IS NULL AND seq IN ("
        ));
        let mut sep = q.separated(", ");
        for (_, _, seq, _, _) in &claimed {
            sep.push_bind(*seq);
        }
        q.push(")");
        let events: HashMap<i64, StoredEvent> = q
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| event_from_row(r).map(|e| (e.seq, e)))
            .collect::<Result<_>>()?;
        let (out, gone) = forward::claimed_deliveries(claimed, &subscriptions, &events);
        for outbox_id in gone {
            forward::outbox_event_gone::<Sqlite>(&mut tx, outbox_id, now).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt],
        rules: &dyn AttemptRules,
    ) -> Result<Vec<String>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        // A few statements per batch, not three per attempt: the writer is
        // shared with ingest, which waits while this transaction runs.
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in done.chunks(ATTEMPT_ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO delivery_attempts (outbox_id, subscription_id, event_seq, attempt, \
                 attempted_at, status, latency_ms, error, response) ",
            );
            q.push_values(chunk, |mut row, f| {
                row.push_bind(f.outbox_id)
                    .push_bind(&f.subscription_id)
                    .push_bind(f.event_seq)
                    .push_bind(i64::from(f.attempt))
                    .push_bind(fmt_ts(&f.attempted_at))
                    .push_bind(f.status.map(i64::from))
                    .push_bind(f.latency_ms)
                    .push_bind(&f.error)
                    .push_bind(&f.response);
            });
            q.build().execute(&mut *tx).await?;

            let mut q = QueryBuilder::<Sqlite>::new(
                "WITH v (id, state, attempts, next_attempt_at, last_status, last_error, finished_at) AS (",
            );
            q.push_values(chunk, |mut row, f| {
                let change = rules.outbox_change(f);
                row.push_bind(f.outbox_id)
                    .push_bind(change.state.as_str())
                    .push_bind(i64::from(f.attempt))
                    .push_bind(fmt_ts(&change.next_attempt_at))
                    .push_bind(f.status.map(i64::from))
                    .push_bind(change.error)
                    .push_bind(ts(change.finished_at));
            });
            q.push(
                ") UPDATE outbox SET state = v.state, attempts = v.attempts,
                    next_attempt_at = v.next_attempt_at, lease_until = NULL,
                    last_status = v.last_status, last_error = v.last_error,
                    finished_at = v.finished_at
                 FROM v WHERE outbox.id = v.id AND outbox.state = 'pending'
                   AND outbox.lease_until IS NOT NULL",
            );
            q.build().execute(&mut *tx).await?;
        }

        let ids = forward::subscription_ids(done);
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, enabled, failing_since FROM subscriptions WHERE id IN (",
        );
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(")");
        let stored = q
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(health_from_row)
            .collect::<Result<HashMap<_, _>>>()?;
        let disabled =
            forward::write_health::<Sqlite>(&mut tx, rules.health_changes(done, &stored)).await?;
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
        forward::list_attempts(&self.reader, subscription_id, event_seq, page, newest_first).await
    }

    async fn list_deliveries(
        &self,
        f: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<OutboxEntry>> {
        forward::list_deliveries(&self.reader, f, page).await
    }

    async fn replay(&self, scope: &ReplayScope, now: DateTime<Utc>) -> Result<u64> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let count = forward::replay::<Sqlite>(&mut tx, scope, now, EVENT_COLUMNS).await?;
        tx.commit().await?;
        if count > 0 {
            self.wake.raise();
        }
        Ok(count)
    }

    async fn outbox_pending(&self) -> Result<i64> {
        forward::outbox_pending(&self.reader).await
    }

    fn outbox_wake(&self) -> OutboxWake {
        self.wake.clone()
    }
}
