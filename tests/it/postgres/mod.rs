//! Many instances on one PostgreSQL database, database outages, clients that
//! vanish mid-request, and moving an install between databases. Real servers on
//! port 0, the real PostgreSQL server (a fresh database per test), real SQLite files.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::backend::{TestDatabase, on_both_backends};
use common::pg::TestDb;
use common::*;
use enrollhook::config::ServeConfig;
use enrollhook::store::{self, EnrollmentFilter, EventFilter, PageRequest, Store, StoreError};
use enrollhook::thinkific::sign;
use rand::seq::SliceRandom;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod copy;
mod partitions;

async fn spawn_on(url: &str) -> TestApp {
    spawn_with(
        tempfile::tempdir().unwrap(),
        ServeConfig::new(url, Some(SECRET)),
    )
    .await
}

/// Event `v` (1 = oldest) of enrollment `e`: 5 versions per enrollment.
fn versioned(e: i64, v: i64) -> (String, Vec<u8>) {
    let id = format!("evt-{e}-{v}");
    let pct = if v == 5 {
        "100.0".to_owned()
    } else {
        format!("{}.0", v * 15)
    };
    let updated = format!("2024-06-01T10:{:02}:{:02}Z", e % 60, v);
    let action = if v == 5 { "completed" } else { "progress" };
    (
        id.clone(),
        enrollment_event(&id, action, e, 1 + e % 4, &pct, &updated),
    )
}

async fn all_events(s: &Arc<dyn Store>) -> Vec<store::StoredEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_events(
                &EventFilter::default(),
                &PageRequest {
                    limit: 1000,
                    cursor,
                },
            )
            .await
            .unwrap();
        out.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            return out;
        }
    }
}

async fn all_enrollments(s: &Arc<dyn Store>) -> Vec<enrollhook::projection::Enrollment> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_enrollments(
                &EnrollmentFilter::default(),
                &PageRequest {
                    limit: 1000,
                    cursor,
                },
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        out.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            return out;
        }
    }
}

/// The projection equals what a rebuild from the log gives, event counts
/// included, and the course totals what its enrollments add up to.
async fn assert_projection_consistent(s: &Arc<dyn Store>) {
    let report = s.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (report.changed, report.removed, report.courses),
        (0, 0, 0),
        "projection differs from rebuild: {report:?}"
    );
}

#[tokio::test]
async fn two_instances_store_each_event_once_and_keep_the_newest_state() {
    let db = TestDb::create().await;
    // Both instances start (and migrate) at the same time.
    let (a, b) = tokio::join!(spawn_on(&db.url), spawn_on(&db.url));

    // 20 enrollments × 5 versions = 100 events, each delivered twice (once per
    // instance), all 200 at once in random order.
    let mut deliveries = Vec::new();
    for e in 1..=20 {
        for v in 1..=5 {
            let (_, body) = versioned(e, v);
            deliveries.push((0, body.clone()));
            deliveries.push((1, body));
        }
    }
    deliveries.shuffle(&mut rand::rng());
    let apps = [&a, &b];
    let replies =
        futures::future::join_all(deliveries.iter().map(|(i, body)| apps[*i].deliver(body))).await;
    assert!(
        replies.iter().all(|(s, _)| *s == 200),
        "{:?}",
        replies.iter().find(|(s, _)| *s != 200)
    );
    let stored = replies
        .iter()
        .filter(|(_, b)| b["status"] == "stored")
        .count();
    let duplicates = replies
        .iter()
        .filter(|(_, b)| b["status"] == "duplicate")
        .count();
    assert_eq!((stored, duplicates), (100, 100));

    let store = a.store();
    let events = all_events(&store).await;
    assert_eq!(events.len(), 100);
    let enrollments = all_enrollments(&store).await;
    assert_eq!(enrollments.len(), 20);
    for e in &enrollments {
        assert_eq!(e.event_count, 5, "{e:?}");
        assert_eq!(
            e.version.event_id,
            format!("evt-{}-5", e.enrollment_id),
            "newest state"
        );
        assert!(e.completed && e.progress == 100.0);
    }
    assert_projection_consistent(&store).await;
    // Both instances added to the same per-course totals: 5 enrollments in
    // each of 4 courses, all completed.
    let stats = store.course_stats(None, chrono::Utc::now()).await.unwrap();
    assert_eq!(
        stats
            .iter()
            .map(|c| (c.course_id, c.enrollments, c.completed, c.average_progress))
            .collect::<Vec<_>>(),
        (1..=4).map(|c| (c, 5, 5, 100.0)).collect::<Vec<_>>()
    );
}

/// A TCP proxy in front of PostgreSQL that can be cut (every connection dies,
/// new ones are closed at once) and restored, without touching the shared server.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let cut_rx = cut.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = cut_rx.clone();
                if *cut.borrow() {
                    continue; // dropped: the database is "gone"
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }
    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

