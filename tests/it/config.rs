//! Security defects of the command line (#15.4, #15.8), through the real binary:
//! empty secrets must stop `serve`, and secrets must not reach logs or `--help`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::fresh_db;
use crate::common::process::BIN;

/// `enrollhook serve …` with a clean environment (no inherited secrets).
fn serve(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("ENROLLHOOK_SECRET")
        .env_remove("ENROLLHOOK_API_TOKEN")
        .env_remove("ENROLLHOOK_DATABASE_URL")
        .env_remove("ENROLLHOOK_CONFIG")
        .env("RUST_LOG", "enrollhook=info")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `serve` expecting it to refuse: its stderr, or a panic if it is still
/// running after 20 s (it started, which is the defect).
fn refused(mut cmd: Command) -> String {
    let mut child: Child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "serve exited successfully: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started instead of refusing the configuration");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `serve` until it says where it listens; returns everything it logged until then.
fn start_and_log(mut cmd: Command) -> String {
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("listening on") {
                let _ = tx.send(seen.clone());
            }
        }
        let _ = tx.send(seen);
    });
    let log = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let log = log.expect("serve did not report its address");
    assert!(log.contains("listening on"), "serve did not start: {log}");
    log
}

#[test]
fn serve_refuses_an_empty_secret_from_the_environment() {
    let (_dir, url) = fresh_db();
    let err = refused(serve(&["--database", &url], &[("ENROLLHOOK_SECRET", "")]));
    assert!(
        err.contains("ENROLLHOOK_SECRET") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn serve_refuses_empty_secrets_and_tokens_in_the_config_file_or_flags() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("secret = \"\"\n", &[], "`secret` in"),
        (
            "[[source]]\nname = \"acme\"\nsecret = \"   \"\n",
            &[],
            "`secret` of [[source]] `acme`",
        ),
        (
            "[[source]]\nname = \"acme\"\nsecret = \"a-long-enough-school-key\"\napi_token = \"\"\n",
            &[],
            "`api_token` of [[source]] `acme`",
        ),
        (
            "api_token = \" \"\n",
            &["--secret", "a-long-enough-school-key"],
            "`api_token` in",
        ),
        (
            "",
            &["--secret", "a-long-enough-school-key", "--api-token", ""],
            "--api-token",
        ),
    ];
    for (toml, flags, named) in cases {
        let (dir, url) = fresh_db();
        let file = dir.path().join("enrollhook.toml");
        std::fs::write(&file, toml).unwrap();
        let mut args = vec!["--database", &url, "--config", file.to_str().unwrap()];
        args.extend_from_slice(flags);
        let err = refused(serve(&args, &[]));
        assert!(
            err.contains(named) && err.contains("empty"),
            "config {toml:?} {flags:?}: {err}"
        );
    }
}

#[test]
fn serve_warns_about_a_short_secret() {
    let (_dir, url) = fresh_db();
    let log = start_and_log(serve(&["--database", &url, "--secret", "short"], &[]));
    assert!(log.contains("shorter than 16 bytes"), "{log}");
    assert!(
        !log.contains("short\""),
        "the secret itself is not logged: {log}"
    );
}

#[tokio::test]
async fn startup_log_hides_a_database_password_containing_at() {
    let db = crate::common::pg::TestDb::create().await;
    // The local server trusts every password; a password with `@` still connects.
    let url = db.url.replacen("postgres@", "postgres:s3cr@tpw@", 1);
    assert!(url.contains(":s3cr@tpw@"), "{url}");
    let log = start_and_log(serve(
        &["--database", &url, "--secret", "a-long-enough-school-key"],
        &[],
    ));
    assert!(!log.contains("s3cr") && !log.contains("tpw"), "{log}");
    assert!(log.contains("postgres:***@127.0.0.1"), "{log}");
}

#[test]
fn help_does_not_print_secret_environment_values() {
    let secrets = [
        (
            "ENROLLHOOK_DATABASE_URL",
            "postgres://app:hunter2-db@db/enrollhook",
        ),
        ("ENROLLHOOK_SECRET", "hunter2-secret"),
        ("ENROLLHOOK_API_TOKEN", "hunter2-token"),
        ("ENROLLHOOK_THINKIFIC_API_KEY", "hunter2-api-key"),
    ];
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["thinkific", "--help"],
    ] {
        let out = Command::new(BIN).args(args).envs(secrets).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ENROLLHOOK_"), "{args:?}: {text}");
        assert!(!text.contains("hunter2"), "{args:?} shows a secret: {text}");
    }
}

#[test]
fn reconcile_every_needs_a_source_with_api_credentials() {
    let (_dir, url) = fresh_db();
    // A secret is the API key, but without a subdomain (or a token) nothing can call the API.
    let err = refused(serve(
        &["--database", &url, "--reconcile-every", "24h"],
        &[("ENROLLHOOK_SECRET", "a-long-enough-school-api-key")],
    ));
    assert!(
        err.contains("--reconcile-every needs a source with Thinkific API credentials"),
        "{err}"
    );
    let err = refused(serve(
        &["--database", &url, "--reconcile-every", "10s"],
        &[("ENROLLHOOK_SECRET", "a-long-enough-school-api-key")],
    ));
    assert!(err.contains("at least 1m"), "{err}");
}
