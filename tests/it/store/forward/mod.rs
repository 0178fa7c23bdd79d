//! `ForwardStore`: subscriptions, the outbox (claim, finish, replay, dead
//! letters), attempts and subscription health.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use enrollhook::forward::policy::Next;
use enrollhook::forward::subscription::{Subscription, SubscriptionInput};
use enrollhook::store::{
    ClaimedDelivery, DeliveryFilter, DeliveryState, FinishedAttempt, PageRequest, ReplayScope,
    Store,
};

use super::{Fixture, enrollment};
use crate::common::backend::on_both_backends;

mod outbox;
mod subscriptions;

on_both_backends!(
    a_replay_during_an_attempt_is_not_recorded_over,
    attempts_page_oldest_or_newest_first,
    a_claim_leaves_room_for_every_subscription,
);

/// Subscription `sub_1` (every topic) and one stored event, `e1`, for it.
async fn subscribe_and_store_one_event(s: &Arc<dyn Store>) {
    let input: SubscriptionInput =
        serde_json::from_value(serde_json::json!({"url": "https://crm.example.com/hook"})).unwrap();
    let sub = input.create("sub_1".into(), Utc::now(), false).unwrap();
    s.insert_subscription(&sub).await.unwrap();
    let event = enrollment("default", "e1", "progress", 1, 7, "10", 1);
    s.append_batch(std::slice::from_ref(&event)).await.unwrap();
}

/// The record of one answered attempt at a claimed delivery.
fn answered(
    d: &enrollhook::store::ClaimedDelivery,
    at: DateTime<Utc>,
    status: u16,
    next: enrollhook::forward::policy::Next,
) -> enrollhook::store::FinishedAttempt {
    enrollhook::store::FinishedAttempt {
        outbox_id: d.outbox_id,
        subscription_id: d.subscription.id.clone(),
        event_seq: d.event.seq,
        attempt: d.attempts + 1,
        attempted_at: at,
        status: Some(status),
        latency_ms: 1.0,
        error: None,
        response: None,
        next,
    }
}

