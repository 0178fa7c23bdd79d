//! `enrollhook thinkific …` against a stand-in for Thinkific's REST API: an
//! axum router on port 0 that follows the documented behaviour (pagination
//! meta, `limit` ≤ 250, auth headers, a 429 with `RateLimit-Reset`, a 500),
//! driven through the real binary, on a real SQLite file and on PostgreSQL.

use crate::common;

use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use chrono::{DateTime, Duration, TimeZone, Utc};
use common::backend::{Backend, TestDatabase, on_both_backends};
use common::fresh_db;
use common::process::BIN;
use enrollhook::store::{DeliveryFilter, EnrollmentFilter, PageRequest};
use serde_json::{Value, json};

const KEY: &str = "school-api-key-5f1e";
const SUBDOMAIN: &str = "acme";

/// The stand-in's state: its data, and what it was asked.
struct Api {
    enrollments: Mutex<Vec<Value>>,
    webhooks: Mutex<Vec<Value>>,
    next_webhook_id: AtomicU64,
    /// (page, limit) of every enrollments request that passed auth.
    pages: Mutex<Vec<(u32, u32)>>,
    /// Fail like Thinkific does, once each: page 2 is rate limited, page 3 errs.
    faults: AtomicBool,
    rate_limited: AtomicBool,
    failed: AtomicBool,
    /// Answer every enrollments request with this status (a Thinkific outage).
    always: Mutex<Option<StatusCode>>,
    requests: AtomicU64,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A numeric query parameter; None when it is not a number.
fn number(q: &HashMap<String, String>, name: &str, default: u32) -> Option<u32> {
    match q.get(name) {
        None => Some(default),
        Some(v) => v.parse().ok(),
    }
}

/// `{items, meta: {pagination}}` for one page of `all`.
fn paginate(all: &[Value], page: u32, limit: u32) -> Value {
    let total = all.len() as u32;
    let total_pages = total.div_ceil(limit).max(1);
    let start = ((page - 1) * limit) as usize;
    let items: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit as usize)
        .cloned()
        .collect();
    json!({
        "items": items,
        "meta": {"pagination": {
            "current_page": page,
            "next_page": (page < total_pages).then_some(page + 1),
            "prev_page": (page > 1).then_some(page - 1),
            "total_pages": total_pages,
            "total_items": total,
        }}
    })
}

async fn enrollments(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    api.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-auth-api-key") != Some(KEY) || header("x-auth-subdomain") != Some(SUBDOMAIN) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let (Some(page), Some(limit)) = (number(&q, "page", 1), number(&q, "limit", 25)) else {
        return error(StatusCode::BAD_REQUEST, "page and limit must be numbers");
    };
    if page == 0 || limit == 0 || limit > 250 {
        return error(StatusCode::BAD_REQUEST, "limit must be from 1 to 250");
    }
    api.pages.lock().unwrap().push((page, limit));
    if let Some(status) = *api.always.lock().unwrap() {
        return (status, [("RateLimit-Reset", "0")], "{}").into_response();
    }
    if api.faults.load(Ordering::Relaxed) {
        if page == 2 && !api.rate_limited.swap(true, Ordering::Relaxed) {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("RateLimit-Reset", "1")],
                Json(json!({"error": "Too Many Requests"})),
            )
                .into_response();
        }
        if page == 3 && !api.failed.swap(true, Ordering::Relaxed) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
    }
    let all = api.enrollments.lock().unwrap().clone();
    let all: Vec<Value> = match q.get("query[updated_after]") {
        None => all,
        Some(t) => {
            let Ok(after) = DateTime::parse_from_rfc3339(t) else {
                return error(StatusCode::BAD_REQUEST, "invalid updated_after");
            };
            all.into_iter()
                .filter(|e| {
                    DateTime::parse_from_rfc3339(e["updated_at"].as_str().unwrap()).unwrap() > after
                })
                .collect()
        }
    };
    Json(paginate(&all, page, limit)).into_response()
}

fn bearer_ok(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"))
}

