//! Milestones: events of our own, derived from the projection — pure rules, no I/O.
//!
//! A milestone is emitted into the event log like a delivery (topic
//! `milestone.*`), so it is forwarded, replayed and listed like any other
//! event. Its envelope id is derived from the enrollment and the milestone
//! (see [`Milestone::event_id`]), and the log keeps one event per (source,
//! id, topic): whoever derives it first (a batch, a re-run after a crash, a
//! second instance) stores it, every later derivation is a duplicate.
//!
//! The rules depend only on the events, never on their arrival order:
//! - `progress`: a threshold is reached when any event of the enrollment
//!   says at least that much (a completion without a percentage says 100).
//!   A batch emits the thresholds above the progress projected before it
//!   and at most the highest its events say, lowest first; whatever event
//!   first took the projection past a threshold emitted it then.
//! - `completed`: the projection turns completed (completion is sticky).
//! - `trial_converted`: the enrollment was a free trial (`enrollment.trial`
//!   or `free_trial: true`) and a newer enrollment event says
//!   `free_trial: false` (what Thinkific sends when the student buys the
//!   full course): the projection's `trial` is false while a trial event was
//!   seen, before or in the batch.
//! - `lesson`: a configured lesson id completed by the student (once per
//!   student, course and lesson).
//! - An enrollment first known from `enrollment.backfill` events (history
//!   read from the REST API) emits nothing for what they say: a first
//!   reconciliation of a school must not flood receivers with old news.
//!   What follows them emits as usual.
//! - `stalled`: no activity since `days` ago (checked on a schedule); its
//!   id carries the time of the last activity, so a later activity ends the
//!   stall and the next stall is a milestone of its own.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Enrollment, EnrollmentEvent};
use crate::thinkific::EnrollmentTopic;
use crate::thinkific::learning::LessonEvent;

pub const PROGRESS: &str = "milestone.progress";
pub const COMPLETED: &str = "milestone.completed";
pub const TRIAL_CONVERTED: &str = "milestone.trial_converted";
pub const STALLED: &str = "milestone.stalled";
pub const LESSON: &str = "milestone.lesson";

/// The resource of every milestone topic.
pub const RESOURCE: &str = "milestone";

/// The default progress thresholds, in percent.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [25.0, 50.0, 75.0];
/// Days without activity after which an enrollment is stalled, by default.
pub const DEFAULT_STALLED_DAYS: u32 = 14;

/// The milestones configured for one source. An empty threshold list, or
/// `None` days, switch that kind off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceMilestones {
    /// `milestone.progress` thresholds, in percent, ascending (empty: off).
    pub progress: Vec<f64>,
    /// `milestone.completed` on.
    pub completed: bool,
    /// `milestone.trial_converted` on.
    pub trial_converted: bool,
    /// `milestone.stalled` after this many days without activity (null: off).
    pub stalled_days: Option<u32>,
    /// `milestone.lesson` for these lesson ids (empty: off).
    pub lessons: Vec<i64>,
}

impl Default for SourceMilestones {
    fn default() -> Self {
        SourceMilestones {
            progress: DEFAULT_THRESHOLDS.to_vec(),
            completed: true,
            trial_converted: true,
            stalled_days: Some(DEFAULT_STALLED_DAYS),
            lessons: Vec::new(),
        }
    }
}

impl SourceMilestones {
    /// Nothing would ever be emitted.
    pub fn is_off(&self) -> bool {
        self.progress.is_empty()
            && !self.completed
            && !self.trial_converted
            && self.stalled_days.is_none()
            && self.lessons.is_empty()
    }

    /// Sorts and checks the thresholds and lessons; says what is wrong.
    pub fn normalized(mut self) -> Result<SourceMilestones, String> {
        for t in &self.progress {
            if !(t.is_finite() && *t > 0.0 && *t <= 100.0) {
                return Err(format!(
                    "progress threshold {t} is not a percentage above 0 and at most 100 (e.g. [25, 50, 75])"
                ));
            }
        }
        self.progress.sort_by(f64::total_cmp);
        self.progress.dedup();
        if self.stalled_days == Some(0) {
            return Err("stalled_days must be at least 1 (or false to switch it off)".into());
        }
        self.lessons.sort_unstable();
        self.lessons.dedup();
        Ok(self)
    }
}

