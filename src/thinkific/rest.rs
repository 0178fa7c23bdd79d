//! A small client for the parts of Thinkific's REST API enrollhook uses:
//! webhooks (`/api/v2/webhooks`, `Authorization: Bearer KEY`) and enrollments
//! (`/api/public/v1/enrollments`, `X-Auth-API-Key` + `X-Auth-Subdomain`).
//!
//! Failures are retried the way Thinkific asks: a `429` waits `RateLimit-Reset`
//! seconds (bounded) and tries again; a `5xx` or a network error is tried again
//! a few times with growing pauses. Every other answer is final, with a message
//! that says what to do. The API key never appears in an error or a log line.

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
        "Thinkific refused the credentials (HTTP 401 to {what}): the API key or subdomain is wrong. \
         Copy both from your Thinkific admin, Settings → Code & analytics → API, and pass them as \
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
    subdomain: String,
    api_key: Secret,
    policy: RetryPolicy,
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
    pub fn new(
        base: &str,
        subdomain: &str,
        api_key: Secret,
        policy: RetryPolicy,
    ) -> Result<RestClient, RestError> {
        let base = reqwest::Url::parse(base.trim_end_matches('/')).map_err(|e| {
            RestError::Config(format!(
                "--api-base `{base}` is not a URL ({e}): the default is {DEFAULT_API_BASE}"
            ))
        })?;
        if !matches!(base.scheme(), "https" | "http") {
            return Err(RestError::Config(format!(
                "--api-base `{base}` must be an http:// or https:// URL"
            )));
        }
        if api_key.expose().trim().is_empty() {
            return Err(RestError::Config(
                "the Thinkific API key is empty: pass --api-key or ENROLLHOOK_THINKIFIC_API_KEY"
                    .into(),
            ));
        }
        let http = crate::client::http_client(policy.timeout)
            .map_err(|e| RestError::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(RestClient {
            http,
            base,
            subdomain: normalize_subdomain(subdomain)?,
            api_key,
            policy,
        })
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
            request = match auth {
                Auth::Bearer => request.bearer_auth(self.api_key.expose()),
                Auth::ApiKey => request
                    .header("X-Auth-API-Key", self.api_key.expose())
                    .header("X-Auth-Subdomain", &self.subdomain),
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
                        hint: match auth {
                            Auth::ApiKey => "",
                            // Thinkific's SDKs document OAuth tokens for this API.
                            Auth::Bearer => {
                                ". The webhooks API takes the key as a Bearer token; if Thinkific \
                                 refuses a key that works for `thinkific backfill`, pass a Thinkific \
                                 app's OAuth access token as --api-key instead"
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
                    let wait = rate_limit_wait(&self.policy, reset.as_deref());
                    tracing::warn!(
                        "Thinkific rate limit reached; waiting {:.1} s as it asks",
                        wait.as_secs_f64()
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

    /// Every webhook registered for the school.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, RestError> {
        let url = self.url("/api/v2/webhooks");
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let what = format!("the webhooks list (page {page})");
            let mut page_url = url.clone();
            page_url
                .query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("limit", &WEBHOOK_PAGE_SIZE.to_string());
            let body = self
                .send(&what, Auth::Bearer, |http| http.get(page_url.clone()))
                .await?;
            let list: ListResponse<Webhook> = Self::parse(&what, &body)?;
            let empty = list.items.is_empty();
            all.extend(list.items);
            match list.meta.and_then(|m| m.pagination.next_page) {
                Some(next) if next > page && next <= MAX_PAGES && !empty => page = next,
                _ => return Ok(all),
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
            .send(&what, Auth::Bearer, |http| {
                http.post(url.clone()).json(&body)
            })
            .await?;
        Self::parse(&what, &answer)
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), RestError> {
        let what = format!("deleting webhook {id}");
        let url = self.url(&format!("/api/v2/webhooks/{}", path_segment(id)?));
        self.send(&what, Auth::Bearer, |http| http.delete(url.clone()))
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

/// How long to wait after a 429: `RateLimit-Reset` seconds (bounded), else the
/// longest wait (Thinkific's window is a minute).
pub fn rate_limit_wait(policy: &RetryPolicy, reset: Option<&str>) -> Duration {
    reset
        .and_then(|r| r.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(policy.max_rate_limit_wait.as_secs_f64())))
        .unwrap_or(policy.max_rate_limit_wait)
        // Never hammer: a reset of 0 still pauses a little.
        .max(Duration::from_millis(100))
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
        assert_eq!(rate_limit_wait(&p, Some("3600")), p.max_rate_limit_wait);
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
