//! One log line per delivery (received, or forwarded), within a budget.
//!
//! While deliveries are few (setting up a school, a test send) every one gets
//! its own `info` line. Under load a line per delivery is expensive
//! (formatting and writing it took ~7 % of the server's CPU and 13–21 % of its
//! throughput at full load on two cores, BENCHMARKS.md), so past [`LINES_PER_SECOND`]
//! successful and as many failed ones in a second the rest are logged at
//! `debug` and counted, and every [`SUMMARY_EVERY`] one `info` line says how
//! many were not shown, by outcome (nothing is counted while `debug` is on
//! for the module that logs them: then every one has its line). `/metrics`
//! and the recorded forward attempts count every one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Lines per second for successful deliveries, and again for failed ones, so
/// that a failure is shown even amid a stream of successes.
pub const LINES_PER_SECOND: u32 = 20;
/// How often the count of deliveries that got no line of their own is logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

pub struct DeliveryLog {
    /// What the summary calls them ("deliveries", "forward attempts").
    what: &'static str,
    /// Whether `debug` is on where they are logged: every one is then shown.
    debug_on: fn() -> bool,
    started: Instant,
    succeeded: Budget,
    failed: Budget,
    /// Outcome → deliveries logged at `debug` only, since the last summary.
    unshown: Mutex<BTreeMap<&'static str, u64>>,
}

/// At most [`LINES_PER_SECOND`] in each second since `started`.
#[derive(Default)]
struct Budget {
    second: AtomicU64,
    used: AtomicU32,
}

impl Budget {
    fn take(&self, second: u64) -> bool {
        let current = self.second.load(Ordering::Relaxed);
        if current != second
            && self
                .second
                .compare_exchange(current, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND
    }
}

impl DeliveryLog {
    /// A log whose summaries a background task writes for as long as the
    /// returned handle (or a clone) lives.
    pub fn start(what: &'static str, debug_on: fn() -> bool) -> Arc<DeliveryLog> {
        let log = Arc::new(DeliveryLog {
            what,
            debug_on,
            started: Instant::now(),
            succeeded: Budget::default(),
            failed: Budget::default(),
            unshown: Mutex::new(BTreeMap::new()),
        });
        let weak = Arc::downgrade(&log);
        tokio::spawn(summaries(weak));
        log
    }

    /// Whether this delivery gets an `info` line of its own; if not, it is
    /// counted for the next summary.
    pub fn shown(&self, outcome: &'static str, succeeded: bool, at: Instant) -> bool {
        let second = at.saturating_duration_since(self.started).as_secs();
        let budget = if succeeded {
            &self.succeeded
        } else {
            &self.failed
        };
        if budget.take(second) {
            return true;
        }
        if (self.debug_on)() {
            return false; // logged at debug: shown after all
        }
        *self
            .unshown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
        false
    }

    /// What was not shown since the last call, as `outcome count` pairs.
    fn take_unshown(&self) -> Option<(u64, String)> {
        let unshown = std::mem::take(&mut *self.unshown.lock().unwrap_or_else(|e| e.into_inner()));
        let total: u64 = unshown.values().sum();
        (total > 0).then(|| {
            let by_outcome = unshown
                .iter()
                .map(|(outcome, n)| format!("{outcome} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            (total, by_outcome)
        })
    }
}

async fn summaries(log: Weak<DeliveryLog>) {
    let mut every = tokio::time::interval(SUMMARY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(log) = log.upgrade() else { return };
        if let Some((total, by_outcome)) = log.take_unshown() {
            tracing::info!(
                unshown = total,
                by_outcome,
                "{} in the last {} s beyond {} lines/s, not logged one by one (RUST_LOG=enrollhook=debug shows each)",
                log.what,
                SUMMARY_EVERY.as_secs(),
                LINES_PER_SECOND
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_per_second_and_kind_then_counted() {
        let log = DeliveryLog::start("deliveries", || false);
        let t0 = log.started;
        let shown = (0..LINES_PER_SECOND + 5)
            .filter(|_| log.shown("stored", true, t0))
            .count();
        assert_eq!(shown, LINES_PER_SECOND as usize);
        // Failures have a budget of their own.
        assert!(log.shown("signature_mismatch", false, t0));
        // A new second, a new budget.
        assert!(log.shown("duplicate", true, t0 + Duration::from_millis(1500)));
        assert_eq!(log.take_unshown(), Some((5, "stored 5".to_owned())));
        assert_eq!(log.take_unshown(), None);
    }
}
