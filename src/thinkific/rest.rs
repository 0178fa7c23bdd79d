//! A small client for the parts of Thinkific's REST API enrollhook uses:
//! webhooks (`/api/v2/webhooks`, `Authorization: Bearer KEY`) and enrollments
//! (`/api/public/v1/enrollments`, `X-Auth-API-Key` + `X-Auth-Subdomain`).
//!
//! Failures are retried the way Thinkific asks: a `429` waits `RateLimit-Reset`
//! seconds (bounded) and tries again; a `5xx` or a network error is tried again
//! a few times with growing pauses. Every other answer is final, with a message
//! that says what to do. The API key never appears in an error or a log line.
//!
//! Over 600 lines on purpose (for now): the client, its retry and paging rules
//! (the webhooks listing's three documented forms, `RateLimit-Reset` by
//! magnitude) and their unit tests are read together; the paging and rate-limit
//! rules are pure functions that can move to a file of their own.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::Secret;

pub const DEFAULT_API_BASE: &str = "https://api.thinkific.com";
/// The most enrollments Thinkific returns per page.
pub const MAX_PAGE_SIZE: u32 = 250;
/// Webhooks asked for per page when listing them.
const WEBHOOK_PAGE_SIZE: u32 = 100;
/// A listing that claims more pages than this is not believed (a loop guard).
const MAX_PAGES: u32 = 100_000;

/// How the client waits and retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after a 5xx or a network error.
    pub server_retries: u32,
    /// Pause before the first such retry; doubled each time.
    pub first_backoff: Duration,
    /// Retries after a 429.
    pub rate_limit_retries: u32,
    /// The longest `RateLimit-Reset` we wait for (Thinkific's window is a minute).
    pub max_rate_limit_wait: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            server_retries: 4,
            first_backoff: Duration::from_secs(1),
            rate_limit_retries: 10,
            max_rate_limit_wait: Duration::from_secs(70),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong talking to Thinkific. Messages are shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error(
        "Thinkific refused the credentials (HTTP 401 to {what}): the API key or subdomain is wrong, \
         or the school's Thinkific plan does not include API access (Thinkific answers 401 for both; \
         check the plan under Settings → Billing). Copy both from your Thinkific admin, Settings → Code & analytics → API, and pass them as \
         --api-key and --subdomain (or ENROLLHOOK_THINKIFIC_API_KEY and ENROLLHOOK_THINKIFIC_SUBDOMAIN){hint}"
    )]
    Unauthorized { what: String, hint: &'static str },
    #[error(
        "Thinkific kept answering 429 (rate limited) to {what} after {attempts} attempts: \
         another integration may be using the same API key's 120 requests a minute; try again later"
    )]
    RateLimited { what: String, attempts: u32 },
    #[error(
        "Thinkific answered HTTP {status} to {what} after {attempts} attempts ({body}): \
         Thinkific is having trouble; try again later"
    )]
    Server {
        what: String,
        status: u16,
        attempts: u32,
        body: String,
    },
    #[error(
        "cannot reach Thinkific for {what} after {attempts} attempts: {error}. \
         Check the network (and --api-base, if you set it)"
    )]
    Network {
        what: String,
        attempts: u32,
        error: String,
    },
    #[error("Thinkific refused {what} (HTTP {status}): {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
    #[error("Thinkific's answer to {what} is not what its API documents: {why}")]
    Unexpected { what: String, why: String },
    #[error("{0}")]
    Config(String),
}

/// Where a request goes and how it authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// The webhooks API.
    Bearer,
    /// The public (admin) API.
    ApiKey,
}

/// Pagination as the REST API reports it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Pagination {
    pub current_page: Option<u32>,
    pub next_page: Option<u32>,
    pub total_pages: Option<u32>,
    pub total_items: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    #[serde(default)]
    pagination: Pagination,
    /// The webhooks API's documented listing meta (cursor or page form).
    #[serde(default)]
    page: Option<CursorPage>,
}

/// `meta.page` of the webhooks listing: `next_page` is a cursor string (`''`
/// when none) for `?next=`; older SDKs paged with `page` + `limit` and may see a
/// number there.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CursorPage {
    #[serde(default)]
    pub has_next: Option<bool>,
    #[serde(default)]
    pub next_page: Option<serde_json::Value>,
    #[serde(default)]
    pub total_pages: Option<u64>,
    #[serde(default)]
    pub total_items: Option<u64>,
}