fn pg_addr(url: &str) -> SocketAddr {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let host = if opts.get_host() == "localhost" {
        "127.0.0.1"
    } else {
        opts.get_host()
    };
    format!("{host}:{}", opts.get_port()).parse().unwrap()
}

#[tokio::test]
async fn database_outage_answers_503_and_recovers_without_restart() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(pg_addr(&db.url)).await;
    let app = Arc::new(spawn_on(&db.url_via(proxy.addr)).await);

    // Eight clients deliver distinct events until told to stop.
    let body = |i: usize| versioned(1000 + i as i64 / 5, 1 + i as i64 % 5);
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (app, next, acknowledged, stop) = (
                app.clone(),
                next.clone(),
                acknowledged.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let (status, _) = app.deliver(&body(i).1).await;
                    if status == 200 {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    answers.push((i, status));
                    let pause = if status == 200 { 2 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                answers
            })
        })
        .collect();

    while acknowledged.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.set_cut(true);
    let (ready, _) = app.get("/readyz").await;
    assert_eq!(ready, 503, "/readyz fails while the database is away");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_restore = acknowledged.load(Ordering::SeqCst);
    proxy.set_cut(false);

    // Recovery without restart: ready again, and deliveries are acknowledged again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.get("/readyz").await.0 != 200
        || acknowledged.load(Ordering::SeqCst) < before_restore + 100
    {
        assert!(
            Instant::now() < deadline,
            "the service did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.await.unwrap());
    }
    assert!(
        answers.iter().all(|(_, s)| [200, 503].contains(s)),
        "only 200 or 503: {answers:?}"
    );
    let unavailable: Vec<usize> = answers
        .iter()
        .filter(|(_, s)| *s == 503)
        .map(|(i, _)| *i)
        .collect();
    let ok = answers.len() - unavailable.len();
    eprintln!(
        "outage: {ok} answered 200, {} answered 503",
        unavailable.len()
    );
    assert!(
        !unavailable.is_empty(),
        "deliveries during the outage are answered 503"
    );

    // Every acknowledged event is there: read the database directly, not via the proxy.
    let direct = store::open(&db.url, false).await.unwrap();
    let stored: std::collections::HashSet<String> = all_events(&direct)
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    for (i, status) in &answers {
        if *status == 200 {
            assert!(
                stored.contains(&body(*i).0),
                "event {} was acknowledged but is not stored",
                body(*i).0
            );
        }
    }

    // After recovery deliveries succeed again; Thinkific's retries of the 503s land once.
    for i in &unavailable {
        let (status, reply) = app.deliver(&body(*i).1).await;
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(all_events(&direct).await.len(), answers.len());
    assert_projection_consistent(&direct).await;
}

/// Sends a request and vanishes: after part of the body, or after all of it
/// without reading the reply.
async fn abandon(addr: SocketAddr, body: &[u8], whole: bool) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let head = format!(
        "POST /webhooks/thinkific HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-thinkific-hmac-sha256: {}\r\ncontent-length: {}\r\n\r\n",
        sign(SECRET.as_bytes(), body),
        body.len()
    );
    let sent = if whole { body.len() } else { body.len() / 2 };
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body[..sent]).await;
    // Dropped here: the connection closes before any reply is read.
}

/// Clients disconnecting mid-request at full speed, with normal deliveries mixed in.
async fn disconnect_storm(app: &TestApp) {
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300i64 {
        let (_, body) = versioned(2000 + i % 30, 1 + i % 5);
        let body = if i % 3 == 0 {
            versioned(3000 + i, 1).1
        } else {
            body
        };
        tasks.spawn(async move { abandon(addr, &body, i % 2 == 0).await });
    }
    // reqwest clients whose requests are dropped mid-flight (a proxy timing out).
    for i in 0..100i64 {
        let (client, base) = (app.client.clone(), app.base.clone());
        let body = versioned(2000 + i % 30, 1 + (i + 2) % 5).1;
        let request = tokio::spawn(async move {
            let _ = client
                .post(format!("{base}/webhooks/thinkific"))
                .header("x-thinkific-hmac-sha256", sign(SECRET.as_bytes(), &body))
                .body(body)
                .send()
                .await;
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(1500 * (i as u64 % 10))).await;
            request.abort();
        });
    }
    // Normal deliveries mixed in, answered while the storm goes on.
    for i in 0..20i64 {
        let (client, base) = (app.client.clone(), app.base.clone());
        let body = versioned(4000 + i, 1).1;
        tasks.spawn(async move {
            let resp = client
                .post(format!("{base}/webhooks/thinkific"))
                .header("x-thinkific-hmac-sha256", sign(SECRET.as_bytes(), &body))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // Let the writers finish whatever was handed to them before checking.
    let store = app.store();
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = all_events(&store).await.len();
        if now == last {
            break;
        }
        last = now;
    }
    assert!(last >= 20, "the normal deliveries were stored");
    // The service still works, and every stored event has its projection change.
    let (status, body) = app.deliver(&versioned(9999, 1).1).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("stored")),
        "{body}"
    );
    assert_projection_consistent(&store).await;
}

