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

on_both_backends!(
    a_replay_during_an_attempt_is_not_recorded_over,
    attempts_page_oldest_or_newest_first,
    subscriptions_round_trip_and_delete_with_their_pending_deliveries,
    only_matching_enabled_subscriptions_get_deliveries,
    a_claim_leases_due_deliveries_until_the_lease_ends,
    finished_attempts_deliver_retry_or_bury_their_deliveries,
    dead_letters_and_past_events_can_be_replayed,
    ordered_subscriptions_release_an_enrollment_one_delivery_at_a_time,
    failing_subscriptions_are_disabled_and_deliveries_clear_the_failure,
    gone_disables_a_subscription_at_once,
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
        .claim_deliveries(now, now + Duration::seconds(20), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The attempt is in flight; meanwhile someone replays the event.
    let replay = ReplayScope::Event {
        source: "default".into(),
        event_id: "e1".into(),
        subscription_id: None,
    };
    assert_eq!(s.replay(&replay, now).await.unwrap(), 1);
    let finished = answered(&claimed[0], now, 200, Next::Delivered);
    s.finish_attempts(&[finished], now - Duration::days(5))
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
        .claim_deliveries(now, now + Duration::seconds(20), 10)
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
            .claim_deliveries(at, at + Duration::seconds(20), 10)
            .await
            .unwrap();
        seq = claimed[0].event.seq;
        let next = if attempt < 5 {
            Next::Retry { at }
        } else {
            Next::Delivered
        };
        let finished = answered(&claimed[0], at, 500 + attempt as u16, next);
        s.finish_attempts(&[finished], now - Duration::days(5))
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
    s.claim_deliveries(now, now + Duration::seconds(20), limit)
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

async fn subscriptions_round_trip_and_delete_with_their_pending_deliveries(f: Fixture) {
    let s = &f.store;
    let mut sub = subscription(
        "sub_full",
        serde_json::json!({
            "url": "https://crm.example.com/hook", "topics": ["enrollment.*", "order.created"],
            "course_ids": [7, 8], "sources": ["default"], "ordered": true,
            "headers": {"X-Team": "crm"}, "description": "the CRM"
        }),
    );
    sub.rotate_secret(None, std::time::Duration::from_secs(3600), at(1))
        .unwrap();
    s.insert_subscription(&sub).await.unwrap();
    assert_eq!(
        s.get_subscription("sub_full").await.unwrap(),
        Some(sub.clone())
    );
    let plain = subscribe(
        s,
        "sub_plain",
        serde_json::json!({"url": "https://a.example.com/x"}),
    )
    .await;
    let listed = s.list_subscriptions().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&sub) && listed.contains(&plain));

    sub.enabled = false;
    sub.disabled_reason = Some("paused by hand".into());
    sub.course_ids = None;
    sub.updated_at = at(2);
    assert!(s.update_subscription(&sub).await.unwrap());
    assert_eq!(
        s.get_subscription("sub_full").await.unwrap(),
        Some(sub.clone())
    );
    let mut unknown = sub.clone();
    unknown.id = "sub_unknown".into();
    assert!(!s.update_subscription(&unknown).await.unwrap());

    // Deleting takes the pending deliveries along; the attempts stay history.
    store_events(s, 1, &["e1", "e2"]).await;
    let claimed = claim(s, 1).await;
    s.finish_attempts(
        &[failed(&claimed[0], at(3), Next::Retry { at: at(4) })],
        never(),
    )
    .await
    .unwrap();
    assert_eq!(s.outbox_pending().await.unwrap(), 2);
    assert!(s.delete_subscription("sub_plain").await.unwrap());
    assert!(!s.delete_subscription("sub_plain").await.unwrap());
    assert_eq!(s.get_subscription("sub_plain").await.unwrap(), None);
    assert_eq!(s.outbox_pending().await.unwrap(), 0);
    assert!(claim(s, 10).await.is_empty());
    let page = PageRequest::default();
    let history = s
        .list_attempts(Some("sub_plain"), None, &page, false)
        .await
        .unwrap();
    assert_eq!(history.items.len(), 1);
}

