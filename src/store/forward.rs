//! Storage for forwarding: subscriptions, the outbox, delivery attempts.
//!
//! Outbox rows are written by `append_batch` in the same transaction as their
//! event, so a crash can never lose a forward nor leave an event without one.

use std::sync::Arc;

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
    /// Shared by the claim's deliveries of one subscription.
    pub subscription: Arc<Subscription>,
    /// Shared by the claim's deliveries of one event (one per subscription).
    pub event: Arc<StoredEvent>,
    /// The delivery's W3C `traceparent`, when it was traced and sampled.
    pub traceparent: Option<String>,
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
        /// Needed when the id names events of several topics.
        topic: Option<String>,
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

/// How many deliveries one claim may lease: in all, and per subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRoom {
    /// Deliveries in all.
    pub total: u32,
    /// Deliveries of a subscription with none in flight.
    pub per_subscription: u32,
    /// Subscriptions with deliveries in flight, and the room each has left
    /// (its in-flight cap minus those): zero for one at its cap.
    pub busy: Vec<(String, u32)>,
}

impl ClaimRoom {
    /// Up to `limit` deliveries, of any subscriptions.
    pub fn up_to(limit: u32) -> ClaimRoom {
        ClaimRoom {
            total: limit,
            per_subscription: limit,
            busy: Vec::new(),
        }
    }

    /// The deliveries of `subscription` a claim may lease.
    pub fn of(&self, subscription: &str) -> u32 {
        self.busy
            .iter()
            .find(|(id, _)| id == subscription)
            .map_or(self.per_subscription, |(_, room)| *room)
            .min(self.total)
    }
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

    /// Leases due deliveries until `lease_until`, as many as `room` allows:
    /// the most due first, but no subscription more than its own room, so
    /// that a destination that hangs or a backlog of one subscription never
    /// holds up the others. In ordered subscriptions only the oldest pending
    /// delivery of an enrollment is due.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        room: &ClaimRoom,
    ) -> Result<Vec<ClaimedDelivery>>;

    /// Records attempts and moves their deliveries on, in one transaction.
    /// A delivery replayed while an attempt was in flight is not moved on by
    /// that attempt (replay clears the lease; only leased rows are moved on).
    /// What each attempt changes (outbox row, subscription health) is what
    /// `rules` say (forwarding's, see `crate::forward::health`); returns the
    /// ids of subscriptions disabled by this call.
    async fn finish_attempts(
        &self,
        done: &[FinishedAttempt],
        rules: std::sync::Arc<dyn AttemptRules>,
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

    /// Raised after every commit of this store that wrote due outbox rows
    /// (see [`super::OutboxWake`]); the forwarder waits on it between claims.
    fn outbox_wake(&self) -> super::OutboxWake;

    /// Starts hearing outbox commits of other processes sharing the database
    /// (PostgreSQL: a `LISTEN` connection that raises [`Self::outbox_wake`]);
    /// `None` where no other process writes the outbox. Abort the task to stop.
    fn listen_for_outbox(&self) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// Whether the forwarder may use this store from a runtime of its own
    /// (on its own lower-priority thread). SQLite's connections are threads
    /// reached through channels, usable from any runtime; PostgreSQL's are
    /// sockets registered with the runtime that opened them, so the
    /// forwarder stays on the server's runtime there.
    fn usable_from_any_runtime(&self) -> bool {
        false
    }
}

/// What an attempt leaves in its outbox row: state, next attempt time, error
/// kept, and when the delivery finished (None while it is still pending).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxChange {
    pub state: DeliveryState,
    pub next_attempt_at: DateTime<Utc>,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A subscription's health as stored: whether it is enabled, and since when
/// every delivery to it has failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub enabled: bool,
    pub failing_since: Option<DateTime<Utc>>,
}

/// A subscription whose health a batch of attempts changed.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthChange {
    pub subscription_id: String,
    pub failing_since: Option<DateTime<Utc>>,
    /// Set when the batch disabled it: (reason, when).
    pub disabled: Option<(String, DateTime<Utc>)>,
}

/// Forwarding's decisions about recorded attempts. The store writes what they
/// return and knows none of the rules (those live in `crate::forward::health`).
pub trait AttemptRules: Send + Sync {
    /// The outbox row an attempt leaves.
    fn outbox_change(&self, attempt: &FinishedAttempt) -> OutboxChange;
    /// The subscriptions whose stored health a batch of attempts changes.
    fn health_changes(
        &self,
        done: &[FinishedAttempt],
        stored: &std::collections::HashMap<String, Health>,
    ) -> Vec<HealthChange>;
}
