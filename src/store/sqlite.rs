//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so
//! a committed transaction survives a crash or power loss, and beside it the
//! projection's file (`<database>-projection`, see [`sqlite_projector`]),
//! derived from the first and attached to every connection that reads it.
//!
//! One writer of the main file at a time (SQLite allows no more), under one
//! lock: group-commit batches go to [`sqlite_batch`]'s thread, which runs each
//! in one call; everything else writes through a sqlx connection. The
//! projection file has its own writer, the projector thread. A small pool
//! reads both concurrently from WAL snapshots.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};

use super::sqlite_batch::{self, Batch, BatchWriter};
use super::sqlite_courses;
use super::sqlite_projector::{self, Projector};
use super::*;
use crate::projection::{self, Enrollment, Version};
use crate::store::sqlite_forward;

/// Schema versions, applied in order, each in its own transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "forwarding",
        include_str!("migrations/sqlite/0002_forwarding.sql"),
    ),
    (
        3,
        "course totals",
        include_str!("migrations/sqlite/0003_course_totals.sql"),
    ),
    (
        4,
        "retention",
        include_str!("migrations/sqlite/0004_retention.sql"),
    ),
    (
        5,
        "projection cursor",
        include_str!("migrations/sqlite/0005_projection_cursor.sql"),
    ),
    (
        6,
        "projection in a file of its own",
        include_str!("migrations/sqlite/0006_projection_file.sql"),
    ),
    (
        7,
        "topic index in the projection file",
        include_str!("migrations/sqlite/0007_topic_index_to_projection.sql"),
    ),
];

pub struct SqliteStore {
    /// Checkpoints the WAL off the write path (see [`spawn_checkpointer`]).
    checkpointer: tokio::task::AbortHandle,
    pub(super) writer: Writer,
    pub(super) reader: SqlitePool,
    /// Group-commit batches, each in one call (see [`sqlite_batch`]).
    batch: BatchWriter,
    /// Keeps the projection file (see [`sqlite_projector`]).
    projector: Projector,
    /// The enabled subscriptions as last read; the batch writer tells when
    /// they changed (another process, or this one, wrote them).
    subscriptions: tokio::sync::Mutex<Option<Arc<sqlite_batch::Subscriptions>>>,
}

/// Timestamps are stored as fixed-width RFC 3339 text in UTC, so text order is time order.
pub(super) fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| fmt_ts(&t))
}

pub(super) fn fmt_ts(t: &DateTime<Utc>) -> String {
    // `%Y-%m-%dT%H:%M:%S%.6fZ` through chrono's RFC 3339 writer, which skips
    // parsing a format string on every call (3 % of the batch writer's time).
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(super) fn parse_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>> {
    s.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| StoreError::Corrupt(format!("bad timestamp `{s}` in database")))
    })
    .transpose()
}

pub(super) fn req_ts(s: String) -> Result<DateTime<Utc>> {
    parse_ts(Some(s)).map(|t| t.expect("Some in, Some out"))
}

pub(super) const ENROLLMENT_COLUMNS: &str = "source, enrollment_id, user_id, email, first_name, last_name, \
    course_id, course_name, progress, trial, completed, activated_at, started_at, completed_at, \
    expiry_date, created_at, updated_at, event_count, v_updated_at, v_created_at, v_event_id";

pub(super) const EVENT_COLUMNS: &str =
    "seq, source, event_id, topic, created_at, received_at, enrollment_id, body, pruned_at";

fn enrollment_from_row(row: &SqliteRow) -> Result<Enrollment> {
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
        activated_at: parse_ts(row.try_get("activated_at")?)?,
        started_at: parse_ts(row.try_get("started_at")?)?,
        completed_at: parse_ts(row.try_get("completed_at")?)?,
        expiry_date: parse_ts(row.try_get("expiry_date")?)?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        updated_at: parse_ts(row.try_get("updated_at")?)?,
        event_count: row.try_get("event_count")?,
        version: Version {
            updated_at: parse_ts(row.try_get("v_updated_at")?)?,
            created_at: parse_ts(row.try_get("v_created_at")?)?,
            event_id: row.try_get("v_event_id")?,
        },
    })
}

pub(super) fn event_from_row(row: &SqliteRow) -> Result<StoredEvent> {
    let seq: i64 = row.try_get("seq")?;
    Ok(StoredEvent {
        seq,
        source: row.try_get("source")?,
        event_id: row.try_get("event_id")?,
        topic: row.try_get("topic")?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        received_at: req_ts(row.try_get("received_at")?)?,
        enrollment_id: row.try_get("enrollment_id")?,
        body: row.try_get("body")?,
        pruned_at: parse_ts(row.try_get("pruned_at")?)?,
        position: encode_cursor(&[&seq.to_string()]),
    })
}

