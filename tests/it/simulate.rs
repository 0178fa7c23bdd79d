//! The simulator against the real receiver (router on port 0, real SQLite
//! files), `--verify`, `--out` and `import`.

use crate::common;

use chrono::Utc;
use common::*;
use enrollhook::config::ServeConfig;
use enrollhook::maintenance::import::{ImportOptions, import};
use enrollhook::projection::Enrollment;
use enrollhook::simulate::{
    Faults, SchoolConfig, SendOptions, Traffic, TrafficConfig, send, verify, write_jsonl,
};
use enrollhook::store::{self, EnrollmentFilter, PageRequest, Store};

fn traffic_config(seed: u64, faults: Faults) -> TrafficConfig {
    TrafficConfig {
        school: SchoolConfig {
            seed,
            students: 60,
            courses: 4,
            ..Default::default()
        },
        events: None,
        faults,
        secret: SECRET.into(),
        source: "default".into(),
        subdomain: "test-school".into(),
    }
}

fn all_faults() -> Faults {
    Faults {
        duplicates: 0.1,
        reorder: 0.1,
        bad_signatures: 0.03,
    }
}

fn send_options(app: &TestApp) -> SendOptions {
    SendOptions {
        url: format!("{}/webhooks/thinkific", app.base),
        concurrency: 32,
        ..Default::default()
    }
}

