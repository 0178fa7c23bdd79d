//! How enrollment events become the enrollment projection: pure rules, no I/O.
//!
//! The rules (see ARCHITECTURE.md), chosen so that the result never depends on the
//! order in which Thinkific happened to deliver events:
//!
//! - Every event has a [`Version`]: (payload `updated_at`, envelope `created_at`,
//!   envelope id). The projection of an enrollment is the [`fold`] of its events
//!   sorted by version, each [`step`] taking every field from the event when the
//!   event has it (not null). So a field holds its value from the newest event in
//!   which it is not null; a null never erases what an older event said.
//! - Completion is sticky: once `enrollment.completed` or 100 % is seen, the
//!   enrollment stays completed and keeps the `completed_at` of its first
//!   completion, even if a newer event shows less progress (a course that gained
//!   lessons). `completed_at` is only read from completing events, because
//!   Thinkific fills it even on 0 % enrollments.
//! - `enrollment.trial` (or `free_trial: true`) makes the enrollment a trial;
//!   a newer non-trial enrollment event with `free_trial: false` ends it.
//! - Expired is derived when read: `expiry_date` in the past and not completed.
//! - `enrollment.backfill` (an enrollment as Thinkific's REST API listed it,
//!   stored by `enrollhook thinkific backfill`) is an event like any other: its
//!   version is its `updated_at`, so a newer webhook wins over it and it never
//!   overrides newer webhook data. Its `completed: true` completes the
//!   enrollment (the REST API says so outright), like `enrollment.completed`.
//!
//! A store applies a new event with [`apply`]: when the event is newer than
//! everything folded so far, one [`step`] gives exactly what a full fold would;
//! when it is older (a late delivery) the store re-folds that enrollment's events
//! from the log. `rebuild` is the same fold over the whole log, hence identical.

pub mod learning;
pub mod milestones;

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::thinkific::{EnrollmentPayload, EnrollmentTopic};

/// The order of events of one enrollment. Later versions win.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub updated_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub event_id: String,
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.updated_at
            .cmp(&other.updated_at)
            .then(self.created_at.cmp(&other.created_at))
            .then_with(|| compare_event_ids(&self.event_id, &other.event_id))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Thinkific ids are long digit strings ("20190131192004041953291"): compare
/// them as numbers when both are numeric, as text otherwise (numbers first).
/// Equal only when the ids are equal: "1" and "01" are different events, and
/// calling them equal made `fold` depend on arrival order (see FUZZING.md).
fn compare_event_ids(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    match (numeric(a), numeric(b)) {
        (true, true) => {
            let (ta, tb) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
            ta.len()
                .cmp(&tb.len())
                .then_with(|| ta.cmp(tb))
                .then_with(|| a.cmp(b))
        }
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

/// One enrollment event as the projection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentEvent {
    pub topic: EnrollmentTopic,
    pub event_id: String,
    pub envelope_created_at: Option<DateTime<Utc>>,
    pub payload: EnrollmentPayload,
}

impl EnrollmentEvent {
    pub fn version(&self) -> Version {
        Version {
            updated_at: self.payload.updated_at,
            created_at: self.envelope_created_at,
            event_id: self.event_id.clone(),
        }
    }
}

/// Where an enrollment stands, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Trial,
    Active,
    Completed,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Trial => "trial",
            Status::Active => "active",
            Status::Completed => "completed",
            Status::Expired => "expired",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trial" => Ok(Status::Trial),
            "active" => Ok(Status::Active),
            "completed" => Ok(Status::Completed),
            "expired" => Ok(Status::Expired),
            other => Err(format!(
                "unknown status `{other}`: use trial, active, completed or expired"
            )),
        }
    }
}

/// The projected state of one enrollment (one per source and enrollment id).
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    pub source: String,
    pub enrollment_id: i64,
    pub user_id: Option<i64>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub course_id: Option<i64>,
    pub course_name: Option<String>,
    /// 0–100.
    pub progress: f64,
    pub trial: bool,
    pub completed: bool,
    pub activated_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub event_count: i64,
    /// The newest event folded in.
    pub version: Version,
}

impl Enrollment {
    pub fn status(&self, now: DateTime<Utc>) -> Status {
        if self.completed {
            Status::Completed
        } else if self.expiry_date.is_some_and(|e| e < now) {
            Status::Expired
        } else if self.trial {
            Status::Trial
        } else {
            Status::Active
        }
    }

