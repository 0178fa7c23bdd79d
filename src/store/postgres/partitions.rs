//! The event log's monthly partitions (migration 23).
//!
//! A row whose month has no partition cannot be inserted, so the batch
//! writer makes the months a batch needs before its transaction begins (once
//! per month and process: [`Months`] remembers what exists), and retention
//! drops the months of prunable events that lie wholly before its cutoff.
//! Their identities stay in `event_ids`, so redeliveries are still duplicates.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, Months as MonthSpan, NaiveDate, TimeZone, Utc};
use sqlx::postgres::PgPool;

use crate::store::{Result, StoreError};

/// The advisory lock `enrollhook_event_month` takes ("evmonths" in ASCII):
/// retention takes it too, so it never drops a month being made.
const MONTHS_LOCK: i64 = 0x6576_6d6f_6e74_6873;

/// How long retention waits for the lock a drop needs on `events_prunable`
/// (every insert takes a lighter one): a long reader of the log would
/// otherwise queue every delivery behind the drop. Past it, the month is
/// pruned row by row this time and dropped at a later run.
const DROP_LOCK_TIMEOUT: &str = "2s";

/// How long a batch waits for the lock that making a month's partitions
/// takes on the parent tables (every insert holds a lighter one, and so does
/// a long reader such as an export): a batch that cannot have it fails and is
/// redelivered, instead of every delivery queueing behind the wait.
const MAKE_LOCK_TIMEOUT: &str = "2s";

/// Next month's partitions are made this long before it begins, by the
/// first batch that finds them missing, without failing it if they cannot be
/// made then (tried again a minute later): so the month's first batch finds
/// them made.
const AHEAD: chrono::Duration = chrono::Duration::days(7);
const AHEAD_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// A month, as (year, month 1-12), UTC.
type Month = (i32, u32);

fn month_of(t: DateTime<Utc>) -> Month {
    (t.year(), t.month())
}

fn first_instant(m: Month) -> Option<DateTime<Utc>> {
    let day = NaiveDate::from_ymd_opt(m.0, m.1, 1)?;
    Some(Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0)?))
}

/// The months whose partitions this process knows exist.
#[derive(Default)]
pub(super) struct Months {
    known: Mutex<HashSet<Month>>,
    /// When making next month ahead last failed.
    ahead_failed: Mutex<Option<std::time::Instant>>,
}

impl Months {
    /// Makes the partitions of every month of `times` that this process has
    /// not seen yet, in a short transaction of its own (the lock it takes on
    /// the parent tables is held only for that).
    pub(super) async fn ensure(
        &self,
        pool: &PgPool,
        times: impl IntoIterator<Item = DateTime<Utc>>,
    ) -> Result<()> {
        let missing: Vec<Month> = {
            let known = self.known.lock().expect("months lock");
            let mut missing: Vec<Month> = times
                .into_iter()
                .map(month_of)
                .filter(|m| !known.contains(m))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{MAKE_LOCK_TIMEOUT}'"
        )))
        .execute(&mut *tx)
        .await?;
        for &m in &missing {
            let Some(at) = first_instant(m) else { continue };
            sqlx::query("SELECT enrollhook_event_month($1)")
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.known.lock().expect("months lock").extend(missing);
        Ok(())
    }

    /// Makes next month's partitions when it begins within [`AHEAD`], best
    /// effort: a failure is logged and tried again after [`AHEAD_RETRY`].
    pub(super) async fn prepare_next(&self, pool: &PgPool, now: DateTime<Utc>) {
        let Some((month, next)) = month_ahead(now) else {
            return;
        };
        if self.known.lock().expect("months lock").contains(&month) {
            return;
        }
        {
            let mut failed = self.ahead_failed.lock().expect("months lock");
            if failed.is_some_and(|at| at.elapsed() < AHEAD_RETRY) {
                return;
            }
            *failed = None;
        }
        if let Err(e) = self.ensure(pool, [next]).await {
            tracing::warn!(error = %e, "could not make next month's partitions of the event log yet; trying again in a minute");
            *self.ahead_failed.lock().expect("months lock") = Some(std::time::Instant::now());
        }
    }

    /// Forgets what this process knew: another instance's retention may have
    /// dropped a month it remembers (see [`is_missing_partition`]).
    pub(super) fn forget(&self) {
        self.known.lock().expect("months lock").clear();
    }

    fn forget_month(&self, m: Month) {
        self.known.lock().expect("months lock").remove(&m);
    }
}

