//! The stand-in for Thinkific's REST API: enrollments (paged), webhooks.

use super::*;

/// The stand-in's state: its data, and what it was asked.
pub(super) struct Api {
    pub(super) enrollments: Mutex<Vec<Value>>,
    pub(super) webhooks: Mutex<Vec<Value>>,
    pub(super) next_webhook_id: AtomicU64,
    /// (page, limit) of every enrollments request that passed auth.
    pub(super) pages: Mutex<Vec<(u32, u32)>>,
    /// Fail like Thinkific does, once each: page 2 is rate limited, page 3 errs.
    pub(super) faults: AtomicBool,
    pub(super) rate_limited: AtomicBool,
    pub(super) failed: AtomicBool,
    /// Answer every enrollments request with this status (a Thinkific outage).
    pub(super) always: Mutex<Option<StatusCode>>,
    pub(super) requests: AtomicU64,
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A numeric query parameter; None when it is not a number.
pub(super) fn number(q: &HashMap<String, String>, name: &str, default: u32) -> Option<u32> {
    match q.get(name) {
        None => Some(default),
        Some(v) => v.parse().ok(),
    }
}

/// `{items, meta: {pagination}}` for one page of `all`.
pub(super) fn paginate(all: &[Value], page: u32, limit: u32) -> Value {
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

pub(super) async fn enrollments(
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

pub(super) fn bearer_ok(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"))
}

pub(super) async fn list_webhooks(
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

pub(super) async fn create_webhook(
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

pub(super) async fn delete_webhook(
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

pub(super) async fn start_api(items: Vec<Value>) -> (Arc<Api>, String) {
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
