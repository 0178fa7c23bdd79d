//! The group-commit write path on SQLite: a whole batch in one call, on a
//! thread of its own with its own connection (rusqlite).
//!
//! Through sqlx every statement is a hand-off to sqlx's SQLite worker thread
//! and back (~50 µs each with both cores busy, measured), and a batch takes a
//! dozen statements. Here a batch is one hand-off: its statements run back to
//! back in-process, prepared once and cached. The connection is only used
//! while the store's write lock is held, so it never contends with the store's
//! other (sqlx) write connection.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::sqlite::{ENROLLMENT_UPSERT_ON_CONFLICT, fmt_ts, ts};
use super::sqlite_courses::{self, EXPIRIES_UPSERT, TOTALS_UPSERT};
use super::*;
use crate::forward::subscription::Subscription;
use crate::projection::{self, Apply, Enrollment, EnrollmentEvent, Version};

/// Sends batches to the writer thread; the thread ends when this is dropped.
pub(super) struct BatchWriter {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    events: Vec<NewEvent>,
    subscriptions: Arc<Subscriptions>,
    reply: oneshot::Sender<Result<Batch>>,
}

/// The enabled subscriptions the batch's events are matched against, read
/// through sqlx before the batch, with what identifies that set.
pub(super) struct Subscriptions {
    pub enabled: Vec<Subscription>,
    pub fingerprint: SubscriptionsFingerprint,
}

/// (how many are enabled, the latest change among them): if another process
/// changed the subscriptions between the read and the batch, they differ.
pub(super) type SubscriptionsFingerprint = (i64, Option<String>);

pub(super) const SUBSCRIPTIONS_FINGERPRINT: &str =
    "SELECT COUNT(*), MAX(updated_at) FROM subscriptions WHERE enabled = 1";

/// What the writer thread did with a batch.
pub(super) enum Batch {
    Committed(Vec<AppendOutcome>),
    /// The subscriptions changed meanwhile: nothing was written; read them again.
    SubscriptionsChanged,
}

