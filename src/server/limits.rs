//! Optional rate limits on webhook deliveries: overall and per source.
//! Off unless configured: Thinkific gives up after its retries, so a limit that
//! is too low loses events (they are answered 429 and retried later).
//!
//! Verified and unverified deliveries draw on separate budgets, so that forged
//! deliveries (anyone can send them) cannot use up a school's budget and make
//! Thinkific's real ones get 429. A delivery is charged after its signature
//! was checked (the check needs the body):
//! - verified (signature valid, or verification off) → the source's budget
//!   (`--rate-limit`) and the overall one (`--global-rate-limit`);
//! - unverified (signature missing, malformed or wrong) → a stricter budget of
//!   its own, a tenth of the verified one (at least 1/s): per source when
//!   `--rate-limit` is set, overall when `--global-rate-limit` is. Beyond it a
//!   forged delivery gets 429 and is not quarantined, which also bounds the
//!   quarantine's writes.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The unverified budget is this fraction of the verified one.
pub const UNVERIFIED_DIVISOR: u32 = 10;

#[derive(Default)]
pub struct RateLimits {
    global: Option<DefaultDirectRateLimiter>,
    per_source: Option<DefaultKeyedRateLimiter<String>>,
    unverified_global: Option<DefaultDirectRateLimiter>,
    unverified_per_source: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Requests per second (bursts of the same size are allowed).
    pub fn new(per_source: Option<u32>, global: Option<u32>) -> RateLimits {
        let quota = |n: u32| Quota::per_second(NonZeroU32::new(n.max(1)).expect("at least 1"));
        let unverified = |n: u32| quota(n / UNVERIFIED_DIVISOR);
        RateLimits {
            global: global.map(|n| RateLimiter::direct(quota(n))),
            per_source: per_source.map(|n| RateLimiter::keyed(quota(n))),
            unverified_global: global.map(|n| RateLimiter::direct(unverified(n))),
            unverified_per_source: per_source.map(|n| RateLimiter::keyed(unverified(n))),
            clock: DefaultClock::default(),
        }
    }

    /// Charges a verified delivery: Ok, or how long to wait before retrying.
    pub fn check(&self, source: &str) -> Result<(), Duration> {
        self.charge(&self.per_source, &self.global, source)
    }

    /// Charges a delivery whose signature did not verify, to its own budget.
    pub fn check_unverified(&self, source: &str) -> Result<(), Duration> {
        self.charge(&self.unverified_per_source, &self.unverified_global, source)
    }

    fn charge(
        &self,
        per_source: &Option<DefaultKeyedRateLimiter<String>>,
        global: &Option<DefaultDirectRateLimiter>,
        source: &str,
    ) -> Result<(), Duration> {
        if let Some(limiter) = per_source
            && let Err(not_until) = limiter.check_key(&source.to_owned())
        {
            return Err(not_until.wait_time_from(self.clock.now()));
        }
        if let Some(limiter) = global
            && let Err(not_until) = limiter.check()
        {
            return Err(not_until.wait_time_from(self.clock.now()));
        }
        Ok(())
    }
}

/// How many rejected deliveries a second are written to the quarantine, per
/// source and (five times that) in total. Always on: anyone can send rejected
/// deliveries, and each write costs disk and the writer's time. Beyond it a
/// rejected delivery is still answered with its reason but only counted
/// (`enrollhook_quarantine_dropped_total`): a flood costs a counter, not disk.
pub struct QuarantineBudget {
    per_source: DefaultKeyedRateLimiter<String>,
    total: DefaultDirectRateLimiter,
}

/// `--max-quarantine-rate` by default: rejected deliveries kept per second per source.
pub const DEFAULT_QUARANTINE_RATE: u32 = 20;

impl QuarantineBudget {
    pub fn new(per_source_per_second: u32) -> QuarantineBudget {
        let n = per_source_per_second.max(1);
        let quota = |n: u32| Quota::per_second(NonZeroU32::new(n).expect("at least 1"));
        QuarantineBudget {
            per_source: RateLimiter::keyed(quota(n)),
            total: RateLimiter::direct(quota(n.saturating_mul(5))),
        }
    }

    /// Whether one more rejected delivery of `source` may be written now.
    /// Only configured sources reach the quarantine, so the keys stay few.
    pub fn allow(&self, source: &str) -> bool {
        self.per_source.check_key(&source.to_owned()).is_ok() && self.total.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quarantine_budget_is_per_source_and_in_total() {
        let q = QuarantineBudget::new(2);
        assert!(q.allow("a") && q.allow("a"));
        assert!(!q.allow("a"), "2 a second for one source");
        assert!(q.allow("b") && q.allow("b"), "another source has its own");
        let q = QuarantineBudget::new(1);
        let allowed = (0..100).filter(|i| q.allow(&format!("s{i}"))).count();
        assert_eq!(allowed, 5, "five times the per-source rate in total");
    }

    #[test]
    fn off_by_default() {
        let l = RateLimits::default();
        assert!((0..10_000).all(|_| l.check("a").is_ok()));
        assert!((0..10_000).all(|_| l.check_unverified("a").is_ok()));
    }

    #[test]
    fn per_source_and_global() {
        let l = RateLimits::new(Some(3), None);
        assert!((0..3).all(|_| l.check("a").is_ok()));
        let wait = l.check("a").unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(l.check("b").is_ok(), "another source has its own budget");

        let l = RateLimits::new(None, Some(2));
        assert!(l.check("a").is_ok() && l.check("b").is_ok());
        assert!(l.check("c").is_err());
    }

    #[test]
    fn unverified_deliveries_have_a_stricter_budget_of_their_own() {
        let l = RateLimits::new(Some(20), None);
        assert!((0..2).all(|_| l.check_unverified("a").is_ok()));
        assert!(l.check_unverified("a").is_err(), "a tenth of 20/s");
        assert!((0..20).all(|_| l.check("a").is_ok()), "verified untouched");
        let l = RateLimits::new(None, Some(5));
        assert!(l.check_unverified("a").is_ok(), "at least 1/s");
        assert!(l.check_unverified("b").is_err());
        assert!((0..5).all(|_| l.check("a").is_ok()));
    }
}
