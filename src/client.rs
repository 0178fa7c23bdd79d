//! The outgoing HTTP client (rustls with ring), shared by forwarding, the
//! Thinkific REST client and the simulator; and [`send_signed`], which signs a
//! body like Thinkific does and POSTs it (`enrollhook send`).

use std::sync::Once;
use std::time::Duration;

use crate::thinkific::{self, SIGNATURE_HEADER, TOPIC_HEADER};

/// rustls needs a process-wide crypto provider; we use ring (small, fast to build).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    install_crypto_provider();
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("enrollhook/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// What the receiver answered.
#[derive(Debug)]
pub struct SendResult {
    pub status: u16,
    pub body: String,
}

/// Signs `body` like Thinkific does and POSTs it to `url`.
pub async fn send_signed(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    body: &[u8],
) -> anyhow::Result<SendResult> {
    let signature = thinkific::sign(secret, body);
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_vec());
    if let Ok(envelope) = thinkific::parse(body, None) {
        request = request.header(TOPIC_HEADER, envelope.topic.to_string());
    }
    let response = request.send().await?;
    Ok(SendResult {
        status: response.status().as_u16(),
        body: response.text().await.unwrap_or_default(),
    })
}