impl BatchWriter {
    pub(super) fn open(path: &Path) -> Result<BatchWriter> {
        let conn = connect(path).map_err(write_error)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-batch".into())
            .spawn(move || {
                let mut conn = conn;
                for job in queue {
                    let result = append(&mut conn, &job.events, &job.subscriptions);
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the SQLite writer: {e}")))?;
        Ok(BatchWriter { jobs })
    }

    /// Stores a batch in one transaction (see [`Store::append_batch`]).
    pub(super) async fn append(
        &self,
        events: Vec<NewEvent>,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Batch> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Invalid("the SQLite writer thread has stopped".into());
        self.jobs
            .send(Job {
                events,
                subscriptions,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn write_error(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

/// The same settings as the sqlx connections: WAL, `synchronous=FULL` (a
/// commit survives power loss), a busy timeout, checkpoints mostly left to
/// the background checkpointer.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        super::sqlite::WAL_AUTOCHECKPOINT_BACKSTOP,
    )?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn append(conn: &mut Connection, events: &[NewEvent], subs: &Subscriptions) -> Result<Batch> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write_error)?;
    let fingerprint: SubscriptionsFingerprint = tx
        .prepare_cached(SUBSCRIPTIONS_FINGERPRINT)
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(write_error)?;
    if fingerprint != subs.fingerprint {
        return Ok(Batch::SubscriptionsChanged); // rolled back on drop: nothing written
    }
    let outcomes = insert_events(&tx, events).map_err(write_error)?;
    let stored = || {
        events.iter().zip(&outcomes).filter_map(|(ev, o)| match o {
            AppendOutcome::Stored { seq } => Some((ev, *seq)),
            AppendOutcome::Duplicate => None,
        })
    };
    project(&tx, stored().map(|(ev, _)| ev))?;
    // Forwarding: the outbox rows commit with their events, or not at all.
    if !subs.enabled.is_empty() {
        let mut enqueue = tx
            .prepare_cached(
                "INSERT INTO outbox (subscription_id, event_seq, order_key, state, attempts,
                    next_attempt_at, created_at)
                 VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4)
                 ON CONFLICT (subscription_id, event_seq) DO NOTHING",
            )
            .map_err(write_error)?;
        for (ev, seq) in stored() {
            for s in subs
                .enabled
                .iter()
                .filter(|s| s.matches(&ev.source, &ev.topic, ev.course_id))
            {
                enqueue
                    .execute(params![s.id, seq, ev.order_key(), fmt_ts(&ev.received_at)])
                    .map_err(write_error)?;
            }
        }
    }
    tx.commit().map_err(write_error)?;
    Ok(Batch::Committed(outcomes))
}

/// Inserts each (source, event id) once: a later copy, in the log or earlier
/// in the batch, is a duplicate.
fn insert_events(conn: &Connection, events: &[NewEvent]) -> rusqlite::Result<Vec<AppendOutcome>> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (source, event_id, topic, created_at, received_at, enrollment_id, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (source, event_id) DO NOTHING RETURNING seq",
    )?;
    events
        .iter()
        .map(|ev| {
            let seq: Option<i64> = insert
                .query_row(
                    params![
                        ev.source,
                        ev.event_id,
                        ev.topic,
                        ts(ev.created_at),
                        fmt_ts(&ev.received_at),
                        ev.enrollment_id(),
                        ev.body
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(
                seq.map_or(AppendOutcome::Duplicate, |seq| AppendOutcome::Stored {
                    seq,
                }),
            )
        })
        .collect()
}

/// Applies newly stored events (in arrival order) to the projection and the
/// course totals. An enrollment that receives a late event is re-folded from
/// the log instead, after the whole batch is in the log (the rules do not
/// depend on order, so this is what one event at a time gives).
fn project<'a>(conn: &Connection, stored: impl Iterator<Item = &'a NewEvent>) -> Result<()> {
    let updates: Vec<(&str, &EnrollmentEvent)> = stored
        .filter_map(|ev| ev.enrollment.as_ref().map(|e| (ev.source.as_str(), e)))
        .collect();
    if updates.is_empty() {
        return Ok(());
    }
    let mut state: HashMap<(&str, i64), Enrollment> = HashMap::new();
    for (source, event) in &updates {
        let key = (*source, event.payload.id);
        if !state.contains_key(&key)
            && let Some(e) = load_enrollment(conn, key.0, key.1)?
        {
            state.insert(key, e);
        }
    }
    // What the course totals counted for these enrollments before the batch.
    let before = state.clone();

    let mut changed = HashSet::new();
    let mut late = HashSet::new();
    for (source, event) in updates {
        let key = (source, event.payload.id);
        if late.contains(&key) {
            continue; // the re-fold below includes this event
        }
        match projection::apply(state.get(&key), source, event) {
            Apply::Newer(next) => {
                state.insert(key, next);
                changed.insert(key);
            }
            Apply::Older => {
                late.insert(key);
            }
        }
    }
    for key in late {
        if let Some(folded) = refold(conn, key.0, key.1)? {
            state.insert(key, folded);
            changed.insert(key);
        }
    }
    let mut rows: Vec<&Enrollment> = changed.iter().filter_map(|k| state.get(k)).collect();
    rows.sort_unstable_by(|a, b| (&a.source, a.enrollment_id).cmp(&(&b.source, b.enrollment_id)));
    let changes: Vec<(Option<&Enrollment>, &Enrollment)> = rows
        .iter()
        .map(|row| (before.get(&(row.source.as_str(), row.enrollment_id)), *row))
        .collect();
    adjust_course_tables(conn, &changes).map_err(write_error)?;
    static UPSERT: OnceLock<String> = OnceLock::new();
    let sql = UPSERT.get_or_init(|| {
        format!(
            "INSERT INTO enrollments ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) {ENROLLMENT_UPSERT_ON_CONFLICT}",
            super::sqlite::ENROLLMENT_WRITE_COLUMNS
        )
    });
    let mut upsert = conn.prepare_cached(sql).map_err(write_error)?;
    for e in rows {
        upsert
            .execute(params![
                e.source,
                e.enrollment_id,
                e.user_id,
                e.email,
                e.first_name,
                e.last_name,
                e.course_id,
                e.course_name,
                e.progress,
                e.trial,
                e.completed,
                ts(e.activated_at),
                ts(e.started_at),
                ts(e.completed_at),
                ts(e.expiry_date),
                ts(e.created_at),
                ts(e.updated_at),
                e.days_to_complete(),
                e.event_count,
                ts(e.version.updated_at),
                ts(e.version.created_at),
                e.version.event_id,
            ])
            .map_err(write_error)?;
    }
    Ok(())
}

fn adjust_course_tables(
    conn: &Connection,
    changes: &[(Option<&Enrollment>, &Enrollment)],
) -> rusqlite::Result<()> {
    let deltas = sqlite_courses::deltas(changes);
    let mut totals = conn.prepare_cached(TOTALS_UPSERT)?;
    for ((source, course_id), d) in &deltas.totals {
        totals.execute(params![
            source,
            course_id,
            d.name,
            d.enrollments,
            d.completed,
            d.open_trials,
            d.progress_micros,
            d.with_days
        ])?;
    }
    let mut expiries = conn.prepare_cached(EXPIRIES_UPSERT)?;
    for ((source, course_id, month), (enrollments, trials)) in &deltas.expiries {
        expiries.execute(params![source, course_id, month, enrollments, trials])?;
    }
    Ok(())
}

fn load_enrollment(conn: &Connection, source: &str, id: i64) -> Result<Option<Enrollment>> {
    static SELECT: OnceLock<String> = OnceLock::new();
    let sql = SELECT.get_or_init(|| {
        format!(
            "SELECT {} FROM enrollments WHERE source = ?1 AND enrollment_id = ?2",
            super::sqlite::ENROLLMENT_COLUMNS
        )
    });
    let mut select = conn.prepare_cached(sql).map_err(write_error)?;
    select
        .query_row(params![source, id], enrollment_from_row)
        .optional()
        .map_err(write_error)
}

/// Folds every logged event of one enrollment (for late events).
fn refold(conn: &Connection, source: &str, id: i64) -> Result<Option<Enrollment>> {
    let mut select = conn
        .prepare_cached(
            "SELECT topic, event_id, body FROM events WHERE source = ?1 AND enrollment_id = ?2",
        )
        .map_err(write_error)?;
    let rows = select
        .query_map(params![source, id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(write_error)?;
    let mut events = Vec::new();
    for row in rows {
        let (topic, event_id, body) = row.map_err(write_error)?;
        events.extend(enrollment_event_from_log(&topic, &event_id, &body)?);
    }
    Ok(projection::fold(source, events))
}

/// A timestamp column (RFC 3339 text), as the sqlx reader parses it.
fn ts_col(row: &rusqlite::Row, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    idx,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })
    })
    .transpose()
}

/// A row of `SELECT {ENROLLMENT_COLUMNS}` (the order of that list).
fn enrollment_from_row(row: &rusqlite::Row) -> rusqlite::Result<Enrollment> {
    Ok(Enrollment {
        source: row.get(0)?,
        enrollment_id: row.get(1)?,
        user_id: row.get(2)?,
        email: row.get(3)?,
        first_name: row.get(4)?,
        last_name: row.get(5)?,
        course_id: row.get(6)?,
        course_name: row.get(7)?,
        progress: row.get(8)?,
        trial: row.get(9)?,
        completed: row.get(10)?,
        activated_at: ts_col(row, 11)?,
        started_at: ts_col(row, 12)?,
        completed_at: ts_col(row, 13)?,
        expiry_date: ts_col(row, 14)?,
        created_at: ts_col(row, 15)?,
        updated_at: ts_col(row, 16)?,
        event_count: row.get(17)?,
        version: Version {
            updated_at: ts_col(row, 18)?,
            created_at: ts_col(row, 19)?,
            event_id: row.get(20)?,
        },
    })
}
