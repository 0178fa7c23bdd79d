//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so
//! a committed transaction survives a crash or power loss, and beside it the
//! projection's file (`<database>-projection`, see [`projector`]),
//! derived from the first and attached to every connection that reads it.
//!
//! One writer of the main file at a time (SQLite allows no more), under one
//! lock: group-commit batches go to [`batch`]'s thread, which runs each
//! in one call; everything else writes through a sqlx connection. The
//! projection file has its own writer, the projector thread. A small pool
//! reads both concurrently from WAL snapshots.
//!
//! Beside this file: [`projector`] (when the projection is brought up to
//! date) and `apply` (what applying events to it writes), `rebuild`,
//! `retention`, `courses` (course tables), `forward` and `batch`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};

mod alerts;
mod apply;
mod batch;
mod codec;
mod courses;
mod forward;
mod learning;
mod migrate;
mod outbox;
pub mod projector;
mod read_ahead;
mod rebuild;
mod retention;

use self::batch::{Batch, BatchWriter, WAL_AUTOCHECKPOINT_BACKSTOP};
use self::codec::*;
use self::projector::{Projector, attach_projection};
use self::read_ahead::enrollments_folded_through;
use crate::projection::Enrollment;
use crate::store::shared::learning_reads;
use crate::store::shared::log;
use crate::store::*;

pub struct SqliteStore {
    /// Checkpoints the WAL off the write path (see [`spawn_checkpointer`]).
    checkpointer: tokio::task::AbortHandle,
    pub(super) writer: Writer,
    pub(super) reader: SqlitePool,
    /// Appends to the log (group-commit batches and milestones).
    appender: Arc<Appender>,
    /// Keeps the projection file (see [`projector`]).
    projector: Projector,
    /// The milestones the projector derives.
    milestones: Arc<crate::store::milestones::RulesCell>,
    /// Moves milestones the projector derived into the log (see
    /// [`SqliteStore::emit_milestones`]), when the projector signals some.
    emitter: tokio::task::AbortHandle,
    /// Raised after commits that wrote outbox rows (see [`OutboxWake`]).
    wake: OutboxWake,
    /// The course medians this process has walked (see `courses::course_stats`).
    medians: crate::store::shared::courses::Medians,
}

/// What appends to the log: the batch writer with the subscriptions its
/// outbox rows are matched against.
struct Appender {
    /// Group-commit batches, each in one call (see [`batch`]).
    batch: BatchWriter,
    /// The enabled subscriptions as last read; the batch writer tells when
    /// they changed (another process, or this one, wrote them).
    subscriptions: tokio::sync::Mutex<Option<Arc<batch::Subscriptions>>>,
    reader: SqlitePool,
    projector: Projector,
    /// One move of pending milestones at a time.
    emitting: tokio::sync::Mutex<()>,
}

impl Appender {
    async fn append(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
        let mut known = self.subscriptions.lock().await;
        loop {
            let subscriptions = match known.as_ref() {
                Some(s) => s.clone(),
                None => {
                    let mut conn = self.reader.acquire().await?;
                    let read = batch::subscriptions_for_batches(&mut conn).await?;
                    known.insert(Arc::new(read)).clone()
                }
            };
            match self.batch.append(events.to_vec(), subscriptions).await? {
                Batch::Committed(outcomes) => return Ok(outcomes),
                Batch::SubscriptionsChanged => *known = None,
            }
        }
    }

    /// Moves the milestones the projector keeps into the log, in the order
    /// they were derived, with their outbox rows (the usual append), then
    /// lets the projector forget them. A crash in between leaves them kept:
    /// the next move appends them again, as duplicates. Returns how many
    /// were new in the log.
    async fn emit_milestones(&self) -> Result<u64> {
        let _one = self.emitting.lock().await;
        let mut stored = 0;
        loop {
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT source, event_id, topic, body FROM milestones_pending ORDER BY rowid LIMIT 256",
            )
            .fetch_all(&self.reader)
            .await?;
            if rows.is_empty() {
                return Ok(stored);
            }
            let now = Utc::now();
            let mut events = Vec::with_capacity(rows.len());
            for (source, event_id, topic, body) in &rows {
                match NewEvent::from_log(source, topic, event_id, body, now) {
                    Ok(e) => events.push(e),
                    // Ours, so it always parses; never let one block the rest.
                    Err(e) => {
                        tracing::error!(error = %e, "a derived milestone does not parse; dropped")
                    }
                }
            }
            let outcomes = self.append(&events).await?;
            stored += AppendOutcome::tally(&outcomes).0;
            let keys = rows
                .into_iter()
                .map(|(source, event_id, topic, _)| (source, event_id, topic))
                .collect();
            self.projector.emitted(keys).await?;
        }
    }
}

