//! `enrollhook copy`: moving an install between SQLite and PostgreSQL.

use super::*;

/// What must survive a copy: the log (in order), the projection, the quarantine.
async fn snapshot(
    s: &Arc<dyn Store>,
) -> (
    Vec<String>,
    Vec<enrollhook::projection::Enrollment>,
    Vec<String>,
) {
    let events = all_events(s)
        .await
        .into_iter()
        .map(|e| {
            format!(
                "{}|{}|{}|{:?}|{}|{:?}|{}",
                e.source, e.event_id, e.topic, e.created_at, e.received_at, e.enrollment_id, e.body
            )
        })
        .collect();
    let quarantine = s
        .list_quarantine(
            None,
            &PageRequest {
                limit: 1000,
                cursor: None,
            },
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|q| {
            format!(
                "{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
                q.source,
                q.received_at,
                q.reason_code,
                q.reason,
                q.headers,
                q.body,
                q.resolved_at,
                q.resolution
            )
        })
        .collect();
    (events, all_enrollments(s).await, quarantine)
}

#[tokio::test]
async fn copy_moves_an_install_both_ways_and_is_safe_to_repeat() {
    // An SQLite install with out-of-order events, another topic and quarantine.
    let app = spawn_app().await;
    for (e, v) in [(1, 3), (1, 1), (1, 5), (2, 2), (3, 4), (2, 1)] {
        assert_eq!(app.deliver(&versioned(e, v).1).await.0, 200);
    }
    let order = br#"{"id":"o-1","resource":"order","action":"created","tenant_id":"59","payload":{"id":7}}"#;
    assert_eq!(app.deliver(order).await.0, 200);
    let forged = versioned(4, 1).1;
    assert_eq!(
        app.deliver_to("/webhooks/thinkific", &forged, Some("00ff"))
            .await
            .0,
        401
    );
    assert_eq!(
        app.deliver_to(
            "/webhooks/thinkific",
            b"not json",
            Some(&sign(SECRET.as_bytes(), b"not json"))
        )
        .await
        .0,
        400
    );
    let sqlite = app.store();
    let q = sqlite
        .list_quarantine(None, &PageRequest::default())
        .await
        .unwrap()
        .items;
    assert_eq!(q.len(), 2);
    sqlite
        .resolve_quarantine(q[1].id, "looked at")
        .await
        .unwrap();
    let original = snapshot(&sqlite).await;

    let db = TestDb::create().await;
    let pg = store::open(&db.url, true).await.unwrap();
    let report = enrollhook::maintenance::copy::copy(sqlite.as_ref(), pg.as_ref())
        .await
        .unwrap();
    assert_eq!(
        (
            report.events,
            report.events_added,
            report.quarantine,
            report.quarantine_added
        ),
        (7, 7, 2, 2)
    );
    assert_eq!(snapshot(&pg).await, original);
    assert_projection_consistent(&pg).await;

    // Again, through the command line: nothing is added.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enrollhook"))
        .args(["copy", "--from", &app.database_url, "--to", &db.url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("7 events read, 0 added")
            && stdout.contains("2 quarantined deliveries read, 0 added"),
        "{stdout}"
    );
    assert_eq!(snapshot(&pg).await, original);

    // And back, into a fresh SQLite file.
    let (_dir, url) = fresh_db();
    let back = store::open(&url, true).await.unwrap();
    enrollhook::maintenance::copy::copy(pg.as_ref(), back.as_ref())
        .await
        .unwrap();
    assert_eq!(snapshot(&back).await, original);
    assert_eq!(
        enrollhook::maintenance::copy::copy(pg.as_ref(), back.as_ref())
            .await
            .unwrap()
            .events_added,
        0
    );
}
