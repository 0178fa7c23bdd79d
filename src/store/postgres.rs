//! PostgreSQL: one database shared by any number of stateless `enrollhook serve`
//! instances.
//!
//! The guarantees of the embedded store hold across instances:
//! - exactly once: `INSERT … ON CONFLICT (source, event_id) DO NOTHING`; when two
//!   instances insert the same new event at once, the second waits on the unique
//!   index and then sees the conflict, so only the winner applies the projection;
//! - newest state: before reading an enrollment, a batch takes a transaction-scoped
//!   advisory lock per (source, enrollment id) (rows that do not exist yet cannot be
//!   row-locked), in sorted order so that batches of different instances never
//!   deadlock; events are inserted in sorted (source, event_id) order for the same
//!   reason. Deadlocks and serialization failures that still happen are retried.
//!
//! Several writers (see [`Store::writers`]) each commit whole batches; every
//! batch costs a handful of round trips whatever its size (arrays + `unnest`).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveTime, SubsecRound, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, QueryBuilder, Row};

use super::*;
use crate::projection::{self, Enrollment, EnrollmentEvent, Version};
use crate::store::postgres_forward;

/// Schema versions, applied in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "forwarding",
        include_str!("migrations/postgres/0002_forwarding.sql"),
    ),
    (
        3,
        "retention",
        include_str!("migrations/postgres/0003_retention.sql"),
    ),
    (
        4,
        "commit order",
        include_str!("migrations/postgres/0004_commit_order.sql"),
    ),
    (
        5,
        "activity",
        include_str!("migrations/postgres/0005_activity.sql"),
    ),
];

/// Advisory lock key serialising migrations of concurrently starting instances
/// ("enrollhk" in ASCII). Enrollment lock keys use the two-int form, so they
/// never collide with this one.
const MIGRATION_LOCK: i64 = 0x656e_726f_6c6c_686b;

/// Writer tasks by default: PostgreSQL commits several transactions in parallel.
pub const DEFAULT_WRITERS: usize = 2;
/// How often a batch is retried after a deadlock or serialization failure.
const MAX_RETRIES: u32 = 5;
/// How long a delivery waits for a connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
    writers: usize,
}

/// PostgreSQL keeps microseconds and rounds; we truncate, as the SQLite store does.
fn us(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

fn us_opt(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.map(us)
}

const ENROLLMENT_COLUMNS: &str = "source, enrollment_id, user_id, email, first_name, last_name, \
    course_id, course_name, progress, trial, completed, activated_at, started_at, completed_at, \
    expiry_date, created_at, updated_at, event_count, v_updated_at, v_created_at, v_event_id";

pub(super) const EVENT_COLUMNS: &str = "seq, source, event_id, topic, created_at, received_at, enrollment_id, body, pruned_at, \
     txid::text AS txid_text";

fn enrollment_from_row(row: &PgRow) -> Result<Enrollment> {
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

fn quarantine_from_row(row: &PgRow) -> Result<QuarantineRecord> {
    let headers: sqlx::types::Json<Vec<(String, String)>> = row.try_get("headers")?;
    Ok(QuarantineRecord {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        received_at: row.try_get("received_at")?,
        reason_code: row.try_get("reason_code")?,
        reason: row.try_get("reason")?,
        headers: headers.0,
        body: row.try_get("body")?,
        body_size: row.try_get("body_size")?,
        resolved_at: row.try_get("resolved_at")?,
        resolution: row.try_get("resolution")?,
    })
}

/// The advisory lock of one enrollment: `(hash of source, enrollment id folded
/// to 32 bits)`. A collision only serialises two unrelated enrollments. The hash
/// must stay stable across versions: instances of different versions share locks.
fn enrollment_lock(source: &str, enrollment_id: i64) -> (i32, i32) {
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in source.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let folded = (enrollment_id as u64 ^ (enrollment_id as u64 >> 32)) as u32;
    (h as i32, folded as i32)
}

/// Deadlocks and serialization failures: the batch did nothing and can be retried.
fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01" | "40001"))
        }
        _ => false,
    }
}

