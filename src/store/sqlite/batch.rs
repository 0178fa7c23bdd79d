//! The SQLite log writer: group-commit batches of deliveries, on a thread of
//! its own with its own connection (rusqlite).
//!
//! Through sqlx every statement is a hand-off to sqlx's SQLite worker thread
//! and back (~50 µs each with both cores busy, measured), and a batch takes
//! several statements. Here a batch is one hand-off: its statements run back
//! to back in-process, prepared once and cached. The thread writes only under
//! the store's write lock, so it never contends with the store's sqlx
//! connection.
//!
//! A batch's transaction holds only the log: its events and their outbox
//! rows. Once it commits, the stored events go to the projector
//! ([`super::projector`]), which keeps the enrollments in a file of
//! its own, and the deliveries are answered.

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::oneshot;

use super::apply::StoredForProjection;
use super::codec::{fmt_ts, ts, write_error};
use super::projector::Projector;
use crate::forward::subscription::{EventToMatch, Subscription};
use crate::store::*;

/// WAL pages after which a commit checkpoints by itself. Only a backstop: the
/// background checkpointer keeps the WAL far smaller.
pub(super) const WAL_AUTOCHECKPOINT_BACKSTOP: u32 = 4_000;

/// The store's write lock (shared with its sqlx write connection).
pub(super) type WriteLock = Arc<tokio::sync::Mutex<SqliteConnection>>;

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
    /// Starts the writer thread; what it commits goes on to `projector`.
    /// `wake` is raised after each commit that wrote outbox rows.
    pub(super) fn open(
        path: &Path,
        lock: WriteLock,
        projector: Projector,
        wake: OutboxWake,
    ) -> Result<BatchWriter> {
        let conn = connect(path).map_err(write_error)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-batch".into())
            .spawn(move || run(conn, queue, lock, projector, wake))
            .map_err(|e| StoreError::Write(format!("cannot start the SQLite writer: {e}")))?;
        Ok(BatchWriter { jobs })
    }

    /// Stores a batch of events in one transaction (see [`Store::append_batch`]).
    pub(super) async fn append(
        &self,
        events: Vec<NewEvent>,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Batch> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                events,
                subscriptions,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Write("the SQLite writer thread has stopped".into())
}

/// The writer thread: one transaction per batch, then the stored events go to
/// the projector, then the batch is answered.
fn run(
    mut conn: Connection,
    queue: mpsc::Receiver<Job>,
    lock: WriteLock,
    projector: Projector,
    wake: OutboxWake,
) {
    while let Ok(Job {
        events,
        subscriptions,
        reply,
    }) = queue.recv()
    {
        let result = {
            let _write = lock.blocking_lock();
            append(&mut conn, &events, &subscriptions, &wake)
        };
        if let Ok(Batch::Committed(outcomes)) = &result {
            let stored = events
                .into_iter()
                .zip(outcomes)
                .filter_map(|(event, outcome)| match outcome {
                    AppendOutcome::Stored { seq } => Some(StoredForProjection {
                        seq: *seq,
                        source: event.source,
                        topic: event.topic,
                        enrollment: event.enrollment,
                        learning: event.learning,
                        user_id: event.user_id,
                    }),
                    AppendOutcome::Duplicate => None,
                })
                .collect();
            projector.stored(stored);
        }
        let _ = reply.send(result);
    }
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
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_BACKSTOP)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Stores a batch of events and their outbox rows in one transaction, and
/// raises `wake` once it committed outbox rows.
fn append(
    conn: &mut Connection,
    events: &[NewEvent],
    subs: &Subscriptions,
    wake: &OutboxWake,
) -> Result<Batch> {
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
    // Forwarding: the outbox rows commit with their events, or not at all.
    let mut enqueued = 0;
    if !subs.enabled.is_empty() {
        let mut enqueue = tx
            .prepare_cached(
                "INSERT INTO outbox (subscription_id, event_seq, order_key, state, attempts,
                    next_attempt_at, created_at, traceparent)
                 VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4, ?5)
                 ON CONFLICT (subscription_id, event_seq) DO NOTHING",
            )
            .map_err(write_error)?;
        for (ev, seq) in stored() {
            let event = EventToMatch::new(&ev.source, &ev.topic, ev.course_id, &ev.body);
            for s in subs.enabled.iter().filter(|s| s.matches(&event)) {
                enqueued += enqueue
                    .execute(params![
                        s.id,
                        seq,
                        ev.order_key(),
                        fmt_ts(&ev.received_at),
                        ev.traceparent
                    ])
                    .map_err(write_error)?;
            }
        }
    }
    tx.commit().map_err(write_error)?;
    if enqueued > 0 {
        wake.raise();
    }
    Ok(Batch::Committed(outcomes))
}

/// Inserts each (source, event id, topic) once: a later copy, in the log or
/// earlier in the batch, is a duplicate. An event whose id an earlier event
/// of another topic already has is marked `id_taken` (one writer: the rows
/// before it, in the log and in this batch, are all visible).
fn insert_events(conn: &Connection, events: &[NewEvent]) -> rusqlite::Result<Vec<AppendOutcome>> {
    // No RETURNING: SQLite collects RETURNING rows in a temporary table per
    // execution; whether a row went in, and its rowid, are known anyway.
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (source, event_id, topic, created_at, received_at, enrollment_id, body,
            id_taken)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
            EXISTS (SELECT 1 FROM events WHERE source = ?1 AND event_id = ?2))
         ON CONFLICT (source, event_id, topic) DO NOTHING",
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

/// The enabled subscriptions with their fingerprint, in one snapshot, for the
/// batch writer (which re-checks the fingerprint inside each batch).
pub(super) async fn subscriptions_for_batches(
    conn: &mut SqliteConnection,
) -> Result<Subscriptions> {
    let mut tx = conn.begin().await?;
    let fingerprint = sqlx::query_as(SUBSCRIPTIONS_FINGERPRINT)
        .fetch_one(&mut *tx)
        .await?;
    let enabled =
        crate::store::shared::forward::enabled_subscriptions::<sqlx::Sqlite>(&mut tx).await?;
    tx.commit().await?;
    Ok(Subscriptions {
        enabled,
        fingerprint,
    })
}