async fn list_webhooks(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    api.requests.fetch_add(1, Ordering::Relaxed);
    if !bearer_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let (page, limit) = match (number(&q, "page", 1), number(&q, "limit", 25)) {
        (Some(p), Some(l)) if p > 0 && l > 0 => (p, l),
        _ => return error(StatusCode::BAD_REQUEST, "invalid page or limit"),
    };
    // Small pages whatever is asked, so paging is exercised.
    let limit = limit.min(3);
    Json(paginate(&api.webhooks.lock().unwrap(), page, limit)).into_response()
}

async fn create_webhook(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    api.requests.fetch_add(1, Ordering::Relaxed);
    if !bearer_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let (Some(topic), Some(url)) = (body["topic"].as_str(), body["target_url"].as_str()) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "topic and target_url are required",
        );
    };
    if !url.starts_with("https://") {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "target_url must be https");
    }
    let id = api.next_webhook_id.fetch_add(1, Ordering::Relaxed);
    let hook = json!({
        "id": format!("2020022721323362583{id:04}"),
        "status": "active",
        "topic": topic,
        "created_at": "2020-02-27T21:32:33.62583953-05:00",
        "created_by": "156118",
        "target_url": url,
    });
    api.webhooks.lock().unwrap().push(hook.clone());
    (StatusCode::CREATED, Json(hook)).into_response()
}

