//! Templated deliveries and presets, end to end: the real server and worker,
//! a stand-in receiver per preset checking the documented shapes (Slack,
//! Discord, Microsoft Teams, generic JSON), the signature verified over the
//! bytes received by the `standardwebhooks` reference library, render errors
//! dead-lettered, bad templates refused, and the test endpoint.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{post_json, spawn_forwarding_on, subscribe};
use crate::common::backend::{TestDatabase, on_both_backends};
use crate::common::destination::{Destination, Received};
use crate::common::*;

const WAIT: Duration = Duration::from_secs(10);

on_both_backends!(
    presets_send_the_documented_shapes_signed_over_the_bytes_sent,
    a_render_error_dead_letters_that_delivery_and_sends_nothing,
    a_rendered_url_obeys_the_address_rules,
    a_template_that_does_not_compile_is_refused,
    the_test_endpoint_shows_the_request_and_sends_only_when_asked,
    presets_templates_and_tests_from_the_cli,
);

/// A completion Thinkific would send: started 12 days before it was completed.
fn completion(event_id: &str, enrollment_id: i64, first: &str, course: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event_id,
        "resource": "enrollment",
        "action": "completed",
        "tenant_id": "59",
        "created_at": "2024-03-13T09:00:00Z",
        "payload": {
            "id": enrollment_id,
            "course_id": 71,
            "course": {"id": 71, "name": course},
            "user": {"id": enrollment_id + 1000, "email": format!("s{enrollment_id}@example.com"),
                     "first_name": first, "last_name": "Lovelace"},
            "percentage_completed": "100.0",
            "free_trial": false,
            "activated_at": "2024-03-01T09:00:00Z",
            "started_at": "2024-03-01T09:00:00Z",
            "completed_at": "2024-03-13T09:00:00Z",
            "expiry_date": null,
            "created_at": "2024-03-01T09:00:00Z",
            "updated_at": "2024-03-13T09:00:00Z",
        }
    }))
    .unwrap()
}

/// Verifies a received request with the Standard Webhooks reference library
/// (Python `standardwebhooks`), as a receiver would. None when python3 is
/// missing (the caller skips with a message); a failed verification panics.
fn verify_with_reference_library(secret: &str, r: &Received) -> Option<()> {
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    json!(r.headers.get(*n).unwrap().to_str().unwrap()),
                )
            })
            .collect();
    let input = json!({
        "secret": secret,
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
    });
    let script = "import sys, json, base64\n\
        from standardwebhooks.webhooks import Webhook\n\
        d = json.load(sys.stdin)\n\
        Webhook(d['secret']).verify(base64.b64decode(d['body']), d['headers'], json_parse=False)\n\
        print('verified')\n";
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED the standardwebhooks check: python3 is not installed");
            return None;
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'standardwebhooks'"),
        "the standardwebhooks reference library is missing: pip install standardwebhooks"
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "verified",
        "standardwebhooks refused the signature: {stderr}"
    );
    Some(())
}

fn body_of(r: &Received) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
}

