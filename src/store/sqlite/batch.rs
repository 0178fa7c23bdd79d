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
//!
//! The thread is the log file's writer for forwarding too: claims of due
//! deliveries and recorded attempts ([`super::outbox`]) are jobs on the same
//! queue. Everything waiting when a transaction starts runs in it, each job
//! inside a savepoint (one job's failure is its own), under one fsync.

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior, params};
use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::oneshot;

use super::apply::StoredForProjection;
use super::codec::{fmt_ts, ts, write_error};
use super::outbox;
use super::projector::Projector;
use crate::forward::subscription::{EventToMatch, Subscription};
use crate::store::bodies::Encoder;
use crate::store::*;

/// WAL pages after which a commit checkpoints by itself. Only a backstop: the
/// background checkpointer keeps the WAL far smaller.
pub(super) const WAL_AUTOCHECKPOINT_BACKSTOP: u32 = 4_000;

/// The store's write lock (shared with its sqlx write connection).
pub(super) type WriteLock = Arc<tokio::sync::Mutex<SqliteConnection>>;

/// Sends batches to the writer thread; the thread ends when this is dropped.
pub(super) struct BatchWriter {
    jobs: mpsc::Sender<Job>,
    /// The current dictionary: bodies are compressed by the caller, so the
    /// writer thread (the bottleneck) and its lock do not wait for it.
    encoder: Arc<Encoder>,
}

/// Jobs that wait for the thread are taken together, up to this many, into
/// one transaction.
const JOBS_PER_TRANSACTION: usize = 64;

enum Job {
    Append {
        events: Vec<NewEvent>,
        /// `events`' bodies compressed, in order, with `dictionary`.
        frames: Vec<Vec<u8>>,
        dictionary: i64,
        subscriptions: Arc<Subscriptions>,
        reply: oneshot::Sender<Result<Batch>>,
    },
    Claim {
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        room: crate::store::ClaimRoom,
        reply: oneshot::Sender<Result<Vec<outbox::ClaimedRow>>>,
    },
    EventGone {
        outbox_ids: Vec<i64>,
        now: DateTime<Utc>,
        reply: oneshot::Sender<Result<()>>,
    },
    Finish {
        finish: outbox::Finish,
        reply: oneshot::Sender<Result<Vec<String>>>,
    },
}

