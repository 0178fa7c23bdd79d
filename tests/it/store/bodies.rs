//! Bodies stored compressed (zstd with the database's dictionary) read back
//! byte for byte: the published samples and bodies the dictionary never saw;
//! a row stored before compression still reads; a corrupt frame is an error.

use enrollhook::store::{EventFilter, PageRequest, StoreError};

use super::{Fixture, new_event, tamper};
use enrollhook::maintenance::copy::copy;

use crate::common::backend::{Backend, TestDatabase, on_both_backends};

on_both_backends!(
    samples_and_held_out_bodies_round_trip_compressed,
    a_row_stored_before_compression_still_reads,
    a_corrupt_frame_is_an_error_naming_the_event,
    rows_of_an_older_dictionary_read_after_a_newer_becomes_current,
    copy_to_the_other_backend_and_back_keeps_every_body,
);

fn held_out() -> Vec<(String, String)> {
    let unicode = r#"{"id":"u1","resource":"user","action":"signup","tenant_id":"59","created_at":"2024-05-01T12:00:00Z","payload":{"first_name":"Zoë 😀 ñandú ﷽ \u0000","last_name":"Ø\\\"q"}}"#;
    let formatted = "{\n    \"id\" : \"f1\",\r\n\t\"resource\": \"order\",  \"action\":\"created\",\n  \"tenant_id\":\"59\", \"created_at\":\"2024-05-01T12:00:00Z\",\n  \"payload\": { \"amount\" : 1.50e2 }\n}\n\n";
    let huge = format!(
        r#"{{"id":"h1","resource":"order","action":"created","tenant_id":"59","created_at":"2024-05-01T12:00:00Z","payload":{{"note":"{}"}}}}"#,
        (0..60_000)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect::<String>()
    );
    vec![
        ("u1".into(), unicode.into()),
        ("f1".into(), formatted.into()),
        ("h1".into(), huge),
    ]
}

/// The held-out bodies and the published samples, by envelope id.
fn every_body() -> Vec<(String, String)> {
    let mut expected = held_out();
    for name in [
        "created",
        "progress",
        "completed",
        "lesson",
        "order",
        "signup",
    ] {
        let body = enrollhook::thinkific::samples::by_name(name).unwrap();
        let id = enrollhook::thinkific::parse(body.as_bytes(), None)
            .unwrap()
            .id;
        expected.push((id, body.to_owned()));
    }
    expected
}

async fn samples_and_held_out_bodies_round_trip_compressed(f: Fixture) {
    let s = &f.store;
    let expected = every_body();
    let events: Vec<_> = expected
        .iter()
        .map(|(_, b)| new_event("default", b.as_bytes()))
        .collect();
    s.append_batch(&events).await.unwrap();
    for (id, body) in &expected {
        let got = s.get_event("default", id, None).await.unwrap().unwrap();
        assert_eq!(got.body.as_bytes(), body.as_bytes(), "event {id}");
    }
    let page = s
        .list_events(&EventFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), expected.len());
    for e in &page.items {
        let (_, body) = expected.iter().find(|(id, _)| *id == e.event_id).unwrap();
        assert_eq!(e.body.as_bytes(), body.as_bytes());
    }
    // Stored compressed: no text in `body`, a frame and its dictionary.
    let uncompressed = count(
        &f,
        "SELECT COUNT(*) FROM events WHERE body <> '' OR body_dict IS NULL",
    )
    .await;
    assert_eq!(uncompressed, 0);
}

async fn a_row_stored_before_compression_still_reads(f: Fixture) {
    let (id, body) = held_out().remove(1);
    f.store
        .append_batch(&[new_event("default", body.as_bytes())])
        .await
        .unwrap();
    // What migration 18/17 leaves a row stored before it: its text, no frame.
    tamper(
        &f,
        &format!(
            "UPDATE events SET body = '{}', body_zstd = NULL, body_dict = NULL",
            body.replace('\'', "''")
        ),
    )
    .await;
    let got = f
        .store
        .get_event("default", &id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.body, body);
}

