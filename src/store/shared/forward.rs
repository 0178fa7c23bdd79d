//! Forwarding's storage written once for both backends (see [`super`]).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Pool, QueryBuilder};

use crate::forward::subscription::{EventFilter, EventToMatch, Subscription};
use crate::store::dialect::{Binds, Cols, Dialect};
use crate::store::rows::*;
use crate::store::shared::fetch_mapped;
use crate::store::*;
use crate::thinkific::envelope::course_id_of_body;

/// The statement that stores a new subscription.
pub(crate) fn insert_subscription<DB: Dialect>(s: &Subscription) -> QueryBuilder<DB>
where
    Option<i64>: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
    bool: Binds<DB>,
{
    let mut q = QueryBuilder::new(format!(
        "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) "
    ));
    q.push_values([s], |mut row, s| {
        row.push_bind(s.id.clone())
            .push_bind(s.url.clone())
            .push_bind(DB::json(&s.topics))
            .push_bind(DB::opt_json(s.course_ids.as_ref()))
            .push_bind(DB::opt_json(s.sources.as_ref()))
            .push_bind(s.secret.clone())
            .push_bind(s.previous_secret.clone())
            .push_bind(DB::opt_time(s.previous_secret_until))
            .push_bind(s.enabled)
            .push_bind(s.disabled_reason.clone())
            .push_bind(s.ordered)
            .push_bind(DB::json(&s.headers))
            .push_bind(s.description.clone())
            .push_bind(DB::opt_time(s.failing_since))
            .push_bind(DB::time(s.created_at))
            .push_bind(DB::time(s.updated_at))
            .push_bind(s.subject.clone())
            .push_bind(s.exchange.clone())
            .push_bind(s.routing_key.clone())
            .push_bind(s.stream.clone())
            .push_bind(s.maxlen)
            .push_bind(DB::opt_json(s.filter.as_ref().map(EventFilter::json)))
            .push_bind(DB::opt_json(s.template.as_ref()));
    });
    q
}

/// The statement that replaces a subscription's settings (all but its id
/// and creation time).
pub(crate) fn update_subscription<DB: Dialect>(s: &Subscription) -> QueryBuilder<DB>
where
    Option<i64>: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
    bool: Binds<DB>,
{
    let mut q = QueryBuilder::new("UPDATE subscriptions SET url = ");
    q.push_bind(s.url.clone())
        .push(", topics = ")
        .push_bind(DB::json(&s.topics))
        .push(", course_ids = ")
        .push_bind(DB::opt_json(s.course_ids.as_ref()))
        .push(", sources = ")
        .push_bind(DB::opt_json(s.sources.as_ref()))
        .push(", secret = ")
        .push_bind(s.secret.clone())
        .push(", previous_secret = ")
        .push_bind(s.previous_secret.clone())
        .push(", previous_secret_until = ")
        .push_bind(DB::opt_time(s.previous_secret_until))
        .push(", enabled = ")
        .push_bind(s.enabled)
        .push(", disabled_reason = ")
        .push_bind(s.disabled_reason.clone())
        .push(", ordered = ")
        .push_bind(s.ordered)
        .push(", headers = ")
        .push_bind(DB::json(&s.headers))
        .push(", filter = ")
        .push_bind(DB::opt_json(s.filter.as_ref().map(EventFilter::json)))
        .push(", template = ")
        .push_bind(DB::opt_json(s.template.as_ref()))
        .push(", description = ")
        .push_bind(s.description.clone())
        .push(", failing_since = ")
        .push_bind(DB::opt_time(s.failing_since))
        .push(", updated_at = ")
        .push_bind(DB::time(s.updated_at))
        .push(", subject = ")
        .push_bind(s.subject.clone())
        .push(", exchange = ")
        .push_bind(s.exchange.clone())
        .push(", routing_key = ")
        .push_bind(s.routing_key.clone())
        .push(", stream = ")
        .push_bind(s.stream.clone())
        .push(", maxlen = ")
        .push_bind(s.maxlen)
        .push(" WHERE id = ")
        .push_bind(s.id.clone());
    q
}

