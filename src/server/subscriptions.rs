//! `/api/subscriptions`: forwarding destinations, their deliveries and attempts,
//! and replays.

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::Page;
use super::api::{csv_page, csv_rows, page, query, timestamp_param};
use super::auth::{Scope, require_auth};
use super::error::ErrorBody;
use super::export::{self, Format, columns};
use super::{ApiError, AppState};
use crate::forward::subscription::{Subscription, SubscriptionInput};
use crate::forward::worker::{TestDelivery, TestEvent};
use crate::store::{DeliveryAttempt, OutboxEntry};
use crate::store::{DeliveryFilter, DeliveryState, ReplayScope};
use utoipa::{IntoParams, ToSchema};

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/subscriptions", get(list).post(create))
        .route(
            "/api/subscriptions/{id}",
            get(show).patch(update).put(replace).delete(remove),
        )
        .route("/api/subscriptions/{id}/rotate-secret", post(rotate_secret))
        .route("/api/subscriptions/{id}/test", post(test))
        .route(
            "/api/subscriptions/{id}/attempts",
            get(subscription_attempts),
        )
        .route(
            "/api/subscriptions/{id}/deliveries",
            get(subscription_deliveries),
        )
        .route("/api/subscriptions/{id}/replay", post(replay_subscription))
        .route(
            "/api/events/{source}/{event_id}/attempts",
            get(event_attempts),
        )
        .route(
            "/api/events/{source}/{event_id}/deliveries",
            get(event_deliveries),
        )
        .route("/api/events/{source}/{event_id}/replay", post(replay_event))
        // Subscriptions span sources: admin only.
        .route_layer(middleware::from_fn(admin_only))
        .route_layer(middleware::from_fn_with_state(state, require_auth))
}

async fn admin_only(
    axum::Extension(scope): axum::Extension<Scope>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    match scope.require_admin() {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

pub fn new_subscription_id() -> String {
    use rand::Rng;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    format!("sub_{suffix}")
}

/// A subscription as shown: everything, the secret only when asked for, the
/// URL's password (a broker's credentials) never.
pub fn subscription_view(s: &Subscription, with_secret: bool) -> Value {
    let mut v = serde_json::to_value(s).expect("plain data");
    let object = v.as_object_mut().expect("object");
    object.insert("url".into(), Value::String(crate::redact::url(&s.url)));
    if !with_secret {
        object.remove("secret");
    }
    v
}

/// Subscriptions, without their secrets.
#[derive(serde::Serialize, ToSchema)]
pub struct SubscriptionList {
    pub items: Vec<Subscription>,
}

/// How many deliveries were put back in the outbox.
#[derive(serde::Serialize, ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(t)| t)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {}", e.body_text())))
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_subscription",
        e.to_string(),
    )
}

async fn load(app: &AppState, id: &str) -> Result<Subscription, ApiError> {
    app.store
        .get_subscription(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no subscription `{id}`")))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FormatQuery {
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    format: Option<String>,
}

#[utoipa::path(get, path = "/api/subscriptions", tag = "subscriptions", params(FormatQuery), responses((status = 200, content((SubscriptionList = "application/json"), (String = "text/csv")), description = "secrets are left out of lists"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FormatQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let format = export::format(query(q)?.format.as_deref(), &headers)?;
    let subs = app.store.list_subscriptions().await?;
    let items: Vec<Value> = subs.iter().map(|s| subscription_view(s, false)).collect();
    Ok(match format {
        Format::Csv => export::table("subscriptions", columns::SUBSCRIPTIONS, &items),
        Format::Json => Json(json!({ "items": items })).into_response(),
    })
}

#[utoipa::path(post, path = "/api/subscriptions", tag = "subscriptions", request_body = SubscriptionInput, responses((status = 201, body = Subscription), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn create(
    State(app): State<AppState>,
    body: Result<Json<SubscriptionInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    let input = json_body(body)?;
    let s = input
        .create(
            new_subscription_id(),
            Utc::now(),
            app.allow_private_destinations,
        )
        .map_err(invalid)?;
    app.store.insert_subscription(&s).await?;
    tracing::info!(subscription = %s.id, url = %crate::redact::url(&s.url), "subscription created");
    Ok((StatusCode::CREATED, Json(subscription_view(&s, true))).into_response())
}

#[utoipa::path(get, path = "/api/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)), responses((status = 200, body = Subscription), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(subscription_view(&load(&app, &id).await?, true)))
}

#[utoipa::path(patch, path = "/api/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)), request_body = SubscriptionInput, responses((status = 200, body = Subscription), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SubscriptionInput>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let input = json_body(body)?;
    let s = input
        .apply(
            load(&app, &id).await?,
            Utc::now(),
            app.allow_private_destinations,
        )
        .map_err(invalid)?;
    if !app.store.update_subscription(&s).await? {
        return Err(ApiError::not_found(format!("no subscription `{id}`")));
    }
    Ok(Json(subscription_view(&s, true)))
}

