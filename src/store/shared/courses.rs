//! Per-course totals kept in step with the enrollments, for both backends:
//! what a batch changes in them, from its enrollments' (old, new) states.
//! Each backend writes the deltas in the transaction that writes the
//! enrollment rows (SQLite's projector, PostgreSQL's batch), one upsert per
//! course, (course, month of expiry) and (day, course) touched.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{Datelike, NaiveDate};

use sqlx::{Pool, QueryBuilder};

use crate::projection::Enrollment;
use crate::store::dialect::{Binds, Cols, Dialect};
use crate::store::every_day;
use crate::store::shared::fetch_mapped;
use crate::store::{ActivityQuery, DayActivity, Result, StoreError, completed_on, enrolled_on};

/// What one enrollment row adds to its course's totals.
#[derive(Debug, PartialEq)]
struct Contribution<'a> {
    source: &'a str,
    course_id: i64,
    name: Option<&'a str>,
    completed: i64,
    open_trial: i64,
    progress_micros: i64,
    with_days: i64,
    /// Compared, not summed: a changed days_to_complete alone changes no
    /// count, but moves the median, so the course's row must be written
    /// (PostgreSQL keys its cached median by the row's version).
    days: Option<f64>,
    /// (month of expiry 'YYYY-MM', is a trial), for not-completed rows with an expiry.
    expiry: Option<(String, i64)>,
}

fn contribution(e: &Enrollment) -> Option<Contribution<'_>> {
    let course_id = e.course_id?;
    Some(Contribution {
        source: &e.source,
        course_id,
        name: e.course_name.as_deref(),
        completed: i64::from(e.completed),
        open_trial: i64::from(e.trial && !e.completed),
        progress_micros: progress_micros(e.progress),
        with_days: i64::from(e.days_to_complete().is_some()),
        days: e.days_to_complete(),
        expiry: e.expiry_date.filter(|_| !e.completed).map(|t| {
            (
                format!("{:04}-{:02}", t.year(), t.month()),
                i64::from(e.trial),
            )
        }),
    })
}

/// Progress in millionths of a percent (as `CAST(ROUND(progress * 1000000) AS INTEGER)`).
fn progress_micros(progress: f64) -> i64 {
    (progress * 1_000_000.0).round() as i64
}

/// What a batch changes in one course's totals.
#[derive(Debug, Default)]
pub(crate) struct TotalsDelta<'a> {
    pub enrollments: i64,
    pub completed: i64,
    pub open_trials: i64,
    pub progress_micros: i64,
    pub with_days: i64,
    /// The greatest name among added contributions.
    pub name: Option<&'a str>,
}

/// A batch's changes to the course tables, summed per course and per
/// (course, month of expiry): one upsert per course touched, not per event.
#[derive(Debug, Default)]
pub(crate) struct CourseDeltas<'a> {
    pub totals: HashMap<(&'a str, i64), TotalsDelta<'a>>,
    /// (enrollments, trials) per (source, course, month).
    pub expiries: HashMap<(&'a str, i64, String), (i64, i64)>,
    /// (enrolled, completed) per (day, source, course or 0) for `activity_days`.
    pub days: HashMap<(String, &'a str, i64), (i64, i64)>,
}

/// What one enrollment row adds to `activity_days`: the days it began and
/// completed on (course 0: no course id).
#[derive(Debug, PartialEq)]
struct DayContribution<'a> {
    source: &'a str,
    course_id: i64,
    enrolled_on: Option<NaiveDate>,
    completed_on: Option<NaiveDate>,
}

fn day_contribution(e: &Enrollment) -> DayContribution<'_> {
    DayContribution {
        source: &e.source,
        course_id: e.course_id.unwrap_or(NO_COURSE),
        enrolled_on: enrolled_on(e),
        completed_on: completed_on(e),
    }
}

/// `activity_days.course_id` of enrollments without a course id.
pub(crate) const NO_COURSE: i64 = 0;

