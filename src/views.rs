//! How stored things are shown: the JSON of the API and the rows of the CLI.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::projection::{Enrollment, Status};
use crate::store::{LessonDone, QuarantineRecord, QuizAttempts, StoredEvent};
use crate::thinkific::PercentageReading;

/// One enrollment as the API and CLI show it: flat, with its derived status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollmentView {
    pub source: String,
    pub enrollment_id: i64,
    pub status: Status,
    pub progress: f64,
    pub course_id: Option<i64>,
    pub course_name: Option<String>,
    pub user_id: Option<i64>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub trial: bool,
    pub completed: bool,
    pub activated_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub expiry_date: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub days_to_complete: Option<f64>,
    pub event_count: i64,
    /// Lessons and activity: in stalled listings and an enrollment's detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning: Option<LearningView>,
}

/// A student's lessons and activity in a course.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LearningView {
    pub lessons_completed: i64,
    pub last_lesson_id: Option<i64>,
    pub last_lesson_name: Option<String>,
    pub last_lesson_at: Option<String>,
    /// The newest enrollment, lesson or quiz event of the student in the course.
    pub last_activity_at: Option<String>,
    /// Whole and fractional days since `last_activity_at` (3 decimals).
    pub days_inactive: Option<f64>,
}

impl LearningView {
    pub fn new(l: &crate::store::LearnerRow, now: DateTime<Utc>) -> LearningView {
        LearningView {
            lessons_completed: l.lessons_completed,
            last_lesson_id: l.last_lesson_id,
            last_lesson_name: l.last_lesson_name.clone(),
            last_lesson_at: opt(l.last_lesson_at),
            last_activity_at: opt(l.last_activity_at),
            days_inactive: l.last_activity_at.map(|t| {
                let days = (now - t).num_milliseconds() as f64 / 86_400_000.0;
                (days.max(0.0) * 1000.0).round() / 1000.0
            }),
        }
    }
}

pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn opt(t: Option<DateTime<Utc>>) -> Option<String> {
    t.as_ref().map(rfc3339)
}

impl EnrollmentView {
    pub fn new(e: &Enrollment, now: DateTime<Utc>) -> EnrollmentView {
        EnrollmentView {
            source: e.source.clone(),
            enrollment_id: e.enrollment_id,
            status: e.status(now),
            progress: e.progress,
            course_id: e.course_id,
            course_name: e.course_name.clone(),
            user_id: e.user_id,
            email: e.email.clone(),
            first_name: e.first_name.clone(),
            last_name: e.last_name.clone(),
            trial: e.trial,
            completed: e.completed,
            activated_at: opt(e.activated_at),
            started_at: opt(e.started_at),
            completed_at: opt(e.completed_at),
            expiry_date: opt(e.expiry_date),
            created_at: opt(e.created_at),
            updated_at: opt(e.updated_at),
            days_to_complete: e.days_to_complete().map(|d| (d * 1000.0).round() / 1000.0),
            event_count: e.event_count,
            learning: None,
        }
    }
}

/// An event of the log, with its original body embedded as JSON.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Position in the event log (increasing, with gaps).
    pub seq: i64,
    pub source: String,
    /// Thinkific's envelope id.
    pub event_id: String,
    pub topic: String,
    pub created_at: Option<String>,
    pub received_at: String,
    pub enrollment_id: Option<i64>,
    /// The delivery body exactly as received; null once pruned by retention.
    #[schema(value_type = Option<Object>)]
    pub body: Value,
    /// When retention dropped the body (`--retain-events`); the event stays
    /// listed so that a redelivery of it is still a duplicate.
    pub pruned_at: Option<String>,
    /// Opaque feed position: `GET /api/events?cursor=<position>` reads the
    /// events stored after this one. Keep the last one seen to tail the log.
    pub position: String,
    /// For enrollment events with a `percentage_completed`: how it was read
    /// (`percent_text` "24.0", `percent_number` 24 or 0.5 in a webhook,
    /// `fraction` 0.24 from the REST API, `ignored` when no reading fits and
    /// the value was left out of the projection).
    pub progress_reading: Option<PercentageReading>,
}

pub fn event_view(e: &StoredEvent) -> EventView {
    EventView {
        seq: e.seq,
        source: e.source.clone(),
        event_id: e.event_id.clone(),
        topic: e.topic.clone(),
        created_at: opt(e.created_at),
        received_at: rfc3339(&e.received_at),
        enrollment_id: e.enrollment_id,
        body: if e.pruned_at.is_some() || e.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&e.body).unwrap_or(Value::String(e.body.clone()))
        },
        pruned_at: opt(e.pruned_at),
        position: e.position.clone(),
        progress_reading: progress_reading(e),
    }
}

