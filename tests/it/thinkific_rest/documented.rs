//! The REST client against the API as Thinkific documents it (issue 16): the
//! webhooks listing's cursor and its older forms, `RateLimit-Reset` as an epoch
//! time, the 401 that may mean "no API on this plan", `query[updated_after]`'s
//! documented form, Bearer API Access Tokens, and `ENROLLHOOK_THINKIFIC_API_BASE`.

use super::*;

/// The binary with these environment variables (and no inherited ENROLLHOOK_ ones).
async fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).current_dir(std::env::temp_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("ENROLLHOOK_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn add_webhooks(api: &Api, n: usize) {
    let mut hooks = api.webhooks.lock().unwrap();
    for i in 0..n {
        hooks.push(json!({
            "id": format!("2019080714100632065{i:04}"), "status": "active",
            "topic": "enrollment.completed",
            "target_url": format!("https://h{i}.example.com/webhooks/thinkific"),
        }));
    }
}

#[tokio::test]
async fn webhook_listing_follows_the_cursor_and_the_older_forms() {
    let (api, base) = start_api(Vec::new()).await;
    add_webhooks(&api, 8);
    let args = [
        "thinkific",
        "webhooks",
        "list",
        "--format",
        "json",
        "--api-base",
        &base,
        "--subdomain",
        SUBDOMAIN,
        "--api-key",
        KEY,
    ];
    let list = || cli(&args);
    for form in [Listing::Cursor, Listing::PageNumbers, Listing::Pagination] {
        *api.listing.lock().unwrap() = form;
        let o = list().await;
        assert!(o.status.success(), "{form:?}: {:?}", text(&o));
        let listed: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(listed.len(), 8, "{form:?}: every page (3 per page) is read");
    }
    // A listing that says there is more but gives nothing to follow: said, non-zero.
    *api.listing.lock().unwrap() = Listing::Broken;
    let o = list().await;
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains("incomplete") && err.contains("has_next"),
        "{err}"
    );
}

#[tokio::test]
async fn a_rate_limit_reset_in_epoch_milliseconds_is_waited_until_not_70_s() {
    use enrollhook::thinkific::rest::{RestClient, RetryPolicy};
    let (api, base) = start_api((1..=3).map(|i| rest_enrollment(i).0).collect()).await;
    let client = RestClient::new(
        &base,
        SUBDOMAIN,
        enrollhook::config::Secret::new(KEY),
        RetryPolicy::default(),
    )
    .unwrap();
    // Page 2's first answer is a 429 whose reset is one second ahead (epoch ms).
    let started = std::time::Instant::now();
    let page = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        client.enrollments(2, 1, None),
    )
    .await
    .expect("waited far longer than the reset asks")
    .unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(api.rate_limited.load(Ordering::Relaxed));
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_401_says_the_plan_may_not_include_api_access() {
    let (_api, base) = start_api(vec![rest_enrollment(1).0]).await;
    let (_dir, url) = fresh_db();
    let o = cli(&[
        "thinkific",
        "backfill",
        "--api-base",
        &base,
        "--subdomain",
        SUBDOMAIN,
        "--api-key",
        "wrong-key-1234",
        "--database",
        &url,
    ])
    .await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("plan does not include API access"), "{err}");
}

#[tokio::test]
async fn updated_after_is_sent_in_the_documented_form_floored_to_the_second() {
    let (api, base) = start_api((1..=4).map(|i| rest_enrollment(i).0).collect()).await;
    api.faults.store(false, Ordering::Relaxed);
    let (_dir, url) = fresh_db();
    let o = backfill(
        &base,
        &url,
        &["--updated-after", "2024-03-01T00:02:59.999Z"],
    )
    .await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(
        api.updated_after.lock().unwrap().as_slice(),
        ["2024-03-01T00:02:59Z"]
    );
    // Enrollments 3 and 4 (updated at 00:03 and 00:04).
    assert!(out.contains("2 stored"), "{out}");
}