impl PostgresStore {
    /// The feed shows rows of transactions older than every transaction still
    /// running in this database (`pg_snapshot_xmin` alone would also wait for
    /// transactions of other databases on the same server).
    const FEED_HORIZON: &str = " AND txid < COALESCE(
        (SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
         WHERE xid(x) IN (SELECT backend_xid FROM pg_stat_activity
                          WHERE datname = current_database() AND backend_xid IS NOT NULL)),
        pg_snapshot_xmax(pg_current_snapshot()))";

    pub(super) fn writer(&self) -> &PgPool {
        &self.writer
    }

    pub(super) fn reader(&self) -> &PgPool {
        &self.reader
    }

    /// Connects to `url` (`postgres://user@host/db`), running migrations unless told not to.
    pub async fn open(url: &str, migrate: bool) -> Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("enrollhook")
            // Belt and braces: no session can sit in an open transaction for long,
            // whatever happens to the process that opened it.
            .options([("idle_in_transaction_session_timeout", "60s")])
            // Plan each statement for its actual arguments. A cached generic plan
            // is made while the tables are still empty (for the batch's enrollment
            // lookup: a sequential scan and a hash join) and kept by a pooled
            // connection for hours: measured 2 ms per batch instead of 0.3 ms.
            .options([("plan_cache_mode", "force_custom_plan")]);
        let writers = DEFAULT_WRITERS;
        let writer = PgPoolOptions::new()
            .max_connections(writers as u32 + 3)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let reader = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let store = PostgresStore {
            writer,
            reader,
            writers,
        };
        store.migrate(migrate).await?;
        Ok(store)
    }

    /// Applies missing migrations in one transaction, under an advisory lock so
    /// that instances starting together migrate once.
    async fn migrate(&self, apply: bool) -> Result<()> {
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        let mut tx = self.writer.begin().await?;
        if apply {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS enrollhook_migrations (
                    version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)",
            )
            .execute(&mut *tx)
            .await?;
        }
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('enrollhook_migrations') IS NOT NULL")
                .fetch_one(&mut *tx)
                .await?;
        let current: i64 = if exists {
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM enrollhook_migrations")
                .fetch_one(&mut *tx)
                .await?
        } else {
            0
        };
        if current > latest {
            return Err(StoreError::Migrate(format!(
                "the database schema is at version {current}, newer than this enrollhook knows ({latest}): upgrade enrollhook"
            )));
        }
        if current == latest {
            return Ok(());
        }
        if !apply {
            return Err(StoreError::Migrate(format!(
                "the database schema is at version {current}, this enrollhook needs {latest}: run `enrollhook migrate` (or start without --no-migrate)"
            )));
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Migrate(format!("migration {version} ({name}): {e}")))?;
            sqlx::query(
                "INSERT INTO enrollhook_migrations (version, name, applied_at) VALUES ($1, $2, now())",
            )
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            tracing::info!(version, name, "applying PostgreSQL migration");
        }
        tx.commit().await?;
        Ok(())
    }

    async fn try_append(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
        let mut conn: PoolConnection<Postgres> = self.writer.acquire().await?;
        let result = append_on(&mut conn, events).await;
        if let Err(e) = &result
            && !is_retryable(e)
        {
            // The connection may be broken (the database went away): do not reuse it.
            conn.close_on_drop();
        }
        result
    }
}

