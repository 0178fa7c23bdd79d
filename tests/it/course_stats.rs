//! Course statistics kept as running totals (SQLite and PostgreSQL): they
//! must equal a direct computation over the enrollments at any time of
//! reading, survive out-of-order and repeated events and enrollments moving
//! course, be the same on both backends, and be re-derived by `rebuild` and by
//! PostgreSQL's migration 18.

use crate::common;

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, Utc};
use common::backend::{Backend, TestDatabase, on_both_backends};
use common::*;
use enrollhook::simulate::{Expected, expected_courses};
use enrollhook::store::{ActivityQuery, CourseStats, EnrollmentFilter, PageRequest, Store};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[allow(clippy::too_many_arguments)]
fn event(
    id: &str,
    action: &str,
    enrollment: i64,
    course: i64,
    pct: &str,
    trial: bool,
    expiry: Option<DateTime<Utc>>,
    updated: &str,
) -> Vec<u8> {
    let mut body: serde_json::Value = serde_json::from_slice(&enrollment_event(
        id, action, enrollment, course, pct, updated,
    ))
    .unwrap();
    body["payload"]["free_trial"] = json!(trial);
    body["payload"]["expiry_date"] = json!(expiry.map(|t| t.to_rfc3339()));
    if action == "completed" {
        body["payload"]["completed_at"] = json!(updated);
    }
    serde_json::to_vec(&body).unwrap()
}

/// Totals sum progress exactly (integers); a float sum differs in the last digits.
fn rounded(mut stats: Vec<enrollhook::store::CourseStats>) -> Vec<enrollhook::store::CourseStats> {
    for c in &mut stats {
        c.average_progress = (c.average_progress * 1e9).round() / 1e9;
    }
    stats
}

/// The statistics recomputed from the enrollment rows, independently of the totals.
async fn direct(store: &dyn Store, now: DateTime<Utc>) -> Vec<enrollhook::store::CourseStats> {
    let mut enrollments = std::collections::BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_enrollments(
                &EnrollmentFilter::default(),
                &PageRequest {
                    limit: 1000,
                    cursor,
                },
                now,
            )
            .await
            .unwrap();
        enrollments.extend(page.items.into_iter().map(|e| (e.enrollment_id, e)));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let expected = Expected {
        source: "default".into(),
        enrollments,
        learning: Default::default(),
        events: 0,
    };
    expected_courses(&expected, now)
}

on_both_backends!(totals_match_a_direct_count_at_any_time_and_after_rebuild);

