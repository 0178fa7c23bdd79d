//! The SQLite write path on a thread of its own with its own connection
//! (rusqlite): group-commit batches of deliveries, and the projection that
//! follows them.
//!
//! Through sqlx every statement is a hand-off to sqlx's SQLite worker thread
//! and back (~50 µs each with both cores busy, measured), and a batch takes a
//! dozen statements. Here a batch is one hand-off: its statements run back to
//! back in-process, prepared once and cached. The thread writes only under the
//! store's write lock, so it never contends with the store's sqlx connection.
//!
//! Under load the log and the projection commit separately. A batch of
//! deliveries commits its events (and their outbox rows) and is answered; the
//! projection (enrollments and the course tables) follows a few milliseconds
//! behind, for many batches at once: once [`PROJECT_AT`] events wait,
//! [`PROJECT_AFTER`] after the first of them, or as soon as deliveries pause
//! for [`PROJECT_WHEN_IDLE`], in the next batch's transaction or in one of its
//! own. A course's totals and index pages are touched by nearly every batch,
//! so projecting many batches together writes each such page to the WAL once
//! instead of once per batch: committed WAL bytes per event about halve, and
//! events/s at 64 connections rise ~10 % (BENCHMARKS.md). A small batch
//! (little load, where latency matters more) is still projected in the
//! transaction that stores it.
//!
//! `projection_cursor.projected_through_seq`, written in the same transaction,
//! says how far the projection got. Every read of the projection first lets it
//! catch up ([`BatchWriter::catch_up`]): a client never misses its own
//! delivery. Events that another process appended, or that a crash left
//! unprojected, are read back from the log.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sqlx::sqlite::SqliteConnection;
use tokio::sync::oneshot;

use super::sqlite::{ENROLLMENT_UPSERT_ON_CONFLICT, fmt_ts, ts};
use super::sqlite_courses::{self, EXPIRIES_UPSERT, TOTALS_UPSERT};
use super::*;
use crate::forward::subscription::Subscription;
use crate::projection::{self, Apply, Enrollment, EnrollmentEvent, Version};

/// Project once this many stored events wait...
const PROJECT_AT: usize = 2_000;
/// ...or this long after the first of them was stored...
const PROJECT_AFTER: Duration = Duration::from_millis(10);
/// ...or when no batch came for this long.
const PROJECT_WHEN_IDLE: Duration = Duration::from_millis(1);
/// Batches smaller than this are projected in the transaction that stores them.
const PROJECT_INLINE_BELOW: usize = 16;
/// After a failed projection (say, a full disk), the wait before the next try.
const RETRY_PROJECTION_AFTER: Duration = Duration::from_secs(1);
/// Events read back from the log per projection transaction.
const LOG_EVENTS_PER_PROJECTION: i64 = 5_000;

/// The store's write lock (shared with its sqlx write connection).
pub(super) type WriteLock = Arc<tokio::sync::Mutex<SqliteConnection>>;

/// Sends work to the writer thread; the thread ends when this is dropped,
/// after projecting what it stored.
pub(super) struct BatchWriter {
    jobs: mpsc::Sender<Job>,
    /// How many stored events wait for the projection (kept by the thread).
    waiting: Arc<AtomicUsize>,
}

enum Job {
    Append {
        events: Vec<NewEvent>,
        subscriptions: Arc<Subscriptions>,
        reply: oneshot::Sender<Result<Batch>>,
    },
    CatchUp {
        reply: oneshot::Sender<Result<()>>,
    },
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
    pub(super) fn open(path: &Path, lock: WriteLock) -> Result<BatchWriter> {
        let conn = connect(path).map_err(write_error)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let pending = Pending {
            waiting: waiting.clone(),
            ..Pending::default()
        };
        std::thread::Builder::new()
            .name("sqlite-batch".into())
            .spawn(move || run(conn, queue, lock, pending))
            .map_err(|e| StoreError::Invalid(format!("cannot start the SQLite writer: {e}")))?;
        Ok(BatchWriter { jobs, waiting })
    }

