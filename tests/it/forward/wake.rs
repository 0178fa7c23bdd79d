//! New deliveries leave at once: a commit that writes outbox rows wakes the
//! forwarder (in-process; on PostgreSQL through LISTEN/NOTIFY, across
//! instances). The poll is set to a minute here, so each forward that arrives
//! within the few seconds allowed was woken, not polled.

use super::*;

use std::sync::Arc;

use enrollhook::store::{self, NewEvent, Store};

/// Longer than any test waits: only a wake can make a forward arrive in time.
const NEVER: Duration = Duration::from_secs(60);
/// Generous: a woken forward takes milliseconds.
const SOON: Duration = Duration::from_secs(5);

fn woken_forwarding() -> ForwardConfig {
    ForwardConfig {
        poll_interval: NEVER,
        timeout: Duration::from_secs(5),
        ..fast_forwarding("50ms")
    }
}

fn progress(event_id: &str, enrollment_id: i64) -> Vec<u8> {
    enrollment_event(
        event_id,
        "progress",
        enrollment_id,
        1,
        "10.0",
        "2024-05-01T00:00:00Z",
    )
}

fn ids_of(got: &[destination::Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect()
}

on_both_backends!(
    multi_thread: deliveries_and_replays_are_forwarded_without_waiting_for_the_poll,
    the_next_ordered_delivery_leaves_when_the_previous_is_recorded,
);

async fn deliveries_and_replays_are_forwarded_without_waiting_for_the_poll(db: TestDatabase) {
    let dest = Destination::start().await;
    let app = db.serve(|c| c.forward = woken_forwarding()).await;
    subscribe(&app, json!({"url": dest.url, "topics": ["*"]})).await;
    // Let the worker's first claim (at start, nothing due) finish and the
    // worker settle into its minute-long wait.
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(app.deliver(&progress("wake-1", 1)).await.0, 200);
    let got = dest.wait_for(1, SOON).await;
    assert_eq!(ids_of(&got), ["evt_default_wake-1"]);

    // A second delivery after the worker went back to waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.deliver(&progress("wake-2", 2)).await.0, 200);
    let got = dest.wait_for(2, SOON).await;
    assert_eq!(ids_of(&got)[1], "evt_default_wake-2");

    // A replay writes outbox rows too, and wakes the worker the same way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, replayed) = post_json(&app, "/api/events/default/wake-1/replay", json!({})).await;
    assert_eq!((status, replayed["replayed"].as_u64()), (200, Some(1)));
    let got = dest.wait_for(3, SOON).await;
    assert_eq!(ids_of(&got)[2], "evt_default_wake-1");
}

/// In an ordered subscription the second event of an enrollment becomes due
/// only when the first is recorded: recording wakes the worker too.
async fn the_next_ordered_delivery_leaves_when_the_previous_is_recorded(db: TestDatabase) {
    let dest = Destination::start().await;
    // The first forward is answered slowly, so the second event is committed
    // (and its wake spent on a claim that finds nothing due) while it is in flight.
    dest.script([Reply::Hang(Duration::from_millis(700))]);
    let app = db.serve(|c| c.forward = woken_forwarding()).await;
    subscribe(
        &app,
        json!({"url": dest.url, "topics": ["enrollment.*"], "ordered": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.deliver(&progress("ord-1", 9)).await.0, 200);
    dest.wait_for(1, SOON).await;
    assert_eq!(app.deliver(&progress("ord-2", 9)).await.0, 200);
    let got = dest.wait_for(2, SOON).await;
    assert_eq!(ids_of(&got), ["evt_default_ord-1", "evt_default_ord-2"]);
}

/// What `append_batch` gets for a delivery body (another instance's ingest).
fn stored_event(body: &[u8]) -> NewEvent {
    let envelope = enrollhook::thinkific::parse(body, None).unwrap();
    NewEvent::from_envelope(
        "default",
        &envelope,
        String::from_utf8(body.to_vec()).unwrap(),
        chrono::Utc::now(),
    )
}

/// The process id of the forwarder's LISTEN connection on this database.
async fn listener_pid(conn: &mut sqlx::PgConnection) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN %'",
    )
    .fetch_optional(conn)
    .await
    .unwrap()
}

async fn wait_for_listener(conn: &mut sqlx::PgConnection, other_than: Option<i32>) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(pid) = listener_pid(conn).await
            && Some(pid) != other_than
        {
            return pid;
        }
        assert!(start.elapsed() < SOON, "no LISTEN connection in {SOON:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Instance A (a store, no forwarder) commits the delivery; instance B's
/// forwarder hears A's NOTIFY and forwards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_one_instance_wakes_another_instances_forwarder() {
    let dest = Destination::start().await;
    let b = TestDatabase::create(Backend::Postgres)
        .await
        .serve(|c| c.forward = woken_forwarding())
        .await;
    let db = b.pg.as_ref().unwrap();
    subscribe(&b, json!({"url": dest.url, "topics": ["*"]})).await;
    let a: Arc<dyn Store> = store::open(&db.url, false).await.unwrap();
    wait_for_listener(&mut db.connect().await, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    a.append_batch(&[stored_event(&progress("from-a", 1))])
        .await
        .unwrap();
    let got = dest.wait_for(1, SOON).await;
    assert_eq!(ids_of(&got), ["evt_default_from-a"]);
}

/// The LISTEN connection, terminated by the server, comes back and wakes the
/// forwarder for the next commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listen_connection_is_reestablished_and_wakes_again() {
    let dest = Destination::start().await;
    let app = TestDatabase::create(Backend::Postgres)
        .await
        .serve(|c| c.forward = woken_forwarding())
        .await;
    let db = app.pg.as_ref().unwrap();
    subscribe(&app, json!({"url": dest.url, "topics": ["*"]})).await;
    let mut admin = db.connect().await;
    let first = wait_for_listener(&mut admin, None).await;

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    let second = wait_for_listener(&mut admin, Some(first)).await;
    assert_ne!(first, second);
    // The wake raised on reconnecting is spent before the delivery.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another instance's commit: only the new LISTEN connection can wake this one.
    let other: Arc<dyn Store> = store::open(&db.url, false).await.unwrap();
    other
        .append_batch(&[stored_event(&progress("after-drop", 1))])
        .await
        .unwrap();
    let got = dest.wait_for(1, SOON).await;
    assert_eq!(ids_of(&got), ["evt_default_after-drop"]);
}