async fn totals_match_a_direct_count_at_any_time_and_after_rebuild(db: TestDatabase) {
    let backend = db.backend;
    let app = db.serve(|_| {}).await;
    let now = Utc::now();
    let this_month = now
        .date_naive()
        .with_day0(0)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    // Expiry dates around "now": last month, earlier this month (when possible),
    // later this month or next, next year, none.
    let earlier_this_month =
        (now - this_month > Duration::hours(2)).then(|| this_month + Duration::hours(1));
    let expiries = [
        Some(this_month - Duration::days(3)),
        earlier_this_month,
        Some(now + Duration::hours(1)),
        Some(now.checked_add_months(Months::new(12)).unwrap()),
        None,
    ];
    let mut n = 0;
    let mut deliveries = Vec::new();
    for (i, expiry) in expiries.iter().enumerate() {
        for course in [1, 2] {
            for trial in [false, true] {
                n += 1;
                let id = n;
                let e = |k: &str, action: &str, pct: &str, minute: u32| {
                    event(
                        &format!("{id}-{k}"),
                        action,
                        id,
                        course,
                        pct,
                        trial,
                        *expiry,
                        &format!("2024-03-01T00:{minute:02}:00Z"),
                    )
                };
                deliveries.push(e("a", if trial { "trial" } else { "created" }, "0", 1));
                deliveries.push(e("b", "progress", "33.3", 2));
                if (i + course as usize).is_multiple_of(2) && !trial {
                    deliveries.push(e("c", "completed", "100.0", 3 + i as u32));
                }
            }
        }
    }
    // Enrollment 1 moves to course 3 in a newer event: its contribution moves too.
    deliveries.push(event(
        "1-z",
        "progress",
        1,
        3,
        "50.0",
        false,
        None,
        "2024-03-01T00:30:00Z",
    ));
    // Deliver newest first: every older event goes the re-fold path.
    for body in deliveries.iter().rev() {
        let (status, reply) = app.deliver(body).await;
        assert_eq!(status, 200, "{reply}");
    }
    let store = app.store();

    for at in [
        now,
        now + Duration::hours(2),
        now.checked_add_months(Months::new(13)).unwrap(),
    ] {
        let totals = store.course_stats(None, at).await.unwrap();
        assert_eq!(
            rounded(totals),
            rounded(direct(store.as_ref(), at).await),
            "at {at}"
        );
    }
    let stats = store.course_stats(None, now).await.unwrap();
    assert_eq!(
        stats.iter().map(|c| c.course_id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        stats
            .iter()
            .any(|c| c.expired > 0 && c.trial > 0 && c.completed > 0)
    );
    assert!(stats.iter().any(|c| c.median_days_to_complete.is_some()));

    // Rebuild re-derives the same totals from the enrollments.
    let before = store.course_stats(None, now).await.unwrap();
    let report = store.rebuild_projection(false).await.unwrap();
    assert_eq!(report.changed, 0);
    assert_eq!(store.course_stats(None, now).await.unwrap(), before);

    // Totals damaged behind enrollhook's back are found by `rebuild --check`
    // and repaired by rebuild.
    let damage = "UPDATE course_totals SET enrollments = enrollments + 5, progress_micros = 0";
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlite_with_projection(&app.database_url).await;
            sqlx::query(damage).execute(&mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = app.pg.as_ref().unwrap().connect().await;
            sqlx::query(damage).execute(&mut conn).await.unwrap();
        }
    }
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!((check.changed, check.courses), (0, 3), "{check:?}");
    assert_ne!(store.course_stats(None, now).await.unwrap(), before);
    store.rebuild_projection(false).await.unwrap();
    assert_eq!(store.course_stats(None, now).await.unwrap(), before);
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!((check.changed, check.courses), (0, 0), "{check:?}");
}

/// Random traffic of `enrollments` enrollments in 4 courses: created or trial,
/// progress, perhaps completion, a course move, expiry dates in past months,
/// earlier this month, later this month, in later months or none (changing
/// between events), created on various days; then some events repeated, and
/// all shuffled.
fn random_traffic(rng: &mut StdRng, enrollments: i64, now: DateTime<Utc>) -> Vec<Vec<u8>> {
    let this_month = now
        .date_naive()
        .with_day0(0)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let mut expiries = vec![
        None,
        None,
        Some(this_month - Duration::days(40)),
        Some(this_month - Duration::hours(5)),
        Some(now + Duration::hours(1)),
        Some(now.checked_add_months(Months::new(2)).unwrap()),
    ];
    if now - this_month > Duration::hours(2) {
        expiries.push(Some(this_month + Duration::hours(1)));
    }
    let mut bodies = Vec::new();
    for e in 1..=enrollments {
        let mut course = rng.random_range(1..=4);
        let created = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap()
            + chrono::Days::new(rng.random_range(0..40))
            + Duration::minutes(rng.random_range(0..1440));
        let created = created.and_hms_opt(0, 0, 0).unwrap().and_utc();
        let mut expiry = expiries[rng.random_range(0..expiries.len())];
        let trial = rng.random_bool(0.3);
        let steps = rng.random_range(1..=4);
        for step in 0..steps {
            let at = created + Duration::hours(rng.random_range(1..200) * (step + 1));
            let last = step == steps - 1;
            let action = match step {
                0 if trial => "trial",
                0 => "created",
                _ if last && rng.random_bool(0.4) => "completed",
                _ => "progress",
            };
            if rng.random_bool(0.3) {
                expiry = expiries[rng.random_range(0..expiries.len())];
            }
            if step > 0 && rng.random_bool(0.1) {
                course = 1 + course % 4;
            }
            let pct = if action == "completed" {
                "100.0".to_owned()
            } else {
                format!("{:.4}", rng.random_range(0.0..99.0))
            };
            let updated = at.to_rfc3339();
            let mut body = event(
                &format!("{e}-{step}"),
                action,
                e,
                course,
                &pct,
                trial,
                expiry,
                &updated,
            );
            let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["payload"]["created_at"] = json!(created.to_rfc3339());
            v["payload"]["activated_at"] = json!(created.to_rfc3339());
            body = serde_json::to_vec(&v).unwrap();
            bodies.push(body);
        }
    }
    let repeated: Vec<Vec<u8>> = bodies
        .iter()
        .filter(|_| rng.random_bool(0.2))
        .cloned()
        .collect();
    bodies.extend(repeated);
    bodies.shuffle(rng);
    bodies
}