async fn delete_webhook(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    api.requests.fetch_add(1, Ordering::Relaxed);
    if !bearer_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let mut hooks = api.webhooks.lock().unwrap();
    let before = hooks.len();
    hooks.retain(|h| h["id"] != id.as_str());
    if hooks.len() == before {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn start_api(items: Vec<Value>) -> (Arc<Api>, String) {
    let api = Arc::new(Api {
        enrollments: Mutex::new(items),
        webhooks: Mutex::new(Vec::new()),
        next_webhook_id: AtomicU64::new(1),
        pages: Mutex::new(Vec::new()),
        faults: AtomicBool::new(true),
        rate_limited: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        always: Mutex::new(None),
        requests: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .route("/api/public/v1/enrollments", get(enrollments))
        .route("/api/v2/webhooks", get(list_webhooks).post(create_webhook))
        .route("/api/v2/webhooks/{id}", delete(delete_webhook))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (api, base)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap()
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The enrollment the stand-in lists as number `i`, in the REST API's shape,
/// and the (progress, status) the projection must show for it.
fn rest_enrollment(i: u32) -> (Value, f64, &'static str) {
    let updated = t0() + Duration::minutes(i as i64);
    // (fraction as listed, percent as shown, …): 0.29 × 100 is 28.999999999999996 in
    // floating point, and must show as 29.
    let (fraction, percent, completed, trial, expiry, status) = match i % 4 {
        0 => (1.0, 100.0, true, false, "2099-01-01T00:00:00Z", "completed"),
        1 => (0.5, 50.0, false, false, "2099-01-01T00:00:00Z", "active"),
        2 => (0.0, 0.0, false, true, "2099-01-01T00:00:00Z", "trial"),
        _ => (0.29, 29.0, false, false, "2020-01-01T00:00:00Z", "expired"),
    };
    let item = json!({
        "id": 1000 + i,
        "user_email": format!("student{i}@example.com"),
        "user_name": format!("First{i} Last{i}"),
        "user_id": i,
        "course_name": format!("Course {}", i % 3),
        "course_id": 1 + i % 3,
        "percentage_completed": fraction,
        "expired": status == "expired",
        "is_free_trial": trial,
        "completed": completed,
        "started_at": "2024-01-02T00:00:00Z",
        "activated_at": "2024-01-01T00:00:00Z",
        "completed_at": completed.then(|| ts(updated)),
        "updated_at": ts(updated),
        "created_at": "2024-01-01T00:00:00Z",
        "expiry_date": expiry,
    });
    (item, percent, status)
}

async fn cli(args: &[&str]) -> Output {
    let dir = std::env::temp_dir();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("ENROLLHOOK_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().await.unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn backfill(base: &str, database: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "thinkific",
        "backfill",
        "--api-base",
        base,
        "--subdomain",
        SUBDOMAIN,
        "--api-key",
        KEY,
        "--database",
        database,
    ];
    args.extend_from_slice(extra);
    cli(&args).await
}

/// A webhook delivery (as an event export line for `enrollhook import`).
fn webhook_line(id: &str, enrollment: u32, updated: DateTime<Utc>, pct: &str) -> String {
    json!({"source": "default", "body": {
        "id": id, "resource": "enrollment", "action": "progress", "tenant_id": "59",
        "created_at": ts(updated),
        "payload": {"id": 1000 + enrollment, "course_id": 1 + enrollment % 3,
            "user": {"id": enrollment, "email": format!("student{enrollment}@example.com"),
                     "first_name": "Exact", "last_name": "Name"},
            "percentage_completed": pct, "updated_at": ts(updated)}
    }})
    .to_string()
}

async fn import(database: &str, lines: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webhooks.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let o = cli(&["import", file.to_str().unwrap(), "--database", database]).await;
    assert!(o.status.success(), "{:?}", text(&o));
}

async fn projection(database: &str) -> HashMap<i64, Value> {
    let o = cli(&["enrollments", "--format", "json", "--database", database]).await;
    assert!(o.status.success(), "{:?}", text(&o));
    let rows: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    rows.into_iter()
        .map(|r| (r["enrollment_id"].as_i64().unwrap(), r))
        .collect()
}

/// Every listed enrollment is in the projection with its progress and status.
fn check_projection(rows: &HashMap<i64, Value>, n: u32) {
    assert_eq!(rows.len(), n as usize);
    for i in 1..=n {
        let (_, progress, status) = rest_enrollment(i);
        let row = &rows[&(1000 + i as i64)];
        assert_eq!(row["progress"].as_f64().unwrap(), progress, "{row}");
        assert_eq!(row["status"], status, "{row}");
        assert_eq!(row["email"], format!("student{i}@example.com"));
        assert_eq!(row["first_name"], format!("First{i}"));
        assert_eq!(row["last_name"], format!("Last{i}"));
        assert_eq!(row["course_name"], format!("Course {}", i % 3));
        assert_eq!(row["event_count"], 1);
    }
}

on_both_backends!(multi_thread: backfill_story);

/// The whole story on one database: backfill (through a 429 and a 500),
/// again (nothing new), webhooks newer and older than it, rebuild, forwarding.
async fn backfill_story(db: TestDatabase) {
    // SQLite: 3 pages of 250 (the last one short).
    let n = match db.backend {
        Backend::Sqlite => 600,
        Backend::Postgres => 520,
    };
    let database = db.url.as_str();
    let items: Vec<Value> = (1..=n).map(|i| rest_enrollment(i).0).collect();
    let (api, base) = start_api(items).await;

    // Subscriptions first: the backfill must reach only the one naming it.
    let store = enrollhook::store::open(database, true).await.unwrap();
    let mut subscription_ids = Vec::new();
    for topic in ["enrollment.*", "enrollment.backfill"] {
        let s = enrollhook::forward::SubscriptionInput {
            url: Some("https://crm.example.com/hooks".into()),
            topics: Some(vec![topic.into()]),
            ..Default::default()
        }
        .create(enrollhook::server::new_subscription_id(), Utc::now(), false)
        .unwrap();
        store.insert_subscription(&s).await.unwrap();
        subscription_ids.push(s.id);
    }
    drop(store);

    let o = backfill(&base, database, &[]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let pages = n.div_ceil(250);
    assert!(err.contains(&format!("page {pages}/{pages}:")), "{err}");
    assert!(err.contains("rate limit"), "the 429 was waited out: {err}");
    assert!(err.contains("answered 500"), "the 500 was retried: {err}");
    assert!(
        !err.contains(KEY) && !out.contains(KEY),
        "the key is never shown"
    );
    assert!(
        out.contains(&format!("{n} enrollments in {pages} pages"))
            && out.contains(&format!("{n} stored, 0 already known, 0 unusable")),
        "{out}"
    );
    // The newest updated_at listed (all are long before this run).
    let newest = ts(t0() + Duration::minutes(n as i64));
    assert!(
        out.contains(&format!("next time: --updated-after {}", &newest[..19])),
        "{out}"
    );
    assert!(api.rate_limited.load(Ordering::Relaxed) && api.failed.load(Ordering::Relaxed));
    assert!(
        api.pages
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, limit)| limit == 250),
        "every page asks for 250"
    );
    check_projection(&projection(database).await, n);

    // Again, asking for too large pages (clamped to Thinkific's 250): nothing new.
    api.pages.lock().unwrap().clear();
    let o = backfill(&base, database, &["--page-size", "1000"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains(&format!("0 stored, {n} already known")),
        "{out}"
    );
    assert!(
        api.pages
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, limit)| limit == 250)
    );

    // Resuming from the printed time asks only for what changed since: nothing.
    let o = backfill(&base, database, &["--updated-after", &newest]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("0 enrollments in 1 pages"), "{out}");

    // Webhooks: one newer than the backfill (wins), one older (does not).
    let newer = t0() + Duration::days(30);
    let older = t0() - Duration::days(30);
    import(
        database,
        &[
            webhook_line("20240401000000000000001", 1, newer, "80.0"),
            webhook_line("20240101000000000000002", 5, older, "10.0"),
        ],
    )
    .await;
    let rows = projection(database).await;
    assert_eq!(rows[&1001]["progress"], 80.0);
    assert_eq!(
        rows[&1001]["first_name"], "Exact",
        "the newer webhook's names"
    );
    assert_eq!(rows[&1001]["event_count"], 2);
    assert_eq!(
        rows[&1005]["progress"], 50.0,
        "the older webhook does not win"
    );
    assert_eq!(rows[&1005]["first_name"], "First5");
    assert_eq!(rows[&1005]["event_count"], 2);

    // An enrollment that changed in Thinkific since: a newer backfill event.
    {
        let mut all = api.enrollments.lock().unwrap();
        all[5]["percentage_completed"] = json!(0.75);
        all[5]["updated_at"] = json!(ts(t0() + Duration::days(60)));
    }
    let o = backfill(&base, database, &[]).await;
    let (out, _) = text(&o);
    assert!(
        out.contains(&format!("1 stored, {} already known", n - 1)),
        "{out}"
    );
    assert_eq!(projection(database).await[&1006]["progress"], 75.0);

    // The log is the truth: a rebuild derives exactly this projection.
    let o = cli(&["rebuild", "--check", "--database", database]).await;
    assert!(o.status.success(), "{:?}", text(&o));

    // Backfill events: n + 1 in the log, forwarded only to the subscription naming them.
    let store = enrollhook::store::open(database, false).await.unwrap();
    let page = store
        .list_events(
            &enrollhook::store::EventFilter {
                topic: Some("enrollment.backfill".into()),
                ..Default::default()
            },
            &PageRequest {
                limit: 1000,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), n as usize + 1);
    let deliveries = |id: String| {
        let store = store.clone();
        async move {
            store
                .list_deliveries(
                    &DeliveryFilter {
                        subscription_id: Some(id),
                        event_seq: None,
                        state: None,
                    },
                    &PageRequest {
                        limit: 1000,
                        cursor: None,
                    },
                )
                .await
                .unwrap()
                .items
                .len()
        }
    };
    // `enrollment.*` gets the two webhooks only; `enrollment.backfill` every backfill.
    assert_eq!(deliveries(subscription_ids[0].clone()).await, 2);
    assert_eq!(
        deliveries(subscription_ids[1].clone()).await,
        n as usize + 1
    );
    let completed = store
        .list_enrollments(
            &EnrollmentFilter {
                status: Some(enrollhook::projection::Status::Completed),
                ..Default::default()
            },
            &PageRequest {
                limit: 1000,
                cursor: None,
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(completed.items.len(), (n / 4) as usize);
}

#[tokio::test]
async fn wrong_credentials_give_the_clear_error() {
    let (api, base) = start_api(vec![rest_enrollment(1).0]).await;
    let (_dir, url) = fresh_db();
    for (key, subdomain) in [("wrong-key-1234", SUBDOMAIN), (KEY, "other-school")] {
        let o = cli(&[
            "thinkific",
            "backfill",
            "--api-base",
            &base,
            "--subdomain",
            subdomain,
            "--api-key",
            key,
            "--database",
            &url,
        ])
        .await;
        let (out, err) = text(&o);
        assert!(!o.status.success());
        assert!(
            err.contains("API key or subdomain is wrong") && err.contains("--api-key"),
            "{err}"
        );
        assert!(!err.contains(key) && !out.contains(key), "{err}");
    }
    let o = cli(&[
        "thinkific",
        "webhooks",
        "list",
        "--api-base",
        &base,
        "--subdomain",
        SUBDOMAIN,
        "--api-key",
        "wrong-key-1234",
    ])
    .await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("API key or subdomain is wrong"), "{err}");
    assert!(
        err.contains("OAuth access token"),
        "the webhooks API's hint: {err}"
    );
    // 401 is final: not retried.
    assert_eq!(api.requests.load(Ordering::Relaxed), 3);

    // Missing configuration says what to pass.
    let o = cli(&["thinkific", "webhooks", "list", "--api-base", &base]).await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("--api-key") && err.contains("ENROLLHOOK_THINKIFIC_API_KEY"),
        "{err}"
    );
    let o = cli(&[
        "thinkific",
        "webhooks",
        "list",
        "--api-base",
        &base,
        "--api-key",
        KEY,
    ])
    .await;
    let (_, err) = text(&o);
    assert!(err.contains("--subdomain"), "{err}");
}

#[tokio::test]
async fn credentials_come_from_the_source_in_enrollhook_toml() {
    let (_api, base) = start_api(vec![rest_enrollment(4).0]).await;
    let (dir, url) = fresh_db();
    let config = dir.path().join("enrollhook.toml");
    // The source's secret is the school's API key: the same key signs its webhooks.
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"acme-academy\"\nsecret = \"{KEY}\"\nsubdomain = \"https://acme.thinkific.com\"\n"
        ),
    )
    .unwrap();
    let o = cli(&[
        "thinkific",
        "backfill",
        "--config",
        config.to_str().unwrap(),
        "--source",
        "acme-academy",
        "--api-base",
        &base,
        "--database",
        &url,
    ])
    .await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("1 stored"), "{out}");
    let rows = projection(&url).await;
    assert_eq!(rows[&1004]["source"], "acme-academy");
    assert_eq!(rows[&1004]["status"], "completed");
}