/// Every source's milestones. A source that is not named has none: they are
/// switched on per source in `enrollhook.toml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MilestoneRules {
    by_source: BTreeMap<String, SourceMilestones>,
}

impl MilestoneRules {
    pub fn set(&mut self, source: &str, milestones: SourceMilestones) {
        if milestones.is_off() {
            self.by_source.remove(source);
        } else {
            self.by_source.insert(source.to_owned(), milestones);
        }
    }

    pub fn of(&self, source: &str) -> Option<&SourceMilestones> {
        self.by_source.get(source)
    }

    /// No source has any milestone: detection is skipped entirely.
    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &SourceMilestones)> {
        self.by_source.iter().map(|(s, m)| (s.as_str(), m))
    }

    /// Some source has lesson milestones.
    pub fn any_lessons(&self) -> bool {
        self.by_source.values().any(|m| !m.lessons.is_empty())
    }
}

/// What was reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Progress {
        threshold: f64,
    },
    Completed,
    TrialConverted,
    /// Inactive since `since` (the last activity), for at least `days`.
    Stalled {
        since: DateTime<Utc>,
        days: u32,
    },
    Lesson(LessonEvent),
}

/// One milestone of one enrollment (a lesson milestone: of one student in one
/// course, which its enrollment may not be known for yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Milestone {
    pub source: String,
    pub enrollment_id: Option<i64>,
    pub kind: Kind,
}

