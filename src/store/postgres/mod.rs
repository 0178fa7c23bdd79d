//! PostgreSQL: one database shared by any number of stateless `enrollhook serve`
//! instances.
//!
//! The guarantees of the embedded store hold across instances:
//! - exactly once: `INSERT INTO event_ids … ON CONFLICT (source, event_id, topic)
//!   DO NOTHING`, the identity table beside the log, which is partitioned by
//!   month (migration 23, [`partitions`]) and so cannot hold the unique key;
//!   a batch first takes a transaction-scoped advisory lock per (source, event
//!   id), in sorted order, so that batches storing one id take turns: the later
//!   one sees the earlier's row (a duplicate, or an id already taken by another
//!   topic, see `id_taken`), and only the winner applies the projection;
//! - newest state: before reading an enrollment, a batch takes a transaction-scoped
//!   advisory lock per (source, enrollment id) (rows that do not exist yet cannot be
//!   row-locked), then one per learning row, each kind in sorted order so that
//!   batches of different instances never deadlock; all of them with its `BEGIN`,
//!   in one round trip (`batch::BatchLocks`). Events are inserted in sorted
//!   (source, event_id, topic) order for the same reason. Deadlocks and
//!   serialization failures that still happen are retried.
//!
//! Several writers (see [`Store::writers`]) each commit whole batches; every
//! batch costs a handful of round trips whatever its size (arrays + `unnest`).

mod alerts;
mod batch;
mod codec;
mod courses;
mod forward;
mod learning;
mod migrate;
mod outbox;
mod partitions;
mod wake;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};

use self::batch::{append_on, is_retryable, upsert_enrollments};
use self::codec::*;
use crate::projection::Enrollment;
use crate::store::shared::learning_reads;
use crate::store::shared::{log, rebuild, retention};
use crate::store::*;