async fn presets_send_the_documented_shapes_signed_over_the_bytes_sent(db: TestDatabase) {
    let app = spawn_forwarding_on(db, "50ms").await;
    let mut receivers = Vec::new();
    for preset in ["slack", "discord", "teams", "json"] {
        let dest = Destination::start().await;
        let sub = subscribe(
            &app,
            json!({"url": dest.url, "topics": ["enrollment.completed"], "template": {"preset": preset}}),
        )
        .await;
        assert_eq!(sub["template"]["preset"], preset, "{sub}");
        receivers.push((preset, dest, sub["secret"].as_str().unwrap().to_owned()));
    }
    // A student's completion, then one with a course name longer than
    // Discord's 2,000-character content limit.
    let long_course = "Very long course ".repeat(150);
    assert_eq!(
        app.deliver(&completion("c1", 501, "Ada", "Intro to Rust"))
            .await
            .0,
        200
    );
    assert_eq!(
        app.deliver(&completion("c2", 502, "Grace", &long_course))
            .await
            .0,
        200
    );
    for (preset, dest, secret) in &receivers {
        let got = dest.wait_for(2, WAIT).await;
        let mut by_id = got.clone();
        by_id.sort_by_key(|r| r.headers["webhook-id"].to_str().unwrap().to_owned());
        let (ada, grace) = (&by_id[0], &by_id[1]);
        for r in [ada, grace] {
            assert_eq!(r.method, "POST");
            assert_eq!(r.headers["content-type"], "application/json");
            assert_eq!(r.headers["x-enrollhook-topic"], "enrollment.completed");
            verify_with_reference_library(secret, r);
        }
        assert_eq!(ada.headers["webhook-id"], "evt_default_c1");
        let (a, g) = (body_of(ada), body_of(grace));
        let sentence = "🎓 Ada Lovelace completed Intro to Rust in 12 days.";
        match *preset {
            // Slack incoming webhook: `text`, and blocks of mrkdwn sections.
            "slack" => {
                assert_eq!(a["text"], sentence, "{a}");
                assert_eq!(a["blocks"][0]["type"], "section");
                assert_eq!(a["blocks"][0]["text"]["type"], "mrkdwn");
                assert_eq!(a["blocks"][0]["text"]["text"], sentence);
                assert!(g["text"].as_str().unwrap().contains("Grace Lovelace"));
            }
            // Discord webhook: `content` of at most 2,000 characters, embeds
            // of title and fields, no mentions.
            "discord" => {
                assert_eq!(a["content"], sentence, "{a}");
                assert_eq!(a["allowed_mentions"]["parse"], json!([]));
                let embed = &a["embeds"][0];
                assert_eq!(embed["title"], "enrollment.completed");
                assert_eq!(embed["fields"][0]["value"], "Ada Lovelace");
                assert_eq!(embed["fields"][1]["value"], "Intro to Rust");
                let content = g["content"].as_str().unwrap();
                assert_eq!(content.chars().count(), 2000, "cut to Discord's limit");
                assert!(content.ends_with('…'));
                for field in g["embeds"][0]["fields"].as_array().unwrap() {
                    assert!(field["value"].as_str().unwrap().chars().count() <= 1024);
                }
            }
            // Teams workflow webhook: a message with one Adaptive Card.
            "teams" => {
                assert_eq!(a["type"], "message", "{a}");
                let attachments = a["attachments"].as_array().unwrap();
                assert_eq!(attachments.len(), 1);
                assert_eq!(
                    attachments[0]["contentType"],
                    "application/vnd.microsoft.card.adaptive"
                );
                let card = &attachments[0]["content"];
                assert_eq!(card["type"], "AdaptiveCard");
                assert!(card["version"].is_string());
                assert_eq!(card["body"][0]["type"], "TextBlock");
                assert_eq!(card["body"][0]["text"], sentence);
                assert_eq!(card["body"][1]["facts"][0]["value"], "Ada Lovelace");
            }
            // Generic JSON: flat, typed, from the enrollment.
            "json" => {
                assert_eq!(a["event_id"], "c1", "{a}");
                assert_eq!(a["topic"], "enrollment.completed");
                assert_eq!(a["email"], "s501@example.com");
                assert_eq!(a["first_name"], "Ada");
                assert_eq!(a["course_id"], 71);
                assert_eq!(a["course_name"], "Intro to Rust");
                assert_eq!(a["enrollment_id"], 501);
                assert_eq!(a["status"], "completed");
                assert_eq!(a["progress"], 100);
                assert_eq!(a["days_to_complete"], 12);
                assert_eq!(a["message"], sentence);
                assert!(
                    a.as_object()
                        .unwrap()
                        .values()
                        .all(|v| !v.is_object() && !v.is_array()),
                    "flat: {a}"
                );
            }
            _ => unreachable!(),
        }
    }
}

