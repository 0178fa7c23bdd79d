//! The outbox: claims and their leases, finished attempts (delivered, retried,
//! dead), replays, and ordered subscriptions.

use chrono::{Duration, Utc};
use enrollhook::forward::policy::Next;
use enrollhook::store::{DeliveryState, FinishedAttempt, PageRequest, ReplayScope};

use super::{
    answered, claim, deliveries, event_ids, failed, never, rules, store_events, subscribe,
};
use crate::common::backend::on_both_backends;
use crate::store::Fixture;

on_both_backends!(
    a_claim_leases_due_deliveries_until_the_lease_ends,
    finished_attempts_deliver_retry_or_bury_their_deliveries,
    dead_letters_and_past_events_can_be_replayed,
    ordered_subscriptions_release_an_enrollment_one_delivery_at_a_time,
    a_subscription_made_ordered_orders_the_deliveries_already_waiting,
);

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
    let first = s
        .claim_deliveries(now, lease, &enrollhook::store::ClaimRoom::up_to(2))
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "at most `limit`");
    let second = s
        .claim_deliveries(now, lease, &enrollhook::store::ClaimRoom::up_to(10))
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "leased deliveries are not claimed twice");
    let mut all = event_ids(&first);
    all.extend(event_ids(&second));
    all.sort();
    assert_eq!(all, ["e1", "e2", "e3"]);
    let d = &second[0];
    assert_eq!((d.attempts, d.subscription.id.as_str()), (0, "sub_1"));
    let stored = s
        .get_event("default", &d.event.event_id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*d.event, stored, "the event to send, as stored");
    assert!(
        s.claim_deliveries(now, lease, &enrollhook::store::ClaimRoom::up_to(10))
            .await
            .unwrap()
            .is_empty()
    );

    // A worker that died leaves its leases; they run out, and then the
    // deliveries are due again.
    let later = lease + Duration::seconds(1);
    let again = s
        .claim_deliveries(
            later,
            later + Duration::seconds(20),
            &enrollhook::store::ClaimRoom::up_to(10),
        )
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
    let disabled = s.finish_attempts(&done, rules(never())).await.unwrap();
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
        .claim_deliveries(
            due,
            due + Duration::seconds(20),
            &enrollhook::store::ClaimRoom::up_to(10),
        )
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
    s.finish_attempts(&done, rules(never())).await.unwrap();
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
    s.finish_attempts(&done, rules(never())).await.unwrap();
    assert_eq!(deliveries(s, Some(DeliveryState::Delivered)).await.len(), 4);

    // One event, to every matching subscription or to one.
    let one_event = |subscription_id: Option<&str>| ReplayScope::Event {
        source: "default".into(),
        event_id: "e1".into(),
        topic: None,
        subscription_id: subscription_id.map(str::to_owned),
    };
    assert_eq!(s.replay(&one_event(None), now).await.unwrap(), 2);
    assert_eq!(s.replay(&one_event(Some("sub_2")), now).await.unwrap(), 1);
    assert_eq!(s.outbox_pending().await.unwrap(), 2);
    let missing = ReplayScope::Event {
        source: "default".into(),
        event_id: "nope".into(),
        topic: None,
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
    s.finish_attempts(&done, rules(never())).await.unwrap();

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
    s.finish_attempts(&[failed(a1, now, Next::Retry { at: now })], rules(never()))
        .await
        .unwrap();
    let next = claim(s, 10).await;
    assert_eq!(event_ids(&next), ["a1"], "a1 again, a2 still waits");
    s.finish_attempts(
        &[answered(&next[0], now, 200, Next::Delivered)],
        rules(never()),
    )
    .await
    .unwrap();
    assert_eq!(event_ids(&claim(s, 10).await), ["a2"]);
}

async fn a_subscription_made_ordered_orders_the_deliveries_already_waiting(f: Fixture) {
    let s = &f.store;
    let mut sub = subscribe(
        s,
        "sub_later_ordered",
        serde_json::json!({"url": "https://a.example.com/x"}),
    )
    .await;
    store_events(s, 1, &["a1", "a2"]).await;
    store_events(s, 2, &["b1"]).await;
    sub.ordered = true;
    sub.updated_at = Utc::now();
    assert!(s.update_subscription(&sub).await.unwrap());
    store_events(s, 1, &["a3"]).await;
    assert_eq!(
        event_ids(&claim(s, 10).await),
        ["a1", "b1"],
        "the oldest of each enrollment, queued before the change or after it"
    );
}
