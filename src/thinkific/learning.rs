//! The learning topics' payloads (`lesson.completed`, `quiz.attempted`) and
//! the student a payload is about, read leniently: such an event is always
//! stored; one whose payload lacks what the projection needs (a user id, a
//! course id for a lesson, the lesson or quiz id) is kept in the log and left
//! out of the learning projection.
//!
//! `lesson.completed` as published (`samples::LESSON_COMPLETED`): `chapter{id,
//! name}`, `course{id,name}`, `enrollment{id}`, `lesson{id,name,position,
//! type}`, `user{…}`; a `chapter.position` is read when present.
//! `quiz.attempted` as documented: `attempts`, `correct_count`,
//! `incorrect_count`, `grade`, `result_id`, `quiz{id,name}`, `user{…}`, no
//! course (a `course{id}` or `course_id`, and `enrollment{id}`, are read when present).

use chrono::{DateTime, Utc};
use serde_json::Value;

use serde::Serialize;

use super::envelope::lenient_i64;

/// A `lesson.completed` event as the projection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LessonEvent {
    pub event_id: String,
    /// The envelope's `created_at`: when the lesson was completed.
    pub at: Option<DateTime<Utc>>,
    pub user_id: i64,
    pub course_id: i64,
    pub enrollment_id: Option<i64>,
    pub lesson: LessonInfo,
}

/// What a payload says about a lesson.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LessonInfo {
    pub lesson_id: i64,
    pub name: Option<String>,
    pub chapter_id: Option<i64>,
    pub chapter_name: Option<String>,
    /// The chapter's place in the course, when the payload says.
    pub chapter_position: Option<i64>,
    /// The lesson's place (in its chapter), when the payload says.
    pub position: Option<i64>,
    /// Thinkific's lesson type ("Video", "Quiz", …).
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// A `quiz.attempted` event as the projection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuizEvent {
    pub event_id: String,
    pub at: Option<DateTime<Utc>>,
    pub user_id: i64,
    pub quiz_id: i64,
    pub quiz_name: Option<String>,
    /// 0–100.
    pub grade: Option<f64>,
    pub attempts: Option<i64>,
    pub correct_count: Option<i64>,
    pub incorrect_count: Option<i64>,
    pub course_id: Option<i64>,
    pub enrollment_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LearningEvent {
    Lesson(LessonEvent),
    Quiz(QuizEvent),
}

impl LearningEvent {
    pub fn event_id(&self) -> &str {
        match self {
            LearningEvent::Lesson(e) => &e.event_id,
            LearningEvent::Quiz(e) => &e.event_id,
        }
    }
}

pub const LESSON_COMPLETED: &str = "lesson.completed";
pub const QUIZ_ATTEMPTED: &str = "quiz.attempted";

/// Whether the projection reads events of this topic for learning (their
/// bodies are kept by retention, like enrollment events).
pub fn is_learning_topic(topic: &str) -> bool {
    topic == LESSON_COMPLETED || topic == QUIZ_ATTEMPTED
}

/// What a non-enrollment body tells the projection: its learning event and
/// the student it is about.
pub fn read(
    topic: &str,
    event_id: &str,
    created_at: Option<DateTime<Utc>>,
    body: &str,
) -> (Option<LearningEvent>, Option<i64>) {
    let Some(payload) = payload(body) else {
        return (None, None);
    };
    let user_id = user_id(topic, &payload);
    let event = match topic {
        LESSON_COMPLETED => {
            lesson(event_id, created_at, user_id, &payload).map(LearningEvent::Lesson)
        }
        QUIZ_ATTEMPTED => quiz(event_id, created_at, user_id, &payload).map(LearningEvent::Quiz),
        _ => None,
    };
    (event, user_id)
}

fn payload(body: &str) -> Option<Value> {
    let mut envelope: Value = serde_json::from_str(body).ok()?;
    match envelope.get_mut("payload")?.take() {
        v @ Value::Object(_) => Some(v),
        _ => None,
    }
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    lenient_i64(v)
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    // What PostgreSQL's text cannot hold, as for enrollments (store::without_nul).
    Some(if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    })
}

