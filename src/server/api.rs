//! The query API (`/api/...`), health checks and metrics.

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::auth::Scope;
use super::error::ErrorBody;
use super::export::{self, Format, columns};
use super::{ApiError, AppState};
use crate::ingest::quarantine::{self, RetryError};
use crate::store::{
    ActivityQuery, CourseStats, DayActivity, LessonDone, ReconciliationRecord, Stalled,
    StalledFilter, StalledOrder,
};
use crate::store::{
    AppendOutcome, EnrollmentFilter, EventFilter, MAX_PAGE, PageRequest, QuarantineRecord,
    StoredEvent,
};
use crate::thinkific::envelope::parse_timestamp;
use crate::views::{
    EnrollmentView, EventView, LearningView, QuarantineView, event_view, quarantine_view,
};

pub fn router(state: AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/api/enrollments", get(list_enrollments))
        .route(
            "/api/enrollments/{source}/{enrollment_id}",
            get(get_enrollment),
        )
        .route("/api/courses", get(courses))
        .route(
            "/api/courses/{source}/{course_id}/funnel",
            get(super::learning::funnel),
        )
        .route(
            "/api/students/{source}/{user_id}",
            get(super::learning::student),
        )
        .route("/api/quizzes", get(super::learning::quizzes))
        .route("/api/activity", get(activity))
        .route("/api/events", get(list_events))
        .route("/api/stream", get(super::stream::stream))
        .route("/api/events/{source}/{event_id}", get(get_event))
        .route("/api/events/{source}/{event_id}/raw", get(get_event_raw))
        .route("/api/reconciliations", get(list_reconciliations))
        .route("/api/milestones", get(list_milestones))
        .route("/api/quarantine", get(list_quarantine))
        .route("/api/quarantine/{id}", get(get_quarantine))
        .route("/api/quarantine/{id}/retry", post(retry_quarantine))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            state,
            super::auth::require_auth,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {}", e.body_text())))
}

pub(super) fn page(limit: Option<u32>, cursor: Option<String>) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(crate::store::DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(PageRequest {
        limit,
        cursor: cursor.filter(|c| !c.is_empty()),
    })
}

pub(super) fn timestamp_param(
    name: &str,
    value: Option<String>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            parse_timestamp(&v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be an RFC 3339 timestamp like 2024-05-01T12:00:00Z, got `{v}`"
                ))
            })
        })
        .transpose()
}

/// With CSV, `limit` caps the rows of the whole download (any positive number).
pub(super) fn csv_rows(limit: Option<u32>) -> Result<Option<u64>, ApiError> {
    match limit {
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        l => Ok(l.map(u64::from)),
    }
}

/// The page a CSV export reads at a time: the largest.
pub(super) fn csv_page(cursor: Option<String>) -> PageRequest {
    PageRequest {
        limit: MAX_PAGE,
        cursor: cursor.filter(|c| !c.is_empty()),
    }
}

/// A page of a list; pass `next_cursor` back as `cursor` for the next one.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Absent (null) on the last page.
    pub next_cursor: Option<String>,
}