on_both_backends!(clients_that_disconnect_leave_nothing_half_done);

/// Hundreds of clients that vanish mid-request leave no transaction open, no
/// lock held and no event stored without its projection change.
async fn clients_that_disconnect_leave_nothing_half_done(db: TestDatabase) {
    let app = spawn_on(&db.url).await;
    disconnect_storm(&app).await;
    match db.pg() {
        Some(db) => {
            let mut conn = db.connect().await;
            // A batch still finishing is between two statements ("idle in
            // transaction", holding its locks) for a moment: a leak is one
            // that stays.
            let mut idle_in_tx: i64 = 0;
            let mut locks: Vec<(String, String, String)> = Vec::new();
            for _ in 0..30 {
                idle_in_tx = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
                )
                .bind(&db.name)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                locks = sqlx::query_as(
                    "SELECT a.state, l.locktype, l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE a.datname = $1 AND a.pid <> pg_backend_pid() AND a.state <> 'active'",
                )
                .bind(&db.name)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                if idle_in_tx == 0 && locks.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(idle_in_tx, 0, "connections left idle in a transaction");
            assert!(locks.is_empty(), "locks held by idle sessions: {locks:?}");
            let orphans: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events v WHERE enrollment_id IS NOT NULL AND NOT EXISTS
                   (SELECT 1 FROM enrollments e WHERE e.source = v.source AND e.enrollment_id = v.enrollment_id)",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(orphans, 0, "events stored without their projection change");
        }
        None => {
            // No transaction is left open: another connection can take the write lock at once.
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("PRAGMA busy_timeout = 100; BEGIN IMMEDIATE; ROLLBACK")
                .execute(&mut conn)
                .await
                .expect("the SQLite write lock is free");
        }
    }
}

#[tokio::test]
async fn serve_without_migrations_refuses_an_empty_database_clearly() {
    let db = TestDb::create().await;
    let err = store::open(&db.url, false)
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("enrollhook migrate"), "{err}");
    let mut config = ServeConfig::new(db.url.clone(), Some(SECRET));
    config.migrate = false;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    assert!(
        enrollhook::server::start(config, listener, false)
            .await
            .is_err()
    );
    // `migrate` then makes it usable; running it again is a no-op.
    store::open(&db.url, true).await.unwrap();
    store::open(&db.url, true).await.unwrap();
    store::open(&db.url, false)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_reported_not_hung() {
    // A port nobody listens on: opening fails with the database error.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let started = Instant::now();
    let err = store::open(&format!("postgres://postgres@{addr}/nothing"), true)
        .await
        .err()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        matches!(
            err.downcast_ref::<StoreError>(),
            Some(StoreError::Unavailable(_))
        ),
        "{err:#}"
    );
}

/// With several writers a transaction can commit after one that drew larger
/// seq values. A consumer tailing the feed must still see it: the feed is in
/// commit order and never shows what a running transaction could precede.
#[tokio::test]
async fn the_events_feed_never_skips_a_transaction_that_commits_late() {
    let db = TestDb::create().await;
    let s = store::open(&db.url, true).await.unwrap();
    let event = |id: &str| {
        let body = enrollment_event(id, "progress", 1, 7, "10", "2024-06-01T10:00:00Z");
        let envelope = enrollhook::thinkific::parse(&body, None).unwrap();
        store::NewEvent::from_envelope(
            "default",
            &envelope,
            String::from_utf8(body).unwrap(),
            chrono::Utc::now(),
        )
    };
    s.append_batch(&[event("first")]).await.unwrap();
    let page = |cursor: Option<String>| {
        let s = s.clone();
        async move {
            s.list_events(&EventFilter::default(), &PageRequest { limit: 100, cursor })
                .await
                .unwrap()
                .items
        }
    };
    let seen = page(None).await;
    assert_eq!(seen.len(), 1);
    let position = seen[0].position.clone();

    // A slow writer draws a seq and has not committed yet…
    let mut slow = db.connect().await;
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query(
        "INSERT INTO events (source, event_id, topic, received_at, body)
         VALUES ('default', 'slow', 'order.created', now(), '{}')",
    )
    .execute(&mut slow)
    .await
    .unwrap();
    // …while a faster one commits a later seq.
    s.append_batch(&[event("fast")]).await.unwrap();
    assert!(
        page(Some(position.clone())).await.is_empty(),
        "nothing after `first` is shown while an older transaction runs"
    );

    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    let next: Vec<String> = page(Some(position))
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        next,
        ["slow", "fast"],
        "both, in the order of their transactions"
    );
}
