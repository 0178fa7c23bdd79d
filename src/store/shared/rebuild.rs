//! `rebuild`'s walk over the log written once for both backends (see
//! [`super`]): every enrollment's events folded again and compared with the
//! stored projection. What stays per backend: the transaction and its locks,
//! how changed rows are written, and SQLite's topic index and course tables.

use sqlx::QueryBuilder;

use crate::projection::{self, Enrollment};
use crate::store::dialect::{Binds, Cols, Dialect};
use crate::store::shared::log::load_enrollment;
use crate::store::*;

/// Enrollments per page of the walk.
const KEYS_PER_PAGE: i64 = 1000;

/// The stored projection rows that no event supports any more.
const ORPHANS: &str = "FROM enrollments AS e WHERE NOT EXISTS (
    SELECT 1 FROM events AS v WHERE v.source = e.source AND v.enrollment_id = e.enrollment_id)";

/// Folds every enrollment of the log (events up to seq `through`, if given)
/// on `conn`, a transaction of the caller; counts what differs from the
/// stored projection, hands each page's changed rows to `write` (unless a
/// dry run) and counts the orphans (see [`delete_orphans`]).
pub(crate) async fn refold_all<DB: Dialect>(
    conn: &mut DB::Connection,
    through: Option<i64>,
    dry_run: bool,
    mut write: impl AsyncFnMut(&mut DB::Connection, Vec<Enrollment>) -> Result<()>,
) -> Result<RebuildReport>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut report = RebuildReport::default();
    let mut last: (String, i64) = (String::new(), i64::MIN);
    loop {
        let mut q = QueryBuilder::<DB>::new(
            "SELECT DISTINCT source, enrollment_id FROM events
             WHERE enrollment_id IS NOT NULL AND (source, enrollment_id) > (",
        );
        q.push_bind(last.0.clone())
            .push(", ")
            .push_bind(last.1)
            .push(")");
        if let Some(through) = through {
            q.push(" AND seq <= ").push_bind(through);
        }
        q.push(" ORDER BY source, enrollment_id LIMIT ")
            .push_bind(KEYS_PER_PAGE);
        let keys = q
            .build()
            .fetch_all(DB::on(conn))
            .await?
            .iter()
            .map(|r| Ok((r.text("source")?, r.int("enrollment_id")?)))
            .collect::<Result<Vec<(String, i64)>>>()?;
        let Some(tail) = keys.last().cloned() else {
            break;
        };
        let mut changed = Vec::new();
        for (source, id) in keys {
            let (n, folded) = refold::<DB>(conn, &source, id, through).await?;
            report.events += n as u64;
            let Some(folded) = folded else { continue };
            report.enrollments += 1;
            let stored = load_enrollment::<DB>(conn, &source, id).await?;
            if stored.as_ref() != Some(&folded) {
                report.changed += 1;
                changed.push(folded);
            }
        }
        if !dry_run && !changed.is_empty() {
            write(conn, changed).await?;
        }
        last = tail;
    }
    let row = QueryBuilder::<DB>::new(format!("SELECT COUNT(*) AS n {ORPHANS}"))
        .build()
        .fetch_one(DB::on(conn))
        .await?;
    report.removed = row.int("n")? as u64;
    Ok(report)
}

/// Deletes the projection rows that no event supports any more.
pub(crate) async fn delete_orphans<DB: Dialect>(conn: &mut DB::Connection) -> Result<()> {
    QueryBuilder::<DB>::new(format!("DELETE {ORPHANS}"))
        .build()
        .execute(DB::on(conn))
        .await?;
    Ok(())
}

/// Folds the logged events of one enrollment (up to seq `through`, if given):
/// what `rebuild` does for every enrollment, and PostgreSQL's slow path for
/// late events.
pub(crate) async fn refold<DB: Dialect>(
    conn: &mut DB::Connection,
    source: &str,
    enrollment_id: i64,
    through: Option<i64>,
) -> Result<(usize, Option<Enrollment>)>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "SELECT topic, event_id, body, body_zstd, body_dict FROM events WHERE source = ",
    );
    q.push_bind(source.to_owned())
        .push(" AND enrollment_id = ")
        .push_bind(enrollment_id);
    if let Some(through) = through {
        q.push(" AND seq <= ").push_bind(through);
    }
    let rows = q.build().fetch_all(DB::on(conn)).await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let (topic, event_id) = (row.text("topic")?, row.text("event_id")?);
        let body = crate::store::rows::log_body(row, source, &event_id, &topic)?;
        events.extend(enrollment_event_from_log(&topic, &event_id, &body)?);
    }
    Ok((rows.len(), projection::fold(source, events)))
}
