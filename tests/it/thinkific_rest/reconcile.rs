//! `thinkific backfill` ends with a reconciliation report: per course and in
//! total, which enrollments the webhooks never delivered, which they had
//! behind the API (and by how much progress), which agree; as a table and as
//! JSON, on both backends.

use super::*;

on_both_backends!(multi_thread: backfill_reports_what_the_webhooks_missed);

/// Webhooks already delivered four of the eight enrollments the API lists:
/// one newer than the API's copy, two older (by 9 and 40 points), one the same.
async fn seed_webhooks(database: &str) {
    let older = t0() - Duration::days(1);
    import(
        database,
        &[
            // i=1 (course 2): newer than the API's copy.
            webhook_line(
                "20240401000000000000001",
                1,
                t0() + Duration::days(30),
                "80.0",
            ),
            // i=3 (course 1): API 29 %, webhook 20 %, older.
            webhook_line("20240101000000000000003", 3, older, "20.0"),
            // i=5 (course 3): API 50 %, webhook 10 %, older.
            webhook_line("20240101000000000000005", 5, older, "10.0"),
            // i=6 (course 1): the same version as the API's (0 %).
            webhook_line(
                "20240101000000000000006",
                6,
                t0() + Duration::minutes(6),
                "0.0",
            ),
        ],
    )
    .await;
}

async fn backfill_reports_what_the_webhooks_missed(db: TestDatabase) {
    let items: Vec<Value> = (1..=8).map(|i| rest_enrollment(i).0).collect();
    let (_api, base) = start_api(items).await;

    // The table.
    seed_webhooks(&db.url).await;
    let o = backfill(&base, &db.url, &[]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for expected in [
        "course_id course missing behind behind_points behind_max agree ahead",
        "1 Course 0 0 1 9.0 9.0 1 0",
        "2 Course 1 2 0 0.0 0.0 0 1",
        "3 Course 2 2 1 40.0 40.0 0 0",
        "TOTAL 4 2 49.0 40.0 1 1",
        "4 enrollments were missing, now added; 2 behind the API by 49.0 progress points in \
         all (at most 40.0), now updated; 2 agreed",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "`{expected}` in:\n{out}"
        );
    }

    // The same as JSON, from the same starting point on a second database.
    let other = TestDatabase::create(db.backend).await;
    seed_webhooks(&other.url).await;
    let o = backfill(&base, &other.url, &["--format", "json"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).expect("stdout is one JSON document");
    let r = &doc["reconciliation"];
    assert_eq!(
        r["total"],
        json!({"missing": 4, "behind": 2, "behind_progress_points": 49.0,
               "behind_progress_max": 40.0, "agree": 1, "ahead": 1})
    );
    let courses: Vec<(i64, u64, u64, u64, u64)> = r["courses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_u64().unwrap();
            (
                c["course_id"].as_i64().unwrap(),
                n("missing"),
                n("behind"),
                n("agree"),
                n("ahead"),
            )
        })
        .collect();
    assert_eq!(courses, [(1, 0, 1, 1, 0), (2, 2, 0, 0, 1), (3, 2, 1, 0, 0)]);
    assert_eq!(
        (doc["read"].as_u64(), doc["stored"].as_u64()),
        (Some(8), Some(8))
    );

    // Run again: the webhooks' picture now agrees with the API's (but the
    // newer webhook, still ahead of the listing).
    let o = backfill(&base, &other.url, &["--format", "json"]).await;
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            doc["reconciliation"]["total"]["missing"].as_u64(),
            doc["reconciliation"]["total"]["behind"].as_u64(),
            doc["reconciliation"]["total"]["agree"].as_u64(),
            doc["reconciliation"]["total"]["ahead"].as_u64(),
        ),
        (Some(0), Some(0), Some(7), Some(1))
    );
}
