//! The event log: stored once per (source, event id), bodies kept byte for
//! byte, read back in log order, filtered and paged; rebuild and retention.

use chrono::{Duration, Utc};
use enrollhook::projection;
use enrollhook::store::{
    AppendOutcome, EnrollmentFilter, EventFilter, NewEvent, PageRequest, StoreError,
};

use super::{Fixture, enrollment, new_event, other_event, seed_enrollments, t, tamper};
use crate::common::backend::on_both_backends;

on_both_backends!(
    append_stores_once,
    bodies_round_trip_byte_for_byte,
    out_of_order_events_leave_the_newest_state,
    events_filter_and_paginate,
    rebuild_dry_run_and_real,
    ping_and_bad_cursors,
    retention_drops_old_bodies_but_not_ids_or_the_projection,
);

async fn append_stores_once(f: Fixture) {
    let s = &f.store;
    let a = enrollment("default", "a", "progress", 1, 7, "10", 1);
    let b = enrollment("default", "b", "progress", 2, 7, "20", 1);
    let out = s
        .append_batch(&[a.clone(), b.clone(), a.clone()])
        .await
        .unwrap();
    let (AppendOutcome::Stored { seq: sa }, AppendOutcome::Stored { seq: sb }) = (out[0], out[1])
    else {
        panic!("first occurrences are stored: {out:?}")
    };
    assert_ne!(sa, sb);
    assert_eq!(
        out[2],
        AppendOutcome::Duplicate,
        "a repeat within one batch"
    );

    let c = enrollment("default", "c", "progress", 1, 7, "30", 2);
    let out = s.append_batch(&[b.clone(), c.clone()]).await.unwrap();
    assert_eq!(out[0], AppendOutcome::Duplicate, "a repeat across batches");
    let AppendOutcome::Stored { seq: sc } = out[1] else {
        panic!("{out:?}")
    };
    assert!(sc > sa.max(sb), "the log only grows");

    // The same envelope id from another source is another event.
    let out = s
        .append_batch(&[enrollment("other", "a", "progress", 1, 7, "10", 1)])
        .await
        .unwrap();
    assert!(matches!(out[0], AppendOutcome::Stored { .. }));

    let e1 = s.get_enrollment("default", 1).await.unwrap().unwrap();
    assert_eq!(
        (e1.progress, e1.event_count),
        (30.0, 2),
        "duplicates are not folded twice"
    );
    assert_eq!(
        s.get_enrollment("other", 1)
            .await
            .unwrap()
            .unwrap()
            .event_count,
        1
    );
    assert!(s.get_enrollment("default", 99).await.unwrap().is_none());
    let page = s
        .list_events(&EventFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
}

async fn bodies_round_trip_byte_for_byte(f: Fixture) {
    // Odd spacing, key order, escapes and unknown fields: kept exactly.
    let body = "{ \"resource\":\"enrollment\" ,\"action\":\"progress\",\n\t\"id\": \"20190131192004041953291\",\
        \"tenant_id\":59,\"extra\":{\"z\":1,\"a\":[1.50,\"\\u00e9\"]},\"created_at\":\"2024-05-01T12:00:00.123456Z\",\
        \"payload\":{\"id\":5,\"percentage_completed\":\"24.0\",\"updated_at\":\"2024-05-01T12:00:00Z\",\"user\":{\"email\":\"é@x\"}}}  ";
    let ev = new_event("default", body.as_bytes());
    let received = ev.received_at;
    f.store.append_batch(&[ev]).await.unwrap();
    let stored = f
        .store
        .get_event("default", "20190131192004041953291", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body, body);
    assert_eq!(stored.topic, "enrollment.progress");
    assert_eq!(stored.enrollment_id, Some(5));
    assert_eq!(
        stored.created_at.map(|t| t.timestamp_micros()),
        Some(t(0).timestamp_micros() + 123_456)
    );
    assert_eq!(
        stored.received_at.timestamp_micros(),
        received.timestamp_micros(),
        "µs kept, truncated"
    );
    assert_eq!(
        f.store
            .get_enrollment("default", 5)
            .await
            .unwrap()
            .unwrap()
            .email
            .as_deref(),
        Some("é@x")
    );
}

async fn out_of_order_events_leave_the_newest_state(f: Fixture) {
    let s = &f.store;
    let events = [
        enrollment("default", "e1", "created", 3, 7, "0", 1),
        enrollment("default", "e2", "progress", 3, 7, "24.0", 2),
        enrollment("default", "e3", "completed", 3, 7, "100.0", 3),
        enrollment("default", "e4", "progress", 3, 7, "80.0", 4),
    ];
    // Newest first, then one late batch holding an old and a middle event.
    s.append_batch(&[events[3].clone()]).await.unwrap();
    s.append_batch(&[events[2].clone()]).await.unwrap();
    s.append_batch(&[events[1].clone(), events[0].clone()])
        .await
        .unwrap();
    let stored = s.get_enrollment("default", 3).await.unwrap().unwrap();
    let expected = projection::fold(
        "default",
        events.iter().filter_map(|e| e.enrollment.clone()),
    )
    .unwrap();
    assert_eq!(stored, expected);
    assert!(stored.completed, "completion is sticky");
    assert_eq!(stored.progress, 80.0);
    assert_eq!(stored.event_count, 4);
    assert_eq!(stored.version.event_id, "e4");

    // Old and new for one enrollment inside one batch.
    let more = [
        enrollment("default", "f2", "progress", 4, 7, "50", 2),
        enrollment("default", "f1", "progress", 4, 7, "10", 1),
        enrollment("default", "f3", "progress", 4, 7, "60", 3),
    ];
    s.append_batch(&more[..1]).await.unwrap();
    s.append_batch(&more[1..]).await.unwrap();
    let stored = s.get_enrollment("default", 4).await.unwrap().unwrap();
    assert_eq!((stored.progress, stored.event_count), (60.0, 3));
    let events = s.enrollment_events("default", 4).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["f2", "f1", "f3"],
        "log order"
    );
    assert_eq!(s.rebuild_projection(true).await.unwrap().changed, 0);
}

