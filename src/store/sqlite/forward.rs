//! SQLite storage for forwarding (see [`super::forward`]).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, QueryBuilder, Row, Sqlite};

use super::SqliteStore;
use super::batch::enabled_subscriptions;
use super::codec::*;
use crate::forward::subscription::Subscription;
use crate::store::*;
use crate::thinkific::envelope::course_id_of_body;

/// Rows per multi-row statement of recorded attempts (9 parameters each).
const ATTEMPT_ROWS_PER_STATEMENT: usize = 500;

/// Inserts a pending delivery, or makes an existing one pending and due again,
/// unleased: an attempt still in flight does not get to record over it.
async fn upsert_outbox(
    conn: &mut SqliteConnection,
    subscription_id: &str,
    seq: i64,
    order_key: Option<&str>,
    now: &DateTime<Utc>,
) -> Result<()> {
    let now = fmt_ts(now);
    sqlx::query(
        "INSERT INTO outbox (subscription_id, event_seq, order_key, state, attempts, next_attempt_at, created_at)
         VALUES (?, ?, ?, 'pending', 0, ?, ?)
         ON CONFLICT (subscription_id, event_seq) DO UPDATE SET
            state = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at, finished_at = NULL,
            lease_until = NULL",
    )
    .bind(subscription_id)
    .bind(seq)
    .bind(order_key)
    .bind(&now)
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl ForwardStore for SqliteStore {
    async fn insert_subscription(&self, s: &Subscription) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(&s.id)
        .bind(&s.url)
        .bind(to_json(&s.topics))
        .bind(s.course_ids.as_ref().map(to_json))
        .bind(s.sources.as_ref().map(to_json))
        .bind(&s.secret)
        .bind(&s.previous_secret)
        .bind(ts(s.previous_secret_until))
        .bind(s.enabled)
        .bind(&s.disabled_reason)
        .bind(s.ordered)
        .bind(to_json(&s.headers))
        .bind(&s.description)
        .bind(ts(s.failing_since))
        .bind(fmt_ts(&s.created_at))
        .bind(fmt_ts(&s.updated_at))
        .execute(&mut *self.writer.lock().await?)
        .await?;
        Ok(())
    }

    async fn update_subscription(&self, s: &Subscription) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE subscriptions SET url = ?, topics = ?, course_ids = ?, sources = ?, secret = ?,
                previous_secret = ?, previous_secret_until = ?, enabled = ?, disabled_reason = ?,
                ordered = ?, headers = ?, description = ?, failing_since = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(&s.url)
        .bind(to_json(&s.topics))
        .bind(s.course_ids.as_ref().map(to_json))
        .bind(s.sources.as_ref().map(to_json))
        .bind(&s.secret)
        .bind(&s.previous_secret)
        .bind(ts(s.previous_secret_until))
        .bind(s.enabled)
        .bind(&s.disabled_reason)
        .bind(s.ordered)
        .bind(to_json(&s.headers))
        .bind(&s.description)
        .bind(ts(s.failing_since))
        .bind(fmt_ts(&s.updated_at))
        .bind(&s.id)
        .execute(&mut *self.writer.lock().await?)
        .await?;
        Ok(done.rows_affected() == 1)
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&mut *self.writer.lock().await?)
        .await?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY created_at, id"
        )))
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
        let claimed: Vec<(i64, String, i64, i64)> = sqlx::query_as(
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
             RETURNING id, subscription_id, event_seq, attempts",
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
        let subscriptions: HashMap<String, Subscription> = {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"
            )))
            .fetch_all(&mut *tx)
            .await?;
            rows.iter()
                .map(|r| subscription_from_row(r).map(|s| (s.id.clone(), s)))
                .collect::<Result<_>>()?
        };
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE pruned_at IS NULL AND seq IN ("
        ));
        let mut sep = q.separated(", ");
        for (_, _, seq, _) in &claimed {
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
        let mut out = Vec::with_capacity(claimed.len());
        for (outbox_id, subscription_id, seq, attempts) in claimed {
            match (subscriptions.get(&subscription_id), events.get(&seq)) {
                (Some(s), Some(e)) => out.push(ClaimedDelivery {
                    outbox_id,
                    attempts: attempts as u32,
                    subscription: s.clone(),
                    event: e.clone(),
                }),
                _ => {
                    // The event was pruned from the log: nothing left to send.
                    sqlx::query(
                        "UPDATE outbox SET state = 'dead', finished_at = ?, last_error = 'the event is no longer in the log (pruned by retention)' WHERE id = ?",
                    )
                    .bind(&now_s)
                    .bind(outbox_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
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

        let mut ids: Vec<&str> = done.iter().map(|f| f.subscription_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, enabled, failing_since FROM subscriptions WHERE id IN (",
        );
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(")");
        let mut stored = HashMap::with_capacity(ids.len());
        for row in q.build().fetch_all(&mut *tx).await? {
            let health = Health {
                enabled: row.try_get("enabled")?,
                failing_since: parse_ts(row.try_get("failing_since")?)?,
            };
            stored.insert(row.try_get::<String, _>("id")?, health);
        }
        let changes = rules.health_changes(done, &stored);
        for c in &changes {
            let (reason, disabled_at) = c.disabled.clone().unzip();
            sqlx::query(
                "UPDATE subscriptions SET failing_since = ?1,
                    enabled = CASE WHEN ?2 IS NULL THEN enabled ELSE 0 END,
                    disabled_reason = COALESCE(?2, disabled_reason),
                    updated_at = COALESCE(?3, updated_at)
                 WHERE id = ?4",
            )
            .bind(ts(c.failing_since))
            .bind(reason)
            .bind(ts(disabled_at))
            .bind(&c.subscription_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(changes
            .into_iter()
            .filter(|c| c.disabled.is_some())
            .map(|c| c.subscription_id)
            .collect())
    }

    async fn list_attempts(
        &self,
        subscription_id: Option<&str>,
        event_seq: Option<i64>,
        page: &PageRequest,
        newest_first: bool,
    ) -> Result<Page<DeliveryAttempt>> {
        let mut q = sql::attempts_query::<Sqlite>(subscription_id, event_seq, page, newest_first)?;
        let rows = q.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(attempt_from_row).collect::<Result<_>>()?;
        Ok(page_of(items, page.limit, |a| a.id))
    }

    async fn list_deliveries(
        &self,
        f: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<OutboxEntry>> {
        let mut q = sql::deliveries_query::<Sqlite>(f, page)?;
        let rows = q.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(outbox_from_row).collect::<Result<_>>()?;
        Ok(page_of(items, page.limit, |o| o.id))
    }

    async fn replay(&self, scope: &ReplayScope, now: DateTime<Utc>) -> Result<u64> {
        let mut writer = self.writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut count = 0u64;
        match scope {
            ReplayScope::Event {
                source,
                event_id,
                subscription_id,
            } => {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE source = ? AND event_id = ?"
                )))
                .bind(source)
                .bind(event_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    StoreError::NotFound(format!("no event `{event_id}` from source `{source}`"))
                })?;
                let event = event_from_row(&row)?;
                let course = course_id_of_body(&event.body);
                let targets: Vec<Subscription> = match subscription_id {
                    Some(id) => vec![subscription_in(&mut tx, id).await?],
                    None => enabled_subscriptions(&mut tx)
                        .await?
                        .into_iter()
                        .filter(|s| s.matches(&event.source, &event.topic, course))
                        .collect(),
                };
                for s in targets {
                    let key = order_key(&event.source, event.enrollment_id);
                    upsert_outbox(&mut tx, &s.id, event.seq, key.as_deref(), &now).await?;
                    count += 1;
                }
            }
            ReplayScope::Dead { subscription_id } => {
                subscription_in(&mut tx, subscription_id).await?;
                let r = sqlx::query(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, finished_at = NULL
                     WHERE subscription_id = ? AND state = 'dead'",
                )
                .bind(fmt_ts(&now))
                .bind(subscription_id)
                .execute(&mut *tx)
                .await?;
                count = r.rows_affected();
            }
            ReplayScope::Range {
                subscription_id,
                since,
                until,
            } => {
                let s = subscription_in(&mut tx, subscription_id).await?;
                let mut after = 0i64;
                loop {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE received_at >= ? AND received_at < ? AND seq > ? ORDER BY seq LIMIT 1000"
                    )))
                    .bind(fmt_ts(since))
                    .bind(fmt_ts(until))
                    .bind(after)
                    .fetch_all(&mut *tx)
                    .await?;
                    let Some(last) = rows.last() else { break };
                    after = last.try_get("seq")?;
                    for row in &rows {
                        let e = event_from_row(row)?;
                        if s.matches(&e.source, &e.topic, course_id_of_body(&e.body)) {
                            let key = order_key(&e.source, e.enrollment_id);
                            upsert_outbox(&mut tx, &s.id, e.seq, key.as_deref(), &now).await?;
                            count += 1;
                        }
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn outbox_pending(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
                .fetch_one(&self.reader)
                .await?,
        )
    }
}

async fn subscription_in(conn: &mut SqliteConnection, id: &str) -> Result<Subscription> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("no subscription `{id}`")))?;
    subscription_from_row(&row)
}