/// One batch, one transaction (see the module comment for the locking order).
async fn append_on(conn: &mut PgConnection, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
    let mut outcomes = vec![AppendOutcome::Duplicate; events.len()];
    // The first occurrence of each (source, event id) is the one inserted, in
    // sorted order; later occurrences in the batch are duplicates.
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| {
        (&events[a].source, &events[a].event_id).cmp(&(&events[b].source, &events[b].event_id))
    });
    order.dedup_by(|b, a| {
        events[*a].source == events[*b].source && events[*a].event_id == events[*b].event_id
    });

    let mut tx = conn.begin().await?;
    let sources: Vec<String> = order.iter().map(|&i| events[i].source.clone()).collect();
    let ids: Vec<String> = order.iter().map(|&i| events[i].event_id.clone()).collect();
    let topics: Vec<String> = order.iter().map(|&i| events[i].topic.clone()).collect();
    let created: Vec<Option<DateTime<Utc>>> = order
        .iter()
        .map(|&i| us_opt(events[i].created_at))
        .collect();
    let received: Vec<DateTime<Utc>> = order.iter().map(|&i| us(events[i].received_at)).collect();
    let enrollment_ids: Vec<Option<i64>> =
        order.iter().map(|&i| events[i].enrollment_id()).collect();
    let bodies: Vec<&str> = order.iter().map(|&i| events[i].body.as_str()).collect();
    let positions: Vec<i32> = order.iter().map(|&i| i as i32).collect();
    // Sequence numbers follow the input (arrival) order; rows are inserted in
    // key order, so concurrent batches wait on each other's keys in one order.
    let inserted: Vec<(String, String, i64)> = sqlx::query_as(
        "WITH input AS (
             SELECT nextval('events_seq_seq') AS seq, source, event_id, topic, created_at,
                    received_at, enrollment_id, body
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::timestamptz[], $6::bigint[], $7::text[], $8::int4[])
                  AS u(source, event_id, topic, created_at, received_at, enrollment_id, body, pos)
             ORDER BY pos)
         INSERT INTO events (seq, source, event_id, topic, created_at, received_at, enrollment_id, body)
         OVERRIDING SYSTEM VALUE
         SELECT * FROM input ORDER BY source, event_id
         ON CONFLICT (source, event_id) DO NOTHING
         RETURNING source, event_id, seq",
    )
    .bind(&sources)
    .bind(&ids)
    .bind(&topics)
    .bind(&created)
    .bind(&received)
    .bind(&enrollment_ids)
    .bind(&bodies)
    .bind(&positions)
    .fetch_all(&mut *tx)
    .await?;
    let seqs: HashMap<(String, String), i64> = inserted
        .into_iter()
        .map(|(source, event_id, seq)| ((source, event_id), seq))
        .collect();

    // New enrollment events, grouped by enrollment in sorted order.
    let mut touched: BTreeMap<(&str, i64), Vec<&EnrollmentEvent>> = BTreeMap::new();
    for &i in &order {
        let ev = &events[i];
        let Some(&seq) = seqs.get(&(ev.source.clone(), ev.event_id.clone())) else {
            continue;
        };
        outcomes[i] = AppendOutcome::Stored { seq };
        if let Some(enrollment) = &ev.enrollment {
            touched
                .entry((ev.source.as_str(), enrollment.payload.id))
                .or_default()
                .push(enrollment);
        }
    }
    if !touched.is_empty() {
        let next = project(&mut tx, &touched).await?;
        upsert_enrollments(&mut tx, &next).await?;
    }
    // Forwarding: the outbox rows commit with their events, or not at all.
    let subscriptions = postgres_forward::enabled_subscriptions(&mut tx).await?;
    if !subscriptions.is_empty() {
        let stored: Vec<(&NewEvent, i64)> = events
            .iter()
            .zip(&outcomes)
            .filter_map(|(ev, o)| match o {
                AppendOutcome::Stored { seq } => Some((ev, *seq)),
                AppendOutcome::Duplicate => None,
            })
            .collect();
        postgres_forward::enqueue(&mut tx, &subscriptions, &stored).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Locks the touched enrollments and computes their new state.
async fn project(
    tx: &mut PgConnection,
    touched: &BTreeMap<(&str, i64), Vec<&EnrollmentEvent>>,
) -> Result<Vec<Enrollment>> {
    let mut locks: Vec<(i32, i32)> = touched
        .keys()
        .map(|(source, id)| enrollment_lock(source, *id))
        .collect();
    locks.sort_unstable();
    locks.dedup();
    let (k1, k2): (Vec<i32>, Vec<i32>) = locks.into_iter().unzip();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k1, k2)
         FROM unnest($1::int4[], $2::int4[]) AS k(k1, k2) ORDER BY k1, k2",
    )
    .bind(&k1)
    .bind(&k2)
    .execute(&mut *tx)
    .await?;

    let (sources, ids): (Vec<&str>, Vec<i64>) = touched.keys().copied().unzip();
    // FOR UPDATE also waits for a running `rebuild` (it locks the table).
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments
         WHERE (source, enrollment_id) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))
         FOR UPDATE"
    )))
    .bind(&sources)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut current: HashMap<(String, i64), Enrollment> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let e = enrollment_from_row(row)?;
        current.insert((e.source.clone(), e.enrollment_id), e);
    }

    let mut next = Vec::with_capacity(touched.len());
    for (&(source, id), new) in touched {
        let mut new: Vec<&EnrollmentEvent> = new.clone();
        new.sort_by_cached_key(|e| e.version());
        let state = current.remove(&(source.to_owned(), id));
        let all_newer = state
            .as_ref()
            .is_none_or(|s| new.first().is_some_and(|e| e.version() > s.version));
        let folded = if all_newer {
            // Each event is newer than the last: stepping equals a full fold.
            new.iter()
                .fold(state, |s, e| Some(projection::step(s, source, e)))
        } else {
            // A late event: re-fold from the log (which holds this batch's events too).
            refold(tx, source, id).await?.1
        };
        next.extend(folded);
    }
    Ok(next)
}

