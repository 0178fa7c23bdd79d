//! PostgreSQL storage for forwarding (see [`super::forward`]). Claims use
//! `FOR UPDATE SKIP LOCKED` plus a lease, so instances sharing the database
//! never have one delivery in flight twice.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::types::Json;
use sqlx::{Connection, Postgres, Row};

use super::PostgresStore;
use super::codec::*;
use super::outbox::enabled_subscriptions;
use crate::forward::subscription::Subscription;
use crate::store::*;
use crate::thinkific::envelope::course_id_of_body;

async fn upsert_outbox(
    conn: &mut PgConnection,
    subscription_id: &str,
    seq: i64,
    order_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox (subscription_id, event_seq, order_key, state, attempts, next_attempt_at, created_at)
         VALUES ($1, $2, $3, 'pending', 0, $4, $4)
         ON CONFLICT (subscription_id, event_seq) DO UPDATE SET
            state = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at, finished_at = NULL,
            lease_until = NULL",
    )
    .bind(subscription_id)
    .bind(seq)
    .bind(order_key)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn subscription_in(conn: &mut PgConnection, id: &str) -> Result<Subscription> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("no subscription `{id}`")))?;
    subscription_from_row(&row)
}

#[async_trait]
impl ForwardStore for PostgresStore {
    async fn insert_subscription(&self, s: &Subscription) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        )))
        .bind(&s.id)
        .bind(&s.url)
        .bind(Json(&s.topics))
        .bind(s.course_ids.as_ref().map(Json))
        .bind(s.sources.as_ref().map(Json))
        .bind(&s.secret)
        .bind(&s.previous_secret)
        .bind(s.previous_secret_until)
        .bind(s.enabled)
        .bind(&s.disabled_reason)
        .bind(s.ordered)
        .bind(Json(&s.headers))
        .bind(&s.description)
        .bind(s.failing_since)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn update_subscription(&self, s: &Subscription) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE subscriptions SET url = $1, topics = $2, course_ids = $3, sources = $4, secret = $5,
                previous_secret = $6, previous_secret_until = $7, enabled = $8, disabled_reason = $9,
                ordered = $10, headers = $11, description = $12, failing_since = $13, updated_at = $14
             WHERE id = $15",
        )
        .bind(&s.url)
        .bind(Json(&s.topics))
        .bind(s.course_ids.as_ref().map(Json))
        .bind(s.sources.as_ref().map(Json))
        .bind(&s.secret)
        .bind(&s.previous_secret)
        .bind(s.previous_secret_until)
        .bind(s.enabled)
        .bind(&s.disabled_reason)
        .bind(s.ordered)
        .bind(Json(&s.headers))
        .bind(&s.description)
        .bind(s.failing_since)
        .bind(s.updated_at)
        .bind(&s.id)
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected() == 1)
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.reader())
        .await?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY created_at, id"
        )))
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>> {
        let mut conn = self.writer().acquire().await?;
        let mut tx = conn.begin().await?;
        // SKIP LOCKED: rows another instance is claiming right now are left to it.
        let claimed: Vec<(i64, String, i64, i32)> = sqlx::query_as(
            "UPDATE outbox SET lease_until = $1
             WHERE id IN (
                SELECT o.id FROM outbox AS o JOIN subscriptions AS s ON s.id = o.subscription_id
                WHERE o.state = 'pending' AND o.next_attempt_at <= $2
                  AND (o.lease_until IS NULL OR o.lease_until < $2)
                  AND s.enabled
                  AND (NOT s.ordered OR o.order_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM outbox AS p
                        WHERE p.subscription_id = o.subscription_id AND p.order_key = o.order_key
                          AND p.state = 'pending' AND p.id < o.id))
                ORDER BY o.next_attempt_at, o.id
                LIMIT $3
                FOR UPDATE OF o SKIP LOCKED)
             RETURNING id, subscription_id, event_seq, attempts",
        )
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let subscriptions: HashMap<String, Subscription> = sqlx::query(sqlx::AssertSqlSafe(
            format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"),
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| subscription_from_row(r).map(|s| (s.id.clone(), s)))
        .collect::<Result<_>>()?;
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
                    sqlx::query(
                        "UPDATE outbox SET state = 'dead', finished_at = $1, last_error = 'the event is no longer in the log (pruned by retention)' WHERE id = $2",
                    )
                    .bind(now)
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
        let mut conn = self.writer().acquire().await?;
        let mut tx = conn.begin().await?;
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

        let mut ids: Vec<&str> = done.iter().map(|f| f.subscription_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        // Locked in id order: instances recording attempts of one subscription
        // at the same time apply them one after the other.
        let rows = sqlx::query(
            "SELECT id, enabled, failing_since FROM subscriptions WHERE id = ANY($1)
             ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut stored = HashMap::with_capacity(rows.len());
        for row in &rows {
            let health = Health {
                enabled: row.try_get("enabled")?,
                failing_since: row.try_get("failing_since")?,
            };
            stored.insert(row.try_get::<String, _>("id")?, health);
        }
        let health = rules.health_changes(done, &stored);
        for c in &health {
            let (reason, disabled_at) = c.disabled.clone().unzip();
            sqlx::query(
                "UPDATE subscriptions SET failing_since = $1,
                    enabled = CASE WHEN $2::text IS NULL THEN enabled ELSE false END,
                    disabled_reason = COALESCE($2, disabled_reason),
                    updated_at = COALESCE($3, updated_at)
                 WHERE id = $4",
            )
            .bind(c.failing_since)
            .bind(reason)
            .bind(disabled_at)
            .bind(&c.subscription_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(health
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
        let mut q =
            sql::attempts_query::<Postgres>(subscription_id, event_seq, page, newest_first)?;
        let rows = q.build().fetch_all(self.reader()).await?;
        let items = rows.iter().map(attempt_from_row).collect::<Result<_>>()?;
        Ok(page_of(items, page.limit, |a| a.id))
    }

    async fn list_deliveries(
        &self,
        f: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<OutboxEntry>> {
        let mut q = sql::deliveries_query::<Postgres>(f, page)?;
        let rows = q.build().fetch_all(self.reader()).await?;
        let items = rows.iter().map(outbox_from_row).collect::<Result<_>>()?;
        Ok(page_of(items, page.limit, |o| o.id))
    }

    async fn replay(&self, scope: &ReplayScope, now: DateTime<Utc>) -> Result<u64> {
        let mut conn = self.writer().acquire().await?;
        let mut tx = conn.begin().await?;
        let mut count = 0u64;
        match scope {
            ReplayScope::Event {
                source,
                event_id,
                subscription_id,
            } => {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE source = $1 AND event_id = $2"
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
                    upsert_outbox(&mut tx, &s.id, event.seq, key.as_deref(), now).await?;
                    count += 1;
                }
            }
            ReplayScope::Dead { subscription_id } => {
                subscription_in(&mut tx, subscription_id).await?;
                let r = sqlx::query(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, finished_at = NULL
                     WHERE subscription_id = $2 AND state = 'dead'",
                )
                .bind(now)
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
                        "SELECT {EVENT_COLUMNS} FROM events WHERE received_at >= $1 AND received_at < $2 AND seq > $3 ORDER BY seq LIMIT 1000"
                    )))
                    .bind(since)
                    .bind(until)
                    .bind(after)
                    .fetch_all(&mut *tx)
                    .await?;
                    let Some(last) = rows.last() else { break };
                    after = last.try_get("seq")?;
                    for row in &rows {
                        let e = event_from_row(row)?;
                        if s.matches(&e.source, &e.topic, course_id_of_body(&e.body)) {
                            let key = order_key(&e.source, e.enrollment_id);
                            upsert_outbox(&mut tx, &s.id, e.seq, key.as_deref(), now).await?;
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
                .fetch_one(self.reader())
                .await?,
        )
    }
}
