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

mod api;
mod backfill;
mod documented;
mod reconcile;
mod scheduled;

use api::*;

const KEY: &str = "school-api-key-5f1e";
const SUBDOMAIN: &str = "acme";
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

/// One scheduled reconciliation of `source`, as `serve --reconcile-every`
/// runs it, from a stand-in Thinkific listing `n` enrollments, stored in the
/// database at `url` (for the dashboard's browser test of its overview line).
pub(crate) async fn reconcile_from_stand_in(url: &str, source: &str, n: u32) {
    use enrollhook::config::{Secret, ThinkificSettings};
    use enrollhook::maintenance::reconcile::{self, Round, Target};
    let (_api, base) = start_api((1..=n).map(|i| rest_enrollment(i).0).collect()).await;
    let settings = ThinkificSettings {
        source: source.parse().unwrap(),
        subdomain: Some(SUBDOMAIN.into()),
        api_key: Some(Secret::new(KEY)),
        access_token: None,
        api_base: base,
    };
    let store = enrollhook::store::open(url, true).await.unwrap();
    let target = Target {
        source: settings.source.clone(),
        client: settings.client().unwrap(),
        webhook_url: None,
    };
    let round = reconcile::run_once(store.as_ref(), &[target])
        .await
        .unwrap();
    assert!(
        matches!(round, Round::Ran(ref ids) if ids.len() == 1),
        "{round:?}"
    );
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
    let mut expected: Vec<String> = enrollhook::thinkific::registration::DEFAULT_TOPICS
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
        enrollhook::thinkific::registration::DOCUMENTED_TOPICS.len()
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