async fn upsert_enrollments(tx: &mut PgConnection, rows: &[Enrollment]) -> Result<()> {
    fn col<T>(rows: &[Enrollment], f: impl Fn(&Enrollment) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    sqlx::query(concat!(
        "INSERT INTO enrollments (",
        enrollment_write_columns!(),
        ")
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
            $6::text[], $7::bigint[], $8::text[], $9::float8[], $10::bool[], $11::bool[],
            $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
            $16::timestamptz[], $17::timestamptz[], $18::float8[], $19::bigint[],
            $20::timestamptz[], $21::timestamptz[], $22::text[])
         ",
        enrollment_upsert_on_conflict!()
    ))
    .bind(col(rows, |e| e.source.clone()))
    .bind(col(rows, |e| e.enrollment_id))
    .bind(col(rows, |e| e.user_id))
    .bind(col(rows, |e| e.email.clone()))
    .bind(col(rows, |e| e.first_name.clone()))
    .bind(col(rows, |e| e.last_name.clone()))
    .bind(col(rows, |e| e.course_id))
    .bind(col(rows, |e| e.course_name.clone()))
    .bind(col(rows, |e| e.progress))
    .bind(col(rows, |e| e.trial))
    .bind(col(rows, |e| e.completed))
    .bind(col(rows, |e| us_opt(e.activated_at)))
    .bind(col(rows, |e| us_opt(e.started_at)))
    .bind(col(rows, |e| us_opt(e.completed_at)))
    .bind(col(rows, |e| us_opt(e.expiry_date)))
    .bind(col(rows, |e| us_opt(e.created_at)))
    .bind(col(rows, |e| us_opt(e.updated_at)))
    .bind(col(rows, Enrollment::days_to_complete))
    .bind(col(rows, |e| e.event_count))
    .bind(col(rows, |e| us_opt(e.version.updated_at)))
    .bind(col(rows, |e| us_opt(e.version.created_at)))
    .bind(col(rows, |e| e.version.event_id.clone()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn load_enrollment(
    conn: &mut PgConnection,
    source: &str,
    enrollment_id: i64,
) -> Result<Option<Enrollment>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE source = $1 AND enrollment_id = $2"
    )))
    .bind(source)
    .bind(enrollment_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(enrollment_from_row).transpose()
}

