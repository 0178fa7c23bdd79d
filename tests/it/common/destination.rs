//! A stand-in for a downstream endpoint (a CRM, a chat webhook…): a real HTTP
//! server on port 0 that records what it receives and answers as scripted,
//! including the failures real endpoints produce.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// How the destination answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// 429 or 503 with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Answers only after this long (longer than the sender's timeout = a timeout).
    Hang(Duration),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub method: axum::http::Method,
    /// Path and query, as a template may render them.
    pub uri: axum::http::Uri,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: std::time::Instant,
}

#[derive(Clone, Default)]
struct Shared {
    script: Arc<Mutex<VecDeque<Reply>>>,
    /// Answer for every request once the script is used up.
    default: Arc<Mutex<Option<Reply>>>,
    received: Arc<Mutex<Vec<Received>>>,
    /// Per webhook-id: fail the first attempt of each message with 500.
    fail_first_of_each: Arc<Mutex<Option<std::collections::HashSet<String>>>>,
}

pub struct Destination {
    pub url: String,
    shared: Shared,
}

impl Destination {
    pub async fn start() -> Destination {
        let shared = Shared::default();
        let app = Router::new()
            .route("/hook", post(handle))
            // Any other path or method too: a template renders its own.
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Destination {
            url: format!("http://{addr}/hook"),
            shared,
        }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    pub fn answer_always(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = Some(reply);
    }

    pub fn fail_first_attempt_of_each_message(&self) {
        *self.shared.fail_first_of_each.lock().unwrap() = Some(Default::default());
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (or panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let start = std::time::Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < timeout,
                "only {} of {n} requests arrived in {timeout:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    State(s): State<Shared>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.received.lock().unwrap().push(Received {
        method,
        uri,
        headers: headers.clone(),
        body: body.to_vec(),
        at: std::time::Instant::now(),
    });
    if let Some(seen) = s.fail_first_of_each.lock().unwrap().as_mut() {
        let id = headers
            .get("webhook-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if seen.insert(id) {
            return (StatusCode::INTERNAL_SERVER_ERROR, "first try fails").into_response();
        }
    }
    let reply = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| s.default.lock().unwrap().clone());
    match reply.unwrap_or(Reply::Status(200)) {
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("answered {code}"),
        )
            .into_response(),
        Reply::RetryAfter(code, secs) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, "too late").into_response()
        }
    }
}
