//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, so
//! a committed transaction survives a crash or power loss.
//!
//! One connection writes (SQLite allows one writer at a time anyway; the group
//! commit in [`crate::ingest`] feeds it whole batches), a small pool reads
//! concurrently from WAL snapshots.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::sqlite_courses;
use super::*;
use crate::projection::{self, Apply, Enrollment, Version};
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
];

pub struct SqliteStore {
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
}

/// Timestamps are stored as fixed-width RFC 3339 text in UTC, so text order is time order.
pub(super) fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| fmt_ts(&t))
}

pub(super) fn fmt_ts(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
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

const ENROLLMENT_COLUMNS: &str = "source, enrollment_id, user_id, email, first_name, last_name, \
    course_id, course_name, progress, trial, completed, activated_at, started_at, completed_at, \
    expiry_date, created_at, updated_at, event_count, v_updated_at, v_created_at, v_event_id";

pub(super) const EVENT_COLUMNS: &str =
    "seq, source, event_id, topic, created_at, received_at, enrollment_id, body";

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
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        source: row.try_get("source")?,
        event_id: row.try_get("event_id")?,
        topic: row.try_get("topic")?,
        created_at: parse_ts(row.try_get("created_at")?)?,
        received_at: req_ts(row.try_get("received_at")?)?,
        enrollment_id: row.try_get("enrollment_id")?,
        body: row.try_get("body")?,
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

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`, e.g. `sqlite://enrollhook.db`.
    pub async fn open(url: &str, migrate: bool) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory");
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        // An in-memory database exists once per connection: read through the writer.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.read_only(true))
                .await?
        };
        let store = SqliteStore { writer, reader };
        store.migrate(migrate).await?;
        Ok(store)
    }

    async fn migrate(&self, apply: bool) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS enrollhook_migrations (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )
        .execute(&self.writer)
        .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM enrollhook_migrations")
                .fetch_one(&self.writer)
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
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
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

