//! Who may read what: the admin token (`--api-token`) reads everything; a
//! source's `api_token` (in `[[source]]`) reads that source's data only.
//! Without an admin token, loopback clients are admin (and `serve` refuses to
//! listen beyond loopback unless some token is configured), provided the Host
//! names this server; state-changing requests from a foreign Origin are
//! refused in every mode (see `origin`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// What the caller of an API request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Source(String),
}

impl Scope {
    /// The source filter to apply: the caller's own source for a source token
    /// (asking for another one is refused), whatever was asked for otherwise.
    pub fn restrict(&self, requested: Option<String>) -> Result<Option<String>, ApiError> {
        match self {
            Scope::All => Ok(requested),
            Scope::Source(own) => match requested {
                Some(other) if &other != own => Err(forbidden(own)),
                _ => Ok(Some(own.clone())),
            },
        }
    }

    /// Refuses access to `source` unless the caller may read it.
    pub fn check(&self, source: &str) -> Result<(), ApiError> {
        self.restrict(Some(source.to_owned())).map(|_| ())
    }

    /// Refuses anything but the admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Scope::All => Ok(()),
            Scope::Source(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs the admin token (--api-token); a source's token reads only its own data",
            )),
        }
    }
}

fn forbidden(own: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("this token can read source `{own}` only"),
    )
}

pub async fn require_auth(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Err(e) = super::origin::check_origin(&app, &request) {
        return e.into_response();
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let scope = match given {
        Some(token) => {
            let admin = app
                .api_token
                .as_ref()
                .is_some_and(|t| constant_time_eq(token.as_bytes(), t.expose().as_bytes()));
            if admin {
                Scope::All
            } else if let Some(source) = app.sources.source_for_token(token, constant_time_eq) {
                Scope::Source(source.to_owned())
            } else {
                return unauthorized();
            }
        }
        None if app.api_token.is_some() => return unauthorized(),
        None if !peer.ip().is_loopback() => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "no API token is configured, so the API only answers this machine; set --api-token to allow remote clients",
            )
            .into_response();
        }
        // Trusted for coming from this machine: only when addressed to this
        // server, not to a name a web page rebound to 127.0.0.1.
        None => match super::origin::check_host(&app, &request) {
            Ok(()) => Scope::All,
            Err(e) => return e.into_response(),
        },
    };
    request.extensions_mut().insert(scope);
    next.run(request).await
}

fn unauthorized() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong API token: send `Authorization: Bearer TOKEN` with the admin token (--api-token) or a source's api_token",
    )
    .into_response()
}

/// Compares MACs of both values: constant time whatever their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    let key = b"enrollhook-token-compare";
    let mac = |v: &[u8]| {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        m.update(v);
        m
    };
    mac(b).verify_slice(&mac(a).finalize().into_bytes()).is_ok()
}
