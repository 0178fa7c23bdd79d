//! Retention written once for both backends (see [`super`]): the prune
//! rounds and the import of already-pruned events. Each backend runs a
//! round's statement where it writes (SQLite under its write lock, one
//! round at a time; PostgreSQL on its pool), so the writer is never held
//! for more than a round.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use crate::store::dialect::{Binds, Cols, Dialect};
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
    // 8 and 10, PostgreSQL 6 and 9), which pruned events leave. Learning
    // events are kept whole like enrollment events: the projection reads them.
    loop {
        let mut q = QueryBuilder::<DB>::new(
            "UPDATE events SET body = '', body_zstd = NULL, body_dict = NULL, pruned_at = ",
        );
        DB::push_now(&mut q);
        q.push(
            " WHERE seq IN (SELECT seq FROM events
                 WHERE received_at < ",
        )
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

/// Inserts events whose bodies retention emptied elsewhere (see
/// [`Store::append_pruned`]); `conn` is a transaction the caller commits.
pub(crate) async fn insert_pruned<DB: Dialect>(
    conn: &mut DB::Connection,
    events: &[StoredEvent],
) -> Result<Vec<AppendOutcome>>
where
    i64: Binds<DB>,
    Option<i64>: Binds<DB>,
    String: Binds<DB>,
{
    let mut outcomes = Vec::with_capacity(events.len());
    for e in events {
        let mut q = QueryBuilder::<DB>::new(
            "INSERT INTO events (source, event_id, topic, created_at, received_at,
                enrollment_id, body, pruned_at, id_taken) VALUES (",
        );
        q.separated(", ")
            .push_bind(e.source.clone())
            .push_bind(e.event_id.clone())
            .push_bind(e.topic.clone())
            .push_bind(DB::opt_time(e.created_at))
            .push_bind(DB::time(e.received_at))
            .push_bind(e.enrollment_id)
            .push_unseparated(", ''")
            .push_bind(DB::opt_time(e.pruned_at));
        // As in the batch writers: an id an earlier event already has is taken.
        q.push(", EXISTS (SELECT 1 FROM events WHERE source = ")
            .push_bind(e.source.clone())
            .push(" AND event_id = ")
            .push_bind(e.event_id.clone())
            .push(")");
        q.push(") ON CONFLICT (source, event_id, topic) DO NOTHING RETURNING seq");
        let row = q.build().fetch_optional(DB::on(conn)).await?;
        outcomes.push(match row {
            Some(row) => AppendOutcome::Stored {
                seq: row.int("seq")?,
            },
            None => AppendOutcome::Duplicate,
        });
    }
    Ok(outcomes)
}