/// Where the next page of a webhooks listing is, as its meta says.
#[derive(Debug, Clone, PartialEq)]
pub enum NextPage {
    /// The listing is complete.
    Done,
    /// Ask again with `next=` (and `page=` when the value is a page number).
    Cursor(String),
    /// The listing says there is more but gives nothing to follow.
    Unfollowable(String),
}

/// Reads a webhooks listing's meta (`meta.page`, either form, or
/// `meta.pagination`) into where to go next. `seen` is how many items were read
/// so far, `page` the 1-based number of the page just read.
pub fn next_webhooks_page(
    page_meta: Option<&CursorPage>,
    pagination: &Pagination,
    page: u32,
    seen: usize,
) -> NextPage {
    if let Some(m) = page_meta {
        let next = match &m.next_page {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let more_by_count = m.total_items.is_some_and(|t| (seen as u64) < t)
            || m.total_pages.is_some_and(|t| u64::from(page) < t);
        return match (m.has_next, next) {
            (Some(false), _) => NextPage::Done,
            (_, Some(next)) => NextPage::Cursor(next),
            (Some(true), None) => NextPage::Unfollowable(
                "meta.page.has_next is true but meta.page.next_page is empty".into(),
            ),
            (None, None) if more_by_count => NextPage::Unfollowable(format!(
                "meta.page says {} items in {} pages, {seen} read after page {page}, and gives no next_page",
                m.total_items.map_or("?".into(), |t| t.to_string()),
                m.total_pages.map_or("?".into(), |t| t.to_string()),
            )),
            (None, None) => NextPage::Done,
        };
    }
    match (pagination.next_page, pagination.total_pages) {
        (Some(next), _) if next > page => NextPage::Cursor(next.to_string()),
        (Some(next), _) => NextPage::Unfollowable(format!(
            "meta.pagination.next_page is {next} after page {page}"
        )),
        (None, Some(total)) if page < total => NextPage::Cursor((page + 1).to_string()),
        (None, _) => match pagination.total_items {
            Some(t) if (seen as u64) < t => NextPage::Unfollowable(format!(
                "meta.pagination says {t} items, {seen} read, and gives no next_page"
            )),
            _ => NextPage::Done,
        },
    }
}

#[derive(Debug, Deserialize)]
struct ListResponse<T> {
    items: Vec<T>,
    meta: Option<Meta>,
}

/// One page of enrollments, each item kept exactly as Thinkific sent it.
#[derive(Debug)]
pub struct EnrollmentPage {
    pub items: Vec<Box<RawValue>>,
    pub pagination: Pagination,
}

/// A webhook registered in Thinkific.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Webhook {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    pub topic: String,
    pub target_url: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

pub struct RestClient {
    http: reqwest::Client,
    base: reqwest::Url,
    subdomain: Option<String>,
    api_key: Option<Secret>,
    access_token: Option<Secret>,
    policy: RetryPolicy,
}

/// What a client authenticates with: the legacy API key (with the subdomain),
/// a Bearer "API Access Token" (or OAuth access token), or both.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub subdomain: Option<String>,
    pub api_key: Option<Secret>,
    pub access_token: Option<Secret>,
}

/// A subdomain as the user may paste it (`acme`, `acme.thinkific.com`,
/// `https://acme.thinkific.com/`), reduced to `acme`.
pub fn normalize_subdomain(s: &str) -> Result<String, RestError> {
    let trimmed = s.trim().to_ascii_lowercase();
    let host = trimmed
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let name = host.strip_suffix(".thinkific.com").unwrap_or(host);
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(RestError::Config(format!(
            "`{s}` is not a Thinkific subdomain: give the part before .thinkific.com \
             (for https://acme.thinkific.com, `acme`), as shown in Settings → Code & analytics → API"
        )))
    }
}

impl RestClient {
    /// A client with the legacy API key (the admin API's `X-Auth-API-Key`).
    pub fn new(
        base: &str,
        subdomain: &str,
        api_key: Secret,
        policy: RetryPolicy,
    ) -> Result<RestClient, RestError> {
        Self::with_credentials(
            base,
            Credentials {
                subdomain: Some(subdomain.to_owned()),
                api_key: Some(api_key),
                access_token: None,
            },
            policy,
        )
    }

