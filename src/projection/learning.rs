//! How lesson and quiz events become the learning projection: pure rules, no I/O.
//!
//! Four kinds of rows, each derived so that arrival order never matters (every
//! rule is a minimum, a maximum, a count of distinct keys, or "the newest event
//! by [`version_key`] wins"):
//!
//! - a **lesson completion** per (source, course, user, lesson): first
//!   completion time (the earliest envelope `created_at`), and the enrollment
//!   id the payload names (the greatest, if events disagree). A lesson
//!   completed twice is one completion.
//! - a **course lesson** per (source, course, lesson): name, chapter, position
//!   and type, from the newest event that described it.
//! - a **learner** per (source, course, user): a student in a course. Lessons
//!   link to it by (user id, course id), which every `lesson.completed` carries
//!   next to `enrollment.id`; so a lesson that arrives before its enrollment is
//!   linked when the enrollment appears, whichever comes first. It holds the
//!   number of lessons completed, the most recent lesson (newest completion),
//!   the newest lesson or quiz time, and a copy of its enrollment's state
//!   (id, completed, expiry, newest enrollment time) for the stalled queries;
//!   with two enrollments of one user in one course, the greater id is it.
//! - a **quiz result** per (source, quiz, user): attempts (the greatest
//!   `attempts` a payload reported, at least the number of attempt events),
//!   best grade, and the latest attempt's grade and counts. A quiz that names
//!   a course counts as activity of that learner; one that names none (as
//!   Thinkific's payload) is kept per quiz and student only.
//!
//! A store loads the rows an event touches into a [`Learning`], applies the
//! events ([`Learning::lesson`], [`Learning::quiz`], [`Learning::enrollment`])
//! and writes the changed rows back; `rebuild` applies every event of the log
//! to an empty one and compares.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};

use super::Enrollment;
pub use crate::thinkific::learning::{LearningEvent, LessonEvent, LessonInfo, QuizEvent};

