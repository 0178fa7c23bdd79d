//! What the learning queries answer (see `shared::learning_reads` for how):
//! a course's lesson funnel, stalled students, a student's lessons and
//! quizzes, per-quiz statistics.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::projection::learning::LessonInfo;

/// Who counts as stalled: enrolled, not completed, not expired at `now`,
/// and no enrollment, lesson or quiz event since `before`.
#[derive(Debug, Clone, Copy)]
pub struct Stalled {
    pub before: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl Stalled {
    pub fn days(days: u32, now: DateTime<Utc>) -> Stalled {
        Stalled {
            before: now - chrono::Duration::days(i64::from(days)),
            now,
        }
    }
}

/// One lesson of a course's funnel.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunnelLesson {
    #[serde(flatten)]
    pub lesson: LessonInfo,
    /// Students who completed it.
    pub completed: i64,
    /// Stalled students whose most recent lesson it is.
    pub stalled_here: i64,
}

/// A course's lessons in course order (see `projection::learning::course_order`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Funnel {
    pub source: String,
    pub course_id: i64,
    pub course_name: Option<String>,
    /// Students with an enrollment in the course.
    pub enrolled: i64,
    /// Of them, stalled.
    pub stalled: i64,
    /// Stalled students who completed no lesson.
    pub stalled_before_first_lesson: i64,
    pub lessons: Vec<FunnelLesson>,
}

/// A stalled student in a course (or, listed, any student of a course).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LearnerRow {
    pub source: String,
    pub course_id: i64,
    pub user_id: i64,
    pub enrollment_id: Option<i64>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub course_name: Option<String>,
    /// The enrollment's progress, 0–100.
    pub progress: Option<f64>,
    pub completed: bool,
    pub lessons_completed: i64,
    pub last_lesson_id: Option<i64>,
    pub last_lesson_name: Option<String>,
    pub last_lesson_at: Option<DateTime<Utc>>,
    /// The newest enrollment, lesson or quiz event of the student in the course.
    pub last_activity_at: Option<DateTime<Utc>>,
}

/// A lesson a student completed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LessonDone {
    pub course_id: i64,
    #[serde(flatten)]
    pub lesson: LessonInfo,
    /// The first time it was completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// The enrollment its event named, if any.
    pub enrollment_id: Option<i64>,
}

/// One student's result in one quiz.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QuizAttempts {
    pub source: String,
    pub quiz_id: i64,
    pub quiz_name: Option<String>,
    pub user_id: i64,
    /// When the payload named one.
    pub course_id: Option<i64>,
    pub attempts: i64,
    pub best_grade: Option<f64>,
    pub latest_grade: Option<f64>,
    pub correct_count: Option<i64>,
    pub incorrect_count: Option<i64>,
    pub latest_at: Option<DateTime<Utc>>,
}

/// A quiz over all its students.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QuizStats {
    pub source: String,
    pub quiz_id: i64,
    pub quiz_name: Option<String>,
    /// The course, when payloads named one.
    pub course_id: Option<i64>,
    pub students: i64,
    pub attempts: i64,
    pub average_best_grade: Option<f64>,
    pub median_best_grade: Option<f64>,
}

/// A course's learning counts, for the course list.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CourseLearning {
    pub source: String,
    pub course_id: i64,
    pub lessons_seen: i64,
    pub stalled: i64,
}

/// How a page of stalled students is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StalledOrder {
    /// Longest inactive first.
    #[default]
    MostInactive,
    LeastInactive,
}

#[derive(Debug, Clone)]
pub struct StalledFilter {
    pub source: Option<String>,
    pub course_id: Option<i64>,
    pub stalled: Stalled,
    pub order: StalledOrder,
}

/// Everything stored about one student.
#[derive(Debug, Clone)]
pub struct StudentRecord {
    pub enrollments: Vec<crate::projection::Enrollment>,
    /// Per course: lessons and activity (with or without an enrollment yet).
    pub courses: Vec<LearnerRow>,
    pub lessons: Vec<LessonDone>,
    pub quizzes: Vec<QuizAttempts>,
    /// The newest events naming them, oldest first.
    pub events: Vec<crate::store::StoredEvent>,
}
