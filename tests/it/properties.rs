//! Property tests: the projection does not depend on the order (or the
//! repetition) in which Thinkific delivers an enrollment's events — both for
//! the pure rules and through the real stores, SQLite and PostgreSQL
//! (incremental apply + re-folds).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use enrollhook::projection::{self, Apply, Enrollment, EnrollmentEvent};
use enrollhook::store::{EnrollmentFilter, NewEvent, PageRequest, Store};
use enrollhook::thinkific::{EnrollmentPayload, EnrollmentTopic};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestRunner};

use crate::common::backend::{Backend, on_both_backends};
use crate::store::Fixture as StoreFixture;

fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap() + chrono::Duration::minutes(minute)
}

prop_compose! {
    /// One event of enrollment 1; timestamps may collide or be missing.
    fn arb_event(index: usize)(
        topic in prop_oneof![
            Just(EnrollmentTopic::Created),
            Just(EnrollmentTopic::Progress),
            Just(EnrollmentTopic::Progress),
            Just(EnrollmentTopic::Completed),
            Just(EnrollmentTopic::Trial),
            Just(EnrollmentTopic::Backfill),
        ],
        updated in prop::option::weighted(0.9, 0i64..20),
        pct in prop::option::weighted(0.8, 0u32..=100),
        email in prop::option::of(prop_oneof![Just("a@x.org".to_string()), Just("b@x.org".to_string())]),
        trial in prop::option::of(any::<bool>()),
        expiry in prop::option::of(0i64..100_000),
        completed in prop::option::of(any::<bool>()),
    ) -> EnrollmentEvent {
        let backfill = topic == EnrollmentTopic::Backfill;
        EnrollmentEvent {
            topic,
            // Backfill ids are text (`backfill-…`), webhook ids digits.
            event_id: if backfill {
                format!("backfill-1-{index}")
            } else {
                format!("{}", 1000 + index)
            },
            // A backfill has no envelope time; only it says `completed`.
            envelope_created_at: updated.filter(|_| !backfill).map(|m| at(m + 1)),
            payload: EnrollmentPayload {
                id: 1,
                course_id: Some(7),
                course_name: Some("Course".into()),
                user_id: Some(3),
                email,
                percentage_completed: pct.map(f64::from),
                free_trial: trial,
                started_at: Some(at(0)),
                completed_at: updated.map(at),
                expiry_date: expiry.map(at),
                updated_at: updated.map(at),
                completed: completed.filter(|_| backfill),
                ..Default::default()
            },
        }
    }
}

fn arb_history() -> impl Strategy<Value = Vec<EnrollmentEvent>> {
    (1usize..8).prop_flat_map(|n| (0..n).map(arb_event).collect::<Vec<_>>())
}

/// The history shuffled, with some events delivered more than once.
fn arb_delivery() -> impl Strategy<Value = (Vec<EnrollmentEvent>, Vec<EnrollmentEvent>)> {
    arb_history().prop_flat_map(|history| {
        let n = history.len();
        let dups = prop::collection::vec(0..n, 0..4);
        (Just(history), dups).prop_flat_map(|(history, dups)| {
            let mut delivered = history.clone();
            delivered.extend(dups.into_iter().map(|i| history[i].clone()));
            (Just(history), Just(delivered).prop_shuffle())
        })
    })
}

/// What a store does: apply when newer, re-fold everything seen when older.
fn apply_in_arrival_order(delivered: &[EnrollmentEvent]) -> Option<Enrollment> {
    let mut seen: Vec<EnrollmentEvent> = Vec::new();
    let mut state = None;
    for e in delivered {
        if seen.iter().any(|s| s.event_id == e.event_id) {
            continue; // a duplicate is a no-op
        }
        seen.push(e.clone());
        state = match projection::apply(state.as_ref(), "s", e) {
            Apply::Newer(s) => Some(s),
            Apply::Older => projection::fold("s", seen.clone()),
        };
    }
    state
}

/// Where failing cases are kept and replayed from: beside this file, as
/// `properties.proptest-regressions`. Said explicitly because proptest's
/// default puts them in a `proptest-regressions/` tree beside the nearest
/// directory holding a `main.rs`, which for `tests/it/` is `tests/`.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(ProptestConfig::default().cases))]

    #[test]
    fn any_order_with_duplicates_gives_the_in_order_projection((history, delivered) in arb_delivery()) {
        let in_order = projection::fold("s", history.clone());
        prop_assert_eq!(apply_in_arrival_order(&delivered), in_order.clone());
        prop_assert_eq!(projection::fold("s", delivered), in_order);
    }

    #[test]
    fn completion_is_never_lost((_, delivered) in arb_delivery()) {
        let state = apply_in_arrival_order(&delivered).unwrap();
        let any_completion = delivered.iter().any(|e| {
            e.topic == EnrollmentTopic::Completed
                || e.payload.percentage_completed == Some(100.0)
                || e.payload.completed == Some(true)
        });
        prop_assert_eq!(state.completed, any_completion);
        prop_assert!((0.0..=100.0).contains(&state.progress));
    }
}

