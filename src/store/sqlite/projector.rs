//! The SQLite projection: enrollments, course totals and expiries, kept in a
//! database file of their own (`<database>-projection`) by a thread of its own.
//!
//! The log writer ([`super::batch`]) commits deliveries to the main
//! file and hands the stored events to this thread; it applies them in
//! transactions of its own, many batches at once: once [`PROJECT_AT`] events
//! wait, or [`PROJECT_AFTER`] after the first of them. Two files, two write
//! locks, two WALs: a projection transaction never holds up a delivery's
//! commit, its pages never pass through the log's WAL, and the projection
//! commits without an fsync (`synchronous=NORMAL`, which in WAL mode cannot
//! corrupt the file): everything in it can be re-derived from the log, and a
//! crash only sets it back to an earlier consistent state, cursor included.
//! Measured against projecting inside the log's transactions: BENCHMARKS.md.
//!
//! `projection_cursor.projected_through_seq`, written in the same transaction
//! as the rows, says how far the projection got. Every read of the projection
//! first lets it catch up ([`Projector::catch_up`]): a client never misses its
//! own delivery. Events that another process appended, or that a crash left
//! unprojected, are read back from the log. A projection file that is missing,
//! has another schema version, or was derived from another log (a restored
//! backup of the main file, say) is re-derived from the log when opened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::apply::{Milestones, StoredForProjection, project_in_tx};
use super::codec::write_error;
use crate::store::milestones::RulesCell;
use crate::store::*;

/// Project once this many stored events wait...
const PROJECT_AT: usize = 10_000;
/// ...or this long after the first of them was stored.
/// (Every read catches up first, so this only sets how many events share a
/// transaction: at 64 connections 10 ms gave ~300 per transaction and cost
/// the projector 3.8 CPU s per 10 s of load, 50 ms 2.6 s, 100 ms 2.2 s.)
const PROJECT_AFTER: Duration = Duration::from_millis(50);
/// Stored events kept in memory for the projection at most (~1 KB each); more
/// are read back from the log.
const KEEP_IN_MEMORY: usize = 2 * PROJECT_AT;
/// After a failed projection (say, a full disk), the wait before the next try.
const RETRY_PROJECTION_AFTER: Duration = Duration::from_secs(1);
/// The projection's WAL is checkpointed by the projector's own commits once it
/// holds this many pages (SQLite's default is 1,000): each checkpoint copies a
/// page once however often it changed, so fewer, larger ones copy less.
const CHECKPOINT_PAGES: u32 = 4_000;

/// The projection file's schema; a file with another version is re-derived.
const SCHEMA: &str = include_str!("migrations/projection.sql");
const SCHEMA_VERSION: i64 = 9;

/// Where the projection of the log at `database` is kept.
pub fn projection_path(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push("-projection");
    PathBuf::from(path)
}

/// Makes the projection file readable and writable on `conn` as if its
/// tables were the main file's (their names are unique across both).
pub(super) async fn attach_projection(
    conn: &mut sqlx::SqliteConnection,
    projection: &std::path::Path,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("ATTACH DATABASE ? AS projection")
        .bind(projection.to_string_lossy().into_owned())
        .execute(conn)
        .await?;
    Ok(())
}

enum Msg {
    /// The inbox was empty and holds events now (or holds [`PROJECT_AT`]).
    Stored,
    CatchUp(oneshot::Sender<Result<()>>),
    /// These pending milestones are in the log now: (source, event id, topic).
    Emitted(Vec<(String, String, String)>, oneshot::Sender<Result<()>>),
}

/// Where the projector keeps milestones until the store moves them into the
/// log (see `apply::write_pending`).
const MILESTONES_PENDING: &str = "CREATE TABLE IF NOT EXISTS milestones_pending (
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (source, event_id, topic)
)";

