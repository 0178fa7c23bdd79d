//! Redis Streams: `XADD key [MAXLEN ~ n] * field value …` with the delivery id
//! in the `webhook-id` field and the body in `body`. Redis does not
//! de-duplicate: a retry after a lost answer, or a replay, adds a second entry
//! with the same `webhook-id`, and consumers de-duplicate on it.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::{Destination, Message, Pool, Sent, checked_url, scrub};
use crate::forward::subscription::Subscription;
use crate::forward::worker::ForwardConfig;

pub struct Redis {
    pool: Pool<MultiplexedConnection>,
    timeout: Duration,
    allow_private: bool,
}

impl Redis {
    pub fn new(config: &ForwardConfig) -> Redis {
        Redis {
            pool: Pool::new(),
            timeout: config.timeout,
            allow_private: config.allow_private_destinations,
        }
    }

    async fn connect(&self, raw: &str) -> Result<MultiplexedConnection, String> {
        let tls = raw.to_ascii_lowercase().starts_with("rediss://");
        let url = checked_url(raw, 6379, tls, self.allow_private).await?;
        let client = redis::Client::open(url.as_str())
            .map_err(|e| format!("the Redis URL is not valid: {e}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("could not connect to Redis: {e}"))
    }
}

#[async_trait]
impl Destination for Redis {
    async fn send(&self, s: &Subscription, m: &Message<'_>) -> Sent {
        let Some(key) = s.stream.as_deref().map(|t| m.render(t)) else {
            return Sent::failed("the subscription has no `stream`: set one");
        };
        let (generation, mut conn) = match self.pool.get(&s.url, || self.connect(&s.url)).await {
            Ok(c) => c,
            Err(e) => return Sent::failed(scrub(e, &s.url)),
        };
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&key);
        if let Some(maxlen) = s.maxlen {
            xadd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        xadd.arg("*");
        for (name, value) in m.properties() {
            xadd.arg(name).arg(value);
        }
        xadd.arg("body").arg(m.body);
        let outcome =
            tokio::time::timeout(self.timeout, xadd.query_async::<String>(&mut conn)).await;
        match outcome {
            Ok(Ok(entry)) => Sent::accepted(format!("stream `{key}` entry {entry}")),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.pool.drop_failed(&s.url, generation).await;
                }
                Sent::failed(scrub(format!("XADD to `{key}` failed: {e}"), &s.url))
            }
            Err(_) => {
                self.pool.drop_failed(&s.url, generation).await;
                Sent::failed(format!(
                    "timed out after {:?} waiting for Redis to add to `{key}`",
                    self.timeout
                ))
            }
        }
    }
}
