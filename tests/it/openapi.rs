//! The OpenAPI document is generated from the code; the checked-in copy must
//! match it (regenerate with `cargo run -- openapi > openapi.json`).

use crate::common;

use common::*;

#[tokio::test]
async fn the_checked_in_document_is_current_and_served() {
    let generated = enrollhook::server::openapi::document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in.trim_end() == generated.trim_end(),
        "openapi.json is out of date: run `cargo run -- openapi > openapi.json` and commit it"
    );
    let app = spawn_app().await;
    let (status, served) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        serde_json::from_str::<serde_json::Value>(&generated).unwrap()
    );
    // Every route a user can call is documented.
    for path in [
        "/webhooks/thinkific",
        "/api/enrollments",
        "/api/courses",
        "/api/subscriptions/{id}/replay",
        "/api/quarantine/{id}/retry",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} missing");
    }
}
