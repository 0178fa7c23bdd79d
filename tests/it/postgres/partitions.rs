//! PostgreSQL's event log partitioned by month (migration 23): retention
//! drops whole months of prunable events and prunes the rest row by row, a
//! redelivery of a dropped event is still a duplicate, a month another
//! instance dropped is made again, and an existing unpartitioned log moves.

use chrono::{DateTime, TimeZone, Utc};
use enrollhook::store::{self, AppendOutcome, NewEvent};
use sqlx::Connection as _;

use super::TestDb;

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
}

/// An order of student `user` (prunable: no enrollment), received at `received_at`.
fn order(id: &str, user: i64, received_at: DateTime<Utc>) -> NewEvent {
    let body = format!(
        r#"{{"id":"{id}","resource":"order","action":"created","tenant_id":"59","created_at":"2026-01-01T00:00:00Z","payload":{{"id":5,"user_id":{user},"amount_cents":1000}}}}"#
    );
    let envelope = enrollhook::thinkific::parse(body.as_bytes(), None).unwrap();
    NewEvent::from_envelope("default", &envelope, body, received_at)
}

/// A progress event of enrollment 1 (kept: retention never prunes it).
fn progress(id: &str, received_at: DateTime<Utc>) -> NewEvent {
    let body =
        crate::common::enrollment_event(id, "progress", 1, 7, "40.0", "2026-01-15T10:00:00Z");
    let envelope = enrollhook::thinkific::parse(&body, None).unwrap();
    NewEvent::from_envelope(
        "default",
        &envelope,
        String::from_utf8(body).unwrap(),
        received_at,
    )
}

async fn partitions(db: &TestDb) -> Vec<String> {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_partition_tree('events') AS t
         JOIN pg_class AS c ON c.oid = t.relid WHERE t.isleaf ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn retention_drops_whole_prunable_months_and_their_ids_stay_duplicates() {
    let db = TestDb::create().await;
    let s = store::open(&db.url, true).await.unwrap();
    s.append_batch(&[
        order("o-jan", 41, at(2026, 1, 15)),
        progress("e-jan", at(2026, 1, 15)),
        order("o-mar", 41, at(2026, 3, 10)),
        order("o-apr", 41, at(2026, 4, 2)),
    ])
    .await
    .unwrap();
    let made = partitions(&db).await;
    for month in ["y2026m01", "y2026m03", "y2026m04"] {
        for side in ["kept", "prunable"] {
            let name = format!("events_{side}_{month}");
            assert!(made.contains(&name), "{name} in {made:?}");
        }
    }
    let before = s.student("default", 41, 100).await.unwrap().events.len();
    assert_eq!(before, 3);

    // January lies wholly before the cutoff: its prunable partition goes;
    // March does not (it ends after the cutoff): its old row is pruned.
    let report = s.prune_events(at(2026, 3, 20)).await.unwrap();
    assert_eq!(report.partitions_dropped, 1, "{report:?}");
    assert_eq!(report.events, 2, "one dropped, one pruned: {report:?}");
    let left = partitions(&db).await;
    assert!(!left.contains(&"events_prunable_y2026m01".to_owned()));
    assert!(
        left.contains(&"events_kept_y2026m01".to_owned()),
        "{left:?}"
    );

    assert!(
        s.get_event("default", "o-jan", None)
            .await
            .unwrap()
            .is_none()
    );
    let march = s
        .get_event("default", "o-mar", None)
        .await
        .unwrap()
        .unwrap();
    assert!(march.pruned_at.is_some() && march.body.is_empty());
    let kept = s
        .get_event("default", "e-jan", None)
        .await
        .unwrap()
        .unwrap();
    assert!(kept.pruned_at.is_none() && !kept.body.is_empty());
    let april = s
        .get_event("default", "o-apr", None)
        .await
        .unwrap()
        .unwrap();
    assert!(april.pruned_at.is_none());

    // Redeliveries of dropped and pruned events are duplicates.
    let again = s
        .append_batch(&[
            order("o-jan", 41, Utc::now()),
            order("o-mar", 41, Utc::now()),
        ])
        .await
        .unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate; 2]);

    // The student's timeline no longer names the dropped event, and the
    // projection and its indexes still equal a rebuild from what is left.
    let timeline: Vec<String> = s
        .student("default", 41, 100)
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(timeline, ["o-mar", "o-apr"]);
    let check = s.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (
            check.changed,
            check.removed,
            check.index_rows,
            check.learning
        ),
        (0, 0, 0, 0),
        "{check:?}"
    );

    // A second run drops and prunes nothing more.
    let twice = s.prune_events(at(2026, 3, 20)).await.unwrap();
    assert_eq!((twice.events, twice.partitions_dropped), (0, 0));

    // `copy` carries the dropped event's identity: in a SQLite copy it is
    // a pruned row, and its redelivery a duplicate there too.
    let (_dir, sqlite_url) = crate::common::fresh_db();
    let copy = store::open(&sqlite_url, true).await.unwrap();
    let report = enrollhook::maintenance::copy::copy(s.as_ref(), copy.as_ref())
        .await
        .unwrap();
    assert_eq!((report.events, report.events_added), (4, 4), "{report:?}");
    let carried = copy
        .get_event("default", "o-jan", None)
        .await
        .unwrap()
        .unwrap();
    assert!(carried.pruned_at.is_some() && carried.body.is_empty());
    assert_eq!(carried.received_at, at(2026, 1, 15));
    let again = copy
        .append_batch(&[order("o-jan", 41, Utc::now())])
        .await
        .unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate]);

    // An old event arriving into the dropped month (an import) is stored:
    // the month is made again.
    let late = s
        .append_batch(&[order("o-jan-2", 41, at(2026, 1, 20))])
        .await
        .unwrap();
    assert!(matches!(late[0], AppendOutcome::Stored { .. }), "{late:?}");
}

