//! NATS JetStream: publish to the subscription's subject and wait for the
//! stream's ack. `Nats-Msg-Id` is the stable id of the delivery (the event's
//! `webhook-id` and the subscription's id), so a republish (a retry after a
//! lost ack, a replay) inside the stream's duplicate window is dropped by the
//! server and acked as a duplicate. The subscription is part of it because
//! JetStream de-duplicates across a whole stream: two subscriptions publishing
//! one event into one stream (on different subjects) must not drop each other.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_trait::async_trait;

use super::{Destination, Message, Pool, Sent, checked_url, scrub};
use crate::forward::subscription::Subscription;
use crate::forward::worker::ForwardConfig;

pub struct Nats {
    pool: Pool<jetstream::Context>,
    timeout: Duration,
    allow_private: bool,
}

impl Nats {
    pub fn new(config: &ForwardConfig) -> Nats {
        Nats {
            pool: Pool::new(),
            timeout: config.timeout,
            allow_private: config.allow_private_destinations,
        }
    }

    async fn connect(&self, raw: &str) -> Result<jetstream::Context, String> {
        let tls = raw.to_ascii_lowercase().starts_with("tls://");
        let url = checked_url(raw, 4222, tls, self.allow_private).await?;
        let mut options = async_nats::ConnectOptions::new()
            .name("enrollhook")
            .connection_timeout(self.timeout)
            // Only the checked address: a server's gossip must not send us elsewhere.
            .ignore_discovered_servers();
        if tls {
            options = options.require_tls(true);
        }
        let client = options
            .connect(url.as_str())
            .await
            .map_err(|e| format!("could not connect to NATS: {e}"))?;
        let mut context = jetstream::new(client);
        context.set_timeout(self.timeout);
        Ok(context)
    }
}

#[async_trait]
impl Destination for Nats {
    async fn send(&self, s: &Subscription, m: &Message<'_>) -> Sent {
        let Some(subject) = s.subject.as_deref().map(|t| m.render(t)) else {
            return Sent::failed("the subscription has no `subject`: set one");
        };
        let (generation, context) = match self.pool.get(&s.url, || self.connect(&s.url)).await {
            Ok(c) => c,
            Err(e) => return Sent::failed(scrub(e, &s.url)),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}:{}", m.id, s.id).as_str());
        for (name, value) in m.properties() {
            headers.insert(name, value.as_str());
        }
        let body = bytes::Bytes::copy_from_slice(m.body);
        let publish = async {
            context
                .publish_with_headers(subject.clone(), headers, body)
                .await?
                .await
        };
        let outcome = tokio::time::timeout(self.timeout, publish).await;
        match outcome {
            Ok(Ok(ack)) => Sent::accepted(format!(
                "stream {} sequence {}{}",
                ack.stream,
                ack.sequence,
                if ack.duplicate {
                    " (a duplicate inside the stream's window: kept once)"
                } else {
                    ""
                }
            )),
            Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound => Sent::failed(format!(
                "no JetStream stream takes subject `{subject}`: create a stream whose subjects include it (nats stream add)"
            )),
            Ok(Err(e)) => {
                self.pool.drop_failed(&s.url, generation).await;
                Sent::failed(scrub(
                    format!("NATS publish to `{subject}` failed: {e}"),
                    &s.url,
                ))
            }
            Err(_) => {
                self.pool.drop_failed(&s.url, generation).await;
                Sent::failed(format!(
                    "timed out after {:?} waiting for the stream's ack for `{subject}`",
                    self.timeout
                ))
            }
        }
    }
}
