//! Defences against DNS rebinding and cross-site requests.
//!
//! Without `--api-token`, loopback clients are trusted (see `auth`). A web page
//! the operator opens can rebind its own name to 127.0.0.1 and then talk to us
//! as "same origin", from this machine: only the `Host` header gives it away
//! (it names the attacker's domain). So in that mode the API (requests
//! trusted for coming from loopback) and the dashboard answer only a `Host`
//! that names this server: `localhost`, a loopback address, the listen
//! address, or a name given with `--allowed-hosts` (with or without a port);
//! anything else gets 421. With a token a browser cannot attach it
//! cross-site, so the Host is not checked.
//!
//! In every mode, a state-changing API request (POST, PUT, PATCH, DELETE)
//! whose `Origin` is not this server's own (the `Host` it was sent to, or an
//! `--allowed-hosts` name) is refused 403: that closes cross-site form posts,
//! including bodiless ones (replay, quarantine retry). Requests without an
//! `Origin` (curl, the CLI, Thinkific) are not browsers' cross-site requests.
//!
//! `/webhooks/*` is checked by neither: Thinkific's deliveries carry the public
//! Host of the deployment (behind a proxy, any Host), and they authenticate
//! with their signature, not with where they come from. `/healthz`,
//! `/readyz` and `/openapi.json` hold nothing to steal and are not checked
//! either (orchestrators probe health with an IP for Host).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// The names this server answers to (besides `localhost` and loopback addresses).
#[derive(Debug, Clone)]
pub struct HostPolicy {
    listen: SocketAddr,
    /// `--allowed-hosts`, lower case: a name (any port), `name:port`, or `*` (any).
    extra: Vec<String>,
}

impl HostPolicy {
    pub fn new(listen: SocketAddr, extra: &[String]) -> HostPolicy {
        HostPolicy {
            listen,
            extra: extra
                .iter()
                .map(|h| normalize(h.trim()))
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    /// Whether a `Host` value (an authority, with or without port) names this server.
    pub fn allows(&self, authority: &str) -> bool {
        let (host, _) = split_authority(authority);
        let host = normalize(host);
        if host == "localhost" {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && (ip.is_loopback()
                || ip.to_canonical().is_loopback()
                || (!self.listen.ip().is_unspecified() && ip == self.listen.ip()))
        {
            return true;
        }
        self.is_extra(authority)
    }

    /// Whether `--allowed-hosts` names this authority.
    fn is_extra(&self, authority: &str) -> bool {
        let (host, _) = split_authority(authority);
        let (host, full) = (normalize(host), normalize(authority));
        self.extra
            .iter()
            .any(|e| e == "*" || *e == host || *e == full)
    }

    /// Whether an `Origin` is this server's own: the authority the request was
    /// sent to (`host`), or an `--allowed-hosts` name (a proxy may rewrite Host).
    pub fn is_own_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false; // "null" (sandboxed frames, file://, redirects) or garbage
        };
        if !matches!(scheme, "http" | "https") || authority.contains('/') {
            return false;
        }
        host.is_some_and(|h| normalize(h) == normalize(authority)) || self.is_extra(authority)
    }
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `host[:port]`, `[v6][:port]` → (host without brackets, port).
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, port)) => (host, port.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// The authority a request was sent to: the request target's, else `Host`.
pub fn request_host(request: &Request) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    request
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
}

/// 421 unless the Host names this server. A request without any Host (HTTP/1.0
/// tools) is not from a browser, which always sends one, and passes.
pub fn check_host(app: &AppState, request: &Request) -> Result<(), ApiError> {
    match request_host(request) {
        Some(host) if !app.hosts.allows(&host) => Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "this server does not answer to Host `{host}`: without --api-token the API and dashboard answer only \
                 requests addressed to localhost, a loopback address or the listen address (a defence against DNS \
                 rebinding); open it by one of those, add the name with --allowed-hosts NAME, or set --api-token"
            ),
        )),
        _ => Ok(()),
    }
}

/// 403 for a state-changing request from a foreign `Origin`.
pub fn check_origin(app: &AppState, request: &Request) -> Result<(), ApiError> {
    if !matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Ok(());
    }
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    if app
        .hosts
        .is_own_origin(origin.trim(), request_host(request).as_deref())
    {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "refused a {} from the web page at `{origin}`: changes are accepted only from this server's own pages \
             (or without an Origin header, e.g. curl or the CLI); if a proxy serves this server under another name, \
             add it with --allowed-hosts NAME",
            request.method()
        ),
    ))
}

/// Middleware for the dashboard: the Host check, in no-token mode only.
pub async fn dashboard_host(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if app.api_token.is_none()
        && let Err(e) = check_host(&app, &request)
    {
        return e.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listen: &str, extra: &[&str]) -> HostPolicy {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        HostPolicy::new(listen.parse().unwrap(), &extra)
    }

    #[test]
    fn loopback_names_and_the_listen_address_are_allowed() {
        let p = policy("127.0.0.1:8080", &[]);
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.9.9.9:1",
            "[::1]:8080",
            "[::1]",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(p.allows(host), "{host}");
        }
        for host in [
            "attacker.example:8080",
            "attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:8080",
            "",
        ] {
            assert!(!p.allows(host), "{host}");
        }
        let p = policy("192.168.1.5:8080", &["Enroll.Example.com", "proxy:9000"]);
        assert!(p.allows("192.168.1.5:8080"));
        assert!(p.allows("enroll.example.com:443"));
        assert!(p.allows("proxy:9000"));
        assert!(!p.allows("proxy:9001"));
        assert!(!policy("0.0.0.0:8080", &[]).allows("0.0.0.0:8080"));
        assert!(policy("0.0.0.0:8080", &["*"]).allows("anything"));
    }

    #[test]
    fn an_origin_is_own_when_it_names_the_host_it_was_sent_to() {
        let p = policy("127.0.0.1:8080", &["admin.example.com"]);
        let host = Some("127.0.0.1:8080");
        assert!(p.is_own_origin("http://127.0.0.1:8080", host));
        assert!(p.is_own_origin("https://admin.example.com", host));
        assert!(!p.is_own_origin("http://127.0.0.1:3000", host));
        assert!(!p.is_own_origin("http://attacker.example:8080", host));
        assert!(!p.is_own_origin("null", host));
        assert!(!p.is_own_origin("http://127.0.0.1:8080", None));
        assert!(!p.is_own_origin("ftp://127.0.0.1:8080", host));
    }
}