/// Hands stored events to the projector thread; the thread ends when every
/// clone is dropped, after projecting what it was given.
#[derive(Clone)]
pub(super) struct Projector {
    queue: mpsc::Sender<Msg>,
    inbox: Inbox,
    /// Events handed over and not projected yet.
    waiting: Arc<AtomicUsize>,
}

impl Projector {
    /// Prepares the projection file of the (migrated) log at `database` and
    /// starts the thread.
    pub(super) fn open(database: &Path, milestones: Arc<RulesCell>) -> Result<Projector> {
        let (conn, quiet_through) =
            prepare(database, &projection_path(database)).map_err(write_error)?;
        let (queue, messages) = mpsc::channel::<Msg>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox::default();
        let pending = Pending {
            inbox: inbox.clone(),
            waiting: waiting.clone(),
            milestones,
            quiet_through,
            ..Pending::default()
        };
        std::thread::Builder::new()
            .name("sqlite-project".into())
            .spawn(move || {
                // Measured at 8 connections: p99 4.0-4.2 ms instead of 4.5, and
                // 8-15 % more events/s at 64 (BENCHMARKS.md).
                crate::background::lower_this_thread("projector");
                run(conn, messages, pending)
            })
            .map_err(|e| StoreError::Write(format!("cannot start the SQLite projector: {e}")))?;
        Ok(Projector {
            queue,
            inbox,
            waiting,
        })
    }

    /// Hands over events the log has committed. Counted as waiting before it
    /// returns, so a reader that saw a delivery's answer knows to catch up.
    pub(super) fn stored(&self, events: Vec<StoredForProjection>) {
        if events.is_empty() {
            return;
        }
        self.waiting.fetch_add(events.len(), Ordering::AcqRel);
        let wake = {
            let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            let before = inbox.len();
            inbox.extend(events);
            before == 0 || (before < PROJECT_AT && inbox.len() >= PROJECT_AT)
        };
        // If the thread is gone (it only ends with the last handle), the
        // events are read back from the log at the next start.
        if wake {
            let _ = self.queue.send(Msg::Stored);
        }
    }