#[tokio::test]
async fn webhook_registration_is_idempotent() {
    let (api, base) = start_api(Vec::new()).await;
    let target = "https://hooks.example.com/webhooks/thinkific/acme";
    // One of ours exists already, and one of another integration's.
    for (topic, url) in [
        ("enrollment.completed", target),
        ("enrollment.completed", "https://zapier.example.com/hook"),
    ] {
        api.webhooks.lock().unwrap().push(json!({
            "id": format!("1{}", api.next_webhook_id.fetch_add(1, Ordering::Relaxed)),
            "status": "active", "topic": topic, "target_url": url,
        }));
    }
    let run = |extra: Vec<String>| {
        let base = base.clone();
        async move {
            let mut args: Vec<String> = [
                "thinkific",
                "webhooks",
                "--api-base",
                &base,
                "--subdomain",
                SUBDOMAIN,
                "--api-key",
                KEY,
            ]
            .map(String::from)
            .to_vec();
            args.extend(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args).await
        }
    };
    let register = |extra: &[&str]| {
        let mut a = vec!["register".to_owned(), "--url".to_owned(), target.to_owned()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let ours = |api: &Api| -> Vec<String> {
        let mut topics: Vec<String> = api
            .webhooks
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w["target_url"] == target)
            .map(|w| w["topic"].as_str().unwrap().to_owned())
            .collect();
        topics.sort();
        topics
    };

    let o = run(register(&[])).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("8 webhooks deliver to") && out.contains("7 created, 1 already there"),
        "{out}"
    );
    let mut expected: Vec<String> = enrollhook::registration::DEFAULT_TOPICS
        .iter()
        .map(|t| t.to_string())
        .collect();
    expected.sort();
    assert_eq!(ours(&api), expected);

    // Again: nothing new.
    let o = run(register(&[])).await;
    let (out, _) = text(&o);
    assert!(out.contains("0 created, 8 already there"), "{out}");
    assert_eq!(ours(&api).len(), 8);

    // Every documented topic.
    let o = run(register(&["--topics", "all"])).await;
    let (out, _) = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(
        ours(&api).len(),
        enrollhook::registration::DOCUMENTED_TOPICS.len()
    );

    // A topic Thinkific does not document is refused before any request.
    let before = api.requests.load(Ordering::Relaxed);
    let o = run(register(&["--topics", "enrollment.updated"])).await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("not a topic Thinkific documents"), "{err}");

    // http is refused: Thinkific delivers only to https.
    let o = run(vec![
        "register".into(),
        "--url".into(),
        "http://hooks.example.com/webhooks/thinkific".into(),
    ])
    .await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("only to https"), "{err}");
    assert_eq!(
        api.requests.load(Ordering::Relaxed),
        before,
        "refused before asking"
    );

    // list shows them (paged through 3 at a time by the stand-in).
    let o = run(vec!["list".into(), "--format".into(), "json".into()]).await;
    let listed: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.len(), api.webhooks.lock().unwrap().len());

    // delete one by id, then every one of our URL; the other integration's stays.
    let first = listed.iter().find(|w| w["target_url"] == target).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = run(vec!["delete".into(), first.clone()]).await;
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        !api.webhooks
            .lock()
            .unwrap()
            .iter()
            .any(|w| w["id"] == first.as_str())
    );
    let o = run(vec!["delete".into(), "--url".into(), target.into()]).await;
    let (out, _) = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(ours(&api).is_empty());
    let left = api.webhooks.lock().unwrap().clone();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["target_url"], "https://zapier.example.com/hook");

    // An unknown id: Thinkific's 404, said plainly.
    let o = run(vec!["delete".into(), "999".into()]).await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("HTTP 404"), "{err}");
}

