//! What happens after a delivery attempt: pure rules, no I/O.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Delays before each retry (the first attempt is immediate). Svix's schedule:
/// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h — ten attempts over ~3 days.
pub const DEFAULT_SCHEDULE: &[u64] = &[5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];

/// Longest `Retry-After` we honour; longer ones are capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule(
            DEFAULT_SCHEDULE
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
        )
    }
}

impl std::str::FromStr for RetrySchedule {
    type Err = String;
    /// `1s,2s,5s` or `5s,5m,30m,2h,1d`.
    fn from_str(s: &str) -> Result<Self, String> {
        let delays = s
            .split(',')
            .map(|d| parse_duration(d.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetrySchedule(delays))
    }
}

/// `90`, `90s`, `5m`, `2h`, `3d`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 250ms, 5s, 5m, 2h or 3d"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => return Err(format!("unknown unit in `{s}`: use ms, s, m, h or d")),
    })
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    /// The destination answered.
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, timeout, TLS failure, refused address…
    Failed { error: String },
    /// A broker confirmed it holds the message (JetStream ack, AMQP publisher
    /// confirm of a routed message, Redis entry id).
    Accepted,
    /// Nothing was sent and retrying cannot help: the subscription's template
    /// failed to render for this event (or rendered a refused URL).
    Unsendable { error: String },
}

/// What to do with the delivery next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Delivered,
    Retry {
        at: DateTime<Utc>,
    },
    /// Out of attempts: the dead-letter state (replayable).
    Dead {
        reason: String,
    },
    /// 410 Gone: the destination asks us to stop; the subscription is disabled.
    Gone,
}

/// `attempts` counts this attempt too. `jitter` is in [-1, 1], spreading each
/// delay by ±20 % so that retries of many deliveries do not arrive in lockstep.
pub fn next_step(
    result: &AttemptResult,
    attempts: u32,
    schedule: &RetrySchedule,
    now: DateTime<Utc>,
    jitter: f64,
) -> Next {
    let retry_after = match result {
        AttemptResult::Response { status, .. } if (200..300).contains(status) => {
            return Next::Delivered;
        }
        AttemptResult::Accepted => return Next::Delivered,
        AttemptResult::Unsendable { error } => {
            return Next::Dead {
                reason: format!("not sent: {error}"),
            };
        }
        AttemptResult::Response { status: 410, .. } => return Next::Gone,
        // Retry-After is honoured on 429 and 503 only.
        AttemptResult::Response {
            status: 429 | 503,
            retry_after,
        } => *retry_after,
        _ => None,
    };
    let Some(delay) = schedule.0.get(attempts.saturating_sub(1) as usize) else {
        return Next::Dead {
            reason: format!("gave up after {attempts} attempts: {}", describe(result)),
        };
    };
    let factor = 1.0 + 0.2 * jitter.clamp(-1.0, 1.0);
    let scheduled = delay.mul_f64(factor);
    let wait = match retry_after {
        Some(ra) => ra.min(MAX_RETRY_AFTER).max(scheduled),
        None => scheduled,
    };
    Next::Retry {
        at: now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::days(1)),
    }
}

pub fn describe(result: &AttemptResult) -> String {
    match result {
        AttemptResult::Response { status, .. } if (300..400).contains(status) => {
            format!(
                "HTTP {status} (redirects are not followed: point the subscription at the final URL)"
            )
        }
        AttemptResult::Response { status, .. } => format!("HTTP {status}"),
        AttemptResult::Failed { error } | AttemptResult::Unsendable { error } => error.clone(),
        AttemptResult::Accepted => "accepted by the broker".to_owned(),
    }
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok().or(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16) -> AttemptResult {
        AttemptResult::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn success_gone_and_failures() {
        let now = Utc::now();
        let s = RetrySchedule::default();
        assert_eq!(next_step(&resp(200), 1, &s, now, 0.0), Next::Delivered);
        assert_eq!(next_step(&resp(204), 3, &s, now, 0.0), Next::Delivered);
        assert_eq!(next_step(&resp(410), 1, &s, now, 0.0), Next::Gone);
        assert_eq!(
            next_step(&AttemptResult::Accepted, 1, &s, now, 0.0),
            Next::Delivered
        );
        for status in [301, 302, 400, 404, 500] {
            assert_eq!(
                next_step(&resp(status), 1, &s, now, 0.0),
                Next::Retry {
                    at: now + chrono::Duration::seconds(5)
                },
                "{status}"
            );
        }
        let failed = AttemptResult::Failed {
            error: "timed out".into(),
        };
        assert_eq!(
            next_step(&failed, 2, &s, now, 0.0),
            Next::Retry {
                at: now + chrono::Duration::seconds(300)
            }
        );
        assert!(
            matches!(next_step(&failed, 10, &s, now, 0.0), Next::Dead { reason } if reason.contains("10 attempts") && reason.contains("timed out"))
        );
    }

    #[test]
    fn an_unsendable_delivery_is_dead_at_the_first_attempt() {
        let now = Utc::now();
        let unsendable = AttemptResult::Unsendable {
            error: "template body: line 1: boom".into(),
        };
        assert_eq!(
            next_step(&unsendable, 1, &RetrySchedule::default(), now, 0.0),
            Next::Dead {
                reason: "not sent: template body: line 1: boom".into()
            }
        );
    }

    #[test]
    fn jitter_is_within_twenty_percent() {
        let now = Utc::now();
        let s = RetrySchedule::default();
        let at = |j| match next_step(&resp(500), 3, &s, now, j) {
            Next::Retry { at } => (at - now).num_seconds(),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(-1.0), 1440);
        assert_eq!(at(1.0), 2160);
        assert_eq!(at(5.0), 2160, "clamped");
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        let now = Utc::now();
        let s: RetrySchedule = "1s,2s".parse().unwrap();
        let with = |status, secs| AttemptResult::Response {
            status,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            next_step(&with(429, 60), 1, &s, now, 0.0),
            Next::Retry {
                at: now + chrono::Duration::seconds(60)
            }
        );
        assert_eq!(
            next_step(&with(503, 60), 1, &s, now, 0.0),
            Next::Retry {
                at: now + chrono::Duration::seconds(60)
            }
        );
        assert_eq!(
            next_step(&with(500, 60), 1, &s, now, 0.0),
            Next::Retry {
                at: now + chrono::Duration::seconds(1)
            }
        );
        // Never sooner than the schedule, never later than a day.
        assert_eq!(
            next_step(&with(429, 0), 2, &s, now, 0.0),
            Next::Retry {
                at: now + chrono::Duration::seconds(2)
            }
        );
        assert_eq!(
            next_step(&with(429, 999_999), 1, &s, now, 0.0),
            Next::Retry {
                at: now + chrono::Duration::days(1)
            }
        );
        assert!(matches!(
            next_step(&with(429, 1), 3, &s, now, 0.0),
            Next::Dead { .. }
        ));
    }

    #[test]
    fn parsing() {
        let s: RetrySchedule = "1s,2s,5s".parse().unwrap();
        assert_eq!(
            s.0,
            vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(5)
            ]
        );
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("2 weeks").is_err());
        let now = Utc::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let date = (now + chrono::Duration::seconds(30)).to_rfc2822();
        let ra = parse_retry_after(&date, now).unwrap();
        assert!((29..=30).contains(&ra.as_secs()), "{ra:?}");
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
