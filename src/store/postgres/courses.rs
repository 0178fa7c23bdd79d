//! Course statistics and the activity chart on PostgreSQL from per-course
//! totals (migration 18), like SQLite's (see `sqlite/courses.rs`): each batch
//! adds its enrollments' deltas ([`deltas`](crate::store::shared::courses::deltas))
//! in its own transaction; what depends on the time of reading (expired, and so
//! trial and active) is resolved when read, from whole past months in
//! `course_expiries` and the current month in `enrollments_expiring`; the
//! median days to complete is read at the middle of `enrollments_completion_days`
//! when a course's row has a version this instance has not walked ([`Medians`]).

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Postgres, QueryBuilder, Row};

use crate::projection::learning::{EnrolledCounts, StallDeltas};
use crate::store::shared::courses::{
    CourseDeltas, CourseKey, Median, Medians, TotalsDelta, differing_rows, median_mismatch,
    rederive,
};
use crate::store::*;

/// Adds a batch's deltas to the counters every batch of a course shares (the
/// course totals, expiries and activity days, the stall buckets and the
/// enrolled learners), in one
/// statement: each table's upsert is a data-modifying `WITH`, rows in key
/// order, so concurrent batches wait on them in one order, after every other
/// lock of the batch. One statement, not four: a batch's time is mostly round
/// trips (BENCHMARKS.md, "PostgreSQL: where a batch's time goes").
pub(super) async fn write_deltas(
    tx: &mut PgConnection,
    d: &CourseDeltas<'_>,
    stalls: &StallDeltas,
    enrolled: &EnrolledCounts,
) -> Result<()> {
    if d.totals.is_empty()
        && d.expiries.is_empty()
        && d.days.is_empty()
        && stalls.is_empty()
        && enrolled.is_empty()
    {
        return Ok(());
    }
    let mut totals: Vec<_> = d.totals.iter().collect();
    totals.sort_unstable_by_key(|(k, _)| *k);
    let total =
        |f: &dyn Fn(&TotalsDelta) -> i64| totals.iter().map(|(_, d)| f(d)).collect::<Vec<i64>>();
    let mut expiries: Vec<_> = d.expiries.iter().collect();
    expiries.sort_unstable_by_key(|(k, _)| *k);
    let mut days: Vec<_> = d.days.iter().collect();
    days.sort_unstable_by_key(|(k, _)| *k);
    sqlx::query(
        "WITH totals AS (
             INSERT INTO course_totals AS t (source, course_id, name, enrollments, completed,
                 open_trials, progress_micros, with_days)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[],
                 $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
                 AS d(source, course_id, name, enrollments, completed, open_trials,
                      progress_micros, with_days)
             ORDER BY source COLLATE \"C\", course_id
             ON CONFLICT (source, course_id) DO UPDATE SET
                 name = GREATEST(t.name, excluded.name),
                 enrollments = t.enrollments + excluded.enrollments,
                 completed = t.completed + excluded.completed,
                 open_trials = t.open_trials + excluded.open_trials,
                 progress_micros = t.progress_micros + excluded.progress_micros,
                 with_days = t.with_days + excluded.with_days),
         expiries AS (
             INSERT INTO course_expiries AS t (source, course_id, month, enrollments, trials)
             SELECT * FROM unnest($9::text[], $10::bigint[], $11::text[], $12::bigint[],
                 $13::bigint[]) AS d(source, course_id, month, enrollments, trials)
             ORDER BY source COLLATE \"C\", course_id, month COLLATE \"C\"
             ON CONFLICT (source, course_id, month) DO UPDATE SET
                 enrollments = t.enrollments + excluded.enrollments,
                 trials = t.trials + excluded.trials),
         days AS (
             INSERT INTO activity_days AS t (day, source, course_id, enrolled, completed)
             SELECT * FROM unnest($14::text[], $15::text[], $16::bigint[], $17::bigint[],
                 $18::bigint[]) AS d(day, source, course_id, enrolled, completed)
             ORDER BY day COLLATE \"C\", source COLLATE \"C\", course_id
             ON CONFLICT (day, source, course_id) DO UPDATE SET
                 enrolled = t.enrolled + excluded.enrolled,
                 completed = t.completed + excluded.completed),
         learners AS (
             INSERT INTO course_learners AS t (source, course_id, enrolled)
             SELECT * FROM unnest($24::text[], $25::bigint[], $26::bigint[])
                 AS d(source, course_id, enrolled)
             ORDER BY source COLLATE \"C\", course_id
             ON CONFLICT (source, course_id) DO UPDATE SET
                 enrolled = t.enrolled + excluded.enrolled)
         INSERT INTO stall_buckets AS t (source, course_id, last_lesson_id, activity_day,
             learners)
         SELECT * FROM unnest($19::text[], $20::bigint[], $21::bigint[], $22::text[],
             $23::bigint[]) AS d(source, course_id, last_lesson_id, activity_day, learners)
         ORDER BY source COLLATE \"C\", course_id, last_lesson_id, activity_day COLLATE \"C\"
         ON CONFLICT (source, course_id, last_lesson_id, activity_day)
         DO UPDATE SET learners = t.learners + excluded.learners",
    )
    .bind(totals.iter().map(|((s, _), _)| *s).collect::<Vec<&str>>())
    .bind(totals.iter().map(|((_, c), _)| *c).collect::<Vec<i64>>())
    .bind(
        totals
            .iter()
            .map(|(_, d)| d.name)
            .collect::<Vec<Option<&str>>>(),
    )
    .bind(total(&|d| d.enrollments))
    .bind(total(&|d| d.completed))
    .bind(total(&|d| d.open_trials))
    .bind(total(&|d| d.progress_micros))
    .bind(total(&|d| d.with_days))
    .bind(
        expiries
            .iter()
            .map(|((s, ..), _)| *s)
            .collect::<Vec<&str>>(),
    )
    .bind(
        expiries
            .iter()
            .map(|((_, c, _), _)| *c)
            .collect::<Vec<i64>>(),
    )
    .bind(
        expiries
            .iter()
            .map(|((.., m), _)| m.as_str())
            .collect::<Vec<&str>>(),
    )
    .bind(expiries.iter().map(|(_, n)| n.0).collect::<Vec<i64>>())
    .bind(expiries.iter().map(|(_, n)| n.1).collect::<Vec<i64>>())
    .bind(
        days.iter()
            .map(|((day, ..), _)| day.as_str())
            .collect::<Vec<&str>>(),
    )
    .bind(days.iter().map(|((_, s, _), _)| *s).collect::<Vec<&str>>())
    .bind(days.iter().map(|((.., c), _)| *c).collect::<Vec<i64>>())
    .bind(days.iter().map(|(_, n)| n.0).collect::<Vec<i64>>())
    .bind(days.iter().map(|(_, n)| n.1).collect::<Vec<i64>>())
    .bind(
        stalls
            .keys()
            .map(|(s, ..)| s.as_str())
            .collect::<Vec<&str>>(),
    )
    .bind(stalls.keys().map(|(_, c, ..)| *c).collect::<Vec<i64>>())
    .bind(stalls.keys().map(|(_, _, l, _)| *l).collect::<Vec<i64>>())
    .bind(
        stalls
            .keys()
            .map(|(.., day)| day.as_str())
            .collect::<Vec<&str>>(),
    )
    .bind(stalls.values().copied().collect::<Vec<i64>>())
    .bind(
        enrolled
            .keys()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<&str>>(),
    )
    .bind(enrolled.keys().map(|(_, c)| *c).collect::<Vec<i64>>())
    .bind(enrolled.values().copied().collect::<Vec<i64>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The three tables derived from scratch from the enrollments: (table,
/// columns compared by `rebuild --check`, the query). The expressions give
/// what [`deltas`](crate::store::shared::courses::deltas) gives: progress
/// rounded half away from zero like Rust's `f64::round` (PostgreSQL's
/// `round(float8)` rounds half to even; progress is never negative), months
/// and days in UTC.
const DERIVED: [(&str, &str, &str); 3] = [
    (
        "course_totals",
        "source, course_id, enrollments, completed, open_trials, progress_micros, with_days",
        "SELECT source, course_id, MAX(course_name) AS name, COUNT(*) AS enrollments,
                COUNT(*) FILTER (WHERE completed) AS completed,
                COUNT(*) FILTER (WHERE trial AND NOT completed) AS open_trials,
                SUM(floor(progress * 1000000)::bigint
                    + (progress * 1000000 - floor(progress * 1000000) >= 0.5)::int)::bigint
                    AS progress_micros,
                COUNT(days_to_complete) AS with_days
         FROM enrollments WHERE course_id IS NOT NULL GROUP BY source, course_id",
    ),
    (
        "course_expiries",
        "source, course_id, month, enrollments, trials",
        "SELECT source, course_id, to_char(expiry_date AT TIME ZONE 'UTC', 'YYYY-MM') AS month,
                COUNT(*) AS enrollments, COUNT(*) FILTER (WHERE trial) AS trials
         FROM enrollments
         WHERE NOT completed AND expiry_date IS NOT NULL AND course_id IS NOT NULL
         GROUP BY 1, 2, 3",
    ),
    (
        "activity_days",
        "day, source, course_id, enrolled, completed",
        "SELECT day, source, course_id, SUM(enrolled)::bigint AS enrolled,
                SUM(completed)::bigint AS completed
         FROM (SELECT to_char(COALESCE(created_at, activated_at, started_at) AT TIME ZONE 'UTC',
                              'YYYY-MM-DD') AS day,
                      source, COALESCE(course_id, 0) AS course_id, 1 AS enrolled, 0 AS completed
               FROM enrollments WHERE COALESCE(created_at, activated_at, started_at) IS NOT NULL
               UNION ALL
               SELECT to_char(completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), source,
                      COALESCE(course_id, 0), 0, 1
               FROM enrollments WHERE completed AND completed_at IS NOT NULL) AS d
         GROUP BY 1, 2, 3",
    ),
];

/// Rows of the course tables that differ from the enrollments (see
/// [`differing_rows`]); unless a dry run, the tables are then derived again.
pub(super) async fn recompute(conn: &mut PgConnection, dry_run: bool) -> Result<u64> {
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
        }
    }
    Ok(differ)
}