fn number(v: &Value, key: &str) -> Option<f64> {
    let n = match v.get(key)? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().trim_end_matches('%').parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// The student: `user.id`, else `user_id`; for `user.*` topics the payload's own `id`.
fn user_id(topic: &str, p: &Value) -> Option<i64> {
    int(p, &["user", "id"])
        .or_else(|| int(p, &["user_id"]))
        .or_else(|| {
            topic
                .starts_with("user.")
                .then(|| int(p, &["id"]))
                .flatten()
        })
}

fn course_id(p: &Value) -> Option<i64> {
    int(p, &["course", "id"]).or_else(|| int(p, &["course_id"]))
}

fn enrollment_id(p: &Value) -> Option<i64> {
    int(p, &["enrollment", "id"]).or_else(|| int(p, &["enrollment_id"]))
}

fn lesson(
    event_id: &str,
    at: Option<DateTime<Utc>>,
    user_id: Option<i64>,
    p: &Value,
) -> Option<LessonEvent> {
    Some(LessonEvent {
        event_id: event_id.to_owned(),
        at,
        user_id: user_id?,
        course_id: course_id(p)?,
        enrollment_id: enrollment_id(p),
        lesson: LessonInfo {
            lesson_id: int(p, &["lesson", "id"])?,
            name: text(p, &["lesson", "name"]),
            chapter_id: int(p, &["chapter", "id"]),
            chapter_name: text(p, &["chapter", "name"]),
            chapter_position: int(p, &["chapter", "position"]),
            position: int(p, &["lesson", "position"]),
            kind: text(p, &["lesson", "type"]),
        },
    })
}

fn quiz(
    event_id: &str,
    at: Option<DateTime<Utc>>,
    user_id: Option<i64>,
    p: &Value,
) -> Option<QuizEvent> {
    Some(QuizEvent {
        event_id: event_id.to_owned(),
        at,
        user_id: user_id?,
        quiz_id: int(p, &["quiz", "id"])?,
        quiz_name: text(p, &["quiz", "name"]),
        grade: number(p, "grade"),
        attempts: int(p, &["attempts"]),
        correct_count: int(p, &["correct_count"]),
        incorrect_count: int(p, &["incorrect_count"]),
        course_id: course_id(p),
        enrollment_id: enrollment_id(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thinkific::samples;

    #[test]
    fn reads_the_published_lesson_completed_sample() {
        let (event, user) = read(LESSON_COMPLETED, "1", None, samples::LESSON_COMPLETED);
        assert_eq!(user, Some(123456));
        let Some(LearningEvent::Lesson(l)) = event else {
            panic!("{event:?}")
        };
        assert_eq!((l.course_id, l.enrollment_id), (123, Some(1084282)));
        assert_eq!(l.lesson.lesson_id, 24220);
        assert_eq!(
            l.lesson.name.as_deref(),
            Some("Getting started with Webhooks")
        );
        assert_eq!(l.lesson.chapter_id, Some(123));
        assert_eq!(l.lesson.chapter_name.as_deref(), Some("Chapter 1"));
        assert_eq!(
            (l.lesson.position, l.lesson.kind.as_deref()),
            (Some(0), Some("Video"))
        );
    }

    #[test]
    fn reads_a_quiz_without_a_course() {
        let body = r#"{"id":"5","resource":"quiz","action":"attempted","payload":{
            "attempts":2,"correct_count":3,"incorrect_count":1,"grade":75.0,"result_id":9,
            "quiz":{"id":44,"name":"Basics"},"user":{"id":"8","email":"a@b.c"}}}"#;
        let (event, user) = read(QUIZ_ATTEMPTED, "5", None, body);
        assert_eq!(user, Some(8));
        let Some(LearningEvent::Quiz(q)) = event else {
            panic!("{event:?}")
        };
        assert_eq!((q.quiz_id, q.attempts, q.grade), (44, Some(2), Some(75.0)));
        assert_eq!((q.course_id, q.enrollment_id), (None, None));
    }

    #[test]
    fn an_unusable_payload_is_left_out_not_refused() {
        let no_lesson = r#"{"payload":{"course":{"id":1},"user":{"id":2}}}"#;
        assert_eq!(
            read(LESSON_COMPLETED, "1", None, no_lesson),
            (None, Some(2))
        );
        assert_eq!(
            read(LESSON_COMPLETED, "1", None, r#"{"payload":[]}"#),
            (None, None)
        );
        let signup = r#"{"payload":{"id":77,"email":"x"}}"#;
        assert_eq!(read("user.signup", "1", None, signup), (None, Some(77)));
        assert_eq!(read("order.created", "1", None, signup), (None, None));
    }
}