/// A text that sorts (byte-wise) as (time, event id) do in
/// [`super::Version`] without its payload `updated_at`: the newest event of
/// a row is the one with the greatest key. A missing time sorts first.
pub fn version_key(at: Option<DateTime<Utc>>, event_id: &str) -> String {
    let time = match at {
        Some(t) => format!("1{}", t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        None => "0".to_owned(),
    };
    let numeric = !event_id.is_empty() && event_id.bytes().all(|c| c.is_ascii_digit());
    if numeric {
        // Numbers by value (length without leading zeros, then digits), then
        // the text, as `compare_event_ids` does.
        let trimmed = event_id.trim_start_matches('0');
        format!("{time} 0{:04}{trimmed}:{event_id}", trimmed.len())
    } else {
        format!("{time} 1{event_id}")
    }
}

pub type LearnerKey = (String, i64, i64); // source, course_id, user_id
/// A bucket of open learners: (source, course_id, furthest lesson or
/// [`NO_LESSON`], UTC day of last activity as `YYYY-MM-DD`). Counting a
/// course's stalled students sums whole days before the cutoff's day, so it
/// costs days × lessons rather than one index entry per student.
pub type StallKey = (String, i64, i64, String);
/// The furthest lesson of a bucket's learners who completed none yet.
pub const NO_LESSON: i64 = 0;
pub type CompletionKey = (String, i64, i64, i64); // source, course_id, user_id, lesson_id
pub type CourseLessonKey = (String, i64, i64); // source, course_id, lesson_id
pub type QuizKey = (String, i64, i64); // source, quiz_id, user_id
/// Learners with an enrollment per (source, course_id): the funnel's
/// "enrolled" (`course_learners`), kept as a count so that the funnel does not
/// count a course's learners on every request.
pub type EnrolledCounts = BTreeMap<(String, i64), i64>;

#[derive(Debug, Clone, PartialEq)]
pub struct LessonCompletion {
    pub source: String,
    pub course_id: i64,
    pub user_id: i64,
    pub lesson_id: i64,
    pub enrollment_id: Option<i64>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CourseLesson {
    pub source: String,
    pub course_id: i64,
    pub info: LessonInfo,
    /// [`version_key`] of the event it was described by.
    pub version: String,
    /// Students who completed it (completions of it, each counted once): the
    /// funnel reads this instead of counting a course's completions.
    pub completions: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Learner {
    pub source: String,
    pub course_id: i64,
    pub user_id: i64,
    pub lessons_completed: i64,
    pub last_lesson_id: Option<i64>,
    /// [`version_key`] of the completion that made it the last lesson.
    pub last_lesson_version: Option<String>,
    pub last_lesson_at: Option<DateTime<Utc>>,
    /// The newest lesson or quiz time.
    pub learning_activity: Option<DateTime<Utc>>,
    /// The enrollment (none yet: lessons came first).
    pub enrollment_id: Option<i64>,
    pub completed: bool,
    pub expiry_date: Option<DateTime<Utc>>,
    /// The enrollment's newest time ([`enrollment_activity`]).
    pub enrollment_activity: Option<DateTime<Utc>>,
}

impl Learner {
    fn new(source: &str, course_id: i64, user_id: i64) -> Learner {
        Learner {
            source: source.to_owned(),
            course_id,
            user_id,
            lessons_completed: 0,
            last_lesson_id: None,
            last_lesson_version: None,
            last_lesson_at: None,
            learning_activity: None,
            enrollment_id: None,
            completed: false,
            expiry_date: None,
            enrollment_activity: None,
        }
    }

    /// The newest time of any enrollment, lesson or quiz event of this
    /// student in this course: what "days inactive" counts from.
    pub fn last_activity(&self) -> Option<DateTime<Utc>> {
        self.learning_activity.max(self.enrollment_activity)
    }

    /// Its bucket of `stall_buckets` while it is open (enrolled, not
    /// completed; expiry is left to the reader, as it passes without an event).
    pub fn stall_key(&self) -> Option<StallKey> {
        if self.enrollment_id.is_none() || self.completed {
            return None;
        }
        let day = self.last_activity()?.date_naive();
        Some((
            self.source.clone(),
            self.course_id,
            self.last_lesson_id.unwrap_or(NO_LESSON),
            day.format("%Y-%m-%d").to_string(),
        ))
    }

    /// Not completed, not expired, enrolled, and nothing since `before`.
    pub fn stalled(&self, before: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.enrollment_id.is_some()
            && !self.completed
            && self.expiry_date.is_none_or(|e| e >= now)
            && self.last_activity().is_some_and(|t| t < before)
    }
}

/// The newest time an enrollment's own events tell: its `updated_at`, or
/// the newest event's envelope time when later (or the only one).
pub fn enrollment_activity(e: &Enrollment) -> Option<DateTime<Utc>> {
    e.updated_at.max(e.version.created_at)
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuizResult {
    pub source: String,
    pub quiz_id: i64,
    pub user_id: i64,
    pub quiz_name: Option<String>,
    pub course_id: Option<i64>,
    pub enrollment_id: Option<i64>,
    /// The greatest `attempts` reported, at least `events`.
    pub attempts: i64,
    /// Attempt events received.
    pub events: i64,
    pub best_grade: Option<f64>,
    pub latest_grade: Option<f64>,
    pub correct_count: Option<i64>,
    pub incorrect_count: Option<i64>,
    pub latest_at: Option<DateTime<Utc>>,
    /// [`version_key`] of the latest attempt.
    pub version: String,
}

/// The rows of the learning projection a batch of events touches (loaded by
/// the store first, see [`Learning::needs`]), and what the events made of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Learning {
    pub completions: BTreeMap<CompletionKey, LessonCompletion>,
    pub lessons: BTreeMap<CourseLessonKey, CourseLesson>,
    pub learners: BTreeMap<LearnerKey, Learner>,
    pub quizzes: BTreeMap<QuizKey, QuizResult>,
    /// Keys of rows changed since loaded.
    pub changed: Changed,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changed {
    pub completions: BTreeSet<CompletionKey>,
    pub lessons: BTreeSet<CourseLessonKey>,
    pub learners: BTreeSet<LearnerKey>,
    pub quizzes: BTreeSet<QuizKey>,
    /// Learners given their first enrollment, per course (a learner's
    /// enrollment is never taken away, so this only grows).
    pub enrolled: EnrolledCounts,
}

/// The keys of the rows some events and enrollment changes touch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    pub completions: BTreeSet<CompletionKey>,
    pub lessons: BTreeSet<CourseLessonKey>,
    pub learners: BTreeSet<LearnerKey>,
    pub quizzes: BTreeSet<QuizKey>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.learners.is_empty() && self.quizzes.is_empty()
    }
}

/// Learners added to (positive) or removed from (negative) each bucket.
pub type StallDeltas = BTreeMap<StallKey, i64>;

impl Learning {
    /// The buckets of the learners held now: taken right after loading, it is
    /// what the stored `stall_buckets` count them in (see [`Self::stall_deltas`]).
    pub fn stall_keys(&self) -> BTreeMap<LearnerKey, StallKey> {
        self.learners
            .iter()
            .filter_map(|(k, l)| Some((k.clone(), l.stall_key()?)))
            .collect()
    }

    /// How the changed learners moved between buckets since `loaded` (the
    /// [`Self::stall_keys`] taken after loading); sorted, without zeros.
    pub fn stall_deltas(&self, loaded: &BTreeMap<LearnerKey, StallKey>) -> StallDeltas {
        let mut deltas = StallDeltas::new();
        for k in &self.changed.learners {
            let old = loaded.get(k);
            let new = self.learners.get(k).and_then(Learner::stall_key);
            if old == new.as_ref() {
                continue;
            }
            if let Some(old) = old {
                *deltas.entry(old.clone()).or_default() -= 1;
            }
            if let Some(new) = new {
                *deltas.entry(new).or_default() += 1;
            }
        }
        deltas.retain(|_, n| *n != 0);
        deltas
    }

    /// Learners with an enrollment per course, counted whole (`rebuild`).
    pub fn enrolled_counts(&self) -> EnrolledCounts {
        let mut counts = EnrolledCounts::new();
        for l in self.learners.values().filter(|l| l.enrollment_id.is_some()) {
            *counts.entry((l.source.clone(), l.course_id)).or_default() += 1;
        }
        counts
    }

    /// Every bucket of these learners, counted whole (`rebuild`).
    pub fn stall_buckets(&self) -> StallDeltas {
        let mut buckets = StallDeltas::new();
        for key in self.learners.values().filter_map(Learner::stall_key) {
            *buckets.entry(key).or_default() += 1;
        }
        buckets
    }

    /// What rows applying these would read.
    pub fn needs<'a>(
        events: impl IntoIterator<Item = (&'a str, &'a LearningEvent)>,
        enrollments: impl IntoIterator<Item = &'a Enrollment>,
    ) -> Needs {
        let mut needs = Needs::default();
        for (source, event) in events {
            match event {
                LearningEvent::Lesson(e) => {
                    let s = source.to_owned();
                    needs.completions.insert((
                        s.clone(),
                        e.course_id,
                        e.user_id,
                        e.lesson.lesson_id,
                    ));
                    needs
                        .lessons
                        .insert((s.clone(), e.course_id, e.lesson.lesson_id));
                    needs.learners.insert((s, e.course_id, e.user_id));
                }
                LearningEvent::Quiz(e) => {
                    needs
                        .quizzes
                        .insert((source.to_owned(), e.quiz_id, e.user_id));
                    if let Some(course_id) = e.course_id {
                        needs
                            .learners
                            .insert((source.to_owned(), course_id, e.user_id));
                    }
                }
            }
        }
        for e in enrollments {
            if let Some(key) = learner_key(e) {
                needs.learners.insert(key);
            }
        }
        needs
    }

    /// Applies one new event (each event once: the log keeps it once).
    pub fn apply(&mut self, source: &str, event: &LearningEvent) {
        match event {
            LearningEvent::Lesson(e) => self.lesson(source, e),
            LearningEvent::Quiz(e) => self.quiz(source, e),
        }
    }

    pub fn lesson(&mut self, source: &str, e: &LessonEvent) {
        let lesson_id = e.lesson.lesson_id;
        let key = (source.to_owned(), e.course_id, e.user_id, lesson_id);
        let new_completion = !self.completions.contains_key(&key);
        let completion = self
            .completions
            .entry(key.clone())
            .or_insert_with(|| LessonCompletion {
                source: source.to_owned(),
                course_id: e.course_id,
                user_id: e.user_id,
                lesson_id,
                enrollment_id: None,
                completed_at: None,
            });
        let before = completion.clone();
        completion.enrollment_id = completion.enrollment_id.max(e.enrollment_id);
        completion.completed_at = earliest(completion.completed_at, e.at);
        if new_completion || *completion != before {
            self.changed.completions.insert(key);
        }

        let version = version_key(e.at, &e.event_id);
        let key = (source.to_owned(), e.course_id, lesson_id);
        let stored = self.lessons.get(&key);
        let newer = stored.is_none_or(|l| version > l.version);
        if newer {
            let completions = stored.map_or(0, |l| l.completions);
            self.lessons.insert(
                key.clone(),
                CourseLesson {
                    source: source.to_owned(),
                    course_id: e.course_id,
                    info: e.lesson.clone(),
                    version: version.clone(),
                    completions,
                },
            );
        }
        if new_completion && let Some(lesson) = self.lessons.get_mut(&key) {
            lesson.completions += 1;
        }
        if newer || new_completion {
            self.changed.lessons.insert(key);
        }

        let learner = self.learner(source, e.course_id, e.user_id);
        if new_completion {
            learner.lessons_completed += 1;
        }
        if learner
            .last_lesson_version
            .as_ref()
            .is_none_or(|v| version > *v)
        {
            learner.last_lesson_id = Some(lesson_id);
            learner.last_lesson_version = Some(version);
            learner.last_lesson_at = e.at;
        }
        learner.learning_activity = learner.learning_activity.max(e.at);
    }

    pub fn quiz(&mut self, source: &str, e: &QuizEvent) {
        let key = (source.to_owned(), e.quiz_id, e.user_id);
        let version = version_key(e.at, &e.event_id);
        let result = self
            .quizzes
            .entry(key.clone())
            .or_insert_with(|| QuizResult {
                source: source.to_owned(),
                quiz_id: e.quiz_id,
                user_id: e.user_id,
                quiz_name: None,
                course_id: None,
                enrollment_id: None,
                attempts: 0,
                events: 0,
                best_grade: None,
                latest_grade: None,
                correct_count: None,
                incorrect_count: None,
                latest_at: None,
                version: String::new(),
            });
        result.events += 1;
        result.attempts = result
            .attempts
            .max(e.attempts.unwrap_or(0))
            .max(result.events);
        result.course_id = result.course_id.max(e.course_id);
        result.enrollment_id = result.enrollment_id.max(e.enrollment_id);
        result.best_grade = match (result.best_grade, e.grade) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if version > result.version {
            result.quiz_name.clone_from(&e.quiz_name);
            result.latest_grade = e.grade;
            result.correct_count = e.correct_count;
            result.incorrect_count = e.incorrect_count;
            result.latest_at = e.at;
            result.version = version;
        }
        self.changed.quizzes.insert(key);
        if let Some(course_id) = e.course_id {
            let learner = self.learner(source, course_id, e.user_id);
            learner.learning_activity = learner.learning_activity.max(e.at);
        }
    }

    /// An enrollment's new state: its learner takes it when it is the
    /// learner's enrollment (the greatest id of that user in that course).
    pub fn enrollment(&mut self, e: &Enrollment) {
        let Some((source, course_id, user_id)) = learner_key(e) else {
            return;
        };
        let learner = self.learner(&source, course_id, user_id);
        if learner.enrollment_id.is_none_or(|id| e.enrollment_id >= id) {
            let first_enrollment = learner.enrollment_id.is_none();
            learner.enrollment_id = Some(e.enrollment_id);
            learner.completed = e.completed;
            learner.expiry_date = e.expiry_date;
            learner.enrollment_activity = enrollment_activity(e);
            if first_enrollment {
                *self
                    .changed
                    .enrolled
                    .entry((source, course_id))
                    .or_default() += 1;
            }
        }
    }

    /// The learner row (created when new), marked changed.
    fn learner(&mut self, source: &str, course_id: i64, user_id: i64) -> &mut Learner {
        let key = (source.to_owned(), course_id, user_id);
        self.changed.learners.insert(key.clone());
        self.learners
            .entry(key)
            .or_insert_with(|| Learner::new(source, course_id, user_id))
    }

    /// The projection of a whole log: every enrollment's final state and
    /// every learning event, in any order (duplicate event ids count once).
    pub fn fold<'a>(
        enrollments: impl IntoIterator<Item = &'a Enrollment>,
        events: impl IntoIterator<Item = (&'a str, &'a LearningEvent)>,
    ) -> Learning {
        let mut learning = Learning::default();
        let mut seen = BTreeSet::new();
        for (source, event) in events {
            if seen.insert((source, event.event_id())) {
                learning.apply(source, event);
            }
        }
        for e in enrollments {
            learning.enrollment(e);
        }
        learning.changed = Changed::default();
        learning
    }
}