/// Delivers `bodies`, 16 at a time (so that batches hold several events).
async fn deliver_all(app: &TestApp, bodies: &[Vec<u8>]) {
    for chunk in bodies.chunks(16) {
        let replies = futures::future::join_all(chunk.iter().map(|b| app.deliver(b))).await;
        for (status, reply) in replies {
            assert_eq!(status, 200, "{reply}");
        }
    }
}

/// PostgreSQL's statistics computed from scratch with one GROUP BY over the
/// enrollments (the query the totals replaced), rounded like [`rounded`].
async fn pg_aggregate(conn: &mut sqlx::PgConnection, now: DateTime<Utc>) -> Vec<CourseStats> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT source, course_id, MAX(course_name) AS name, COUNT(*) AS enrollments,
            COUNT(*) FILTER (WHERE completed) AS completed,
            COUNT(*) FILTER (WHERE NOT completed AND expiry_date < $1) AS expired,
            COUNT(*) FILTER (WHERE NOT completed AND trial
                             AND (expiry_date IS NULL OR expiry_date >= $1)) AS trial,
            AVG(progress) AS average_progress,
            percentile_cont(0.5) WITHIN GROUP (ORDER BY days_to_complete) AS median_days
         FROM enrollments WHERE course_id IS NOT NULL
         GROUP BY source, course_id ORDER BY source, course_id",
    )
    .bind(now)
    .fetch_all(conn)
    .await
    .unwrap();
    let stats = rows
        .iter()
        .map(|r| {
            let enrollments: i64 = r.get("enrollments");
            let (completed, expired, trial): (i64, i64, i64) =
                (r.get("completed"), r.get("expired"), r.get("trial"));
            CourseStats {
                source: r.get("source"),
                course_id: r.get("course_id"),
                name: r.get("name"),
                enrollments,
                active: enrollments - completed - expired - trial,
                trial,
                completed,
                expired,
                completion_rate: completed as f64 / enrollments.max(1) as f64,
                average_progress: r.get("average_progress"),
                median_days_to_complete: r
                    .get::<Option<f64>, _>("median_days")
                    .map(|m| (m * 1e9).round() / 1e9),
            }
        })
        .collect();
    rounded(stats)
}

/// The same, medians rounded too (percentile_cont interpolates, `a + (b - a)
/// / 2`, the totals read `(a + b) / 2`).
fn rounded_medians(stats: Vec<CourseStats>) -> Vec<CourseStats> {
    let mut stats = rounded(stats);
    for c in &mut stats {
        c.median_days_to_complete = c.median_days_to_complete.map(|m| (m * 1e9).round() / 1e9);
    }
    stats
}

/// The activity chart from scratch over PostgreSQL's enrollments.
async fn pg_activity(
    conn: &mut sqlx::PgConnection,
    from: NaiveDate,
    to: NaiveDate,
) -> Vec<(NaiveDate, i64, i64)> {
    let rows: Vec<(NaiveDate, i64, i64)> = sqlx::query_as(
        "SELECT day, COUNT(*) FILTER (WHERE kind = 0), COUNT(*) FILTER (WHERE kind = 1) FROM (
             SELECT (COALESCE(created_at, activated_at, started_at) AT TIME ZONE 'UTC')::date
                    AS day, 0 AS kind FROM enrollments
             UNION ALL
             SELECT (completed_at AT TIME ZONE 'UTC')::date, 1 FROM enrollments WHERE completed
         ) AS d WHERE day BETWEEN $1 AND $2 GROUP BY day ORDER BY day",
    )
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await
    .unwrap();
    rows
}

fn activity_query(source: Option<&str>, course_id: Option<i64>) -> ActivityQuery {
    ActivityQuery {
        source: source.map(str::to_owned),
        course_id,
        from: NaiveDate::from_ymd_opt(2024, 2, 20).unwrap(),
        to: NaiveDate::from_ymd_opt(2024, 6, 1).unwrap(),
    }
}