async fn a_render_error_dead_letters_that_delivery_and_sends_nothing(db: TestDatabase) {
    let dest = Destination::start().await;
    let app = spawn_forwarding_on(db, "50ms,50ms,50ms").await;
    // Course 13 runs the template out of fuel; the others render.
    let body = r#"{% if course.id == 13 %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}{"email": {{ student.email }}, "course": {{ course.id }}}"#;
    let sub = subscribe(
        &app,
        json!({"url": dest.url, "topics": ["enrollment.*"], "template": {"body": body}}),
    )
    .await;
    let id = sub["id"].as_str().unwrap();
    let bad = enrollment_event("e13", "progress", 1, 13, "10.0", "2024-02-01T00:00:00Z");
    let good = enrollment_event("e14", "progress", 2, 14, "10.0", "2024-02-01T00:00:00Z");
    assert_eq!(app.deliver(&bad).await.0, 200);
    assert_eq!(app.deliver(&good).await.0, 200);
    let got = dest.wait_for(1, WAIT).await;
    assert_eq!(
        body_of(&got[0]),
        json!({"email": "s2@example.com", "course": 14})
    );

    // The failing one is dead after one attempt, with the template's error.
    let dead = wait_for_dead(&app, id, 1).await;
    assert_eq!(dead[0]["attempts"], 1, "no retry: {dead:?}");
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("template body") && error.contains("steps"),
        "{error}"
    );
    let (_, attempts) = app
        .get("/api/events/default/e13/attempts?topic=enrollment.progress")
        .await;
    assert_eq!(attempts["items"].as_array().unwrap().len(), 1, "{attempts}");
    assert_eq!(attempts["items"][0]["status"], Value::Null);
    assert!(
        attempts["items"][0]["error"]
            .as_str()
            .unwrap()
            .contains("steps")
    );
    // Nothing of it reached the receiver, neither then nor on a retry.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(dest.received().len(), 1);
}

/// Waits until the subscription has `n` dead deliveries, and returns them.
async fn wait_for_dead(app: &TestApp, id: &str, n: usize) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let (_, page) = app
            .get(&format!("/api/subscriptions/{id}/deliveries?state=dead"))
            .await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            return items;
        }
        assert!(started.elapsed() < WAIT, "no dead delivery: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_rendered_url_obeys_the_address_rules(db: TestDatabase) {
    // Private destinations are not allowed here; the subscription's own URL
    // is public, the template renders the host from the event.
    let app = db
        .serve(|c| {
            c.forward = super::fast_forwarding("50ms");
            c.forward.allow_private_destinations = false;
        })
        .await;
    let sub = subscribe(
        &app,
        json!({"url": "https://hooks.example.com/in", "topics": ["enrollment.*"],
               "template": {"preset": "json", "url": "http://{{ course.name }}/latest/meta-data?e={{ student.email }}"}}),
    )
    .await;
    let id = sub["id"].as_str().unwrap();
    let mut event: Value = serde_json::from_slice(&enrollment_event(
        "m1",
        "progress",
        9,
        5,
        "10.0",
        "2024-02-01T00:00:00Z",
    ))
    .unwrap();
    event["payload"]["course"]["name"] = json!("169.254.169.254");
    assert_eq!(
        app.deliver(&serde_json::to_vec(&event).unwrap()).await.0,
        200
    );
    let dead = wait_for_dead(&app, id, 1).await;
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("template url") && error.contains("non-public"),
        "{error}"
    );

    // A template URL without placeholders is checked when it is saved.
    let (status, error) = post_json(
        &app,
        "/api/subscriptions",
        json!({"url": "https://hooks.example.com/in",
               "template": {"preset": "json", "url": "http://127.0.0.1:8080/admin"}}),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("non-public"),
        "{error}"
    );
}