#[tokio::test]
async fn a_month_another_instance_dropped_is_made_again() {
    let db = TestDb::create().await;
    let a = store::open(&db.url, true).await.unwrap();
    let b = store::open(&db.url, true).await.unwrap();
    a.append_batch(&[order("o-1", 41, at(2025, 6, 3))])
        .await
        .unwrap();
    // `b` drops June; `a` still believes it exists.
    let report = b.prune_events(at(2025, 8, 1)).await.unwrap();
    assert_eq!(report.partitions_dropped, 1, "{report:?}");
    let out = a
        .append_batch(&[order("o-2", 41, at(2025, 6, 4))])
        .await
        .expect("the batch is retried after making the month again");
    assert!(matches!(out[0], AppendOutcome::Stored { .. }), "{out:?}");
    assert!(a.get_event("default", "o-2", None).await.unwrap().is_some());
}

/// The schema as it was before migration 23, with events in three months.
#[tokio::test]
async fn the_migration_moves_an_unpartitioned_log() {
    let db = TestDb::create().await;
    {
        let old = store::open(&db.url, true).await.unwrap();
        drop(old);
        // Migration 23 undone: the log as an unpartitioned table again.
        let mut conn = db.connect().await;
        sqlx::raw_sql(crate::common::pg::UNPARTITION_LOG)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql("DELETE FROM enrollhook_migrations WHERE version = 23")
            .execute(&mut conn)
            .await
            .unwrap();
        for (seq, id, enrollment, month) in [
            (1, "o-1", None, 1),
            (2, "e-1", Some(1i64), 2),
            (3, "o-2", None, 3),
        ] {
            sqlx::query(
                "INSERT INTO events (seq, source, event_id, topic, received_at, enrollment_id, body)
                 OVERRIDING SYSTEM VALUE VALUES ($1, 'default', $2, $3, $4, $5, '{}')",
            )
            .bind(seq)
            .bind(id)
            .bind(if enrollment.is_some() {
                "enrollment.progress"
            } else {
                "order.created"
            })
            .bind(at(2025, month, 10))
            .bind(enrollment)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        conn.close().await.unwrap();
    }

    let s = store::open(&db.url, true).await.unwrap();
    let made = partitions(&db).await;
    for name in [
        "events_prunable_y2025m01",
        "events_kept_y2025m02",
        "events_prunable_y2025m03",
    ] {
        assert!(made.contains(&name.to_owned()), "{name} in {made:?}");
    }
    let mut conn = db.connect().await;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, event_id::text FROM events ORDER BY seq")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [(1, "o-1".into()), (2, "e-1".into()), (3, "o-2".into())]
    );
    // Exactly once still holds for what was moved, and seq goes on.
    let again = s
        .append_batch(&[order("o-1", 41, Utc::now()), order("o-3", 41, Utc::now())])
        .await
        .unwrap();
    assert_eq!(again[0], AppendOutcome::Duplicate);
    assert!(
        matches!(again[1], AppendOutcome::Stored { seq } if seq > 3),
        "{again:?}"
    );
}
