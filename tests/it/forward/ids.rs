//! Forwarded `webhook-id`s are unique across sources: a receiver that
//! de-duplicates on them never drops another source's event.

use std::time::Duration;

use crate::common::destination::Destination;
use crate::common::*;
use enrollhook::config::{FileConfig, ServeConfig, Sources};
use enrollhook::forward::ForwardConfig;
use enrollhook::thinkific::{samples, sign};
use serde_json::{Value, json};

#[tokio::test]
async fn webhook_ids_of_two_sources_never_collide() {
    let dest = Destination::start().await;
    let (dir, url) = fresh_db();
    let mut config = ServeConfig::new(url, None);
    let file = FileConfig::parse(
        r#"
        [[source]]
        name = "acme"
        secret = "acme-secret-0123456789"
        [[source]]
        name = "acme_x"
        secret = "acme-x-secret-0123456789"
        "#,
    )
    .unwrap();
    config.sources = Sources::resolve(None, &file);
    config.forward = ForwardConfig {
        allow_private_destinations: true,
        poll_interval: Duration::from_millis(20),
        ..ForwardConfig::default()
    };
    let app = spawn_with(dir, config).await;
    let resp = app
        .client
        .post(format!("{}/api/subscriptions", app.base))
        .json(&json!({"url": dest.url, "topics": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    // `acme` + `x_1` and `acme_x` + `1` used to share `evt_acme_x_1`.
    for (source, secret, id) in [
        ("acme", "acme-secret-0123456789", "x_1"),
        ("acme_x", "acme-x-secret-0123456789", "1"),
    ] {
        let mut v: Value = serde_json::from_str(samples::PROGRESS).unwrap();
        v["id"] = id.into();
        let body = serde_json::to_vec(&v).unwrap();
        let (status, reply) = app
            .deliver_to(
                &format!("/webhooks/thinkific/{source}"),
                &body,
                Some(&sign(secret.as_bytes(), &body)),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
    }

    let received = dest.wait_for(2, Duration::from_secs(10)).await;
    let ids: std::collections::HashSet<String> = received
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "two events, two ids: {ids:?}");
}