fn quarantine_from_row(row: &SqliteRow) -> Result<QuarantineRecord> {
    let headers: String = row.try_get("headers")?;
    Ok(QuarantineRecord {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        received_at: req_ts(row.try_get("received_at")?)?,
        reason_code: row.try_get("reason_code")?,
        reason: row.try_get("reason")?,
        headers: serde_json::from_str(&headers)
            .map_err(|e| StoreError::Corrupt(format!("quarantine headers: {e}")))?,
        body: row.try_get("body")?,
        body_size: row.try_get("body_size")?,
        resolved_at: parse_ts(row.try_get("resolved_at")?)?,
        resolution: row.try_get("resolution")?,
    })
}

/// The one write connection. A lock, not a pool: handing a pooled connection
/// back costs a task hop per batch (~0.4 ms measured).
pub(super) struct Writer {
    /// Also the lock of the batch writer thread's connection.
    conn: sqlite_batch::WriteLock,
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

/// WAL pages after which a commit checkpoints by itself. Only a backstop: the
/// background checkpointer keeps the WAL far smaller.
pub(super) const WAL_AUTOCHECKPOINT_BACKSTOP: u32 = 4_000;
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
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, e.g. `sqlite://enrollhook.db`.
    pub async fn open(url: &str, migrate_schema: bool) -> Result<SqliteStore> {
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
        migrate(&writer, migrate_schema).await?;
        let path = options.get_filename().to_owned();
        let projector = Projector::open(&path)?;
        let batch = BatchWriter::open(&path, writer.conn.clone(), projector.clone())?;
        let checkpointer = spawn_checkpointer(options.clone());
        let projection = sqlite_projector::projection_path(&path);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let projection = projection.clone();
                Box::pin(async move { attach_projection(conn, &projection).await })
            })
            .connect_with(options.clone().read_only(true))
            .await?;
        let store = SqliteStore {
            checkpointer,
            writer,
            reader,
            batch,
            projector,
            subscriptions: tokio::sync::Mutex::new(None),
        };
        // Events a crash left unprojected (usually none).
        store.projector.catch_up().await?;
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
        let (through, end): (i64, i64) =
            sqlx::query_as(sqlite_projector::PROJECTION_CURSOR_AND_LOG_END)
                .fetch_one(&self.reader)
                .await?;
        Ok(through >= end)
    }
}

/// Brings the main file's schema up to date (with `apply`), or says how.
async fn migrate(writer: &Writer, apply: bool) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS enrollhook_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )
    .execute(&mut *writer.lock().await?)
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM enrollhook_migrations")
            .fetch_one(&mut *writer.lock().await?)
            .await?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
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
            "the database schema is at version {current}, this enrollhook needs {latest}: run `enrollhook migrate`"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let mut writer = writer.lock().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Migrate(format!("migration {version} ({name}): {e}")))?;
        sqlx::query(
            "INSERT INTO enrollhook_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        )
        .bind(version)
        .bind(name)
        .bind(fmt_ts(&Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied SQLite migration");
    }
    Ok(())
}

/// Makes the projection file readable and writable on `conn` as if its
/// tables were the main file's (their names are unique across both).
async fn attach_projection(
    conn: &mut SqliteConnection,
    projection: &std::path::Path,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("ATTACH DATABASE ? AS projection")
        .bind(projection.to_string_lossy().into_owned())
        .execute(conn)
        .await?;
    Ok(())
}

async fn load_enrollment(
    conn: &mut SqliteConnection,
    source: &str,
    enrollment_id: i64,
) -> Result<Option<Enrollment>> {
    let sql = const_format_enrollment_select();
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(source)
        .bind(enrollment_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(enrollment_from_row).transpose()
}

fn const_format_enrollment_select() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE source = ? AND enrollment_id = ?"
        )
    })
}

/// The columns an enrollment row is written with, in bind order.
pub(super) const ENROLLMENT_WRITE_COLUMNS: &str = enrollment_write_columns!();

/// Turns an insert of [`ENROLLMENT_WRITE_COLUMNS`] into an upsert.
pub(super) const ENROLLMENT_UPSERT_ON_CONFLICT: &str = enrollment_upsert_on_conflict!();

