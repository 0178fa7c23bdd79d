//! The quarantine, enrollment and event-log queries of [`crate::store::Store`]
//! written once for both backends (see [`super`]). Which connection a query
//! runs on stays the backend's choice (SQLite reads the quarantine on its
//! write connection, PostgreSQL on its reader pool), and so do the columns an
//! event is read with (PostgreSQL adds its commit-order position).

use chrono::{DateTime, Utc};
use sqlx::{Pool, QueryBuilder};

use crate::projection::Enrollment;
use crate::store::dialect::{Binds, Cols, Dialect};
use crate::store::rows::*;
use crate::store::shared::fetch_mapped;
use crate::store::*;

/// Stores a rejected delivery and returns its id.
pub(crate) async fn insert_quarantine<DB: Dialect>(
    conn: &mut DB::Connection,
    r: &NewQuarantine,
) -> Result<i64>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Vec<u8>: Binds<DB>,
{
    let (body, body_size, source, reason_code, reason) = r.to_store();
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO quarantine (source, received_at, reason_code, reason, headers, body, body_size)
         VALUES (",
    );
    q.separated(", ")
        .push_bind(source)
        .push_bind(DB::time(r.received_at))
        .push_bind(reason_code)
        .push_bind(reason)
        .push_bind(DB::json(&r.headers))
        .push_bind(body.to_vec())
        .push_bind(body_size);
    q.push(") RETURNING id");
    q.build().fetch_one(DB::on(conn)).await?.int("id")
}

/// Imports a quarantine record unless one with the same source, arrival,
/// reason and body is there; tells whether it was inserted.
pub(crate) async fn import_quarantine<DB: Dialect>(
    conn: &mut DB::Connection,
    r: &QuarantineRecord,
) -> Result<bool>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
    Vec<u8>: Binds<DB>,
{
    let source = without_nul(&r.source).into_owned();
    let reason_code = without_nul(&r.reason_code).into_owned();
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO quarantine (source, received_at, reason_code, reason, headers, body,
            body_size, resolved_at, resolution) SELECT ",
    );
    q.separated(", ")
        .push_bind(source.clone())
        .push_bind(DB::time(r.received_at))
        .push_bind(reason_code.clone())
        .push_bind(without_nul(&r.reason).into_owned())
        .push_bind(DB::json(&r.headers))
        .push_bind(r.body.clone())
        .push_bind(r.body_size)
        .push_bind(DB::opt_time(r.resolved_at))
        .push_bind(r.resolution.clone());
    q.push(" WHERE NOT EXISTS (SELECT 1 FROM quarantine WHERE source = ")
        .push_bind(source)
        .push(" AND received_at = ")
        .push_bind(DB::time(r.received_at))
        .push(" AND reason_code = ")
        .push_bind(reason_code)
        .push(" AND body = ")
        .push_bind(r.body.clone())
        .push(") RETURNING id");
    Ok(q.build().fetch_optional(DB::on(conn)).await?.is_some())
}

/// Deletes the oldest quarantine records beyond both bounds (see [`sql::quarantine_prune`]).
pub(crate) async fn prune_quarantine<DB: Dialect>(
    conn: &mut DB::Connection,
    keep: u64,
    max_bytes: u64,
) -> Result<u64>
where
    i64: Binds<DB>,
{
    let done = sql::quarantine_prune::<DB>(keep, max_bytes)
        .build()
        .execute(DB::on(conn))
        .await?;
    Ok(DB::rows_affected(&done))
}

pub(crate) async fn list_quarantine<DB: Dialect>(
    pool: &Pool<DB>,
    source: Option<&str>,
    page: &PageRequest,
) -> Result<Page<QuarantineRecord>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let q = sql::quarantine_query::<DB>(source, page)?;
    let items = fetch_mapped(pool, q, quarantine_from_row).await?;
    Ok(page_of(items, page.limit, |r| r.id))
}

/// The id of the newest quarantined delivery (of `source`), if any.
pub(crate) async fn newest_quarantine<DB: Dialect>(
    pool: &Pool<DB>,
    source: Option<&str>,
) -> Result<Option<i64>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new("SELECT id FROM quarantine");
    if let Some(s) = source {
        q.push(" WHERE source = ").push_bind(s.to_owned());
    }
    q.push(" ORDER BY id DESC LIMIT 1");
    Ok(fetch_mapped(pool, q, |row| row.int("id")).await?.pop())
}

pub(crate) async fn get_quarantine<DB: Dialect>(
    conn: &mut DB::Connection,
    id: i64,
) -> Result<Option<QuarantineRecord>>
where
    i64: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new("SELECT * FROM quarantine WHERE id = ");
    q.push_bind(id);
    let row = q.build().fetch_optional(DB::on(conn)).await?;
    row.as_ref().map(quarantine_from_row).transpose()
}

pub(crate) async fn resolve_quarantine<DB: Dialect>(
    conn: &mut DB::Connection,
    id: i64,
    resolution: &str,
    now: DateTime<Utc>,
) -> Result<()>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new("UPDATE quarantine SET resolved_at = ");
    q.push_bind(DB::time(now))
        .push(", resolution = ")
        .push_bind(resolution.to_owned())
        .push(" WHERE id = ")
        .push_bind(id);
    q.build().execute(DB::on(conn)).await?;
    Ok(())
}

