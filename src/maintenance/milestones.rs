//! The scheduled part of milestones: `milestone.stalled`, for enrollments
//! without activity for a source's `stalled_days` (see
//! `projection::milestones`). The other kinds are derived with the projection.
//!
//! A scan reads the stalled students (the `learners_open` index by last
//! activity) newest stall first and stops where the previous scan's cutoff
//! was, so a scan costs what became stalled since, not every stalled student
//! again; the first scan of a process reads them all (their milestones are
//! duplicates then, by id). The id carries the time of the last activity:
//! the same stall is one event however often it is scanned, and activity
//! followed by a new stall is a new one. With several instances on one
//! PostgreSQL database one scans at a time ([`Store::milestone_scan_turn`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::projection::milestones::{Kind, LastLesson, Milestone};
use crate::store::{
    NewEvent, PageRequest, Stalled, StalledFilter, StalledOrder, Store, StoreError,
};

/// How often `serve` looks for stalled enrollments by default.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3600);

/// What time it is: the system's, or one a test sets.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }

    pub fn new(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Where each source's last complete scan stopped: the cutoff it used.
#[derive(Debug, Default)]
pub struct ScanState {
    covered_before: HashMap<String, DateTime<Utc>>,
}

/// What one scan did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanReport {
    /// Stalled enrollments read.
    pub read: u64,
    /// `milestone.stalled` events new in the log.
    pub stored: u64,
    /// Another instance was scanning: nothing done.
    pub not_our_turn: bool,
}

const PAGE: u32 = 500;

/// One scan of every source with stalled milestones, at `now`.
pub async fn scan_stalled(
    store: &dyn Store,
    now: DateTime<Utc>,
    state: &mut ScanState,
) -> Result<ScanReport, StoreError> {
    let rules = store.milestones();
    let mut report = ScanReport::default();
    let sources: Vec<(String, u32)> = rules
        .iter()
        .filter_map(|(s, m)| Some((s.to_owned(), m.stalled_days?)))
        .collect();
    if sources.is_empty() {
        return Ok(report);
    }
    let Some(_turn) = store.milestone_scan_turn().await? else {
        report.not_our_turn = true;
        return Ok(report);
    };
    for (source, days) in sources {
        let stalled = Stalled::days(days, now);
        let covered = state.covered_before.get(&source).copied();
        let filter = StalledFilter {
            source: Some(source.clone()),
            course_id: None,
            stalled,
            order: StalledOrder::LeastInactive,
        };
        let mut page = PageRequest {
            limit: PAGE,
            cursor: None,
        };
        'pages: loop {
            let found = store.stalled_learners(&filter, &page).await?;
            let mut events = Vec::with_capacity(found.items.len());
            for (enrollment, learner) in &found.items {
                let Some(since) = learner.last_activity_at else {
                    continue;
                };
                if covered.is_some_and(|c| since < c) {
                    // The previous scan saw this one stalled already.
                    if !events.is_empty() {
                        report.stored += store_events(store, &events).await?;
                    }
                    break 'pages;
                }
                report.read += 1;
                let m = Milestone {
                    source: source.clone(),
                    enrollment_id: Some(enrollment.enrollment_id),
                    kind: Kind::Stalled { since, days },
                };
                let last_lesson = learner.last_lesson_id.map(|lesson_id| LastLesson {
                    lesson_id,
                    name: learner.last_lesson_name.clone(),
                    at: learner.last_lesson_at,
                });
                let body = m.body(Some(enrollment), last_lesson.as_ref(), now);
                events.push(NewEvent::from_log(
                    &source,
                    m.topic(),
                    &m.event_id(),
                    &body,
                    Utc::now(),
                )?);
            }
            if !events.is_empty() {
                report.stored += store_events(store, &events).await?;
            }
            match found.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => break,
            }
        }
        state.covered_before.insert(source, stalled.before);
    }
    Ok(report)
}

async fn store_events(store: &dyn Store, events: &[NewEvent]) -> Result<u64, StoreError> {
    let outcomes = store.append_batch(events).await?;
    Ok(crate::store::AppendOutcome::tally(&outcomes).0)
}

/// Scans now and then every `every`, until the task is aborted; a failed
/// scan is logged and tried again at the next tick.
pub fn spawn(store: Arc<dyn Store>, clock: Clock, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut state = ScanState::default();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match scan_stalled(store.as_ref(), clock.now(), &mut state).await {
                Ok(r) if r.stored > 0 => {
                    tracing::info!(stored = r.stored, "stalled milestones emitted")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "stalled milestone scan failed; retrying at the next tick")
                }
            }
        }
    })
}