/// Moves enrollments' contributions from their old state (None: new) to their new one.
pub(crate) fn deltas<'a>(changes: &[(Option<&'a Enrollment>, &'a Enrollment)]) -> CourseDeltas<'a> {
    let mut out = CourseDeltas::default();
    for (old, new) in changes {
        let (old_days, new_days) = (old.map(day_contribution), day_contribution(new));
        if old_days.as_ref() != Some(&new_days) {
            for (c, sign) in old_days.iter().map(|c| (c, -1)).chain([(&new_days, 1)]) {
                let days = [(c.enrolled_on, (sign, 0)), (c.completed_on, (0, sign))];
                for (day, (enrolled, completed)) in days {
                    let Some(day) = day else { continue };
                    let d = out
                        .days
                        .entry((day.to_string(), c.source, c.course_id))
                        .or_default();
                    d.0 += enrolled;
                    d.1 += completed;
                }
            }
        }
        let (old, new) = (old.and_then(contribution), contribution(new));
        if old == new {
            continue;
        }
        for (c, sign) in old
            .iter()
            .map(|c| (c, -1))
            .chain(new.iter().map(|c| (c, 1)))
        {
            let d = out.totals.entry((c.source, c.course_id)).or_default();
            d.enrollments += sign;
            d.completed += sign * c.completed;
            d.open_trials += sign * c.open_trial;
            d.progress_micros += sign * c.progress_micros;
            d.with_days += sign * c.with_days;
            if sign > 0 && c.name > d.name {
                d.name = c.name;
            }
            if let Some((month, trial)) = &c.expiry {
                let e = out
                    .expiries
                    .entry((c.source, c.course_id, month.clone()))
                    .or_default();
                e.0 += sign;
                e.1 += sign * trial;
            }
        }
    }
    out.expiries.retain(|_, counts| *counts != (0, 0));
    out.days.retain(|_, counts| *counts != (0, 0));
    out
}

