//! SQLite storage for forwarding (see [`super::forward`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, QueryBuilder, Sqlite};

use super::SqliteStore;
use super::codec::*;
use crate::forward::subscription::Subscription;
use crate::store::shared::forward;
use crate::store::*;

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
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = forward::update_subscription::<Sqlite>(s)
            .build()
            .execute(&mut *tx)
            .await?;
        let updated = done.rows_affected() == 1;
        // On SQLite only an ordered subscription's deliveries carry their
        // enrollment's order key (see `batch::append`). Made ordered, its
        // waiting deliveries get theirs, in the transaction that changes it:
        // every batch after it sees the change (its fingerprint), so none is
        // left without one. The key is `store::order_key`'s, written in SQL
        // (the test of this change fails if the two differ).
        if updated && s.ordered {
            sqlx::query(
                "UPDATE outbox SET order_key = (
                    SELECT e.source || '/' || e.enrollment_id FROM events AS e
                    WHERE e.seq = outbox.event_seq AND e.enrollment_id IS NOT NULL)
                 WHERE subscription_id = ? AND state = 'pending' AND order_key IS NULL",
            )
            .bind(&s.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        drop(writer);
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
        room: &ClaimRoom,
    ) -> Result<Vec<ClaimedDelivery>> {
        // The lease is taken by the log writer thread, in the transaction it
        // shares with ingest (see `super::outbox`); what the deliveries need is
        // read after, off the write lock (events do not change once stored).
        let claimed = self
            .appender
            .batch
            .claim(now, lease_until, room.clone())
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.reader.acquire().await?;
        let subscriptions = forward::subscriptions_by_id::<Sqlite>(&mut conn).await?;
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
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| event_from_row(r).map(|e| (e.seq, e)))
            .collect::<Result<_>>()?;
        drop(conn);
        let (out, gone) = forward::claimed_deliveries(claimed, subscriptions, events);
        if !gone.is_empty() {
            self.appender.batch.event_gone(gone, now).await?;
        }
        Ok(out)
    }

    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt],
        rules: Arc<dyn AttemptRules>,
    ) -> Result<Vec<String>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        // In the log writer thread's shared transaction (see `super::outbox`).
        let finish = super::outbox::Finish {
            done: done.to_vec(),
            rules,
        };
        self.appender.batch.finish(finish).await
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

    fn usable_from_any_runtime(&self) -> bool {
        true
    }
}