/// Next month (and an instant in it) once it begins within [`AHEAD`].
fn month_ahead(now: DateTime<Utc>) -> Option<(Month, DateTime<Utc>)> {
    let next = now.checked_add_signed(AHEAD)?;
    (month_of(next) != month_of(now)).then(|| (month_of(next), next))
}

/// An insert found no partition for its row: this process's [`Months`] was
/// out of date. The batch is retried after [`Months::forget`].
pub(super) fn is_missing_partition(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(sqlx::Error::Database(db)) => {
            db.code().as_deref() == Some("23514") && db.message().contains("no partition")
        }
        _ => false,
    }
}

/// What dropping whole months removed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Dropped {
    /// Events whose bodies were still there.
    pub events: u64,
    pub partitions: u64,
}

/// Drops the `events_prunable` months that end at or before `cutoff`, each
/// in a transaction of its own with the student index rows of its events.
pub(super) async fn drop_prunable_months(
    pool: &PgPool,
    months: &Months,
    cutoff: DateTime<Utc>,
) -> Result<Dropped> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events_prunable'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = Dropped::default();
    for name in names {
        let Some(month) = parse_partition_month(&name) else {
            continue; // not one of ours: an operator's own partition stays
        };
        let ends =
            first_instant(month).and_then(|first| first.checked_add_months(MonthSpan::new(1)));
        if ends.is_none_or(|ends| ends > cutoff) {
            continue;
        }
        match drop_month(pool, &name).await {
            Ok(events) => {
                months.forget_month(month);
                dropped.events += events;
                dropped.partitions += 1;
            }
            Err(e) if e.sqlstate().as_deref() == Some("55P03") => {
                tracing::info!(
                    partition = %name,
                    "retention: the log is busy; this month is pruned row by row and dropped later"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dropped)
}

async fn drop_month(pool: &PgPool, name: &str) -> Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MONTHS_LOCK)
        .execute(&mut *tx)
        .await?;
    // `name` is a partition's name read from the catalog and matched by
    // `parse_partition_month`: letters, digits and underscores only.
    let events: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {name} WHERE pruned_at IS NULL"
    )))
    .fetch_one(&mut *tx)
    .await?;
    // A student's timeline lists what the log still holds.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM event_users AS u USING {name} AS e WHERE u.seq = e.seq AND u.source = e.source"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(events as u64)
}

/// `events_prunable_y2026m12` → (2026, 12).
fn parse_partition_month(name: &str) -> Option<Month> {
    let rest = name.strip_prefix("events_prunable_y")?;
    let (year, month) = rest.split_once('m')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(year, 4) || !digits(month, 2) {
        return None;
    }
    let year: i32 = year.parse().ok()?;
    let month: u32 = month.parse().ok()?;
    ((1..=12).contains(&month)).then_some((year, month))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_give_their_month_and_nothing_else_does() {
        assert_eq!(
            parse_partition_month("events_prunable_y2026m12"),
            Some((2026, 12))
        );
        assert_eq!(parse_partition_month("events_prunable_y2026m13"), None);
        assert_eq!(parse_partition_month("events_kept_y2026m12"), None);
        assert_eq!(parse_partition_month("events_prunable_archive"), None);
        assert_eq!(parse_partition_month("events_prunable_y2026m1"), None);
        assert_eq!(parse_partition_month("events_prunable_y+202m01"), None);
    }

    #[test]
    fn next_month_is_made_in_the_last_week_of_this_one() {
        let day = |m, d| Utc.with_ymd_and_hms(2026, m, d, 12, 0, 0).unwrap();
        assert_eq!(month_ahead(day(12, 7)), None);
        assert_eq!(month_ahead(day(12, 24)), None);
        assert_eq!(month_ahead(day(12, 25)).map(|m| m.0), Some((2027, 1)));
        assert_eq!(month_ahead(day(2, 22)).map(|m| m.0), Some((2026, 3)));
    }

    #[test]
    fn a_month_begins_at_midnight_utc_on_its_first_day() {
        let t = first_instant((2026, 2)).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert_eq!(month_of(t), (2026, 2));
    }
}