    /// Whether this process has stored events the projection lacks. (Set
    /// before a delivery is answered, so a reader that saw its answer sees it.)
    pub(super) fn events_waiting(&self) -> bool {
        self.waiting() > 0
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Stores a batch of events in one transaction (see [`Store::append_batch`]);
    /// the projection follows shortly.
    pub(super) async fn append(
        &self,
        events: Vec<NewEvent>,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Batch> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Append {
            events,
            subscriptions,
            reply,
        })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Returns once every event stored so far (by any process) is projected.
    /// Must not be called with the write lock held: the thread takes it.
    pub(super) async fn catch_up(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::CatchUp { reply })?;
        answer.await.map_err(|_| stopped())?
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Invalid("the SQLite writer thread has stopped".into())
}

/// The writer thread: batches as they come, and the projection in between.
fn run(mut conn: Connection, queue: mpsc::Receiver<Job>, lock: WriteLock, mut pending: Pending) {
    loop {
        let job = match pending.deadline() {
            None => match queue.recv() {
                Ok(job) => Some(job),
                Err(mpsc::RecvError) => break,
            },
            Some(at) => match queue.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        match job {
            Some(Job::Append {
                events,
                subscriptions,
                reply,
            }) => {
                // Small batches (little load) are projected at once; larger
                // ones wait to be projected together.
                let inline =
                    pending.may_project() && (events.len() < PROJECT_INLINE_BELOW || pending.due());
                let result = {
                    let _write = lock.blocking_lock();
                    let mut result = append(
                        &mut conn,
                        &events,
                        &subscriptions,
                        inline.then_some(&pending),
                    );
                    if inline && let Err(e) = &result {
                        // Whatever kept the projection from applying, the
                        // deliveries are stored anyway; it is retried later.
                        tracing::error!(error = %e, "projecting stored events failed; retrying shortly");
                        pending.retry_later();
                        result = append(&mut conn, &events, &subscriptions, None);
                    }
                    result
                };
                let result = result.map(|(batch, projected)| {
                    if let Batch::Committed(outcomes) = &batch {
                        pending.stored(events, outcomes);
                    }
                    if let Some(upto) = projected {
                        pending.projected_through(upto);
                    }
                    batch
                });
                let _ = reply.send(result);
            }
            Some(Job::CatchUp { reply }) => {
                let _ = reply.send(catch_up(&mut conn, &lock, &mut pending));
                continue;
            }
            None => {}
        }
        if pending.due()
            && let Err(e) = project_pending(&mut conn, &lock, &mut pending)
        {
            tracing::error!(error = %e, "projecting stored events failed; retrying shortly");
            pending.retry_later();
        }
    }
    // Shutting down: project what this process stored, so that the next
    // start need not read it back from the log.
    if !pending.events.is_empty()
        && let Err(e) = catch_up(&mut conn, &lock, &mut pending)
    {
        tracing::warn!(error = %e, "stored events left unprojected; the next start projects them");
    }
}

/// Events this process stored that are not projected yet, in log order.
#[derive(Default)]
struct Pending {
    /// (seq, source, the enrollment event if it is one): every stored event,
    /// so that their number tells whether another process appended too.
    events: Vec<(i64, String, Option<EnrollmentEvent>)>,
    /// When the first of them was stored (or the last attempt failed).
    since: Option<Instant>,
    last_batch: Option<Instant>,
    /// After a failed projection: not again before this.
    not_before: Option<Instant>,
    /// `events.len()`, for readers on other threads.
    waiting: Arc<AtomicUsize>,
}

impl Pending {
    fn stored(&mut self, events: Vec<NewEvent>, outcomes: &[AppendOutcome]) {
        for (event, outcome) in events.into_iter().zip(outcomes) {
            if let AppendOutcome::Stored { seq } = outcome {
                self.events.push((*seq, event.source, event.enrollment));
            }
        }
        self.waiting.store(self.events.len(), Ordering::Release);
        let now = Instant::now();
        self.last_batch = Some(now);
        if !self.events.is_empty() {
            self.since.get_or_insert(now);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let since = self.since?;
        let idle = self.last_batch.map_or(since, |t| t + PROJECT_WHEN_IDLE);
        let at = (since + PROJECT_AFTER).min(idle);
        Some(self.not_before.map_or(at, |t| t.max(at)))
    }

    /// Not while backing off from a failed projection.
    fn may_project(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
    }

    fn due(&self) -> bool {
        self.may_project()
            && (self.events.len() >= PROJECT_AT
                || self.deadline().is_some_and(|t| Instant::now() >= t))
    }

    fn own(&self) -> Vec<OwnEvent<'_>> {
        self.events
            .iter()
            .map(|(seq, source, e)| (*seq, source.as_str(), e.as_ref()))
            .collect()
    }

    fn retry_later(&mut self) {
        self.not_before = Some(Instant::now() + RETRY_PROJECTION_AFTER);
    }

    /// Forgets the events up to `seq`, which are projected.
    fn projected_through(&mut self, seq: i64) {
        let done = self.events.partition_point(|(s, _, _)| *s <= seq);
        self.events.drain(..done);
        self.waiting.store(self.events.len(), Ordering::Release);
        self.not_before = None;
        if self.events.is_empty() {
            self.since = None;
        }
    }
}

/// Projects everything stored so far, in as many transactions as it takes.
fn catch_up(conn: &mut Connection, lock: &WriteLock, pending: &mut Pending) -> Result<()> {
    loop {
        if pending.events.is_empty() {
            // Without the write lock: usually nothing is waiting at all.
            let (through, head) = cursor_and_head(conn).map_err(write_error)?;
            if through >= head {
                return Ok(());
            }
        }
        if project_pending(conn, lock, pending)? {
            return Ok(());
        }
    }
}

/// (how far the projection got, the end of the log), for both drivers.
pub(super) const PROJECTION_CURSOR_AND_LOG_END: &str =
    "SELECT (SELECT projected_through_seq FROM projection_cursor),
            (SELECT COALESCE(MAX(seq), 0) FROM events)";

fn cursor_and_head(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.prepare_cached(PROJECTION_CURSOR_AND_LOG_END)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// One projection transaction of its own (see [`project_in_tx`]). Returns
/// whether the projection is now through the end of the log.
fn project_pending(conn: &mut Connection, lock: &WriteLock, pending: &mut Pending) -> Result<bool> {
    let _write = lock.blocking_lock();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write_error)?;
    let own = pending.own();
    let (upto, head) = project_in_tx(&tx, &own)?;
    tx.commit().map_err(write_error)?;
    pending.projected_through(upto);
    Ok(upto == head)
}

/// One of this process's stored events: (seq, source, its enrollment event).
type OwnEvent<'a> = (i64, &'a str, Option<&'a EnrollmentEvent>);

/// Projects the events after the cursor, inside `tx`: from memory when they
/// are all this process's own (`own`, in seq order), else read back from the
/// log (at most [`LOG_EVENTS_PER_PROJECTION`]). Returns (how far it
/// projected, the end of the log).
fn project_in_tx(tx: &Connection, own: &[OwnEvent]) -> Result<(i64, i64)> {
    let (through, head) = cursor_and_head(tx).map_err(write_error)?;
    if through >= head {
        return Ok((through, head));
    }
    let own: Vec<_> = own
        .iter()
        .filter(|(seq, _, _)| *seq > through && *seq <= head)
        .collect();
    // Seqs are not contiguous (a duplicate can use one up), so when they do
    // not add up, count what the log holds in between.
    let all_own = own.len() as i64 == head - through
        || !own.is_empty()
            && own.len() as i64
                == tx
                    .prepare_cached("SELECT COUNT(*) FROM events WHERE seq > ?1 AND seq <= ?2")
                    .and_then(|mut s| s.query_row([through, head], |r| r.get::<_, i64>(0)))
                    .map_err(write_error)?;
    let upto = if all_own {
        let events = own
            .iter()
            .filter_map(|(_, source, e)| e.map(|e| (*source, e)))
            .collect::<Vec<_>>();
        project(tx, &events, head)?;
        head
    } else {
        // Another process appended too, or a crash left events unprojected.
        let upto = head.min(through + LOG_EVENTS_PER_PROJECTION);
        let logged = logged_enrollment_events(tx, through, upto)?;
        let events = logged
            .iter()
            .map(|(s, e)| (s.as_str(), e))
            .collect::<Vec<_>>();
        project(tx, &events, upto)?;
        upto
    };
    tx.execute(
        "UPDATE projection_cursor SET projected_through_seq = ?1",
        [upto],
    )
    .map_err(write_error)?;
    Ok((upto, head))
}

/// The enrollment events of the log with `after < seq <= upto`, in order.
fn logged_enrollment_events(
    conn: &Connection,
    after: i64,
    upto: i64,
) -> Result<Vec<(String, EnrollmentEvent)>> {
    enrollment_events_from_log(
        conn,
        "SELECT source, topic, event_id, body FROM events
         WHERE seq > ?1 AND seq <= ?2 AND enrollment_id IS NOT NULL ORDER BY seq",
        params![after, upto],
    )
}

/// Runs `sql`, which selects (source, topic, event_id, body) from the log,
/// and parses each row's enrollment event.
fn enrollment_events_from_log(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(String, EnrollmentEvent)>> {
    let mut select = conn.prepare_cached(sql).map_err(write_error)?;
    let rows = select
        .query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(write_error)?;
    let mut events = Vec::new();
    for row in rows {
        let (source, topic, event_id, body) = row.map_err(write_error)?;
        if let Some(event) = enrollment_event_from_log(&topic, &event_id, &body)? {
            events.push((source, event));
        }
    }
    Ok(events)
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

/// Stores a batch; with `project`, the events waiting for the projection and
/// the batch's own are projected in the same transaction.
fn append(
    conn: &mut Connection,
    events: &[NewEvent],
    subs: &Subscriptions,
    project: Option<&Pending>,
) -> Result<(Batch, Option<i64>)> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write_error)?;
    let fingerprint: SubscriptionsFingerprint = tx
        .prepare_cached(SUBSCRIPTIONS_FINGERPRINT)
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(write_error)?;
    if fingerprint != subs.fingerprint {
        return Ok((Batch::SubscriptionsChanged, None)); // rolled back on drop: nothing written
    }
    let outcomes = insert_events(&tx, events).map_err(write_error)?;
    let stored = || {
        events.iter().zip(&outcomes).filter_map(|(ev, o)| match o {
            AppendOutcome::Stored { seq } => Some((ev, *seq)),
            AppendOutcome::Duplicate => None,
        })
    };
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
    let projected = match project {
        Some(pending) => {
            let mut own = pending.own();
            own.extend(stored().map(|(ev, seq)| (seq, ev.source.as_str(), ev.enrollment.as_ref())));
            Some(project_in_tx(&tx, &own)?.0)
        }
        None => None,
    };
    tx.commit().map_err(write_error)?;
    Ok((Batch::Committed(outcomes), projected))
}

/// Inserts each (source, event id) once: a later copy, in the log or earlier
/// in the batch, is a duplicate.
fn insert_events(conn: &Connection, events: &[NewEvent]) -> rusqlite::Result<Vec<AppendOutcome>> {
    // No RETURNING: SQLite collects RETURNING rows in a temporary table per
    // execution; whether a row went in, and its rowid, are known anyway.
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (source, event_id, topic, created_at, received_at, enrollment_id, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (source, event_id) DO NOTHING",
    )?;
    events
        .iter()
        .map(|ev| {
            let inserted = insert.execute(params![
                ev.source,
                ev.event_id,
                ev.topic,
                ts(ev.created_at),
                fmt_ts(&ev.received_at),
                ev.enrollment_id(),
                ev.body
            ])?;
            Ok(if inserted == 1 {
                AppendOutcome::Stored {
                    seq: conn.last_insert_rowid(),
                }
            } else {
                AppendOutcome::Duplicate
            })
        })
        .collect()
}

/// Applies stored events (in log order) to the projection and the course
/// totals. An enrollment that receives a late event is re-folded from the log
/// instead, after all of these are in the log (the rules do not depend on
/// order, so this is what one event at a time gives).
/// `through`: the last seq being projected, which late events re-fold up to.
fn project(conn: &Connection, updates: &[(&str, &EnrollmentEvent)], through: i64) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut state: HashMap<(&str, i64), Enrollment> = HashMap::new();
    for (source, event) in updates {
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
    for &(source, event) in updates {
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
        if let Some(folded) = refold(conn, key.0, key.1, through)? {
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

/// Folds the logged events of one enrollment up to `through` (for late events).
fn refold(conn: &Connection, source: &str, id: i64, through: i64) -> Result<Option<Enrollment>> {
    let events = enrollment_events_from_log(
        conn,
        "SELECT source, topic, event_id, body FROM events
         WHERE source = ?1 AND enrollment_id = ?2 AND seq <= ?3",
        params![source, id, through],
    )?;
    Ok(projection::fold(source, events.into_iter().map(|(_, e)| e)))
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