async fn all_enrollments(store: &dyn Store) -> Vec<Enrollment> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_enrollments(
                &EnrollmentFilter::default(),
                &PageRequest {
                    limit: 1000,
                    cursor,
                },
                Utc::now(),
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

#[tokio::test]
async fn faulty_traffic_ends_in_the_expected_state() {
    // Every forged delivery is checked in the quarantine below, so its write
    // budget (20 a second by default) is raised above the simulator's burst.
    let (dir, url) = fresh_db();
    let mut config = enrollhook::config::ServeConfig::new(url, Some(SECRET));
    config.max_quarantine_rate = 100_000;
    let app = spawn_with(dir, config).await;
    let (report, expected) = send(
        Traffic::new(traffic_config(7, all_faults())),
        &send_options(&app),
    )
    .await
    .unwrap();

    assert_eq!(report.unexpected, 0, "{:?}", report.unexpected_examples);
    assert!(
        report.by_kind["duplicate"] > 0
            && report.by_kind["late"] > 0
            && report.by_kind["forged"] > 0
    );
    assert_eq!(
        report.status_4xx, report.by_kind["forged"],
        "exactly the forged deliveries are refused"
    );
    assert_eq!(report.status_5xx + report.network_errors, 0);
    // Each event is stored exactly once; every other accepted delivery is a duplicate.
    assert_eq!(report.stored, expected.events);
    assert_eq!(report.duplicate, report.status_2xx - expected.events);
    assert_eq!(report.latencies_us.len() as u64, report.deliveries);

    let mismatches = verify(&app.client, &app.base, None, &expected)
        .await
        .unwrap();
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert!(expected.enrollments.values().any(|e| e.completed));
    assert!(
        expected
            .enrollments
            .values()
            .any(|e| e.trial && !e.completed)
    );

    // Every forged delivery was kept in quarantine with its reason.
    let (_, q) = app.get("/api/quarantine?limit=1000").await;
    let q = q["items"].as_array().unwrap();
    assert_eq!(q.len() as u64, report.by_kind["forged"]);
    assert!(
        q.iter().all(|r| r["reason_code"] == "signature_mismatch"),
        "{q:?}"
    );
}

#[tokio::test]
async fn verify_finds_a_receiver_that_missed_traffic() {
    let app = spawn_app().await;
    // The receiver gets only the first 150 events of the school's traffic…
    let partial = TrafficConfig {
        events: Some(150),
        ..traffic_config(3, Faults::default())
    };
    let (report, _) = send(Traffic::new(partial), &send_options(&app))
        .await
        .unwrap();
    assert_eq!(report.stored, 150);
    // …but is checked against all of it.
    let mut full = Traffic::new(traffic_config(3, Faults::default()));
    full.by_ref().for_each(drop);
    let expected = full.into_expected();
    let mismatches = verify(&app.client, &app.base, None, &expected)
        .await
        .unwrap();
    assert!(
        mismatches
            .iter()
            .any(|m| m.contains("missing from the receiver")),
        "{mismatches:#?}"
    );
    assert!(
        mismatches.iter().any(|m| m.starts_with("course ")),
        "{mismatches:#?}"
    );

    // A wrong API base URL is an error that says what to check, not a pass.
    let err = verify(&app.client, &format!("{}/nope", app.base), None, &expected)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404") && err.contains("--verify"), "{err}");
}

#[tokio::test]
async fn a_receiver_that_skips_verification_is_caught() {
    let (dir, url) = fresh_db();
    let app = spawn_with(dir, ServeConfig::new(url, None)).await;
    let faults = Faults {
        bad_signatures: 0.05,
        ..Default::default()
    };
    let (report, expected) = send(Traffic::new(traffic_config(5, faults)), &send_options(&app))
        .await
        .unwrap();
    assert!(
        report.unexpected > 0,
        "forged deliveries were accepted and reported"
    );
    assert!(
        report.unexpected_examples[0].starts_with("forged delivery"),
        "{:?}",
        report.unexpected_examples
    );
    let mismatches = verify(&app.client, &app.base, None, &expected)
        .await
        .unwrap();
    assert!(
        !mismatches.is_empty(),
        "the forged progress changed the projection"
    );
}

#[test]
fn same_seed_same_file() {
    let write = |seed| {
        let mut out = Vec::new();
        write_jsonl(Traffic::new(traffic_config(seed, all_faults())), &mut out).unwrap();
        out
    };
    let (a, b, c) = (write(11), write(11), write(12));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let first: serde_json::Value =
        serde_json::from_slice(a.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["source"], "default");
    assert_eq!(first["headers"]["x-thinkific-topic"], "user.signup");
    assert_eq!(
        first["headers"]["x-thinkific-hmac-sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let body: serde_json::Value = serde_json::from_str(first["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["resource"], "user");
    assert!(body["created_at"].as_str().unwrap().ends_with("Z"));
}

#[tokio::test]
async fn importing_the_out_file_equals_sending_it() {
    // Over HTTP…
    let app = spawn_app().await;
    let (report, expected) = send(
        Traffic::new(traffic_config(21, all_faults())),
        &send_options(&app),
    )
    .await
    .unwrap();
    assert_eq!(report.unexpected, 0);

    // …and the same traffic written to a file and imported into another database.
    let mut file = Vec::new();
    write_jsonl(Traffic::new(traffic_config(21, all_faults())), &mut file).unwrap();
    let (_dir, url) = fresh_db();
    let imported = store::open(&url, true).await.unwrap();
    let options = ImportOptions {
        verify_with: Some(SECRET.into()),
        batch: 100,
        ..Default::default()
    };
    let r = import(imported.as_ref(), file.as_slice(), &options, |_| {})
        .await
        .unwrap();
    assert_eq!(r.stored, expected.events);
    assert_eq!(
        r.rejected.get("signature_mismatch").copied(),
        Some(report.by_kind["forged"])
    );
    assert_eq!(r.rejected_total(), report.by_kind["forged"]);
    assert_eq!(r.lines, report.deliveries);
    // Batches of 100 are projected behind the log; the import waits for it.
    assert_eq!(imported.projection_waiting(), 0);

    assert_eq!(
        all_enrollments(imported.as_ref()).await,
        all_enrollments(app.store().as_ref()).await
    );
    let now = Utc::now();
    assert_eq!(
        imported.course_stats(None, now).await.unwrap(),
        app.store().course_stats(None, now).await.unwrap()
    );

    // Importing again stores nothing new.
    let again = import(imported.as_ref(), file.as_slice(), &options, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.stored, again.duplicates),
        (0, r.stored + r.duplicates)
    );
}

#[tokio::test]
async fn import_reports_bad_lines_and_goes_on() {
    let (_dir, url) = fresh_db();
    let store = store::open(&url, true).await.unwrap();
    let good = String::from_utf8(enrollment_event(
        "e1",
        "created",
        1,
        2,
        "0",
        "2024-03-01T00:00:00Z",
    ))
    .unwrap();
    let export_line = serde_json::json!({
        "source": "school-b",
        "received_at": "2024-03-02T00:00:00Z",
        "body": serde_json::from_slice::<serde_json::Value>(&enrollment_event("e2", "progress", 1, 2, "50.0", "2024-03-02T00:00:00Z")).unwrap(),
    });
    let lines = [
        serde_json::json!({"source": "default", "headers": {}, "body": good}).to_string(),
        String::new(),
        "this is not json".into(),
        serde_json::json!({"headers": {}}).to_string(),
        serde_json::json!({"body": "{\"id\": \"x\"}"}).to_string(),
        export_line.to_string(),
    ]
    .join("\n");
    let r = import(
        store.as_ref(),
        lines.as_bytes(),
        &ImportOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((r.lines, r.stored, r.rejected_total()), (5, 2, 3));
    assert_eq!(r.rejected["line_not_json"], 1);
    assert_eq!(r.rejected["body_missing"], 1);
    assert_eq!(r.rejected["envelope_invalid"], 1);
    assert!(r.examples[0].starts_with("line 3:"), "{:?}", r.examples);
    let exported = store.get_enrollment("school-b", 1).await.unwrap().unwrap();
    assert_eq!(exported.progress, 50.0);

    // With --verify-signatures, unsigned lines and exports are refused with a reason.
    let verifying = ImportOptions {
        verify_with: Some(SECRET.into()),
        ..Default::default()
    };
    let r = import(store.as_ref(), lines.as_bytes(), &verifying, |_| {})
        .await
        .unwrap();
    assert_eq!(r.stored + r.duplicates, 0);
    assert_eq!(r.rejected["signature_missing"], 2);
    assert_eq!(r.rejected["signature_unverifiable"], 1);
}

// Multi-threaded: the server must answer while the test blocks on the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_imports_and_verifies() {
    let exe = env!("CARGO_BIN_EXE_enrollhook");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("traffic.jsonl");
    let db = format!("sqlite://{}", dir.path().join("imported.db").display());
    let run = |args: &[&str]| {
        let o = std::process::Command::new(exe)
            .args(args)
            .env_remove("ENROLLHOOK_API_TOKEN")
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let sim = [
        "simulate",
        "--secret",
        SECRET,
        "--students",
        "30",
        "--seed",
        "4",
        "--duplicates",
        "0.1",
        "--bad-signatures",
        "0.05",
    ];
    let (ok, text) = run(&[&sim[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(ok, "{text}");
    assert!(
        text.contains("wrote ") && text.contains("forged") && text.contains("expected final state"),
        "{text}"
    );

    let (ok, text) = run(&[
        "import",
        out.to_str().unwrap(),
        "--database",
        &db,
        "--secret",
        SECRET,
        "--verify-signatures",
    ]);
    // Forged lines are rejected, which makes the exit code 1 and says why.
    assert!(!ok && text.contains("signature_mismatch"), "{text}");

    // Serve the imported database and let `simulate --out … --verify` check it.
    let app = spawn_with(
        tempfile::tempdir().unwrap(),
        ServeConfig::new(db.clone(), Some(SECRET)),
    )
    .await;
    let again = dir.path().join("again.jsonl");
    let (ok, text) = run(&[
        &sim[..],
        &["--out", again.to_str().unwrap(), "--verify", &app.base],
    ]
    .concat());
    assert!(ok && text.contains("matches the expected state"), "{text}");
    let (ok, text) = run(&[
        "simulate",
        "--secret",
        SECRET,
        "--students",
        "31",
        "--seed",
        "4",
        "--out",
        again.to_str().unwrap(),
        "--verify",
        &app.base,
    ]);
    assert!(!ok && text.contains("mismatches"), "{text}");

    let (ok, text) = run(&[
        "simulate",
        "--secret",
        SECRET,
        "--duplicates",
        "2",
        "--out",
        "x",
    ]);
    assert!(!ok && text.contains("between 0 and 1"), "{text}");
    let (ok, text) = run(&["simulate", "--out", "x"]);
    assert!(!ok && text.contains("--secret"), "{text}");
}

/// PostgreSQL plans from statistics that autovacuum may not gather for
/// minutes after a bulk load; `import` gathers them itself (a student page
/// went from 60 ms to 3 ms after `ANALYZE` at 1M events).
#[tokio::test]
async fn an_import_into_postgres_leaves_fresh_planner_statistics_and_a_vacuumed_projection() {
    let db = crate::common::pg::TestDb::create().await;
    let imported = store::open(&db.url, true).await.unwrap();
    let mut file = Vec::new();
    write_jsonl(
        Traffic::new(traffic_config(22, Faults::default())),
        &mut file,
    )
    .unwrap();
    let options = ImportOptions {
        verify_with: Some(SECRET.into()),
        batch: 100,
        ..Default::default()
    };
    let r = import(imported.as_ref(), file.as_slice(), &options, |_| {})
        .await
        .unwrap();
    assert!(r.stored > 0);
    let mut conn = db.connect().await;
    // Statistics reach pg_stat_user_tables shortly after the transaction.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The projection vacuumed too, so index-only scans skip the heap.
        let (analyzed, vacuumed): (bool, bool) = sqlx::query_as(
            "SELECT bool_and(last_analyze IS NOT NULL),
                    bool_and(last_vacuum IS NOT NULL OR relname = 'events')
             FROM pg_stat_user_tables
             WHERE relname IN ('events', 'enrollments', 'learners', 'course_totals')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if analyzed && vacuumed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the import did not ANALYZE the event log and VACUUM the projection \
             (analyzed {analyzed}, vacuumed {vacuumed})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
