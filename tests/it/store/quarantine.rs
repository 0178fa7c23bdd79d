//! The quarantine: rejected deliveries kept with their reason and raw bytes.

use chrono::Duration;
use enrollhook::store::{NewQuarantine, PageRequest};

use super::{Fixture, t};
use crate::common::backend::on_both_backends;

on_both_backends!(quarantine_lifecycle,);

fn rejected(n: u8) -> NewQuarantine {
    NewQuarantine {
        source: "default".into(),
        received_at: t(i64::from(n)) + Duration::nanoseconds(123_456_789),
        reason_code: "bad_signature".into(),
        reason: format!("signature {n} does not match"),
        headers: vec![
            ("x-thinkific-hmac-sha256".into(), format!("sig{n}")),
            ("content-type".into(), "application/json".into()),
        ],
        body: vec![0xff, n, b'{'],
    }
}

async fn quarantine_lifecycle(f: Fixture) {
    let s = &f.store;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(s.quarantine(rejected(n)).await.unwrap());
    }
    let first = s
        .list_quarantine(
            None,
            &PageRequest {
                limit: 2,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[2], ids[1]],
        "newest first"
    );
    let rest = s
        .list_quarantine(
            None,
            &PageRequest {
                limit: 2,
                cursor: first.next_cursor,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert!(rest.next_cursor.is_none());

    let r = s.get_quarantine(ids[1]).await.unwrap().unwrap();
    assert_eq!(r.body, vec![0xff, 1, b'{'], "raw bytes, even invalid UTF-8");
    assert_eq!(r.body_size, 3);
    assert_eq!(r.header("X-Thinkific-Hmac-Sha256"), Some("sig1"));
    assert_eq!(r.headers[1].0, "content-type", "header order kept");
    assert_eq!(r.received_at, t(1) + Duration::microseconds(123_456));
    assert!(r.resolved_at.is_none());
    s.resolve_quarantine(ids[1], "admitted as event 42")
        .await
        .unwrap();
    let r = s.get_quarantine(ids[1]).await.unwrap().unwrap();
    assert_eq!(r.resolution.as_deref(), Some("admitted as event 42"));
    assert!(r.resolved_at.is_some());
    assert!(s.get_quarantine(-1).await.unwrap().is_none());

    // Bounded: pruning keeps the newest.
    assert_eq!(s.prune_quarantine(10, u64::MAX).await.unwrap(), 0);
    assert_eq!(s.prune_quarantine(2, u64::MAX).await.unwrap(), 1);
    assert!(s.get_quarantine(ids[0]).await.unwrap().is_none());
    assert!(s.get_quarantine(ids[1]).await.unwrap().is_some());

    // Importing recognises what is already there.
    assert!(!s.import_quarantine(&r).await.unwrap());
    let mut moved = r.clone();
    moved.body = b"other".to_vec();
    assert!(s.import_quarantine(&moved).await.unwrap());
    assert!(!s.import_quarantine(&moved).await.unwrap());
    let newest = &s
        .list_quarantine(None, &PageRequest::default())
        .await
        .unwrap()
        .items[0];
    assert_eq!(
        (newest.resolution.as_deref(), newest.resolved_at),
        (Some("admitted as event 42"), r.resolved_at)
    );
}