async fn events_filter_and_paginate(f: Fixture) {
    let s = &f.store;
    seed_enrollments(s).await;
    s.append_batch(&[
        other_event("school-a", "o1", "order", "created"),
        other_event("school-a", "o2", "user", "signup"),
        other_event("school_b", "o3", "enrollmentx", "created"),
    ])
    .await
    .unwrap();
    let all = |filter: EventFilter| async move {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = s
                .list_events(&filter, &PageRequest { limit: 4, cursor })
                .await
                .unwrap();
            out.extend(page.items);
            cursor = page.next_cursor;
            if cursor.is_none() {
                return out;
            }
        }
    };
    let every = all(EventFilter::default()).await;
    assert_eq!(every.len(), 27);
    assert!(every.windows(2).all(|w| w[0].seq < w[1].seq), "log order");
    assert_eq!(
        all(EventFilter {
            topic: Some("enrollment.*".into()),
            ..Default::default()
        })
        .await
        .len(),
        24
    );
    assert_eq!(
        all(EventFilter {
            topic: Some("enrollment.trial".into()),
            ..Default::default()
        })
        .await
        .len(),
        4
    );
    assert_eq!(
        all(EventFilter {
            topic: Some("order.created".into()),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        all(EventFilter {
            source: Some("school_b".into()),
            ..Default::default()
        })
        .await
        .len(),
        13
    );
    let after = every[20].seq;
    let tail = all(EventFilter {
        after_seq: Some(after),
        ..Default::default()
    })
    .await;
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        every[21..].iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    assert!(s.get_event("school-a", "o2", None).await.unwrap().is_some());
    assert!(s.get_event("school_b", "o2", None).await.unwrap().is_none());
    assert_eq!(s.enrollment_events("school-a", 1).await.unwrap().len(), 1);
}

async fn rebuild_dry_run_and_real(f: Fixture) {
    let s = &f.store;
    seed_enrollments(s).await;
    let clean = s.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (
            clean.events,
            clean.enrollments,
            clean.changed,
            clean.removed
        ),
        (24, 24, 0, 0)
    );
    let before = s.get_enrollment("school-a", 3).await.unwrap().unwrap();

    tamper(
        &f,
        "UPDATE enrollments SET progress = 1 WHERE enrollment_id = 3; \
                DELETE FROM enrollments WHERE enrollment_id = 5; \
                UPDATE enrollments SET enrollment_id = 1000 WHERE enrollment_id = 7",
    )
    .await;
    let dry = s.rebuild_projection(true).await.unwrap();
    assert_eq!((dry.changed, dry.removed), (3, 1));
    assert_eq!(
        s.get_enrollment("school-a", 3)
            .await
            .unwrap()
            .unwrap()
            .progress,
        1.0,
        "dry run changes nothing"
    );

    let real = s.rebuild_projection(false).await.unwrap();
    assert_eq!((real.changed, real.removed), (3, 1));
    assert_eq!(
        s.get_enrollment("school-a", 3).await.unwrap().unwrap(),
        before
    );
    assert!(s.get_enrollment("school-a", 1000).await.unwrap().is_none());
    assert_eq!(s.rebuild_projection(true).await.unwrap().changed, 0);
}

