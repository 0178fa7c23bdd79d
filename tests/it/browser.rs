//! The dashboard in a real browser: the real `enrollhook` binary, driven in
//! Debian's Chromium (headless) through chromedriver with the W3C WebDriver
//! JSON protocol over reqwest. Skipped, saying so, only when Chromium or
//! chromedriver is not installed (`.ci/run` installs both, so CI runs them).
//!
//! Screenshots (desktop 1280 × 900 and phone 390 × 844) are saved under
//! `$CARGO_TARGET_DIR/browser-screenshots/<backend>/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use common::backend::{TestDatabase, on_both_backends};
use common::destination::{Destination, Reply};
use common::process::{Server, free_port, start_server_on};
use enrollhook::thinkific::sign;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ADMIN: &str = "admin-token";
const WAIT: Duration = Duration::from_secs(10);

/// A Chromium session through chromedriver; both end when dropped.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
    downloads: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn installed() -> bool {
    let there = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !there {
        eprintln!(
            "SKIPPED: browser tests need Debian's chromium and chromium-driver \
             ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver"
        );
    }
    there
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let http = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let downloads = profile.path().join("downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!(
            "--user-data-dir={}",
            profile.path().join("chromium").display()
        )])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let reply: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {reply}"))
            .to_owned();
        Browser {
            driver,
            http,
            session: format!("{base}/session/{session}"),
            _profile: profile,
            downloads,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        if reply["value"].get("error").is_some() {
            panic!("WebDriver {path}: {reply}");
        }
        reply["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits until `script` returns something truthy, and returns it.
    async fn until(&self, what: &str, script: &str, wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let v = self.run(script, json!([])).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        let found = self
            .run(
                "const el = document.querySelector(arguments[0]); if (el) el.click(); return !!el;",
                json!([css]),
            )
            .await;
        assert_eq!(found, true, "nothing matches {css}");
    }

    /// Clicks the first button whose text starts with `text` (inside `within`).
    async fn click_button(&self, within: &str, text: &str) {
        let found = self
            .run(
                "const b = [...document.querySelectorAll(arguments[0] + ' button')]
                   .find((b) => b.textContent.trim().startsWith(arguments[1]));
                 if (b) b.click(); return !!b;",
                json!([within, text]),
            )
            .await;
        assert_eq!(found, true, "no button `{text}` in {within}");
    }

    async fn text(&self) -> String {
        self.run("return document.body.innerText;", json!([]))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Loads the dashboard at `hash` with `token` in the tab's session storage.
    async fn open_with_token(&self, server: &Server, token: &str, hash: &str) {
        self.goto(&format!("{}/dashboard", server.base)).await;
        self.run(
            "sessionStorage.setItem('enrollhook.token', arguments[0]);",
            json!([token]),
        )
        .await;
        self.goto(&format!("{}/dashboard#{hash}", server.base))
            .await;
        self.until(
            "the page to load",
            "return !document.querySelector('#view > p.muted') && document.querySelector('#view').children.length > 0;",
            WAIT,
        )
        .await;
    }

    /// Opens `hash` of the dashboard already loaded, emptying the view first
    /// so that waiting for an element cannot find the previous page's.
    async fn visit(&self, server: &Server, hash: &str) {
        self.run(
            "const v = document.getElementById('view'); if (v) v.replaceChildren();",
            json!([]),
        )
        .await;
        self.goto(&format!("{}/dashboard#{hash}", server.base))
            .await;
    }

    /// A download that has finished (Chromium writes `.crdownload` until then).
    async fn downloaded(&self, name: &str) -> String {
        let path = self.downloads.join(name);
        let deadline = Instant::now() + WAIT;
        while !path.exists() {
            assert!(Instant::now() < deadline, "{name} was not downloaded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::fs::read_to_string(path).unwrap()
    }
}

fn screenshots_dir(backend: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")));
    target.join("browser-screenshots").join(backend)
}

/// Two schools with their own tokens, the admin token, and deliveries
/// forwarded to loopback stand-ins with quick retries; on `listen`.
fn start(db: &TestDatabase, dir: &Path, listen: &str) -> Server {
    let config = dir.join("enrollhook.toml");
    std::fs::write(
        &config,
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
    start_server_on(
        listen,
        &db.url,
        "default-key",
        &[
            "--config",
            config.to_str().unwrap(),
            "--api-token",
            ADMIN,
            "--allow-private-destinations",
            "--retry-schedule",
            "200ms",
        ],
    )
}

fn enrollment(id: &str, enrollment: i64, course: i64, pct: &str, name: &str) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&common::enrollment_event(
        id,
        if pct == "100.0" {
            "completed"
        } else {
            "created"
        },
        enrollment,
        course,
        pct,
        "2024-05-01T00:00:00Z",
    ))
    .unwrap();
    body["payload"]["course"]["name"] = json!(name);
    body["payload"]["course_name"] = json!(name);
    // Begun in the last few weeks, so the activity chart has something to show.
    let began = chrono::Utc::now() - chrono::Duration::days(enrollment * 4 % 27 + 1);
    for field in ["created_at", "activated_at", "started_at"] {
        body["payload"][field] = json!(began.to_rfc3339());
    }
    if pct == "100.0" {
        let done = began + chrono::Duration::hours(20);
        body["payload"]["completed_at"] = json!(done.to_rfc3339());
    }
    serde_json::to_vec(&body).unwrap()
}

async fn deliver(http: &reqwest::Client, server: &Server, school: &str, key: &str, body: Vec<u8>) {
    let r = http
        .post(format!("{}/webhooks/thinkific/{school}", server.base))
        .header("x-thinkific-hmac-sha256", sign(key.as_bytes(), &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

async fn api(http: &reqwest::Client, server: &Server, path: &str, token: &str) -> Value {
    http.get(format!("{}{path}", server.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Seeds two schools: school-a has "Algebra" (3 enrollments, 1 completed)
/// and "Biology" (1); school-b has "Chemistry" (2).
async fn seed(http: &reqwest::Client, server: &Server) {
    let a = [
        ("a1", 1, 10, "20.0", "Algebra"),
        ("a2", 2, 10, "100.0", "Algebra"),
        ("a3", 3, 10, "50.0", "Algebra"),
        ("a4", 4, 11, "10.0", "Biology"),
    ];
    for (id, e, c, pct, name) in a {
        deliver(
            http,
            server,
            "school-a",
            "key-a",
            enrollment(id, e, c, pct, name),
        )
        .await;
    }
    for (id, e) in [("b1", 1), ("b2", 2)] {
        let body = enrollment(id, e, 20, "30.0", "Chemistry");
        deliver(http, server, "school-b", "key-b", body).await;
    }
}

/// The value of the overview card labelled `label`, as a number.
async fn card(browser: &Browser, label: &str) -> i64 {
    let text = browser
        .run(
            "const c = [...document.querySelectorAll('.card')]
               .find((c) => c.querySelector('.label').textContent === arguments[0]);
             return c ? c.querySelector('.value').textContent : null;",
            json!([label]),
        )
        .await;
    let text = text.as_str().unwrap_or_else(|| panic!("no card {label}"));
    text.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

async fn no_sideways_scroll(browser: &Browser, page: &str) {
    let sizes = browser
        .run(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            json!([]),
        )
        .await;
    let (scroll, inner) = (sizes[0].as_i64().unwrap(), sizes[1].as_i64().unwrap());
    assert!(inner <= 400, "the window is not phone-sized: {inner}");
    assert!(
        scroll <= inner,
        "{page} scrolls sideways: {scroll} > {inner}"
    );
}

/// The admin's dashboard: overview numbers, a live delivery, the CSV
/// download, the phone layout, and managing a subscription.
async fn the_dashboard_works_in_chromium_for_the_admin(db: TestDatabase) {
    if !installed() {
        return;
    }
    let shots = screenshots_dir(match db.backend {
        common::backend::Backend::Sqlite => "sqlite",
        common::backend::Backend::Postgres => "postgres",
    });
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = start(&db, dir.path(), &listen);
    let http = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
    seed(&http, &server).await;
    let browser = Browser::start().await;
    browser.open_with_token(&server, ADMIN, "/").await;

    // 1. The overview's numbers are /api/courses' for this data set.
    let courses = api(&http, &server, "/api/courses", ADMIN).await;
    let items = courses["items"].as_array().unwrap();
    let sum = |k: &str| items.iter().map(|c| c[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!(card(&browser, "Enrollments").await, sum("enrollments"));
    assert_eq!(sum("enrollments"), 6);
    for (label, key) in [
        ("Active", "active"),
        ("Completed", "completed"),
        ("Trial", "trial"),
    ] {
        assert_eq!(card(&browser, label).await, sum(key), "{label}");
    }
    let rows = browser
        .run(
            "return document.querySelectorAll('.panel table tbody tr.link').length;",
            json!([]),
        )
        .await;
    assert_eq!(rows, items.len());
    browser
        .screenshot(&shots.join("desktop-overview.png"))
        .await;

    // 2. A delivery posted while the page is open shows within 2 s.
    browser
        .until(
            "the live indicator",
            "return document.getElementById('live').dataset.state === 'on';",
            WAIT,
        )
        .await;
    let posted = Instant::now();
    let body = enrollment("a5", 5, 11, "5.0", "Biology");
    deliver(&http, &server, "school-a", "key-a", body).await;
    browser
        .until(
            "the new enrollment on the overview",
            "const c = [...document.querySelectorAll('.card')].find((c) => c.querySelector('.label').textContent === 'Enrollments');
             return c && c.querySelector('.value').textContent.replace(/\\D/g, '') === '7';",
            Duration::from_secs(2),
        )
        .await;
    assert!(posted.elapsed() <= Duration::from_secs(2));

    // The page notices a restart, reconnects, and is live again.
    server.kill();
    browser
        .until(
            "the indicator to say it reconnects",
            "return document.getElementById('live').dataset.state === 'retry';",
            WAIT,
        )
        .await;
    let server = start(&db, dir.path(), &listen);
    browser
        .until(
            "live again",
            "return document.getElementById('live').dataset.state === 'on';",
            WAIT,
        )
        .await;
    let body = enrollment("a7", 7, 11, "5.0", "Biology");
    deliver(&http, &server, "school-a", "key-a", body).await;
    browser
        .until(
            "a delivery after the restart",
            "const c = [...document.querySelectorAll('.card')].find((c) => c.querySelector('.label').textContent === 'Enrollments');
             return c && c.querySelector('.value').textContent.replace(/\\D/g, '') === '8';",
            Duration::from_secs(2),
        )
        .await;

    // An open student page shows a new event of its enrollment.
    browser
        .goto(&format!(
            "{}/dashboard#/enrollments/school-a/1",
            server.base
        ))
        .await;
    browser
        .until(
            "the student page",
            "const h = [...document.querySelectorAll('#view h2')].find((h) => h.textContent.startsWith('Timeline'));
             return h && h.textContent === 'Timeline (1 event)';",
            WAIT,
        )
        .await;
    let progress =
        common::enrollment_event("a1p", "progress", 1, 10, "60.0", "2024-05-03T00:00:00Z");
    deliver(&http, &server, "school-a", "key-a", progress).await;
    browser
        .until(
            "the new event on the student page",
            "const h = [...document.querySelectorAll('#view h2')].find((h) => h.textContent.startsWith('Timeline'));
             return h && h.textContent === 'Timeline (2 events)';",
            Duration::from_secs(2),
        )
        .await;

    // 3. The CSV download of the enrollment list is the API's list.
    browser
        .goto(&format!("{}/dashboard#/enrollments", server.base))
        .await;
    browser
        .until(
            "the enrollment list",
            "return document.querySelector('[data-csv=enrollments]');",
            WAIT,
        )
        .await;
    browser.click("[data-csv=enrollments]").await;
    let csv = browser.downloaded("enrollments.csv").await;
    let from_api = http
        .get(format!("{}/api/enrollments?format=csv", server.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv, from_api);
    let listed = api(&http, &server, "/api/enrollments", ADMIN).await;
    let ids: Vec<String> = csv::Reader::from_reader(csv.as_bytes())
        .records()
        .map(|r| {
            let r = r.unwrap();
            format!("{}/{}", &r[0], &r[1])
        })
        .collect();
    let listed: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}/{}", e["source"].as_str().unwrap(), e["enrollment_id"]))
        .collect();
    assert_eq!(ids, listed);
    browser
        .screenshot(&shots.join("desktop-enrollments.png"))
        .await;

    // 5. A subscription is created, tested and its dead deliveries replayed
    // from the page, against a stand-in receiver.
    let receiver = Destination::start().await;
    browser
        .goto(&format!("{}/dashboard#/forwarding", server.base))
        .await;
    browser
        .until(
            "the form",
            "return document.getElementById('sub-url');",
            WAIT,
        )
        .await;
    browser
        .run(
            "document.getElementById('sub-url').value = arguments[0];
             document.getElementById('sub-topics').value = 'enrollment.*';
             document.getElementById('sub-filter').value = arguments[1];
             document.querySelector('form.sub-form button[type=submit]').click();",
            json!([receiver.url, r#"{"payload.course.id": {"$in": [10, 11]}}"#]),
        )
        .await;
    let created = browser
        .until(
            "the created subscription",
            "const n = document.querySelector('.notice.ok'); return n && n.textContent;",
            WAIT,
        )
        .await;
    assert!(
        created.as_str().unwrap().contains("copy it now"),
        "{created}"
    );
    let subs = api(&http, &server, "/api/subscriptions", ADMIN).await;
    let sub = subs["items"][0].clone();
    assert_eq!(sub["url"], receiver.url.as_str());
    assert_eq!(
        sub["filter"],
        json!({"payload.course.id": {"$in": [10, 11]}})
    );
    let panel = format!(".subscription[data-id='{}']", sub["id"].as_str().unwrap());
    browser
        .until(
            "the subscription panel",
            &format!("return document.querySelector(\"{panel}\");"),
            WAIT,
        )
        .await;
    browser.click_button(&panel, "Send test").await;
    let tested = browser
        .until(
            "the test's answer",
            &format!(
                "const n = document.querySelector(\"{panel} .notice\"); return n && n.textContent;"
            ),
            WAIT,
        )
        .await;
    assert!(
        tested.as_str().unwrap().contains("answered 200"),
        "{tested}"
    );
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].headers["x-enrollhook-topic"], "enrollhook.test");

    // A delivery the receiver refuses until it is dead, then replayed.
    receiver.answer_always(Reply::Status(500));
    deliver(
        &http,
        &server,
        "school-a",
        "key-a",
        enrollment("a6", 6, 10, "15.0", "Algebra"),
    )
    .await;
    let dead_path = format!(
        "/api/subscriptions/{}/deliveries?state=dead",
        sub["id"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while api(&http, &server, &dead_path, ADMIN).await["items"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the delivery never died");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The dead delivery is an alert (`enrollhook.subscription.exhausted`).
    let deadline = Instant::now() + Duration::from_secs(10);
    let exhausted = loop {
        let alerts = api(&http, &server, "/api/alerts", ADMIN).await;
        if let Some(a) = alerts["recent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "subscription.exhausted")
        {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no exhausted alert: {alerts}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    receiver.answer_always(Reply::Status(200));
    let before = receiver.received().len();
    browser
        .goto(&format!("{}/dashboard#/enrollments", server.base))
        .await;
    browser
        .goto(&format!("{}/dashboard#/forwarding", server.base))
        .await;
    let alerts_panel = browser
        .until(
            "the alerts panel",
            "const p = document.querySelector('.panel.alerts tbody'); return p && p.textContent;",
            WAIT,
        )
        .await;
    let alerts_panel = alerts_panel.as_str().unwrap();
    assert!(
        alerts_panel.contains("subscription.exhausted")
            && alerts_panel.contains(exhausted["summary"].as_str().unwrap()),
        "{alerts_panel}"
    );
    browser
        .until(
            "the replay button",
            &format!(
                "return [...document.querySelectorAll(\"{panel} button\")].find((b) => b.textContent.startsWith('Replay dead'));"
            ),
            WAIT,
        )
        .await;
    browser.click_button(&panel, "Replay dead").await;
    browser
        .click_button(&format!("{panel} .confirm"), "Replay")
        .await;
    let replayed = browser
        .until(
            "the replay's confirmation",
            &format!(
                "const n = document.querySelector(\"{panel} .notice.ok\"); return n && n.textContent;"
            ),
            WAIT,
        )
        .await;
    assert!(
        replayed
            .as_str()
            .unwrap()
            .contains("1 dead delivery queued again"),
        "{replayed}"
    );
    let got = receiver.wait_for(before + 1, WAIT).await;
    assert_eq!(
        got.last().unwrap().headers["x-enrollhook-topic"],
        "enrollment.created"
    );

    // A Slack-shaped subscription made from the form; its preview renders a
    // course completion as Slack's `{"text": …}` and sends nothing.
    let before = receiver.received().len();
    browser
        .run(
            "document.getElementById('sub-url').value = arguments[0];
             document.getElementById('sub-topics').value = 'enrollment.completed';
             document.getElementById('sub-preset').value = 'slack';
             document.getElementById('sub-message').value = '{{ student.name }} finished {{ course.name }}';
             document.querySelector('form.sub-form button[type=submit]').click();",
            json!([format!("{}/slack", receiver.url)]),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let slack = loop {
        let subs = api(&http, &server, "/api/subscriptions", ADMIN).await;
        if let Some(s) = subs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["template"]["preset"] == "slack")
        {
            break s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the Slack subscription was not created"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        slack["template"]["message"],
        "{{ student.name }} finished {{ course.name }}"
    );
    let slack_panel = format!(".subscription[data-id='{}']", slack["id"].as_str().unwrap());
    browser
        .until(
            "the Slack subscription's panel",
            &format!("return document.querySelector(\"{slack_panel}\");"),
            WAIT,
        )
        .await;
    assert!(
        browser
            .run(
                &format!("return document.querySelector(\"{slack_panel}\").textContent;"),
                json!([])
            )
            .await
            .as_str()
            .unwrap()
            .contains("preset slack")
    );
    browser.click_button(&slack_panel, "Preview").await;
    let preview = browser
        .until(
            "the preview",
            &format!(
                "const n = document.querySelector(\"{slack_panel} pre.request\"); return n && n.textContent;"
            ),
            WAIT,
        )
        .await;
    let preview = preview.as_str().unwrap();
    assert!(preview.starts_with("POST "), "{preview}");
    let body = &preview[preview.find("\n\n").expect("headers, then the body") + 2..];
    let body: Value = serde_json::from_str(body).expect("the preview's body is JSON");
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.contains(" finished ")),
        "{body}"
    );
    assert_eq!(receiver.received().len(), before, "a preview sends nothing");
    browser
        .screenshot(&shots.join("desktop-forwarding.png"))
        .await;

    // 4. At 390 × 844 no page scrolls sideways.
    browser.resize(390, 844).await;
    for (hash, name) in [
        ("/", "overview"),
        ("/enrollments", "enrollments"),
        ("/forwarding", "forwarding"),
        ("/quarantine", "quarantine"),
    ] {
        browser
            .goto(&format!("{}/dashboard#{hash}", server.base))
            .await;
        browser
            .until(
                "the page",
                "return document.querySelector('#view h1');",
                WAIT,
            )
            .await;
        no_sideways_scroll(&browser, name).await;
        browser
            .screenshot(&shots.join(format!("phone-{name}.png")))
            .await;
    }
}

/// Check 6: with a school's token, the other school's data and the forwarding
/// controls are absent.
async fn a_school_sees_only_its_own_in_chromium(db: TestDatabase) {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(&db, dir.path(), "127.0.0.1:0");
    let http = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
    seed(&http, &server).await;
    let browser = Browser::start().await;
    browser.open_with_token(&server, "token-a", "/").await;
    let text = browser.text().await;
    assert!(
        text.contains("Algebra") && text.contains("Biology"),
        "{text}"
    );
    assert!(
        !text.contains("Chemistry") && !text.contains("school-b"),
        "{text}"
    );
    assert_eq!(card(&browser, "Enrollments").await, 4);
    browser
        .goto(&format!("{}/dashboard#/enrollments", server.base))
        .await;
    browser
        .until(
            "the enrollment list",
            "return document.querySelector('[data-csv=enrollments]');",
            WAIT,
        )
        .await;
    assert!(!browser.text().await.contains("Chemistry"));
    browser
        .goto(&format!("{}/dashboard#/forwarding", server.base))
        .await;
    let message = browser
        .until(
            "the forwarding page",
            "const e = document.querySelector('#view .empty'); return e && e.textContent;",
            WAIT,
        )
        .await;
    assert!(
        message.as_str().unwrap().contains("admin token"),
        "{message}"
    );
    let controls = browser
        .run(
            "return document.querySelectorAll('#sub-url, .subscription, .actions button').length;",
            json!([]),
        )
        .await;
    assert_eq!(controls, 0);
}

/// A `lesson.completed` in the published sample's shape, for Algebra (course
/// 10 of school-a): lesson `(id, position)` of its one chapter, by `user`.
fn lesson(id: &str, user: i64, enrollment: i64, lesson: (i64, i64), at: &str) -> Vec<u8> {
    let mut body: Value =
        serde_json::from_str(enrollhook::thinkific::samples::LESSON_COMPLETED).unwrap();
    body["id"] = json!(id);
    body["created_at"] = json!(at);
    let payload = &mut body["payload"];
    payload["course"] = json!({"id": 10, "name": "Algebra"});
    payload["enrollment"]["id"] = json!(enrollment);
    payload["lesson"]["id"] = json!(lesson.0);
    payload["lesson"]["name"] = json!(format!("Algebra lesson {}", lesson.1 + 1));
    payload["lesson"]["position"] = json!(lesson.1);
    payload["user"]["id"] = json!(user);
    payload["user"]["email"] = json!(format!("s{}@example.com", user - 1000));
    serde_json::to_vec(&body).unwrap()
}

/// A `quiz.attempted` of quiz 7, which (like Thinkific's) names no course.
fn quiz(id: &str, user: i64, grade: f64, attempts: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "resource": "quiz", "action": "attempted",
        "tenant_id": "12345", "created_at": "2024-05-03T10:00:00Z", "payload": {
            "attempts": attempts, "correct_count": 3, "incorrect_count": 1, "grade": grade,
            "result_id": 5, "quiz": {"id": 7, "name": "Algebra checkpoint"},
            "user": {"id": user, "email": format!("s{}@example.com", user - 1000)}}}))
    .unwrap()
}

/// A student name that is markup: it must show as text, never as an element.
const MARKUP_NAME: &str = "<img src=x onerror=alert(1)>";

/// `seed`, then in Algebra: enrollment 1 (user 1001) stopped after lesson 1
/// in May 2024, 2 completed all three, 3 did two of them yesterday (not
/// stalled), 8 (user 1008, named [`MARKUP_NAME`]) never began (stalled before
/// its first lesson); quiz 7 attempted by users 1001 and 1002 (1001's quiz
/// arrives before its older lesson, so arrival and Thinkific's order differ).
async fn seed_learning(http: &reqwest::Client, server: &Server) {
    seed(http, server).await;
    let mut stuck: Value =
        serde_json::from_slice(&enrollment("a8", 8, 10, "0.0", "Algebra")).unwrap();
    stuck["payload"]["user"]["first_name"] = json!(MARKUP_NAME);
    stuck["payload"]["user"]["last_name"] = json!("");
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let events = [
        serde_json::to_vec(&stuck).unwrap(),
        quiz("q1", 1001, 60.0, 1),
        lesson("l1", 1001, 1, (501, 0), "2024-05-02T09:00:00Z"),
        lesson("l2", 1002, 2, (501, 0), "2024-05-02T09:00:00Z"),
        lesson("l3", 1002, 2, (502, 1), "2024-05-02T10:00:00Z"),
        lesson("l4", 1002, 2, (503, 2), "2024-05-02T11:00:00Z"),
        lesson("l5", 1003, 3, (501, 0), &yesterday),
        lesson("l6", 1003, 3, (502, 1), &yesterday),
        quiz("q2", 1002, 75.0, 1),
        quiz("q3", 1002, 95.0, 2),
    ];
    for body in events {
        deliver(http, server, "school-a", "key-a", body).await;
    }
}

/// Rows of numbers as `f64`: the page's `60` and the API's `60.0` are one grade.
fn numbers(rows: &Value) -> Vec<Vec<f64>> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_f64().unwrap_or_else(|| panic!("not a number: {n}")))
                .collect()
        })
        .collect()
}

fn backend_name(db: &TestDatabase) -> &'static str {
    match db.backend {
        common::backend::Backend::Sqlite => "sqlite",
        common::backend::Backend::Postgres => "postgres",
    }
}

/// The learning views (issues #17, #20) hold what the learning API answers:
/// the funnel (enrolled → lessons → completed) and the stalled list of a
/// course, the stalled-days window, a student's page with its timeline in
/// Thinkific's order and live, the quizzes table and its CSV; empty data says
/// so; a name that is markup shows as text; nothing scrolls sideways on a
/// phone; a school's token sees only its school.
async fn the_learning_views_work_in_chromium(db: TestDatabase) {
    if !installed() {
        return;
    }
    let shots = screenshots_dir(backend_name(&db));
    let dir = tempfile::tempdir().unwrap();
    let server = start(&db, dir.path(), "127.0.0.1:0");
    let http = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
    seed_learning(&http, &server).await;
    let browser = Browser::start().await;
    browser
        .open_with_token(&server, ADMIN, "/courses/school-a/10")
        .await;

    // The funnel on the page is the API's: enrolled, the lessons in course
    // order with completions and stalled students, then the course's completions.
    let funnel = api(&http, &server, "/api/courses/school-a/10/funnel", ADMIN).await;
    let course = api(&http, &server, "/api/courses?source=school-a", ADMIN).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["course_id"] == 10)
        .cloned()
        .unwrap();
    let mut expected = vec![json!(["enrolled", null, funnel["enrolled"], null])];
    for l in funnel["lessons"].as_array().unwrap() {
        expected.push(json!([
            "lesson",
            l["lesson_id"],
            l["completed"],
            l["stalled_here"]
        ]));
    }
    expected.push(json!(["completed", null, course["completed"], null]));
    assert_eq!(
        expected,
        vec![
            json!(["enrolled", null, 4, null]),
            json!(["lesson", 501, 3, 1]),
            json!(["lesson", 502, 2, 0]),
            json!(["lesson", 503, 1, 0]),
            json!(["completed", null, 1, null]),
        ],
        "the data set's funnel: {funnel}"
    );
    assert_eq!(
        (
            funnel["stalled"].clone(),
            funnel["stalled_before_first_lesson"].clone()
        ),
        (json!(2), json!(1)),
        "{funnel}"
    );
    let shown = browser
        .until(
            "the funnel table",
            "const rows = [...document.querySelectorAll('.funnel-table tbody tr')];
             const num = (r, k) => { const c = r.querySelector(`[data-${k}]`); return c ? Number(c.dataset[k]) : null; };
             return rows.length && rows.map((r) => [r.dataset.step,
               r.dataset.lesson ? Number(r.dataset.lesson) : null, num(r, 'count'), num(r, 'stalled')]);",
            WAIT,
        )
        .await;
    assert_eq!(shown, json!(expected));
    // The chart draws the same steps in the same order, and its labels say it.
    let chart = browser
        .run(
            "return [...document.querySelectorAll('ol.funnel-chart > li')].map((li) =>
               [li.dataset.step, li.querySelector('.step-label').textContent,
                li.querySelector('.track .value').textContent]);",
            json!([]),
        )
        .await;
    assert_eq!(
        chart,
        json!([
            ["enrolled", "Enrolled", "4 · 100 %"],
            ["lesson", "1. Algebra lesson 1", "3 · 75 %"],
            ["lesson", "2. Algebra lesson 2", "2 · 50 %"],
            ["lesson", "3. Algebra lesson 3", "1 · 25 %"],
            ["completed", "Completed the course", "1 · 25 %"],
        ])
    );
    let stalled_bars = browser
        .run(
            "return [...document.querySelectorAll('ol.funnel-chart .track.thin .value')].map((v) => v.textContent);",
            json!([]),
        )
        .await;
    assert_eq!(stalled_bars, json!(["1 stalled here"]));

    // The stalled list is the API's, most inactive first: 8 (never began,
    // enrolled 2024-05-01) before 1 (a lesson on 2024-05-02); 3 was active.
    let stalled = api(
        &http,
        &server,
        "/api/enrollments?stalled_days=14&course_id=10&source=school-a&order=most_inactive",
        ADMIN,
    )
    .await;
    let ids: Vec<i64> = stalled["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["enrollment_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![8, 1], "{stalled}");
    let rows = browser
        .run(
            "return [...document.querySelectorAll('#stalled tbody tr')].map((r) =>
               [Number(r.dataset.enrollment), r.querySelector('.lesson-cell').textContent,
                r.querySelector('a.student-link').getAttribute('href'),
                Number(r.querySelector('[data-days]').dataset.days)]);",
            json!([]),
        )
        .await;
    let items = stalled["items"].as_array().unwrap();
    let expected_rows: Vec<Value> = items
        .iter()
        .map(|e| {
            json!([
                e["enrollment_id"],
                e["learning"]["last_lesson_name"]
                    .as_str()
                    .unwrap_or("none yet"),
                format!("#/students/school-a/{}", e["user_id"])
            ])
        })
        .collect();
    let without_days: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!(r.as_array().unwrap()[..3]))
        .collect();
    assert_eq!(without_days, expected_rows);
    assert_eq!(rows[1][1], "Algebra lesson 1");
    // Days stalled: the API's, read a moment apart (it counts to 3 decimals).
    for (row, e) in rows.as_array().unwrap().iter().zip(items) {
        let (page, api) = (
            row[3].as_f64().unwrap(),
            e["learning"]["days_inactive"].as_f64().unwrap(),
        );
        assert!(page > 900.0 && (page - api).abs() < 0.01, "{page} vs {api}");
    }
    // The markup name is text: shown literally, no element made of it.
    let markup = browser
        .run(
            "return [document.querySelector('#stalled tr[data-enrollment=\"8\"] a.student-link').textContent,
                     document.querySelectorAll('#view img').length];",
            json!([]),
        )
        .await;
    assert_eq!(markup, json!([MARKUP_NAME, 0]));
    browser.click("#stalled [data-csv]").await;
    let csv = browser.downloaded("stalled-10.csv").await;
    let from_api = http
        .get(format!(
            "{}/api/enrollments?stalled_days=14&course_id=10&source=school-a&order=most_inactive&format=csv",
            server.base
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv, from_api);
    let listed: Vec<String> = csv::Reader::from_reader(csv.as_bytes())
        .records()
        .map(|r| r.unwrap()[1].to_owned())
        .collect();
    assert_eq!(listed, ["8", "1"], "{csv}");
    browser
        .run(
            "document.getElementById('funnel').scrollIntoView(); window.scrollBy(0, -12);",
            json!([]),
        )
        .await;
    browser.screenshot(&shots.join("desktop-funnel.png")).await;

    // A shorter stalled-days window: enrollment 3 (active yesterday) too,
    // as the API counts it, and the window stays in the address.
    browser
        .run(
            "const i = document.getElementById('stalled-days'); i.value = '1'; i.form.requestSubmit();",
            json!([]),
        )
        .await;
    let short = api(
        &http,
        &server,
        "/api/enrollments?stalled_days=1&course_id=10&source=school-a&order=most_inactive",
        ADMIN,
    )
    .await;
    let short_ids: Vec<i64> = short["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["enrollment_id"].as_i64().unwrap())
        .collect();
    assert_eq!(short_ids, vec![8, 1, 3], "{short}");
    let rows = browser
        .until(
            "the stalled list for 1 day",
            "const rows = [...document.querySelectorAll('#stalled tbody tr')];
             return location.hash.includes('stalled_days=1') && rows.length === 3
               && rows.map((r) => Number(r.dataset.enrollment));",
            WAIT,
        )
        .await;
    assert_eq!(rows, json!(short_ids));
    let short_funnel = api(
        &http,
        &server,
        "/api/courses/school-a/10/funnel?stalled_days=1",
        ADMIN,
    )
    .await;
    let stalled_here = browser
        .run(
            "return [...document.querySelectorAll('.funnel-table tr[data-lesson] [data-stalled]')].map((c) => Number(c.dataset.stalled));",
            json!([]),
        )
        .await;
    let from_api: Vec<Value> = short_funnel["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["stalled_here"].clone())
        .collect();
    assert_eq!(stalled_here, json!(from_api));
    assert_eq!(from_api, [json!(1), json!(1), json!(0)]);

    // The student page from the stalled row: enrollments, lessons, quizzes,
    // and the timeline in the order things happened at Thinkific (the quiz
    // arrived before the older lesson).
    browser
        .click("#stalled tbody tr[data-enrollment='1'] a.student-link")
        .await;
    let page = api(&http, &server, "/api/students/school-a/1001", ADMIN).await;
    let mut timeline: Vec<(String, i64, String)> = page["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["created_at"].as_str().unwrap().to_owned(),
                e["seq"].as_i64().unwrap(),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let arrived: Vec<String> = timeline.iter().map(|e| e.2.clone()).collect();
    assert_eq!(arrived, ["a1", "q1", "l1"], "{page}");
    timeline.sort();
    let happened: Vec<String> = timeline.iter().map(|e| e.2.clone()).collect();
    assert_eq!(happened, ["a1", "l1", "q1"]);
    let shown = browser
        .until(
            "the student's timeline",
            "const items = [...document.querySelectorAll('#student-timeline li')];
             return location.hash === '#/students/school-a/1001' && items.length
               && items.map((li) => li.dataset.event);",
            WAIT,
        )
        .await;
    assert_eq!(shown, json!(happened));
    let student = browser
        .run(
            "return [document.getElementById('student-name').textContent,
               [...document.querySelectorAll('.student-course[data-enrollment=\"1\"] ol.lessons li')].map((li) => Number(li.dataset.lesson)),
               [...document.querySelectorAll('#student-quizzes tbody tr')].map((r) =>
                 [Number(r.dataset.quiz), Number(r.querySelector('[data-attempts]').dataset.attempts),
                  Number(r.querySelector('[data-best]').dataset.best)])];",
            json!([]),
        )
        .await;
    let lessons: Vec<Value> = page["enrollments"][0]["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lesson_id"].clone())
        .collect();
    let quizzes: Vec<Value> = page["quizzes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| json!([q["quiz_id"], q["attempts"], q["best_grade"]]))
        .collect();
    assert_eq!(lessons, [json!(501)]);
    assert_eq!(numbers(&json!(quizzes)), [[7.0, 1.0, 60.0]]);
    assert_eq!(student[0], "Stu Dent");
    assert_eq!(student[1], json!(lessons));
    assert_eq!(numbers(&student[2]), numbers(&json!(quizzes)));
    let text = browser.text().await;
    assert!(
        text.contains("Algebra lesson 1") && text.contains("Algebra checkpoint"),
        "{text}"
    );
    // It updates live: a lesson completed now shows without a reload.
    browser
        .until(
            "the live indicator",
            "return document.getElementById('live').dataset.state === 'on';",
            WAIT,
        )
        .await;
    let now = chrono::Utc::now().to_rfc3339();
    deliver(
        &http,
        &server,
        "school-a",
        "key-a",
        lesson("l7", 1001, 1, (502, 1), &now),
    )
    .await;
    browser
        .until(
            "the new lesson in the timeline and the enrollment",
            "const items = [...document.querySelectorAll('#student-timeline li')];
             const lessons = document.querySelectorAll('.student-course[data-enrollment=\"1\"] ol.lessons li');
             return items.length === 4 && items[3].dataset.event === 'l7' && lessons.length === 2;",
            Duration::from_secs(3),
        )
        .await;
    browser.screenshot(&shots.join("desktop-student.png")).await;

    // The markup-named student's own page: the name is text there too.
    browser.visit(&server, "/students/school-a/1008").await;
    let heading = browser
        .until(
            "the markup-named student",
            "const h = document.getElementById('student-name');
             return h && h.dataset.user === '1008' && [h.textContent, document.querySelectorAll('#view img').length];",
            WAIT,
        )
        .await;
    assert_eq!(heading, json!([MARKUP_NAME, 0]));

    // The quizzes table and its CSV are the API's.
    browser.visit(&server, "/quizzes").await;
    let quizzes = api(&http, &server, "/api/quizzes", ADMIN).await;
    let expected: Vec<Value> = quizzes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            json!([
                q["quiz_id"],
                q["students"],
                q["attempts"],
                q["average_best_grade"],
                q["median_best_grade"]
            ])
        })
        .collect();
    assert_eq!(
        numbers(&json!(expected)),
        [[7.0, 2.0, 3.0, 77.5, 77.5]],
        "{quizzes}"
    );
    let shown = browser
        .until(
            "the quizzes table",
            "const rows = [...document.querySelectorAll('#quizzes tbody tr')];
             const n = (r, k) => Number(r.querySelector(`[data-${k}]`).dataset[k]);
             return rows.length && rows.map((r) => [Number(r.dataset.quiz), n(r, 'students'),
               n(r, 'attempts'), n(r, 'average'), n(r, 'median')]);",
            WAIT,
        )
        .await;
    assert_eq!(numbers(&shown), numbers(&json!(expected)));
    browser.click("[data-csv=quizzes]").await;
    let csv = browser.downloaded("quizzes.csv").await;
    let from_api = http
        .get(format!("{}/api/quizzes?format=csv", server.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv, from_api);
    assert!(
        csv.starts_with("source,quiz_id,quiz_name,course_id,students,attempts,"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().nth(1),
        Some("school-a,7,Algebra checkpoint,,2,3,77.5,77.5"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 2, "{csv}");

    // Empty data says so: Biology has no lesson and no quiz; user 999 is unknown.
    browser.visit(&server, "/courses/school-a/11").await;
    let notes = browser
        .until(
            "Biology's empty learning panels",
            "const f = document.querySelector('#funnel .empty-note'), q = document.querySelector('#course-quizzes .empty-note');
             return f && q && [f.textContent, q.textContent];",
            WAIT,
        )
        .await;
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .starts_with("No lesson completed"),
        "{notes}"
    );
    assert!(
        notes[1].as_str().unwrap().starts_with("No quiz attempt"),
        "{notes}"
    );
    // A course known only from a lesson event (no enrollment event yet)
    // still shows its funnel (named as the API names it: by an enrollment).
    let mut orphan: Value =
        serde_json::from_slice(&lesson("l9", 1009, 99, (901, 0), "2024-05-04T09:00:00Z")).unwrap();
    orphan["payload"]["course"] = json!({"id": 12, "name": "Geometry"});
    deliver(
        &http,
        &server,
        "school-a",
        "key-a",
        serde_json::to_vec(&orphan).unwrap(),
    )
    .await;
    let geometry = api(&http, &server, "/api/courses/school-a/12/funnel", ADMIN).await;
    assert_eq!(geometry["lessons"][0]["completed"], 1, "{geometry}");
    browser.visit(&server, "/courses/school-a/12").await;
    let shown = browser
        .until(
            "the lesson-only course",
            "const rows = [...document.querySelectorAll('.funnel-table tbody tr')];
             return rows.length && [document.querySelector('#view h1').textContent,
               rows.map((r) => [r.dataset.step, Number(r.querySelector('[data-count]').dataset.count)])];",
            WAIT,
        )
        .await;
    assert_eq!(
        shown,
        json!([
            geometry["course_name"].as_str().unwrap_or("Course 12"),
            [
                ["enrolled", geometry["enrolled"]],
                ["lesson", geometry["lessons"][0]["completed"]]
            ]
        ])
    );

    browser.visit(&server, "/students/school-a/999").await;
    let unknown = browser
        .until(
            "the unknown student",
            "const e = document.querySelector('#view .empty'); return e && e.textContent.includes('999') && e.textContent;",
            WAIT,
        )
        .await;
    assert!(
        unknown.as_str().unwrap().contains("No student 999"),
        "{unknown}"
    );

    // On a phone nothing scrolls sideways.
    browser.resize(390, 844).await;
    for (hash, name) in [
        ("/courses/school-a/10", "funnel"),
        ("/students/school-a/1001", "student"),
        ("/quizzes", "quizzes"),
    ] {
        browser.visit(&server, hash).await;
        browser
            .until(
                "the page",
                "return document.querySelector('.funnel-table, #student-timeline, #quizzes');",
                WAIT,
            )
            .await;
        no_sideways_scroll(&browser, name).await;
        if name == "funnel" {
            browser
                .run(
                    "document.getElementById('funnel').scrollIntoView(); window.scrollBy(0, -12);",
                    json!([]),
                )
                .await;
        }
        browser
            .screenshot(&shots.join(format!("phone-{name}.png")))
            .await;
    }

    // A school's token: its own funnel; not the other school's quizzes,
    // course or students.
    let school_b = Browser::start().await;
    school_b
        .open_with_token(&server, "token-b", "/quizzes")
        .await;
    let empty = school_b
        .until(
            "the empty quizzes page",
            "const e = document.querySelector('#view .empty'); return e && e.textContent;",
            WAIT,
        )
        .await;
    assert!(
        empty.as_str().unwrap().starts_with("No quiz attempted"),
        "{empty}"
    );
    for hash in ["/courses/school-a/10", "/students/school-a/1001"] {
        school_b.visit(&server, hash).await;
        let refused = school_b
            .until(
                "the refusal",
                "const e = document.querySelector('#view .error'); return e && e.textContent;",
                WAIT,
            )
            .await;
        assert!(
            refused
                .as_str()
                .unwrap()
                .contains("can read source `school-b` only"),
            "{refused}"
        );
        let text = school_b.text().await;
        assert!(
            !text.contains("Algebra lesson") && !text.contains("Stu Dent"),
            "{text}"
        );
    }
    let school_a = Browser::start().await;
    school_a
        .open_with_token(&server, "token-a", "/courses/school-a/10")
        .await;
    let rows = school_a
        .until(
            "school-a's funnel",
            "return document.querySelectorAll('.funnel-table tbody tr[data-lesson]').length;",
            WAIT,
        )
        .await;
    assert_eq!(rows, 3);
}

/// Issue #16's line on the overview: the newest scheduled reconciliation of
/// the schools a token reads, as `/api/reconciliations` reports it; nothing
/// for a school that has none.
async fn the_overview_shows_the_last_reconciliation_in_chromium(db: TestDatabase) {
    if !installed() {
        return;
    }
    crate::thinkific_rest::reconcile_from_stand_in(&db.url, "school-a", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&db, dir.path(), "127.0.0.1:0");
    let http = enrollhook::client::http_client(Duration::from_secs(30)).unwrap();
    let runs = api(&http, &server, "/api/reconciliations?limit=1", ADMIN).await;
    let run = &runs["items"][0];
    assert_eq!(run["source"], "school-a", "{runs}");
    let summary = run["report"]["summary"].as_str().unwrap();
    assert_eq!(summary, "3 enrollments were missing, now added; 0 agreed");

    let browser = Browser::start().await;
    browser.open_with_token(&server, ADMIN, "/").await;
    let line = browser
        .until(
            "the reconciliation line",
            "const p = document.getElementById('last-reconciliation'); return p && p.textContent;",
            WAIT,
        )
        .await;
    let line = line.as_str().unwrap();
    assert!(
        line.starts_with("Last checked with Thinkific ")
            && line.ends_with(&format!("(school-a): {summary}")),
        "{line}"
    );
    // The time shown is the run's end, in the browser's local form.
    let finished = browser
        .run(
            "return new Date(arguments[0]).toLocaleString();",
            json!([run["finished_at"]]),
        )
        .await;
    assert!(line.contains(finished.as_str().unwrap()), "{line}");
    // The enrollments it added are on the overview too.
    assert_eq!(card(&browser, "Enrollments").await, 3);

    // School-b's token reads no run: no line.
    let school_b = Browser::start().await;
    school_b.open_with_token(&server, "token-b", "/").await;
    let line = school_b
        .run(
            "const p = document.getElementById('last-reconciliation'); return p && p.textContent;",
            json!([]),
        )
        .await;
    assert_eq!(line, "");
}

on_both_backends!(
    multi_thread: the_dashboard_works_in_chromium_for_the_admin,
    a_school_sees_only_its_own_in_chromium,
    the_learning_views_work_in_chromium,
    the_overview_shows_the_last_reconciliation_in_chromium
);