async fn upsert_enrollment(conn: &mut SqliteConnection, e: &Enrollment) -> Result<()> {
    sqlx::query(
        "INSERT INTO enrollments (source, enrollment_id, user_id, email, first_name, last_name,
            course_id, course_name, progress, trial, completed, activated_at, started_at,
            completed_at, expiry_date, created_at, updated_at, days_to_complete, event_count,
            v_updated_at, v_created_at, v_event_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (source, enrollment_id) DO UPDATE SET
            user_id = excluded.user_id, email = excluded.email, first_name = excluded.first_name,
            last_name = excluded.last_name, course_id = excluded.course_id,
            course_name = excluded.course_name, progress = excluded.progress,
            trial = excluded.trial, completed = excluded.completed,
            activated_at = excluded.activated_at, started_at = excluded.started_at,
            completed_at = excluded.completed_at, expiry_date = excluded.expiry_date,
            created_at = excluded.created_at, updated_at = excluded.updated_at,
            days_to_complete = excluded.days_to_complete, event_count = excluded.event_count,
            v_updated_at = excluded.v_updated_at, v_created_at = excluded.v_created_at,
            v_event_id = excluded.v_event_id",
    )
    .bind(&e.source)
    .bind(e.enrollment_id)
    .bind(e.user_id)
    .bind(&e.email)
    .bind(&e.first_name)
    .bind(&e.last_name)
    .bind(e.course_id)
    .bind(&e.course_name)
    .bind(e.progress)
    .bind(e.trial)
    .bind(e.completed)
    .bind(ts(e.activated_at))
    .bind(ts(e.started_at))
    .bind(ts(e.completed_at))
    .bind(ts(e.expiry_date))
    .bind(ts(e.created_at))
    .bind(ts(e.updated_at))
    .bind(e.days_to_complete())
    .bind(e.event_count)
    .bind(ts(e.version.updated_at))
    .bind(ts(e.version.created_at))
    .bind(&e.version.event_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Folds every logged event of one enrollment: the slow path for late events,
/// and what `rebuild` does for every enrollment.
async fn refold(
    conn: &mut SqliteConnection,
    source: &str,
    enrollment_id: i64,
) -> Result<(usize, Option<Enrollment>)> {
    let rows = sqlx::query(
        "SELECT topic, event_id, body FROM events WHERE source = ? AND enrollment_id = ?",
    )
    .bind(source)
    .bind(enrollment_id)
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

    async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let subscriptions = sqlite_forward::enabled_subscriptions(&mut tx).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        for ev in events {
            let seq: Option<i64> = sqlx::query_scalar(
                "INSERT INTO events (source, event_id, topic, created_at, received_at, enrollment_id, body)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (source, event_id) DO NOTHING
                 RETURNING seq",
            )
            .bind(&ev.source)
            .bind(&ev.event_id)
            .bind(&ev.topic)
            .bind(ts(ev.created_at))
            .bind(fmt_ts(&ev.received_at))
            .bind(ev.enrollment_id())
            .bind(&ev.body)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(seq) = seq else {
                outcomes.push(AppendOutcome::Duplicate);
                continue;
            };
            if let Some(enrollment) = &ev.enrollment {
                let id = enrollment.payload.id;
                let current = load_enrollment(&mut tx, &ev.source, id).await?;
                let next = match projection::apply(current.as_ref(), &ev.source, enrollment) {
                    Apply::Newer(next) => Some(next),
                    Apply::Older => refold(&mut tx, &ev.source, id).await?.1,
                };
                sqlite_courses::adjust(&mut tx, current.as_ref(), next.as_ref()).await?;
                if let Some(next) = next {
                    upsert_enrollment(&mut tx, &next).await?;
                }
            }
            sqlite_forward::enqueue(&mut tx, &subscriptions, ev, seq).await?;
            outcomes.push(AppendOutcome::Stored { seq });
        }
        tx.commit().await?;
        Ok(outcomes)
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
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
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
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(quarantine_from_row).transpose()
    }

    async fn resolve_quarantine(&self, id: i64, resolution: &str) -> Result<()> {
        sqlx::query("UPDATE quarantine SET resolved_at = ?, resolution = ? WHERE id = ?")
            .bind(fmt_ts(&Utc::now()))
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
        sqlite_courses::course_stats(&self.reader, source, now).await
    }

    async fn list_events(&self, f: &EventFilter, page: &PageRequest) -> Result<Page<StoredEvent>> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"));
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
        let mut after = f.after_seq.unwrap_or(0);
        if let Some(c) = &page.cursor {
            let cursor: i64 = decode_cursor(c, 1)?[0]
                .parse()
                .map_err(|_| StoreError::Invalid("invalid cursor".into()))?;
            after = after.max(cursor);
        }
        q.push(" AND seq > ").push_bind(after);
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(i64::from(page.limit) + 1);
        let rows = q.build().fetch_all(&self.reader).await?;
        let mut items = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = (items.len() > page.limit as usize).then(|| {
            items.truncate(page.limit as usize);
            encode_cursor(&[&items.last().expect("non-empty").seq.to_string()])
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
        // One write transaction: deliveries wait (they do not fail) while it runs.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut report = RebuildReport::default();
        let mut last: (String, i64) = (String::new(), i64::MIN);
        loop {
            let keys: Vec<(String, i64)> = sqlx::query_as(
                "SELECT DISTINCT source, enrollment_id FROM events
                 WHERE enrollment_id IS NOT NULL AND (source, enrollment_id) > (?, ?)
                 ORDER BY source, enrollment_id LIMIT 1000",
            )
            .bind(&last.0)
            .bind(last.1)
            .fetch_all(&mut *tx)
            .await?;
            let Some(tail) = keys.last().cloned() else {
                break;
            };
            for (source, id) in keys {
                let (n, folded) = refold(&mut tx, &source, id).await?;
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
        if dry_run {
            tx.rollback().await?;
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE {orphan_sql}")))
                .execute(&mut *tx)
                .await?;
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
