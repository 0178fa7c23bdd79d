//! Course statistics and the activity chart: their types and the pieces both
//! backends compute them with.

use chrono::NaiveDate;
use serde::Serialize;

use crate::projection::Enrollment;

/// Per-course statistics.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CourseStats {
    pub source: String,
    pub course_id: i64,
    pub name: Option<String>,
    pub enrollments: i64,
    pub active: i64,
    pub trial: i64,
    pub completed: i64,
    pub expired: i64,
    /// completed / enrollments, 0–1.
    pub completion_rate: f64,
    /// Mean progress, 0–100.
    pub average_progress: f64,
    pub median_days_to_complete: Option<f64>,
}

/// How a course's enrollments divide (what both backends count, each its own way).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CourseCounts {
    pub enrollments: i64,
    pub completed: i64,
    /// Not completed, past their expiry.
    pub expired: i64,
    /// Not completed, not expired, on trial.
    pub trial: i64,
}

impl CourseStats {
    /// The statistics from the counts: active is what is neither completed,
    /// expired nor on trial; an empty course has a completion rate of 0.
    pub(crate) fn from_counts(
        source: String,
        course_id: i64,
        name: Option<String>,
        c: CourseCounts,
        average_progress: f64,
        median_days_to_complete: Option<f64>,
    ) -> CourseStats {
        CourseStats {
            source,
            course_id,
            name,
            enrollments: c.enrollments,
            active: c.enrollments - c.completed - c.expired - c.trial,
            trial: c.trial,
            completed: c.completed,
            expired: c.expired,
            completion_rate: c.completed as f64 / c.enrollments.max(1) as f64,
            average_progress,
            median_days_to_complete,
        }
    }
}

/// Which enrollments the activity chart counts, over which UTC days.
#[derive(Debug, Clone)]
pub struct ActivityQuery {
    pub source: Option<String>,
    pub course_id: Option<i64>,
    /// First day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
}

/// One UTC day of the activity chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DayActivity {
    /// `YYYY-MM-DD` (UTC).
    #[schema(value_type = String, format = Date, example = "2026-11-01")]
    pub date: NaiveDate,
    /// Enrollments that began this day: their `created_at`, else `activated_at`,
    /// else `started_at` falls on it.
    pub enrolled: i64,
    /// Enrollments whose (first) completion, `completed_at`, falls on this day.
    pub completed: i64,
}

/// The day an enrollment counts as begun on in the activity chart: the first
/// of `created_at`, `activated_at`, `started_at` that Thinkific filled.
pub fn enrolled_on(e: &Enrollment) -> Option<NaiveDate> {
    e.created_at
        .or(e.activated_at)
        .or(e.started_at)
        .map(|t| t.date_naive())
}

/// The day an enrollment counts as completed on: its first completion's day.
pub fn completed_on(e: &Enrollment) -> Option<NaiveDate> {
    e.completed_at
        .filter(|_| e.completed)
        .map(|t| t.date_naive())
}

/// Every day `from..=to` in order, with the counts of the days `counted`
/// (day, enrolled, completed) names and zeros for the rest.
pub(crate) fn every_day(
    from: NaiveDate,
    to: NaiveDate,
    counted: impl IntoIterator<Item = (NaiveDate, i64, i64)>,
) -> Vec<DayActivity> {
    let counted: std::collections::HashMap<NaiveDate, (i64, i64)> = counted
        .into_iter()
        .map(|(day, enrolled, completed)| (day, (enrolled, completed)))
        .collect();
    from.iter_days()
        .take_while(|d| *d <= to)
        .map(|date| {
            let (enrolled, completed) = counted.get(&date).copied().unwrap_or_default();
            DayActivity {
                date,
                enrolled,
                completed,
            }
        })
        .collect()
}

/// Median of a slice (sorted in place); None when empty.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_day_is_present_in_order() {
        let d = |day| NaiveDate::from_ymd_opt(2024, 2, day).unwrap();
        let days = every_day(
            d(27),
            NaiveDate::from_ymd_opt(2024, 3, 2).unwrap(),
            [(d(28), 3, 1)],
        );
        let dates: Vec<String> = days.iter().map(|x| x.date.to_string()).collect();
        assert_eq!(
            dates,
            [
                "2024-02-27",
                "2024-02-28",
                "2024-02-29",
                "2024-03-01",
                "2024-03-02"
            ]
        );
        assert_eq!((days[1].enrolled, days[1].completed), (3, 1));
        assert!(
            days.iter()
                .filter(|x| x.date != d(28))
                .all(|x| x.enrolled == 0 && x.completed == 0)
        );
        assert_eq!(every_day(d(2), d(2), []).len(), 1);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
