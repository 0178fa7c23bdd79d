//! One error type for the HTTP layer; every error becomes
//! `{"error": code, "message": what went wrong and what to do}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Ambiguous { .. } => {
                ApiError::new(StatusCode::CONFLICT, "ambiguous_event", e.to_string())
            }
            StoreError::Rejected(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "store_rejected", e.to_string())
            }
            // Both say the database cannot take the request now (a stopped
            // writer thread included): 503, so that clients retry.
            StoreError::Unavailable(_) | StoreError::Write(_) => {
                tracing::error!(error = %e, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the database is unavailable; try again shortly",
                )
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
}

/// The error body of every endpoint.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `bad_request`, `signature_mismatch`.
    pub error: String,
    /// What was wrong and what to do.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_is_503_never_400_or_500() {
        for e in [
            StoreError::Write("the SQLite writer thread has stopped".into()),
            StoreError::Write("database is locked".into()),
        ] {
            assert_eq!(ApiError::from(e).status, StatusCode::SERVICE_UNAVAILABLE);
        }
        let invalid = StoreError::Invalid("invalid cursor".into());
        assert_eq!(ApiError::from(invalid).status, StatusCode::BAD_REQUEST);
    }
}
