//! The web dashboard (static page, script, style sheet) and the activity
//! endpoint its charts read, through the real router.

use crate::common;

use chrono::{Days, NaiveDate, Utc};
use common::*;
use enrollhook::config::{FileConfig, Secret, ServeConfig, Sources};
use enrollhook::thinkific::sign;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token";

/// Two schools with their own tokens, and an admin token.
async fn two_schools() -> TestApp {
    let (dir, url) = fresh_db();
    let file = FileConfig::parse(
        r#"
        [[source]]
        name = "school-a"
        secret = "key-a"
        api_token = "token-a"
        [[source]]
        name = "school-b"
        secret = "key-b"
        api_token = "token-b"
        "#,
    )
    .unwrap();
    let mut config = ServeConfig::new(url, None);
    config.sources = Sources::resolve(None, &file);
    config.api_token = Some(Secret::new(ADMIN));
    spawn_with(dir, config).await
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn days_ago(n: u64) -> NaiveDate {
    today() - Days::new(n)
}

/// An enrollment event whose enrollment began (`created_at`) on `began` at
/// 10:00 UTC; a `completed` event completes it at `completed` 23:59 UTC.
fn event(
    id: &str,
    action: &str,
    enrollment: i64,
    course: i64,
    began: NaiveDate,
    completed: Option<NaiveDate>,
    version: &str,
) -> Vec<u8> {
    let pct = if completed.is_some() { "100.0" } else { "20.0" };
    let mut body: Value = serde_json::from_slice(&enrollment_event(
        id, action, enrollment, course, pct, version,
    ))
    .unwrap();
    let began = format!("{began}T10:00:00Z");
    for field in ["created_at", "activated_at", "started_at"] {
        body["payload"][field] = json!(began);
    }
    body["payload"]["completed_at"] = json!(completed.map(|d| format!("{d}T23:59:59Z")));
    serde_json::to_vec(&body).unwrap()
}

async fn deliver(app: &TestApp, source: &str, key: &str, body: Vec<u8>) {
    let (status, reply) = app
        .deliver_to(
            &format!("/webhooks/thinkific/{source}"),
            &body,
            Some(&sign(key.as_bytes(), &body)),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

async fn get_as(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app
        .client
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// (date, enrolled, completed) of every day in the reply.
fn series(reply: &Value) -> Vec<(String, i64, i64)> {
    reply["days"]
        .as_array()
        .unwrap_or_else(|| panic!("no days in {reply}"))
        .iter()
        .map(|d| {
            (
                d["date"].as_str().unwrap().to_owned(),
                d["enrolled"].as_i64().unwrap(),
                d["completed"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The non-zero days of a series.
fn busy(series: &[(String, i64, i64)]) -> Vec<(String, i64, i64)> {
    series
        .iter()
        .filter(|(_, e, c)| *e != 0 || *c != 0)
        .cloned()
        .collect()
}

#[tokio::test]
async fn page_script_and_style_are_served_without_a_token_with_safe_headers() {
    let app = two_schools().await;
    for (path, content_type) in [
        ("/dashboard", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", "text/css; charset=utf-8"),
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        let body = r.text().await.unwrap();
        assert!(body.len() > 500, "{path} is not empty");
        if path == "/dashboard" {
            // No inline script or style: every <script> loads a file, no style attributes.
            assert_eq!(
                body.matches("<script").count(),
                body.matches("<script src=\"/dashboard/app.js\"").count()
            );
            assert!(!body.contains(" style="));
            assert!(!body.contains(" onclick="));
        }
    }
    // The API itself still wants the token.
    let (status, _) = app.get("/api/courses").await;
    assert_eq!(status, 401);

    // `/` leads to the dashboard.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "/dashboard");
}

/// Every endpoint the script names is in the OpenAPI document and answered by
/// the router (an unrouted path gets axum's empty 404).
#[tokio::test]
async fn the_script_calls_only_endpoints_that_exist() {
    let app = spawn_app().await;
    let script = include_str!("../../src/server/dashboard/app.js");
    let document: Value = serde_json::from_str(&enrollhook::server::openapi::document()).unwrap();
    let mut paths: Vec<&str> = script
        .split('\'')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("/api/") || *s == "/metrics")
        .collect();
    paths.sort_unstable();
    paths.dedup();
    assert!(paths.len() >= 9, "found {paths:?}");
    for path in paths {
        let item = document["paths"]
            .get(path)
            .unwrap_or_else(|| panic!("the script calls {path}, which the API does not document"));
        let method = if item.get("get").is_some() {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let concrete: String = path
            .split('/')
            .map(|part| if part.starts_with('{') { "1" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let r = app
            .client
            .request(method, format!("{}{concrete}", app.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // The live stream never ends: its answer is enough.
        let live = r
            .headers()
            .get("content-type")
            .is_some_and(|t| t == "text/event-stream");
        let body = if live {
            "stream".to_owned()
        } else {
            r.text().await.unwrap()
        };
        assert!(
            !(status == 404 && body.is_empty()) && status != 405,
            "{concrete}: no route ({status})"
        );
    }
}

#[tokio::test]
async fn activity_counts_each_day_and_fills_the_rest_with_zeros() {
    let app = two_schools().await;
    let a = |body| deliver(&app, "school-a", "key-a", body);
    // Two enrollments began two days ago, one today, one 40 days ago.
    a(event(
        "1",
        "created",
        1,
        7,
        days_ago(2),
        None,
        "2024-01-01T00:00:00Z",
    ))
    .await;
    a(event(
        "2",
        "created",
        2,
        7,
        days_ago(2),
        None,
        "2024-01-01T00:00:00Z",
    ))
    .await;
    a(event(
        "3",
        "created",
        3,
        8,
        today(),
        None,
        "2024-01-01T00:00:00Z",
    ))
    .await;
    a(event(
        "4",
        "created",
        4,
        8,
        days_ago(40),
        None,
        "2024-01-01T00:00:00Z",
    ))
    .await;
    // Enrollment 1 completes today; a late, older progress event changes nothing,
    // nor does a redelivery.
    a(event(
        "5",
        "completed",
        1,
        7,
        days_ago(2),
        Some(today()),
        "2024-01-03T00:00:00Z",
    ))
    .await;
    a(event(
        "6",
        "progress",
        1,
        7,
        days_ago(2),
        None,
        "2024-01-02T00:00:00Z",
    ))
    .await;
    a(event(
        "5",
        "completed",
        1,
        7,
        days_ago(2),
        Some(today()),
        "2024-01-03T00:00:00Z",
    ))
    .await;

    let (status, reply) = get_as(&app, "/api/activity?days=30", ADMIN).await;
    assert_eq!(status, 200, "{reply}");
    let days = series(&reply);
    assert_eq!(days.len(), 30);
    assert_eq!(days[0].0, days_ago(29).to_string());
    assert_eq!(days[29].0, today().to_string());
    // Consecutive days, oldest first.
    for (pair, expected) in days.windows(2).zip(1..) {
        assert_eq!(pair[1].0, days_ago(29 - expected).to_string());
    }
    assert_eq!(
        busy(&days),
        vec![(days_ago(2).to_string(), 2, 0), (today().to_string(), 1, 1),]
    );
    // The default range is 30 days; 90 reaches the older enrollment.
    let (_, default) = get_as(&app, "/api/activity", ADMIN).await;
    assert_eq!(series(&default), days);
    let (_, longer) = get_as(&app, "/api/activity?days=90", ADMIN).await;
    let longer = series(&longer);
    assert_eq!(longer.len(), 90);
    assert_eq!(busy(&longer)[0], (days_ago(40).to_string(), 1, 0));
    // One course.
    let (_, course) = get_as(&app, "/api/activity?days=30&course_id=8", ADMIN).await;
    assert_eq!(busy(&series(&course)), vec![(today().to_string(), 1, 0)]);
    // One day: today only.
    let (_, one) = get_as(&app, "/api/activity?days=1", ADMIN).await;
    assert_eq!(series(&one), vec![(today().to_string(), 1, 1)]);
}

#[tokio::test]
async fn activity_respects_the_callers_source() {
    let app = two_schools().await;
    deliver(
        &app,
        "school-a",
        "key-a",
        event("1", "created", 1, 7, today(), None, "2024-01-01T00:00:00Z"),
    )
    .await;
    deliver(
        &app,
        "school-b",
        "key-b",
        event("1", "created", 1, 7, today(), None, "2024-01-01T00:00:00Z"),
    )
    .await;
    deliver(
        &app,
        "school-b",
        "key-b",
        event("2", "created", 2, 7, today(), None, "2024-01-01T00:00:00Z"),
    )
    .await;

    let enrolled_today = |reply: &Value| series(reply).last().unwrap().1;
    let (_, all) = get_as(&app, "/api/activity?days=7", ADMIN).await;
    assert_eq!(enrolled_today(&all), 3);
    let (_, b) = get_as(&app, "/api/activity?days=7&source=school-b", ADMIN).await;
    assert_eq!(enrolled_today(&b), 2);
    // An empty source filter means all of them (what a form sends).
    let (_, empty) = get_as(&app, "/api/activity?days=7&source=", ADMIN).await;
    assert_eq!(enrolled_today(&empty), 3);
    // A school's token sees its own school only, and may not ask for another.
    let (status, own) = get_as(&app, "/api/activity?days=7", "token-a").await;
    assert_eq!(status, 200);
    assert_eq!(enrolled_today(&own), 1);
    let (status, refused) = get_as(&app, "/api/activity?days=7&source=school-b", "token-a").await;
    assert_eq!(status, 403, "{refused}");
    let (status, _) = get_as(&app, "/api/activity?days=7", "not-a-token").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn activity_rejects_bad_parameters_saying_what_is_allowed() {
    let app = spawn_app().await;
    for query in [
        "days=0",
        "days=3661",
        "days=-5",
        "days=abc",
        "days=",
        "course_id=0",
        "weeks=2",
    ] {
        let (status, reply) = app.get(&format!("/api/activity?{query}")).await;
        assert_eq!(status, 400, "{query}: {reply}");
        let message = reply["message"].as_str().unwrap();
        assert!(!message.is_empty(), "{query}");
        if query.starts_with("days=") && query != "days=" && query != "days=abc" {
            assert!(message.contains("between 1 and 3660"), "{query}: {message}");
        }
    }
    // The bounds themselves are fine, and an empty database gives zeros.
    for days in [1, 3660] {
        let (status, reply) = app.get(&format!("/api/activity?days={days}")).await;
        assert_eq!(status, 200, "{reply}");
        let series = series(&reply);
        assert_eq!(series.len(), days);
        assert!(busy(&series).is_empty());
    }
}
