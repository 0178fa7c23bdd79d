//! Course statistics kept as running totals: they must equal a direct
//! computation over the enrollments at any time of reading, survive
//! out-of-order events and enrollments moving course, and be re-derived by
//! `rebuild`.

use crate::common;

use chrono::{DateTime, Datelike, Duration, Months, Utc};
use common::*;
use enrollhook::simulate::{Expected, expected_courses};
use enrollhook::store::{EnrollmentFilter, PageRequest, Store};
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
    let page = store
        .list_enrollments(
            &EnrollmentFilter::default(),
            &PageRequest {
                limit: 1000,
                cursor: None,
            },
            now,
        )
        .await
        .unwrap();
    assert!(page.next_cursor.is_none());
    let expected = Expected {
        source: "default".into(),
        enrollments: page
            .items
            .into_iter()
            .map(|e| (e.enrollment_id, e))
            .collect(),
        learning: Default::default(),
        events: 0,
    };
    expected_courses(&expected, now)
}

#[tokio::test]
async fn totals_match_a_direct_count_at_any_time_and_after_rebuild() {
    let app = spawn_app().await;
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

    // Totals damaged behind enrollhook's back are repaired by rebuild.
    let mut conn = sqlite_with_projection(&app.database_url).await;
    sqlx::query("UPDATE course_totals SET enrollments = enrollments + 5, progress_micros = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_ne!(store.course_stats(None, now).await.unwrap(), before);
    store.rebuild_projection(false).await.unwrap();
    assert_eq!(store.course_stats(None, now).await.unwrap(), before);
}
