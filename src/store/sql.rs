//! Query building shared by both backends: the filters, cursors and pages
//! written once over sqlx's `QueryBuilder<DB>`. A backend binds its own
//! timestamp type (SQLite: fixed-width text; PostgreSQL: `timestamptz`) through
//! the `time` argument, and maps the rows with its own codec.

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{
    DeliveryFilter, EnrollmentFilter, Page, PageRequest, Result, StoreError, decode_cursor,
    encode_cursor, page_after,
};
use crate::projection::Status;

/// `LIMIT` of a page: one row more than asked tells that more follow.
pub(crate) fn fetch_limit(page: &PageRequest) -> i64 {
    i64::from(page.limit) + 1
}

/// A page from `limit + 1` fetched rows, its cursor the key of its last item.
pub(crate) fn page_by<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = (items.len() > limit as usize).then(|| {
        items.truncate(limit as usize);
        key(items.last().expect("non-empty"))
    });
    Page { items, next_cursor }
}

/// One integer cursor part.
pub(crate) fn cursor_i64(part: &str) -> Result<i64> {
    part.parse()
        .map_err(|_| StoreError::Invalid("invalid cursor".into()))
}

/// The `WHERE` terms of an enrollment listing (after a `WHERE <true>`), its
/// cursor (keyed by (source, enrollment id)), order and limit.
pub(crate) fn push_enrollment_query<DB, T>(
    q: &mut QueryBuilder<DB>,
    f: &EnrollmentFilter,
    page: &PageRequest,
    now: DateTime<Utc>,
    time: impl Fn(DateTime<Utc>) -> T,
) -> Result<()>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
    for<'t> T: Encode<'t, DB> + Type<DB>,
{
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
        q.push(" AND updated_at > ").push_bind(time(t));
    }
    if let Some(status) = f.status {
        q.push(" AND completed = ")
            .push_bind(status == Status::Completed);
        match status {
            Status::Completed => {}
            Status::Expired => {
                q.push(" AND expiry_date < ").push_bind(time(now));
            }
            Status::Trial | Status::Active => {
                q.push(" AND (expiry_date IS NULL OR expiry_date >= ")
                    .push_bind(time(now))
                    .push(") AND trial = ")
                    .push_bind(status == Status::Trial);
            }
        }
    }
    if let Some(c) = &page.cursor {
        let parts = decode_cursor(c, 2)?;
        q.push(" AND (source, enrollment_id) > (")
            .push_bind(parts[0].clone())
            .push(", ")
            .push_bind(cursor_i64(&parts[1])?)
            .push(")");
    }
    q.push(" ORDER BY source, enrollment_id LIMIT ")
        .push_bind(fetch_limit(page));
    Ok(())
}

/// The cursor of an enrollment page's last item.
pub(crate) fn enrollment_cursor(e: &crate::projection::Enrollment) -> String {
    encode_cursor(&[&e.source, &e.enrollment_id.to_string()])
}

/// Delivery attempts, in the order they were made or newest first (then the
/// cursor pages backwards).
pub(crate) fn attempts_query<DB>(
    subscription_id: Option<&str>,
    event_seq: Option<i64>,
    page: &PageRequest,
    newest_first: bool,
) -> Result<QueryBuilder<DB>>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new("SELECT * FROM delivery_attempts WHERE ");
    match (newest_first, &page.cursor) {
        (false, cursor) => q.push("id > ").push_bind(page_after(cursor)?),
        (true, None) => q.push("1 = 1"),
        (true, cursor) => q.push("id < ").push_bind(page_after(cursor)?),
    };
    if let Some(s) = subscription_id {
        q.push(" AND subscription_id = ").push_bind(s.to_owned());
    }
    if let Some(seq) = event_seq {
        q.push(" AND event_seq = ").push_bind(seq);
    }
    q.push(if newest_first {
        " ORDER BY id DESC LIMIT "
    } else {
        " ORDER BY id LIMIT "
    })
    .push_bind(fetch_limit(page));
    Ok(q)
}

/// Outbox deliveries with their event's identity, in outbox order.
pub(crate) fn deliveries_query<DB>(
    f: &DeliveryFilter,
    page: &PageRequest,
) -> Result<QueryBuilder<DB>>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "SELECT o.*, e.source, e.event_id, e.topic FROM outbox AS o \
         JOIN events AS e ON e.seq = o.event_seq WHERE o.id > ",
    );
    q.push_bind(page_after(&page.cursor)?);
    if let Some(s) = &f.subscription_id {
        q.push(" AND o.subscription_id = ").push_bind(s.clone());
    }
    if let Some(seq) = f.event_seq {
        q.push(" AND o.event_seq = ").push_bind(seq);
    }
    if let Some(state) = f.state {
        q.push(" AND o.state = ")
            .push_bind(state.as_str().to_owned());
    }
    q.push(" ORDER BY o.id LIMIT ").push_bind(fetch_limit(page));
    Ok(q)
}

/// The quarantine, newest first (what an operator looks for), optionally of one source.
pub(crate) fn quarantine_query<DB>(
    source: Option<&str>,
    page: &PageRequest,
) -> Result<QueryBuilder<DB>>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let before = match &page.cursor {
        Some(c) => cursor_i64(&decode_cursor(c, 1)?[0])?,
        None => i64::MAX,
    };
    let mut q = QueryBuilder::<DB>::new("SELECT * FROM quarantine WHERE id < ");
    q.push_bind(before);
    if let Some(s) = source {
        q.push(" AND source = ").push_bind(s.to_owned());
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(fetch_limit(page));
    Ok(q)
}

/// The quarantine prune (see [`crate::store::Store::prune_quarantine`]): the
/// newest id to delete is the larger of the count bound's and the byte
/// bound's, the latter found by a running sum over the newest records, read
/// backwards through the primary key and stopped at the first over the bound.
pub(crate) fn quarantine_prune<DB>(keep: u64, max_bytes: u64) -> QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "DELETE FROM quarantine WHERE id <= (SELECT MAX(cut) FROM (
             SELECT MAX(id) - ",
    );
    q.push_bind(i64::try_from(keep).unwrap_or(i64::MAX));
    q.push(
        " AS cut FROM quarantine
             UNION ALL
             SELECT cut FROM (
                 SELECT id AS cut FROM (
                     SELECT id, SUM(length(body)) OVER (ORDER BY id DESC) AS total
                     FROM quarantine) AS sized
                 WHERE total > ",
    );
    q.push_bind(i64::try_from(max_bytes).unwrap_or(i64::MAX));
    q.push(" ORDER BY cut DESC LIMIT 1) AS by_bytes) AS cuts)");
    q
}