/// The one write connection. A lock, not a pool: handing a pooled connection
/// back costs a task hop per batch (~0.4 ms measured).
pub(super) struct Writer {
    /// Also the lock of the batch writer thread's connection.
    conn: batch::WriteLock,
    options: SqliteConnectOptions,
}

impl Writer {
    /// The write connection, usable: one that an error left inside a
    /// transaction is replaced. (On a full disk SQLite rolls the transaction
    /// back by itself, sqlx's rollback then fails and it keeps counting the
    /// transaction as open, so every later BEGIN would fail.)
    pub(super) async fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, SqliteConnection>> {
        let mut conn = self.conn.lock().await;
        if conn.is_in_transaction() {
            // A dropped transaction's rollback may still be queued: let it run.
            let _ = conn.ping().await;
            if conn.is_in_transaction() {
                tracing::warn!(
                    "replacing the SQLite write connection, left inside a failed transaction"
                );
                *conn = self.options.connect().await?;
            }
        }
        Ok(conn)
    }
}

/// The page cache of the two writing connections (the log writer thread and
/// the projector), in KiB as SQLite takes it (negative). With SQLite's
/// default, 2 MiB, the projector read most of the pages it updates back
/// from the file on every batch (its enrollment, learner and counter rows
/// are spread over thousands of pages): at 5,000 deliveries/s with two
/// templated subscriptions, 16 MiB cut the process's page reads by 58 %
/// (64 MiB by 63 %, for 140 MiB more memory instead of 30). BENCHMARKS.md.
const WRITER_CACHE_SIZE: i64 = -16_384;

/// The longest a read of the projection waits for it to catch up.
const READ_WAITS_FOR_PROJECTION: Duration = Duration::from_secs(2);
/// Often, so each checkpoint is small: at 200 ms one could copy 10-50 MB and
/// its fsync of the database file delayed the writer's WAL fsyncs (p99 at 8
/// connections 4.4-5.5 ms at 200 ms, 3.6-4.2 ms at 20 ms; under load at 200 ms
/// the WAL also outgrew the backstop and commits checkpointed themselves).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);

/// Copies committed pages from the WAL into the database file on a connection
/// of its own. SQLite's automatic checkpoint runs inside the commit that
/// crosses the threshold, and so on the writer's critical path: every few
/// batches one of them paid for writing back and fsyncing the pages of all.
/// A passive checkpoint takes no write lock, so it runs beside the writer.
fn spawn_checkpointer(options: SqliteConnectOptions) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut conn: Option<SqliteConnection> = None;
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if conn.is_none() {
                conn = options.connect().await.ok();
            }
            if let Some(c) = conn.as_mut()
                && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut *c)
                    .await
            {
                tracing::debug!(error = %e, "WAL checkpoint failed; retrying on a new connection");
                conn = None;
            }
        }
    })
    .abort_handle()
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
        self.emitter.abort();
    }
}

