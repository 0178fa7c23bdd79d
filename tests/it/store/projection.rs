//! Reading the projection: enrollments filtered and paged, activity per day,
//! per-course statistics.

use std::sync::Arc;

use chrono::{Duration, Utc};
use enrollhook::projection::Status;
use enrollhook::store::{ActivityQuery, EnrollmentFilter, NewEvent, PageRequest, Store};

use super::{Fixture, new_event, rfc, seed_enrollments, t};
use crate::common::{self, backend::on_both_backends};

on_both_backends!(
    enrollments_filter_and_paginate,
    activity_per_day,
    course_statistics,
);

async fn all_enrollments(
    s: &Arc<dyn Store>,
    filter: &EnrollmentFilter,
    limit: u32,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list_enrollments(filter, &PageRequest { limit, cursor }, Utc::now())
            .await
            .unwrap();
        assert!(page.items.len() <= limit as usize);
        out.extend(
            page.items
                .iter()
                .map(|e| (e.source.clone(), e.enrollment_id)),
        );
        cursor = page.next_cursor;
        if cursor.is_none() {
            return out;
        }
    }
}

async fn enrollments_filter_and_paginate(f: Fixture) {
    let s = &f.store;
    seed_enrollments(s).await;
    let all = all_enrollments(s, &EnrollmentFilter::default(), 7).await;
    assert_eq!(all.len(), 24);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        all, sorted,
        "ordered by (source, enrollment id), byte order"
    );
    assert_eq!(
        all_enrollments(s, &EnrollmentFilter::default(), 1000).await,
        all
    );

    let by = |filter: EnrollmentFilter| async move { all_enrollments(s, &filter, 5).await.len() };
    assert_eq!(
        by(EnrollmentFilter {
            source: Some("school-a".into()),
            ..Default::default()
        })
        .await,
        12
    );
    assert_eq!(
        by(EnrollmentFilter {
            course_id: Some(10),
            ..Default::default()
        })
        .await,
        8
    );
    assert_eq!(
        by(EnrollmentFilter {
            user_id: Some(1003),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        by(EnrollmentFilter {
            email: Some("s3@example.com".into()),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Completed),
            ..Default::default()
        })
        .await,
        6
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Trial),
            ..Default::default()
        })
        .await,
        4
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Active),
            ..Default::default()
        })
        .await,
        14
    );
    assert_eq!(
        by(EnrollmentFilter {
            status: Some(Status::Expired),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        by(EnrollmentFilter {
            updated_after: Some(t(9)),
            ..Default::default()
        })
        .await,
        4
    );
    let combined = EnrollmentFilter {
        source: Some("school_b".into()),
        course_id: Some(10),
        status: Some(Status::Completed),
        ..Default::default()
    };
    assert_eq!(by(combined).await, 1);
}

/// An enrollment event: begun (`created_at`) at `began`, completed at
/// `completed` (a `completed` event), version `minute`.
#[allow(clippy::too_many_arguments)]
fn began(
    source: &str,
    id: &str,
    action: &str,
    enrollment: i64,
    course: Option<i64>,
    began: Option<&str>,
    completed: Option<&str>,
    minute: i64,
) -> NewEvent {
    let pct = if completed.is_some() { "100" } else { "30" };
    let mut body: serde_json::Value = serde_json::from_slice(&common::enrollment_event(
        id,
        action,
        enrollment,
        course.unwrap_or(1),
        pct,
        &rfc(t(minute)),
    ))
    .unwrap();
    let p = &mut body["payload"];
    p["created_at"] = began.into();
    p["activated_at"] = serde_json::Value::Null;
    p["started_at"] = serde_json::Value::Null;
    p["completed_at"] = completed.into();
    if course.is_none() {
        p["course_id"] = serde_json::Value::Null;
        p["course"] = serde_json::Value::Null;
    }
    new_event(source, &serde_json::to_vec(&body).unwrap())
}

async fn activity_per_day(f: Fixture) {
    let s = &f.store;
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2024, 3, d).unwrap();
    let query = |source: Option<&str>, course_id: Option<i64>| ActivityQuery {
        source: source.map(str::to_owned),
        course_id,
        from: day(1),
        to: day(7),
    };
    s.append_batch(&[
        // March 2 (late in the UTC day) twice, March 5 once; one without a course.
        began(
            "a",
            "1",
            "created",
            1,
            Some(7),
            Some("2024-03-02T23:59:59Z"),
            None,
            0,
        ),
        began(
            "a",
            "2",
            "created",
            2,
            Some(8),
            Some("2024-03-02T00:00:00Z"),
            None,
            0,
        ),
        began(
            "a",
            "3",
            "created",
            3,
            None,
            Some("2024-03-05T12:00:00+00:00"),
            None,
            0,
        ),
        // Another school, and days outside the range.
        began(
            "b",
            "4",
            "created",
            4,
            Some(7),
            Some("2024-03-05T01:00:00Z"),
            None,
            0,
        ),
        began(
            "a",
            "5",
            "created",
            5,
            Some(7),
            Some("2024-02-29T23:59:59Z"),
            None,
            0,
        ),
        began(
            "a",
            "6",
            "created",
            6,
            Some(7),
            Some("2024-03-08T00:00:00Z"),
            None,
            0,
        ),
        // No day to count it on: not in the chart.
        began("a", "7", "created", 7, Some(7), None, None, 0),
    ])
    .await
    .unwrap();
    // Enrollment 1 completes on March 6; a newer progress event (a course that
    // gained lessons) keeps that completion day; 2 moves to course 9.
    s.append_batch(&[
        began(
            "a",
            "8",
            "completed",
            1,
            Some(7),
            Some("2024-03-02T23:59:59Z"),
            Some("2024-03-06T10:00:00Z"),
            1,
        ),
        began(
            "a",
            "9",
            "progress",
            1,
            Some(7),
            Some("2024-03-02T23:59:59Z"),
            None,
            2,
        ),
        began(
            "a",
            "10",
            "progress",
            2,
            Some(9),
            Some("2024-03-02T00:00:00Z"),
            None,
            2,
        ),
    ])
    .await
    .unwrap();

    let counts = |days: Vec<enrollhook::store::DayActivity>| -> Vec<(u32, i64, i64)> {
        use chrono::Datelike;
        days.iter()
            .map(|d| (d.date.day(), d.enrolled, d.completed))
            .collect()
    };
    let all = counts(s.activity(&query(None, None)).await.unwrap());
    assert_eq!(
        all,
        vec![
            (1, 0, 0),
            (2, 2, 0),
            (3, 0, 0),
            (4, 0, 0),
            (5, 2, 0),
            (6, 0, 1),
            (7, 0, 0)
        ]
    );
    let a = counts(s.activity(&query(Some("a"), None)).await.unwrap());
    assert_eq!(a[4], (5, 1, 0));
    let course_7 = counts(s.activity(&query(Some("a"), Some(7))).await.unwrap());
    assert_eq!(
        course_7
            .iter()
            .filter(|c| c.1 + c.2 > 0)
            .copied()
            .collect::<Vec<_>>(),
        vec![(2, 1, 0), (6, 0, 1)]
    );
    let course_8 = counts(s.activity(&query(None, Some(8))).await.unwrap());
    assert!(
        course_8.iter().all(|c| c.1 == 0 && c.2 == 0),
        "enrollment 2 moved to course 9"
    );
    let course_9 = counts(s.activity(&query(None, Some(9))).await.unwrap());
    assert_eq!(course_9[1], (2, 1, 0));
    let nobody = counts(s.activity(&query(Some("nobody"), None)).await.unwrap());
    assert_eq!(nobody.len(), 7);
    assert!(nobody.iter().all(|c| c.1 == 0 && c.2 == 0));
    // The range is inclusive at both ends.
    let edges = s
        .activity(&ActivityQuery {
            source: None,
            course_id: None,
            from: chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap(),
            to: day(8),
        })
        .await
        .unwrap();
    assert_eq!(edges.len(), 9);
    assert_eq!((edges[0].enrolled, edges[8].enrolled), (1, 1));

    // A rebuild derives the same counts.
    s.rebuild_projection(false).await.unwrap();
    assert_eq!(counts(s.activity(&query(None, None)).await.unwrap()), all);
}