/// The session advisory lock of a scheduled reconciliation ("reconcil" in
/// ASCII): one run at a time across instances (see `Store::reconciliation_turn`).
const RECONCILIATION_LOCK: i64 = 0x7265_636f_6e63_696c;
/// The session advisory lock of the scheduled stalled-milestone scan ("stalled!"
/// in ASCII): one scan at a time across instances.
const STALLED_SCAN_LOCK: i64 = 0x7374_616c_6c65_6421;

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
    /// Raised by this instance's `LISTEN` connection (see [`wake`]).
    wake: OutboxWake,
    /// The milestones each batch derives (see `batch::append_on`).
    milestones: crate::store::milestones::RulesCell,
    /// The current compression dictionary (see `store::bodies`).
    encoder: std::sync::Arc<crate::store::bodies::Encoder>,
    /// The course medians this instance has walked (see `courses::Medians`).
    medians: crate::store::shared::courses::Medians,
    /// The log's monthly partitions this instance knows exist.
    months: partitions::Months,
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
        migrate::migrate(&writer, migrate).await?;
        let encoder =
            crate::store::shared::dictionaries::open::<Postgres>(&mut *writer.acquire().await?)
                .await?;
        let months = partitions::Months::default();
        if migrate {
            // This month's partitions, so that the first batch need not make them.
            months.ensure(&writer, [Utc::now()]).await?;
        }
        Ok(PostgresStore {
            writer,
            reader,
            writers,
            wake: OutboxWake::default(),
            milestones: Default::default(),
            encoder,
            medians: Default::default(),
            months,
        })
    }

    /// A session advisory lock on a connection of its own, out of the pool:
    /// closing it (dropping the guard, or a crash) ends the lock.
    async fn advisory_turn(&self, key: i64) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        let mut conn = self.writer.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then(|| Box::new(conn) as Box<dyn std::any::Any + Send>))
    }

    async fn try_append(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
        // Milestones and alerts the batch derives are received now.
        let now = Utc::now();
        self.months.prepare_next(&self.writer, now).await;
        let times = events.iter().map(|e| e.received_at).chain([now]);
        self.months.ensure(&self.writer, times).await?;
        let mut conn: PoolConnection<Postgres> = self.writer.acquire().await?;
        let rules = self.milestones.rules();
        let result = append_on(&mut conn, events, &rules, &self.encoder).await;
        if let Err(e) = &result
            && !is_retryable(e)
        {
            // The connection may be broken (the database went away): do not reuse it.
            conn.close_on_drop();
        }
        result
    }
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
                Err(e) if partitions::is_missing_partition(&e) && attempt < MAX_RETRIES => {
                    // Another instance's retention dropped a month this one
                    // remembered: make it again.
                    attempt += 1;
                    self.months.forget();
                }
                result => return result,
            }
        }
    }

    async fn prune_events(&self, cutoff: DateTime<Utc>) -> Result<PruneReport> {
        // Each round on its own connection of the pool, so instances pruning
        // at once skip each other's rows (see [`Dialect::SKIP_LOCKED`]).
        let pool = &self.writer;
        // Whole months first (no row is rewritten), then what is left row by row.
        let dropped = partitions::drop_prunable_months(pool, &self.months, cutoff).await?;
        let mut report = retention::prune::<Postgres, _, _>(cutoff, move |mut q| async move {
            Ok(q.build().execute(pool).await?.rows_affected())
        })
        .await?;
        report.events += dropped.events;
        report.partitions_dropped = dropped.partitions;
        Ok(report)
    }

    async fn append_pruned(&self, events: &[StoredEvent]) -> Result<Vec<AppendOutcome>> {
        self.months
            .ensure(&self.writer, events.iter().map(|e| e.received_at))
            .await?;
        let mut tx = self.writer.begin().await?;
        let outcomes = batch::insert_pruned(&mut tx, events).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn dropped_events(&self, page: &PageRequest) -> Result<Page<StoredEvent>> {
        // In key order, through `event_ids`' primary key: a scan of every
        // identity, each looked up in the log by seq (a one-off, for `copy`).
        let after = match &page.cursor {
            Some(c) => decode_cursor(c, 3)?,
            None => Vec::new(),
        };
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT i.seq, i.source::text, i.event_id::text, i.topic::text, i.received_at
             FROM event_ids AS i
             WHERE NOT EXISTS (SELECT 1 FROM events AS e WHERE e.seq = i.seq)",
        );
        if let [source, event_id, topic] = after.as_slice() {
            q.push(" AND (i.source, i.event_id, i.topic) > (")
                .push_bind(source.clone())
                .push(", ")
                .push_bind(event_id.clone())
                .push(", ")
                .push_bind(topic.clone())
                .push(")");
        }
        q.push(" ORDER BY i.source, i.event_id, i.topic LIMIT ")
            .push_bind(sql::fetch_limit(page));
        let rows: Vec<(i64, String, String, String, DateTime<Utc>)> =
            q.build_query_as().fetch_all(&self.reader).await?;
        let now = Utc::now();
        let items = rows
            .into_iter()
            .map(|(seq, source, event_id, topic, received_at)| StoredEvent {
                seq,
                source,
                event_id,
                topic,
                created_at: None,
                received_at,
                enrollment_id: None,
                body: String::new(),
                pruned_at: Some(now),
                id_taken: false,
                position: String::new(),
            })
            .collect();
        Ok(sql::page_by(items, page.limit, |e| {
            encode_cursor(&[&e.source, &e.event_id, &e.topic])
        }))
    }

    async fn quarantine(&self, r: NewQuarantine) -> Result<i64> {
        log::insert_quarantine::<Postgres>(&mut *self.writer.acquire().await?, &r).await
    }

    async fn import_quarantine(&self, r: &QuarantineRecord) -> Result<bool> {
        log::import_quarantine::<Postgres>(&mut *self.writer.acquire().await?, r).await
    }

    async fn prune_quarantine(&self, keep: u64, max_bytes: u64) -> Result<u64> {
        log::prune_quarantine::<Postgres>(&mut *self.writer.acquire().await?, keep, max_bytes).await
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
        log::get_quarantine::<Postgres>(&mut *self.reader.acquire().await?, id).await
    }

    async fn resolve_quarantine(&self, id: i64, resolution: &str) -> Result<()> {
        log::resolve_quarantine::<Postgres>(
            &mut *self.writer.acquire().await?,
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
        log::list_enrollments(&self.reader, f, page, now).await
    }

    async fn get_enrollment(&self, source: &str, enrollment_id: i64) -> Result<Option<Enrollment>> {
        let mut conn = self.reader.acquire().await?;
        log::load_enrollment::<Postgres>(&mut conn, source, enrollment_id).await
    }

    async fn enrollments_through(
        &self,
        source: &str,
        enrollment_ids: &[i64],
        _seq: i64,
    ) -> Result<Vec<Enrollment>> {
        // The projection commits with the events: any read is through them.
        log::load_enrollments(&self.reader, source, enrollment_ids).await
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
        courses::course_stats(&self.reader, &self.medians, source, now).await
    }

    async fn activity(&self, query: &ActivityQuery) -> Result<Vec<DayActivity>> {
        crate::store::shared::courses::activity(&self.reader, query).await
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
            let txid = sql::cursor_i64(&parts[0])?;
            let seq = sql::cursor_i64(&parts[1])?;
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
        // The newest row below the horizon: whatever commits later has a
        // txid at or above it, so it comes after this position.
        let last: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT txid::text, seq FROM events WHERE true {} ORDER BY txid DESC, seq DESC LIMIT 1",
            Self::FEED_HORIZON
        )))
        .fetch_optional(&self.reader)
        .await?;
        Ok(last.map(|(txid, seq)| encode_cursor(&[&txid, &seq.to_string()])))
    }

    async fn insert_reconciliation(&self, run: &NewReconciliation) -> Result<i64> {
        log::insert_reconciliation::<Postgres>(&mut *self.writer.acquire().await?, run).await
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

    async fn reconciliation_turn(&self) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        self.advisory_turn(RECONCILIATION_LOCK).await
    }

    async fn course_funnel(
        &self,
        source: &str,
        course_id: i64,
        stalled: &Stalled,
    ) -> Result<Option<Funnel>> {
        learning_reads::funnel(&self.reader, source, course_id, stalled).await
    }

    async fn stalled_learners(
        &self,
        filter: &StalledFilter,
        page: &PageRequest,
    ) -> Result<Page<(Enrollment, LearnerRow)>> {
        learning_reads::stalled(&self.reader, filter, page).await
    }

    async fn student(&self, source: &str, user_id: i64, events: i64) -> Result<StudentRecord> {
        learning_reads::student(&self.reader, EVENT_COLUMNS, source, user_id, events).await
    }

    async fn lessons_of(
        &self,
        source: &str,
        user_id: i64,
        course_id: Option<i64>,
    ) -> Result<Vec<LessonDone>> {
        learning_reads::lessons_of(&self.reader, source, user_id, course_id).await
    }

    async fn quiz_stats(
        &self,
        source: Option<&str>,
        course_id: Option<i64>,
    ) -> Result<Vec<QuizStats>> {
        learning_reads::quiz_stats(&self.reader, source, course_id).await
    }

    async fn course_learning(
        &self,
        source: Option<&str>,
        stalled: &Stalled,
    ) -> Result<Vec<CourseLearning>> {
        learning_reads::course_learning(&self.reader, source, stalled).await
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
            sqlx::query(
                "LOCK TABLE enrollments, lesson_completions, course_lessons, learners,
                 stall_buckets, course_learners, quiz_results, event_users, course_totals,
                 course_expiries, activity_days IN EXCLUSIVE MODE",
            )
            .execute(&mut *tx)
            .await?;
        }
        let mut report =
            rebuild::refold_all::<Postgres>(&mut tx, None, dry_run, async |conn, rows| {
                upsert_enrollments(conn, &rows).await
            })
            .await?;
        if !dry_run {
            rebuild::delete_orphans::<Postgres>(&mut tx).await?;
        }
        // After the enrollments, which the learners copy.
        let learning =
            crate::store::shared::learning::rebuild::<Postgres>(&mut tx, None, dry_run).await?;
        report.learning = learning.rows;
        report.index_rows = learning.index_rows;
        // From the enrollments as rebuilt (a dry run compares with them as stored).
        report.courses = courses::recompute(&mut tx, dry_run).await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(report)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn add_body_dictionary(&self, dictionary: &[u8], make_current: bool) -> Result<i64> {
        let mut conn = self.writer.acquire().await?;
        crate::store::shared::dictionaries::add::<Postgres>(&mut conn, dictionary, make_current)
            .await
    }

    async fn refresh_statistics(&self) -> Result<()> {
        // VACUUM too, for the projection: it marks the freshly loaded pages
        // all-visible, so index-only scans (the course medians, stalled
        // counts) stop visiting the heap (a median walk after a 1M-event
        // import: 135 ms with 83,366 heap fetches, 16 ms with none). One
        // statement over the simple protocol: VACUUM refuses to run in a
        // transaction block, which several statements in one string make.
        let mut conn = self.writer.acquire().await?;
        sqlx::raw_sql(
            "VACUUM (ANALYZE) enrollments, lesson_completions, course_lessons, learners,
                 stall_buckets, course_learners, quiz_results, event_users, course_totals,
                 course_expiries, activity_days",
        )
        .execute(&mut *conn)
        .await?;
        // The rest of what an import writes is read through its indexes and
        // the heap anyway: fresh statistics are enough.
        sqlx::raw_sql("ANALYZE events, outbox")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    fn milestone_cell(&self) -> &crate::store::milestones::RulesCell {
        &self.milestones
    }

    async fn milestone_scan_turn(&self) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        self.advisory_turn(STALLED_SCAN_LOCK).await
    }
}
