//! The stand-in for Thinkific's REST API: enrollments (paged), webhooks, as
//! Thinkific documents them: the webhooks listing pages by cursor
//! (`?limit=&next=`, `meta.page`), a 429 carries an epoch-milliseconds
//! `RateLimit-Reset`, a 401 answers `{"error":"Authentication Error"}`, Bearer
//! API Access Tokens work on both APIs, `query[updated_after]` is
//! `YYYY-MM-DDTHH:MM:SSZ`.

use super::*;

/// An API Access Token the stand-in accepts (Bearer) on both APIs.
pub(super) const TOKEN: &str = "school-access-token-9c2d";

/// How the stand-in answers a webhooks listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listing {
    /// Documented: `?next=<cursor>`, `meta.page.next_page` a string ('' when none).
    Cursor,
    /// Older SDKs: `?page=N`, the same `meta.page`.
    PageNumbers,
    /// Thinkific's general response-format page: `meta.pagination`.
    Pagination,
    /// Says there is more (`has_next`) but gives no cursor to follow.
    Broken,
}

/// `RateLimit-Reset` as an integrator observed it: epoch milliseconds.
pub(super) fn reset_in(ms: i64) -> String {
    (Utc::now().timestamp_millis() + ms).to_string()
}

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
    pub(super) listing: Mutex<Listing>,
    /// The `query[updated_after]` of every enrollments request.
    pub(super) updated_after: Mutex<Vec<String>>,
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
    let key_ok =
        header("x-auth-api-key") == Some(KEY) && header("x-auth-subdomain") == Some(SUBDOMAIN);
    if !key_ok && !token_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, "Authentication Error");
    }
    let (Some(page), Some(limit)) = (number(&q, "page", 1), number(&q, "limit", 25)) else {
        return error(StatusCode::BAD_REQUEST, "page and limit must be numbers");
    };
    if page == 0 || limit == 0 || limit > 250 {
        return error(StatusCode::BAD_REQUEST, "limit must be from 1 to 250");
    }
    api.pages.lock().unwrap().push((page, limit));
    if let Some(status) = *api.always.lock().unwrap() {
        return (status, [("RateLimit-Reset", reset_in(0))], "{}").into_response();
    }
    if api.faults.load(Ordering::Relaxed) {
        if page == 2 && !api.rate_limited.swap(true, Ordering::Relaxed) {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("RateLimit-Reset", reset_in(1000))],
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
            api.updated_after.lock().unwrap().push(t.clone());
            // Documented: "YYYY-MM-DDTHH:MM:SSZ", returned and expected.
            let Ok(after) =
                chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%SZ").map(|n| n.and_utc())
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "updated_after must be YYYY-MM-DDTHH:MM:SSZ",
                );
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

/// The webhooks API: a Bearer API Access Token, or the legacy key as Bearer.
pub(super) fn bearer_ok(headers: &HeaderMap) -> bool {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    auth == Some(&format!("Bearer {KEY}")) || token_ok(headers)
}

pub(super) fn token_ok(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

/// One page of the webhooks listing, in the stand-in's current [`Listing`] form.
fn webhooks_page(all: &[Value], listing: Listing, q: &HashMap<String, String>) -> Response {
    // Small pages whatever is asked, so paging is exercised.
    let Some(limit) = number(q, "limit", 25).filter(|l| *l > 0) else {
        return error(StatusCode::BAD_REQUEST, "invalid limit");
    };
    let limit = limit.min(3) as usize;
    let total = all.len();
    let start = match listing {
        Listing::Cursor | Listing::Broken => match q.get("next") {
            None => 0,
            Some(c) => match c.strip_prefix("cur_").and_then(|o| o.parse::<usize>().ok()) {
                Some(o) if o <= total => o,
                _ => return error(StatusCode::BAD_REQUEST, "invalid next"),
            },
        },
        Listing::PageNumbers | Listing::Pagination => match number(q, "page", 1) {
            Some(p) if p > 0 => (p as usize - 1) * limit,
            _ => return error(StatusCode::BAD_REQUEST, "invalid page"),
        },
    };
    if listing == Listing::Pagination {
        return Json(paginate(all, (start / limit) as u32 + 1, limit as u32)).into_response();
    }
    let items: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let end = start + items.len();
    let has_next = end < total;
    let next_page = match listing {
        _ if !has_next => String::new(),
        Listing::Cursor => format!("cur_{end}"),
        Listing::PageNumbers => (end / limit + 1).to_string(),
        _ => String::new(),
    };
    Json(json!({
        "items": items,
        "meta": {"page": {
            "has_next": has_next,
            "next_page": next_page,
            "page_items": limit,
            "total_items": total,
            "total_pages": total.div_ceil(limit).max(1),
        }}
    }))
    .into_response()
}

pub(super) async fn list_webhooks(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    api.requests.fetch_add(1, Ordering::Relaxed);
    if !bearer_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, "Authentication Error");
    }
    let listing = *api.listing.lock().unwrap();
    webhooks_page(&api.webhooks.lock().unwrap(), listing, &q)
}

pub(super) async fn create_webhook(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    api.requests.fetch_add(1, Ordering::Relaxed);
    if !bearer_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, "Authentication Error");
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
        return error(StatusCode::UNAUTHORIZED, "Authentication Error");
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
        listing: Mutex::new(Listing::Cursor),
        updated_after: Mutex::new(Vec::new()),
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