/// What a job did inside the transaction, answered once it commits.
enum Done {
    Append(Result<Batch>),
    Claim(Result<Vec<outbox::ClaimedRow>>),
    EventGone(Result<()>),
    Finish(Result<Vec<String>>),
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
        encoder: Arc<Encoder>,
    ) -> Result<BatchWriter> {
        let conn = connect(path).map_err(write_error)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-batch".into())
            .spawn(move || run(conn, queue, lock, projector, wake))
            .map_err(|e| StoreError::Write(format!("cannot start the SQLite writer: {e}")))?;
        Ok(BatchWriter { jobs, encoder })
    }

    /// Stores a batch of events in one transaction (see [`Store::append_batch`]).
    pub(super) async fn append(
        &self,
        events: Vec<NewEvent>,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Batch> {
        // Compressed here, on the caller's task, so the writer thread (the
        // bottleneck) and its lock do not wait for it.
        let frames = events
            .iter()
            .map(|e| self.encoder.compress(&e.body))
            .collect();
        let dictionary = self.encoder.id();
        self.run(|reply| Job::Append {
            events,
            frames,
            dictionary,
            subscriptions,
            reply,
        })
        .await
    }

    /// Leases due deliveries (see [`outbox::claim`]).
    pub(super) async fn claim(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        room: crate::store::ClaimRoom,
    ) -> Result<Vec<outbox::ClaimedRow>> {
        self.run(|reply| Job::Claim {
            now,
            lease_until,
            room,
            reply,
        })
        .await
    }

    /// Marks claimed deliveries whose event was pruned dead.
    pub(super) async fn event_gone(&self, outbox_ids: Vec<i64>, now: DateTime<Utc>) -> Result<()> {
        self.run(|reply| Job::EventGone {
            outbox_ids,
            now,
            reply,
        })
        .await
    }

    /// Records finished attempts (see [`outbox::finish`]).
    pub(super) async fn finish(&self, finish: outbox::Finish) -> Result<Vec<String>> {
        self.run(|reply| Job::Finish { finish, reply }).await
    }

    async fn run<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(job(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Write("the SQLite writer thread has stopped".into())
}

/// The writer thread: everything waiting goes into one transaction; once it
/// commits, the stored events go to the projector, then every job is answered.
fn run(
    mut conn: Connection,
    queue: mpsc::Receiver<Job>,
    lock: WriteLock,
    projector: Projector,
    wake: OutboxWake,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < JOBS_PER_TRANSACTION {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (done, enqueued) = {
            let _write = lock.blocking_lock();
            match transaction(&mut conn, &jobs) {
                Ok(done) => done,
                Err(e) => {
                    let e = match e {
                        StoreError::Write(message) => message,
                        other => other.to_string(),
                    };
                    let failed = jobs.iter().map(|j| j.failed(StoreError::Write(e.clone())));
                    (failed.collect(), false)
                }
            }
        };
        if enqueued {
            wake.raise();
        }
        for (job, done) in jobs.into_iter().zip(done) {
            job.answer(done, &projector);
        }
    }
}

impl Job {
    fn failed(&self, e: StoreError) -> Done {
        match self {
            Job::Append { .. } => Done::Append(Err(e)),
            Job::Claim { .. } => Done::Claim(Err(e)),
            Job::EventGone { .. } => Done::EventGone(Err(e)),
            Job::Finish { .. } => Done::Finish(Err(e)),
        }
    }

    /// Answers a job after its transaction ended; stored events go to the
    /// projector first, so a read that follows the answer finds them.
    fn answer(self, done: Done, projector: &Projector) {
        match (self, done) {
            (Job::Append { events, reply, .. }, Done::Append(result)) => {
                if let Ok(Batch::Committed(outcomes)) = &result {
                    projector.stored(for_projection(events, outcomes));
                }
                let _ = reply.send(result);
            }
            (Job::Claim { reply, .. }, Done::Claim(result)) => {
                let _ = reply.send(result);
            }
            (Job::EventGone { reply, .. }, Done::EventGone(result)) => {
                let _ = reply.send(result);
            }
            (Job::Finish { reply, .. }, Done::Finish(result)) => {
                let _ = reply.send(result);
            }
            _ => unreachable!("each job is answered with its own kind"),
        }
    }
}

fn for_projection(events: Vec<NewEvent>, outcomes: &[AppendOutcome]) -> Vec<StoredForProjection> {
    events
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
        .collect()
}

/// Runs the jobs in one transaction, each in a savepoint: a job that fails
/// (or an append whose subscriptions changed) is rolled back alone and the
/// others commit. Returns what each did and whether outbox rows went in; an
/// error (begin, commit, or SQLite ending the transaction itself, as it does
/// on a full disk) fails them all.
fn transaction(conn: &mut Connection, jobs: &[Job]) -> Result<(Vec<Done>, bool)> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(write_error)?;
    let mut done = Vec::with_capacity(jobs.len());
    let mut enqueued = false;
    for job in jobs {
        let savepoint = tx.savepoint().map_err(write_error)?;
        let result = match job {
            Job::Append {
                events,
                frames,
                dictionary,
                subscriptions,
                ..
            } => Done::Append(
                append(&savepoint, events, (frames, *dictionary), subscriptions).map(
                    |(batch, rows)| {
                        enqueued |= rows > 0;
                        batch
                    },
                ),
            ),
            Job::Claim {
                now,
                lease_until,
                room,
                ..
            } => Done::Claim(
                outbox::claim(&savepoint, *now, *lease_until, room).map_err(write_error),
            ),
            Job::EventGone {
                outbox_ids, now, ..
            } => Done::EventGone(
                outbox::event_gone(&savepoint, outbox_ids, *now).map_err(write_error),
            ),
            Job::Finish { finish, .. } => Done::Finish(outbox::finish(&savepoint, finish)),
        };
        let keep = match &result {
            Done::Append(r) => matches!(r, Ok(Batch::Committed(_))),
            Done::Claim(r) => r.is_ok(),
            Done::EventGone(r) => r.is_ok(),
            Done::Finish(r) => r.is_ok(),
        };
        if keep {
            savepoint.commit().map_err(write_error)?;
        } else {
            drop(savepoint); // rolled back
            if tx.is_autocommit() {
                // SQLite ended the whole transaction (a full disk, an I/O
                // error): what ran before is gone too.
                return Err(StoreError::Write(
                    "SQLite rolled back the transaction".into(),
                ));
            }
        }
        done.push(result);
    }
    tx.commit().map_err(write_error)?;
    Ok((done, enqueued))
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
    conn.pragma_update(None, "cache_size", super::WRITER_CACHE_SIZE)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_BACKSTOP)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Stores a batch of events and their outbox rows (inside the caller's
/// transaction); returns what it did and how many outbox rows it wrote.
fn append(
    tx: &Connection,
    events: &[NewEvent],
    frames: (&[Vec<u8>], i64),
    subs: &Subscriptions,
) -> Result<(Batch, usize)> {
    let fingerprint: SubscriptionsFingerprint = tx
        .prepare_cached(SUBSCRIPTIONS_FINGERPRINT)
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(write_error)?;
    if fingerprint != subs.fingerprint {
        return Ok((Batch::SubscriptionsChanged, 0)); // its savepoint is rolled back
    }
    let outcomes = insert_events(tx, events, frames).map_err(write_error)?;
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
                // The order key only where a claim reads it: every key is an
                // entry at a random place of `outbox_ordered`, a page written
                // when the row goes in and again when it leaves. A
                // subscription made ordered gets its waiting rows' keys then
                // (`update_subscription`).
                let order_key = if s.ordered { ev.order_key() } else { None };
                enqueued += enqueue
                    .execute(params![
                        s.id,
                        seq,
                        order_key,
                        fmt_ts(&ev.received_at),
                        ev.traceparent
                    ])
                    .map_err(write_error)?;
            }
        }
    }
    Ok((Batch::Committed(outcomes), enqueued))
}

