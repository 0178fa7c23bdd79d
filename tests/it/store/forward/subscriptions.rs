//! Subscriptions: stored and read back whole, which events they get, and
//! their health (failing since when, disabled after too long or by a 410).

use std::sync::Arc;

use chrono::Duration;
use enrollhook::forward::policy::Next;
use enrollhook::store::{DeliveryFilter, DeliveryState, PageRequest, Store};

use super::{
    answered, at, claim, deliveries, failed, never, rules, store_events, subscribe, subscription,
};
use crate::common::backend::on_both_backends;
use crate::store::Fixture;

on_both_backends!(
    subscriptions_round_trip_and_delete_with_their_pending_deliveries,
    only_matching_enabled_subscriptions_get_deliveries,
    failing_subscriptions_are_disabled_and_deliveries_clear_the_failure,
    gone_disables_a_subscription_at_once,
    a_filter_decides_which_events_get_deliveries,
);

async fn subscriptions_round_trip_and_delete_with_their_pending_deliveries(f: Fixture) {
    let s = &f.store;
    let mut sub = subscription(
        "sub_full",
        serde_json::json!({
            "url": "https://crm.example.com/hook", "topics": ["enrollment.*", "order.created"],
            "course_ids": [7, 8], "sources": ["default"], "ordered": true,
            "headers": {"X-Team": "crm"}, "description": "the CRM",
            "filter": {"$or": [{"payload.course.id": {"$in": [7, 8]}}, {"resource": "order"}]}
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
        rules(never()),
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
    let stored = |s: &Arc<dyn Store>| {
        let s = s.clone();
        async move { s.get_subscription("sub_1").await.unwrap().unwrap() }
    };
    let retry = Next::Retry { at: at(100) };

    // A failure starts the failing period; a delivery ends it.
    s.finish_attempts(
        &[failed(&claimed[0], at(10), retry.clone())],
        rules(never()),
    )
    .await
    .unwrap();
    let sub = stored(s).await;
    assert_eq!((sub.enabled, sub.failing_since), (true, Some(at(10))));
    s.finish_attempts(
        &[answered(&claimed[1], at(11), 200, Next::Delivered)],
        rules(never()),
    )
    .await
    .unwrap();
    assert_eq!(stored(s).await.failing_since, None);

    // Failing since before the limit: disabled, and the call says so.
    let disabled = s
        .finish_attempts(&[failed(&claimed[2], at(12), retry.clone())], rules(at(13)))
        .await
        .unwrap();
    assert_eq!(disabled, ["sub_1"]);
    let sub = stored(s).await;
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
        s.claim_deliveries(
            later,
            later + Duration::seconds(20),
            &enrollhook::store::ClaimRoom::up_to(10)
        )
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
        .finish_attempts(
            &[answered(&claimed[0], at(10), 410, Next::Gone)],
            rules(never()),
        )
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

async fn a_filter_decides_which_events_get_deliveries(f: Fixture) {
    let s = &f.store;
    // Thinkific sends progress as a string ("10"); the filter compares it as a number.
    subscribe(
        s,
        "sub_halfway",
        serde_json::json!({"url": "https://a.example.com/x",
                           "filter": {"payload.percentage_completed": {"$gte": 50}}}),
    )
    .await;
    subscribe(
        s,
        "sub_course_7_not_10",
        serde_json::json!({"url": "https://a.example.com/x",
                           "filter": {"payload.course.id": 7, "$not": {"payload.percentage_completed": "10"}}}),
    )
    .await;
    let events = [
        crate::store::enrollment("default", "e1", "progress", 1, 7, "10", 1),
        crate::store::enrollment("default", "e2", "progress", 1, 7, "60", 2),
        crate::store::enrollment("default", "e3", "progress", 2, 9, "75", 3),
    ];
    s.append_batch(&events).await.unwrap();
    let delivered = |id: &'static str| async move {
        let filter = DeliveryFilter {
            subscription_id: Some(id.into()),
            ..Default::default()
        };
        let mut ids: Vec<String> = s
            .list_deliveries(&filter, &PageRequest::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|d| d.event_id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(delivered("sub_halfway").await, ["e2", "e3"]);
    assert_eq!(delivered("sub_course_7_not_10").await, ["e2"]);
}
