//! Course statistics on SQLite without scanning every enrollment.
//!
//! `course_totals` holds, per (source, course), what the statistics sum up;
//! `course_expiries` counts not-completed enrollments by month of expiry.
//! Both change in the same transaction as the enrollment row
//! ([`deltas`](crate::store::shared::courses::deltas): remove the row's old
//! contribution, add its new one; PostgreSQL keeps the same tables), so
//! readers always see totals that match the projection. What depends on the
//! time of reading (expired, and so trial and active) is resolved when read:
//! whole past months come from `course_expiries`, the current month from the
//! `enrollments_expiring` index. The median days to complete is read from the
//! `enrollments_completion_days` index at the middle position, which the
//! totals give, when the course's row has a version this process has not
//! walked ([`Medians`]).
//!
//! `activity_days` counts, the same way, new enrollments and completions per
//! UTC day, source and course, for the activity chart: a year of it reads a
//! few rows per course and day, however many enrollments there are.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::codec::fmt_ts;
use crate::store::shared::courses::{Median, Medians, differing_rows, median_mismatch, rederive};
use crate::store::*;

/// Takes the next `course_totals` version (see `course_totals_versions`).
pub(super) const NEXT_TOTALS_VERSION: &str =
    "UPDATE course_totals_versions SET last = last + 1 RETURNING last";

/// Adds a course's delta to its totals (one row), with a new version.
pub(super) const TOTALS_UPSERT: &str = "INSERT INTO course_totals (source, course_id, name,
        enrollments, completed, open_trials, progress_micros, with_days, version)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (source, course_id) DO UPDATE SET
        version = excluded.version,
        name = CASE WHEN excluded.name IS NOT NULL AND (name IS NULL OR excluded.name > name)
                    THEN excluded.name ELSE name END,
        enrollments = enrollments + excluded.enrollments,
        completed = completed + excluded.completed,
        open_trials = open_trials + excluded.open_trials,
        progress_micros = progress_micros + excluded.progress_micros,
        with_days = with_days + excluded.with_days";

/// Adds a (course, month) delta to the expiry counts (one row).
pub(super) const EXPIRIES_UPSERT: &str = "INSERT INTO course_expiries (source, course_id, month,
        enrollments, trials)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (month, source, course_id) DO UPDATE SET
        enrollments = enrollments + excluded.enrollments,
        trials = trials + excluded.trials";

/// Adds a (day, source, course) delta to the activity counts (one row).
pub(super) const ACTIVITY_UPSERT: &str = "INSERT INTO activity_days (day, source, course_id,
        enrolled, completed)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (day, source, course_id) DO UPDATE SET
        enrolled = enrolled + excluded.enrolled,
        completed = completed + excluded.completed";

/// The three tables derived from scratch from the enrollments: (table,
/// columns compared by `rebuild --check`, the query).
const DERIVED: [(&str, &str, &str); 3] = [
    (
        "course_totals",
        "source, course_id, enrollments, completed, open_trials, progress_micros, with_days",
        "SELECT source, course_id, MAX(course_name) AS name, COUNT(*) AS enrollments,
                SUM(completed) AS completed, SUM(trial = 1 AND completed = 0) AS open_trials,
                SUM(CAST(ROUND(progress * 1000000) AS INTEGER)) AS progress_micros,
                COUNT(days_to_complete) AS with_days
         FROM enrollments WHERE course_id IS NOT NULL GROUP BY source, course_id",
    ),
    (
        "course_expiries",
        "source, course_id, month, enrollments, trials",
        "SELECT source, course_id, substr(expiry_date, 1, 7) AS month, COUNT(*) AS enrollments,
                SUM(trial) AS trials
         FROM enrollments
         WHERE completed = 0 AND expiry_date IS NOT NULL AND course_id IS NOT NULL
         GROUP BY source, course_id, substr(expiry_date, 1, 7)",
    ),
    (
        "activity_days",
        "day, source, course_id, enrolled, completed",
        "SELECT day, source, course_id, SUM(enrolled) AS enrolled, SUM(completed) AS completed
         FROM (SELECT substr(COALESCE(created_at, activated_at, started_at), 1, 10) AS day,
                      source, IFNULL(course_id, 0) AS course_id, 1 AS enrolled, 0 AS completed
               FROM enrollments WHERE COALESCE(created_at, activated_at, started_at) IS NOT NULL
               UNION ALL
               SELECT substr(completed_at, 1, 10), source, IFNULL(course_id, 0), 0, 1
               FROM enrollments WHERE completed = 1 AND completed_at IS NOT NULL)
         GROUP BY day, source, course_id",
    ),
];