async fn a_template_that_does_not_compile_is_refused(db: TestDatabase) {
    let dest = Destination::start().await;
    let app = spawn_forwarding_on(db, "50ms").await;
    let refused = |template: Value| {
        let app = &app;
        let url = dest.url.clone();
        async move {
            let (status, error) = post_json(
                app,
                "/api/subscriptions",
                json!({"url": url, "template": template}),
            )
            .await;
            assert_eq!(status, 422, "{template}: {error}");
            error["message"].as_str().unwrap().to_owned()
        }
    };
    let message = refused(json!({"body": "{\"a\": {{ student.email }"})).await;
    assert!(
        message.contains("template body: line 1"),
        "says where: {message}"
    );
    let message = refused(json!({"preset": "slack", "message": "{% if %}"})).await;
    assert!(message.contains("template message"), "{message}");
    let message = refused(json!({"body": "{}", "method": "DELETE"})).await;
    assert!(message.contains("POST, PUT, PATCH"), "{message}");
    let message = refused(json!({"preset": "slack", "headers": {"Webhook-Signature": "x"}})).await;
    assert!(message.contains("set by enrollhook"), "{message}");
    let message = refused(json!({})).await;
    assert!(message.contains("preset or a body"), "{message}");
    // Brokers take only the body: a URL or headers there say so.
    let (status, error) = post_json(
        &app,
        "/api/subscriptions",
        json!({"url": "redis://127.0.0.1:6379", "stream": "s", "template": {"preset": "json", "url": "https://x.example/{{ topic }}"}}),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("broker"),
        "{error}"
    );
    // An unknown preset is refused with the ones that exist.
    let (status, error) = post_json(
        &app,
        "/api/subscriptions",
        json!({"url": dest.url, "template": {"preset": "slak"}}),
    )
    .await;
    assert!(status == 400 || status == 422, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("slack"),
        "{error}"
    );

    // A change to a bad template leaves the stored one as it was; null removes it.
    let sub = subscribe(
        &app,
        json!({"url": dest.url, "template": {"preset": "teams"}}),
    )
    .await;
    let id = sub["id"].as_str().unwrap();
    let patch = |body: Value| {
        app.client
            .patch(format!("{}/api/subscriptions/{id}", app.base))
            .json(&body)
            .send()
    };
    let resp = patch(json!({"template": {"body": "{{"}})).await.unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let (_, shown) = app.get(&format!("/api/subscriptions/{id}")).await;
    assert_eq!(shown["template"]["preset"], "teams", "{shown}");
    let resp = patch(json!({"template": null})).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (_, shown) = app.get(&format!("/api/subscriptions/{id}")).await;
    assert_eq!(shown["template"], Value::Null, "{shown}");
}

async fn the_test_endpoint_shows_the_request_and_sends_only_when_asked(db: TestDatabase) {
    let dest = Destination::start().await;
    let app = spawn_forwarding_on(db, "50ms").await;
    let sub = subscribe(
        &app,
        json!({"url": dest.url, "topics": ["enrollment.completed"],
               "template": {"preset": "slack", "headers": {"X-Course": "{{ course.id }}"}}}),
    )
    .await;
    let (id, secret) = (sub["id"].as_str().unwrap(), sub["secret"].as_str().unwrap());
    assert_eq!(
        app.deliver(&completion("t1", 601, "Ada", "Intro to Rust"))
            .await
            .0,
        200
    );
    dest.wait_for(1, WAIT).await;

    let test = |query: &str| {
        let url = format!("{}/api/subscriptions/{id}/test{query}", app.base);
        let client = app.client.clone();
        async move {
            let resp = client.post(url).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    // A dry run against the stored event: its enrollment, nothing sent.
    let (status, dry) = test("?event=default/t1").await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["sent"].clone(), dry["ok"].clone()),
        (json!(false), json!(true)),
        "{dry}"
    );
    assert_eq!(dry["event"], "default/t1");
    let request = &dry["request"];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], dest.url);
    let shown: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        shown["text"],
        "🎓 Ada Lovelace completed Intro to Rust in 12 days."
    );
    let header = |name: &str| {
        request["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].clone())
    };
    assert_eq!(header("x-course"), Some(json!("71")));
    assert!(header("webhook-signature").is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dest.received().len(), 1, "a dry run sends nothing");

    // Sent: exactly the request shown, under a test id of its own.
    let (status, sent) = test("?event=t1&send=true").await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(
        (
            sent["sent"].clone(),
            sent["ok"].clone(),
            sent["status"].clone()
        ),
        (json!(true), json!(true), json!(200)),
        "{sent}"
    );
    let got = dest.wait_for(2, WAIT).await;
    assert_eq!(
        got[1].body,
        sent["request"]["body"].as_str().unwrap().as_bytes()
    );
    assert_eq!(got[1].headers["x-course"], "71");
    assert_ne!(got[1].headers["webhook-id"], got[0].headers["webhook-id"]);
    assert_eq!(
        got[1].headers["webhook-id"].to_str().unwrap(),
        sent["webhook_id"]
    );
    verify_with_reference_library(secret, &got[1]);
    let (_, attempts) = app.get(&format!("/api/subscriptions/{id}/attempts")).await;
    assert_eq!(
        attempts["items"].as_array().unwrap().len(),
        1,
        "tests are not recorded"
    );

    // A sample, and what cannot be found.
    let (status, sample) = test("?sample=completed").await;
    assert_eq!(status, 200, "{sample}");
    assert_eq!(sample["topic"], "enrollment.completed");
    assert!(
        sample["request"]["body"]
            .as_str()
            .unwrap()
            .contains("completed")
    );
    assert_eq!(test("?event=default/nope").await.0, 404);
    assert_eq!(test("?sample=nope").await.0, 400);
    assert_eq!(test("?event=t1&sample=completed").await.0, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dest.received().len(), 2);
}

