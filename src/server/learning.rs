//! The learning API: a course's lesson funnel, a student's page and quiz
//! statistics (stalled students are `GET /api/enrollments?stalled_days=`, in
//! `api.rs`). Per-school tokens see only their school, as everywhere.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::query;
use super::auth::Scope;
use super::error::ErrorBody;
use super::export::{self, Format, columns};
use super::{ApiError, AppState};
use crate::store::{Funnel, QuizStats, Stalled};
use crate::views::{StudentView, student_view};

/// Days without activity after which a student counts as stalled, by default.
pub const DEFAULT_STALLED_DAYS: u32 = 14;
/// The longest `stalled_days` accepted: ten years.
pub const MAX_STALLED_DAYS: u32 = 3660;
/// Events in a student's timeline at most (the newest).
pub const STUDENT_EVENTS: i64 = 500;

/// `stalled_days` checked: 1–3660, default 14.
pub fn stalled_days(days: Option<u32>) -> Result<u32, ApiError> {
    let days = days.unwrap_or(DEFAULT_STALLED_DAYS);
    if !(1..=MAX_STALLED_DAYS).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "stalled_days must be between 1 and {MAX_STALLED_DAYS} (days without activity), got {days}"
        )));
    }
    Ok(days)
}

pub(super) fn int_path(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{name} must be an integer, got `{value}`")))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FunnelQuery {
    /// Days without activity after which a student counts as stalled: 1–3660, default 14.
    stalled_days: Option<u32>,
}

/// A course's lesson funnel.
#[derive(Serialize, ToSchema)]
pub struct FunnelView {
    pub stalled_days: u32,
    #[serde(flatten)]
    pub funnel: Funnel,
}

/// Every lesson seen in a course, in course order (chapter, then position;
/// lessons whose place no payload gave after them, most completed first), with
/// how many students completed it and how many stalled students (enrolled,
/// not completed, not expired, no activity for `stalled_days`) it is the most
/// recent lesson of.
#[utoipa::path(get, path = "/api/courses/{source}/{course_id}/funnel", tag = "learning",
    params(("source" = String, Path), ("course_id" = String, Path, description = "Thinkific course id (integer)"), FunnelQuery),
    responses((status = 200, body = FunnelView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn funnel(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path((source, course_id)): Path<(String, String)>,
    q: Result<Query<FunnelQuery>, QueryRejection>,
) -> Result<Json<FunnelView>, ApiError> {
    let q = query(q)?;
    scope.check(&source)?;
    let course_id = int_path("course id", &course_id)?;
    let days = stalled_days(q.stalled_days)?;
    let Some(funnel) = app
        .store
        .course_funnel(&source, course_id, &Stalled::days(days, Utc::now()))
        .await?
    else {
        return Err(ApiError::not_found(format!(
            "nothing is known of course {course_id} from source `{source}`: no enrollment or lesson event named it"
        )));
    };
    Ok(Json(FunnelView {
        stalled_days: days,
        funnel,
    }))
}

/// One student: enrollments with progress and lessons, quiz results, and a
/// timeline of the events about them.
#[utoipa::path(get, path = "/api/students/{source}/{user_id}", tag = "learning",
    params(("source" = String, Path), ("user_id" = String, Path, description = "Thinkific user id (integer)")),
    responses((status = 200, body = StudentView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn student(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path((source, user_id)): Path<(String, String)>,
) -> Result<Json<StudentView>, ApiError> {
    scope.check(&source)?;
    let user_id = int_path("user id", &user_id)?;
    let record = app.store.student(&source, user_id, STUDENT_EVENTS).await?;
    if record.enrollments.is_empty()
        && record.courses.is_empty()
        && record.quizzes.is_empty()
        && record.events.is_empty()
    {
        return Err(ApiError::not_found(format!(
            "no event from source `{source}` names user {user_id}"
        )));
    }
    Ok(Json(student_view(source, user_id, record, Utc::now())))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct QuizQuery {
    source: Option<String>,
    /// Only quizzes whose payloads named this course (Thinkific's name none).
    course_id: Option<i64>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    format: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct QuizList {
    pub items: Vec<QuizStats>,
}

/// Per quiz: students who attempted it, attempts, average and median best grade.
#[utoipa::path(get, path = "/api/quizzes", tag = "learning", params(QuizQuery),
    responses((status = 200, content((QuizList = "application/json"), (String = "text/csv"))), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn quizzes(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    q: Result<Query<QuizQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = export::format(q.format.as_deref(), &headers)?;
    let source = scope.restrict(q.source)?;
    let items = app.store.quiz_stats(source.as_deref(), q.course_id).await?;
    Ok(match format {
        Format::Csv => export::table("quizzes", columns::QUIZZES, &items),
        Format::Json => Json(QuizList { items }).into_response(),
    })
}