/// Replaying a delivery while an attempt of it is in flight: when that attempt
/// is recorded afterwards, the replayed delivery must stay pending (and be
/// delivered again), not be marked delivered by the earlier attempt.
async fn a_replay_during_an_attempt_is_not_recorded_over(f: Fixture) {
    let s = &f.store;
    subscribe_and_store_one_event(s).await;

    let now = Utc::now();
    let claimed = s
        .claim_deliveries(
            now,
            now + Duration::seconds(20),
            &enrollhook::store::ClaimRoom::up_to(10),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The attempt is in flight; meanwhile someone replays the event.
    let replay = ReplayScope::Event {
        source: "default".into(),
        event_id: "e1".into(),
        topic: None,
        subscription_id: None,
    };
    assert_eq!(s.replay(&replay, now).await.unwrap(), 1);
    let finished = answered(&claimed[0], now, 200, Next::Delivered);
    s.finish_attempts(&[finished], rules(now - Duration::days(5)))
        .await
        .unwrap();

    let pending = s
        .list_deliveries(
            &DeliveryFilter {
                state: Some(DeliveryState::Pending),
                ..Default::default()
            },
            &PageRequest {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap()
        .items;
    assert_eq!(pending.len(), 1, "the replay is still to be delivered");
    let again = s
        .claim_deliveries(
            now,
            now + Duration::seconds(20),
            &enrollhook::store::ClaimRoom::up_to(10),
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "and can be claimed at once");
}

/// Every attempt's status, `limit` 2 at a time, by subscription or by event.
async fn attempt_statuses(
    s: &Arc<dyn Store>,
    subscription: Option<&str>,
    event_seq: Option<i64>,
    newest_first: bool,
) -> Vec<i64> {
    let mut page = PageRequest {
        limit: 2,
        cursor: None,
    };
    let mut statuses = Vec::new();
    loop {
        let got = s
            .list_attempts(subscription, event_seq, &page, newest_first)
            .await
            .unwrap();
        statuses.extend(got.items.iter().map(|a| a.status.unwrap()));
        match got.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => return statuses,
        }
    }
}

/// Attempts page forwards in the order they were made, or backwards from the
/// newest (what the dashboard shows), by subscription or by event.
async fn attempts_page_oldest_or_newest_first(f: Fixture) {
    let s = &f.store;
    subscribe_and_store_one_event(s).await;
    let now = Utc::now();
    let mut seq = 0;
    for attempt in 1..=5i64 {
        let at = now + Duration::minutes(attempt);
        let claimed = s
            .claim_deliveries(
                at,
                at + Duration::seconds(20),
                &enrollhook::store::ClaimRoom::up_to(10),
            )
            .await
            .unwrap();
        seq = claimed[0].event.seq;
        let next = if attempt < 5 {
            Next::Retry { at }
        } else {
            Next::Delivered
        };
        let finished = answered(&claimed[0], at, 500 + attempt as u16, next);
        s.finish_attempts(&[finished], rules(now - Duration::days(5)))
            .await
            .unwrap();
    }
    let oldest_first = [501, 502, 503, 504, 505];
    let newest_first = [505, 504, 503, 502, 501];
    assert_eq!(
        attempt_statuses(s, Some("sub_1"), None, false).await,
        oldest_first
    );
    assert_eq!(
        attempt_statuses(s, Some("sub_1"), None, true).await,
        newest_first
    );
    assert_eq!(
        attempt_statuses(s, None, Some(seq), true).await,
        newest_first
    );
}

/// A fixed time (whole seconds: every backend keeps them exactly).
fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(minute)
}

/// A subscription made as the API makes them, from its JSON input.
fn subscription(id: &str, input: serde_json::Value) -> Subscription {
    let input: SubscriptionInput = serde_json::from_value(input).unwrap();
    input.create(id.into(), at(0), false).unwrap()
}

async fn subscribe(s: &Arc<dyn Store>, id: &str, input: serde_json::Value) -> Subscription {
    let sub = subscription(id, input);
    s.insert_subscription(&sub).await.unwrap();
    sub
}

/// Stores progress events `ids` of enrollment `enrollment` in course 7, in order.
async fn store_events(s: &Arc<dyn Store>, enrollment_id: i64, ids: &[&str]) {
    for (n, id) in ids.iter().enumerate() {
        let event = enrollment("default", id, "progress", enrollment_id, 7, "10", n as i64);
        s.append_batch(&[event]).await.unwrap();
    }
}

/// Claims what is due a second from now (after every stored event), leased for 20 s.
async fn claim(s: &Arc<dyn Store>, limit: u32) -> Vec<ClaimedDelivery> {
    let now = Utc::now() + Duration::seconds(1);
    s.claim_deliveries(
        now,
        now + Duration::seconds(20),
        &enrollhook::store::ClaimRoom::up_to(limit),
    )
    .await
    .unwrap()
}

fn event_ids(claimed: &[ClaimedDelivery]) -> Vec<String> {
    let mut ids: Vec<String> = claimed.iter().map(|d| d.event.event_id.clone()).collect();
    ids.sort();
    ids
}

async fn deliveries(
    s: &Arc<dyn Store>,
    state: Option<DeliveryState>,
) -> Vec<enrollhook::store::OutboxEntry> {
    let filter = DeliveryFilter {
        state,
        ..Default::default()
    };
    let page = PageRequest {
        limit: 100,
        cursor: None,
    };
    s.list_deliveries(&filter, &page).await.unwrap().items
}

/// A failed attempt (no answer) at a claimed delivery.
fn failed(d: &ClaimedDelivery, at: DateTime<Utc>, next: Next) -> FinishedAttempt {
    FinishedAttempt {
        status: None,
        error: Some("connection refused".into()),
        ..answered(d, at, 0, next)
    }
}

/// Far enough in the past that no failure is old enough to disable.
fn never() -> DateTime<Utc> {
    at(0) - Duration::days(3650)
}

/// Forwarding's health rules, disabling subscriptions failing since before `before`.
fn rules(before: DateTime<Utc>) -> std::sync::Arc<enrollhook::forward::health::Rules> {
    std::sync::Arc::new(enrollhook::forward::health::Rules {
        disable_failing_before: before,
    })
}

/// A claim takes the most due deliveries, but no subscription more than its
/// room: one with a backlog due long before the other's deliveries takes its
/// share and the other still gets its own; a subscription with no room left
/// gets nothing.
async fn a_claim_leaves_room_for_every_subscription(f: Fixture) {
    use enrollhook::store::ClaimRoom;
    let s = &f.store;
    let subscribe = |id: &str| {
        let input: SubscriptionInput = serde_json::from_value(
            serde_json::json!({"url": format!("https://{id}.example.com/hook")}),
        )
        .unwrap();
        input.create(id.into(), Utc::now(), false).unwrap()
    };
    // `backlog` gets ten events before `late` exists, then both get two.
    s.insert_subscription(&subscribe("backlog")).await.unwrap();
    for i in 0..10 {
        let event = enrollment("default", &format!("old-{i}"), "progress", i, 7, "10", i);
        s.append_batch(&[event]).await.unwrap();
    }
    s.insert_subscription(&subscribe("late")).await.unwrap();
    for i in 10..12 {
        let event = enrollment("default", &format!("new-{i}"), "progress", i, 7, "10", i);
        s.append_batch(&[event]).await.unwrap();
    }
    let now = Utc::now() + Duration::seconds(1);
    let lease = now + Duration::seconds(20);
    let count = |claimed: &[ClaimedDelivery], id: &str| {
        claimed.iter().filter(|d| d.subscription.id == id).count()
    };

    // Room for six, at most four of one subscription.
    let room = ClaimRoom {
        total: 6,
        per_subscription: 4,
        busy: vec![],
    };
    let first = s.claim_deliveries(now, lease, &room).await.unwrap();
    assert_eq!(
        (count(&first, "backlog"), count(&first, "late")),
        (4, 2),
        "the backlog takes its share, the late subscription its two"
    );
    // The oldest of the backlog first.
    let mut seqs: Vec<i64> = first
        .iter()
        .filter(|d| d.subscription.id == "backlog")
        .map(|d| d.event.seq)
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=4).collect::<Vec<i64>>());

    // `backlog` at its cap (no room left): nothing of it, however due.
    let room = ClaimRoom {
        total: 10,
        per_subscription: 4,
        busy: vec![("backlog".into(), 0)],
    };
    assert!(
        s.claim_deliveries(now, lease, &room)
            .await
            .unwrap()
            .is_empty()
    );
    // Room for two more of it: the next two.
    let room = ClaimRoom {
        total: 10,
        per_subscription: 4,
        busy: vec![("backlog".into(), 2)],
    };
    let next = s.claim_deliveries(now, lease, &room).await.unwrap();
    let mut seqs: Vec<i64> = next.iter().map(|d| d.event.seq).collect();
    seqs.sort();
    assert_eq!(seqs, vec![5, 6]);
}
