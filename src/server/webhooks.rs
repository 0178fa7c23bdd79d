//! `POST /webhooks/thinkific[/{source}]`: verify, keep, answer.

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use tracing::Instrument as _;
use tracing::field::Empty;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::config::DEFAULT_SOURCE;
use crate::ingest::IngestError;
use crate::ingest::receive::{self, Delivery, Rejection};
use crate::store::{AppendOutcome, NewQuarantine, StoreError};
use crate::telemetry::{TARGET, child_span};
use crate::thinkific::{SIGNATURE_HEADER, TOPIC_HEADER};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/thinkific", post(receive_default))
        .route("/webhooks/thinkific/{source}", post(receive_named))
}

/// The reply to a stored (or already stored) delivery.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryReply {
    /// `stored`, or `duplicate` when this event id was stored before.
    pub status: String,
    pub event_id: String,
    pub topic: String,
}

/// A Thinkific webhook delivery for the default source.
#[utoipa::path(post, path = "/webhooks/thinkific", tag = "webhooks",
    params(("X-Thinkific-Hmac-Sha256" = String, Header, description = "hex HMAC-SHA256 of the raw body, keyed with the school's API key")),
    request_body(content = Object, description = "the Thinkific event envelope", content_type = "application/json"),
    responses(
        (status = 200, body = DeliveryReply, description = "durably stored"),
        (status = 400, body = ErrorBody, description = "not a Thinkific event (quarantined)"),
        (status = 401, body = ErrorBody, description = "signature missing, malformed or wrong (quarantined)"),
        (status = 404, body = ErrorBody, description = "unknown source"),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "could not be stored; retry")),
    security(()))]
pub(super) async fn receive_default(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(app, DEFAULT_SOURCE, headers, body).await
}

/// A Thinkific webhook delivery for a named source (`[[source]]` in the config).
#[utoipa::path(post, path = "/webhooks/thinkific/{source}", tag = "webhooks",
    params(("source" = String, Path), ("X-Thinkific-Hmac-Sha256" = String, Header, description = "hex HMAC-SHA256 of the raw body, keyed with the source's secret")),
    request_body(content = Object, description = "the Thinkific event envelope", content_type = "application/json"),
    responses(
        (status = 200, body = DeliveryReply, description = "durably stored"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(()))]
pub(super) async fn receive_named(
    State(app): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    receive(app, &source, headers, body).await
}

/// Whether reading the body failed because the client was too slow.
fn is_body_timeout(e: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<super::deadline::BodyDeadlineExceeded>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// 429 with `Retry-After`: neither stored nor quarantined.
fn rate_limited(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many deliveries; retry after {secs} s"),
    );
    let mut response = err.into_response();
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, secs.into());
    response
}

/// One delivery, traced as the root span `webhook` when tracing is on (see
/// `crate::telemetry`): source, topic, event id and outcome, never the body.
async fn receive(
    app: AppState,
    source: &str,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Sampled here, before any span is built (see `crate::telemetry`).
    let span = if crate::telemetry::delivery_sampled() {
        tracing::info_span!(target: TARGET, parent: None, "webhook",
            otel.kind = "server", source, topic = Empty, event_id = Empty, outcome = Empty,
            http.response.status_code = Empty)
    } else {
        tracing::Span::none()
    };
    receive_in(app, source, headers, body, span.clone())
        .instrument(span)
        .await
}