/// The same shuffled and repeated traffic (in other orders) gives SQLite and
/// PostgreSQL the same statistics and activity, at several times of reading;
/// PostgreSQL's equal a GROUP BY over its enrollments from scratch, and
/// `rebuild --check` finds nothing to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_give_the_aggregate_of_random_traffic() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let traffic = random_traffic(&mut rng, 150, now);
    let sqlite = TestDatabase::create(Backend::Sqlite)
        .await
        .serve(|_| {})
        .await;
    let pg = TestDatabase::create(Backend::Postgres)
        .await
        .serve(|_| {})
        .await;
    let mut other_order = traffic.clone();
    other_order.shuffle(&mut rng);
    tokio::join!(
        deliver_all(&sqlite, &traffic),
        deliver_all(&pg, &other_order)
    );
    let (s, p) = (sqlite.store(), pg.store());
    let mut conn = pg.pg.as_ref().unwrap().connect().await;

    let this_month = now.date_naive().with_day0(0).unwrap();
    for at in [
        now,
        now + Duration::hours(2),
        now.checked_add_months(Months::new(3)).unwrap(),
        this_month.and_hms_opt(0, 0, 0).unwrap().and_utc() - Duration::days(20),
    ] {
        let on_pg = p.course_stats(None, at).await.unwrap();
        assert_eq!(s.course_stats(None, at).await.unwrap(), on_pg, "at {at}");
        assert_eq!(
            rounded_medians(on_pg.clone()),
            pg_aggregate(&mut conn, at).await,
            "at {at}"
        );
        assert_eq!(
            rounded(on_pg),
            rounded(direct(p.as_ref(), at).await),
            "at {at}"
        );
    }
    assert_eq!(
        p.course_stats(Some("default"), now).await.unwrap(),
        p.course_stats(None, now).await.unwrap()
    );
    assert!(p.course_stats(Some("other"), now).await.unwrap().is_empty());
    let stats = p.course_stats(None, now).await.unwrap();
    assert!(
        stats
            .iter()
            .any(|c| c.expired > 0 && c.trial > 0 && c.completed > 0)
    );
    assert!(stats.iter().any(|c| c.median_days_to_complete.is_some()));

    for (source, course) in [(None, None), (Some("default"), Some(2)), (None, Some(9))] {
        let q = activity_query(source, course);
        assert_eq!(s.activity(&q).await.unwrap(), p.activity(&q).await.unwrap());
    }
    let q = activity_query(None, None);
    let chart: Vec<(NaiveDate, i64, i64)> = p
        .activity(&q)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.enrolled > 0 || d.completed > 0)
        .map(|d| (d.date, d.enrolled, d.completed))
        .collect();
    assert!(!chart.is_empty());
    assert_eq!(chart, pg_activity(&mut conn, q.from, q.to).await);

    for store in [&s, &p] {
        let check = store.rebuild_projection(true).await.unwrap();
        assert_eq!(
            (check.changed, check.removed, check.courses),
            (0, 0, 0),
            "{check:?}"
        );
    }
}

/// A PostgreSQL database from before migration 18 that already holds
/// enrollments: the migration derives their totals at once.
#[tokio::test]
async fn postgres_migration_18_derives_the_totals_of_existing_enrollments() {
    use enrollhook::store::{NewEvent, PostgresStore};
    let db = crate::common::pg::TestDb::create().await;
    let mut rng = StdRng::seed_from_u64(rand::random());
    let now = Utc::now();
    let events: Vec<NewEvent> = random_traffic(&mut rng, 80, now)
        .iter()
        .map(|b| {
            let envelope = enrollhook::thinkific::parse(b, None).unwrap();
            NewEvent::from_envelope(
                "default",
                &envelope,
                String::from_utf8(b.clone()).unwrap(),
                Utc::now(),
            )
        })
        .collect();
    let store = PostgresStore::open(&db.url, true).await.unwrap();
    for chunk in events.chunks(20) {
        store.append_batch(chunk).await.unwrap();
    }
    let stats = store.course_stats(None, now).await.unwrap();
    assert_eq!(stats.len(), 4);
    let chart = store.activity(&activity_query(None, None)).await.unwrap();
    drop(store);

    // Back to schema 17, enrollments kept.
    let mut conn = db.connect().await;
    sqlx::raw_sql(crate::common::pg::UNPARTITION_LOG)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "DROP INDEX outbox_due_by_subscription;
         CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
         ALTER TABLE course_lessons DROP COLUMN completions;
         DROP INDEX learners_expiring_by_course;
         DROP TABLE course_learners;
         DROP TABLE course_totals, course_expiries, activity_days;
         DROP FUNCTION course_totals_version();
         DROP INDEX enrollments_expiring;
         CREATE INDEX enrollments_enrolled_on
             ON enrollments ((COALESCE(created_at, activated_at, started_at)), source, course_id)
             INCLUDE (created_at, activated_at, started_at);
         CREATE INDEX enrollments_completed_on
             ON enrollments (completed_at, source, course_id) WHERE completed;
         DELETE FROM enrollhook_migrations WHERE version >= 18;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let store = PostgresStore::open(&db.url, true).await.unwrap();
    assert_eq!(store.course_stats(None, now).await.unwrap(), stats);
    assert_eq!(rounded_medians(stats), pg_aggregate(&mut conn, now).await);
    assert_eq!(
        store.activity(&activity_query(None, None)).await.unwrap(),
        chart
    );
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!((check.changed, check.courses), (0, 0), "{check:?}");
}