impl<T> From<Page<T>> for crate::store::Page<T> {
    fn from(p: Page<T>) -> Self {
        crate::store::Page {
            items: p.items,
            next_cursor: p.next_cursor,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EnrollmentQuery {
    source: Option<String>,
    course_id: Option<i64>,
    user_id: Option<i64>,
    email: Option<String>,
    /// trial, active, completed or expired.
    status: Option<String>,
    /// RFC 3339: only enrollments whose Thinkific `updated_at` is later.
    updated_after: Option<String>,
    /// Only stalled students: enrolled, not completed, not expired, and no
    /// enrollment, lesson or quiz event for this many days (1–3660). Items
    /// then carry `learning` and are sorted by days inactive.
    stalled_days: Option<u32>,
    /// With `stalled_days`: `most_inactive` (default) or `least_inactive` first.
    order: Option<String>,
    /// 1–1000, default 100 (with CSV: the most rows of the download, default all).
    limit: Option<u32>,
    cursor: Option<String>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`): every
    /// matching enrollment from `cursor` on, streamed, formula-safe.
    format: Option<String>,
}

/// Enrollments, filtered, in (source, enrollment id) order; or, with
/// `stalled_days`, the stalled ones by days inactive.
#[utoipa::path(get, path = "/api/enrollments", tag = "enrollments", params(EnrollmentQuery),
    responses((status = 200, content((Page<EnrollmentView> = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_enrollments(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    q: Result<Query<EnrollmentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = export::format(q.format.as_deref(), &headers)?;
    let source = scope.restrict(q.source)?;
    if q.stalled_days.is_some() || q.order.is_some() {
        if q.user_id.is_some()
            || q.email.is_some()
            || q.status.is_some()
            || q.updated_after.is_some()
        {
            return Err(ApiError::bad_request(
                "with stalled_days only source, course_id, order, limit and cursor apply",
            ));
        }
        let order = match q.order.as_deref() {
            None | Some("most_inactive") => StalledOrder::MostInactive,
            Some("least_inactive") => StalledOrder::LeastInactive,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "order must be most_inactive or least_inactive, got `{other}`"
                )));
            }
        };
        let now = Utc::now();
        let filter = StalledFilter {
            source,
            course_id: q.course_id,
            stalled: Stalled::days(super::learning::stalled_days(q.stalled_days)?, now),
            order,
        };
        let page = app
            .store
            .stalled_learners(&filter, &page(q.limit, q.cursor)?)
            .await?;
        let items: Vec<EnrollmentView> = page
            .items
            .iter()
            .map(|(e, l)| {
                let mut view = EnrollmentView::new(e, now);
                view.learning = Some(LearningView::new(l, now));
                view
            })
            .collect();
        return Ok(match format {
            // One page (up to `limit`, 1000 at most), each row with its learning.
            Format::Csv => {
                let rows: Vec<StalledRow<'_>> = items
                    .iter()
                    .map(|view| StalledRow {
                        enrollment: view,
                        learning: view.learning.as_ref(),
                    })
                    .collect();
                export::table("stalled", &columns::stalled(), &rows)
            }
            Format::Json => Json(Page {
                items,
                next_cursor: page.next_cursor,
            })
            .into_response(),
        });
    }
    let status = q
        .status
        .map(|s| s.parse().map_err(ApiError::bad_request))
        .transpose()?;
    let filter = EnrollmentFilter {
        source,
        course_id: q.course_id,
        user_id: q.user_id,
        email: q.email,
        status,
        updated_after: timestamp_param("updated_after", q.updated_after)?,
    };
    let now = Utc::now();
    let views = move |page: crate::store::Page<crate::projection::Enrollment>| Page {
        items: page
            .items
            .iter()
            .map(|e| EnrollmentView::new(e, now))
            .collect(),
        next_cursor: page.next_cursor,
    };
    if format == Format::Csv {
        let rows = csv_rows(q.limit)?;
        let first = app
            .store
            .list_enrollments(&filter, &csv_page(q.cursor), now)
            .await?;
        let store = app.store.clone();
        let next = move |cursor| {
            let (store, filter) = (store.clone(), filter.clone());
            async move {
                let page = store
                    .list_enrollments(&filter, &csv_page(Some(cursor)), now)
                    .await?;
                Ok(views(page).into())
            }
        };
        return Ok(export::paged(
            "enrollments",
            columns::ENROLLMENTS,
            views(first).into(),
            rows,
            next,
        ));
    }
    let page = app
        .store
        .list_enrollments(&filter, &page(q.limit, q.cursor)?, now)
        .await?;
    Ok(Json(views(page)).into_response())
}

/// One enrollment with its lessons and event timeline.
#[derive(Serialize, ToSchema)]
pub struct EnrollmentDetail {
    pub enrollment: EnrollmentView,
    /// The lessons its student completed in its course, in completion order.
    pub lessons: Vec<LessonDone>,
    /// Its events in the order they were stored.
    pub events: Vec<EventView>,
}

#[utoipa::path(get, path = "/api/enrollments/{source}/{enrollment_id}", tag = "enrollments",
    params(("source" = String, Path), ("enrollment_id" = String, Path, description = "Thinkific enrollment id (integer)")),
    responses((status = 200, body = EnrollmentDetail), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_enrollment(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path((source, enrollment_id)): Path<(String, String)>,
) -> Result<Json<EnrollmentDetail>, ApiError> {
    scope.check(&source)?;
    let id: i64 = enrollment_id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "enrollment id must be an integer, got `{enrollment_id}`"
        ))
    })?;
    let Some(enrollment) = app.store.get_enrollment(&source, id).await? else {
        return Err(ApiError::not_found(format!(
            "no enrollment {id} from source `{source}` has been received"
        )));
    };
    let events = app.store.enrollment_events(&source, id).await?;
    let now = Utc::now();
    let mut view = EnrollmentView::new(&enrollment, now);
    let mut lessons = Vec::new();
    if let (Some(user_id), Some(course_id)) = (enrollment.user_id, enrollment.course_id) {
        let student = app.store.student(&source, user_id, 0).await?;
        view.learning = student
            .courses
            .iter()
            .find(|c| c.course_id == course_id)
            .map(|l| LearningView::new(l, now));
        lessons = student
            .lessons
            .into_iter()
            .filter(|l| l.course_id == course_id)
            .collect();
    }
    Ok(Json(EnrollmentDetail {
        enrollment: view,
        lessons,
        events: events.iter().map(event_view).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CoursesQuery {
    source: Option<String>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    format: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CourseList {
    pub items: Vec<CourseView>,
}

/// A course's statistics, with its lessons seen and stalled students
/// (no activity for 14 days, see `/api/courses/{source}/{course_id}/funnel`).
#[derive(Serialize, ToSchema)]
pub struct CourseView {
    #[serde(flatten)]
    pub stats: CourseStats,
    pub lessons_seen: i64,
    pub stalled: i64,
}

/// A stalled enrollment as one CSV row: the enrollment's columns, then its learning.
#[derive(Serialize)]
struct StalledRow<'a> {
    #[serde(flatten)]
    enrollment: &'a EnrollmentView,
    #[serde(flatten)]
    learning: Option<&'a LearningView>,
}

/// Per-course statistics.
#[utoipa::path(get, path = "/api/courses", tag = "courses", params(CoursesQuery),
    responses((status = 200, content((CourseList = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn courses(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    q: Result<Query<CoursesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = export::format(q.format.as_deref(), &headers)?;
    let source = scope.restrict(q.source)?;
    let now = Utc::now();
    let stats = app.store.course_stats(source.as_deref(), now).await?;
    let learning = app
        .store
        .course_learning(
            source.as_deref(),
            &Stalled::days(super::learning::DEFAULT_STALLED_DAYS, now),
        )
        .await?;
    let counts: std::collections::HashMap<(&str, i64), (i64, i64)> = learning
        .iter()
        .map(|c| {
            (
                (c.source.as_str(), c.course_id),
                (c.lessons_seen, c.stalled),
            )
        })
        .collect();
    let items: Vec<CourseView> = stats
        .into_iter()
        .map(|stats| {
            let (lessons_seen, stalled) = counts
                .get(&(stats.source.as_str(), stats.course_id))
                .copied()
                .unwrap_or((0, 0));
            CourseView {
                stats,
                lessons_seen,
                stalled,
            }
        })
        .collect();
    Ok(match format {
        Format::Csv => export::table("courses", columns::COURSES, &items),
        Format::Json => Json(CourseList { items }).into_response(),
    })
}

/// The longest activity range: ten years of days.
pub const MAX_ACTIVITY_DAYS: i64 = 3660;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ActivityParams {
    /// How many days, ending today (UTC): 1–3660, default 30.
    days: Option<i64>,
    source: Option<String>,
    course_id: Option<i64>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    format: Option<String>,
}

/// New enrollments and completions per UTC day.
#[derive(Serialize, ToSchema)]
pub struct Activity {
    /// Every day of the range, oldest first, zeros included.
    pub days: Vec<DayActivity>,
}

/// New enrollments (by the day of the enrollment's `created_at`, else
/// `activated_at`, else `started_at`) and completions (by the day of its first
/// `completed_at`) per UTC day, for the last `days` days including today.
#[utoipa::path(get, path = "/api/activity", tag = "courses", params(ActivityParams),
    responses((status = 200, content((Activity = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn activity(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    q: Result<Query<ActivityParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = export::format(q.format.as_deref(), &headers)?;
    let days = q.days.unwrap_or(30);
    if !(1..=MAX_ACTIVITY_DAYS).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "days must be between 1 and {MAX_ACTIVITY_DAYS}, got {days}"
        )));
    }
    if let Some(c) = q.course_id.filter(|c| *c < 1) {
        return Err(ApiError::bad_request(format!(
            "course_id must be a Thinkific course id (a positive integer), got {c}"
        )));
    }
    let to = Utc::now().date_naive();
    let from = to - chrono::Days::new(days as u64 - 1);
    let days = app
        .store
        .activity(&ActivityQuery {
            source: scope.restrict(q.source.filter(|s| !s.is_empty()))?,
            course_id: q.course_id,
            from,
            to,
        })
        .await?;
    Ok(match format {
        Format::Csv => export::table("activity", columns::ACTIVITY, &days),
        Format::Json => Json(Activity { days }).into_response(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    source: Option<String>,
    /// Exact topic (`enrollment.progress`) or a resource (`enrollment.*`);
    /// `subscription.canceled` and `subscription.cancelled` are one topic.
    topic: Option<String>,
    /// Log position: only events stored after it.
    after: Option<i64>,
    /// 1–1000, default 100 (with CSV: the most rows of the download, default all).
    limit: Option<u32>,
    cursor: Option<String>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`; without bodies).
    format: Option<String>,
}

/// The event log, in order.
#[utoipa::path(get, path = "/api/events", tag = "events", params(EventsQuery),
    responses((status = 200, content((Page<EventView> = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_events(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = export::format(q.format.as_deref(), &headers)?;
    let filter = EventFilter {
        source: scope.restrict(q.source)?,
        // Stored topics are canonical (`*.cancelled`): so is the query.
        topic: q
            .topic
            .map(|t| crate::thinkific::canonical_topic(&t).into_owned()),
        after_seq: q.after,
    };
    let views = |page: crate::store::Page<StoredEvent>| Page {
        items: page.items.iter().map(event_view).collect(),
        next_cursor: page.next_cursor,
    };
    if format == Format::Csv {
        let rows = csv_rows(q.limit)?;
        let first = app.store.list_events(&filter, &csv_page(q.cursor)).await?;
        let store = app.store.clone();
        let next = move |cursor| {
            let (store, filter) = (store.clone(), filter.clone());
            async move {
                let page = store.list_events(&filter, &csv_page(Some(cursor))).await?;
                Ok(views(page).into())
            }
        };
        return Ok(export::paged(
            "events",
            columns::EVENTS,
            views(first).into(),
            rows,
            next,
        ));
    }
    let page = app
        .store
        .list_events(&filter, &page(q.limit, q.cursor)?)
        .await?;
    Ok(Json(views(page)).into_response())
}

/// Which event an envelope id names: Thinkific gives events of two topics one
/// id (its `lesson.completed` and `quiz.attempted`); such an id is answered
/// 409, listing the topics, unless `topic` names one.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventQuery {
    /// The event's topic (`subscription.canceled` is `subscription.cancelled`).
    topic: Option<String>,
}

#[utoipa::path(get, path = "/api/events/{source}/{event_id}", tag = "events",
    params(("source" = String, Path), ("event_id" = String, Path), EventQuery),
    responses((status = 200, body = EventView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the id names events of several topics: add ?topic=")))]
pub(super) async fn get_event(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path((source, event_id)): Path<(String, String)>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<EventView>, ApiError> {
    scope.check(&source)?;
    let q = query(q)?;
    let event: StoredEvent = app
        .store
        .get_event(&source, &event_id, q.topic.as_deref())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no event `{event_id}` from source `{source}`"))
        })?;
    Ok(Json(event_view(&event)))
}

/// The event's body exactly as it was received, byte for byte (the JSON view
/// re-serializes it: keys sorted, large integers as floats): what to re-verify
/// `X-Thinkific-Hmac-Sha256` against.
#[utoipa::path(get, path = "/api/events/{source}/{event_id}/raw", tag = "events",
    params(("source" = String, Path), ("event_id" = String, Path), EventQuery),
    responses((status = 200, description = "the body as received", content_type = "application/json", body = String),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the id names events of several topics: add ?topic="),
        (status = 410, body = ErrorBody, description = "the body was dropped by retention (--retain-events)")))]
pub(super) async fn get_event_raw(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path((source, event_id)): Path<(String, String)>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    scope.check(&source)?;
    let q = query(q)?;
    let event: StoredEvent = app
        .store
        .get_event(&source, &event_id, q.topic.as_deref())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no event `{event_id}` from source `{source}`"))
        })?;
    if event.pruned_at.is_some() {
        return Err(ApiError::new(
            StatusCode::GONE,
            "body_pruned",
            format!("the body of event `{event_id}` was dropped by retention (--retain-events)"),
        ));
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], event.body).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReconciliationsQuery {
    source: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The scheduled reconciliations' runs (`serve --reconcile-every`), newest
/// first: per source, what the webhooks had missed or had behind, and whether
/// the school's webhooks deliver here. A per-school token sees its school's only.
#[utoipa::path(get, path = "/api/reconciliations", tag = "thinkific", params(ReconciliationsQuery),
    responses((status = 200, body = Page<ReconciliationRecord>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_reconciliations(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    q: Result<Query<ReconciliationsQuery>, QueryRejection>,
) -> Result<Json<Page<ReconciliationRecord>>, ApiError> {
    let q = query(q)?;
    let source = scope.restrict(q.source)?;
    let page = app
        .store
        .list_reconciliations(source.as_deref(), &page(q.limit, q.cursor)?)
        .await?;
    Ok(Json(Page {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct MilestonesQuery {
    source: Option<String>,
}

/// One source's configured milestones, with the topics they are emitted as.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceMilestonesView {
    pub source: String,
    #[serde(flatten)]
    pub milestones: crate::projection::milestones::SourceMilestones,
    /// The topics this source emits (for subscriptions: `milestone.*`).
    pub topics: Vec<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MilestonesList {
    pub items: Vec<SourceMilestonesView>,
}

/// The milestones each source emits (`[milestones]` / `[source.milestones]`
/// in enrollhook.toml); a source not listed emits none. A per-school token
/// sees its school's only.
#[utoipa::path(get, path = "/api/milestones", tag = "milestones", params(MilestonesQuery),
    responses((status = 200, body = MilestonesList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_milestones(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    q: Result<Query<MilestonesQuery>, QueryRejection>,
) -> Result<Json<MilestonesList>, ApiError> {
    let q = query(q)?;
    let source = scope.restrict(q.source)?;
    let rules = app.store.milestones();
    let items = rules
        .iter()
        .filter(|(s, _)| source.as_deref().is_none_or(|want| want == *s))
        .map(|(s, m)| SourceMilestonesView {
            source: s.to_owned(),
            milestones: m.clone(),
            topics: milestone_topics(m),
        })
        .collect();
    Ok(Json(MilestonesList { items }))
}

/// The topics a source's milestones are emitted as.
pub fn milestone_topics(m: &crate::projection::milestones::SourceMilestones) -> Vec<&'static str> {
    use crate::projection::milestones as ms;
    [
        (!m.progress.is_empty(), ms::PROGRESS),
        (m.completed, ms::COMPLETED),
        (m.trial_converted, ms::TRIAL_CONVERTED),
        (m.stalled_days.is_some(), ms::STALLED),
        (!m.lessons.is_empty(), ms::LESSON),
    ]
    .into_iter()
    .filter_map(|(on, topic)| on.then_some(topic))
    .collect()
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct QuarantineQuery {
    source: Option<String>,
    /// 1–1000, default 100 (with CSV: the most rows of the download, default all).
    limit: Option<u32>,
    cursor: Option<String>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`; without bodies).
    format: Option<String>,
}

/// Rejected deliveries, newest first.
#[utoipa::path(get, path = "/api/quarantine", tag = "quarantine", params(QuarantineQuery),
    responses((status = 200, content((Page<QuarantineView> = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_quarantine(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    q: Result<Query<QuarantineQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = export::format(q.format.as_deref(), &headers)?;
    let source = scope.restrict(q.source)?;
    let views = |page: crate::store::Page<QuarantineRecord>| Page {
        items: page
            .items
            .iter()
            .map(|r| quarantine_view(r, false))
            .collect(),
        next_cursor: page.next_cursor,
    };
    if format == Format::Csv {
        let rows = csv_rows(q.limit)?;
        let first = app
            .store
            .list_quarantine(source.as_deref(), &csv_page(q.cursor))
            .await?;
        let store = app.store.clone();
        let next = move |cursor| {
            let (store, source) = (store.clone(), source.clone());
            async move {
                let page = store
                    .list_quarantine(source.as_deref(), &csv_page(Some(cursor)))
                    .await?;
                Ok(views(page).into())
            }
        };
        return Ok(export::paged(
            "quarantine",
            columns::QUARANTINE,
            views(first).into(),
            rows,
            next,
        ));
    }
    let page = app
        .store
        .list_quarantine(source.as_deref(), &page(q.limit, q.cursor)?)
        .await?;
    Ok(Json(views(page)).into_response())
}

async fn load_quarantined(
    app: &AppState,
    scope: &Scope,
    id: &str,
) -> Result<QuarantineRecord, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!("quarantine id must be an integer, got `{id}`"))
    })?;
    let record = app
        .store
        .get_quarantine(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no quarantined delivery #{id}")))?;
    scope.check(&record.source)?;
    Ok(record)
}

/// One rejected delivery, with its raw body.
#[utoipa::path(get, path = "/api/quarantine/{id}", tag = "quarantine", params(("id" = String, Path)),
    responses((status = 200, body = QuarantineView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_quarantine(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Json<QuarantineView>, ApiError> {
    let record = load_quarantined(&app, &scope, &id).await?;
    Ok(Json(quarantine_view(&record, true)))
}

#[derive(Serialize, ToSchema)]
pub struct RetryResult {
    /// `stored`, or `duplicate` when the event was already in the log.
    pub status: String,
    pub event_id: String,
    pub quarantine_id: i64,
}

/// Re-checks a quarantined delivery with the current configuration (the fix for
/// a misconfigured secret) and stores it when it now passes.
#[utoipa::path(post, path = "/api/quarantine/{id}/retry", tag = "quarantine", params(("id" = String, Path)),
    responses((status = 200, body = RetryResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "still rejected"), (status = 503, body = ErrorBody)))]
pub(super) async fn retry_quarantine(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Json<RetryResult>, ApiError> {
    let record = load_quarantined(&app, &scope, &id).await?;
    let admitted = quarantine::retry(
        app.store.as_ref(),
        quarantine::Writer::GroupCommit(&app.ingestor),
        &app.sources,
        app.verify_signatures,
        &record,
    )
    .await
    .map_err(|e| match e {
        RetryError::StillRejected(r) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            r.code(),
            format!("still rejected: {r}"),
        ),
        RetryError::Ingest(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            e.to_string(),
        ),
        RetryError::Store(e) => e.into(),
    })?;
    app.ingestor.notify_change();
    let status = match admitted.outcome {
        AppendOutcome::Stored { .. } => "stored",
        AppendOutcome::Duplicate => "duplicate",
    };
    Ok(Json(RetryResult {
        status: status.into(),
        event_id: admitted.event_id,
        quarantine_id: record.id,
    }))
}

/// Ready when the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "database reachable"), (status = 503, description = "database unavailable")))]
pub(super) async fn readyz(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => Json(json!({"status": "ready", "database": app.store.backend()})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "database": app.store.backend(), "error": e.to_string()})),
        )
            .into_response(),
    }
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process is up")))]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Prometheus metrics (admin only).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 403, body = ErrorBody)))]
pub(super) async fn metrics(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
) -> Response {
    if let Err(e) = scope.require_admin() {
        return e.into_response();
    }
    app.metrics
        .set_projection_waiting(app.store.projection_waiting());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