/// PUT: the whole subscription; fields left out take their defaults.
#[utoipa::path(put, path = "/api/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)), request_body = SubscriptionInput, responses((status = 200, body = Subscription), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn replace(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SubscriptionInput>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut input = json_body(body)?;
    let existing = load(&app, &id).await?;
    // The URL as shown (password `***`) sent back keeps the stored password.
    if input.url.as_deref() == Some(crate::redact::url(&existing.url).as_str()) {
        input.url = Some(existing.url.clone());
    }
    let mut s = input
        .create(id.clone(), Utc::now(), app.allow_private_destinations)
        .map_err(invalid)?;
    s.created_at = existing.created_at;
    if !app.store.update_subscription(&s).await? {
        return Err(ApiError::not_found(format!("no subscription `{id}`")));
    }
    Ok(Json(subscription_view(&s, true)))
}

#[utoipa::path(delete, path = "/api/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path)), responses((status = 204, description = "removed with its pending deliveries"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.store.delete_subscription(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no subscription `{id}`")))
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateInput {
    /// The new secret; generated when absent.
    secret: Option<String>,
    /// How long the old secret keeps signing too (default 24 h).
    grace_period_seconds: Option<u64>,
}

#[utoipa::path(post, path = "/api/subscriptions/{id}/rotate-secret", tag = "subscriptions", params(("id" = String, Path)), request_body(content = Option<RotateInput>), responses((status = 200, body = Subscription), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn rotate_secret(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<RotateInput>>,
) -> Result<Json<Value>, ApiError> {
    let input = body.map(|Json(b)| b).unwrap_or_default();
    let mut s = load(&app, &id).await?;
    let grace = std::time::Duration::from_secs(input.grace_period_seconds.unwrap_or(86_400));
    s.rotate_secret(input.secret, grace, Utc::now())
        .map_err(invalid)?;
    app.store.update_subscription(&s).await?;
    Ok(Json(subscription_view(&s, true)))
}

/// What a test renders, and whether it sends it.
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TestQuery {
    /// A stored event, `SOURCE/EVENT_ID` (a bare id: source `default`),
    /// rendered with its enrollment as it is now.
    event: Option<String>,
    /// The `event`'s topic, needed when its id names events of several topics.
    topic: Option<String>,
    /// A Thinkific sample instead: created, progress, completed, lesson,
    /// order or signup. Without `event` or `sample`: an `enrollhook.test` ping.
    sample: Option<String>,
    /// `true`: send it (signed, as a real delivery); default: only show it.
    send: Option<bool>,
}

/// Renders what the subscription would send for a stored event, a sample or
/// a test ping (topic `enrollhook.test`) and shows the request without
/// sending it; `?send=true` sends it, as a real delivery is sent, and answers
/// what came back. Nothing is queued or recorded; a paused subscription can
/// be tested too. A template that cannot render answers `ok: false` with
/// its error and no request.
#[utoipa::path(post, path = "/api/subscriptions/{id}/test", tag = "subscriptions", params(("id" = String, Path), TestQuery), responses((status = 200, body = TestDelivery, description = "rendered (and sent with `send=true`); `ok` says whether it rendered and, when sent, whether the destination answered 2xx"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the event id names events of several topics: add `topic`")))]
pub(super) async fn test(
    State(app): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<TestQuery>, QueryRejection>,
) -> Result<Json<TestDelivery>, ApiError> {
    let q = query(q)?;
    let s = load(&app, &id).await?;
    let event = match (q.event, q.sample) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either `event` (a stored event, SOURCE/EVENT_ID) or `sample` (created, progress, completed, lesson, order, signup), not both",
            ));
        }
        (Some(event), None) => {
            let (source, event_id) = event.split_once('/').unwrap_or(("default", event.as_str()));
            let stored = app
                .store
                .get_event(source, event_id, q.topic.as_deref())
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no event `{event_id}` from source `{source}` (name it as SOURCE/EVENT_ID)"
                    ))
                })?;
            TestEvent::Stored(Box::new(stored))
        }
        (None, Some(sample)) => {
            if crate::thinkific::samples::by_name(&sample).is_none() {
                return Err(ApiError::bad_request(format!(
                    "no sample `{sample}`: use created, progress, completed, lesson, order or signup"
                )));
            }
            TestEvent::Sample(sample)
        }
        (None, None) => TestEvent::Ping,
    };
    let send = q.send.unwrap_or(false);
    let result =
        crate::forward::worker::test_delivery(&app.forward, app.store.as_ref(), &s, event, send)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "test_failed",
                    format!("could not prepare the test delivery: {e}"),
                )
            })?;
    if send {
        tracing::info!(subscription = %s.id, url = %crate::redact::url(&s.url), status = result.status, ok = result.ok, "test delivery sent");
    }
    Ok(Json(result))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// 1–1000, default 100 (with CSV: the most rows of the download, default all).
    limit: Option<u32>,
    cursor: Option<String>,
    state: Option<String>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    format: Option<String>,
}