/// Inserts each (source, event id, topic) once: a later copy, in the log or
/// earlier in the batch, is a duplicate. An event whose id an earlier event
/// of another topic already has is marked `id_taken` (one writer: the rows
/// before it, in the log and in this batch, are all visible).
/// Bodies go in as `frames` compressed with `dictionary` (`body` empty).
fn insert_events(
    conn: &Connection,
    events: &[NewEvent],
    (frames, dictionary): (&[Vec<u8>], i64),
) -> rusqlite::Result<Vec<AppendOutcome>> {
    // No RETURNING: SQLite collects RETURNING rows in a temporary table per
    // execution; whether a row went in, and its rowid, are known anyway.
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (source, event_id, topic, created_at, received_at, enrollment_id, body,
            body_zstd, body_dict, id_taken)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, ?8,
            EXISTS (SELECT 1 FROM events WHERE source = ?1 AND event_id = ?2))
         ON CONFLICT (source, event_id, topic) DO NOTHING",
    )?;
    events
        .iter()
        .zip(frames)
        .map(|(ev, frame)| {
            let inserted = insert.execute(params![
                ev.source,
                ev.event_id,
                ev.topic,
                ts(ev.created_at),
                fmt_ts(&ev.received_at),
                ev.enrollment_id(),
                frame,
                dictionary
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
