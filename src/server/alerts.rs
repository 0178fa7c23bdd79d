//! `GET /api/alerts`: open incidents and recent alerts (see `crate::alerts`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::query;
use super::auth::Scope;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::store::Incident;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/alerts", get(list))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            super::auth::require_auth,
        ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AlertsQuery {
    /// Only this source's alerts (a source's token sees only its own;
    /// `enrollhook` names alerts about subscriptions of every source).
    source: Option<String>,
    /// Recent alerts to list, 1–1000, default 100.
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Alerts {
    /// Incidents not ended yet, newest first.
    open: Vec<Incident>,
    /// The newest incidents, open or ended (with the id of their
    /// `…recovered` event), newest first.
    recent: Vec<Incident>,
}

/// Alerts (`enrollhook.*` events): the incidents open now and the recent
/// ones. The admin token sees all; a source's token its source's only
/// (alerts about a subscription that is not scoped to one source belong to
/// the reserved source `enrollhook`, admin only).
#[utoipa::path(get, path = "/api/alerts", tag = "alerts", params(AlertsQuery),
    responses((status = 200, body = Alerts), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    q: Result<Query<AlertsQuery>, QueryRejection>,
) -> Result<Json<Alerts>, ApiError> {
    let q = query(q)?;
    let source = scope.restrict(q.source)?;
    let limit = q.limit.unwrap_or(crate::store::DEFAULT_PAGE);
    if limit == 0 || limit > crate::store::MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            crate::store::MAX_PAGE
        )));
    }
    let open = app
        .store
        .list_incidents(source.as_deref(), true, crate::store::MAX_PAGE)
        .await?;
    let recent = app
        .store
        .list_incidents(source.as_deref(), false, limit)
        .await?;
    Ok(Json(Alerts { open, recent }))
}