/// Failures that do not pass: the client retries a bounded number of times,
/// then says what happened (the client as the commands use it, with short pauses).
#[tokio::test]
async fn lasting_failures_end_in_a_clear_error() {
    use enrollhook::thinkific::rest::{RestClient, RestError, RetryPolicy};
    let (api, base) = start_api(vec![rest_enrollment(1).0]).await;
    let policy = RetryPolicy {
        server_retries: 2,
        first_backoff: std::time::Duration::from_millis(10),
        rate_limit_retries: 3,
        ..RetryPolicy::default()
    };
    let client = RestClient::new(
        &base,
        SUBDOMAIN,
        enrollhook::config::Secret::new(KEY),
        policy,
    )
    .unwrap();

    *api.always.lock().unwrap() = Some(StatusCode::SERVICE_UNAVAILABLE);
    let e = client.enrollments(1, 250, None).await.unwrap_err();
    assert!(
        matches!(
            e,
            RestError::Server {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("try again later"), "{e}");
    assert_eq!(
        api.pages.lock().unwrap().len(),
        3,
        "one try and two retries"
    );

    api.pages.lock().unwrap().clear();
    *api.always.lock().unwrap() = Some(StatusCode::TOO_MANY_REQUESTS);
    let e = client.enrollments(1, 250, None).await.unwrap_err();
    assert!(
        matches!(e, RestError::RateLimited { attempts: 4, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("120 requests a minute"), "{e}");

    // A 4xx other than 401/429 is final, with Thinkific's words.
    api.pages.lock().unwrap().clear();
    *api.always.lock().unwrap() = Some(StatusCode::FORBIDDEN);
    let e = client.enrollments(1, 250, None).await.unwrap_err();
    assert!(e.to_string().contains("HTTP 403"), "{e}");
    assert_eq!(api.pages.lock().unwrap().len(), 1);

    // Nobody listening.
    let gone = RestClient::new(
        "http://127.0.0.1:1",
        SUBDOMAIN,
        enrollhook::config::Secret::new(KEY),
        RetryPolicy {
            server_retries: 1,
            first_backoff: std::time::Duration::from_millis(10),
            ..RetryPolicy::default()
        },
    )
    .unwrap();
    let e = gone.list_webhooks().await.unwrap_err().to_string();
    assert!(
        e.contains("cannot reach Thinkific") && e.contains("refused"),
        "{e}"
    );
    assert!(!e.contains(KEY));
}