    /// A client with an API key, an access token, or both. The admin API gets
    /// the key headers when there is a key (what it documents first), else the
    /// Bearer token; the webhooks API gets the Bearer token when there is one,
    /// else the key as a Bearer token (the legacy way).
    pub fn with_credentials(
        base: &str,
        credentials: Credentials,
        policy: RetryPolicy,
    ) -> Result<RestClient, RestError> {
        let base = reqwest::Url::parse(base.trim_end_matches('/')).map_err(|e| {
            RestError::Config(format!(
                "the API base `{base}` is not a URL ({e}): the default is {DEFAULT_API_BASE}"
            ))
        })?;
        if !matches!(base.scheme(), "https" | "http") {
            return Err(RestError::Config(format!(
                "the API base `{base}` must be an http:// or https:// URL"
            )));
        }
        if credentials.api_key.as_ref().is_some_and(Secret::is_blank) {
            return Err(RestError::Config(
                "the Thinkific API key is empty: pass --api-key or ENROLLHOOK_THINKIFIC_API_KEY"
                    .into(),
            ));
        }
        if credentials
            .access_token
            .as_ref()
            .is_some_and(Secret::is_blank)
        {
            return Err(RestError::Config(
                "the Thinkific access token is empty: pass --access-token or \
                 ENROLLHOOK_THINKIFIC_ACCESS_TOKEN (Settings → Code & analytics → API Access Tokens)"
                    .into(),
            ));
        }
        if credentials.api_key.is_none() && credentials.access_token.is_none() {
            return Err(RestError::Config(
                "no Thinkific credentials: pass --access-token (ENROLLHOOK_THINKIFIC_ACCESS_TOKEN) \
                 or --api-key with --subdomain"
                    .into(),
            ));
        }
        let subdomain = match credentials.subdomain.as_deref() {
            Some(s) => Some(normalize_subdomain(s)?),
            None if credentials.api_key.is_some() => {
                return Err(RestError::Config(
                    "the API key needs the school's subdomain: pass --subdomain".into(),
                ));
            }
            None => None,
        };
        let http = crate::client::http_client(policy.timeout)
            .map_err(|e| RestError::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(RestClient {
            http,
            base,
            subdomain,
            api_key: credentials.api_key,
            access_token: credentials.access_token,
            policy,
        })
    }

    /// How a webhooks API request authenticates: always Bearer.
    fn webhooks_auth(&self) -> Auth {
        Auth::Bearer
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// Sends the request `build` makes (again for each retry), with auth, and
    /// returns the successful response's body.
    async fn send(
        &self,
        what: &str,
        auth: Auth,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<String, RestError> {
        let mut server_failures = 0;
        let mut rate_limited = 0;
        loop {
            let attempts = server_failures + rate_limited + 1;
            let mut request = build(&self.http).header("accept", "application/json");
            request = match (auth, &self.api_key, &self.access_token) {
                (Auth::Bearer, _, Some(token)) | (Auth::ApiKey, None, Some(token)) => {
                    let r = request.bearer_auth(token.expose());
                    match &self.subdomain {
                        Some(sub) => r.header("X-Auth-Subdomain", sub),
                        None => r,
                    }
                }
                (Auth::Bearer, Some(key), None) => request.bearer_auth(key.expose()),
                (Auth::ApiKey, Some(key), _) => {
                    request.header("X-Auth-API-Key", key.expose()).header(
                        "X-Auth-Subdomain",
                        self.subdomain.as_deref().unwrap_or_default(),
                    )
                }
                (_, None, None) => unreachable!("checked in with_credentials"),
            };
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    let error = error_chain(&e.without_url());
                    if server_failures >= self.policy.server_retries {
                        return Err(RestError::Network {
                            what: what.into(),
                            attempts,
                            error,
                        });
                    }
                    let wait = backoff(&self.policy, server_failures);
                    tracing::warn!(
                        "cannot reach Thinkific for {what} ({error}); trying again in {:.1} s",
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    server_failures += 1;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let reset = response
                .headers()
                .get("ratelimit-reset")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.text().await.unwrap_or_default();
            match status {
                200..=299 => return Ok(body),
                401 => {
                    return Err(RestError::Unauthorized {
                        what: what.into(),
                        hint: match (auth, self.access_token.is_some()) {
                            (_, true) => {
                                ". With --access-token, check that the token is still valid \
                                 (Settings → Code & analytics → API Access Tokens)"
                            }
                            (Auth::ApiKey, false) => "",
                            // Thinkific's SDKs document tokens for this API.
                            (Auth::Bearer, false) => {
                                ". The webhooks API documents token authentication; if Thinkific \
                                 refuses a key that works for `thinkific backfill`, create an API \
                                 Access Token and pass it as --access-token (or a Thinkific app's \
                                 OAuth access token)"
                            }
                        },
                    });
                }
                429 => {
                    if rate_limited >= self.policy.rate_limit_retries {
                        return Err(RestError::RateLimited {
                            what: what.into(),
                            attempts,
                        });
                    }
                    let (wait, reading) =
                        rate_limit_wait_at(&self.policy, reset.as_deref(), chrono::Utc::now());
                    tracing::warn!(
                        "Thinkific rate limit reached for {what}; waiting {:.1} s until the reset \
                         (RateLimit-Reset: {}, read as {}; at most {} s)",
                        wait.as_secs_f64(),
                        reset.as_deref().unwrap_or("none"),
                        reading.describe(),
                        self.policy.max_rate_limit_wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                    rate_limited += 1;
                }
                500..=599 => {
                    if server_failures >= self.policy.server_retries {
                        return Err(RestError::Server {
                            what: what.into(),
                            status,
                            attempts,
                            body: snippet(&body),
                        });
                    }
                    let wait = backoff(&self.policy, server_failures);
                    tracing::warn!(
                        "Thinkific answered {status} to {what}; trying again in {:.1} s",
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    server_failures += 1;
                }
                _ => {
                    return Err(RestError::Refused {
                        what: what.into(),
                        status,
                        body: snippet(&body),
                    });
                }
            }
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &str) -> Result<T, RestError> {
        serde_json::from_str(body).map_err(|e| RestError::Unexpected {
            what: what.into(),
            why: format!("{e} in {}", snippet(body)),
        })
    }

    /// One page of enrollments (1-based), optionally only those updated after a time.
    pub async fn enrollments(
        &self,
        page: u32,
        limit: u32,
        updated_after: Option<&str>,
    ) -> Result<EnrollmentPage, RestError> {
        let what = format!("the enrollments list (page {page})");
        let mut url = self.url("/api/public/v1/enrollments");
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("page", &page.to_string())
                .append_pair("limit", &limit.clamp(1, MAX_PAGE_SIZE).to_string());
            if let Some(t) = updated_after {
                query.append_pair("query[updated_after]", t);
            }
        }
        let body = self
            .send(&what, Auth::ApiKey, |http| http.get(url.clone()))
            .await?;
        let list: ListResponse<Box<RawValue>> = Self::parse(&what, &body)?;
        Ok(EnrollmentPage {
            items: list.items,
            pagination: list.meta.map(|m| m.pagination).unwrap_or_default(),
        })
    }

    /// Every webhook registered for the school, following the listing's
    /// cursor (`meta.page.next_page` → `?next=`), an older page number
    /// (`?page=`), or `meta.pagination`. A listing that says there is more but
    /// cannot be followed is an error, never a short list.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, RestError> {
        let url = self.url("/api/v2/webhooks");
        let mut all = Vec::new();
        let mut page: u32 = 1;
        let mut cursor: Option<String> = None;
        let mut seen_cursors = std::collections::HashSet::new();
        loop {
            let what = format!("the webhooks list (page {page})");
            let mut page_url = url.clone();
            {
                let mut q = page_url.query_pairs_mut();
                q.append_pair("limit", &WEBHOOK_PAGE_SIZE.to_string());
                if let Some(c) = &cursor {
                    q.append_pair("next", c);
                    // An older server pages by number: a numeric cursor is one.
                    if c.bytes().all(|b| b.is_ascii_digit()) {
                        q.append_pair("page", c);
                    }
                }
            }
            let body = self
                .send(&what, self.webhooks_auth(), |http| {
                    http.get(page_url.clone())
                })
                .await?;
            let list: ListResponse<Webhook> = Self::parse(&what, &body)?;
            let empty = list.items.is_empty();
            all.extend(list.items);
            let meta = list.meta;
            let next = next_webhooks_page(
                meta.as_ref().and_then(|m| m.page.as_ref()),
                &meta
                    .as_ref()
                    .map(|m| m.pagination.clone())
                    .unwrap_or_default(),
                page,
                all.len(),
            );
            match next {
                NextPage::Done => return Ok(all),
                NextPage::Cursor(c) => {
                    if empty || page >= MAX_PAGES || !seen_cursors.insert(c.clone()) {
                        return Err(RestError::Unexpected {
                            what,
                            why: format!(
                                "the listing says there is more (next page `{c}`) but {}; \
                                 {} webhooks were read, the list is incomplete",
                                if empty {
                                    "this page was empty"
                                } else {
                                    "it repeats a page"
                                },
                                all.len()
                            ),
                        });
                    }
                    cursor = Some(c);
                    page += 1;
                }
                NextPage::Unfollowable(why) => {
                    return Err(RestError::Unexpected {
                        what,
                        why: format!(
                            "{why}: {} webhooks were read, the list is incomplete",
                            all.len()
                        ),
                    });
                }
            }
        }
    }

    pub async fn create_webhook(
        &self,
        topic: &str,
        target_url: &str,
    ) -> Result<Webhook, RestError> {
        let what = format!("creating the {topic} webhook");
        let url = self.url("/api/v2/webhooks");
        let body = serde_json::json!({ "topic": topic, "target_url": target_url });
        let answer = self
            .send(&what, self.webhooks_auth(), |http| {
                http.post(url.clone()).json(&body)
            })
            .await?;
        Self::parse(&what, &answer)
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), RestError> {
        let what = format!("deleting webhook {id}");
        let url = self.url(&format!("/api/v2/webhooks/{}", path_segment(id)?));
        self.send(&what, self.webhooks_auth(), |http| http.delete(url.clone()))
            .await?;
        Ok(())
    }
}

/// A webhook id goes into the URL path: Thinkific's are digits.
fn path_segment(id: &str) -> Result<&str, RestError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(RestError::Config(format!(
            "`{id}` is not a webhook id: ids are digits, as `enrollhook thinkific webhooks list` shows"
        )))
    }
}

/// The pause before retry number `failures + 1` after a 5xx or a network error.
pub fn backoff(policy: &RetryPolicy, failures: u32) -> Duration {
    policy.first_backoff * 2u32.saturating_pow(failures.min(10))
}

/// How `RateLimit-Reset` was read (Thinkific's pages disagree: an epoch time,
/// or the milliseconds until the reset; an integrator saw epoch milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReading {
    EpochMillis,
    EpochSeconds,
    DelayMillis,
    DelaySeconds,
    /// Missing or not a number: the longest wait.
    Unreadable,
}

impl ResetReading {
    pub fn describe(self) -> &'static str {
        match self {
            ResetReading::EpochMillis => "an epoch time in milliseconds",
            ResetReading::EpochSeconds => "an epoch time in seconds",
            ResetReading::DelayMillis => "milliseconds until the reset",
            ResetReading::DelaySeconds => "seconds until the reset",
            ResetReading::Unreadable => "missing or unreadable, so the longest wait",
        }
    }
}

/// How long to wait after a 429, read from `RateLimit-Reset` by magnitude:
/// from 10¹² it is epoch milliseconds (after Sept. 2001), from 10⁹ epoch
/// seconds, above 120 a delay in milliseconds (Thinkific's window is a minute,
/// so a delay in seconds is never that long), else a delay in seconds. Bounded
/// by `max_rate_limit_wait`; at least 100 ms so a reset in the past never hammers.
pub fn rate_limit_wait_at(
    policy: &RetryPolicy,
    reset: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> (Duration, ResetReading) {
    let max = policy.max_rate_limit_wait;
    let value = reset
        .and_then(|r| r.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0);
    let Some(v) = value else {
        return (max, ResetReading::Unreadable);
    };
    let now_ms = now.timestamp_millis() as f64;
    let (wait_ms, reading) = if v >= 1e12 {
        (v - now_ms, ResetReading::EpochMillis)
    } else if v >= 1e9 {
        (v * 1000.0 - now_ms, ResetReading::EpochSeconds)
    } else if v > 120.0 {
        (v, ResetReading::DelayMillis)
    } else {
        (v * 1000.0, ResetReading::DelaySeconds)
    };
    let wait = Duration::from_secs_f64((wait_ms.max(0.0) / 1000.0).min(max.as_secs_f64()));
    (wait.max(Duration::from_millis(100)), reading)
}

/// [`rate_limit_wait_at`] now.
pub fn rate_limit_wait(policy: &RetryPolicy, reset: Option<&str>) -> Duration {
    rate_limit_wait_at(policy, reset, chrono::Utc::now()).0
}

/// An error with its causes ("error sending request: connection refused"):
/// reqwest's own message alone does not say what failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The start of an answer body, for an error message.
fn snippet(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "empty answer".into();
    }
    let cut: String = body.chars().take(300).collect();
    if cut.len() < body.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_are_read_leniently() {
        assert_eq!(normalize_subdomain("acme").unwrap(), "acme");
        assert_eq!(normalize_subdomain(" Acme.thinkific.com ").unwrap(), "acme");
        assert_eq!(
            normalize_subdomain("https://acme-academy.thinkific.com/").unwrap(),
            "acme-academy"
        );
        let e = normalize_subdomain("courses.acme.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("before .thinkific.com"), "{e}");
        assert!(normalize_subdomain("").is_err());
    }

    #[test]
    fn rate_limit_waits_are_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(rate_limit_wait(&p, Some("3")), Duration::from_secs(3));
        // 3600 is read as milliseconds (a delay in seconds is never that long).
        assert_eq!(
            rate_limit_wait(&p, Some("3600")),
            Duration::from_millis(3600)
        );
        assert_eq!(rate_limit_wait(&p, Some("3600000")), p.max_rate_limit_wait);
        let now = chrono::Utc::now();
        let ahead = now + chrono::Duration::seconds(1);
        let (w, r) = rate_limit_wait_at(&p, Some(&ahead.timestamp_millis().to_string()), now);
        assert_eq!((w, r), (Duration::from_secs(1), ResetReading::EpochMillis));
        let (w, r) = rate_limit_wait_at(&p, Some(&ahead.timestamp().to_string()), now);
        assert!(
            w <= Duration::from_secs(1) && r == ResetReading::EpochSeconds,
            "{w:?}"
        );
        let (w, _) = rate_limit_wait_at(&p, Some(&(now.timestamp() - 5).to_string()), now);
        assert_eq!(w, Duration::from_millis(100), "a reset in the past");
        let (w, _) = rate_limit_wait_at(&p, Some(&(now.timestamp() + 3600).to_string()), now);
        assert_eq!(w, p.max_rate_limit_wait);
        assert_eq!(rate_limit_wait(&p, None), p.max_rate_limit_wait);
        assert_eq!(rate_limit_wait(&p, Some("soon")), p.max_rate_limit_wait);
        assert_eq!(rate_limit_wait(&p, Some("0")), Duration::from_millis(100));
    }

    #[test]
    fn backoff_doubles() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 2), Duration::from_secs(4));
    }

    #[test]
    fn webhook_ids_are_checked_before_they_enter_a_path() {
        assert!(path_segment("20200227213233625839530").is_ok());
        assert!(path_segment("../users").is_err());
        assert!(path_segment("").is_err());
    }

    #[test]
    fn errors_never_show_the_key() {
        let c = RestClient::new(
            "http://127.0.0.1:9",
            "acme",
            Secret::new("hunter2"),
            RetryPolicy::default(),
        )
        .unwrap();
        assert!(!format!("{:?}", c.api_key).contains("hunter2"));
        let t = RestClient::with_credentials(
            "http://127.0.0.1:9",
            Credentials {
                access_token: Some(Secret::new("   ")),
                ..Credentials::default()
            },
            RetryPolicy::default(),
        );
        assert!(t.is_err(), "a blank token is refused");
        let e = RestError::Unauthorized {
            what: "x".into(),
            hint: "",
        };
        assert!(e.to_string().contains("API key or subdomain is wrong"));
    }

    #[test]
    fn webhooks_read_with_string_or_number_ids() {
        let w: Webhook = serde_json::from_str(
            r#"{"id":"20190807141006320656581","status":"active","topic":"product.updated",
                "created_at":"2019-08-07T14:10:06.320656581-04:00","created_by":"156118",
                "target_url":"https://example.com/webhooks/thinkific"}"#,
        )
        .unwrap();
        assert_eq!(w.id, "20190807141006320656581");
        let w: Webhook =
            serde_json::from_str(r#"{"id":7,"topic":"a.b","target_url":"https://x"}"#).unwrap();
        assert_eq!(w.id, "7");
    }
}