async fn receive_in(
    app: AppState,
    source: &str,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    span: tracing::Span,
) -> Response {
    let started = Instant::now();
    let finish = |outcome: &'static str, topic: &str, event_id: &str, response: Response| {
        if !span.is_disabled() {
            span.record("outcome", outcome);
            span.record("http.response.status_code", response.status().as_u16());
            if !event_id.is_empty() {
                span.record("topic", topic);
                span.record("event_id", event_id);
            }
        }
        let elapsed = started.elapsed();
        app.metrics.observe_delivery(outcome, elapsed);
        let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let status = response.status().as_u16();
        if app
            .delivery_log
            .shown(outcome, matches!(outcome, "stored" | "duplicate"), started)
        {
            tracing::info!(
                source, topic, event_id, outcome, status, latency_ms, "delivery"
            );
        } else {
            tracing::debug!(
                source, topic, event_id, outcome, status, latency_ms, "delivery"
            );
        }
        response
    };

    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let err = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body is larger than the {} byte limit; raise --max-body if Thinkific really sends such events",
                    app.max_body
                ),
            );
            return finish("body_too_large", "", "", err.into_response());
        }
        Err(e) if is_body_timeout(&e) => {
            let err = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s of the request's headers (--read-timeout)",
                    app.read_timeout.as_secs_f64()
                ),
            );
            return finish("body_timeout", "", "", err.into_response());
        }
        Err(e) => {
            let err = ApiError::bad_request(format!("could not read the request body: {e}"));
            return finish("body_unreadable", "", "", err.into_response());
        }
    };

    let delivery = Delivery {
        source,
        signature: headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes()),
        topic_header: headers.get(TOPIC_HEADER).and_then(|v| v.to_str().ok()),
        body: &body,
        received_at: Utc::now(),
    };
    // Verified and unverified deliveries are charged to separate budgets (see
    // `limits`): forgeries cannot make the school's real deliveries get 429.
    let authenticated = child_span!(&span, "verify")
        .in_scope(|| receive::authenticate(&app.sources, app.verify_signatures, &delivery));
    let charged = match &authenticated {
        Ok(()) => app.limits.check(source),
        Err(Rejection::Signature(_)) => app.limits.check_unverified(source),
        // Unknown sources are answered 404 and never kept: nothing to charge.
        Err(_) => Ok(()),
    };
    if let Err(wait) = charged {
        return finish("rate_limited", "", "", rate_limited(wait));
    }
    let parsed = authenticated
        .and_then(|()| child_span!(&span, "parse").in_scope(|| receive::parse(&delivery)));
    let mut event = match parsed {
        Ok(event) => event,
        Err(rejection) => {
            let status = match &rejection {
                Rejection::UnknownSource(_) => StatusCode::NOT_FOUND,
                Rejection::Signature(_) => StatusCode::UNAUTHORIZED,
                Rejection::Parse(_) => StatusCode::BAD_REQUEST,
            };
            let mut message = rejection.to_string();
            if rejection.is_quarantined() {
                let record = receive::quarantine_record(&delivery, &rejection, kept(&headers));
                keep_in_quarantine(&app, record, &mut message).await;
            }
            let err = ApiError::new(status, rejection.code(), message);
            return finish(rejection.code(), "", "", err.into_response());
        }
    };

    let (topic, event_id) = (event.topic.clone(), event.event_id.clone());
    // Forward attempts join this trace through the outbox (sampled deliveries only).
    if !span.is_disabled() {
        event.traceparent = crate::telemetry::traceparent(&span);
    }
    let commit = child_span!(&span, "commit", batch.size = Empty);
    match app.ingestor.append(event).instrument(commit).await {
        Ok(outcome) => {
            let label = match outcome {
                AppendOutcome::Stored { .. } => "stored",
                AppendOutcome::Duplicate => "duplicate",
            };
            let reply = DeliveryReply {
                status: label.to_owned(),
                event_id: event_id.clone(),
                topic: topic.clone(),
            };
            let response = (StatusCode::OK, Json(reply)).into_response();
            finish(label, &topic, &event_id, response)
        }
        Err(IngestError::Store(e)) if matches!(*e, StoreError::Rejected(_)) => {
            // The database refused this event alone (issue #15, item 5): 400,
            // quarantined, so Thinkific's retries are seen and nothing is lost.
            let mut message = format!("{e}; the delivery cannot be stored as it is");
            let record = NewQuarantine {
                source: source.to_owned(),
                received_at: delivery.received_at,
                reason_code: "store_rejected".to_owned(),
                reason: e.to_string(),
                headers: kept(&headers),
                body: body.to_vec(),
            };
            keep_in_quarantine(&app, record, &mut message).await;
            let err = ApiError::new(StatusCode::BAD_REQUEST, "store_rejected", message);
            finish("store_rejected", &topic, &event_id, err.into_response())
        }
        Err(e) => {
            let message = match e {
                IngestError::Stopped => {
                    "the service is shutting down; Thinkific will retry".to_owned()
                }
                IngestError::Store(_) => {
                    "the event could not be stored (database unavailable); Thinkific will retry"
                        .to_owned()
                }
            };
            let err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                message,
            );
            finish(
                "storage_unavailable",
                &topic,
                &event_id,
                err.into_response(),
            )
        }
    }
}

/// The request headers kept with a quarantined delivery.
fn kept(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| receive::is_kept_header(name.as_str()))
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Quarantines a refused delivery and says where in `message`.
async fn keep_in_quarantine(app: &AppState, record: NewQuarantine, message: &mut String) {
    if !app.quarantine_budget.allow(&record.source) {
        app.metrics.quarantine_dropped();
        message.push_str(
            " (not kept in quarantine: too many rejected deliveries a second; counted in /metrics)",
        );
        return;
    }
    match app.store.quarantine(record).await {
        Ok(id) => {
            message.push_str(&format!(" (kept in quarantine as #{id})"));
            app.ingestor.notify_change();
            // Bounded: a flood of bad deliveries cannot fill the disk.
            // Amortised: one prune per `prune_quarantine_every` inserts.
            let (keep, bytes) = (app.max_quarantine, app.max_quarantine_bytes);
            if crate::store::quarantine_prune_due_within(id, keep, bytes)
                && let Err(e) = app.store.prune_quarantine(keep, bytes).await
            {
                tracing::warn!(error = %e, "could not prune the quarantine");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "could not quarantine a rejected delivery")
        }
    }
}
