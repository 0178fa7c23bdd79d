//! Forwarding's health rules: what an attempt does to its outbox row, and
//! when a subscription counts as failing or gets disabled. The store writes
//! what these rules return (see [`AttemptRules`]); it does not know them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::policy::Next;
use crate::store::{
    AttemptRules, DeliveryState, FinishedAttempt, Health, HealthChange, OutboxChange,
};

/// The rules, with the one setting they need: subscriptions failing since
/// before `disable_failing_before` are disabled.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub disable_failing_before: DateTime<Utc>,
}

impl AttemptRules for Rules {
    fn outbox_change(&self, attempt: &FinishedAttempt) -> OutboxChange {
        outbox_change(attempt)
    }

    fn health_changes(
        &self,
        done: &[FinishedAttempt],
        stored: &HashMap<String, Health>,
    ) -> Vec<HealthChange> {
        health_changes(done, stored, self.disable_failing_before)
    }
}

/// What an attempt leaves in its outbox row.
pub fn outbox_change(f: &FinishedAttempt) -> OutboxChange {
    let at = f.attempted_at;
    let (state, next_attempt_at, error) = match &f.next {
        Next::Delivered => (DeliveryState::Delivered, at, None),
        Next::Retry { at: next } => (DeliveryState::Pending, *next, f.error.clone()),
        Next::Dead { reason } => (DeliveryState::Dead, at, Some(reason.clone())),
        Next::Gone => (
            DeliveryState::Dead,
            at,
            Some("the destination answered 410 Gone: subscription disabled".to_owned()),
        ),
    };
    OutboxChange {
        state,
        next_attempt_at,
        error,
        finished_at: (state != DeliveryState::Pending).then_some(at),
    }
}

/// Replays a batch of attempts, in order, against the subscriptions' stored
/// health, exactly as recording them one at a time would: a delivery clears
/// `failing_since`, a failure sets it if unset and disables the subscription
/// once it is older than `disable_failing_before`, a 410 disables it at once.
/// Returns only the subscriptions that changed, so a healthy batch writes none.
pub fn health_changes(
    done: &[FinishedAttempt],
    stored: &std::collections::HashMap<String, Health>,
    disable_failing_before: DateTime<Utc>,
) -> Vec<HealthChange> {
    let mut order: Vec<&str> = Vec::new();
    type Disabled = Option<(String, DateTime<Utc>)>;
    let mut state: std::collections::HashMap<&str, (Health, Disabled)> =
        std::collections::HashMap::new();
    for f in done {
        // A subscription deleted meanwhile has nothing left to update.
        let Some(before) = stored.get(&f.subscription_id) else {
            continue;
        };
        let (health, disabled) = state.entry(&f.subscription_id).or_insert_with(|| {
            order.push(&f.subscription_id);
            (before.clone(), None)
        });
        let at = f.attempted_at;
        match &f.next {
            Next::Delivered => health.failing_since = None,
            Next::Gone => {
                if health.enabled {
                    health.enabled = false;
                    let reason = format!("the destination answered 410 Gone at {}", iso(at));
                    *disabled = Some((reason, at));
                }
            }
            Next::Retry { .. } | Next::Dead { .. } => {
                let since = *health.failing_since.get_or_insert(at);
                if health.enabled && since < disable_failing_before {
                    health.enabled = false;
                    let reason = format!("every delivery has failed since {}", iso(since));
                    *disabled = Some((reason, at));
                }
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| {
            let (health, disabled) = state.remove(id)?;
            (health != stored[id]).then(|| HealthChange {
                subscription_id: id.to_owned(),
                failing_since: health.failing_since,
                disabled,
            })
        })
        .collect()
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;

    use super::*;

    fn t(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap()
    }

    fn attempt(sub: &str, minute: u32, next: Next) -> FinishedAttempt {
        FinishedAttempt {
            outbox_id: 1,
            subscription_id: sub.to_owned(),
            event_seq: 1,
            attempt: 1,
            attempted_at: t(minute),
            status: None,
            latency_ms: 1.0,
            error: None,
            response: None,
            next,
        }
    }

    fn healthy() -> Health {
        Health {
            enabled: true,
            failing_since: None,
        }
    }

    fn retry() -> Next {
        Next::Retry { at: t(59) }
    }

    #[test]
    fn a_healthy_batch_changes_nothing() {
        let stored = HashMap::from([("a".to_owned(), healthy())]);
        let done = [
            attempt("a", 1, Next::Delivered),
            attempt("a", 2, Next::Delivered),
        ];
        assert!(health_changes(&done, &stored, t(0)).is_empty());
    }

    #[test]
    fn the_first_failure_after_the_last_delivery_counts() {
        let stored = HashMap::from([("a".to_owned(), healthy())]);
        let done = [
            attempt("a", 1, retry()),
            attempt("a", 2, Next::Delivered),
            attempt("a", 3, retry()),
            attempt("a", 4, retry()),
        ];
        let changes = health_changes(&done, &stored, t(0));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].failing_since, Some(t(3)));
        assert_eq!(changes[0].disabled, None);
    }

    #[test]
    fn disables_once_failing_since_before_the_limit_and_stays_disabled() {
        let stored = HashMap::from([(
            "a".to_owned(),
            Health {
                enabled: true,
                failing_since: Some(t(1)),
            },
        )]);
        // Failing since minute 1, limit minute 2: the first failure disables;
        // a later delivery clears failing_since but does not re-enable.
        let done = [attempt("a", 5, retry()), attempt("a", 6, Next::Delivered)];
        let changes = health_changes(&done, &stored, t(2));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].failing_since, None);
        let (reason, at) = changes[0].disabled.clone().unwrap();
        assert_eq!(at, t(5));
        assert!(
            reason.contains("failed since 2026-01-01T00:01:00Z"),
            "{reason}"
        );
    }

    #[test]
    fn gone_disables_an_enabled_subscription_only() {
        let stored = HashMap::from([
            ("a".to_owned(), healthy()),
            (
                "b".to_owned(),
                Health {
                    enabled: false,
                    failing_since: None,
                },
            ),
        ]);
        let done = [
            attempt("b", 1, Next::Gone),
            attempt("a", 2, Next::Gone),
            attempt("deleted", 3, Next::Gone),
        ];
        let changes = health_changes(&done, &stored, t(0));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].subscription_id, "a");
        assert!(changes[0].disabled.as_ref().unwrap().0.contains("410 Gone"));
    }
}