/// Two instances serving one PostgreSQL database, started at once.
async fn two_instances(url: &str) -> (TestApp, TestApp) {
    let spawn = || {
        spawn_with(
            tempfile::tempdir().unwrap(),
            enrollhook::config::ServeConfig::new(url.to_owned(), Some(SECRET)),
        )
    };
    tokio::join!(spawn(), spawn())
}

/// Two instances on one PostgreSQL database take the same random traffic at
/// once (each event to one of them, some to both): their batches add to the
/// same course rows concurrently and leave totals equal to the aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_instances_leave_the_aggregate() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let db = crate::common::pg::TestDb::create().await;
    let (a, b) = two_instances(&db.url).await;
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    for body in random_traffic(&mut rng, 150, now) {
        match rng.random_range(0..5) {
            0 => {
                to_a.push(body.clone());
                to_b.push(body);
            }
            1 | 2 => to_a.push(body),
            _ => to_b.push(body),
        }
    }
    tokio::join!(deliver_all(&a, &to_a), deliver_all(&b, &to_b));
    let store = a.store();
    let check = store.rebuild_projection(true).await.unwrap();
    assert_eq!(
        (check.changed, check.removed, check.courses),
        (0, 0, 0),
        "{check:?}"
    );
    let mut conn = db.connect().await;
    for at in [now, now.checked_add_months(Months::new(3)).unwrap()] {
        assert_eq!(
            rounded_medians(store.course_stats(None, at).await.unwrap()),
            pg_aggregate(&mut conn, at).await
        );
    }
}

/// Course 7: five enrollments completed 1 to 5 days after they started
/// (median 3 days), beside random traffic in courses 1 to 4.
fn five_completions(rng: &mut StdRng, now: DateTime<Utc>) -> Vec<Vec<u8>> {
    let mut bodies = random_traffic(rng, 60, now);
    for (i, days) in (1..=5).enumerate() {
        let id = 500 + i as i64;
        let e = |k: &str, action: &str, pct: &str, updated: &str| {
            event(
                &format!("{id}-{k}"),
                action,
                id,
                7,
                pct,
                false,
                None,
                updated,
            )
        };
        bodies.push(e("a", "created", "0", "2024-01-01T00:00:00Z"));
        bodies.push(e(
            "b",
            "completed",
            "100.0",
            &format!("2024-01-0{}T00:00:00Z", 1 + days),
        ));
    }
    bodies
}

/// A later event of enrollment 502 (3 days to complete) that says it started
/// 12 hours earlier: 3.5 days, the new median; no count changes.
fn earlier_start() -> Vec<u8> {
    let mut body: serde_json::Value = serde_json::from_slice(&event(
        "502-c",
        "progress",
        502,
        7,
        "100.0",
        false,
        None,
        "2024-02-01T00:00:00Z",
    ))
    .unwrap();
    body["payload"]["started_at"] = json!("2023-12-31T12:00:00Z");
    serde_json::to_vec(&body).unwrap()
}

fn median_of(stats: &[CourseStats], course: i64) -> Option<f64> {
    let c = stats.iter().find(|c| c.course_id == course).unwrap();
    c.median_days_to_complete
}