/// Subscriptions, optionally only the one with `id`, oldest first.
pub(crate) fn subscriptions_query<DB: Dialect>(id: Option<&str>) -> QueryBuilder<DB>
where
    String: Binds<DB>,
    Option<String>: Binds<DB>,
{
    let mut q = QueryBuilder::new(format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"));
    if let Some(id) = id {
        q.push(" WHERE id = ").push_bind(id.to_owned());
    }
    q.push(" ORDER BY created_at, id");
    q
}

/// The subscription `id`, or NotFound.
pub(crate) async fn subscription_in<DB: Dialect>(
    conn: &mut DB::Connection,
    id: &str,
) -> Result<Subscription>
where
    String: Binds<DB>,
    Option<String>: Binds<DB>,
{
    let row = subscriptions_query::<DB>(Some(id))
        .build()
        .fetch_optional(DB::on(conn))
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no subscription `{id}`")))?;
    subscription_from_row(&row)
}

/// The enabled subscriptions (those new events are queued for).
pub(crate) async fn enabled_subscriptions<DB: Dialect>(
    conn: &mut DB::Connection,
) -> Result<Vec<Subscription>>
where
    bool: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE enabled = "
    ));
    q.push_bind(true);
    let rows = q.build().fetch_all(DB::on(conn)).await?;
    rows.iter().map(subscription_from_row).collect()
}

/// Every subscription by id (a claim's deliveries look theirs up here).
pub(crate) async fn subscriptions_by_id<DB: Dialect>(
    conn: &mut DB::Connection,
) -> Result<HashMap<String, Subscription>> {
    let rows = QueryBuilder::<DB>::new(format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"))
        .build()
        .fetch_all(DB::on(conn))
        .await?;
    rows.iter()
        .map(|r| subscription_from_row(r).map(|s| (s.id.clone(), s)))
        .collect()
}

/// Claimed outbox rows (id, subscription, event seq, attempts made, the
/// delivery's traceparent) as
/// deliveries, and the ids of those whose event is gone (pruned from the
/// log): nothing is left to send for these.
pub(crate) fn claimed_deliveries(
    claimed: Vec<(i64, String, i64, i64, Option<String>)>,
    subscriptions: HashMap<String, Subscription>,
    events: HashMap<i64, StoredEvent>,
) -> (Vec<ClaimedDelivery>, Vec<i64>) {
    // Each subscription and event once, shared by its deliveries: a claim
    // holds an event once per subscription that takes it.
    let subscriptions: HashMap<String, Arc<Subscription>> = subscriptions
        .into_iter()
        .map(|(id, s)| (id, Arc::new(s)))
        .collect();
    let events: HashMap<i64, Arc<StoredEvent>> = events
        .into_iter()
        .map(|(seq, e)| (seq, Arc::new(e)))
        .collect();
    let mut out = Vec::with_capacity(claimed.len());
    let mut gone = Vec::new();
    for (outbox_id, subscription_id, seq, attempts, traceparent) in claimed {
        match (subscriptions.get(&subscription_id), events.get(&seq)) {
            (Some(s), Some(e)) => out.push(ClaimedDelivery {
                outbox_id,
                attempts: attempts as u32,
                subscription: s.clone(),
                event: e.clone(),
                traceparent,
            }),
            _ => gone.push(outbox_id),
        }
    }
    (out, gone)
}

/// Marks a claimed delivery whose event was pruned from the log dead.
pub(crate) async fn outbox_event_gone<DB: Dialect>(
    conn: &mut DB::Connection,
    outbox_id: i64,
    now: DateTime<Utc>,
) -> Result<()>
where
    i64: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new("UPDATE outbox SET state = 'dead', finished_at = ");
    q.push_bind(DB::time(now))
        .push(
            ", last_error = 'the event is no longer in the log (pruned by retention)' WHERE id = ",
        )
        .push_bind(outbox_id);
    q.build().execute(DB::on(conn)).await?;
    Ok(())
}