/// Writes a projection row (for `rebuild`; batches go through [`BatchWriter`]).
async fn upsert_enrollment(conn: &mut SqliteConnection, e: &Enrollment) -> Result<()> {
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "INSERT INTO enrollments ({ENROLLMENT_WRITE_COLUMNS}) "
    ));
    q.push_values([e], |mut row, e| {
        row.push_bind(&e.source)
            .push_bind(e.enrollment_id)
            .push_bind(e.user_id)
            .push_bind(&e.email)
            .push_bind(&e.first_name)
            .push_bind(&e.last_name)
            .push_bind(e.course_id)
            .push_bind(&e.course_name)
            .push_bind(e.progress)
            .push_bind(e.trial)
            .push_bind(e.completed)
            .push_bind(ts(e.activated_at))
            .push_bind(ts(e.started_at))
            .push_bind(ts(e.completed_at))
            .push_bind(ts(e.expiry_date))
            .push_bind(ts(e.created_at))
            .push_bind(ts(e.updated_at))
            .push_bind(e.days_to_complete())
            .push_bind(e.event_count)
            .push_bind(ts(e.version.updated_at))
            .push_bind(ts(e.version.created_at))
            .push_bind(&e.version.event_id);
    });
    q.push(" ").push(ENROLLMENT_UPSERT_ON_CONFLICT);
    q.build().execute(&mut *conn).await?;
    Ok(())
}

/// Folds the logged events of one enrollment up to `through` (seq): what
/// `rebuild` does for every enrollment.
async fn refold(
    conn: &mut SqliteConnection,
    source: &str,
    enrollment_id: i64,
    through: i64,
) -> Result<(usize, Option<Enrollment>)> {
    let rows = sqlx::query(
        "SELECT topic, event_id, body FROM events
         WHERE source = ? AND enrollment_id = ? AND seq <= ?",
    )
    .bind(source)
    .bind(enrollment_id)
    .bind(through)
    .fetch_all(&mut *conn)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let (topic, event_id, body): (String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        events.extend(enrollment_event_from_log(&topic, &event_id, &body)?);
    }
    Ok((rows.len(), projection::fold(source, events)))
}