/// Both backends keep each course's median until its totals row gets a new
/// version: a later event that changes only a completion time (no count) must
/// give the row a new version, and the next answer the new median, the same
/// on SQLite and PostgreSQL and equal to a GROUP BY from scratch; so must a
/// rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_completion_time_alone_moves_the_cached_median() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let traffic = five_completions(&mut rng, now);
    let sqlite = TestDatabase::create(Backend::Sqlite)
        .await
        .serve(|_| {})
        .await;
    let pg = TestDatabase::create(Backend::Postgres)
        .await
        .serve(|_| {})
        .await;
    tokio::join!(deliver_all(&sqlite, &traffic), deliver_all(&pg, &traffic));
    let (s, p) = (sqlite.store(), pg.store());
    let mut conn = pg.pg.as_ref().unwrap().connect().await;
    let row = "SELECT enrollments, completed, open_trials, progress_micros, with_days, version
               FROM course_totals WHERE course_id = 7";

    // Read twice: the second answer comes from the cache.
    let before = p.course_stats(None, now).await.unwrap();
    assert_eq!(median_of(&before, 7), Some(3.0));
    assert_eq!(p.course_stats(None, now).await.unwrap(), before);
    assert_eq!(s.course_stats(None, now).await.unwrap(), before);
    assert_eq!(s.course_stats(None, now).await.unwrap(), before);
    let (old_row,): ((i64, i64, i64, i64, i64, i64),) =
        (sqlx::query_as(row).fetch_one(&mut conn).await.unwrap(),);

    let change = earlier_start();
    for app in [&sqlite, &pg] {
        let (status, reply) = app.deliver(&change).await;
        assert_eq!((status, reply["status"].as_str()), (200, Some("stored")));
    }
    let (new_row,): ((i64, i64, i64, i64, i64, i64),) =
        (sqlx::query_as(row).fetch_one(&mut conn).await.unwrap(),);
    assert_eq!(
        (new_row.0, new_row.1, new_row.2, new_row.3, new_row.4),
        (old_row.0, old_row.1, old_row.2, old_row.3, old_row.4),
        "no count changes"
    );
    assert!(
        new_row.5 > old_row.5,
        "a new version: {old_row:?} → {new_row:?}"
    );

    let after = p.course_stats(None, now).await.unwrap();
    assert_eq!(median_of(&after, 7), Some(3.5));
    assert_eq!(s.course_stats(None, now).await.unwrap(), after);
    assert_eq!(
        rounded_medians(after.clone()),
        pg_aggregate(&mut conn, now).await
    );

    // A rebuild rewrites every row (new versions): still the aggregate.
    p.rebuild_projection(false).await.unwrap();
    let rebuilt = p.course_stats(None, now).await.unwrap();
    assert_eq!(rebuilt, after);
    s.rebuild_projection(false).await.unwrap();
    assert_eq!(s.course_stats(None, now).await.unwrap(), after);
    assert_eq!(rounded_medians(rebuilt), pg_aggregate(&mut conn, now).await);

    // A count damaged behind enrollhook's back still gets a new version, so
    // the cached median is not trusted and the disagreement is reported.
    sqlx::query("UPDATE course_totals SET with_days = with_days * 2 WHERE course_id = 7")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = p.course_stats(None, now).await.unwrap_err();
    assert!(
        err.to_string().contains("run `enrollhook rebuild`"),
        "{err}"
    );
    p.rebuild_projection(false).await.unwrap();
    assert_eq!(p.course_stats(None, now).await.unwrap(), after);
}

/// Two instances on one PostgreSQL database: the first caches the medians,
/// the second takes the event that changes a completion time; the first's
/// next answer has the new median (versions come from one sequence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_median_changed_through_another_postgres_instance_is_seen() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let now = Utc::now();
    let db = crate::common::pg::TestDb::create().await;
    let (a, b) = two_instances(&db.url).await;
    deliver_all(&a, &five_completions(&mut rng, now)).await;
    let (on_a, on_b) = (a.store(), b.store());
    let before = on_a.course_stats(None, now).await.unwrap();
    assert_eq!(median_of(&before, 7), Some(3.0));
    assert_eq!(on_b.course_stats(None, now).await.unwrap(), before);

    let (status, reply) = b.deliver(&earlier_start()).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("stored")));
    let after = on_a.course_stats(None, now).await.unwrap();
    assert_eq!(median_of(&after, 7), Some(3.5));
    assert_eq!(on_b.course_stats(None, now).await.unwrap(), after);
    let mut conn = db.connect().await;
    assert_eq!(rounded_medians(after), pg_aggregate(&mut conn, now).await);
}
