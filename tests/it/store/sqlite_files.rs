//! What only the SQLite backend has: the projection in a file of its own
//! beside the log, projected a little after large batches commit, derived
//! again when missing, stale, foreign or of an older schema, and holding the
//! index of events by topic.

use chrono::Utc;
use enrollhook::store::{AppendOutcome, EventFilter, NewEvent, PageRequest, SqliteStore, Store};
use enrollhook::thinkific;

use super::batch_event as event;
use crate::common::*;

/// Large batches are projected a little after they commit, and two processes
/// (here two stores) may append to one file: whichever reads first catches the
/// projection up, reading the other's events back from the log.
#[tokio::test]
async fn the_projection_catches_up_with_large_batches_from_two_writers() {
    let (dir, url) = fresh_db();
    let a = SqliteStore::open(&url, true).await.unwrap();
    let b = SqliteStore::open(&url, false).await.unwrap();
    let batch = |action: &str, pct: &str, day: u32, ids: std::ops::Range<i64>| -> Vec<NewEvent> {
        ids.map(|n| {
            let at = format!("2024-02-{day:02}T00:00:00Z");
            event("s", &format!("{action}-{pct}-{n}"), action, n, pct, &at)
        })
        .collect()
    };
    a.append_batch(&batch("created", "0", 1, 0..40))
        .await
        .unwrap();
    b.append_batch(&batch("progress", "50", 2, 0..40))
        .await
        .unwrap();
    a.append_batch(&batch("completed", "100", 3, 0..20))
        .await
        .unwrap();
    // Late: an older progress after the completions, from the other writer.
    b.append_batch(&batch("progress", "10", 1, 0..40))
        .await
        .unwrap();

    let seen_by_b = all_enrollments(&b).await;
    assert_eq!(seen_by_b.len(), 40);
    for e in &seen_by_b {
        let done = e.enrollment_id < 20;
        assert_eq!(e.event_count, if done { 4 } else { 3 }, "{e:?}");
        assert_eq!(e.completed, done, "{e:?}");
        assert_eq!(e.progress, if done { 100.0 } else { 50.0 }, "{e:?}");
    }
    assert_eq!(all_enrollments(&a).await, seen_by_b);
    let check = a.rebuild_projection(true).await.unwrap();
    assert_eq!((check.events, check.changed, check.removed), (140, 0, 0));
    drop((a, b, dir));
}