on_both_backends!(multi_thread: the_store_agrees_with_in_order_delivery);

/// The same property through the real store: deliveries in a random order
/// with duplicates give the row that in-order delivery gives, and `rebuild`
/// agrees with both. One database for the whole run (a PostgreSQL database
/// per case would cost more than the case): each case writes under sources
/// of its own. Fewer cases on PostgreSQL, where each costs more.
async fn the_store_agrees_with_in_order_delivery(f: StoreFixture) {
    let cases = match f.backend {
        Backend::Sqlite => 24,
        Backend::Postgres => 12,
    };
    let mut runner = TestRunner::new(config(cases));
    let case = AtomicU32::new(0);
    let runtime = tokio::runtime::Handle::current();
    // The runner is synchronous; the store is async: this worker thread
    // blocks on each case while the runtime's other worker drives the I/O.
    let result = tokio::task::block_in_place(|| {
        runner.run(&arb_delivery(), |(history, delivered)| {
            let n = case.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(store_agrees(&f.store, n, &history, &delivered));
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Case `n`: the history in order under source `in-order-n`, the deliveries
/// shuffled under `shuffled-n` (in batches of two: duplicates may share one).
async fn store_agrees(
    store: &Arc<dyn Store>,
    n: u32,
    history: &[EnrollmentEvent],
    delivered: &[EnrollmentEvent],
) {
    let (ordered, shuffled) = (format!("in-order-{n}"), format!("shuffled-{n}"));
    let to_new = |source: &str, e: &EnrollmentEvent| NewEvent {
        source: source.into(),
        event_id: e.event_id.clone(),
        topic: format!("enrollment.{}", action(e.topic)),
        created_at: e.envelope_created_at,
        received_at: Utc::now(),
        body: body_of(e),
        enrollment: Some(e.clone()),
        learning: None,
        user_id: e.payload.user_id,
        course_id: e.payload.course_id,
        traceparent: None,
    };
    let mut sorted = history.to_vec();
    sorted.sort_by_key(|e| e.version());
    for e in &sorted {
        store.append_batch(&[to_new(&ordered, e)]).await.unwrap();
    }
    let news: Vec<NewEvent> = delivered.iter().map(|e| to_new(&shuffled, e)).collect();
    for chunk in news.chunks(2) {
        store.append_batch(chunk).await.unwrap();
    }
    let (mut a, mut b) = (read(store, &ordered).await, read(store, &shuffled).await);
    for e in a.iter_mut().chain(b.iter_mut()) {
        e.source = String::new();
    }
    assert_eq!(a, b);
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!((check.changed, check.removed), (0, 0), "{check:?}");
}

async fn read(store: &Arc<dyn Store>, source: &str) -> Vec<Enrollment> {
    let filter = EnrollmentFilter {
        source: Some(source.to_owned()),
        ..EnrollmentFilter::default()
    };
    store
        .list_enrollments(&filter, &PageRequest::default(), at(0))
        .await
        .unwrap()
        .items
}

fn action(topic: EnrollmentTopic) -> &'static str {
    match topic {
        EnrollmentTopic::Created => "created",
        EnrollmentTopic::Progress => "progress",
        EnrollmentTopic::Completed => "completed",
        EnrollmentTopic::Trial => "trial",
        EnrollmentTopic::Backfill => "backfill",
    }
}

/// A Thinkific body carrying exactly this event (what the log re-folds from):
/// a webhook, or for a backfill the REST API's enrollment (flat fields,
/// progress as a fraction).
fn body_of(e: &EnrollmentEvent) -> String {
    let p = &e.payload;
    let ts = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
    let action = action(e.topic);
    if e.topic == EnrollmentTopic::Backfill {
        return serde_json::json!({
            "id": e.event_id,
            "resource": "enrollment",
            "action": action,
            "payload": {
                "id": p.id,
                "course_id": p.course_id,
                "course_name": p.course_name,
                "user_id": p.user_id,
                "user_email": p.email,
                "percentage_completed": p.percentage_completed.map(|v| v / 100.0),
                "is_free_trial": p.free_trial,
                "completed": p.completed,
                "started_at": ts(p.started_at),
                "completed_at": ts(p.completed_at),
                "expiry_date": ts(p.expiry_date),
                "updated_at": ts(p.updated_at),
            }
        })
        .to_string();
    }
    serde_json::json!({
        "id": e.event_id,
        "resource": "enrollment",
        "action": action,
        "created_at": ts(e.envelope_created_at),
        "payload": {
            "id": p.id,
            "course_id": p.course_id,
            "course": {"id": p.course_id, "name": p.course_name},
            "user": {"id": p.user_id, "email": p.email},
            "percentage_completed": p.percentage_completed.map(|v| format!("{v:.1}")),
            "free_trial": p.free_trial,
            "started_at": ts(p.started_at),
            "completed_at": ts(p.completed_at),
            "expiry_date": ts(p.expiry_date),
            "updated_at": ts(p.updated_at),
        }
    })
    .to_string()
}