/// Paging through delivery attempts: `order=desc` lists the newest first.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AttemptsQuery {
    /// 1–1000, default 100 (with CSV: the most rows of the download, default all).
    limit: Option<u32>,
    cursor: Option<String>,
    /// `asc` (the default: in the order they were made) or `desc` (newest first).
    order: Option<String>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    format: Option<String>,
}

/// An event's delivery attempts; `topic` names the event when its id is
/// shared by events of several topics (answered 409 without it).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventAttemptsQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// `asc` (the default: in the order they were made) or `desc` (newest first).
    order: Option<String>,
    /// The event's topic, needed when its id names events of several topics.
    topic: Option<String>,
}

/// An event's deliveries; `topic` as in [`EventAttemptsQuery`].
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventDeliveriesQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    state: Option<String>,
    /// The event's topic, needed when its id names events of several topics.
    topic: Option<String>,
}

impl AttemptsQuery {
    fn newest_first(&self) -> Result<bool, ApiError> {
        newest_first(self.order.as_deref())
    }
}

fn newest_first(order: Option<&str>) -> Result<bool, ApiError> {
    match order {
        None | Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "order must be asc (oldest first) or desc (newest first), got `{other}`"
        ))),
    }
}

fn state_param(state: Option<String>) -> Result<Option<DeliveryState>, ApiError> {
    state
        .map(|s| {
            DeliveryState::parse(&s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "state must be pending, delivered or dead, got `{s}`"
                ))
            })
        })
        .transpose()
}

#[utoipa::path(get, path = "/api/subscriptions/{id}/attempts", tag = "subscriptions", params(("id" = String, Path), AttemptsQuery), responses((status = 200, content((Page<DeliveryAttempt> = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn subscription_attempts(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<AttemptsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    load(&app, &id).await?;
    attempts(&app, Some(id), None, q, &headers).await
}

/// Attempts of a subscription or an event, as JSON or streamed CSV.
async fn attempts(
    app: &AppState,
    subscription: Option<String>,
    seq: Option<i64>,
    q: AttemptsQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let newest_first = q.newest_first()?;
    if export::format(q.format.as_deref(), headers)? == Format::Json {
        let page = app
            .store
            .list_attempts(
                subscription.as_deref(),
                seq,
                &page(q.limit, q.cursor)?,
                newest_first,
            )
            .await?;
        return Ok(
            Json(json!({"items": page.items, "next_cursor": page.next_cursor})).into_response(),
        );
    }
    let rows = csv_rows(q.limit)?;
    let first = app
        .store
        .list_attempts(
            subscription.as_deref(),
            seq,
            &csv_page(q.cursor),
            newest_first,
        )
        .await?;
    let store = app.store.clone();
    let next = move |cursor| {
        let (store, subscription) = (store.clone(), subscription.clone());
        async move {
            let request = csv_page(Some(cursor));
            store
                .list_attempts(subscription.as_deref(), seq, &request, newest_first)
                .await
        }
    };
    Ok(export::paged(
        "attempts",
        columns::ATTEMPTS,
        first,
        rows,
        next,
    ))
}

/// Outbox deliveries, as JSON or streamed CSV.
async fn deliveries(
    app: &AppState,
    filter: DeliveryFilter,
    q: ListQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if export::format(q.format.as_deref(), headers)? == Format::Json {
        let page = app
            .store
            .list_deliveries(&filter, &page(q.limit, q.cursor)?)
            .await?;
        return Ok(
            Json(json!({"items": page.items, "next_cursor": page.next_cursor})).into_response(),
        );
    }
    let rows = csv_rows(q.limit)?;
    let first = app
        .store
        .list_deliveries(&filter, &csv_page(q.cursor))
        .await?;
    let store = app.store.clone();
    let next = move |cursor| {
        let (store, filter) = (store.clone(), filter.clone());
        async move {
            store
                .list_deliveries(&filter, &csv_page(Some(cursor)))
                .await
        }
    };
    Ok(export::paged(
        "deliveries",
        columns::DELIVERIES,
        first,
        rows,
        next,
    ))
}