async fn a_corrupt_frame_is_an_error_naming_the_event(f: Fixture) {
    let (id, body) = held_out().remove(0);
    f.store
        .append_batch(&[new_event("default", body.as_bytes())])
        .await
        .unwrap();
    let garbage = if f.backend == Backend::Sqlite {
        "x'28b52ffd00ff'"
    } else {
        "'\\x28b52ffd00ff'::bytea"
    };
    tamper(&f, &format!("UPDATE events SET body_zstd = {garbage}")).await;
    let e = f.store.get_event("default", &id, None).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert!(e.to_string().contains(&format!("event `{id}`")), "{e}");
}

async fn rows_of_an_older_dictionary_read_after_a_newer_becomes_current(f: Fixture) {
    let first = enrollhook::thinkific::samples::CREATED;
    f.store
        .append_batch(&[new_event("default", first.as_bytes())])
        .await
        .unwrap();
    // A second dictionary, trained on other bodies, made current.
    let samples: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                r#"{{"id":"d{i}","resource":"order","action":"created","tenant_id":"7","created_at":"2024-05-01T12:00:00Z","payload":{{"amount":{i},"item":"Course {}"}}}}"#,
                i % 17
            )
        })
        .collect();
    let second = zstd::dict::from_samples(&samples, 16 * 1024).unwrap();
    let id = f.store.add_body_dictionary(&second, true).await.unwrap();
    // Reopened: stores opened from now on compress with the new one.
    let Fixture {
        store,
        backend,
        url,
        _db,
    } = f;
    drop(store);
    let f = Fixture {
        store: enrollhook::store::open(&url, true).await.unwrap(),
        backend,
        url,
        _db,
    };
    let store = &f.store;
    store
        .append_batch(&[new_event("default", samples[5].as_bytes())])
        .await
        .unwrap();
    let dicts: Vec<i64> = {
        let one = count(&f, "SELECT COUNT(DISTINCT body_dict) FROM events").await;
        let newest = count(&f, "SELECT body_dict FROM events WHERE event_id = 'd5'").await;
        vec![one, newest]
    };
    assert_eq!(
        dicts,
        vec![2, id],
        "one row per dictionary, the new one with the new"
    );
    let created = enrollhook::thinkific::parse(first.as_bytes(), None)
        .unwrap()
        .id;
    let old = store
        .get_event("default", &created, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.body, first);
    let new = store
        .get_event("default", "d5", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.body, samples[5]);
}

async fn copy_to_the_other_backend_and_back_keeps_every_body(f: Fixture) {
    let expected = every_body();
    let events: Vec<_> = expected
        .iter()
        .map(|(_, b)| new_event("default", b.as_bytes()))
        .collect();
    f.store.append_batch(&events).await.unwrap();
    let other = match f.backend {
        Backend::Sqlite => Backend::Postgres,
        Backend::Postgres => Backend::Sqlite,
    };
    let (there_db, back_db) = (
        TestDatabase::create(other).await,
        TestDatabase::create(f.backend).await,
    );
    let there = enrollhook::store::open(&there_db.url, true).await.unwrap();
    let back = enrollhook::store::open(&back_db.url, true).await.unwrap();
    copy(f.store.as_ref(), there.as_ref()).await.unwrap();
    copy(there.as_ref(), back.as_ref()).await.unwrap();
    for store in [&there, &back] {
        for (id, body) in &expected {
            let got = store.get_event("default", id, None).await.unwrap().unwrap();
            assert_eq!(got.body.as_bytes(), body.as_bytes(), "event {id}");
        }
    }
}

/// A number the fixture's database answers, behind the store's back.
async fn count(f: &Fixture, sql: &str) -> i64 {
    if f.backend == Backend::Sqlite {
        let mut conn = crate::common::sqlite_with_projection(&f.url).await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&f.url).await.unwrap();
        let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    }
}