/// The distinct subscriptions of a batch of attempts, sorted.
pub(crate) fn subscription_ids(done: &[FinishedAttempt]) -> Vec<&str> {
    let mut ids: Vec<&str> = done.iter().map(|f| f.subscription_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Writes the health changes that forwarding's rules decided and returns the
/// ids of the subscriptions they disabled.
pub(crate) async fn write_health<DB: Dialect>(
    conn: &mut DB::Connection,
    changes: Vec<HealthChange>,
) -> Result<Vec<String>>
where
    String: Binds<DB>,
    Option<String>: Binds<DB>,
    bool: Binds<DB>,
{
    for c in &changes {
        let (reason, disabled_at) = c.disabled.clone().unzip();
        let mut q = QueryBuilder::<DB>::new("UPDATE subscriptions SET failing_since = ");
        q.push_bind(DB::opt_time(c.failing_since))
            .push(", enabled = CASE WHEN ")
            .push_bind(reason.is_none())
            .push(" THEN enabled ELSE ")
            .push_bind(false)
            .push(" END, disabled_reason = COALESCE(")
            .push_bind(reason)
            .push(", disabled_reason), updated_at = COALESCE(")
            .push_bind(DB::opt_time(disabled_at))
            .push(", updated_at) WHERE id = ")
            .push_bind(c.subscription_id.clone());
        q.build().execute(DB::on(conn)).await?;
    }
    Ok(changes
        .into_iter()
        .filter(|c| c.disabled.is_some())
        .map(|c| c.subscription_id)
        .collect())
}

pub(crate) async fn list_attempts<DB: Dialect>(
    pool: &Pool<DB>,
    subscription_id: Option<&str>,
    event_seq: Option<i64>,
    page: &PageRequest,
    newest_first: bool,
) -> Result<Page<DeliveryAttempt>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
{
    let q = sql::attempts_query::<DB>(subscription_id, event_seq, page, newest_first)?;
    let items = fetch_mapped(pool, q, attempt_from_row).await?;
    Ok(page_of(items, page.limit, |a| a.id))
}

pub(crate) async fn list_deliveries<DB: Dialect>(
    pool: &Pool<DB>,
    f: &DeliveryFilter,
    page: &PageRequest,
) -> Result<Page<OutboxEntry>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
{
    let q = sql::deliveries_query::<DB>(f, page)?;
    let items = fetch_mapped(pool, q, outbox_from_row).await?;
    Ok(page_of(items, page.limit, |o| o.id))
}

pub(crate) async fn outbox_pending<DB: Dialect>(pool: &Pool<DB>) -> Result<i64>
where
    i64: Binds<DB>,
{
    let mut conn = pool.acquire().await?;
    let row = QueryBuilder::<DB>::new("SELECT COUNT(*) AS n FROM outbox WHERE state = 'pending'")
        .build()
        .fetch_one(DB::on(&mut conn))
        .await?;
    row.int("n")
}

/// Inserts a pending delivery, or makes an existing one pending and due again,
/// unleased: an attempt still in flight does not get to record over it.
async fn upsert_outbox<DB: Dialect>(
    conn: &mut DB::Connection,
    subscription_id: &str,
    event: &StoredEvent,
    now: DateTime<Utc>,
) -> Result<()>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO outbox (subscription_id, event_seq, order_key, state, attempts, \
         next_attempt_at, created_at) ",
    );
    q.push_values([event], |mut row, e| {
        row.push_bind(subscription_id.to_owned())
            .push_bind(e.seq)
            .push_bind(order_key(&e.source, e.enrollment_id))
            .push_unseparated(", 'pending', 0")
            .push_bind(DB::time(now))
            .push_bind(DB::time(now));
    });
    q.push(
        " ON CONFLICT (subscription_id, event_seq) DO UPDATE SET
            state = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at,
            finished_at = NULL, lease_until = NULL",
    );
    q.build().execute(DB::on(conn)).await?;
    Ok(())
}