    /// Forgets pending milestones that are in the log now.
    pub(super) async fn emitted(&self, keys: Vec<(String, String, String)>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Msg::Emitted(keys, reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Events this process stored that the projection lacks.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Returns once every event stored so far (by any process) is projected.
    pub(super) async fn catch_up(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Msg::CatchUp(reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Write("the SQLite projector thread has stopped".into())
}

/// Creates or re-derives the projection file as needed and returns the
/// projector's connection: the log as `main` (only read), the projection
/// attached (written); and the end of the log when the projection was wiped
/// (0 otherwise): what is re-derived up to there emits no milestones again.
fn prepare(database: &Path, projection: &Path) -> rusqlite::Result<(Connection, i64)> {
    {
        let mut file = Connection::open(projection)?;
        file.busy_timeout(Duration::from_secs(5))?;
        file.pragma_update(None, "journal_mode", "WAL")?;
        let version: i64 = file.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            let tx = file.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let tables = tx
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for table in tables {
                tx.execute_batch(&format!("DROP TABLE \"{}\"", table.replace('"', "\"\"")))?;
            }
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        // Not in SCHEMA: adding it must not re-derive existing projections.
        file.execute_batch(MILESTONES_PENDING)?;
    }
    let mut conn = Connection::open(database)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute(
        "ATTACH DATABASE ?1 AS projection",
        [projection.to_string_lossy()],
    )?;
    // Derived data: a crash may roll it back, never corrupt it (WAL).
    conn.pragma_update(Some("projection"), "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", super::WRITER_CACHE_SIZE)?;
    conn.pragma_update(Some("projection"), "cache_size", super::WRITER_CACHE_SIZE)?;
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(32);

    let log_id: String = conn.query_row("SELECT log_id FROM log_identity", [], |r| r.get(0))?;
    let (through, derived_from): (i64, Option<String>) = conn.query_row(
        "SELECT projected_through_seq, log_id FROM projection_cursor",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let head = log_end(&conn)?;
    let mut through = through;
    let mut quiet_through = 0;
    if derived_from.as_deref() != Some(log_id.as_str()) || through > head {
        if derived_from.is_some() {
            tracing::warn!(
                projection = %projection.display(),
                "the projection file was derived from another event log (or a later state of this one): deriving it again"
            );
        }
        let tx = begin_projection(&mut conn)?;
        tx.execute_batch(
            "DELETE FROM enrollments; DELETE FROM course_totals; DELETE FROM course_expiries;
             DELETE FROM event_topics; DELETE FROM activity_days;
             DELETE FROM lesson_completions; DELETE FROM course_lessons; DELETE FROM learners; DELETE FROM stall_buckets; DELETE FROM course_learners;
             DELETE FROM quiz_results; DELETE FROM event_users; DELETE FROM milestones_pending;",
        )?;
        tx.execute(
            "UPDATE projection_cursor SET projected_through_seq = 0, log_id = ?1",
            [&log_id],
        )?;
        tx.commit()?;
        through = 0;
        quiet_through = head;
    }
    if head - through > 100_000 {
        tracing::info!(
            events = head - through,
            "deriving the projection from the event log before going on (once; about 100,000 events a second)"
        );
    }
    Ok((conn, quiet_through))
}

/// A projection transaction: it takes the projection file's write lock first
/// (a no-op write), so that it never holds a read snapshot that another
/// writer could make stale, and never takes the log's write lock (`BEGIN
/// IMMEDIATE` would lock every attached file).
fn begin_projection(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    tx.execute(
        "UPDATE projection_cursor SET projected_through_seq = projected_through_seq",
        [],
    )?;
    Ok(tx)
}

/// The projector thread: takes stored events as they come and projects them
/// when due, or at once when a reader asks it to catch up.
fn run(mut conn: Connection, messages: mpsc::Receiver<Msg>, mut pending: Pending) {
    loop {
        let msg = match pending.deadline() {
            None => match messages.recv() {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvError) => break,
            },
            Some(at) => match messages.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        match msg {
            Some(Msg::Stored) => {
                pending.since.get_or_insert_with(Instant::now);
            }
            Some(Msg::CatchUp(reply)) => {
                let _ = reply.send(catch_up(&mut conn, &mut pending));
                continue;
            }
            Some(Msg::Emitted(keys, reply)) => {
                let _ = reply.send(forget_pending(&mut conn, &keys).map_err(write_error));
                continue;
            }
            None => {}
        }
        if pending.due()
            && let Err(e) = project_pending(&mut conn, &mut pending)
        {
            tracing::error!(error = %e, "projecting stored events failed; retrying shortly");
            pending.retry_later();
        }
    }
    // Shutting down: project what this process stored, so that the next
    // start need not read it back from the log.
    pending.take_inbox();
    if !pending.events.is_empty()
        && let Err(e) = catch_up(&mut conn, &mut pending)
    {
        tracing::warn!(error = %e, "stored events left unprojected; the next start projects them");
    }
}

/// Stored events the log writer handed over and the projector has not taken
/// yet, in log order. The writer wakes the projector only when the inbox
/// was empty (the projector then waits [`PROJECT_AFTER`] anyway) or reaches
/// [`PROJECT_AT`]: a message per commit cost the projector a wake-up each,
/// ~2,000 a second at 5,000 deliveries/s (BENCHMARKS.md).
type Inbox = Arc<Mutex<Vec<StoredForProjection>>>;

/// Events this process stored that are not projected yet, in log order.
#[derive(Default)]
struct Pending {
    /// Shared with [`Projector::stored`]; taken when projecting.
    inbox: Inbox,
    /// Every stored event, so that their number tells whether another
    /// process appended too.
    events: Vec<StoredForProjection>,
    /// When the first of them was handed over (or the last attempt failed).
    since: Option<Instant>,
    /// After a failed projection: not again before this.
    not_before: Option<Instant>,
    /// Shared with [`Projector::waiting`].
    waiting: Arc<AtomicUsize>,
    /// The milestones to derive, and who to tell when some are pending.
    milestones: Arc<RulesCell>,
    /// See [`prepare`].
    quiet_through: i64,
}

impl Pending {
    /// Moves what the writer handed over since the last time into `events`.
    fn take_inbox(&mut self) {
        let events =
            std::mem::take(&mut *self.inbox.lock().unwrap_or_else(PoisonError::into_inner));
        self.stored(events);
    }

    fn inbox_len(&self) -> usize {
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn stored(&mut self, events: Vec<StoredForProjection>) {
        if events.is_empty() {
            return;
        }
        if self.events.len() >= KEEP_IN_MEMORY {
            // Far behind (the cores are busy with deliveries): memory stays
            // bounded, and these are read back from the log when their turn comes.
            self.waiting.fetch_sub(events.len(), Ordering::AcqRel);
        } else {
            self.events.extend(events);
        }
        self.since.get_or_insert_with(Instant::now);
    }

    fn deadline(&self) -> Option<Instant> {
        let at = self.since? + PROJECT_AFTER;
        Some(self.not_before.map_or(at, |t| t.max(at)))
    }

    fn due(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
            && (self.events.len() + self.inbox_len() >= PROJECT_AT
                || self.deadline().is_some_and(|t| Instant::now() >= t))
    }

    fn retry_later(&mut self) {
        self.not_before = Some(Instant::now() + RETRY_PROJECTION_AFTER);
    }

    /// Forgets the events up to `seq`, which are projected.
    fn projected_through(&mut self, seq: i64) {
        let done = self.events.partition_point(|e| e.seq <= seq);
        self.events.drain(..done);
        self.waiting.fetch_sub(done, Ordering::AcqRel);
        self.not_before = None;
        if self.events.is_empty() {
            self.since = None;
        }
    }
}

/// Projects everything stored so far, in as many transactions as it takes.
fn catch_up(conn: &mut Connection, pending: &mut Pending) -> Result<()> {
    loop {
        pending.take_inbox();
        if pending.events.is_empty() {
            // Outside a write transaction: usually nothing is waiting at all.
            let (through, head) = cursor_and_head(conn).map_err(write_error)?;
            if through >= head {
                return Ok(());
            }
        }
        if project_pending(conn, pending)? {
            return Ok(());
        }
    }
}

/// (how far the projection got, the end of the log), for both drivers.
pub(super) const PROJECTION_CURSOR_AND_LOG_END: &str =
    "SELECT (SELECT projected_through_seq FROM projection_cursor),
            (SELECT COALESCE(MAX(seq), 0) FROM events)";

/// The seq of the log's last event (0 when empty).
fn log_end(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?
        .query_row([], |r| r.get(0))
}

fn has_pending(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM milestones_pending)")?
        .query_row([], |r| r.get(0))
}

fn forget_pending(
    conn: &mut Connection,
    keys: &[(String, String, String)],
) -> rusqlite::Result<()> {
    let tx = begin_projection(conn)?;
    {
        let mut delete = tx.prepare_cached(
            "DELETE FROM milestones_pending WHERE source = ?1 AND event_id = ?2 AND topic = ?3",
        )?;
        for (source, event_id, topic) in keys {
            delete.execute([source, event_id, topic])?;
        }
    }
    tx.commit()
}

fn cursor_and_head(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.prepare_cached(PROJECTION_CURSOR_AND_LOG_END)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// One projection transaction of its own (see [`super::apply::project_in_tx`]). Returns
/// whether the projection is now through the end of the log.
fn project_pending(conn: &mut Connection, pending: &mut Pending) -> Result<bool> {
    // Where the log ends, read before the transaction: a read of the log
    // inside it would hold a snapshot of the log's WAL for the whole
    // transaction, and no checkpoint could recycle the WAL meanwhile.
    pending.take_inbox();
    let head = log_end(conn).map_err(write_error)?;
    let rules = pending.milestones.rules();
    let milestones = Milestones {
        rules: (!rules.is_empty()).then_some(&*rules),
        quiet_through: pending.quiet_through,
    };
    let tx = begin_projection(conn).map_err(write_error)?;
    let upto = project_in_tx(&tx, &pending.events, head, milestones)?;
    tx.commit().map_err(write_error)?;
    pending.projected_through(upto);
    if milestones.rules.is_some() && has_pending(conn).map_err(write_error)? {
        pending.milestones.pending.notify_one();
    }
    if upto < head {
        // More in the log than was projected (events of another process, or
        // read back): go on after the usual pause.
        pending.since.get_or_insert_with(Instant::now);
    }
    Ok(upto == head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> StoredForProjection {
        StoredForProjection {
            seq,
            source: "s".to_owned(),
            topic: "user.signup".to_owned(),
            enrollment: None,
            learning: None,
            user_id: None,
        }
    }

    fn hand_over(pending: &mut Pending, seqs: std::ops::Range<i64>) {
        let events: Vec<StoredForProjection> = seqs.map(event).collect();
        pending.waiting.fetch_add(events.len(), Ordering::AcqRel);
        pending.stored(events);
    }

    #[test]
    fn memory_stays_bounded_when_the_projection_falls_behind() {
        let mut pending = Pending::default();
        hand_over(&mut pending, 1..KEEP_IN_MEMORY as i64 + 1);
        assert!(pending.due(), "a full buffer is due at once");
        hand_over(
            &mut pending,
            KEEP_IN_MEMORY as i64 + 1..KEEP_IN_MEMORY as i64 + 11,
        );
        assert_eq!(
            pending.events.len(),
            KEEP_IN_MEMORY,
            "the overflow is left to the log"
        );
        assert_eq!(pending.waiting.load(Ordering::Acquire), KEEP_IN_MEMORY);
        pending.projected_through(KEEP_IN_MEMORY as i64);
        assert_eq!(pending.waiting.load(Ordering::Acquire), 0);
        assert!(pending.events.is_empty());
    }

    #[test]
    fn the_writer_wakes_the_projector_once_per_inbox_not_per_commit() {
        let (queue, messages) = mpsc::channel();
        let projector = Projector {
            queue,
            inbox: Inbox::default(),
            waiting: Arc::default(),
        };
        let mut pending = Pending {
            inbox: projector.inbox.clone(),
            waiting: projector.waiting.clone(),
            ..Pending::default()
        };
        let commit = |seqs: std::ops::Range<i64>| {
            projector.stored(seqs.map(event).collect());
        };
        commit(1..3);
        commit(3..5);
        commit(5..6);
        assert_eq!(messages.try_iter().count(), 1, "one wake for three commits");
        assert!(!pending.due(), "five events wait for company");
        commit(6..PROJECT_AT as i64 + 1);
        assert_eq!(messages.try_iter().count(), 1, "a crowd wakes it again");
        assert!(pending.due(), "and is due at once");
        pending.take_inbox();
        assert_eq!(pending.events.len(), PROJECT_AT, "taken in log order");
        assert!(pending.events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        commit(PROJECT_AT as i64 + 1..PROJECT_AT as i64 + 2);
        assert_eq!(
            messages.try_iter().count(),
            1,
            "an emptied inbox wakes it again"
        );
        assert_eq!(projector.waiting(), PROJECT_AT + 1);
    }

    #[test]
    fn projection_is_due_after_a_pause_or_a_crowd() {
        let mut pending = Pending::default();
        assert!(!pending.due() && pending.deadline().is_none());
        hand_over(&mut pending, 1..3);
        assert!(!pending.due(), "two events wait for company");
        pending.since = Some(Instant::now() - PROJECT_AFTER);
        assert!(pending.due());
        pending.retry_later();
        assert!(!pending.due(), "not again right after a failure");
    }
}
