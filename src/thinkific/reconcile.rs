//! Reconciliation: what a backfill found, compared with what the webhooks had
//! already told us. A school reads from it whether its webhooks work: every
//! enrollment the REST API lists is either one the webhooks never delivered
//! (`missing`, now added), one whose webhook state was behind the API's
//! (`behind`, and by how many percentage points), one the webhooks had as the
//! API has it (`agree`), or one the webhooks know a newer state of than the
//! API's listing (`ahead`: the listing was read before that change).
//!
//! Pure: [`compare`] judges one enrollment, [`Reconciliation::add`] counts.

use serde::{Deserialize, Serialize};

use crate::projection::Enrollment;
use crate::thinkific::EnrollmentPayload;

/// Progress differences below this (percentage points) are rounding, not news.
const PROGRESS_EPSILON: f64 = 1e-6;

/// How the webhooks' picture of one enrollment stood against the API's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Not known before: no webhook (nor earlier backfill) told us.
    Missing,
    /// Known, but older than the API's copy; `progress` is how many
    /// percentage points the API is ahead (0 when only other fields changed).
    Behind { progress: f64 },
    /// Known as the API has it.
    Agrees,
    /// Known in a newer state than the API's listing.
    Ahead,
}

/// Judges one enrollment: `known` is the projection before the backfill
/// stored anything, `api` the REST API's copy. Newer is by `updated_at`
/// (the version the projection orders by); on the same `updated_at`, by
/// progress and completion.
pub fn compare(known: Option<&Enrollment>, api: &EnrollmentPayload) -> Verdict {
    let Some(known) = known else {
        return Verdict::Missing;
    };
    let api_progress = api.percentage_completed.unwrap_or(0.0);
    let gap = api_progress - known.progress;
    let api_completed = api.completed == Some(true);
    match api.updated_at.cmp(&known.updated_at) {
        std::cmp::Ordering::Greater => Verdict::Behind {
            progress: gap.max(0.0),
        },
        std::cmp::Ordering::Less => Verdict::Ahead,
        std::cmp::Ordering::Equal
            if gap > PROGRESS_EPSILON || (api_completed && !known.completed) =>
        {
            Verdict::Behind {
                progress: gap.max(0.0),
            }
        }
        std::cmp::Ordering::Equal => Verdict::Agrees,
    }
}

/// Counts of one course, or of all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    /// Enrollments the webhooks never told us about, now added.
    pub missing: u64,
    /// Enrollments whose webhook state was behind the API's, now brought up to date.
    pub behind: u64,
    /// How many percentage points of progress the behind ones lacked, in total...
    pub behind_progress_points: f64,
    /// ...and at most, for one enrollment.
    pub behind_progress_max: f64,
    /// Enrollments the webhooks had as the API has them.
    pub agree: u64,
    /// Enrollments the webhooks know a newer state of than the API's listing.
    pub ahead: u64,
}

impl Counts {
    fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Missing => self.missing += 1,
            Verdict::Behind { progress } => {
                self.behind += 1;
                self.behind_progress_points += progress;
                self.behind_progress_max = self.behind_progress_max.max(progress);
            }
            Verdict::Agrees => self.agree += 1,
            Verdict::Ahead => self.ahead += 1,
        }
    }

    /// Enrollments compared.
    pub fn compared(&self) -> u64 {
        self.missing + self.behind + self.agree + self.ahead
    }
}

/// One course's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CourseCounts {
    pub course_id: Option<i64>,
    pub course_name: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The report of one backfill: per course (in course id order) and in total.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reconciliation {
    pub courses: Vec<CourseCounts>,
    pub total: Counts,
}

impl Reconciliation {
    /// Counts one enrollment's verdict under its course.
    pub fn add(&mut self, api: &EnrollmentPayload, verdict: Verdict) {
        self.total.add(verdict);
        let at = match self
            .courses
            .binary_search_by(|c| c.course_id.cmp(&api.course_id))
        {
            Ok(i) => i,
            Err(i) => {
                self.courses.insert(
                    i,
                    CourseCounts {
                        course_id: api.course_id,
                        course_name: api.course_name.clone(),
                        counts: Counts::default(),
                    },
                );
                i
            }
        };
        let course = &mut self.courses[at];
        if course.course_name.is_none() {
            course.course_name = api.course_name.clone();
        }
        course.counts.add(verdict);
    }