pub(crate) async fn list_enrollments<DB: Dialect>(
    pool: &Pool<DB>,
    f: &EnrollmentFilter,
    page: &PageRequest,
    now: DateTime<Utc>,
) -> Result<Page<Enrollment>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    bool: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE 1 = 1"
    ));
    sql::push_enrollment_query(&mut q, f, page, now, DB::time)?;
    let items = fetch_mapped(pool, q, enrollment_from_row).await?;
    Ok(sql::page_by(items, page.limit, sql::enrollment_cursor))
}

/// One projected enrollment, as stored.
pub(crate) async fn load_enrollment<DB: Dialect>(
    conn: &mut DB::Connection,
    source: &str,
    enrollment_id: i64,
) -> Result<Option<Enrollment>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE source = "
    ));
    q.push_bind(source.to_owned())
        .push(" AND enrollment_id = ")
        .push_bind(enrollment_id);
    let row = q.build().fetch_optional(DB::on(conn)).await?;
    row.as_ref().map(enrollment_from_row).transpose()
}

/// Several projected enrollments of one source in one statement (the
/// forwarder's batch of templated deliveries); ids not found are absent.
pub(crate) async fn load_enrollments<DB: Dialect>(
    pool: &Pool<DB>,
    source: &str,
    enrollment_ids: &[i64],
) -> Result<Vec<Enrollment>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    if enrollment_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE source = "
    ));
    q.push_bind(source.to_owned())
        .push(" AND enrollment_id IN (");
    let mut ids = q.separated(", ");
    for id in enrollment_ids {
        ids.push_bind(*id);
    }
    q.push(")");
    fetch_mapped(pool, q, enrollment_from_row).await
}

/// The logged events of one enrollment, in log order, read with `event_columns`.
pub(crate) async fn enrollment_events<DB: Dialect>(
    pool: &Pool<DB>,
    event_columns: &str,
    source: &str,
    enrollment_id: i64,
) -> Result<Vec<StoredEvent>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {event_columns} FROM events WHERE source = "
    ));
    q.push_bind(source.to_owned())
        .push(" AND enrollment_id = ")
        .push_bind(enrollment_id)
        .push(" ORDER BY seq");
    fetch_mapped(pool, q, event_from_row).await
}

/// One logged event by its identity, read with `event_columns` (see
/// [`Store::get_event`]).
pub(crate) async fn get_event<DB: Dialect>(
    pool: &Pool<DB>,
    event_columns: &str,
    source: &str,
    event_id: &str,
    topic: Option<&str>,
) -> Result<Option<StoredEvent>>
where
    String: Binds<DB>,
{
    // Through the identity table's unique key (see [`Dialect::EVENT_IDS`]).
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {event_columns} FROM events WHERE seq IN (SELECT seq FROM {} WHERE source = ",
        DB::EVENT_IDS
    ));
    q.push_bind(source.to_owned())
        .push(" AND event_id = ")
        .push_bind(event_id.to_owned())
        .push(") ORDER BY seq");
    let found = fetch_mapped(pool, q, event_from_row).await?;
    one_event(found, source, event_id, topic)
}

/// Records a reconciliation run; returns its id.
pub(crate) async fn insert_reconciliation<DB: Dialect>(
    conn: &mut DB::Connection,
    r: &NewReconciliation,
) -> Result<i64>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Option<String>: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO reconciliations (source, started_at, finished_at, resume_from, report, error)
         VALUES (",
    );
    q.separated(", ")
        .push_bind(r.source.clone())
        .push_bind(DB::time(r.started_at))
        .push_bind(DB::time(r.finished_at))
        .push_bind(DB::opt_time(r.resume_from))
        .push_bind(DB::json(&r.report))
        .push_bind(r.error.clone());
    q.push(") RETURNING id");
    q.build().fetch_one(DB::on(conn)).await?.int("id")
}

/// Reconciliation runs, newest first, of one source or all.
pub(crate) async fn list_reconciliations<DB: Dialect>(
    pool: &Pool<DB>,
    source: Option<&str>,
    page: &PageRequest,
) -> Result<Page<ReconciliationRecord>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new("SELECT * FROM reconciliations WHERE 1 = 1");
    if let Some(s) = source {
        q.push(" AND source = ").push_bind(s.to_owned());
    }
    if page.cursor.is_some() {
        q.push(" AND id < ").push_bind(page_after(&page.cursor)?);
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(page.limit) + 1);
    let items = fetch_mapped(pool, q, |row| {
        Ok(ReconciliationRecord {
            id: row.int("id")?,
            source: row.text("source")?,
            started_at: row.time("started_at")?,
            finished_at: row.time("finished_at")?,
            resume_from: row.opt_time("resume_from")?,
            report: row.json("report", "reconciliation report")?,
            error: row.opt_text("error")?,
        })
    })
    .await?;
    Ok(page_of(items, page.limit, |r| r.id))
}

/// Where the next reconciliation of `source` starts: the newest run's
/// resume point (a failed run has none, so the one before it counts).
pub(crate) async fn reconciliation_resume_point<DB: Dialect>(
    pool: &Pool<DB>,
    source: &str,
) -> Result<Option<DateTime<Utc>>>
where
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "SELECT resume_from FROM reconciliations WHERE resume_from IS NOT NULL AND source = ",
    );
    q.push_bind(source.to_owned())
        .push(" ORDER BY id DESC LIMIT 1");
    let found = fetch_mapped(pool, q, |row| row.opt_time("resume_from")).await?;
    Ok(found.into_iter().next().flatten())
}