fn learner_key(e: &Enrollment) -> Option<LearnerKey> {
    Some((e.source.clone(), e.course_id?, e.user_id?))
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The order of a course's lessons "as far as the payloads tell": by chapter
/// position (else chapter id), then lesson position; lessons whose place is
/// unknown after them, most completed first; ties by lesson id.
pub fn course_order(a: (&LessonInfo, i64), b: (&LessonInfo, i64)) -> std::cmp::Ordering {
    let place = |l: &LessonInfo| {
        let chapter = l.chapter_position.or(l.chapter_id);
        (
            chapter.is_none() && l.position.is_none(),
            chapter,
            l.position,
        )
    };
    let (la, ca) = a;
    let (lb, cb) = b;
    let (unknown_a, chapter_a, pos_a) = place(la);
    let (unknown_b, chapter_b, pos_b) = place(lb);
    unknown_a
        .cmp(&unknown_b)
        .then_with(|| {
            if unknown_a {
                cb.cmp(&ca)
            } else {
                // Unknown parts last within the known ones.
                (chapter_a.is_none(), chapter_a, pos_a.is_none(), pos_a).cmp(&(
                    chapter_b.is_none(),
                    chapter_b,
                    pos_b.is_none(),
                    pos_b,
                ))
            }
        })
        .then(la.lesson_id.cmp(&lb.lesson_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::Version;
    use chrono::TimeZone;

    fn at(day: u32) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2024, 5, day, 12, 0, 0).unwrap())
    }

    fn lesson(id: &str, day: u32, user: i64, lesson_id: i64, position: i64) -> LearningEvent {
        LearningEvent::Lesson(LessonEvent {
            event_id: id.into(),
            at: at(day),
            user_id: user,
            course_id: 3,
            enrollment_id: Some(100 + user),
            lesson: LessonInfo {
                lesson_id,
                name: Some(format!("Lesson {lesson_id}")),
                chapter_id: Some(1),
                chapter_name: Some("One".into()),
                chapter_position: None,
                position: Some(position),
                kind: Some("Video".into()),
            },
        })
    }

    fn quiz(id: &str, day: u32, user: i64, grade: f64, course: Option<i64>) -> LearningEvent {
        LearningEvent::Quiz(QuizEvent {
            event_id: id.into(),
            at: at(day),
            user_id: user,
            quiz_id: 7,
            quiz_name: Some("Check".into()),
            grade: Some(grade),
            attempts: None,
            correct_count: Some(1),
            incorrect_count: Some(1),
            course_id: course,
            enrollment_id: None,
        })
    }

    fn enrollment(id: i64, user: i64, day: u32, completed: bool) -> Enrollment {
        Enrollment {
            source: "s".into(),
            enrollment_id: id,
            user_id: Some(user),
            email: None,
            first_name: None,
            last_name: None,
            course_id: Some(3),
            course_name: None,
            progress: 0.0,
            trial: false,
            completed,
            activated_at: None,
            started_at: None,
            completed_at: None,
            expiry_date: None,
            created_at: None,
            updated_at: at(day),
            event_count: 1,
            version: Version {
                updated_at: at(day),
                created_at: at(day),
                event_id: format!("e{id}"),
            },
        }
    }

    #[test]
    fn version_keys_sort_like_versions() {
        assert!(version_key(at(1), "9") < version_key(at(1), "10"));
        assert!(version_key(at(1), "01") < version_key(at(1), "1"));
        assert!(version_key(at(1), "99") < version_key(at(1), "abc"));
        assert!(version_key(None, "99") < version_key(at(1), "1"));
        assert!(version_key(at(1), "99") < version_key(at(2), "1"));
    }

    #[test]
    fn a_lesson_completed_twice_counts_once_and_keeps_its_first_time() {
        let l = Learning::fold(
            [],
            [
                ("s", &lesson("2", 5, 1, 10, 0)),
                ("s", &lesson("1", 2, 1, 10, 0)),
                ("s", &lesson("3", 6, 2, 10, 0)),
            ],
        );
        assert_eq!(l.completions.len(), 2);
        // Two students completed lesson 10, one of them twice.
        assert_eq!(l.lessons[&("s".into(), 3, 10)].completions, 2);
        let c = &l.completions[&("s".into(), 3, 1, 10)];
        assert_eq!(c.completed_at, at(2));
        let learner = &l.learners[&("s".into(), 3, 1)];
        assert_eq!(learner.lessons_completed, 1);
        assert_eq!(learner.learning_activity, at(5));
    }

    #[test]
    fn the_last_lesson_is_the_newest_completion() {
        let l = Learning::fold(
            [],
            [
                ("s", &lesson("3", 9, 1, 12, 2)),
                ("s", &lesson("1", 2, 1, 10, 0)),
                ("s", &lesson("2", 4, 1, 11, 1)),
            ],
        );
        let learner = &l.learners[&("s".into(), 3, 1)];
        assert_eq!(learner.last_lesson_id, Some(12));
        assert_eq!(learner.last_lesson_at, at(9));
        assert_eq!(learner.lessons_completed, 3);
    }

    #[test]
    fn lessons_before_their_enrollment_are_linked_when_it_appears() {
        let mut l = Learning::default();
        l.apply("s", &lesson("1", 2, 1, 10, 0));
        assert_eq!(l.learners[&("s".into(), 3, 1)].enrollment_id, None);
        l.enrollment(&enrollment(101, 1, 1, false));
        let learner = &l.learners[&("s".into(), 3, 1)];
        assert_eq!(learner.enrollment_id, Some(101));
        assert_eq!(learner.lessons_completed, 1);
        assert_eq!(
            learner.last_activity(),
            at(2),
            "the lesson is newer than the enrollment"
        );
        // The other way round gives the same.
        let mut other = Learning::default();
        other.enrollment(&enrollment(101, 1, 1, false));
        other.apply("s", &lesson("1", 2, 1, 10, 0));
        assert_eq!(other.learners, l.learners);
    }

    #[test]
    fn the_greater_enrollment_id_is_the_learners() {
        let mut a = Learning::default();
        a.enrollment(&enrollment(101, 1, 1, true));
        a.enrollment(&enrollment(205, 1, 3, false));
        let mut b = Learning::default();
        b.enrollment(&enrollment(205, 1, 3, false));
        b.enrollment(&enrollment(101, 1, 1, true));
        assert_eq!(a.learners, b.learners);
        let learner = &a.learners[&("s".into(), 3, 1)];
        assert_eq!(
            (learner.enrollment_id, learner.completed),
            (Some(205), false)
        );
        // One student enrolled, however many enrollments and in which order.
        let one = EnrolledCounts::from([(("s".to_owned(), 3), 1)]);
        assert_eq!((&a.changed.enrolled, &b.changed.enrolled), (&one, &one));
        assert_eq!(a.enrolled_counts(), one);
    }

    #[test]
    fn stalled_means_enrolled_unfinished_unexpired_and_quiet() {
        let mut l = Learning::default();
        l.enrollment(&enrollment(101, 1, 1, false));
        l.apply("s", &lesson("1", 2, 1, 10, 0));
        let learner = l.learners[&("s".into(), 3, 1)].clone();
        let now = at(30).unwrap();
        assert!(learner.stalled(at(10).unwrap(), now));
        assert!(!learner.stalled(at(2).unwrap(), now), "active on the 2nd");
        let mut done = learner.clone();
        done.completed = true;
        assert!(!done.stalled(at(10).unwrap(), now));
        let mut expired = learner.clone();
        expired.expiry_date = at(20);
        assert!(!expired.stalled(at(10).unwrap(), now));
        let mut not_enrolled = learner;
        not_enrolled.enrollment_id = None;
        assert!(!not_enrolled.stalled(at(10).unwrap(), now));
    }

    #[test]
    fn quizzes_keep_attempts_best_and_latest_and_link_a_named_course() {
        let l = Learning::fold(
            [],
            [
                ("s", &quiz("2", 4, 1, 40.0, None)),
                ("s", &quiz("1", 2, 1, 80.0, None)),
                ("s", &quiz("3", 6, 1, 60.0, Some(3))),
            ],
        );
        let r = &l.quizzes[&("s".into(), 7, 1)];
        assert_eq!((r.attempts, r.events), (3, 3));
        assert_eq!(r.best_grade, Some(80.0));
        assert_eq!(r.latest_grade, Some(60.0));
        assert_eq!(r.course_id, Some(3));
        assert_eq!(l.learners[&("s".into(), 3, 1)].learning_activity, at(6));
        // Without a course: no learner.
        let l = Learning::fold([], [("s", &quiz("1", 2, 1, 80.0, None))]);
        assert!(l.learners.is_empty());
    }

    #[test]
    fn reported_attempts_win_when_greater() {
        let mut q = quiz("1", 2, 1, 80.0, None);
        if let LearningEvent::Quiz(e) = &mut q {
            e.attempts = Some(4);
        }
        let l = Learning::fold([], [("s", &q)]);
        assert_eq!(l.quizzes[&("s".into(), 7, 1)].attempts, 4);
    }

    #[test]
    fn the_course_order_uses_places_then_completions() {
        let info = |id: i64, chapter: Option<i64>, position: Option<i64>| LessonInfo {
            lesson_id: id,
            chapter_id: chapter,
            position,
            ..Default::default()
        };
        let mut lessons = [
            (info(1, None, None), 5),
            (info(2, Some(2), Some(0)), 1),
            (info(3, Some(1), Some(1)), 1),
            (info(4, Some(1), Some(0)), 1),
            (info(5, None, None), 9),
        ];
        lessons.sort_by(|a, b| course_order((&a.0, a.1), (&b.0, b.1)));
        let ids: Vec<i64> = lessons.iter().map(|l| l.0.lesson_id).collect();
        assert_eq!(ids, vec![4, 3, 2, 5, 1]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_event() -> impl Strategy<Value = LearningEvent> {
            prop_oneof![
                (
                    0u32..40,
                    1i64..4,
                    1i64..3,
                    0i64..5,
                    1u32..20,
                    prop::option::of(100i64..103)
                )
                    .prop_map(|(id, user, course, lesson, day, enrollment)| {
                        LearningEvent::Lesson(LessonEvent {
                            event_id: format!("{id}"),
                            at: at(day),
                            user_id: user,
                            course_id: course,
                            enrollment_id: enrollment,
                            lesson: LessonInfo {
                                lesson_id: lesson,
                                name: Some(format!("L{lesson}-{day}")),
                                position: Some(lesson),
                                ..Default::default()
                            },
                        })
                    }),
                (
                    40u32..60,
                    1i64..4,
                    0u32..100,
                    1u32..20,
                    prop::option::of(1i64..3)
                )
                    .prop_map(|(id, user, grade, day, course)| {
                        LearningEvent::Quiz(QuizEvent {
                            event_id: format!("{id}"),
                            at: at(day),
                            user_id: user,
                            quiz_id: 7,
                            quiz_name: Some(format!("Q{day}")),
                            grade: Some(f64::from(grade)),
                            attempts: None,
                            correct_count: None,
                            incorrect_count: None,
                            course_id: course,
                            enrollment_id: None,
                        })
                    }),
            ]
        }

        /// Applies `events` in batches as a store does: each batch loads only
        /// the rows it needs from `db` and writes back only what changed,
        /// and moves its learners between the stall buckets it returns.
        fn in_batches(
            events: &[LearningEvent],
            enrollments: &[Enrollment],
            size: usize,
        ) -> (Learning, StallDeltas, EnrolledCounts) {
            let mut db = Learning::default();
            let mut buckets = StallDeltas::new();
            let mut enrolled = EnrolledCounts::new();
            let mut count = |changed: &Changed| {
                for (k, n) in &changed.enrolled {
                    *enrolled.entry(k.clone()).or_default() += n;
                }
            };
            let mut add = |deltas: StallDeltas| {
                for (k, n) in deltas {
                    *buckets.entry(k).or_default() += n;
                }
            };
            let mut seen = BTreeSet::new();
            let events: Vec<&LearningEvent> = events
                .iter()
                .filter(|e| seen.insert(e.event_id().to_owned()))
                .collect();
            let mut enrollments = enrollments.iter();
            for batch in events.chunks(size.max(1)) {
                let enrolled: Vec<&Enrollment> = enrollments.next().into_iter().collect();
                let needs =
                    Learning::needs(batch.iter().map(|e| ("s", *e)), enrolled.iter().copied());
                let mut state = Learning::default();
                for k in &needs.completions {
                    if let Some(r) = db.completions.get(k) {
                        state.completions.insert(k.clone(), r.clone());
                    }
                }
                for k in &needs.lessons {
                    if let Some(r) = db.lessons.get(k) {
                        state.lessons.insert(k.clone(), r.clone());
                    }
                }
                for k in &needs.learners {
                    if let Some(r) = db.learners.get(k) {
                        state.learners.insert(k.clone(), r.clone());
                    }
                }
                for k in &needs.quizzes {
                    if let Some(r) = db.quizzes.get(k) {
                        state.quizzes.insert(k.clone(), r.clone());
                    }
                }
                let loaded = state.stall_keys();
                for e in batch {
                    state.apply("s", e);
                }
                for e in enrolled {
                    state.enrollment(e);
                }
                add(state.stall_deltas(&loaded));
                count(&state.changed);
                for k in &state.changed.completions {
                    db.completions
                        .insert(k.clone(), state.completions[k].clone());
                }
                for k in &state.changed.lessons {
                    db.lessons.insert(k.clone(), state.lessons[k].clone());
                }
                for k in &state.changed.learners {
                    db.learners.insert(k.clone(), state.learners[k].clone());
                }
                for k in &state.changed.quizzes {
                    db.quizzes.insert(k.clone(), state.quizzes[k].clone());
                }
            }
            let loaded = db.stall_keys();
            for e in enrollments {
                db.enrollment(e);
            }
            add(db.stall_deltas(&loaded));
            count(&db.changed);
            buckets.retain(|_, n| *n != 0);
            (db, buckets, enrolled)
        }

        proptest! {
            /// What the stores do (batches that load what they touch and
            /// write what changed), in any order with redeliveries, is the
            /// fold of the whole log; so are the stall buckets the batches
            /// moved learners between.
            #[test]
            fn any_order_any_batches_and_duplicates_give_the_fold(
                events in prop::collection::vec(arb_event(), 1..40),
                order in any::<prop::sample::Index>(),
                size in 1usize..6,
                dupes in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
            ) {
                // Distinct events have distinct ids (the log keeps one per id).
                let mut ids = BTreeSet::new();
                let events: Vec<LearningEvent> =
                    events.into_iter().filter(|e| ids.insert(e.event_id().to_owned())).collect();
                let enrollments = [enrollment(101, 1, 3, false), enrollment(102, 2, 9, true)];
                let expected = Learning::fold(&enrollments, events.iter().map(|e| ("s", e)));
                let mut shuffled = events.clone();
                shuffled.rotate_left(order.index(events.len()));
                shuffled.reverse();
                for d in &dupes {
                    shuffled.push(events[d.index(events.len())].clone());
                }
                let folded =
                    Learning::fold(enrollments.iter().rev(), shuffled.iter().map(|e| ("s", e)));
                prop_assert_eq!(&folded, &expected);
                let (mut batched, buckets, enrolled) = in_batches(&shuffled, &enrollments, size);
                batched.changed = Changed::default();
                prop_assert_eq!(&batched, &expected);
                prop_assert_eq!(buckets, expected.stall_buckets());
                prop_assert_eq!(enrolled, expected.enrolled_counts());
            }
        }
    }
}