/// The binary, off the runtime's thread (the stand-in receiver runs on it).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::common::process::BIN)
            .args(&args)
            .env_remove("ENROLLHOOK_SECRET")
            .env_remove("ENROLLHOOK_DATABASE_URL")
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn presets_templates_and_tests_from_the_cli(db: TestDatabase) {
    let url = db.url.clone();
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--database".to_string(), url.clone()]);
        cli(all)
    };
    let (ok, _, err) = run(&["migrate"]).await;
    assert!(ok, "{err}");
    let dest = Destination::start().await;
    let (ok, out, err) = run(&[
        "subscriptions",
        "add",
        "--url",
        &dest.url,
        "--allow-private",
        "--topic",
        "enrollment.completed",
        "--preset",
        "slack",
        "--message",
        "{{ student.name }} finished {{ course.name }}",
    ])
    .await;
    assert!(ok, "{err}");
    let sub: Value = serde_json::from_str(&out).unwrap();
    let id = sub["id"].as_str().unwrap().to_owned();
    assert_eq!(sub["template"]["preset"], "slack", "{sub}");

    // --message alone changes the message and keeps the preset.
    let (ok, out, err) = run(&[
        "subscriptions",
        "update",
        &id,
        "--message",
        "Bravo {{ student.first_name }}!",
    ])
    .await;
    assert!(ok, "{err}");
    let updated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(updated["template"]["preset"], "slack", "{updated}");
    assert_eq!(
        updated["template"]["message"],
        "Bravo {{ student.first_name }}!"
    );

    // A dry run on a sample: shown, not sent.
    let (ok, out, err) = run(&["subscriptions", "test", &id, "--sample", "completed"]).await;
    assert!(ok, "{err}");
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["sent"], false);
    let body: Value = serde_json::from_str(dry["request"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["text"], "Bravo [TEST] John!");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(dest.received().is_empty(), "a dry run sends nothing");

    // Sent: the receiver gets what the dry run showed.
    let (ok, out, err) = run(&[
        "subscriptions",
        "test",
        &id,
        "--sample",
        "completed",
        "--send",
        "--allow-private",
    ])
    .await;
    assert!(ok, "{out} {err}");
    let sent: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (sent["sent"].clone(), sent["status"].clone()),
        (json!(true), json!(200)),
        "{sent}"
    );
    let got = dest.wait_for(1, WAIT).await;
    assert_eq!(body_of(&got[0])["text"], "Bravo [TEST] John!");

    // A template file that does not compile is refused with where and why;
    // --preset none removes the template.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crm.json");
    std::fs::write(&file, r#"{"body": "{\"email\": {{ student.email }"}"#).unwrap();
    let (ok, _, err) = run(&[
        "subscriptions",
        "update",
        &id,
        "--template-file",
        file.to_str().unwrap(),
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("template body: line 1"), "{err}");
    let (ok, out, err) = run(&["subscriptions", "update", &id, "--preset", "none"]).await;
    assert!(ok, "{err}");
    let removed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(removed["template"], Value::Null);
    let (ok, _, err) = run(&[
        "subscriptions",
        "add",
        "--url",
        &dest.url,
        "--allow-private",
        "--preset",
        "slak",
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("slack, discord, teams, json"), "{err}");
}