async fn only_matching_enabled_subscriptions_get_deliveries(f: Fixture) {
    let s = &f.store;
    let all = serde_json::json!({"url": "https://a.example.com/x"});
    subscribe(s, "sub_all", all.clone()).await;
    subscribe(
        s,
        "sub_course_8",
        serde_json::json!({"url": "https://a.example.com/x", "course_ids": [8]}),
    )
    .await;
    subscribe(
        s,
        "sub_orders",
        serde_json::json!({"url": "https://a.example.com/x", "topics": ["order.*"]}),
    )
    .await;
    subscribe(
        s,
        "sub_other_source",
        serde_json::json!({"url": "https://a.example.com/x", "sources": ["other"]}),
    )
    .await;
    let mut off = subscription("sub_disabled", all);
    off.enabled = false;
    s.insert_subscription(&off).await.unwrap();

    store_events(s, 1, &["e1"]).await; // course 7, enrollment.progress
    let per_subscription = |id: &'static str| async move {
        let filter = DeliveryFilter {
            subscription_id: Some(id.into()),
            ..Default::default()
        };
        s.list_deliveries(&filter, &PageRequest::default())
            .await
            .unwrap()
            .items
            .len()
    };
    assert_eq!(per_subscription("sub_all").await, 1);
    for id in [
        "sub_course_8",
        "sub_orders",
        "sub_other_source",
        "sub_disabled",
    ] {
        assert_eq!(per_subscription(id).await, 0, "{id}");
    }
    assert_eq!(s.outbox_pending().await.unwrap(), 1);
}

async fn a_claim_leases_due_deliveries_until_the_lease_ends(f: Fixture) {
    let s = &f.store;
    subscribe(
        s,
        "sub_1",
        serde_json::json!({"url": "https://a.example.com/x"}),
    )
    .await;
    store_events(s, 1, &["e1"]).await;
    store_events(s, 2, &["e2"]).await;
    store_events(s, 3, &["e3"]).await;
    assert_eq!(s.outbox_pending().await.unwrap(), 3);

    let now = Utc::now() + Duration::seconds(1);
    let lease = now + Duration::seconds(20);
    let first = s.claim_deliveries(now, lease, 2).await.unwrap();
    assert_eq!(first.len(), 2, "at most `limit`");
    let second = s.claim_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(second.len(), 1, "leased deliveries are not claimed twice");
    let mut all = event_ids(&first);
    all.extend(event_ids(&second));
    all.sort();
    assert_eq!(all, ["e1", "e2", "e3"]);
    let d = &second[0];
    assert_eq!((d.attempts, d.subscription.id.as_str()), (0, "sub_1"));
    let stored = s
        .get_event("default", &d.event.event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.event, stored, "the event to send, as stored");
    assert!(s.claim_deliveries(now, lease, 10).await.unwrap().is_empty());

    // A worker that died leaves its leases; they run out, and then the
    // deliveries are due again.
    let later = lease + Duration::seconds(1);
    let again = s
        .claim_deliveries(later, later + Duration::seconds(20), 10)
        .await
        .unwrap();
    assert_eq!(event_ids(&again), ["e1", "e2", "e3"]);
    assert_eq!(
        s.outbox_pending().await.unwrap(),
        3,
        "still pending while leased"
    );
}

async fn finished_attempts_deliver_retry_or_bury_their_deliveries(f: Fixture) {
    let s = &f.store;
    subscribe(
        s,
        "sub_1",
        serde_json::json!({"url": "https://a.example.com/x"}),
    )
    .await;
    store_events(s, 1, &["e1"]).await;
    store_events(s, 2, &["e2"]).await;
    store_events(s, 3, &["e3"]).await;
    let mut claimed = claim(s, 10).await;
    claimed.sort_by(|a, b| a.event.event_id.cmp(&b.event.event_id));
    let now = Utc::now();
    let retry_at = now + Duration::minutes(10);
    let done = [
        answered(&claimed[0], now, 200, Next::Delivered),
        answered(&claimed[1], now, 503, Next::Retry { at: retry_at }),
        answered(
            &claimed[2],
            now,
            500,
            Next::Dead {
                reason: "gave up after 1 attempts: HTTP 500".into(),
            },
        ),
    ];
    let disabled = s.finish_attempts(&done, never()).await.unwrap();
    assert!(disabled.is_empty(), "{disabled:?}");

    let state_of = |state| async move {
        let found = deliveries(s, Some(state)).await;
        assert_eq!(found.len(), 1, "{state:?}: {found:?}");
        found.into_iter().next().unwrap()
    };
    let delivered = state_of(DeliveryState::Delivered).await;
    assert_eq!(
        (
            delivered.event_id.as_str(),
            delivered.attempts,
            delivered.last_status
        ),
        ("e1", 1, Some(200))
    );
    assert!(delivered.finished_at.is_some());
    let pending = state_of(DeliveryState::Pending).await;
    assert_eq!(
        (
            pending.event_id.as_str(),
            pending.attempts,
            pending.last_status
        ),
        ("e2", 1, Some(503))
    );
    assert_eq!(pending.finished_at, None);
    assert_eq!(
        pending.next_attempt_at.map(|t| t.timestamp()),
        Some(retry_at.timestamp())
    );
    let dead = state_of(DeliveryState::Dead).await;
    assert_eq!(dead.event_id, "e3");
    assert!(
        dead.last_error.as_deref().unwrap().contains("gave up"),
        "{dead:?}"
    );
    assert!(dead.finished_at.is_some());
    assert_eq!(s.outbox_pending().await.unwrap(), 1);

    // The retry is due at its time, not before, with the attempt counted.
    assert!(claim(s, 10).await.is_empty());
    let due = retry_at + Duration::seconds(1);
    let retried = s
        .claim_deliveries(due, due + Duration::seconds(20), 10)
        .await
        .unwrap();
    assert_eq!(
        (event_ids(&retried), retried[0].attempts),
        (vec!["e2".to_owned()], 1)
    );

    // Every attempt is recorded, per subscription and per event.
    let page = PageRequest::default();
    let attempts = s
        .list_attempts(Some("sub_1"), None, &page, false)
        .await
        .unwrap()
        .items;
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| a.attempt == 1 && a.subscription_id == "sub_1")
    );
    let of_e2 = s
        .list_attempts(None, Some(claimed[1].event.seq), &page, false)
        .await
        .unwrap()
        .items;
    assert_eq!(
        of_e2.iter().map(|a| a.status).collect::<Vec<_>>(),
        [Some(503)]
    );
}