impl Milestone {
    pub fn topic(&self) -> &'static str {
        match self.kind {
            Kind::Progress { .. } => PROGRESS,
            Kind::Completed => COMPLETED,
            Kind::TrialConverted => TRIAL_CONVERTED,
            Kind::Stalled { .. } => STALLED,
            Kind::Lesson(_) => LESSON,
        }
    }

    /// The envelope id: a function of the enrollment and the milestone only,
    /// so every derivation of it names the same event (the source is part of
    /// the log's key already).
    pub fn event_id(&self) -> String {
        let enrollment = self
            .enrollment_id
            .map_or_else(|| "none".to_owned(), |id| id.to_string());
        match &self.kind {
            Kind::Progress { threshold } => format!("ms-{enrollment}-progress-{threshold}"),
            Kind::Completed => format!("ms-{enrollment}-completed"),
            Kind::TrialConverted => format!("ms-{enrollment}-trial-converted"),
            Kind::Stalled { since, .. } => {
                format!("ms-{enrollment}-stalled-{}", since.timestamp_micros())
            }
            // By student and course: the lesson may come before its enrollment.
            Kind::Lesson(l) => format!(
                "ms-u{}-c{}-lesson-{}",
                l.user_id, l.course_id, l.lesson.lesson_id
            ),
        }
    }

    fn detail(&self) -> Value {
        match &self.kind {
            Kind::Progress { threshold } => json!({"kind": "progress", "threshold": threshold}),
            Kind::Completed => json!({"kind": "completed"}),
            Kind::TrialConverted => json!({"kind": "trial_converted"}),
            Kind::Stalled { since, days } => json!({
                "kind": "stalled",
                "inactive_since": rfc3339(*since),
                "days": days,
            }),
            Kind::Lesson(l) => json!({
                "kind": "lesson",
                "lesson_id": l.lesson.lesson_id,
                "lesson_name": l.lesson.name,
                "chapter_name": l.lesson.chapter_name,
                "completed_at": l.at.map(rfc3339),
                "user_id": l.user_id,
                "course_id": l.course_id,
            }),
        }
    }

    /// The event's body: a Thinkific-like envelope whose payload carries the
    /// milestone and the enrollment as projected now, so that a receiver
    /// needs nothing else (see the README's "Milestones").
    pub fn body(
        &self,
        enrollment: Option<&Enrollment>,
        last_lesson: Option<&LastLesson>,
        at: DateTime<Utc>,
    ) -> String {
        let (user, course) = match (enrollment, &self.kind) {
            (Some(e), _) => (
                json!({"id": e.user_id, "email": e.email, "first_name": e.first_name, "last_name": e.last_name}),
                json!({"id": e.course_id, "name": e.course_name}),
            ),
            (None, Kind::Lesson(l)) => (json!({"id": l.user_id}), json!({"id": l.course_id})),
            (None, _) => (Value::Null, Value::Null),
        };
        let enrollment_view = enrollment.map(|e| {
            json!({
                "id": e.enrollment_id,
                "user_id": e.user_id,
                "email": e.email,
                "first_name": e.first_name,
                "last_name": e.last_name,
                "course_id": e.course_id,
                "course_name": e.course_name,
                "progress": e.progress,
                "status": e.status(at).as_str(),
                "trial": e.trial,
                "completed": e.completed,
                "activated_at": e.activated_at.map(rfc3339),
                "started_at": e.started_at.map(rfc3339),
                "completed_at": e.completed_at.map(rfc3339),
                "expiry_date": e.expiry_date.map(rfc3339),
                "created_at": e.created_at.map(rfc3339),
                "updated_at": e.updated_at.map(rfc3339),
                "days_to_complete": e.days_to_complete(),
                "last_lesson": last_lesson.map(|l| json!({
                    "id": l.lesson_id, "name": l.name, "completed_at": l.at.map(rfc3339),
                })),
            })
        });
        json!({
            "id": self.event_id(),
            "resource": RESOURCE,
            "action": self.topic().trim_start_matches("milestone."),
            "created_at": rfc3339(at),
            "payload": {
                "milestone": self.detail(),
                "enrollment_id": self.enrollment_id,
                "enrollment": enrollment_view,
                "user": user,
                "course": course,
                // As Thinkific writes it, for templates that read it there.
                "percentage_completed": enrollment.map(|e| format!("{:.1}", e.progress)),
            },
        })
        .to_string()
    }
}