/// Moves derived milestones into the log whenever the projector signals some.
fn spawn_emitter(
    appender: Arc<Appender>,
    milestones: Arc<crate::store::milestones::RulesCell>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        loop {
            milestones.pending.notified().await;
            if let Err(e) = appender.emit_milestones().await {
                tracing::warn!(error = %e, "moving derived milestones into the event log failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                milestones.pending.notify_one();
            }
        }
    })
    .abort_handle()
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, e.g. `sqlite://enrollhook.db`.
    pub async fn open(url: &str, migrate_schema: bool) -> Result<SqliteStore> {
        Self::open_with_milestones(url, migrate_schema, Default::default()).await
    }

    /// [`SqliteStore::open`], deriving these milestones (from the events a
    /// crash left unprojected too).
    pub async fn open_with_milestones(
        url: &str,
        migrate_schema: bool,
        milestones: crate::projection::milestones::MilestoneRules,
    ) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory")
            .pragma(
                "wal_autocheckpoint",
                WAL_AUTOCHECKPOINT_BACKSTOP.to_string(),
            );
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Invalid(
                "an in-memory SQLite database cannot be shared by enrollhook's connections: \
                 give a file path (it is created), e.g. sqlite:///tmp/enrollhook.db"
                    .into(),
            ));
        }
        let writer_options = options.clone();
        let writer = Writer {
            conn: Arc::new(tokio::sync::Mutex::new(writer_options.connect().await?)),
            options: writer_options,
        };
        migrate::migrate(&mut *writer.conn.lock().await, migrate_schema).await?;
        // Before the projector and the writer: both read compressed bodies.
        let encoder =
            crate::store::shared::dictionaries::open::<Sqlite>(&mut *writer.conn.lock().await)
                .await?;
        let path = options.get_filename().to_owned();
        let milestones = Arc::new(crate::store::milestones::RulesCell::new(milestones));
        let projector = Projector::open(&path, milestones.clone())?;
        let wake = OutboxWake::default();
        let batch = BatchWriter::open(
            &path,
            writer.conn.clone(),
            projector.clone(),
            wake.clone(),
            encoder,
        )?;
        let checkpointer = spawn_checkpointer(options.clone());
        let projection = projector::projection_path(&path);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let projection = projection.clone();
                Box::pin(async move { attach_projection(conn, &projection).await })
            })
            .connect_with(options.clone().read_only(true))
            .await?;
        let appender = Arc::new(Appender {
            batch,
            subscriptions: tokio::sync::Mutex::new(None),
            reader: reader.clone(),
            projector: projector.clone(),
            emitting: tokio::sync::Mutex::new(()),
        });
        let emitter = spawn_emitter(appender.clone(), milestones.clone());
        let store = SqliteStore {
            checkpointer,
            writer,
            reader,
            appender,
            projector,
            milestones,
            emitter,
            wake,
            medians: Default::default(),
        };
        // Events a crash left unprojected (usually none), and their milestones.
        store.sync_projection().await?;
        Ok(store)
    }

    /// Lets the projection catch up with the log before it is read, so a
    /// client never misses a delivery it was answered for. Usually nothing
    /// waits and no hop to the writer is needed. A read waits at most
    /// [`READ_WAITS_FOR_PROJECTION`] (say, while `rebuild` holds the write
    /// lock), and a failure (say, a read-only file) leaves the projection a
    /// little behind rather than failing the read.
    async fn projection_current(&self) {
        if self.projector.waiting() == 0 && self.projection_has_log_end().await.unwrap_or(false) {
            return;
        }
        match tokio::time::timeout(READ_WAITS_FOR_PROJECTION, self.projector.catch_up()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the projection may be behind the event log"),
            Err(_) => tracing::warn!(
                "the projection is still catching up with the event log; answering with it as it is"
            ),
        }
    }

    /// Whether every logged event is projected (events of other processes too).
    async fn projection_has_log_end(&self) -> Result<bool> {
        let (through, end): (i64, i64) = sqlx::query_as(projector::PROJECTION_CURSOR_AND_LOG_END)
            .fetch_one(&self.reader)
            .await?;
        Ok(through >= end)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn projection_waiting(&self) -> u64 {
        self.projector.waiting() as u64
    }

    /// Also moves the milestones the projection derived into the log (and
    /// projects those), so that they are there when this returns.
    async fn sync_projection(&self) -> Result<()> {
        self.projector.catch_up().await?;
        if self.appender.emit_milestones().await? > 0 {
            self.projector.catch_up().await?;
        }
        Ok(())
    }

    async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
        self.appender.append(events).await
    }

    fn milestone_cell(&self) -> &crate::store::milestones::RulesCell {
        &self.milestones
    }

    async fn prune_events(&self, cutoff: DateTime<Utc>) -> Result<PruneReport> {
        self.prune(cutoff).await
    }

    async fn append_pruned(&self, events: &[StoredEvent]) -> Result<Vec<AppendOutcome>> {
        self.import_pruned(events).await
    }

    async fn quarantine(&self, r: NewQuarantine) -> Result<i64> {
        log::insert_quarantine::<Sqlite>(&mut *self.writer.lock().await?, &r).await
    }

    async fn import_quarantine(&self, r: &QuarantineRecord) -> Result<bool> {
        log::import_quarantine::<Sqlite>(&mut *self.writer.lock().await?, r).await
    }

    async fn prune_quarantine(&self, keep: u64, max_bytes: u64) -> Result<u64> {
        log::prune_quarantine::<Sqlite>(&mut *self.writer.lock().await?, keep, max_bytes).await
    }

    async fn list_quarantine(
        &self,
        source: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<QuarantineRecord>> {
        log::list_quarantine(&self.reader, source, page).await
    }

    async fn newest_quarantine(&self, source: Option<&str>) -> Result<Option<i64>> {
        log::newest_quarantine(&self.reader, source).await
    }

    async fn get_quarantine(&self, id: i64) -> Result<Option<QuarantineRecord>> {
        log::get_quarantine::<Sqlite>(&mut *self.writer.lock().await?, id).await
    }

    async fn resolve_quarantine(&self, id: i64, resolution: &str) -> Result<()> {
        log::resolve_quarantine::<Sqlite>(
            &mut *self.writer.lock().await?,
            id,
            resolution,
            Utc::now(),
        )
        .await
    }

    async fn list_enrollments(
        &self,
        f: &EnrollmentFilter,
        page: &PageRequest,
        now: DateTime<Utc>,
    ) -> Result<Page<Enrollment>> {
        self.projection_current().await;
        log::list_enrollments(&self.reader, f, page, now).await
    }

    async fn get_enrollment(&self, source: &str, enrollment_id: i64) -> Result<Option<Enrollment>> {
        self.projection_current().await;
        let mut conn = self.reader.acquire().await?;
        log::load_enrollment::<Sqlite>(&mut conn, source, enrollment_id).await
    }

    async fn enrollment_through(
        &self,
        source: &str,
        enrollment_id: i64,
        seq: i64,
    ) -> Result<Option<Enrollment>> {
        Ok(self
            .enrollments_through(source, &[enrollment_id], seq)
            .await?
            .pop())
    }

    async fn enrollments_through(
        &self,
        source: &str,
        enrollment_ids: &[i64],
        seq: i64,
    ) -> Result<Vec<Enrollment>> {
        let mut conn = self.reader.acquire().await?;
        enrollments_folded_through(&mut conn, source, enrollment_ids, seq).await
    }

    async fn enrollment_events(
        &self,
        source: &str,
        enrollment_id: i64,
    ) -> Result<Vec<StoredEvent>> {
        log::enrollment_events(&self.reader, EVENT_COLUMNS, source, enrollment_id).await
    }

    async fn course_stats(
        &self,
        source: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CourseStats>> {
        self.projection_current().await;
        courses::course_stats(&self.reader, &self.medians, source, now).await
    }

    async fn activity(&self, query: &ActivityQuery) -> Result<Vec<DayActivity>> {
        self.projection_current().await;
        crate::store::shared::courses::activity(&self.reader, query).await
    }

    async fn list_events(&self, f: &EventFilter, page: &PageRequest) -> Result<Page<StoredEvent>> {
        let columns = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (mut q, seq) = match &f.topic {
            None => (
                QueryBuilder::<Sqlite>::new(format!(
                    "SELECT {columns} FROM events AS e WHERE 1 = 1"
                )),
                "e.seq",
            ),
            // By topic through the projection file's `event_topics` (in seq
            // order, CROSS JOIN keeps it the outer loop), which holds every
            // event up to the projection's cursor: caught up first, like
            // every read of the projection.
            Some(t) => {
                self.projection_current().await;
                let mut q = QueryBuilder::<Sqlite>::new(format!(
                    "SELECT {columns} FROM event_topics AS t CROSS JOIN events AS e ON e.seq = t.seq WHERE "
                ));
                match t.strip_suffix(".*") {
                    // `enrollment.*`: every topic of the resource.
                    Some(resource) => q.push("t.resource = ").push_bind(resource.to_owned()),
                    None => q.push("t.topic = ").push_bind(t.clone()),
                };
                (q, "t.seq")
            }
        };
        if let Some(s) = &f.source {
            q.push(" AND e.source = ").push_bind(s.clone());
        }
        let mut after = f.after_seq.unwrap_or(0);
        if let Some(c) = &page.cursor {
            let cursor = sql::cursor_i64(&decode_cursor(c, 1)?[0])?;
            after = after.max(cursor);
        }
        q.push(format!(" AND {seq} > ")).push_bind(after);
        q.push(format!(" ORDER BY {seq} LIMIT "))
            .push_bind(i64::from(page.limit) + 1);
        let rows = q.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(event_from_row).collect::<Result<_>>()?;
        Ok(sql::page_by(items, page.limit, |e| e.position.clone()))
    }

    async fn get_event(
        &self,
        source: &str,
        event_id: &str,
        topic: Option<&str>,
    ) -> Result<Option<StoredEvent>> {
        log::get_event(&self.reader, EVENT_COLUMNS, source, event_id, topic).await
    }

    async fn feed_end(&self) -> Result<Option<String>> {
        // One writer: seq order is commit order.
        let last: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM events")
            .fetch_one(&self.reader)
            .await?;
        Ok(last.map(|seq| encode_cursor(&[&seq.to_string()])))
    }

    async fn insert_reconciliation(&self, run: &NewReconciliation) -> Result<i64> {
        log::insert_reconciliation::<Sqlite>(&mut *self.writer.lock().await?, run).await
    }

    async fn list_reconciliations(
        &self,
        source: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<ReconciliationRecord>> {
        log::list_reconciliations(&self.reader, source, page).await
    }

    async fn reconciliation_resume_point(&self, source: &str) -> Result<Option<DateTime<Utc>>> {
        log::reconciliation_resume_point(&self.reader, source).await
    }

    async fn course_funnel(
        &self,
        source: &str,
        course_id: i64,
        stalled: &Stalled,
    ) -> Result<Option<Funnel>> {
        self.projection_current().await;
        learning_reads::funnel(&self.reader, source, course_id, stalled).await
    }

    async fn stalled_learners(
        &self,
        filter: &StalledFilter,
        page: &PageRequest,
    ) -> Result<Page<(Enrollment, LearnerRow)>> {
        self.projection_current().await;
        learning_reads::stalled(&self.reader, filter, page).await
    }

    async fn student(&self, source: &str, user_id: i64, events: i64) -> Result<StudentRecord> {
        self.projection_current().await;
        learning_reads::student(&self.reader, EVENT_COLUMNS, source, user_id, events).await
    }

    async fn lessons_of(
        &self,
        source: &str,
        user_id: i64,
        course_id: Option<i64>,
    ) -> Result<Vec<LessonDone>> {
        self.projection_current().await;
        learning_reads::lessons_of(&self.reader, source, user_id, course_id).await
    }

    async fn quiz_stats(
        &self,
        source: Option<&str>,
        course_id: Option<i64>,
    ) -> Result<Vec<QuizStats>> {
        self.projection_current().await;
        learning_reads::quiz_stats(&self.reader, source, course_id).await
    }

    async fn course_learning(
        &self,
        source: Option<&str>,
        stalled: &Stalled,
    ) -> Result<Vec<CourseLearning>> {
        self.projection_current().await;
        learning_reads::course_learning(&self.reader, source, stalled).await
    }

    async fn rebuild_projection(&self, dry_run: bool) -> Result<RebuildReport> {
        self.rebuild(dry_run).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn add_body_dictionary(&self, dictionary: &[u8], make_current: bool) -> Result<i64> {
        let mut conn = self.writer.conn.lock().await;
        crate::store::shared::dictionaries::add::<Sqlite>(&mut conn, dictionary, make_current).await
    }
}