async fn dead_letters_and_past_events_can_be_replayed(f: Fixture) {
    let s = &f.store;
    subscribe(
        s,
        "sub_1",
        serde_json::json!({"url": "https://a.example.com/x"}),
    )
    .await;
    subscribe(
        s,
        "sub_2",
        serde_json::json!({"url": "https://b.example.com/x"}),
    )
    .await;
    store_events(s, 1, &["e1"]).await;
    store_events(s, 2, &["e2"]).await;
    let now = Utc::now();
    let claimed = claim(s, 10).await;
    assert_eq!(claimed.len(), 4);
    let done: Vec<FinishedAttempt> = claimed
        .iter()
        .map(|d| match d.subscription.id.as_str() {
            "sub_1" => failed(
                d,
                now,
                Next::Dead {
                    reason: "gave up after 1 attempts".into(),
                },
            ),
            _ => answered(d, now, 200, Next::Delivered),
        })
        .collect();
    s.finish_attempts(&done, never()).await.unwrap();
    assert_eq!(deliveries(s, Some(DeliveryState::Dead)).await.len(), 2);
    assert_eq!(s.outbox_pending().await.unwrap(), 0);

    // Dead letters: back in the outbox, due now, attempts counted afresh.
    let replay_dead = ReplayScope::Dead {
        subscription_id: "sub_1".into(),
    };
    assert_eq!(s.replay(&replay_dead, now).await.unwrap(), 2);
    assert_eq!(
        s.replay(&replay_dead, now).await.unwrap(),
        0,
        "nothing dead any more"
    );
    let again = claim(s, 10).await;
    assert_eq!(event_ids(&again), ["e1", "e2"]);
    assert!(
        again
            .iter()
            .all(|d| d.subscription.id == "sub_1" && d.attempts == 0)
    );
    let done: Vec<_> = again
        .iter()
        .map(|d| answered(d, now, 200, Next::Delivered))
        .collect();
    s.finish_attempts(&done, never()).await.unwrap();
    assert_eq!(deliveries(s, Some(DeliveryState::Delivered)).await.len(), 4);

    // One event, to every matching subscription or to one.
    let one_event = |subscription_id: Option<&str>| ReplayScope::Event {
        source: "default".into(),
        event_id: "e1".into(),
        subscription_id: subscription_id.map(str::to_owned),
    };
    assert_eq!(s.replay(&one_event(None), now).await.unwrap(), 2);
    assert_eq!(s.replay(&one_event(Some("sub_2")), now).await.unwrap(), 1);
    assert_eq!(s.outbox_pending().await.unwrap(), 2);
    let missing = ReplayScope::Event {
        source: "default".into(),
        event_id: "nope".into(),
        subscription_id: None,
    };
    assert!(
        s.replay(&missing, now).await.is_err(),
        "an unknown event is an error"
    );
    let done: Vec<_> = claim(s, 10)
        .await
        .iter()
        .map(|d| answered(d, now, 200, Next::Delivered))
        .collect();
    s.finish_attempts(&done, never()).await.unwrap();

    // A time range of received events, to one subscription.
    let range = |since, until| ReplayScope::Range {
        subscription_id: "sub_2".into(),
        since,
        until,
    };
    let hour = Duration::hours(1);
    assert_eq!(
        s.replay(&range(now - hour, now + hour), now).await.unwrap(),
        2
    );
    assert_eq!(
        s.replay(&range(now + hour, now + hour * 2), now)
            .await
            .unwrap(),
        0
    );
    let replayed = claim(s, 10).await;
    assert_eq!(event_ids(&replayed), ["e1", "e2"]);
    assert!(replayed.iter().all(|d| d.subscription.id == "sub_2"));
}

