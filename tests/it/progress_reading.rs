//! A numeric `percentage_completed` in a webhook (issue #16): read on the
//! webhook's percent scale, never a reason to refuse the delivery, and the
//! reading shown with the event.

use serde_json::{Value, json};

use crate::common::backend::{TestDatabase, on_both_backends};

on_both_backends!(a_numeric_percentage_in_a_webhook_is_percent);

fn progress(id: &str, pct: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "resource": "enrollment", "action": "progress",
        "created_at": "2024-05-01T12:00:00Z",
        "payload": {"id": 31, "course": {"id": 5, "name": "C"}, "percentage_completed": pct,
                    "user": {"id": 8, "email": "s@example.com"},
                    "updated_at": format!("2024-05-01T12:00:0{}Z", id.len() % 10)}
    }))
    .unwrap()
}

async fn a_numeric_percentage_in_a_webhook_is_percent(db: TestDatabase) {
    let app = db.serve(|_| {}).await;
    // 24 was read as a fraction (2400 %) and the delivery refused.
    let (code, reply) = app.deliver(&progress("1", json!(24))).await;
    assert_eq!(
        (code, reply["status"].as_str()),
        (200, Some("stored")),
        "{reply}"
    );
    let (_, e) = app.get("/api/enrollments/default/31").await;
    assert_eq!(e["enrollment"]["progress"], 24.0, "{e}");
    let (_, view) = app.get("/api/events/default/1").await;
    assert_eq!(view["progress_reading"], "percent_number", "{view}");

    // A value no reading fits is stored, not projected, and says so.
    let (code, reply) = app.deliver(&progress("22", json!(250))).await;
    assert_eq!(
        (code, reply["status"].as_str()),
        (200, Some("stored")),
        "{reply}"
    );
    let (_, view) = app.get("/api/events/default/22").await;
    assert_eq!(view["progress_reading"], "ignored", "{view}");
    let (_, e) = app.get("/api/enrollments/default/31").await;
    assert_eq!(
        e["enrollment"]["progress"], 24.0,
        "the unreadable value leaves progress as it was: {e}"
    );

    // The documented string.
    let (code, _) = app.deliver(&progress("333", json!("40.0"))).await;
    assert_eq!(code, 200);
    let (_, view) = app.get("/api/events/default/333").await;
    assert_eq!(view["progress_reading"], "percent_text", "{view}");
    let (_, e) = app.get("/api/enrollments/default/31").await;
    assert_eq!(e["enrollment"]["progress"], 40.0, "{e}");
}