async fn ping_and_bad_cursors(f: Fixture) {
    let s = &f.store;
    s.ping().await.unwrap();
    assert!(["sqlite", "postgres"].contains(&s.backend()));
    let bad = PageRequest {
        limit: 5,
        cursor: Some("not a cursor".into()),
    };
    assert!(matches!(
        s.list_events(&EventFilter::default(), &bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.list_enrollments(&EnrollmentFilter::default(), &bad, Utc::now())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.list_quarantine(None, &bad).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn retention_drops_old_bodies_but_not_ids_or_the_projection(f: Fixture) {
    let s = &f.store;
    // Just before the cutoff: pruned row by row on both backends (see
    // tests/it/store/retention.rs).
    let cutoff = Utc::now() - Duration::days(90);
    let long_ago = cutoff - Duration::seconds(1);
    let aged = |mut e: NewEvent| {
        e.received_at = long_ago;
        e
    };
    let old_order = aged(other_event("default", "o-old", "order", "created"));
    let old_enrollment = aged(enrollment("default", "e-old", "progress", 1, 7, "40", 1));
    let new_order = other_event("default", "o-new", "order", "created");
    s.append_batch(&[old_order.clone(), old_enrollment.clone()])
        .await
        .unwrap();
    s.append_batch(std::slice::from_ref(&new_order))
        .await
        .unwrap();
    let before = s.get_enrollment("default", 1).await.unwrap().unwrap();

    let report = s.prune_events(cutoff).await.unwrap();
    assert_eq!(
        report.events, 1,
        "only the old non-enrollment event: {report:?}"
    );
    assert_eq!(
        s.prune_events(cutoff).await.unwrap().events,
        0,
        "idempotent"
    );

    let events = s
        .list_events(
            &EventFilter::default(),
            &PageRequest {
                limit: 100,
                cursor: None,
            },
        )
        .await
        .unwrap()
        .items;
    let by_id = |id: &str| events.iter().find(|e| e.event_id == id).unwrap().clone();
    let pruned = by_id("o-old");
    assert!(
        pruned.pruned_at.is_some() && pruned.body.is_empty(),
        "{pruned:?}"
    );
    let kept = by_id("e-old");
    assert!(kept.pruned_at.is_none() && kept.body == old_enrollment.body);
    assert_eq!(by_id("o-new").body, new_order.body);
    let view = enrollhook::views::event_view(&pruned);
    assert!(view.body.is_null() && view.pruned_at.is_some());

    // The id stays: a redelivery of the pruned event is still a duplicate.
    let again = s.append_batch(&[old_order]).await.unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate]);
    // The projection is untouched and still equals a rebuild from the log.
    assert_eq!(
        s.get_enrollment("default", 1).await.unwrap().unwrap(),
        before
    );
    let check = s.rebuild_projection(true).await.unwrap();
    assert_eq!((check.changed, check.removed), (0, 0), "{check:?}");
}