async fn ordered_subscriptions_release_an_enrollment_one_delivery_at_a_time(f: Fixture) {
    let s = &f.store;
    subscribe(
        s,
        "sub_ordered",
        serde_json::json!({"url": "https://a.example.com/x", "ordered": true}),
    )
    .await;
    store_events(s, 1, &["a1", "a2", "a3"]).await;
    store_events(s, 2, &["b1"]).await;
    let now = Utc::now();
    let first = claim(s, 10).await;
    assert_eq!(
        event_ids(&first),
        ["a1", "b1"],
        "the oldest of each enrollment"
    );
    let a1 = first.iter().find(|d| d.event.event_id == "a1").unwrap();
    // A retry keeps the enrollment's later events waiting behind it.
    s.finish_attempts(&[failed(a1, now, Next::Retry { at: now })], never())
        .await
        .unwrap();
    let next = claim(s, 10).await;
    assert_eq!(event_ids(&next), ["a1"], "a1 again, a2 still waits");
    s.finish_attempts(&[answered(&next[0], now, 200, Next::Delivered)], never())
        .await
        .unwrap();
    assert_eq!(event_ids(&claim(s, 10).await), ["a2"]);
}

async fn failing_subscriptions_are_disabled_and_deliveries_clear_the_failure(f: Fixture) {
    let s = &f.store;
    subscribe(
        s,
        "sub_1",
        serde_json::json!({"url": "https://a.example.com/x"}),
    )
    .await;
    store_events(s, 1, &["e1"]).await;
    store_events(s, 2, &["e2"]).await;
    store_events(s, 3, &["e3"]).await;
    let claimed = claim(s, 10).await;
    let failing_since = |s: &Arc<dyn Store>| {
        let s = s.clone();
        async move { s.get_subscription("sub_1").await.unwrap().unwrap() }
    };
    let retry = Next::Retry { at: at(100) };

    // A failure starts the failing period; a delivery ends it.
    s.finish_attempts(&[failed(&claimed[0], at(10), retry.clone())], never())
        .await
        .unwrap();
    let sub = failing_since(s).await;
    assert_eq!((sub.enabled, sub.failing_since), (true, Some(at(10))));
    s.finish_attempts(
        &[answered(&claimed[1], at(11), 200, Next::Delivered)],
        never(),
    )
    .await
    .unwrap();
    assert_eq!(failing_since(s).await.failing_since, None);

    // Failing since before the limit: disabled, and the call says so.
    let disabled = s
        .finish_attempts(&[failed(&claimed[2], at(12), retry.clone())], at(13))
        .await
        .unwrap();
    assert_eq!(disabled, ["sub_1"]);
    let sub = failing_since(s).await;
    assert!(!sub.enabled);
    assert!(
        sub.disabled_reason
            .as_deref()
            .unwrap()
            .contains("failed since"),
        "{sub:?}"
    );
    // A disabled subscription's pending deliveries wait.
    let later = at(200);
    assert!(
        s.claim_deliveries(later, later + Duration::seconds(20), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.outbox_pending().await.unwrap(), 2);
}

async fn gone_disables_a_subscription_at_once(f: Fixture) {
    let s = &f.store;
    subscribe(
        s,
        "sub_1",
        serde_json::json!({"url": "https://a.example.com/x"}),
    )
    .await;
    store_events(s, 1, &["e1"]).await;
    let claimed = claim(s, 10).await;
    let disabled = s
        .finish_attempts(&[answered(&claimed[0], at(10), 410, Next::Gone)], never())
        .await
        .unwrap();
    assert_eq!(disabled, ["sub_1"]);
    let sub = s.get_subscription("sub_1").await.unwrap().unwrap();
    assert!(!sub.enabled);
    assert!(
        sub.disabled_reason.as_deref().unwrap().contains("410"),
        "{sub:?}"
    );
    let dead = deliveries(s, Some(DeliveryState::Dead)).await;
    assert_eq!((dead.len(), dead[0].last_status), (1, Some(410)));
}
