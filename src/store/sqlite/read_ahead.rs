//! Enrollments as of a log position the projector has not reached yet.
//!
//! A templated forward usually leaves right after its delivery commits, before
//! the projector (which works in batches, off the deliveries' path) has
//! applied it. Hurrying the projector for every such claim cost a small
//! projection transaction per claim and a wait for a low-priority thread,
//! which under load tipped forwarding into a backlog (BENCHMARKS.md). Instead
//! the reader folds what the projection lacks itself: the projected rows and
//! the projection's cursor from one snapshot, then the logged events of those
//! enrollments after the cursor, applied with the projector's own rules. The
//! projection is left as it was; the projector gets there on its schedule.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};

use super::codec::EVENT_COLUMNS;
use crate::projection::{self, Apply, Enrollment, EnrollmentEvent};
use crate::store::rows::{ENROLLMENT_COLUMNS, enrollment_from_row, event_from_row};
use crate::store::{Result, enrollment_event_from_log};

/// The enrollments `ids` of `source` as projected through at least log
/// position `seq`; ids with no event up to there are absent. When the
/// projection has reached `seq` (the cursor says so) this is one statement.
pub(super) async fn enrollments_folded_through(
    conn: &mut SqliteConnection,
    source: &str,
    ids: &[i64],
    seq: i64,
) -> Result<Vec<Enrollment>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // One statement, so one snapshot: the rows are exactly the cursor's
    // state (the cursor comes with every row, and alone when none matches).
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "SELECT projected_through_seq, {ENROLLMENT_COLUMNS} FROM projection_cursor
         LEFT JOIN enrollments ON source = "
    ));
    push_source_and_ids(&mut q, source, ids);
    let rows = q.build().fetch_all(&mut *conn).await?;
    let mut cursor = i64::MAX;
    let mut projected = Vec::with_capacity(rows.len());
    for row in &rows {
        cursor = row.try_get("projected_through_seq")?;
        if row.try_get::<Option<i64>, _>("enrollment_id")?.is_some() {
            projected.push(enrollment_from_row(row)?);
        }
    }
    // The log only grows: what it holds up to `seq` is there now.
    let lacking = if cursor < seq {
        logged_events(conn, source, ids, cursor, seq).await?
    } else {
        Vec::new()
    };
    if lacking.is_empty() {
        return Ok(projected);
    }

    let mut state: HashMap<i64, Enrollment> = projected
        .into_iter()
        .map(|e| (e.enrollment_id, e))
        .collect();
    let mut late = Vec::new();
    for (id, event) in &lacking {
        match projection::apply(state.get(id), source, event) {
            Apply::Newer(next) => {
                state.insert(*id, next);
            }
            // Older than what is folded in: the whole history decides, as
            // when the projector re-folds an enrollment.
            Apply::Older => late.push(*id),
        }
    }
    late.sort_unstable();
    late.dedup();
    for id in late {
        let history = logged_events(conn, source, &[id], 0, seq).await?;
        if let Some(folded) = projection::fold(source, history.into_iter().map(|(_, e)| e)) {
            state.insert(id, folded);
        }
    }
    Ok(state.into_values().collect())
}

/// The enrollment events of `ids` in the log after position `after` and up to
/// `through`, in log order.
async fn logged_events(
    conn: &mut SqliteConnection,
    source: &str,
    ids: &[i64],
    after: i64,
    through: i64,
) -> Result<Vec<(i64, EnrollmentEvent)>> {
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE source = "
    ));
    push_source_and_ids(&mut q, source, ids);
    q.push(" AND seq > ")
        .push_bind(after)
        .push(" AND seq <= ")
        .push_bind(through)
        .push(" ORDER BY seq");
    let rows = q.build().fetch_all(&mut *conn).await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let stored = event_from_row(row)?;
        let Some(id) = stored.enrollment_id else {
            continue;
        };
        if let Some(event) =
            enrollment_event_from_log(&stored.topic, &stored.event_id, &stored.body)?
        {
            events.push((id, event));
        }
    }
    Ok(events)
}

/// `?source AND enrollment_id IN (?ids)`, after a query ending in `source = `.
fn push_source_and_ids(q: &mut QueryBuilder<Sqlite>, source: &str, ids: &[i64]) {
    q.push_bind(source).push(" AND enrollment_id IN (");
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    q.push(")");
}