/// Folds every logged event of one enrollment: the slow path for late events,
/// and what `rebuild` does for every enrollment.
async fn refold(
    conn: &mut PgConnection,
    source: &str,
    enrollment_id: i64,
) -> Result<(usize, Option<Enrollment>)> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT topic, event_id, body FROM events WHERE source = $1 AND enrollment_id = $2",
    )
    .bind(source)
    .bind(enrollment_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for (topic, event_id, body) in &rows {
        events.extend(enrollment_event_from_log(topic, event_id, body)?);
    }
    Ok((rows.len(), projection::fold(source, events)))
}

fn push_status_filter(q: &mut QueryBuilder<Postgres>, status: Status, now: DateTime<Utc>) {
    match status {
        Status::Completed => {
            q.push(" AND completed");
        }
        Status::Expired => {
            q.push(" AND NOT completed AND expiry_date < ")
                .push_bind(now);
        }
        Status::Trial | Status::Active => {
            q.push(" AND NOT completed AND (expiry_date IS NULL OR expiry_date >= ")
                .push_bind(now)
                .push(") AND trial = ")
                .push_bind(status == Status::Trial);
        }
    }
}

fn parse_cursor_i64(part: &str) -> Result<i64> {
    part.parse()
        .map_err(|_| StoreError::Invalid("invalid cursor".into()))
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn writers(&self) -> usize {
        self.writers
    }

    async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
        let mut attempt = 0;
        loop {
            match self.try_append(events).await {
                Err(e) if is_retryable(&e) && attempt < MAX_RETRIES => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "batch conflicted with another instance; retrying");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                result => return result,
            }
        }
    }

    async fn prune_events(&self, cutoff: DateTime<Utc>) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        // Rounds of a few thousand events, each its own short transaction; the
        // retention row is locked, so instances pruning at once take turns.
        loop {
            let mut tx = self.writer.begin().await?;
            let from: i64 =
                sqlx::query_scalar("SELECT pruned_through_seq FROM retention FOR UPDATE")
                    .fetch_one(&mut *tx)
                    .await?;
            // seq follows arrival, so the events before the cutoff are a prefix.
            let through: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM (SELECT seq, received_at FROM events WHERE seq > $1
                                       ORDER BY seq LIMIT $2) AS oldest WHERE received_at < $3",
            )
            .bind(from)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
            let Some(through) = through else { break };
            let done = sqlx::query(
                "UPDATE events SET body = '', pruned_at = now()
                 WHERE seq > $1 AND seq <= $2 AND enrollment_id IS NULL AND pruned_at IS NULL",
            )
            .bind(from)
            .bind(through)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE retention SET pruned_through_seq = $1")
                .bind(through)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            report.events += done.rows_affected();
        }
        loop {
            let done = sqlx::query(
                "DELETE FROM delivery_attempts WHERE attempted_at < $1 AND id IN
                    (SELECT id FROM delivery_attempts ORDER BY id LIMIT $2)",
            )
            .bind(cutoff)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .execute(&self.writer)
            .await?;
            report.delivery_attempts += done.rows_affected();
            if done.rows_affected() == 0 {
                break;
            }
        }
        loop {
            let done = sqlx::query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                    WHERE state <> 'pending' AND finished_at < $1 LIMIT $2)",
            )
            .bind(cutoff)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .execute(&self.writer)
            .await?;
            report.deliveries += done.rows_affected();
            if (done.rows_affected() as i64) < PRUNE_EVENTS_PER_ROUND {
                break;
            }
        }
        Ok(report)
    }

    async fn quarantine(&self, r: NewQuarantine) -> Result<i64> {
        let id = sqlx::query_scalar(
            "INSERT INTO quarantine (source, received_at, reason_code, reason, headers, body, body_size)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&r.source)
        .bind(us(r.received_at))
        .bind(&r.reason_code)
        .bind(&r.reason)
        .bind(sqlx::types::Json(&r.headers))
        .bind(&r.body)
        .bind(r.body.len() as i64)
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
    }

    async fn import_quarantine(&self, r: &QuarantineRecord) -> Result<bool> {
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO quarantine (source, received_at, reason_code, reason, headers, body,
                body_size, resolved_at, resolution)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
             WHERE NOT EXISTS (SELECT 1 FROM quarantine
                 WHERE source = $1 AND received_at = $2 AND reason_code = $3 AND body = $6)
             RETURNING id",
        )
        .bind(&r.source)
        .bind(us(r.received_at))
        .bind(&r.reason_code)
        .bind(&r.reason)
        .bind(sqlx::types::Json(&r.headers))
        .bind(&r.body)
        .bind(r.body_size)
        .bind(us_opt(r.resolved_at))
        .bind(&r.resolution)
        .fetch_optional(&self.writer)
        .await?;
        Ok(inserted.is_some())
    }

    async fn prune_quarantine(&self, keep: u64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM quarantine WHERE id <= (SELECT id FROM quarantine ORDER BY id DESC LIMIT 1 OFFSET $1)",
        )
        .bind(keep as i64)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn list_quarantine(
        &self,
        source: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<QuarantineRecord>> {
        let before = match &page.cursor {
            Some(c) => parse_cursor_i64(&decode_cursor(c, 1)?[0])?,
            None => i64::MAX,
        };
        // Newest first: that is what an operator looks for.
        let rows = sqlx::query(
            "SELECT * FROM quarantine WHERE id < $1 AND ($2::text IS NULL OR source = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(before)
        .bind(source)
        .bind(i64::from(page.limit) + 1)
            .fetch_all(&self.reader)
            .await?;
        let mut items = rows
            .iter()
            .map(quarantine_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = (items.len() > page.limit as usize).then(|| {
            items.truncate(page.limit as usize);
            encode_cursor(&[&items.last().expect("non-empty").id.to_string()])
        });
        Ok(Page { items, next_cursor })
    }

    async fn get_quarantine(&self, id: i64) -> Result<Option<QuarantineRecord>> {
        let row = sqlx::query("SELECT * FROM quarantine WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(quarantine_from_row).transpose()
    }

    async fn resolve_quarantine(&self, id: i64, resolution: &str) -> Result<()> {
        sqlx::query("UPDATE quarantine SET resolved_at = $1, resolution = $2 WHERE id = $3")
            .bind(us(Utc::now()))
            .bind(resolution)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn list_enrollments(
        &self,
        f: &EnrollmentFilter,
        page: &PageRequest,
        now: DateTime<Utc>,
    ) -> Result<Page<Enrollment>> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE true"
        ));
        if let Some(s) = &f.source {
            q.push(" AND source = ").push_bind(s.clone());
        }
        if let Some(c) = f.course_id {
            q.push(" AND course_id = ").push_bind(c);
        }
        if let Some(u) = f.user_id {
            q.push(" AND user_id = ").push_bind(u);
        }
        if let Some(e) = &f.email {
            q.push(" AND email = ").push_bind(e.clone());
        }
        if let Some(t) = f.updated_after {
            q.push(" AND updated_at > ").push_bind(us(t));
        }
        if let Some(s) = f.status {
            push_status_filter(&mut q, s, now);
        }
        if let Some(c) = &page.cursor {
            let parts = decode_cursor(c, 2)?;
            let id = parse_cursor_i64(&parts[1])?;
            q.push(" AND (source, enrollment_id) > (")
                .push_bind(parts[0].clone())
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY source, enrollment_id LIMIT ")
            .push_bind(i64::from(page.limit) + 1);
        let rows = q.build().fetch_all(&self.reader).await?;
        let mut items = rows
            .iter()
            .map(enrollment_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = (items.len() > page.limit as usize).then(|| {
            items.truncate(page.limit as usize);
            let last = items.last().expect("non-empty");
            encode_cursor(&[&last.source, &last.enrollment_id.to_string()])
        });
        Ok(Page { items, next_cursor })
    }

    async fn get_enrollment(&self, source: &str, enrollment_id: i64) -> Result<Option<Enrollment>> {
        let mut conn = self.reader.acquire().await?;
        load_enrollment(&mut conn, source, enrollment_id).await
    }

    async fn enrollment_events(
        &self,
        source: &str,
        enrollment_id: i64,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE source = $1 AND enrollment_id = $2 ORDER BY seq"
        )))
        .bind(source)
        .bind(enrollment_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn course_stats(
        &self,
        source: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CourseStats>> {
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT source, course_id, MAX(course_name) AS name, COUNT(*) AS enrollments,
                COUNT(*) FILTER (WHERE completed) AS completed,
                COUNT(*) FILTER (WHERE NOT completed AND expiry_date < ",
        );
        q.push_bind(now)
            .push(") AS expired, COUNT(*) FILTER (WHERE NOT completed AND trial AND (expiry_date IS NULL OR expiry_date >= ")
            .push_bind(now)
            .push(
                ")) AS trial, AVG(progress) AS average_progress,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY days_to_complete) AS median_days
             FROM enrollments WHERE course_id IS NOT NULL",
            );
        if let Some(s) = source {
            q.push(" AND source = ").push_bind(s.to_owned());
        }
        q.push(" GROUP BY source, course_id ORDER BY source, course_id");
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter()
            .map(|row| {
                let enrollments: i64 = row.try_get("enrollments")?;
                let completed: i64 = row.try_get("completed")?;
                let expired: i64 = row.try_get("expired")?;
                let trial: i64 = row.try_get("trial")?;
                Ok(CourseStats {
                    source: row.try_get("source")?,
                    course_id: row.try_get("course_id")?,
                    name: row.try_get("name")?,
                    enrollments,
                    active: enrollments - completed - expired - trial,
                    trial,
                    completed,
                    expired,
                    completion_rate: completed as f64 / enrollments.max(1) as f64,
                    average_progress: row.try_get("average_progress")?,
                    median_days_to_complete: row.try_get("median_days")?,
                })
            })
            .collect()
    }

    async fn activity(&self, query: &ActivityQuery) -> Result<Vec<DayActivity>> {
        let start = query.from.and_time(NaiveTime::MIN).and_utc();
        let end = (query.to + chrono::Days::new(1))
            .and_time(NaiveTime::MIN)
            .and_utc();
        // One range scan per index (migration 0005); the expressions match theirs.
        let mut q = QueryBuilder::<Postgres>::new("");
        for (i, (at, only)) in [
            ("COALESCE(created_at, activated_at, started_at)", "true"),
            ("completed_at", "completed"),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push(format!(
                "SELECT {i} AS kind, ({at} AT TIME ZONE 'UTC')::date AS day, COUNT(*) AS n
                 FROM enrollments WHERE {only} AND {at} >= "
            ))
            .push_bind(start)
            .push(format!(" AND {at} < "))
            .push_bind(end);
            if let Some(s) = &query.source {
                q.push(" AND source = ").push_bind(s.clone());
            }
            if let Some(c) = query.course_id {
                q.push(" AND course_id = ").push_bind(c);
            }
            q.push(" GROUP BY 2");
        }
        let mut counted: HashMap<NaiveDate, (i64, i64)> = HashMap::new();
        for row in q.build().fetch_all(&self.reader).await? {
            let (kind, day, n): (i32, NaiveDate, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let counts = counted.entry(day).or_default();
            if kind == 0 {
                counts.0 = n;
            } else {
                counts.1 = n;
            }
        }
        Ok(every_day(
            query.from,
            query.to,
            counted.into_iter().map(|(day, (e, c))| (day, e, c)),
        ))
    }

    async fn list_events(&self, f: &EventFilter, page: &PageRequest) -> Result<Page<StoredEvent>> {
        let mut q =
            QueryBuilder::<Postgres>::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE true"));
        if let Some(s) = &f.source {
            q.push(" AND source = ").push_bind(s.clone());
        }
        if let Some(t) = &f.topic {
            match t.strip_suffix(".*") {
                // `enrollment.*`: every topic of the resource, as a range so the index serves it.
                Some(resource) => {
                    q.push(" AND topic >= ")
                        .push_bind(format!("{resource}."))
                        .push(" AND topic < ")
                        .push_bind(format!("{resource}/"));
                }
                None => {
                    q.push(" AND topic = ").push_bind(t.clone());
                }
            }
        }
        if let Some(after) = f.after_seq {
            q.push(" AND seq > ").push_bind(after);
        }
        // Commit order, not seq order (see migration 0004): page by (txid, seq)
        // and stop before the oldest transaction still running.
        if let Some(c) = &page.cursor {
            let parts = decode_cursor(c, 2)?;
            let txid = parse_cursor_i64(&parts[0])?;
            let seq = parse_cursor_i64(&parts[1])?;
            q.push(" AND (txid, seq) > (")
                .push_bind(txid.to_string())
                .push("::xid8, ")
                .push_bind(seq)
                .push(")");
        }
        q.push(Self::FEED_HORIZON);
        q.push(" ORDER BY txid, seq LIMIT ")
            .push_bind(i64::from(page.limit) + 1);
        let rows = q.build().fetch_all(&self.reader).await?;
        let mut items = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = (items.len() > page.limit as usize).then(|| {
            items.truncate(page.limit as usize);
            items.last().expect("non-empty").position.clone()
        });
        Ok(Page { items, next_cursor })
    }

    async fn get_event(&self, source: &str, event_id: &str) -> Result<Option<StoredEvent>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE source = $1 AND event_id = $2"
        )))
        .bind(source)
        .bind(event_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn rebuild_projection(&self, dry_run: bool) -> Result<RebuildReport> {
        let mut tx = self.writer.begin().await?;
        if dry_run {
            // One consistent snapshot of events and projection; blocks nobody.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        } else {
            // Deliveries of every instance wait (they do not fail) while it runs:
            // their `SELECT … FOR UPDATE` conflicts with this lock; readers do not.
            sqlx::query("LOCK TABLE enrollments IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let mut report = RebuildReport::default();
        let mut last: (String, i64) = (String::new(), i64::MIN);
        loop {
            let keys: Vec<(String, i64)> = sqlx::query_as(
                "SELECT DISTINCT source, enrollment_id FROM events
                 WHERE enrollment_id IS NOT NULL AND (source, enrollment_id) > ($1, $2)
                 ORDER BY source, enrollment_id LIMIT 1000",
            )
            .bind(&last.0)
            .bind(last.1)
            .fetch_all(&mut *tx)
            .await?;
            let Some(tail) = keys.last().cloned() else {
                break;
            };
            let mut changed = Vec::new();
            for (source, id) in keys {
                let (n, folded) = refold(&mut tx, &source, id).await?;
                report.events += n as u64;
                let Some(folded) = folded else { continue };
                report.enrollments += 1;
                let stored = load_enrollment(&mut tx, &source, id).await?;
                if stored.as_ref() != Some(&folded) {
                    report.changed += 1;
                    changed.push(folded);
                }
            }
            if !dry_run && !changed.is_empty() {
                upsert_enrollments(&mut tx, &changed).await?;
            }
            last = tail;
        }
        let orphan_sql = "FROM enrollments AS e WHERE NOT EXISTS (
            SELECT 1 FROM events AS v WHERE v.source = e.source AND v.enrollment_id = e.enrollment_id)";
        let removed: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {orphan_sql}")))
                .fetch_one(&mut *tx)
                .await?;
        report.removed = removed as u64;
        if dry_run {
            tx.rollback().await?;
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE {orphan_sql}")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(report)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
