//! A public endpoint's defences: native TLS, and slow clients cut off.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use enrollhook::config::ServeConfig;
use enrollhook::thinkific::{samples, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn serves_https_with_a_generated_certificate() {
    let (dir, url) = fresh_db();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.tls = Some((cert_path, key_path));
    let app = spawn_with(dir, config).await;
    let port = app.running.as_ref().unwrap().addr.port();

    enrollhook::client::install_crypto_provider();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let body = samples::PROGRESS.as_bytes();
    let resp = client
        .post(format!("https://localhost:{port}/webhooks/thinkific"))
        .header("x-thinkific-hmac-sha256", sign(SECRET.as_bytes(), body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = client
        .get(format!(
            "https://localhost:{port}/api/enrollments/default/4"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = app
        .client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that does not trust the certificate refuses it.
    let untrusting = enrollhook::client::http_client(Duration::from_secs(5)).unwrap();
    assert!(
        untrusting
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
}

async fn short_timeout_app() -> TestApp {
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.read_timeout = Duration::from_millis(300);
    spawn_with(dir, config).await
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let app = short_timeout_app().await;
    let addr = app.running.as_ref().unwrap().addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/thinkific HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection once the header deadline passes.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn slow_bodies_get_408_and_the_service_stays_up() {
    let app = short_timeout_app().await;
    let addr = app.running.as_ref().unwrap().addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/thinkific HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Thinkific-Hmac-Sha256: 00\r\n\r\n{\"id\":")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    // Others are served normally.
    assert_eq!(app.deliver(samples::CREATED.as_bytes()).await.0, 200);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.rate_limit = Some(5);
    let app = spawn_with(dir, config).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let body = enrollment_event(
            &format!("rl-{i}"),
            "progress",
            i,
            1,
            "1.0",
            "2024-01-01T00:00:00Z",
        );
        let resp = app
            .client
            .post(format!("{}/webhooks/thinkific", app.base))
            .header("x-thinkific-hmac-sha256", sign(SECRET.as_bytes(), &body))
            .body(body)
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 429 {
            let retry_after: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry_after));
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    // Nothing rejected by the limit is stored or quarantined: Thinkific retries it.
    let (_, events) = app.get("/api/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 5);
    let (_, q) = app.get("/api/quarantine").await;
    assert_eq!(q["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_source_token_reads_only_its_own_source() {
    let (dir, url) = fresh_db();
    let file = enrollhook::config::FileConfig::parse(
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
    config.insecure_skip_verification = false;
    config.sources = enrollhook::config::Sources::resolve(None, &file);
    config.api_token = Some(enrollhook::config::Secret::new("admin-token"));
    let app = spawn_with(dir, config).await;

    // School B receives an enrollment and a rejected delivery.
    let body = samples::COMPLETED.as_bytes();
    let (s, _) = app
        .deliver_to(
            "/webhooks/thinkific/school-b",
            body,
            Some(&sign(b"key-b", body)),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .deliver_to(
            "/webhooks/thinkific/school-b",
            body,
            Some(&sign(b"wrong", body)),
        )
        .await;
    assert_eq!(s, 401);

    let get = |path: String, token: &'static str| {
        let req = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth(token);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (_, q) = get("/api/quarantine".into(), "admin-token").await;
    let qid = q["items"][0]["id"].as_i64().unwrap();

    // School A's token sees nothing of school B, through any endpoint.
    let empty_lists = [
        "/api/enrollments",
        "/api/courses",
        "/api/events",
        "/api/quarantine",
    ];
    for path in empty_lists {
        let (status, body) = get(path.into(), "token-a").await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["items"].as_array().unwrap().len(), 0, "{path}: {body}");
    }
    let forbidden = [
        "/api/enrollments?source=school-b".to_string(),
        "/api/courses?source=school-b".into(),
        "/api/events?source=school-b".into(),
        "/api/quarantine?source=school-b".into(),
        "/api/enrollments/school-b/75".into(),
        "/api/events/school-b/20190131192005552012814".into(),
        format!("/api/quarantine/{qid}"),
        "/api/subscriptions".into(),
        "/api/events/school-b/20190131192005552012814/attempts".into(),
        "/metrics".into(),
    ];
    for path in &forbidden {
        let (status, body) = get(path.clone(), "token-a").await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let resp = app
        .client
        .post(format!("{}/api/quarantine/{qid}/retry", app.base))
        .bearer_auth("token-a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .bearer_auth("token-a")
        .json(&serde_json::json!({"url": "https://x.example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // School B's token and the admin token see school B's data.
    for token in ["token-b", "admin-token"] {
        for path in empty_lists {
            let (status, body) = get(path.into(), token).await;
            assert_eq!(status, 200);
            assert_eq!(
                body["items"].as_array().unwrap().len(),
                1,
                "{token} {path}: {body}"
            );
        }
        let (status, _) = get("/api/enrollments/school-b/75".into(), token).await;
        assert_eq!(status, 200);
    }
    let (status, _) = get("/api/enrollments".into(), "token-c").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_quarantine_is_bounded() {
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, Some(SECRET));
    config.max_quarantine = 3;
    let app = spawn_with(dir, config).await;
    for i in 0..5 {
        let body = format!("{{\"not\": \"thinkific {i}\"}}");
        let (status, _) = app.deliver(body.as_bytes()).await;
        assert_eq!(status, 400);
    }
    let (_, q) = app.get("/api/quarantine").await;
    let kept: Vec<i64> = q["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, vec![5, 4, 3], "the newest 3 are kept");
}
