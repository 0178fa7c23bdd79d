//! Retention written once for both backends (see [`super`]): the prune
//! rounds. Each backend runs a
//! round's statement where it writes (SQLite under its write lock, one
//! round at a time; PostgreSQL on its pool), so the writer is never held
//! for more than a round.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use crate::store::dialect::{Binds, Dialect};
use crate::store::*;

/// Empties old bodies, deletes old attempts and finished deliveries, in
/// rounds of [`PRUNE_EVENTS_PER_ROUND`]; `run` executes one round's
/// statement and returns the rows it changed.
pub(crate) async fn prune<DB: Dialect, F, Fut>(
    cutoff: DateTime<Utc>,
    mut run: F,
) -> Result<PruneReport>
where
    i64: Binds<DB>,
    F: FnMut(QueryBuilder<DB>) -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    let mut report = PruneReport::default();
    // Each body by its own event's age (seq order is not arrival order: an
    // import or a re-admitted delivery can be older than the events before
    // it), in rounds of a few thousand, each its own short transaction,
    // found through the partial index of what is prunable (SQLite migration
    // 8 and 10; PostgreSQL 23, on its `events_prunable` partitions), which
    // pruned events leave. Learning events are kept whole like enrollment
    // events: the projection reads them. (PostgreSQL first drops the months
    // that lie wholly before the cutoff, see `postgres::partitions`.)
    loop {
        let table = DB::PRUNABLE_EVENTS;
        let mut q = QueryBuilder::<DB>::new(format!(
            "UPDATE {table} SET body = '', body_zstd = NULL, body_dict = NULL, pruned_at = "
        ));
        DB::push_now(&mut q);
        q.push(format!(
            " WHERE seq IN (SELECT seq FROM {table}
                 WHERE received_at < "
        ))
        .push_bind(DB::time(cutoff))
        .push(
            " AND enrollment_id IS NULL AND pruned_at IS NULL
              AND topic NOT IN ('lesson.completed', 'quiz.attempted')
              ORDER BY received_at LIMIT ",
        )
        .push_bind(PRUNE_EVENTS_PER_ROUND)
        .push(DB::SKIP_LOCKED)
        .push(")");
        let n = run(q).await?;
        report.events += n;
        if (n as i64) < PRUNE_EVENTS_PER_ROUND {
            break;
        }
    }
    loop {
        // Attempt ids follow time: look at the oldest few thousand only.
        let mut q = QueryBuilder::<DB>::new("DELETE FROM delivery_attempts WHERE attempted_at < ");
        q.push_bind(DB::time(cutoff))
            .push(" AND id IN (SELECT id FROM delivery_attempts ORDER BY id LIMIT ")
            .push_bind(PRUNE_EVENTS_PER_ROUND)
            .push(")");
        let n = run(q).await?;
        report.delivery_attempts += n;
        if n == 0 {
            break;
        }
    }
    loop {
        let mut q = QueryBuilder::<DB>::new(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                WHERE state <> 'pending' AND finished_at < ",
        );
        q.push_bind(DB::time(cutoff))
            .push(" LIMIT ")
            .push_bind(PRUNE_EVENTS_PER_ROUND)
            .push(")");
        let n = run(q).await?;
        report.deliveries += n;
        if (n as i64) < PRUNE_EVENTS_PER_ROUND {
            break;
        }
    }
    Ok(report)
}