fn push_status_filter(q: &mut QueryBuilder<Sqlite>, status: Status, now: &str) {
    match status {
        Status::Completed => {
            q.push(" AND completed = 1");
        }
        Status::Expired => {
            q.push(" AND completed = 0 AND expiry_date < ")
                .push_bind(now.to_owned());
        }
        Status::Trial | Status::Active => {
            q.push(" AND completed = 0 AND (expiry_date IS NULL OR expiry_date >= ")
                .push_bind(now.to_owned())
                .push(") AND trial = ")
                .push_bind(status == Status::Trial);
        }
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

    async fn sync_projection(&self) -> Result<()> {
        self.projector.catch_up().await
    }

    async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
        let mut known = self.subscriptions.lock().await;
        loop {
            let subscriptions = match known.as_ref() {
                Some(s) => s.clone(),
                None => {
                    let mut conn = self.reader.acquire().await?;
                    let read = sqlite_forward::subscriptions_for_batches(&mut conn).await?;
                    known.insert(Arc::new(read)).clone()
                }
            };
            match self.batch.append(events.to_vec(), subscriptions).await? {
                Batch::Committed(outcomes) => return Ok(outcomes),
                Batch::SubscriptionsChanged => *known = None,
            }
        }
    }

    async fn prune_events(&self, cutoff: DateTime<Utc>) -> Result<PruneReport> {
        let cutoff = fmt_ts(&cutoff);
        let mut report = PruneReport::default();
        // Rounds of a few thousand events, each its own short transaction.
        loop {
            let now = fmt_ts(&Utc::now());
            let mut writer = self.writer.lock().await?;
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
            let from: i64 = sqlx::query_scalar("SELECT pruned_through_seq FROM retention")
                .fetch_one(&mut *tx)
                .await?;
            // seq follows arrival, so the events before the cutoff are a prefix.
            let through: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM (SELECT seq, received_at FROM events WHERE seq > ?
                                       ORDER BY seq LIMIT ?) WHERE received_at < ?",
            )
            .bind(from)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .bind(&cutoff)
            .fetch_one(&mut *tx)
            .await?;
            let Some(through) = through else { break };
            let done = sqlx::query(
                "UPDATE events SET body = '', pruned_at = ?
                 WHERE seq > ? AND seq <= ? AND enrollment_id IS NULL AND pruned_at IS NULL",
            )
            .bind(&now)
            .bind(from)
            .bind(through)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE retention SET pruned_through_seq = ?")
                .bind(through)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            report.events += done.rows_affected();
        }
        loop {
            // Attempt ids follow time: look at the oldest few thousand only.
            let done = sqlx::query(
                "DELETE FROM delivery_attempts WHERE attempted_at < ?1 AND id IN
                    (SELECT id FROM delivery_attempts ORDER BY id LIMIT ?2)",
            )
            .bind(&cutoff)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .execute(&mut *self.writer.lock().await?)
            .await?;
            report.delivery_attempts += done.rows_affected();
            if done.rows_affected() == 0 {
                break;
            }
        }
        loop {
            let done = sqlx::query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                    WHERE state != 'pending' AND finished_at < ? LIMIT ?)",
            )
            .bind(&cutoff)
            .bind(PRUNE_EVENTS_PER_ROUND)
            .execute(&mut *self.writer.lock().await?)
            .await?;
            report.deliveries += done.rows_affected();
            if (done.rows_affected() as i64) < PRUNE_EVENTS_PER_ROUND {
                break;
            }
        }
        Ok(report)
    }

    async fn quarantine(&self, r: NewQuarantine) -> Result<i64> {
        let headers = serde_json::to_string(&r.headers).expect("strings serialize");
        let id = sqlx::query_scalar(
            "INSERT INTO quarantine (source, received_at, reason_code, reason, headers, body, body_size)
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&r.source)
        .bind(fmt_ts(&r.received_at))
        .bind(&r.reason_code)
        .bind(&r.reason)
        .bind(headers)
        .bind(&r.body)
        .bind(r.body.len() as i64)
        .fetch_one(&mut *self.writer.lock().await?)
        .await?;
        Ok(id)
    }

    async fn import_quarantine(&self, r: &QuarantineRecord) -> Result<bool> {
        let headers = serde_json::to_string(&r.headers).expect("strings serialize");
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO quarantine (source, received_at, reason_code, reason, headers, body,
                body_size, resolved_at, resolution)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
             WHERE NOT EXISTS (SELECT 1 FROM quarantine
                 WHERE source = ?1 AND received_at = ?2 AND reason_code = ?3 AND body = ?6)
             RETURNING id",
        )
        .bind(&r.source)
        .bind(fmt_ts(&r.received_at))
        .bind(&r.reason_code)
        .bind(&r.reason)
        .bind(headers)
        .bind(&r.body)
        .bind(r.body_size)
        .bind(ts(r.resolved_at))
        .bind(&r.resolution)
        .fetch_optional(&mut *self.writer.lock().await?)
        .await?;
        Ok(inserted.is_some())
    }

    async fn prune_quarantine(&self, keep: u64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM quarantine WHERE id <= (SELECT id FROM quarantine ORDER BY id DESC LIMIT 1 OFFSET ?)",
        )
        .bind(keep as i64)
        .execute(&mut *self.writer.lock().await?)
        .await?;
        Ok(done.rows_affected())
    }

    async fn list_quarantine(
        &self,
        source: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<QuarantineRecord>> {
        let before = match &page.cursor {
            Some(c) => decode_cursor(c, 1)?[0]
                .parse::<i64>()
                .map_err(|_| StoreError::Invalid("invalid cursor".into()))?,
            None => i64::MAX,
        };
        // Newest first: that is what an operator looks for.
        let rows = sqlx::query(
            "SELECT * FROM quarantine WHERE id < ? AND (? IS NULL OR source = ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(before)
        .bind(source)
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
        let row = sqlx::query("SELECT * FROM quarantine WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *self.writer.lock().await?)
            .await?;
        row.as_ref().map(quarantine_from_row).transpose()
    }

    async fn resolve_quarantine(&self, id: i64, resolution: &str) -> Result<()> {
        sqlx::query("UPDATE quarantine SET resolved_at = ?, resolution = ? WHERE id = ?")
            .bind(fmt_ts(&Utc::now()))
            .bind(resolution)
            .bind(id)
            .execute(&mut *self.writer.lock().await?)
            .await?;
        Ok(())
    }

    async fn list_enrollments(
        &self,
        f: &EnrollmentFilter,
        page: &PageRequest,
        now: DateTime<Utc>,
    ) -> Result<Page<Enrollment>> {
        self.projection_current().await;
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE 1 = 1"
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
            q.push(" AND updated_at > ").push_bind(fmt_ts(&t));
        }
        if let Some(s) = f.status {
            push_status_filter(&mut q, s, &fmt_ts(&now));
        }
        if let Some(c) = &page.cursor {
            let parts = decode_cursor(c, 2)?;
            let id: i64 = parts[1]
                .parse()
                .map_err(|_| StoreError::Invalid("invalid cursor".into()))?;
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
        self.projection_current().await;
        let mut conn = self.reader.acquire().await?;
        load_enrollment(&mut conn, source, enrollment_id).await
    }

    async fn enrollment_events(
        &self,
        source: &str,
        enrollment_id: i64,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE source = ? AND enrollment_id = ? ORDER BY seq"
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
        self.projection_current().await;
        sqlite_courses::course_stats(&self.reader, source, now).await
    }

    async fn activity(&self, query: &ActivityQuery) -> Result<Vec<DayActivity>> {
        self.projection_current().await;
        sqlite_courses::activity(&self.reader, query).await
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
            let cursor: i64 = decode_cursor(c, 1)?[0]
                .parse()
                .map_err(|_| StoreError::Invalid("invalid cursor".into()))?;
            after = after.max(cursor);
        }
        q.push(format!(" AND {seq} > ")).push_bind(after);
        q.push(format!(" ORDER BY {seq} LIMIT "))
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
            "SELECT {EVENT_COLUMNS} FROM events WHERE source = ? AND event_id = ?"
        )))
        .bind(source)
        .bind(event_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn rebuild_projection(&self, dry_run: bool) -> Result<RebuildReport> {
        self.projector.catch_up().await?;
        // One transaction on the projection file: the projector waits while
        // it runs; deliveries do not (the log file's write lock is not taken).
        let mut conn = self.writer.options.connect().await?;
        attach_projection(
            &mut conn,
            &sqlite_projector::projection_path(self.writer.options.get_filename()),
        )
        .await?;
        let mut tx = conn.begin().await?;
        // The projection file's write lock first (see `begin_projection`).
        sqlx::query("UPDATE projection_cursor SET projected_through_seq = projected_through_seq")
            .execute(&mut *tx)
            .await?;
        // What the projection is meant to reflect: events stored since are
        // applied by the batch writer after this, as usual.
        let through: i64 =
            sqlx::query_scalar("SELECT projected_through_seq FROM projection_cursor")
                .fetch_one(&mut *tx)
                .await?;
        let mut report = RebuildReport::default();
        let mut last: (String, i64) = (String::new(), i64::MIN);
        loop {
            let keys: Vec<(String, i64)> = sqlx::query_as(
                "SELECT DISTINCT source, enrollment_id FROM events
                 WHERE enrollment_id IS NOT NULL AND (source, enrollment_id) > (?, ?)
                   AND seq <= ?
                 ORDER BY source, enrollment_id LIMIT 1000",
            )
            .bind(&last.0)
            .bind(last.1)
            .bind(through)
            .fetch_all(&mut *tx)
            .await?;
            let Some(tail) = keys.last().cloned() else {
                break;
            };
            for (source, id) in keys {
                let (n, folded) = refold(&mut tx, &source, id, through).await?;
                report.events += n as u64;
                let Some(folded) = folded else { continue };
                report.enrollments += 1;
                let stored = load_enrollment(&mut tx, &source, id).await?;
                if stored.as_ref() != Some(&folded) {
                    report.changed += 1;
                    if !dry_run {
                        upsert_enrollment(&mut tx, &folded).await?;
                    }
                }
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
        // The topic index: one row per event up to `through`, as the log says.
        report.index_rows = sqlx::query_scalar::<_, i64>(concat!(
            "SELECT (SELECT COUNT(*) FROM events AS e WHERE e.seq <= ?1 AND NOT EXISTS (
                 SELECT 1 FROM event_topics AS t
                 WHERE t.seq = e.seq AND t.topic = e.topic AND t.resource = ",
            sqlite_projector::resource_of_topic!(),
            "))
             + (SELECT COUNT(*) FROM event_topics AS t WHERE t.seq > ?1 OR NOT EXISTS (
                 SELECT 1 FROM events AS e WHERE e.seq = t.seq AND e.topic = t.topic))"
        ))
        .bind(through)
        .fetch_one(&mut *tx)
        .await? as u64;
        if dry_run {
            tx.rollback().await?;
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE {orphan_sql}")))
                .execute(&mut *tx)
                .await?;
            if report.index_rows > 0 {
                sqlx::query("DELETE FROM event_topics")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sqlite_projector::INDEX_TOPICS_FROM_LOG)
                    .bind(0)
                    .bind(through)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlite_courses::recompute(&mut tx).await?;
            tx.commit().await?;
        }
        Ok(report)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_keep_their_fixed_width_format() {
        for (secs, nanos) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (253_402_300_799, 999_999_999),
        ] {
            let t = Utc.timestamp_opt(secs, nanos).unwrap();
            assert_eq!(fmt_ts(&t), t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
    }
}
