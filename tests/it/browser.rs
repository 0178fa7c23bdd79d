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
    receiver.answer_always(Reply::Status(200));
    let before = receiver.received().len();
    browser
        .goto(&format!("{}/dashboard#/enrollments", server.base))
        .await;
    browser
        .goto(&format!("{}/dashboard#/forwarding", server.base))
        .await;
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

on_both_backends!(
    multi_thread: the_dashboard_works_in_chromium_for_the_admin,
    a_school_sees_only_its_own_in_chromium
);
