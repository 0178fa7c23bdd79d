//! The group-commit write path: whole batches handed to the store, as the
//! ingest writer does, including duplicates and late events inside one batch.

use enrollhook::store::{AppendOutcome, NewEvent};

use super::{Fixture, batch_event as event};
use crate::common::backend::on_both_backends;

on_both_backends!(
    duplicates_within_and_across_batches_are_stored_once,
    one_batch_with_late_events_projects_like_a_rebuild,
    batches_larger_than_one_statement_store_everything,
);

fn seqs(outcomes: &[AppendOutcome]) -> Vec<Option<i64>> {
    outcomes
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored { seq } => Some(*seq),
            AppendOutcome::Duplicate => None,
        })
        .collect()
}

async fn duplicates_within_and_across_batches_are_stored_once(f: Fixture) {
    let store = &f.store;
    let a = event("s", "a", "created", 1, "0", "2024-01-02T00:00:00Z");
    let b = event("s", "b", "progress", 1, "50", "2024-01-03T00:00:00Z");
    let first = store.append_batch(std::slice::from_ref(&a)).await.unwrap();
    assert!(matches!(first[0], AppendOutcome::Stored { .. }));

    // Same id under another source is a different event.
    let other_source = event("t", "b", "progress", 1, "50", "2024-01-03T00:00:00Z");
    let batch = [b.clone(), a.clone(), b.clone(), other_source];
    let got = seqs(&store.append_batch(&batch).await.unwrap());
    assert!(got[0].is_some() && got[3].is_some(), "{got:?}");
    assert_eq!((got[1], got[2]), (None, None), "{got:?}");
    // Log positions follow arrival order within the batch.
    assert!(got[0] < got[3], "{got:?}");

    let e = store.get_enrollment("s", 1).await.unwrap().unwrap();
    assert_eq!((e.event_count, e.progress), (2, 50.0));
    assert_eq!(store.enrollment_events("s", 1).await.unwrap().len(), 2);
    assert_eq!(store.enrollment_events("t", 1).await.unwrap().len(), 1);
}

async fn one_batch_with_late_events_projects_like_a_rebuild(f: Fixture) {
    let store = &f.store;
    // Enrollment 7 arrives newest-first inside one batch (every event after the
    // first is late); enrollment 8 in order; enrollment 9 only once.
    let batch = [
        event("s", "7-3", "completed", 7, "100.0", "2024-01-04T00:00:00Z"),
        event("s", "8-1", "created", 8, "0", "2024-01-02T00:00:00Z"),
        event("s", "7-1", "created", 7, "0", "2024-01-02T00:00:00Z"),
        event("s", "8-2", "progress", 8, "30.0", "2024-01-03T00:00:00Z"),
        event("s", "7-2", "progress", 7, "40.0", "2024-01-03T00:00:00Z"),
        event("s", "9-1", "progress", 9, "10.0", "2024-01-03T00:00:00Z"),
    ];
    let got = seqs(&store.append_batch(&batch).await.unwrap());
    assert!(got.iter().all(Option::is_some), "{got:?}");

    let e7 = store.get_enrollment("s", 7).await.unwrap().unwrap();
    assert!(e7.completed);
    assert_eq!((e7.progress, e7.event_count), (100.0, 3));
    let e8 = store.get_enrollment("s", 8).await.unwrap().unwrap();
    assert_eq!(
        (e8.progress, e8.event_count, e8.completed),
        (30.0, 2, false)
    );

    // A late event in a later batch, for a row written by the batch above.
    let late = event("s", "8-0", "created", 8, "0", "2024-01-01T00:00:00Z");
    store.append_batch(&[late]).await.unwrap();
    let e8 = store.get_enrollment("s", 8).await.unwrap().unwrap();
    assert_eq!((e8.progress, e8.event_count), (30.0, 3));

    let report = store.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (
            report.events,
            report.enrollments,
            report.changed,
            report.removed
        ),
        (7, 3, 0, 0),
        "{report:?}"
    );
}

async fn batches_larger_than_one_statement_store_everything(f: Fixture) {
    let store = &f.store;
    // 2,400 events, 800 enrollments: more rows than one multi-row statement takes.
    let batch: Vec<NewEvent> = (0..2400i64)
        .map(|n| {
            let (enrollment, step) = (n / 3, n % 3);
            let action = ["created", "progress", "completed"][step as usize];
            let pct = ["0", "50.0", "100.0"][step as usize];
            event(
                "s",
                &format!("big-{n}"),
                action,
                enrollment,
                pct,
                &format!("2024-01-0{}T00:00:00Z", step + 1),
            )
        })
        .collect();
    let got = seqs(&store.append_batch(&batch).await.unwrap());
    assert!(got.iter().all(Option::is_some));
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "log positions follow arrival order"
    );
    // Sending it all again stores nothing.
    let again = seqs(&store.append_batch(&batch).await.unwrap());
    assert!(again.iter().all(Option::is_none));

    let report = store.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (report.events, report.enrollments, report.changed),
        (2400, 800, 0),
        "{report:?}"
    );
    let completed = store.get_enrollment("s", 799).await.unwrap().unwrap();
    assert!(completed.completed);
    assert_eq!(completed.event_count, 3);
}