#[utoipa::path(get, path = "/api/subscriptions/{id}/deliveries", tag = "subscriptions", params(("id" = String, Path), ListQuery), responses((status = 200, content((Page<OutboxEntry> = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn subscription_deliveries(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    load(&app, &id).await?;
    let filter = DeliveryFilter {
        subscription_id: Some(id),
        event_seq: None,
        state: state_param(q.state.clone())?,
    };
    deliveries(&app, filter, q, &headers).await
}

async fn event_seq(
    app: &AppState,
    source: &str,
    event_id: &str,
    topic: Option<&str>,
) -> Result<i64, ApiError> {
    Ok(app
        .store
        .get_event(source, event_id, topic)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no event `{event_id}` from source `{source}`"))
        })?
        .seq)
}

#[utoipa::path(get, path = "/api/events/{source}/{event_id}/attempts", tag = "events", params(("source" = String, Path), ("event_id" = String, Path), EventAttemptsQuery), responses((status = 200, body = Page<DeliveryAttempt>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the id names events of several topics: add ?topic=")))]
pub(super) async fn event_attempts(
    State(app): State<AppState>,
    Path((source, event_id)): Path<(String, String)>,
    q: Result<Query<EventAttemptsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let newest_first = newest_first(q.order.as_deref())?;
    let seq = event_seq(&app, &source, &event_id, q.topic.as_deref()).await?;
    let page = app
        .store
        .list_attempts(None, Some(seq), &page(q.limit, q.cursor)?, newest_first)
        .await?;
    Ok(Json(
        json!({"items": page.items, "next_cursor": page.next_cursor}),
    ))
}

#[utoipa::path(get, path = "/api/events/{source}/{event_id}/deliveries", tag = "events", params(("source" = String, Path), ("event_id" = String, Path), EventDeliveriesQuery), responses((status = 200, body = Page<OutboxEntry>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the id names events of several topics: add ?topic=")))]
pub(super) async fn event_deliveries(
    State(app): State<AppState>,
    Path((source, event_id)): Path<(String, String)>,
    q: Result<Query<EventDeliveriesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let seq = event_seq(&app, &source, &event_id, q.topic.as_deref()).await?;
    let filter = DeliveryFilter {
        subscription_id: None,
        event_seq: Some(seq),
        state: state_param(q.state.clone())?,
    };
    let page = app
        .store
        .list_deliveries(&filter, &page(q.limit, q.cursor)?)
        .await?;
    Ok(Json(
        json!({"items": page.items, "next_cursor": page.next_cursor}),
    ))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayInput {
    /// Every dead delivery of the subscription.
    #[serde(default)]
    dead: bool,
    /// Every matching event received in [since, until).
    since: Option<String>,
    until: Option<String>,
}

#[utoipa::path(post, path = "/api/subscriptions/{id}/replay", tag = "subscriptions", params(("id" = String, Path)), request_body = ReplayInput, responses((status = 200, body = Replayed), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn replay_subscription(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ReplayInput>, JsonRejection>,
) -> Result<Json<Replayed>, ApiError> {
    let input = json_body(body)?;
    let scope = match (input.dead, input.since) {
        (true, None) if input.until.is_none() => ReplayScope::Dead {
            subscription_id: id,
        },
        (false, Some(since)) => ReplayScope::Range {
            subscription_id: id,
            since: timestamp_param("since", Some(since))?.expect("given"),
            until: timestamp_param("until", input.until)?.unwrap_or_else(Utc::now),
        },
        _ => {
            return Err(ApiError::bad_request(
                "send {\"dead\": true} to replay dead deliveries, or {\"since\": \"2024-05-01T00:00:00Z\", \"until\": …} for a time range",
            ));
        }
    };
    let replayed = app.store.replay(&scope, Utc::now()).await?;
    Ok(Json(Replayed { replayed }))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayEventInput {
    subscription_id: Option<String>,
    /// The event's topic, needed when its id names events of several topics.
    topic: Option<String>,
}

#[utoipa::path(post, path = "/api/events/{source}/{event_id}/replay", tag = "events", params(("source" = String, Path), ("event_id" = String, Path)), request_body(content = Option<ReplayEventInput>), responses((status = 200, body = Replayed), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the id names events of several topics: name `topic`")))]
pub(super) async fn replay_event(
    State(app): State<AppState>,
    Path((source, event_id)): Path<(String, String)>,
    body: Option<Json<ReplayEventInput>>,
) -> Result<Json<Replayed>, ApiError> {
    let input = body.map(|Json(b)| b).unwrap_or_default();
    let scope = ReplayScope::Event {
        source,
        event_id,
        topic: input.topic,
        subscription_id: input.subscription_id,
    };
    let replayed = app.store.replay(&scope, Utc::now()).await?;
    Ok(Json(Replayed { replayed }))
}