    /// `completed_at` − (`started_at`, else `activated_at`, else `created_at`), in days.
    pub fn days_to_complete(&self) -> Option<f64> {
        if !self.completed {
            return None;
        }
        let done = self.completed_at?;
        let start = self.started_at.or(self.activated_at).or(self.created_at)?;
        let days = (done - start).num_milliseconds() as f64 / 86_400_000.0;
        Some(days.max(0.0))
    }
}

/// What applying one new event to the stored state requires.
// Short-lived (matched right away), so boxing the state would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Apply {
    /// The event is the newest: this is the new state.
    Newer(Enrollment),
    /// The event is older than the stored state: re-fold the enrollment's events.
    Older,
}

pub fn apply(current: Option<&Enrollment>, source: &str, event: &EnrollmentEvent) -> Apply {
    match current {
        Some(cur) if event.version() <= cur.version => Apply::Older,
        _ => Apply::Newer(step(current.cloned(), source, event)),
    }
}

/// The projection of a set of events, in any order (duplicates by event id are ignored).
pub fn fold<I>(source: &str, events: I) -> Option<Enrollment>
where
    I: IntoIterator<Item = EnrollmentEvent>,
{
    let mut events: Vec<EnrollmentEvent> = events.into_iter().collect();
    events.sort_by_cached_key(EnrollmentEvent::version);
    events.dedup_by(|a, b| a.event_id == b.event_id);
    events
        .iter()
        .fold(None, |state, e| Some(step(state, source, e)))
}