/// Puts deliveries back in the outbox, due now (see [`ForwardStore::replay`]);
/// `conn` is a transaction the caller commits.
pub(crate) async fn replay<DB: Dialect>(
    conn: &mut DB::Connection,
    scope: &ReplayScope,
    now: DateTime<Utc>,
    event_columns: &str,
) -> Result<u64>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
    bool: Binds<DB>,
{
    let mut count = 0u64;
    match scope {
        ReplayScope::Event {
            source,
            event_id,
            topic,
            subscription_id,
        } => {
            let mut q = QueryBuilder::<DB>::new(format!(
                "SELECT {event_columns} FROM events WHERE seq IN (
                     SELECT seq FROM {} WHERE source = ",
                DB::EVENT_IDS
            ));
            q.push_bind(source.clone())
                .push(" AND event_id = ")
                .push_bind(event_id.clone())
                .push(") ORDER BY seq");
            let rows = q.build().fetch_all(DB::on(conn)).await?;
            let found = rows
                .iter()
                .map(event_from_row)
                .collect::<Result<Vec<_>>>()?;
            let event = one_event(found, source, event_id, topic.as_deref())?.ok_or_else(|| {
                StoreError::NotFound(format!("no event `{event_id}` from source `{source}`"))
            })?;
            let course = course_id_of_body(&event.body);
            let to_match = EventToMatch::new(&event.source, &event.topic, course, &event.body);
            let targets: Vec<Subscription> = match subscription_id {
                Some(id) => vec![subscription_in::<DB>(conn, id).await?],
                None => enabled_subscriptions::<DB>(conn)
                    .await?
                    .into_iter()
                    .filter(|s| s.matches(&to_match))
                    .collect(),
            };
            for s in targets {
                upsert_outbox::<DB>(conn, &s.id, &event, now).await?;
                count += 1;
            }
        }
        ReplayScope::Dead { subscription_id } => {
            subscription_in::<DB>(conn, subscription_id).await?;
            let mut q = QueryBuilder::<DB>::new(
                "UPDATE outbox SET state = 'pending', attempts = 0, finished_at = NULL, \
                 next_attempt_at = ",
            );
            q.push_bind(DB::time(now))
                .push(" WHERE state = 'dead' AND subscription_id = ")
                .push_bind(subscription_id.clone());
            count = DB::rows_affected(&q.build().execute(DB::on(conn)).await?);
        }
        ReplayScope::Range {
            subscription_id,
            since,
            until,
        } => {
            let s = subscription_in::<DB>(conn, subscription_id).await?;
            let mut after = 0i64;
            loop {
                let mut q = QueryBuilder::<DB>::new(format!(
                    "SELECT {event_columns} FROM events WHERE received_at >= "
                ));
                q.push_bind(DB::time(*since))
                    .push(" AND received_at < ")
                    .push_bind(DB::time(*until))
                    .push(" AND seq > ")
                    .push_bind(after)
                    .push(" ORDER BY seq LIMIT 1000");
                let rows = q.build().fetch_all(DB::on(conn)).await?;
                let Some(last) = rows.last() else { break };
                after = last.int("seq")?;
                for row in &rows {
                    let e = event_from_row(row)?;
                    let course = course_id_of_body(&e.body);
                    if s.matches(&EventToMatch::new(&e.source, &e.topic, course, &e.body)) {
                        upsert_outbox::<DB>(conn, &s.id, &e, now).await?;
                        count += 1;
                    }
                }
            }
        }
    }
    Ok(count)
}
