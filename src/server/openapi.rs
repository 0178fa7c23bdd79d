//! The OpenAPI document of the HTTP API, generated from the handlers'
//! annotations. Served at `/openapi.json`; a copy is checked in as
//! `openapi.json` and a test keeps the two identical.

use axum::Json;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{alerts, api, error, learning, stream, subscriptions, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "enrollhook",
        description = "Receive, verify, keep, understand and forward Thinkific webhooks.",
        license(name = "MIT")
    ),
    paths(
        webhooks::receive_default,
        webhooks::receive_named,
        api::list_enrollments,
        api::get_enrollment,
        api::courses,
        api::activity,
        learning::funnel,
        learning::student,
        learning::quizzes,
        api::list_events,
        stream::stream,
        api::get_event,
        api::get_event_raw,
        api::list_reconciliations,
        api::list_milestones,
        api::list_quarantine,
        api::get_quarantine,
        api::retry_quarantine,
        api::healthz,
        api::readyz,
        api::metrics,
        subscriptions::list,
        subscriptions::create,
        subscriptions::show,
        subscriptions::update,
        subscriptions::replace,
        subscriptions::remove,
        subscriptions::rotate_secret,
        subscriptions::test,
        subscriptions::subscription_attempts,
        subscriptions::subscription_deliveries,
        subscriptions::replay_subscription,
        subscriptions::event_attempts,
        subscriptions::event_deliveries,
        subscriptions::replay_event,
        alerts::list,
    ),
    components(schemas(error::ErrorBody, webhooks::DeliveryReply)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON (what `openapi.json` holds).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

pub async fn serve_document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