/// One course's row of the totals as read, before its median.
struct Totals {
    key: CourseKey,
    version: i64,
    name: Option<String>,
    counts: CourseCounts,
    progress_micros: i64,
    with_days: i64,
}

/// The totals of every course (of `source`) at `now`, with their versions:
/// `course_totals` and the expiry counts, no enrollment but those expiring
/// this month.
async fn read_totals(
    conn: &mut PgConnection,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Totals>> {
    let month_start = NaiveDate::from_ymd_opt(now.year(), now.month(), 1)
        .expect("the first of a month exists")
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let filter = |q: &mut QueryBuilder<Postgres>| {
        if let Some(s) = source {
            q.push(" AND source = ").push_bind(s.to_owned());
        }
    };
    let mut q = QueryBuilder::<Postgres>::new(
        "WITH past AS (
             SELECT source, course_id, SUM(enrollments) AS n, SUM(trials) AS t
             FROM course_expiries WHERE month < ",
    );
    q.push_bind(format!("{:04}-{:02}", now.year(), now.month()));
    filter(&mut q);
    q.push(
        " GROUP BY source, course_id),
         current AS (
             SELECT source, course_id, COUNT(*) AS n, COUNT(*) FILTER (WHERE trial) AS t
             FROM enrollments
             WHERE NOT completed AND expiry_date IS NOT NULL AND course_id IS NOT NULL
               AND expiry_date >= ",
    )
    .push_bind(month_start)
    .push(" AND expiry_date < ")
    .push_bind(now);
    filter(&mut q);
    q.push(
        " GROUP BY source, course_id)
         SELECT t.source, t.course_id, t.version, t.name, t.enrollments, t.completed,
                t.open_trials, t.progress_micros, t.with_days,
                (COALESCE(p.n, 0) + COALESCE(c.n, 0))::bigint AS expired,
                (COALESCE(p.t, 0) + COALESCE(c.t, 0))::bigint AS expired_trials
         FROM course_totals AS t
         LEFT JOIN past AS p ON p.source = t.source AND p.course_id = t.course_id
         LEFT JOIN current AS c ON c.source = t.source AND c.course_id = t.course_id
         WHERE t.enrollments > 0",
    );
    if let Some(s) = source {
        q.push(" AND t.source = ").push_bind(s.to_owned());
    }
    q.push(" ORDER BY t.source, t.course_id");
    let rows = q.build().fetch_all(&mut *conn).await?;
    let mut totals = Vec::with_capacity(rows.len());
    for row in &rows {
        let open_trials: i64 = row.try_get("open_trials")?;
        let expired_trials: i64 = row.try_get("expired_trials")?;
        totals.push(Totals {
            key: (row.try_get("source")?, row.try_get("course_id")?),
            version: row.try_get("version")?,
            name: row.try_get("name")?,
            counts: CourseCounts {
                enrollments: row.try_get("enrollments")?,
                completed: row.try_get("completed")?,
                expired: row.try_get("expired")?,
                trial: open_trials - expired_trials,
            },
            progress_micros: row.try_get("progress_micros")?,
            with_days: row.try_get("with_days")?,
        });
    }
    Ok(totals)
}

/// The cached medians of `totals` at their versions, and the courses with
/// completion times that have none.
fn lookup(totals: &[Totals], medians: &Medians) -> (HashMap<CourseKey, Median>, Vec<CourseKey>) {
    let (mut found, mut missing) = (HashMap::new(), Vec::new());
    for t in totals.iter().filter(|t| t.with_days > 0) {
        match medians.get(&t.key, t.version) {
            Some(m) => {
                found.insert(t.key.clone(), m);
            }
            None => missing.push(t.key.clone()),
        }
    }
    (found, missing)
}

/// Walks to the middle of `enrollments_completion_days` for each course of
/// `courses`, in one statement (cost: half a course's completions in index
/// entries), returning each median with the version it is the median of.
async fn walk(conn: &mut PgConnection, courses: &[CourseKey]) -> Result<Vec<(CourseKey, Median)>> {
    let rows = sqlx::query(
        "SELECT t.source, t.course_id, t.version, m.median, m.n
         FROM unnest($1::text[], $2::bigint[]) AS k(source, course_id)
         JOIN course_totals AS t ON t.source = k.source AND t.course_id = k.course_id
         CROSS JOIN LATERAL (
             SELECT AVG(days_to_complete) AS median, COUNT(*) AS n FROM (
                 SELECT e.days_to_complete FROM enrollments AS e
                 WHERE e.source = t.source AND e.course_id = t.course_id
                   AND e.days_to_complete IS NOT NULL
                 ORDER BY e.days_to_complete
                 OFFSET GREATEST((t.with_days - 1) / 2, 0) LIMIT 2 - t.with_days % 2) AS middle
             ) AS m
         WHERE t.with_days > 0",
    )
    .bind(courses.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>())
    .bind(courses.iter().map(|(_, c)| *c).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut walked = Vec::with_capacity(rows.len());
    for row in &rows {
        walked.push((
            (row.try_get("source")?, row.try_get("course_id")?),
            Median {
                version: row.try_get("version")?,
                median: row.try_get("median")?,
                middle_rows: row.try_get("n")?,
            },
        ));
    }
    Ok(walked)
}

/// Per-course statistics at `now`. The totals are one statement and the
/// medians come from `medians`; only when a course's row has a version not
/// cached are the totals read again with the walks of those courses, in one
/// snapshot, so an answer is always of one snapshot.
pub(super) async fn course_stats(
    pool: &PgPool,
    medians: &Medians,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<CourseStats>> {
    let mut totals = read_totals(&mut *pool.acquire().await?, source, now).await?;
    let (mut found, missing) = lookup(&totals, medians);
    let mut walked = Vec::new();
    if !missing.is_empty() {
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        totals = read_totals(&mut tx, source, now).await?;
        let missing;
        (found, missing) = lookup(&totals, medians);
        walked = walk(&mut tx, &missing).await?;
        tx.commit().await?;
        found.extend(walked.iter().cloned());
    }
    let mut stats = Vec::with_capacity(totals.len());
    for t in totals {
        let (source, course_id) = t.key;
        let median = if t.with_days > 0 {
            // Cached or walked at the row's version; none: the walk found no row.
            let middle = found.get(&(source.clone(), course_id));
            let middle = middle.filter(|m| m.version == t.version);
            let rows = middle.map_or(0, |m| m.middle_rows);
            check_middle(&source, course_id, t.with_days, rows)?;
            middle.and_then(|m| m.median)
        } else {
            None
        };
        stats.push(CourseStats::from_counts(
            source,
            course_id,
            t.name,
            t.counts,
            t.progress_micros as f64 / t.counts.enrollments.max(1) as f64 / 1_000_000.0,
            median,
        ));
    }
    // Kept once checked: a count the index disagrees with is never cached.
    medians.put(walked);
    Ok(stats)
}

/// The totals and the completion times' index must agree on how many rows
/// the middle is (one for an odd count, two for an even one).
fn check_middle(source: &str, course_id: i64, with_days: i64, middle_rows: i64) -> Result<()> {
    if with_days > 0 && middle_rows != 2 - with_days % 2 {
        return Err(median_mismatch(source, course_id, with_days));
    }
    Ok(())
}
