//! Property tests: the projection does not depend on the order (or the
//! repetition) in which Thinkific delivers an enrollment's events — both for
//! the pure rules and through a real SQLite store (incremental apply + re-folds).

use chrono::{DateTime, TimeZone, Utc};
use enrollhook::projection::{self, Apply, Enrollment, EnrollmentEvent};
use enrollhook::store::{EnrollmentFilter, NewEvent, PageRequest, SqliteStore, Store};
use enrollhook::thinkific::{EnrollmentPayload, EnrollmentTopic};
use proptest::prelude::*;

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

proptest! {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The same property through the real store: deliveries in a random order
    /// with duplicates give the row that in-order delivery gives, and `rebuild`
    /// agrees with both.
    #[test]
    fn the_sqlite_store_agrees((history, delivered) in arb_delivery()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
            let ordered = SqliteStore::open(&url("a.db"), true).await.unwrap();
            let shuffled = SqliteStore::open(&url("b.db"), true).await.unwrap();
            let to_new = |e: &EnrollmentEvent| NewEvent {
                source: "s".into(),
                event_id: e.event_id.clone(),
                topic: format!("enrollment.{}", action(e.topic)),
                created_at: e.envelope_created_at,
                received_at: Utc::now(),
                body: body_of(e),
                enrollment: Some(e.clone()),
                course_id: e.payload.course_id,
            };
            let mut sorted = history.clone();
            sorted.sort_by_key(|e| e.version());
            for e in &sorted {
                ordered.append_batch(&[to_new(e)]).await.unwrap();
            }
            // Shuffled, in batches of two (duplicates may share a batch).
            let news: Vec<NewEvent> = delivered.iter().map(to_new).collect();
            for chunk in news.chunks(2) {
                shuffled.append_batch(chunk).await.unwrap();
            }
            let (a, b) = (read(&ordered).await, read(&shuffled).await);
            assert_eq!(&a, &b);
            assert_eq!(shuffled.rebuild_projection(true).await.unwrap().changed, 0);
            assert_eq!(ordered.rebuild_projection(true).await.unwrap().changed, 0);
        });
    }
}

async fn read(store: &SqliteStore) -> Vec<Enrollment> {
    let filter = EnrollmentFilter::default();
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
