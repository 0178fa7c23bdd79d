//! Storage for forwarding: subscriptions, the outbox, delivery attempts.
//!
//! Outbox rows are written by `append_batch` in the same transaction as their
//! event, so a crash can never lose a forward nor leave an event without one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Page, PageRequest, Result, StoredEvent};
use crate::forward::policy::Next;
use crate::forward::subscription::Subscription;

/// A delivery the worker has leased and must attempt now.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub outbox_id: i64,
    /// Attempts made before this one.
    pub attempts: u32,
    pub subscription: Subscription,
    pub event: StoredEvent,
}

/// The outcome of one attempt, to record.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub outbox_id: i64,
    pub subscription_id: String,
    pub event_seq: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    /// The first bytes of the response body.
    pub response: Option<String>,
    pub next: Next,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    pub id: i64,
    pub outbox_id: i64,
    pub subscription_id: String,
    pub event_seq: i64,
    pub attempt: i64,
    pub attempted_at: DateTime<Utc>,
    pub status: Option<i64>,
    pub latency_ms: f64,
    pub error: Option<String>,
    pub response: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryState> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

/// One event on its way to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OutboxEntry {
    pub id: i64,
    pub subscription_id: String,
    pub event_seq: i64,
    pub source: String,
    pub event_id: String,
    pub topic: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub subscription_id: Option<String>,
    pub event_seq: Option<i64>,
    pub state: Option<DeliveryState>,
}

/// What to deliver again.
#[derive(Debug, Clone)]
pub enum ReplayScope {
    /// One event, to every matching enabled subscription or to one subscription.
    Event {
        source: String,
        event_id: String,
        subscription_id: Option<String>,
    },
    /// Every dead delivery of a subscription.
    Dead { subscription_id: String },
    /// Every matching event received in [since, until) to a subscription.
    Range {
        subscription_id: String,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

#[async_trait]
pub trait ForwardStore: Send + Sync {
    async fn insert_subscription(&self, s: &Subscription) -> Result<()>;
    /// False when no such subscription exists.
    async fn update_subscription(&self, s: &Subscription) -> Result<bool>;
    /// Removes the subscription and its pending deliveries (history stays).
    async fn delete_subscription(&self, id: &str) -> Result<bool>;
    async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>>;
    async fn list_subscriptions(&self) -> Result<Vec<Subscription>>;

    /// Leases up to `limit` due deliveries until `lease_until`. In ordered
    /// subscriptions only the oldest pending delivery of an enrollment is due.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>>;

    /// Records attempts and moves their deliveries on, in one transaction.
    /// A delivery replayed while an attempt was in flight is not moved on by
    /// that attempt (replay clears the lease; only leased rows are moved on).
    /// Subscriptions failing since before `disable_failing_before` are disabled;
    /// returns the ids of subscriptions disabled by this call (also 410s).
    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt],
        disable_failing_before: DateTime<Utc>,
    ) -> Result<Vec<String>>;

    /// Attempts in the order they were made, or the newest first (then the
    /// cursor pages backwards).
    async fn list_attempts(
        &self,
        subscription_id: Option<&str>,
        event_seq: Option<i64>,
        page: &PageRequest,
        newest_first: bool,
    ) -> Result<Page<DeliveryAttempt>>;

    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<OutboxEntry>>;

    /// Puts deliveries back in the outbox, due now. Returns how many.
    async fn replay(&self, scope: &ReplayScope, now: DateTime<Utc>) -> Result<u64>;

    /// Deliveries waiting (due or scheduled), for metrics and benchmarks.
    async fn outbox_pending(&self) -> Result<i64>;
}

/// What an attempt leaves in its outbox row: state, next attempt time, error
/// kept, and when the delivery finished (None while it is still pending).
pub(super) struct OutboxChange {
    pub state: &'static str,
    pub next_attempt_at: DateTime<Utc>,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl FinishedAttempt {
    pub(super) fn outbox_change(&self) -> OutboxChange {
        let at = self.attempted_at;
        let (state, next_attempt_at, error) = match &self.next {
            Next::Delivered => ("delivered", at, None),
            Next::Retry { at: next } => ("pending", *next, self.error.clone()),
            Next::Dead { reason } => ("dead", at, Some(reason.clone())),
            Next::Gone => (
                "dead",
                at,
                Some("the destination answered 410 Gone: subscription disabled".to_owned()),
            ),
        };
        OutboxChange {
            state,
            next_attempt_at,
            error,
            finished_at: (state != "pending").then_some(at),
        }
    }
}

/// A subscription's health as stored: whether it is enabled, and since when
/// every delivery to it has failed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Health {
    pub enabled: bool,
    pub failing_since: Option<DateTime<Utc>>,
}

/// A subscription whose health a batch of attempts changed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HealthChange {
    pub subscription_id: String,
    pub failing_since: Option<DateTime<Utc>>,
    /// Set when the batch disabled it: (reason, when).
    pub disabled: Option<(String, DateTime<Utc>)>,
}

/// Replays a batch of attempts, in order, against the subscriptions' stored
/// health, exactly as recording them one at a time would: a delivery clears
/// `failing_since`, a failure sets it if unset and disables the subscription
/// once it is older than `disable_failing_before`, a 410 disables it at once.
/// Returns only the subscriptions that changed, so a healthy batch writes none.
pub(super) fn health_changes(
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