    /// One sentence for people: "3 enrollments were missing, now added; …".
    pub fn summary(&self) -> String {
        let t = &self.total;
        let plural = |n: u64| {
            if n == 1 {
                "enrollment was"
            } else {
                "enrollments were"
            }
        };
        let mut parts = vec![format!(
            "{} {} missing, now added",
            t.missing,
            plural(t.missing)
        )];
        if t.behind > 0 {
            parts.push(format!(
                "{} behind the API by {:.1} progress points in all (at most {:.1}), now updated",
                t.behind, t.behind_progress_points, t.behind_progress_max
            ));
        }
        parts.push(format!("{} agreed", t.agree + t.ahead));
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;

    fn at(minute: u32) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2024, 5, 1, 12, minute, 0).unwrap())
    }

    fn known(progress: f64, updated: u32, completed: bool) -> Enrollment {
        let e = crate::projection::fold(
            "default",
            [crate::projection::EnrollmentEvent {
                topic: crate::thinkific::EnrollmentTopic::Progress,
                event_id: "1".into(),
                envelope_created_at: at(updated),
                payload: EnrollmentPayload {
                    id: 1,
                    course_id: Some(7),
                    percentage_completed: Some(progress),
                    updated_at: at(updated),
                    ..Default::default()
                },
            }],
        )
        .unwrap();
        Enrollment { completed, ..e }
    }

    fn api(course: i64, progress: f64, updated: u32, completed: bool) -> EnrollmentPayload {
        EnrollmentPayload {
            id: 1,
            course_id: Some(course),
            course_name: Some(format!("Course {course}")),
            percentage_completed: Some(progress),
            completed: Some(completed),
            updated_at: at(updated),
            ..Default::default()
        }
    }

    #[test]
    fn each_enrollment_is_missing_behind_agreeing_or_ahead() {
        assert_eq!(compare(None, &api(7, 10.0, 5, false)), Verdict::Missing);
        let k = known(20.0, 5, false);
        assert_eq!(
            compare(Some(&k), &api(7, 50.0, 9, false)),
            Verdict::Behind { progress: 30.0 }
        );
        // Newer in the API with the same progress: behind by nothing.
        assert_eq!(
            compare(Some(&k), &api(7, 20.0, 9, false)),
            Verdict::Behind { progress: 0.0 }
        );
        assert_eq!(compare(Some(&k), &api(7, 20.0, 5, false)), Verdict::Agrees);
        assert_eq!(compare(Some(&k), &api(7, 10.0, 1, false)), Verdict::Ahead);
        // Same time, but the API has more progress, or the completion.
        assert_eq!(
            compare(Some(&k), &api(7, 25.0, 5, false)),
            Verdict::Behind { progress: 5.0 }
        );
        assert_eq!(
            compare(Some(&k), &api(7, 20.0, 5, true)),
            Verdict::Behind { progress: 0.0 }
        );
    }

    #[test]
    fn counts_per_course_and_in_total() {
        let mut r = Reconciliation::default();
        r.add(&api(9, 0.0, 1, false), Verdict::Missing);
        r.add(&api(7, 0.0, 1, false), Verdict::Missing);
        r.add(&api(7, 0.0, 1, false), Verdict::Behind { progress: 30.0 });
        r.add(&api(7, 0.0, 1, false), Verdict::Behind { progress: 10.0 });
        r.add(&api(9, 0.0, 1, false), Verdict::Agrees);
        r.add(&api(9, 0.0, 1, false), Verdict::Ahead);
        assert_eq!(
            r.courses.iter().map(|c| c.course_id).collect::<Vec<_>>(),
            [Some(7), Some(9)]
        );
        let seven = &r.courses[0].counts;
        assert_eq!((seven.missing, seven.behind, seven.agree), (1, 2, 0));
        assert_eq!(
            (seven.behind_progress_points, seven.behind_progress_max),
            (40.0, 30.0)
        );
        assert_eq!(r.courses[0].course_name.as_deref(), Some("Course 7"));
        assert_eq!(
            (
                r.total.missing,
                r.total.behind,
                r.total.agree,
                r.total.ahead
            ),
            (2, 2, 1, 1)
        );
        assert_eq!(r.total.compared(), 6);
        assert_eq!(
            r.summary(),
            "2 enrollments were missing, now added; 2 behind the API by 40.0 progress points \
             in all (at most 30.0), now updated; 2 agreed"
        );
    }
}