/// A student's most recent lesson in the course, when known.
#[derive(Debug, Clone, PartialEq)]
pub struct LastLesson {
    pub lesson_id: i64,
    pub name: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// How far one event says the enrollment got: its percentage, or 100 for a
/// completion that gives none (as [`super::step`] projects it).
fn event_progress(e: &EnrollmentEvent) -> Option<f64> {
    let p = &e.payload;
    match p.percentage_completed {
        Some(pct) => Some(pct),
        None if e.topic == EnrollmentTopic::Completed || p.completed == Some(true) => Some(100.0),
        None => None,
    }
}

fn is_trial_event(e: &EnrollmentEvent) -> bool {
    e.topic == EnrollmentTopic::Trial || e.payload.free_trial == Some(true)
}

/// The milestones one batch of an enrollment's events reaches: `before` is
/// the projection before the batch, `after` after it, `events` the batch's
/// events of this enrollment (any order). Progress thresholds come lowest first.
pub fn detect(
    rules: &SourceMilestones,
    before: Option<&Enrollment>,
    after: &Enrollment,
    events: &[&EnrollmentEvent],
) -> Vec<Milestone> {
    let mut found = Vec::new();
    // History, not news: an enrollment first known from a backfill (the REST
    // API's listing, e.g. a reconciliation's first run) emits nothing for
    // what the listing says; what happens after it does.
    if before.is_none()
        && !events.is_empty()
        && events.iter().all(|e| e.topic == EnrollmentTopic::Backfill)
    {
        return found;
    }
    let milestone = |kind| Milestone {
        source: after.source.clone(),
        enrollment_id: Some(after.enrollment_id),
        kind,
    };
    if !rules.progress.is_empty() {
        let floor = before.map_or(0.0, |b| b.progress);
        let reached = events
            .iter()
            .filter_map(|e| event_progress(e))
            .fold(after.progress, f64::max);
        for &threshold in &rules.progress {
            if threshold > floor && threshold <= reached {
                found.push(milestone(Kind::Progress { threshold }));
            }
        }
    }
    if rules.completed && after.completed && !before.is_some_and(|b| b.completed) {
        found.push(milestone(Kind::Completed));
    }
    if rules.trial_converted
        && !after.trial
        && (before.is_some_and(|b| b.trial) || events.iter().any(|e| is_trial_event(e)))
    {
        found.push(milestone(Kind::TrialConverted));
    }
    found
}

/// The lesson milestone a completed lesson reaches, if its id is configured.
pub fn detect_lesson(rules: &SourceMilestones, source: &str, e: &LessonEvent) -> Option<Milestone> {
    rules
        .lessons
        .binary_search(&e.lesson.lesson_id)
        .is_ok()
        .then(|| Milestone {
            source: source.to_owned(),
            enrollment_id: e.enrollment_id,
            kind: Kind::Lesson(e.clone()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thinkific::EnrollmentPayload;
    use chrono::TimeZone;

    fn at(minute: u32) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2024, 5, 1, 12, minute, 0).unwrap())
    }

    fn ev(id: &str, topic: EnrollmentTopic, minute: u32, pct: Option<f64>) -> EnrollmentEvent {
        EnrollmentEvent {
            topic,
            event_id: id.into(),
            envelope_created_at: at(minute),
            payload: EnrollmentPayload {
                id: 9,
                course_id: Some(3),
                user_id: Some(1),
                percentage_completed: pct,
                updated_at: at(minute),
                ..Default::default()
            },
        }
    }

    fn project(events: &[&EnrollmentEvent]) -> Enrollment {
        super::super::fold("s", events.iter().map(|e| (*e).clone())).unwrap()
    }

    /// Every milestone id reached, delivering `events` one by one in this order.
    fn one_by_one(rules: &SourceMilestones, events: &[EnrollmentEvent]) -> Vec<String> {
        let mut seen: Vec<&EnrollmentEvent> = Vec::new();
        let mut ids = Vec::new();
        for e in events {
            let before = (!seen.is_empty()).then(|| project(&seen));
            seen.push(e);
            let after = project(&seen);
            for m in detect(rules, before.as_ref(), &after, &[e]) {
                if !ids.contains(&m.event_id()) {
                    ids.push(m.event_id());
                }
            }
        }
        ids.sort();
        ids
    }

    #[test]
    fn a_jump_emits_every_threshold_lowest_first() {
        let rules = SourceMilestones::default();
        let before = project(&[&ev("1", EnrollmentTopic::Progress, 1, Some(10.0))]);
        let jump = ev("2", EnrollmentTopic::Progress, 2, Some(80.0));
        let after = project(&[&ev("1", EnrollmentTopic::Progress, 1, Some(10.0)), &jump]);
        let found = detect(&rules, Some(&before), &after, &[&jump]);
        let thresholds: Vec<_> = found
            .iter()
            .map(|m| match m.kind {
                Kind::Progress { threshold } => threshold,
                _ => panic!("only progress expected, got {m:?}"),
            })
            .collect();
        assert_eq!(thresholds, vec![25.0, 50.0, 75.0]);
        assert_eq!(found[1].event_id(), "ms-9-progress-50");
    }

    #[test]
    fn any_arrival_order_reaches_the_same_milestones() {
        let rules = SourceMilestones::default();
        let mut trial = ev("1", EnrollmentTopic::Trial, 1, Some(0.0));
        trial.payload.free_trial = Some(true);
        let mut bought = ev("2", EnrollmentTopic::Created, 2, Some(30.0));
        bought.payload.free_trial = Some(false);
        // Newer progress that is lower (a course that gained lessons).
        let events = vec![
            trial,
            bought,
            ev("3", EnrollmentTopic::Progress, 3, Some(80.0)),
            ev("4", EnrollmentTopic::Progress, 4, Some(40.0)),
            ev("5", EnrollmentTopic::Completed, 5, None),
        ];
        let expected = one_by_one(&rules, &events);
        assert_eq!(
            expected,
            vec![
                "ms-9-completed",
                "ms-9-progress-25",
                "ms-9-progress-50",
                "ms-9-progress-75",
                "ms-9-trial-converted"
            ]
        );
        // Every permutation of five events.
        let mut order: Vec<usize> = (0..events.len()).collect();
        let mut count = 0;
        permute(&mut order, 0, &mut |o| {
            let shuffled: Vec<_> = o.iter().map(|&i| events[i].clone()).collect();
            assert_eq!(one_by_one(&rules, &shuffled), expected, "order {o:?}");
            count += 1;
        });
        assert_eq!(count, 120);
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn a_backfill_of_history_emits_nothing_but_what_follows_does() {
        let rules = SourceMilestones::default();
        let history = ev("1", EnrollmentTopic::Backfill, 1, Some(60.0));
        let known = project(&[&history]);
        assert!(detect(&rules, None, &known, &[&history]).is_empty());
        let next = ev("2", EnrollmentTopic::Progress, 2, Some(80.0));
        let after = project(&[&history, &next]);
        let found = detect(&rules, Some(&known), &after, &[&next]);
        assert_eq!(
            found.iter().map(Milestone::event_id).collect::<Vec<_>>(),
            ["ms-9-progress-75"]
        );
        // A backfill that tells a known enrollment's news (a missed webhook) counts.
        let missed = ev("3", EnrollmentTopic::Backfill, 3, Some(100.0));
        let done = project(&[&history, &next, &missed]);
        let found = detect(&rules, Some(&after), &done, &[&missed]);
        assert!(found.iter().any(|m| m.kind == Kind::Completed), "{found:?}");
    }

    #[test]
    fn switched_off_kinds_emit_nothing() {
        let rules = SourceMilestones {
            progress: vec![],
            completed: false,
            trial_converted: false,
            stalled_days: None,
            lessons: vec![],
        };
        assert!(rules.is_off());
        let done = ev("1", EnrollmentTopic::Completed, 1, Some(100.0));
        assert!(detect(&rules, None, &project(&[&done]), &[&done]).is_empty());
        let mut all = MilestoneRules::default();
        all.set("s", rules);
        assert!(all.is_empty());
    }

    #[test]
    fn thresholds_are_checked_and_sorted() {
        let m = SourceMilestones {
            progress: vec![75.0, 25.0, 75.0],
            ..Default::default()
        };
        assert_eq!(m.normalized().unwrap().progress, vec![25.0, 75.0]);
        for bad in [0.0, -5.0, 101.0, f64::NAN] {
            let m = SourceMilestones {
                progress: vec![bad],
                ..Default::default()
            };
            assert!(m.normalized().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_body_parses_as_an_event_of_its_topic_and_carries_the_enrollment() {
        let e = project(&[&ev("1", EnrollmentTopic::Progress, 1, Some(55.0))]);
        let m = Milestone {
            source: "s".into(),
            enrollment_id: Some(9),
            kind: Kind::Progress { threshold: 50.0 },
        };
        let body = m.body(Some(&e), None, at(10).unwrap());
        let envelope = crate::thinkific::parse(body.as_bytes(), None).unwrap();
        assert_eq!(envelope.topic.to_string(), PROGRESS);
        assert_eq!(envelope.id, "ms-9-progress-50");
        assert!(envelope.enrollment.is_none(), "not an enrollment event");
        assert_eq!(envelope.course_id, Some(3));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["payload"]["enrollment"]["progress"], json!(55.0));
        assert_eq!(v["payload"]["milestone"]["threshold"], json!(50.0));
        assert_eq!(v["payload"]["user"]["id"], json!(1));
    }
}