/// How the event's `percentage_completed` was read: by the same parser that
/// read it for the projection (only enrollment events carry one).
fn progress_reading(e: &StoredEvent) -> Option<PercentageReading> {
    if e.enrollment_id.is_none() || e.body.is_empty() {
        return None;
    }
    crate::thinkific::parse(e.body.as_bytes(), Some(&e.topic))
        .ok()?
        .enrollment?
        .percentage_reading
}

/// A rejected delivery, kept with its reason.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuarantineView {
    pub id: i64,
    pub source: String,
    pub received_at: String,
    /// Machine-readable reason, e.g. `signature_mismatch`, `body_not_json`.
    pub reason_code: String,
    /// What was wrong and what to do.
    pub reason: String,
    /// The kept request headers as [name, value] pairs.
    pub headers: Vec<(String, String)>,
    /// The body's size as received.
    pub body_size: i64,
    /// Only a prefix of the body was kept (bodies over 64 KiB): it cannot be retried.
    pub truncated: bool,
    pub resolved_at: Option<String>,
    pub resolution: Option<String>,
    /// The raw body (single record only): text when UTF-8, else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `utf-8` or `base64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<String>,
}

/// A quarantined delivery; with `with_body` the raw body too (as text when it
/// is UTF-8, as base64 otherwise).
pub fn quarantine_view(r: &QuarantineRecord, with_body: bool) -> QuarantineView {
    let (body, body_encoding) = match (with_body, std::str::from_utf8(&r.body)) {
        (false, _) => (None, None),
        (true, Ok(text)) => (Some(text.to_owned()), Some("utf-8".to_owned())),
        (true, Err(_)) => (
            Some(base64::engine::general_purpose::STANDARD.encode(&r.body)),
            Some("base64".to_owned()),
        ),
    };
    QuarantineView {
        id: r.id,
        source: r.source.clone(),
        received_at: rfc3339(&r.received_at),
        reason_code: r.reason_code.clone(),
        reason: r.reason.clone(),
        headers: r.headers.clone(),
        body_size: r.body_size,
        truncated: r.truncated,
        resolved_at: opt(r.resolved_at),
        resolution: r.resolution.clone(),
        body,
        body_encoding,
    }
}

/// One of a student's enrollments, with its lessons and activity.
#[derive(Debug, Serialize, ToSchema)]
pub struct StudentEnrollment {
    pub enrollment: EnrollmentView,
    /// Lessons completed in its course, in completion order.
    pub lessons: Vec<LessonDone>,
}

/// A course a student completed lessons in without an enrollment event (yet).
#[derive(Debug, Serialize, ToSchema)]
pub struct StudentCourse {
    pub course_id: i64,
    pub learning: LearningView,
    pub lessons: Vec<LessonDone>,
}

/// One student.
#[derive(Debug, Serialize, ToSchema)]
pub struct StudentView {
    pub source: String,
    pub user_id: i64,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub enrollments: Vec<StudentEnrollment>,
    pub courses_without_enrollment: Vec<StudentCourse>,
    pub quizzes: Vec<QuizAttempts>,
    /// The newest 500 events naming the student (enrollment, lesson, quiz,
    /// order, user topics), oldest first.
    pub timeline: Vec<EventView>,
}

/// A student's page from what is stored about them.
pub fn student_view(
    source: String,
    user_id: i64,
    record: crate::store::StudentRecord,
    now: DateTime<Utc>,
) -> StudentView {
    let lessons_in = |course_id: Option<i64>| -> Vec<LessonDone> {
        record
            .lessons
            .iter()
            .filter(|l| Some(l.course_id) == course_id)
            .cloned()
            .collect()
    };
    let learner = |course_id: Option<i64>| {
        record
            .courses
            .iter()
            .find(|c| Some(c.course_id) == course_id)
    };
    let enrollments: Vec<StudentEnrollment> = record
        .enrollments
        .iter()
        .map(|e| {
            let mut view = EnrollmentView::new(e, now);
            view.learning = learner(e.course_id).map(|l| LearningView::new(l, now));
            StudentEnrollment {
                enrollment: view,
                lessons: lessons_in(e.course_id),
            }
        })
        .collect();
    let courses_without_enrollment = record
        .courses
        .iter()
        .filter(|c| c.enrollment_id.is_none())
        .map(|c| StudentCourse {
            course_id: c.course_id,
            learning: LearningView::new(c, now),
            lessons: lessons_in(Some(c.course_id)),
        })
        .collect();
    // The newest enrollment names them.
    let named = record
        .enrollments
        .iter()
        .max_by(|a, b| a.version.cmp(&b.version));
    StudentView {
        source,
        user_id,
        email: named.and_then(|e| e.email.clone()),
        first_name: named.and_then(|e| e.first_name.clone()),
        last_name: named.and_then(|e| e.last_name.clone()),
        enrollments,
        courses_without_enrollment,
        quizzes: record.quizzes,
        timeline: record.events.iter().map(event_view).collect(),
    }
}