#[tokio::test]
async fn access_tokens_work_for_both_apis_from_flag_environment_and_file() {
    let (api, base) = start_api((1..=2).map(|i| rest_enrollment(i).0).collect()).await;
    api.faults.store(false, Ordering::Relaxed);
    add_webhooks(&api, 4);
    let (dir, url) = fresh_db();
    // The flag: no key, no subdomain.
    let o = cli(&[
        "thinkific",
        "backfill",
        "--api-base",
        &base,
        "--access-token",
        TOKEN,
        "--database",
        &url,
    ])
    .await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("2 stored"), "{out}");
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN));
    // The environment, for the webhooks API, and the API base from the environment too.
    let o = cli_env(
        &["thinkific", "webhooks", "list", "--format", "json"],
        &[
            ("ENROLLHOOK_THINKIFIC_ACCESS_TOKEN", TOKEN),
            ("ENROLLHOOK_THINKIFIC_API_BASE", &base),
        ],
    )
    .await;
    assert!(o.status.success(), "{:?}", text(&o));
    let listed: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.len(), 4);
    // A source's access_token in enrollhook.toml.
    let config = dir.path().join("enrollhook.toml");
    std::fs::write(
        &config,
        format!("[[source]]\nname = \"acme-academy\"\nsecret = \"whsec-other\"\naccess_token = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let o = cli_env(
        &[
            "thinkific",
            "webhooks",
            "list",
            "--config",
            config.to_str().unwrap(),
            "--source",
            "acme-academy",
        ],
        &[("ENROLLHOOK_THINKIFIC_API_BASE", &base)],
    )
    .await;
    assert!(o.status.success(), "{:?}", text(&o));
    // A blank token is refused before any request, and a wrong one says which to check.
    let before = api.requests.load(Ordering::Relaxed);
    let o = cli(&[
        "thinkific",
        "webhooks",
        "list",
        "--api-base",
        &base,
        "--access-token",
        " ",
    ])
    .await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("blank") || err.contains("empty"), "{err}");
    assert_eq!(api.requests.load(Ordering::Relaxed), before);
    let o = cli(&[
        "thinkific",
        "webhooks",
        "list",
        "--api-base",
        &base,
        "--access-token",
        "nope",
    ])
    .await;
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("--access-token"), "{err}");
}

#[tokio::test]
async fn registration_targets_thinkific_refuses_are_refused_before_calling() {
    let (api, base) = start_api(Vec::new()).await;
    for url in [
        "https://localhost/webhooks/thinkific",
        "https://hooks.test/webhooks/thinkific",
        "https://192.168.1.10/webhooks/thinkific",
        "https://acme.thinkific.com/webhooks/thinkific",
    ] {
        let o = cli(&[
            "thinkific",
            "webhooks",
            "register",
            "--url",
            url,
            "--api-base",
            &base,
            "--subdomain",
            SUBDOMAIN,
            "--api-key",
            KEY,
        ])
        .await;
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{url}");
        assert!(
            err.contains("Thinkific refuses this target"),
            "{url}: {err}"
        );
    }
    assert_eq!(
        api.requests.load(Ordering::Relaxed),
        0,
        "refused before asking"
    );
}

#[tokio::test]
async fn webhooks_check_lists_registered_missing_and_elsewhere_and_fails_when_missing() {
    let (api, base) = start_api(Vec::new()).await;
    let target = "https://hooks.example.com/webhooks/thinkific";
    {
        let mut hooks = api.webhooks.lock().unwrap();
        hooks.push(json!({"id": "11", "topic": "enrollment.created", "target_url": target}));
        hooks.push(json!({"id": "12", "topic": "enrollment.progress",
                          "target_url": "https://old.example.com/webhooks/thinkific"}));
    }
    let args = [
        "thinkific",
        "webhooks",
        "check",
        "--url",
        target,
        "--topics",
        "enrollment.created,enrollment.progress,order.created",
        "--api-base",
        &base,
        "--subdomain",
        SUBDOMAIN,
        "--api-key",
        KEY,
    ];
    let o = cli(&args).await;
    let (out, err) = text(&o);
    assert!(!o.status.success(), "one is missing: {out}\n{err}");
    assert!(out.contains("registered  enrollment.created"), "{out}");
    assert!(out.contains("elsewhere   enrollment.progress"), "{out}");
    assert!(out.contains("missing     order.created"), "{out}");
    api.webhooks
        .lock()
        .unwrap()
        .push(json!({"id": "13", "topic": "order.created", "target_url": target}));
    let o = cli(&args).await;
    assert!(o.status.success(), "{:?}", text(&o));
}
