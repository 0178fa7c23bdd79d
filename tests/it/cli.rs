//! The command line as a user runs it: the real binary against a real database.

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::process::{BIN, start_server};
use common::{SECRET, fresh_db};
use enrollhook::thinkific::{samples, sign};

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ENROLLHOOK_SECRET")
        .env_remove("ENROLLHOOK_DATABASE_URL")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn serve_refuses_to_start_without_a_secret() {
    let (_dir, url) = fresh_db();
    let o = run(&["serve", "--database", &url, "--listen", "127.0.0.1:0"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("API key") && err.contains("--secret"), "{err}");
    assert!(err.contains("--insecure-skip-verification"), "{err}");
}

#[test]
fn serve_refuses_a_public_address_without_an_api_token() {
    let (_dir, url) = fresh_db();
    let o = run(&[
        "serve",
        "--database",
        &url,
        "--secret",
        "k",
        "--listen",
        "0.0.0.0:0",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--api-token"), "{}", stderr(&o));
}

#[test]
fn sign_prints_the_thinkific_signature() {
    let mut child = Command::new(BIN)
        .args(["sign", "--secret", SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(samples::PROGRESS.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        sign(SECRET.as_bytes(), samples::PROGRESS.as_bytes())
    );
}

#[test]
fn reading_commands_need_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("missing.db").display());
    let o = run(&["enrollments", "--database", &url]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no database at"), "{}", stderr(&o));
    assert!(
        !dir.path().join("missing.db").exists(),
        "reading never creates a database"
    );
}

#[test]
fn send_then_query_from_the_cli() {
    let (_dir, url) = fresh_db();
    let server = start_server(&url, SECRET, &[]);
    let endpoint = format!("{}/webhooks/thinkific", server.base);
    for sample in ["created", "progress", "completed"] {
        let o = run(&["send", sample, "--url", &endpoint, "--secret", SECRET]);
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).starts_with("200 "), "{}", stdout(&o));
    }
    // A wrong key: non-zero exit, the server's reason shown, the delivery quarantined.
    let o = run(&["send", "created", "--url", &endpoint, "--secret", "wrong"]);
    assert!(!o.status.success());
    assert!(
        stdout(&o).starts_with("401 ") && stdout(&o).contains("signature mismatch"),
        "{}",
        stdout(&o)
    );

    let o = run(&["enrollments", "--database", &url]);
    let table = stdout(&o);
    assert!(
        table.lines().next().unwrap().starts_with("source"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("completed") && table.contains("100.0"));

    let o = run(&[
        "enrollments",
        "--database",
        &url,
        "--status",
        "completed",
        "--format",
        "json",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["enrollment_id"], 75);

    let o = run(&[
        "enrollments",
        "--database",
        &url,
        "--course",
        "25",
        "--format",
        "csv",
    ]);
    let csv = stdout(&o);
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("default,4,expired,24.0,25,"),
        "{csv}"
    );

    let o = run(&["enrollments", "--database", &url, "--status", "finished"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("use trial, active, completed or expired"),
        "{}",
        stderr(&o)
    );

    let o = run(&["courses", "--database", &url, "--format", "csv"]);
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));

    let o = run(&["events", "--database", &url, "--topic", "enrollment.*"]);
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));

    let o = run(&["quarantine", "list", "--database", &url]);
    assert!(stdout(&o).contains("signature_mismatch"), "{}", stdout(&o));
    let o = run(&["quarantine", "show", "1", "--database", &url]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(shown["body"], samples::CREATED);

    // Retry with the wrong secret in force: still rejected. With the right one it
    // was signed with "wrong", so it stays rejected too: retry verifies, it does not trust.
    let o = run(&[
        "quarantine",
        "retry",
        "1",
        "--database",
        &url,
        "--secret",
        SECRET,
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("still rejected"), "{}", stderr(&o));
    let o = run(&[
        "quarantine",
        "retry",
        "1",
        "--database",
        &url,
        "--secret",
        "wrong",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already stored"), "{}", stdout(&o));

    let o = run(&["rebuild", "--check", "--database", &url]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("0 rows differ"), "{}", stdout(&o));
}

#[test]
fn subscriptions_from_the_cli() {
    let (_dir, url) = fresh_db();
    assert!(run(&["migrate", "--database", &url]).status.success());
    let o = run(&[
        "subscriptions",
        "add",
        "--database",
        &url,
        "--url",
        "https://crm.example.com/hook",
        "--topic",
        "enrollment.*",
        "--course",
        "68",
        "--header",
        "X-Team: crm",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sub: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let id = sub["id"].as_str().unwrap();
    assert_eq!(sub["headers"]["X-Team"], "crm");
    assert_eq!(sub["course_ids"], serde_json::json!([68]));

    let o = run(&["subscriptions", "list", "--database", &url]);
    assert!(
        stdout(&o).contains(id) && stdout(&o).contains("enrollment.*"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "subscriptions",
        "update",
        id,
        "--database",
        &url,
        "--disable",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let updated: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(updated["enabled"], false);
    let o = run(&["subscriptions", "rotate-secret", id, "--database", &url]);
    let rotated: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_ne!(rotated["secret"], sub["secret"]);

    let o = run(&[
        "subscriptions",
        "add",
        "--database",
        &url,
        "--url",
        "http://10.0.0.5/hook",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("private"), "{}", stderr(&o));
    let o = run(&["replay", "--database", &url, "--event", "default/nope"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no event"), "{}", stderr(&o));
    let o = run(&["subscriptions", "remove", id, "--database", &url]);
    assert!(o.status.success());
    let o = run(&["subscriptions", "remove", id, "--database", &url]);
    assert!(!o.status.success());
}

#[test]
fn broker_subscriptions_from_the_cli() {
    let (_dir, url) = fresh_db();
    assert!(run(&["migrate", "--database", &url]).status.success());
    let add = |extra: &[&str]| {
        let mut args = vec![
            "subscriptions",
            "add",
            "--database",
            &url,
            "--allow-private",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = add(&[
        "--url",
        "nats://127.0.0.1:4222",
        "--subject",
        "thinkific.{source}.{topic}",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let nats: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(nats["subject"], "thinkific.{source}.{topic}");
    let o = add(&[
        "--url",
        "amqp://guest:S3cretPass@127.0.0.1:5672/%2f",
        "--exchange",
        "thinkific",
        "--routing-key",
        "{source}.{topic}",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let amqp: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(amqp["url"], "amqp://guest:***@127.0.0.1:5672/%2f");
    assert_eq!(amqp["exchange"], "thinkific");
    assert_eq!(amqp["routing_key"], "{source}.{topic}");
    let o = add(&[
        "--url",
        "redis://127.0.0.1:6379/0",
        "--stream",
        "thinkific:{source}",
        "--maxlen",
        "1000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let redis: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (&redis["stream"], &redis["maxlen"]),
        (&"thinkific:{source}".into(), &1000.into())
    );

    // The password is in no listing.
    for format in ["table", "json"] {
        let o = run(&[
            "subscriptions",
            "list",
            "--database",
            &url,
            "--format",
            format,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stdout(&o).contains("S3cretPass"), "{}", stdout(&o));
    }
    // A change keeps what it does not name.
    let id = nats["id"].as_str().unwrap();
    let o = run(&[
        "subscriptions",
        "update",
        id,
        "--database",
        &url,
        "--subject",
        "crm.{topic}",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let updated: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(updated["subject"], "crm.{topic}");
    assert_eq!(updated["url"], "nats://127.0.0.1:4222");

    // Mistakes say what to do.
    let o = add(&["--url", "nats://127.0.0.1:4222"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs a `subject`"), "{}", stderr(&o));
    let o = add(&["--url", "https://crm.example.com/h", "--stream", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("redis:// destinations only"),
        "{}",
        stderr(&o)
    );
    let o = add(&["--url", "kafka://127.0.0.1:9092"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nats://"), "{}", stderr(&o));
    let o = run(&[
        "subscriptions",
        "add",
        "--database",
        &url,
        "--url",
        "redis://127.0.0.1:6379",
        "--stream",
        "x",
    ]);
    assert!(!o.status.success(), "private without --allow-private");
    assert!(stderr(&o).contains("non-public"), "{}", stderr(&o));
}