/// A templated forward reads its enrollment as projected through its event,
/// usually before the projector has got there: the store folds what the
/// projection lacks from the log (late events re-folded, as the projector
/// does) and must answer exactly what the caught-up projection holds.
#[tokio::test]
async fn a_read_ahead_of_the_projector_folds_what_it_lacks() {
    let (dir, url) = fresh_db();
    let reader = SqliteStore::open(&url, true).await.unwrap();
    // Another process writes, so the reader's projector is not handed these.
    let writer = SqliteStore::open(&url, false).await.unwrap();
    let at = |day: u32| format!("2024-02-{day:02}T00:00:00Z");
    let first = writer
        .append_batch(
            &(0..6)
                .map(|n| event("s", &format!("created-{n}"), "created", n, "0", &at(1)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    // Enrollments 0-2 move on; 1 completes; then a late, older progress of 0
    // and 1 arrives (they must be re-folded), and 3 only gets its late one.
    let mut rest = Vec::new();
    for n in 0..3 {
        rest.push(event("s", &format!("p50-{n}"), "progress", n, "50", &at(3)));
    }
    rest.push(event("s", "done-1", "completed", 1, "100", &at(4)));
    for n in [0, 1, 3] {
        rest.push(event("s", &format!("p10-{n}"), "progress", n, "10", &at(2)));
    }
    let outcomes = writer.append_batch(&rest).await.unwrap();
    let last = outcomes
        .iter()
        .chain(&first)
        .filter_map(|o| match o {
            AppendOutcome::Stored { seq } => Some(*seq),
            AppendOutcome::Duplicate => None,
        })
        .max()
        .unwrap();
    let ids: Vec<i64> = (0..7).collect();
    let mut ahead = reader.enrollments_through("s", &ids, last).await.unwrap();
    ahead.sort_by_key(|e| e.enrollment_id);
    // Through an earlier position the answer holds at least that much.
    let early = reader
        .enrollments_through("s", &[2], last - 3)
        .await
        .unwrap();
    assert_eq!(early.len(), 1);
    assert!(early[0].progress >= 50.0, "{early:?}");

    let caught_up = all_enrollments(&reader).await;
    assert_eq!(ahead.len(), 6, "enrollment 6 has no event: absent");
    assert_eq!(ahead, caught_up);
    assert!(
        ahead[1].completed && ahead[1].event_count == 4,
        "{:?}",
        ahead[1]
    );
    assert_eq!((ahead[0].progress, ahead[0].event_count), (50.0, 3));
    assert_eq!((ahead[3].progress, ahead[3].event_count), (10.0, 2));
    let one = reader.enrollment_through("s", 3, last).await.unwrap();
    assert_eq!(one.as_ref(), Some(&caught_up[3]));
    drop((reader, writer, dir));
}

async fn all_enrollments(store: &SqliteStore) -> Vec<enrollhook::projection::Enrollment> {
    let request = enrollhook::store::PageRequest {
        limit: 1000,
        cursor: None,
    };
    let mut items = store
        .list_enrollments(&Default::default(), &request, Utc::now())
        .await
        .unwrap()
        .items;
    items.sort_by_key(|e| e.enrollment_id);
    items
}

/// A projection that cannot be applied (here a trigger makes every enrollment
/// write fail) never costs a delivery: the events are stored, the projection
/// catches up once it can.
#[tokio::test]
async fn deliveries_are_stored_while_the_projection_fails() {
    let (_dir, url) = fresh_db();
    let store = SqliteStore::open(&url, true).await.unwrap();
    let mut side = sqlite_with_projection(&url).await;
    sqlx::query(
        "CREATE TRIGGER projection.broken BEFORE INSERT ON enrollments
         BEGIN SELECT RAISE(ABORT, 'projection broken'); END",
    )
    .execute(&mut side)
    .await
    .unwrap();

    let first = event("s", "a", "created", 1, "0", "2024-01-02T00:00:00Z");
    let second = event("s", "b", "progress", 1, "50", "2024-01-03T00:00:00Z");
    for e in [first, second] {
        let outcome = store.append_batch(std::slice::from_ref(&e)).await.unwrap();
        assert!(matches!(outcome[0], AppendOutcome::Stored { .. }));
    }
    assert_eq!(store.enrollment_events("s", 1).await.unwrap().len(), 2);
    assert_eq!(store.projection_waiting(), 2);
    assert!(store.get_enrollment("s", 1).await.unwrap().is_none());

    sqlx::query("DROP TRIGGER projection.broken")
        .execute(&mut side)
        .await
        .unwrap();
    let e = store.get_enrollment("s", 1).await.unwrap().unwrap();
    assert_eq!((e.event_count, e.progress), (2, 50.0));
    assert_eq!(store.projection_waiting(), 0);
    assert_eq!(store.rebuild_projection(true).await.unwrap().changed, 0);
}

fn remove_database(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// A consistent copy of an open database's main file (`VACUUM INTO`).
async fn backup(url: &str, to: &std::path::Path) {
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query("VACUUM INTO ?")
        .bind(to.display().to_string())
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The projection file is derived data: deleted, it is derived again; beside
/// an older backup of the main file, or another log altogether, it is derived
/// again from the log it now sits beside.
#[tokio::test]
async fn a_missing_stale_or_foreign_projection_file_is_derived_again() {
    let (dir, url) = fresh_db();
    let path = dir.path().join("enrollhook.db");
    let projection = enrollhook::store::sqlite_projector::projection_path(&path);
    let older = dir.path().join("older-backup.db");

    let store = SqliteStore::open(&url, true).await.unwrap();
    let first = event("s", "a", "created", 1, "0", "2024-01-02T00:00:00Z");
    store.append_batch(&[first]).await.unwrap();
    backup(&url, &older).await;
    let more = [
        event("s", "b", "progress", 1, "50", "2024-01-03T00:00:00Z"),
        event("s", "c", "created", 2, "0", "2024-01-03T00:00:00Z"),
    ];
    store.append_batch(&more).await.unwrap();
    let complete = all_enrollments(&store).await;
    assert_eq!(complete.len(), 2);
    drop(store);

    // Deleted: derived again, the same rows.
    remove_database(&projection);
    let store = SqliteStore::open(&url, true).await.unwrap();
    assert_eq!(all_enrollments(&store).await, complete);
    drop(store);

    // The older backup restored beside the newer projection: the projection
    // is ahead of the log, so it is derived again from the log as restored.
    remove_database(&path);
    std::fs::copy(&older, &path).unwrap();
    let store = SqliteStore::open(&url, true).await.unwrap();
    let restored = all_enrollments(&store).await;
    assert_eq!(restored.len(), 1);
    assert_eq!((restored[0].enrollment_id, restored[0].progress), (1, 0.0));
    assert_eq!(store.rebuild_projection(true).await.unwrap().changed, 0);
    drop(store);

    // Another log altogether (its own identity), even one that is longer.
    let (_other_dir, other_url) = fresh_db();
    let other = SqliteStore::open(&other_url, true).await.unwrap();
    let theirs: Vec<_> = (0..3)
        .map(|n| {
            event(
                "s",
                &format!("x{n}"),
                "created",
                10 + n,
                "0",
                "2024-01-04T00:00:00Z",
            )
        })
        .collect();
    other.append_batch(&theirs).await.unwrap();
    remove_database(&path);
    backup(&other_url, &path).await;
    drop(other);
    let store = SqliteStore::open(&url, true).await.unwrap();
    let ids: Vec<i64> = all_enrollments(&store)
        .await
        .iter()
        .map(|e| e.enrollment_id)
        .collect();
    assert_eq!(ids, [10, 11, 12]);
}

fn signup(id: &str) -> NewEvent {
    let body = serde_json::to_vec(&serde_json::json!({
        "id": id, "resource": "user", "action": "signup", "tenant_id": "59",
        "created_at": "2024-01-02T00:00:00Z",
        "payload": {"id": 5, "email": "new@example.com"}
    }))
    .unwrap();
    let envelope = thinkific::parse(&body, None).unwrap();
    NewEvent::from_envelope("s", &envelope, String::from_utf8(body).unwrap(), Utc::now())
}

async fn event_ids(
    store: &SqliteStore,
    topic: &str,
    after: Option<i64>,
    limit: u32,
) -> Vec<String> {
    let filter = EventFilter {
        topic: Some(topic.into()),
        after_seq: after,
        ..EventFilter::default()
    };
    let mut page = PageRequest {
        limit,
        cursor: None,
    };
    let mut ids = Vec::new();
    loop {
        let got = store.list_events(&filter, &page).await.unwrap();
        ids.extend(got.items.into_iter().map(|e| e.event_id));
        match got.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => return ids,
        }
    }
}

async fn expect_topics(store: &SqliteStore) {
    assert_eq!(
        event_ids(store, "enrollment.created", None, 1).await,
        ["a", "c"]
    );
    assert_eq!(
        event_ids(store, "enrollment.*", None, 2).await,
        ["a", "b", "c"]
    );
    assert_eq!(
        event_ids(store, "user.*", None, 100).await,
        ["u1", "u2", "u3"]
    );
    assert_eq!(
        event_ids(store, "user.signup", Some(3), 100).await,
        ["u2", "u3"]
    );
    assert!(event_ids(store, "order.*", None, 100).await.is_empty());
}

/// Events by topic are read through the projection file's `event_topics`
/// (the log keeps no index by topic): right at once after a delivery, right
/// when the projection file is derived again, and `rebuild` finds and mends
/// a damaged index.
#[tokio::test]
async fn events_by_topic_come_from_the_projection_file() {
    let (dir, url) = fresh_db();
    let path = dir.path().join("enrollhook.db");
    let store = SqliteStore::open(&url, true).await.unwrap();
    let batch = [
        event("s", "a", "created", 1, "0", "2024-01-02T00:00:00Z"),
        signup("u1"),
        event("s", "b", "progress", 1, "50", "2024-01-03T00:00:00Z"),
        event("s", "c", "created", 2, "0", "2024-01-03T00:00:00Z"),
        signup("u2"),
    ];
    store.append_batch(&batch).await.unwrap();
    store.append_batch(&[signup("u3")]).await.unwrap();
    expect_topics(&store).await;
    drop(store);

    // Derived again with the rest of the projection file.
    remove_database(&enrollhook::store::sqlite_projector::projection_path(&path));
    let store = SqliteStore::open(&url, true).await.unwrap();
    expect_topics(&store).await;

    // Damaged behind the service's back: one row lost, one wrong, one extra.
    let mut conn = sqlite_with_projection(&url).await;
    for sql in [
        "DELETE FROM projection.event_topics WHERE seq = 1",
        "UPDATE projection.event_topics SET topic = 'user.signin' WHERE seq = 2",
        "INSERT INTO projection.event_topics VALUES (99, 'user', 'user.signup')",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    drop(conn);
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!(check.index_rows, 4, "{check:?}"); // seq 1 missing, seq 2 twice, seq 99
    assert_eq!(store.rebuild_projection(false).await.unwrap().index_rows, 4);
    assert_eq!(store.rebuild_projection(true).await.unwrap().index_rows, 0);
    expect_topics(&store).await;
}

/// A projection file from before the activity counts (schema version 1, no
/// `activity_days`) is derived again when opened, counts included.
#[tokio::test]
async fn a_projection_file_of_an_older_schema_is_derived_again_with_activity_counts() {
    let (dir, url) = fresh_db();
    let path = dir.path().join("enrollhook.db");
    let projection = enrollhook::store::sqlite_projector::projection_path(&path);
    let store = SqliteStore::open(&url, true).await.unwrap();
    // Both began on 2024-01-01 (the helper's created_at); one completes.
    store
        .append_batch(&[
            event("s", "a", "created", 1, "0", "2024-01-02T00:00:00Z"),
            event("s", "b", "created", 2, "0", "2024-01-02T00:00:00Z"),
            event("s", "c", "completed", 2, "100", "2024-01-03T00:00:00Z"),
        ])
        .await
        .unwrap();
    let day = |d| chrono::NaiveDate::from_ymd_opt(2024, 1, d).unwrap();
    let query = enrollhook::store::ActivityQuery {
        source: None,
        course_id: None,
        from: day(1),
        to: day(3),
    };
    let counts = |days: Vec<enrollhook::store::DayActivity>| {
        days.iter()
            .map(|d| (d.enrolled, d.completed))
            .collect::<Vec<_>>()
    };
    // Completed at the event's version (no completed_at in the payload): January 3.
    let expected = vec![(2, 0), (0, 0), (0, 1)];
    assert_eq!(counts(store.activity(&query).await.unwrap()), expected);
    drop(store);

    // What the previous version left: no activity table, user_version 1.
    {
        use sqlx::Connection;
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", projection.display()))
                .await
                .unwrap();
        sqlx::raw_sql("DROP TABLE activity_days; PRAGMA user_version = 1;")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&url, true).await.unwrap();
    assert_eq!(counts(store.activity(&query).await.unwrap()), expected);
    assert_eq!(all_enrollments(&store).await.len(), 2);
}
