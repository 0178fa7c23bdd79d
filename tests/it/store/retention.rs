//! Retention and copy keep what they must: a body is dropped only when its own
//! event is older than the cutoff, and a pruned event is copied as pruned.

use chrono::{DateTime, Duration, Utc};
use enrollhook::store::{AppendOutcome, NewEvent};

use super::Fixture;
use crate::common::backend::{Setup, on_both_backends};

on_both_backends!(
    retention_drops_only_bodies_older_than_the_cutoff,
    copy_keeps_pruned_events_pruned,
);

/// A non-enrollment event (retention prunes those), received at `received_at`.
fn order_event(id: &str, received_at: DateTime<Utc>) -> NewEvent {
    let body = format!(
        r#"{{"id":"{id}","resource":"order","action":"created","tenant_id":"59","created_at":"2024-01-01T00:00:00Z","payload":{{"id":5,"amount_cents":1000}}}}"#
    );
    let envelope = enrollhook::thinkific::parse(body.as_bytes(), None).unwrap();
    NewEvent::from_envelope("default", &envelope, body, received_at)
}

/// Old events below are received just before the cutoff, so that on
/// PostgreSQL their month never lies wholly before it (whole months are
/// dropped instead: tests/it/postgres/partitions.rs) and both backends
/// prune them row by row.
async fn retention_drops_only_bodies_older_than_the_cutoff(f: Fixture) {
    let now = Utc::now();
    let cutoff = now - Duration::days(30);
    // A recent event, then an old one after it in the log (an import, a
    // re-admitted quarantined delivery, a copy into a non-empty database).
    f.store
        .append_batch(&[order_event("recent", now - Duration::days(1))])
        .await
        .unwrap();
    f.store
        .append_batch(&[order_event("old", cutoff - Duration::seconds(1))])
        .await
        .unwrap();
    let report = f.store.prune_events(cutoff).await.unwrap();
    assert_eq!(report.events, 1, "only the old event is pruned");
    let recent = f
        .store
        .get_event("default", "recent", None)
        .await
        .unwrap()
        .unwrap();
    assert!(recent.pruned_at.is_none(), "a recent body is kept");
    assert!(!recent.body.is_empty());
    let old = f
        .store
        .get_event("default", "old", None)
        .await
        .unwrap()
        .unwrap();
    assert!(old.pruned_at.is_some());
    assert!(old.body.is_empty());
    // A second run finds nothing more.
    let again = f.store.prune_events(cutoff).await.unwrap();
    assert_eq!(again.events, 0);
}

async fn copy_keeps_pruned_events_pruned(from: Fixture) {
    let to = Fixture::setup(from.backend).await;
    let now = Utc::now();
    from.store
        .append_batch(&[
            order_event("old", now - Duration::days(30) - Duration::seconds(1)),
            order_event("recent", now - Duration::days(1)),
        ])
        .await
        .unwrap();
    from.store
        .prune_events(now - Duration::days(30))
        .await
        .unwrap();
    let report = enrollhook::maintenance::copy::copy(from.store.as_ref(), to.store.as_ref())
        .await
        .expect("a pruned log copies");
    assert_eq!((report.events, report.events_added), (2, 2));

    let old = to
        .store
        .get_event("default", "old", None)
        .await
        .unwrap()
        .unwrap();
    assert!(old.pruned_at.is_some(), "copied as pruned");
    assert!(old.body.is_empty());
    let recent = to
        .store
        .get_event("default", "recent", None)
        .await
        .unwrap()
        .unwrap();
    assert!(recent.pruned_at.is_none());
    assert!(recent.seq > old.seq, "log order kept");
    // A redelivery of the pruned event is still a duplicate in the copy.
    let again = to
        .store
        .append_batch(&[order_event("old", now)])
        .await
        .unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate]);
    // Copying again adds nothing.
    let twice = enrollhook::maintenance::copy::copy(from.store.as_ref(), to.store.as_ref())
        .await
        .unwrap();
    assert_eq!(twice.events_added, 0);
}