async fn course_statistics(f: Fixture) {
    let s = &f.store;
    let ev = |id: &str, action: &str, enrollment_id: i64, pct: &str, started: i64, minute: i64| {
        let mut body: serde_json::Value = serde_json::from_slice(&common::enrollment_event(
            id,
            action,
            enrollment_id,
            5,
            pct,
            &rfc(t(minute)),
        ))
        .unwrap();
        body["payload"]["started_at"] = rfc(t(0) - Duration::days(started)).into();
        body["payload"]["completed_at"] = rfc(t(minute)).into();
        new_event("default", &serde_json::to_vec(&body).unwrap())
    };
    s.append_batch(&[
        ev("s1", "completed", 1, "100", 2, 0),
        ev("s2", "completed", 2, "100", 4, 0),
        ev("s3", "completed", 3, "100", 9, 0),
        ev("s4", "completed", 4, "100", 10, 0),
        ev("s5", "progress", 5, "40", 1, 0),
        ev("s6", "trial", 6, "20", 1, 0),
    ])
    .await
    .unwrap();
    // An expired enrollment of another course.
    let mut body: serde_json::Value = serde_json::from_slice(&common::enrollment_event(
        "x1",
        "progress",
        7,
        6,
        "50",
        &rfc(t(0)),
    ))
    .unwrap();
    body["payload"]["expiry_date"] = "2020-01-01T00:00:00Z".into();
    s.append_batch(&[new_event("other", &serde_json::to_vec(&body).unwrap())])
        .await
        .unwrap();

    let stats = s.course_stats(None, Utc::now()).await.unwrap();
    assert_eq!(stats.len(), 2);
    let c5 = &stats[0];
    assert_eq!(
        (c5.source.as_str(), c5.course_id, c5.name.as_deref()),
        ("default", 5, Some("Course 5"))
    );
    assert_eq!(
        (
            c5.enrollments,
            c5.active,
            c5.trial,
            c5.completed,
            c5.expired
        ),
        (6, 1, 1, 4, 0)
    );
    assert_eq!(c5.completion_rate, 4.0 / 6.0);
    assert_eq!(c5.average_progress, 460.0 / 6.0);
    assert_eq!(c5.median_days_to_complete, Some(6.5));
    let c6 = &stats[1];
    assert_eq!(
        (c6.source.as_str(), c6.expired, c6.median_days_to_complete),
        ("other", 1, None)
    );
    assert_eq!(
        s.course_stats(Some("other"), Utc::now()).await.unwrap(),
        vec![c6.clone()]
    );
    assert!(
        s.course_stats(Some("nobody"), Utc::now())
            .await
            .unwrap()
            .is_empty()
    );
}