/// The statement counting the rows of `table` that differ from `derived`
/// (the table derived from scratch, with the columns `cols`, keys first):
/// missing, changed or extra, a row whose counts are all zero counting as
/// absent (deltas leave such rows). Names are not compared: a stored name
/// is the greatest seen, which a rebuild resets to the greatest now.
pub(crate) fn differing_rows(table: &str, cols: &str, derived: &str) -> String {
    let (keys, counts): (Vec<&str>, Vec<&str>) = cols
        .split(", ")
        .partition(|c| matches!(*c, "source" | "course_id" | "month" | "day"));
    let nonzero = counts
        .iter()
        .map(|c| format!("{c} <> 0"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let same_key = keys
        .iter()
        .map(|k| format!("d.{k} = s.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "WITH d AS ({derived}), s AS (SELECT * FROM {table} WHERE {nonzero})
         SELECT (SELECT COUNT(*) FROM (SELECT {cols} FROM d EXCEPT SELECT {cols} FROM s) AS a)
              + (SELECT COUNT(*) FROM s WHERE NOT EXISTS (SELECT 1 FROM d WHERE {same_key}))"
    )
}

/// The statements replacing `table`'s rows with `derived`'s.
pub(crate) fn rederive(table: &str, derived: &str) -> String {
    let cols = if table == "course_totals" {
        "source, course_id, name, enrollments, completed, open_trials, progress_micros, with_days"
    } else if table == "course_expiries" {
        "source, course_id, month, enrollments, trials"
    } else {
        "day, source, course_id, enrolled, completed"
    };
    format!("DELETE FROM {table}; INSERT INTO {table} ({cols}) {derived}")
}

/// The medians of days to complete this process has walked, by (source,
/// course) with the `course_totals` version they were walked at. A row's
/// version is new on every write of the row, which every change of its
/// completion times makes (see [`Contribution::days`]), and is never reused
/// (PostgreSQL: one sequence, migration 19; SQLite: the projection's
/// `course_totals_versions` counter), so an entry whose version equals the
/// row's is right whichever process wrote the row. A walk costs half a
/// course's completions in index entries: at 10 M events, 30,000 per course.
#[derive(Default)]
pub(crate) struct Medians(Mutex<HashMap<CourseKey, Median>>);

/// (source, course id).
pub(crate) type CourseKey = (String, i64);

#[derive(Clone, Copy)]
pub(crate) struct Median {
    pub version: i64,
    pub median: Option<f64>,
    /// Rows found at the middle of the index, checked against `with_days`.
    pub middle_rows: i64,
}

/// Entries kept before the cache starts again (a course is ~100 bytes).
const MEDIANS_KEPT: usize = 100_000;

impl Medians {
    pub(crate) fn get(&self, key: &CourseKey, version: i64) -> Option<Median> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).copied().filter(|m| m.version == version)
    }

    pub(crate) fn put(&self, walked: Vec<(CourseKey, Median)>) {
        if walked.is_empty() {
            return;
        }
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() + walked.len() > MEDIANS_KEPT {
            cache.clear();
        }
        cache.extend(walked);
    }
}

/// The error when `course_totals` and the completion-days index disagree on
/// how many completion times a course has (the median cannot be read).
pub(crate) fn median_mismatch(source: &str, course_id: i64, with_days: i64) -> StoreError {
    StoreError::Corrupt(format!(
        "course_totals says course {course_id} of `{source}` has {with_days} completion times, the index disagrees: run `enrollhook rebuild`"
    ))
}

/// New enrollments and completions per day, from `activity_days`: a few rows
/// per course and day, whatever the number of enrollments.
pub(crate) async fn activity<DB: Dialect>(
    pool: &Pool<DB>,
    query: &ActivityQuery,
) -> Result<Vec<DayActivity>>
where
    String: Binds<DB>,
    i64: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "SELECT day, CAST(SUM(enrolled) AS BIGINT) AS enrolled,
                CAST(SUM(completed) AS BIGINT) AS completed
         FROM activity_days WHERE day >= ",
    );
    q.push_bind(query.from.to_string())
        .push(" AND day <= ")
        .push_bind(query.to.to_string());
    if let Some(s) = &query.source {
        q.push(" AND source = ").push_bind(s.clone());
    }
    if let Some(c) = query.course_id {
        q.push(" AND course_id = ").push_bind(c);
    }
    q.push(" GROUP BY day");
    let counted = fetch_mapped(pool, q, |row| {
        let day = row.text("day")?;
        let day = NaiveDate::parse_from_str(&day, "%Y-%m-%d")
            .map_err(|_| StoreError::Corrupt(format!("bad day `{day}` in activity_days")))?;
        Ok((day, row.int("enrolled")?, row.int("completed")?))
    })
    .await?;
    Ok(every_day(query.from, query.to, counted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::Version;
    use chrono::{TimeZone, Utc};

    fn completed(started_hour: u32) -> Enrollment {
        let at = |h| Some(Utc.with_ymd_and_hms(2024, 3, 1, h, 0, 0).unwrap());
        Enrollment {
            source: "s".into(),
            enrollment_id: 1,
            user_id: Some(2),
            email: None,
            first_name: None,
            last_name: None,
            course_id: Some(3),
            course_name: None,
            progress: 100.0,
            trial: false,
            completed: true,
            activated_at: None,
            started_at: at(started_hour),
            completed_at: at(20),
            expiry_date: None,
            created_at: at(0),
            updated_at: at(20),
            event_count: 2,
            version: Version {
                updated_at: at(20),
                created_at: at(20),
                event_id: "e".into(),
            },
        }
    }

    #[test]
    fn a_changed_completion_time_alone_writes_its_course_row() {
        let (old, new) = (completed(1), completed(5));
        let d = deltas(&[(Some(&old), &new)]);
        let t = &d.totals[&("s", 3)];
        // Every count is unchanged, but the row is written (a new version).
        assert_eq!(
            (t.enrollments, t.completed, t.with_days, t.progress_micros),
            (0, 0, 0, 0)
        );
        // An unchanged row writes nothing.
        assert!(deltas(&[(Some(&new), &new)]).totals.is_empty());
    }
}