/// Rows of the course and activity tables that differ from the enrollments
/// (see [`differing_rows`]); unless a dry run, the tables are then derived
/// again (for `rebuild`).
pub(super) async fn recompute(conn: &mut SqliteConnection, dry_run: bool) -> Result<u64> {
    let mut differ = 0;
    for (table, cols, derived) in DERIVED {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(differing_rows(table, cols, derived)))
            .fetch_one(&mut *conn)
            .await?;
        differ += n as u64;
        if !dry_run {
            sqlx::raw_sql(sqlx::AssertSqlSafe(rederive(table, derived)))
                .execute(&mut *conn)
                .await?;
            if table == "course_totals" {
                // Rows written again get a version no reader has cached.
                let version: i64 = sqlx::query_scalar(NEXT_TOTALS_VERSION)
                    .fetch_one(&mut *conn)
                    .await?;
                sqlx::query("UPDATE course_totals SET version = ?")
                    .bind(version)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(differ)
}

/// Per-course statistics at `now`, from the totals.
pub(super) async fn course_stats(
    pool: &SqlitePool,
    medians: &Medians,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<CourseStats>> {
    let now_text = fmt_ts(&now);
    let month = &now_text[..7];
    // One read transaction: the totals and the expiry counts are one snapshot.
    let mut tx = pool.begin().await?;

    let mut q = QueryBuilder::<Sqlite>::new(
        "SELECT source, course_id, name, enrollments, completed, open_trials, progress_micros,
                with_days, version
         FROM course_totals WHERE enrollments > 0",
    );
    if let Some(s) = source {
        q.push(" AND source = ").push_bind(s.to_owned());
    }
    q.push(" ORDER BY source, course_id");
    let totals = q.build().fetch_all(&mut *tx).await?;

    // (expired, expired trials) per course: whole past months, then this month so far.
    let mut expired: HashMap<(String, i64), (i64, i64)> = HashMap::new();
    let mut past = QueryBuilder::<Sqlite>::new(
        "SELECT source, course_id, SUM(enrollments), SUM(trials) FROM course_expiries
         WHERE month < ",
    );
    past.push_bind(month.to_owned());
    let mut current = QueryBuilder::<Sqlite>::new(
        "SELECT source, course_id, COUNT(*), SUM(trial) FROM enrollments
         WHERE completed = 0 AND expiry_date IS NOT NULL AND course_id IS NOT NULL
           AND expiry_date >= ",
    );
    current
        .push_bind(format!("{month}-01T00:00:00.000000Z"))
        .push(" AND expiry_date < ")
        .push_bind(now_text.clone());
    for q in [&mut past, &mut current] {
        if let Some(s) = source {
            q.push(" AND source = ").push_bind(s.to_owned());
        }
        q.push(" GROUP BY source, course_id");
        for row in q.build().fetch_all(&mut *tx).await? {
            let entry = expired
                .entry((row.try_get(0)?, row.try_get(1)?))
                .or_default();
            entry.0 += row.try_get::<i64, _>(2)?;
            entry.1 += row.try_get::<i64, _>(3)?;
        }
    }

    let mut stats = Vec::with_capacity(totals.len());
    let mut walked = Vec::new();
    for row in &totals {
        let source: String = row.try_get("source")?;
        let course_id: i64 = row.try_get("course_id")?;
        let enrollments: i64 = row.try_get("enrollments")?;
        let completed: i64 = row.try_get("completed")?;
        let open_trials: i64 = row.try_get("open_trials")?;
        let with_days: i64 = row.try_get("with_days")?;
        let progress_micros: i64 = row.try_get("progress_micros")?;
        let (expired, expired_trials) = expired
            .get(&(source.clone(), course_id))
            .copied()
            .unwrap_or_default();
        let trial = open_trials - expired_trials;
        let key = (source, course_id);
        let version: i64 = row.try_get("version")?;
        let median_days_to_complete = match medians.get(&key, version) {
            Some(cached) => cached.median,
            None => {
                let median = median_days(&mut tx, &key.0, course_id, with_days).await?;
                walked.push((
                    key.clone(),
                    Median {
                        version,
                        median,
                        middle_rows: 2 - with_days % 2,
                    },
                ));
                median
            }
        };
        let (source, course_id) = key;
        let counts = CourseCounts {
            enrollments,
            completed,
            expired,
            trial,
        };
        stats.push(CourseStats::from_counts(
            source,
            course_id,
            row.try_get("name")?,
            counts,
            progress_micros as f64 / enrollments.max(1) as f64 / 1_000_000.0,
            median_days_to_complete,
        ));
    }
    tx.rollback().await?;
    medians.put(walked);
    Ok(stats)
}

/// The median of a course's days to complete, read at the middle of the
/// `enrollments_completion_days` index (one or two values).
async fn median_days(
    conn: &mut SqliteConnection,
    source: &str,
    course_id: i64,
    with_days: i64,
) -> Result<Option<f64>> {
    if with_days <= 0 {
        return Ok(None);
    }
    let middle: Vec<f64> = sqlx::query_scalar(
        "SELECT days_to_complete FROM enrollments INDEXED BY enrollments_completion_days
         WHERE source = ? AND course_id = ? AND days_to_complete IS NOT NULL
         ORDER BY days_to_complete LIMIT ? OFFSET ?",
    )
    .bind(source)
    .bind(course_id)
    .bind(if with_days % 2 == 0 { 2 } else { 1 })
    .bind((with_days - 1) / 2)
    .fetch_all(&mut *conn)
    .await?;
    Ok(match middle[..] {
        [m] => Some(m),
        [a, b] => Some((a + b) / 2.0),
        _ => return Err(median_mismatch(source, course_id, with_days)),
    })
}
