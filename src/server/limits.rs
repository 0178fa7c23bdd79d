//! Optional rate limits on webhook deliveries: overall and per source.
//! Off unless configured: Thinkific gives up after its retries, so a limit that
//! is too low loses events (they are answered 429 and retried later).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

#[derive(Default)]
pub struct RateLimits {
    global: Option<DefaultDirectRateLimiter>,
    per_source: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Requests per second (bursts of the same size are allowed).
    pub fn new(per_source: Option<u32>, global: Option<u32>) -> RateLimits {
        let quota = |n: u32| Quota::per_second(NonZeroU32::new(n.max(1)).expect("at least 1"));
        RateLimits {
            global: global.map(|n| RateLimiter::direct(quota(n))),
            per_source: per_source.map(|n| RateLimiter::keyed(quota(n))),
            clock: DefaultClock::default(),
        }
    }

    /// Ok, or how long to wait before retrying.
    pub fn check(&self, source: &str) -> Result<(), Duration> {
        if let Some(limiter) = &self.per_source
            && let Err(not_until) = limiter.check_key(&source.to_owned())
        {
            return Err(not_until.wait_time_from(self.clock.now()));
        }
        if let Some(limiter) = &self.global
            && let Err(not_until) = limiter.check()
        {
            return Err(not_until.wait_time_from(self.clock.now()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default() {
        let l = RateLimits::default();
        assert!((0..10_000).all(|_| l.check("a").is_ok()));
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
}