/// Folds one event, assumed newer than `state`, into it.
pub fn step(state: Option<Enrollment>, source: &str, event: &EnrollmentEvent) -> Enrollment {
    let p = &event.payload;
    let mut e = state.unwrap_or_else(|| Enrollment {
        source: source.to_owned(),
        enrollment_id: p.id,
        user_id: None,
        email: None,
        first_name: None,
        last_name: None,
        course_id: None,
        course_name: None,
        progress: 0.0,
        trial: false,
        completed: false,
        activated_at: None,
        started_at: None,
        completed_at: None,
        expiry_date: None,
        created_at: None,
        updated_at: None,
        event_count: 0,
        version: event.version(),
    });

    fn take<T: Clone>(field: &mut Option<T>, new: &Option<T>) {
        if new.is_some() {
            field.clone_from(new);
        }
    }
    take(&mut e.user_id, &p.user_id);
    take(&mut e.email, &p.email);
    take(&mut e.first_name, &p.first_name);
    take(&mut e.last_name, &p.last_name);
    take(&mut e.course_id, &p.course_id);
    take(&mut e.course_name, &p.course_name);
    take(&mut e.activated_at, &p.activated_at);
    take(&mut e.started_at, &p.started_at);
    take(&mut e.expiry_date, &p.expiry_date);
    take(&mut e.created_at, &p.created_at);
    take(&mut e.updated_at, &p.updated_at);

    let says_completed = event.topic == EnrollmentTopic::Completed || p.completed == Some(true);
    let is_completion = says_completed || p.percentage_completed.is_some_and(|pct| pct >= 100.0);
    match p.percentage_completed {
        Some(pct) => e.progress = pct,
        // A completion that does not say how far: all the way.
        None if says_completed => e.progress = 100.0,
        None => {}
    }
    if is_completion && !e.completed {
        e.completed = true;
        e.completed_at = p
            .completed_at
            .or(p.updated_at)
            .or(event.envelope_created_at);
    }

    if event.topic == EnrollmentTopic::Trial || p.free_trial == Some(true) {
        e.trial = true;
    } else if p.free_trial == Some(false) {
        e.trial = false;
    }

    e.event_count += 1;
    e.version = event.version();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
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
                course_name: Some("Rust".into()),
                user_id: Some(1),
                email: Some("a@example.com".into()),
                percentage_completed: pct,
                free_trial: Some(false),
                started_at: at(0),
                completed_at: at(minute),
                updated_at: at(minute),
                ..Default::default()
            },
        }
    }

    use EnrollmentTopic::*;

    #[test]
    fn in_order_progress_then_completion() {
        let s = fold(
            "s",
            [
                ev("1", Created, 1, Some(0.0)),
                ev("2", Progress, 2, Some(24.0)),
                ev("3", Completed, 3, Some(100.0)),
            ],
        )
        .unwrap();
        assert!(s.completed);
        assert_eq!(s.progress, 100.0);
        assert_eq!(s.completed_at, at(3));
        assert_eq!(s.event_count, 3);
        assert_eq!(s.status(Utc::now()), Status::Completed);
        assert_eq!(s.days_to_complete(), Some(3.0 / 1440.0));
    }

    #[test]
    fn late_progress_does_not_undo_completion() {
        let completed = ev("3", Completed, 3, Some(100.0));
        let late = ev("2", Progress, 2, Some(24.0));
        let state = match apply(None, "s", &completed) {
            Apply::Newer(s) => s,
            Apply::Older => unreachable!(),
        };
        assert_eq!(apply(Some(&state), "s", &late), Apply::Older);
        let refolded = fold("s", [completed, late]).unwrap();
        assert!(refolded.completed);
        assert_eq!(refolded.progress, 100.0);
    }

    #[test]
    fn completion_is_sticky_and_keeps_first_completed_at() {
        let s = fold(
            "s",
            [
                ev("1", Completed, 1, Some(100.0)),
                // The course gained lessons: newer progress is lower.
                ev("2", Progress, 5, Some(80.0)),
                ev("3", Completed, 9, None),
            ],
        )
        .unwrap();
        assert!(s.completed);
        assert_eq!(s.completed_at, at(1));
        assert_eq!(s.progress, 100.0);
        let s = fold(
            "s",
            [
                ev("1", Completed, 1, None),
                ev("2", Progress, 5, Some(80.0)),
            ],
        )
        .unwrap();
        assert_eq!((s.completed, s.progress), (true, 80.0));
    }

    #[test]
    fn completed_at_alone_does_not_complete() {
        // Thinkific's samples fill completed_at on 0 % enrollments.
        let s = fold("s", [ev("1", Created, 1, Some(0.0))]).unwrap();
        assert!(!s.completed);
        assert_eq!(s.completed_at, None);
        assert_eq!(s.days_to_complete(), None);
    }

    #[test]
    fn nulls_never_erase() {
        let mut second = ev("2", Progress, 2, None);
        second.payload.email = None;
        second.payload.course_name = None;
        let s = fold("s", [ev("1", Created, 1, Some(10.0)), second]).unwrap();
        assert_eq!(s.email.as_deref(), Some("a@example.com"));
        assert_eq!(s.course_name.as_deref(), Some("Rust"));
        assert_eq!(s.progress, 10.0);
    }

    #[test]
    fn trial_until_a_full_enrollment() {
        let mut trial = ev("1", Trial, 1, Some(0.0));
        trial.payload.free_trial = None;
        let s = fold("s", [trial.clone()]).unwrap();
        assert_eq!(s.status(Utc::now()), Status::Trial);
        let mut progress_in_trial = ev("2", Progress, 2, Some(10.0));
        progress_in_trial.payload.free_trial = None;
        let s = fold("s", [trial.clone(), progress_in_trial]).unwrap();
        assert_eq!(s.status(Utc::now()), Status::Trial);
        let s = fold("s", [trial, ev("3", Created, 3, Some(10.0))]).unwrap();
        assert_eq!(s.status(Utc::now()), Status::Active);
    }

    #[test]
    fn expired_is_derived_when_read() {
        let mut e = ev("1", Created, 1, Some(10.0));
        e.payload.expiry_date = at(30);
        let s = fold("s", [e]).unwrap();
        assert_eq!(s.status(at(29).unwrap()), Status::Active);
        assert_eq!(s.status(at(31).unwrap()), Status::Expired);
    }

    #[test]
    fn order_of_arrival_never_matters() {
        let events = vec![
            ev("1", Created, 1, Some(0.0)),
            ev("2", Progress, 2, Some(30.0)),
            ev("3", Progress, 3, Some(60.0)),
            ev("4", Completed, 4, Some(100.0)),
            ev("5", Progress, 5, Some(90.0)),
        ];
        let expected = fold("s", events.clone()).unwrap();
        // Every rotation and the reverse, applied incrementally with re-folds.
        let mut orders: Vec<Vec<EnrollmentEvent>> = (0..events.len())
            .map(|k| {
                let mut v = events.clone();
                v.rotate_left(k);
                v
            })
            .collect();
        orders.push(events.iter().rev().cloned().collect());
        for order in orders {
            let mut seen: Vec<EnrollmentEvent> = Vec::new();
            let mut state: Option<Enrollment> = None;
            for e in order {
                seen.push(e.clone());
                state = match apply(state.as_ref(), "s", &e) {
                    Apply::Newer(s) => Some(s),
                    Apply::Older => fold("s", seen.clone()),
                };
            }
            assert_eq!(state.unwrap(), expected);
        }
    }

    fn backfill(minute: u32, pct: f64, completed: bool) -> EnrollmentEvent {
        let mut e = ev(&format!("backfill-9-{minute}"), Backfill, minute, Some(pct));
        // As the REST API lists it: no envelope time of its own.
        e.envelope_created_at = None;
        e.payload.completed = Some(completed);
        e.payload.completed_at = if completed { at(minute) } else { None };
        e
    }

    #[test]
    fn a_backfill_saying_completed_completes() {
        let s = fold("s", [backfill(5, 90.0, true)]).unwrap();
        assert!(s.completed);
        assert_eq!(s.completed_at, at(5));
        assert_eq!(s.progress, 90.0, "the progress it reports is kept");
        assert_eq!(s.status(Utc::now()), Status::Completed);
        let s = fold("s", [backfill(5, 40.0, false)]).unwrap();
        assert!(!s.completed);
        assert_eq!(s.completed_at, None);
        assert_eq!(s.status(Utc::now()), Status::Active);
    }

    #[test]
    fn a_newer_webhook_wins_over_a_backfill_and_an_older_one_does_not() {
        let old_backfill = backfill(5, 40.0, false);
        let newer_webhook = ev("7", Progress, 8, Some(60.0));
        let older_webhook = ev("3", Progress, 2, Some(10.0));
        let s = fold("s", [old_backfill.clone(), newer_webhook.clone()]).unwrap();
        assert_eq!(s.progress, 60.0);
        let s = fold("s", [older_webhook.clone(), old_backfill.clone()]).unwrap();
        assert_eq!(s.progress, 40.0);
        // Applied as they arrive: a backfill older than the stored state is a re-fold.
        let state = match apply(None, "s", &newer_webhook) {
            Apply::Newer(s) => s,
            Apply::Older => unreachable!(),
        };
        assert_eq!(apply(Some(&state), "s", &old_backfill), Apply::Older);
        // Same updated_at: the webhook (which has an envelope time) wins the tie.
        let same_time_webhook = ev("8", Progress, 5, Some(45.0));
        let s = fold("s", [same_time_webhook, old_backfill]).unwrap();
        assert_eq!(s.progress, 45.0);
    }

    #[test]
    fn a_backfilled_completion_is_sticky() {
        let s = fold(
            "s",
            [backfill(5, 100.0, true), ev("7", Progress, 8, Some(80.0))],
        )
        .unwrap();
        assert!(s.completed);
        assert_eq!(s.completed_at, at(5));
    }

    #[test]
    fn ids_equal_as_numbers_are_still_distinct_events() {
        // "1" and "01" with the same timestamps: distinct events (the log keys
        // on the id text), so the fold must neither merge nor order them by arrival.
        assert_eq!(compare_event_ids("1", "01"), Ordering::Greater);
        assert_eq!(compare_event_ids("0", "00"), Ordering::Less);
        let one = ev("1", Progress, 1, Some(20.0));
        let zero_one = ev("01", Progress, 1, Some(50.0));
        let expected = fold("s", [one.clone(), zero_one.clone()]).unwrap();
        assert_eq!(expected.event_count, 2);
        assert_eq!(expected.progress, 20.0, "\"1\" sorts after \"01\"");
        let reversed = fold("s", [zero_one.clone(), one.clone()]).unwrap();
        assert_eq!(reversed, expected);
        let redelivered = fold("s", [one.clone(), zero_one, one]).unwrap();
        assert_eq!(redelivered, expected);
    }

    #[test]
    fn versions_compare_ids_numerically() {
        assert_eq!(compare_event_ids("9", "10"), Ordering::Less);
        assert_eq!(compare_event_ids("010", "9"), Ordering::Greater);
        assert_eq!(
            compare_event_ids("20190131192004041953291", "20190131192005552012814"),
            Ordering::Less
        );
        assert_eq!(compare_event_ids("abc", "9"), Ordering::Greater);
        let a = Version {
            updated_at: None,
            created_at: at(5),
            event_id: "1".into(),
        };
        let b = Version {
            updated_at: at(1),
            created_at: None,
            event_id: "0".into(),
        };
        assert!(a < b, "a known updated_at is newer than none");
    }
}
