//! RabbitMQ (AMQP 0-9-1): a persistent, mandatory publish on a channel in
//! confirm mode, with `message_id` = the stable delivery id. Delivered only
//! when the broker confirms the message AND a queue took it: a mandatory
//! message that no queue takes comes back (basic.return) and is a failure,
//! retried like an HTTP 503, since nobody would ever read it.

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::{Destination, Message, Pool, Sent, checked_url, scrub};
use crate::forward::subscription::Subscription;
use crate::forward::worker::ForwardConfig;

/// The connection and one confirm-mode channel on it, shared by deliveries
/// (confirms are matched to publishes by delivery tag).
#[derive(Clone)]
struct Link {
    channel: Channel,
    // Kept so that the connection lives as long as the channel is pooled.
    _connection: std::sync::Arc<Connection>,
}

pub struct Amqp {
    pool: Pool<Link>,
    timeout: Duration,
    allow_private: bool,
}

/// Longest AMQP short string (exchange names, routing keys).
const SHORT_STRING: usize = 255;

impl Amqp {
    pub fn new(config: &ForwardConfig) -> Amqp {
        Amqp {
            pool: Pool::new(),
            timeout: config.timeout,
            allow_private: config.allow_private_destinations,
        }
    }

    async fn connect(&self, raw: &str) -> Result<Link, String> {
        let tls = raw.to_ascii_lowercase().starts_with("amqps://");
        let url = checked_url(raw, if tls { 5671 } else { 5672 }, tls, self.allow_private).await?;
        let properties = ConnectionProperties::default()
            .with_connection_name(concat!("enrollhook/", env!("CARGO_PKG_VERSION")).into());
        let connect = async {
            let connection = Connection::connect(url.as_str(), properties).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(Link {
                channel,
                _connection: std::sync::Arc::new(connection),
            })
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(link)) => Ok(link),
            Ok(Err(e)) => Err(format!("could not connect to RabbitMQ: {e}")),
            Err(_) => Err(format!(
                "could not connect to RabbitMQ: timed out after {:?}",
                self.timeout
            )),
        }
    }
}

#[async_trait]
impl Destination for Amqp {
    async fn send(&self, s: &Subscription, m: &Message<'_>) -> Sent {
        let Some(exchange) = s.exchange.as_deref() else {
            return Sent::failed("the subscription has no `exchange`: set one");
        };
        let routing_key = m.render(s.routing_key.as_deref().unwrap_or("{topic}"));
        if routing_key.len() > SHORT_STRING {
            return Sent::failed(format!(
                "the routing key `{routing_key}` is longer than AMQP's {SHORT_STRING} bytes: shorten `routing_key`"
            ));
        }
        let (generation, link) = match self.pool.get(&s.url, || self.connect(&s.url)).await {
            Ok(c) => c,
            Err(e) => return Sent::failed(scrub(e, &s.url)),
        };
        let mut headers = FieldTable::default();
        for (name, value) in m.properties() {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(m.id))
            .with_delivery_mode(2) // persistent
            .with_content_type(
                m.shape
                    .map_or("application/json", |r| r.content_type.as_str())
                    .into(),
            )
            .with_type(ShortString::from(m.topic))
            .with_app_id("enrollhook".into())
            .with_timestamp(m.event_time.timestamp().max(0) as u64)
            .with_headers(headers);
        let publish = async {
            link.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    m.body,
                    properties,
                )
                .await?
                .await
        };
        let outcome = tokio::time::timeout(self.timeout, publish).await;
        let shown_exchange = if exchange.is_empty() {
            "the default exchange".to_owned()
        } else {
            format!("exchange `{exchange}`")
        };
        match outcome {
            Ok(Ok(Confirmation::Ack(None))) => Sent::accepted(format!(
                "confirmed by the broker: {shown_exchange}, routing key `{routing_key}`"
            )),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Sent::failed(format!(
                "no queue took the message: {shown_exchange} routes routing key `{routing_key}` to no queue ({} {}); bind a queue to it",
                returned.reply_code, returned.reply_text
            )),
            Ok(Ok(Confirmation::Nack(_))) => Sent::failed(format!(
                "the broker refused the message (nack) on {shown_exchange}: check the queue's limits and the broker's log"
            )),
            Ok(Ok(Confirmation::NotRequested)) => {
                self.pool.drop_failed(&s.url, generation).await;
                Sent::failed("the channel was not in confirm mode; reconnecting")
            }
            Ok(Err(e)) => {
                // The broker closes the channel on errors (a missing exchange:
                // 404 NOT_FOUND), so the next attempt needs a new one.
                self.pool.drop_failed(&s.url, generation).await;
                Sent::failed(scrub(
                    format!("publish to {shown_exchange} failed: {e}"),
                    &s.url,
                ))
            }
            Err(_) => {
                self.pool.drop_failed(&s.url, generation).await;
                Sent::failed(format!(
                    "timed out after {:?} waiting for the broker's confirm",
                    self.timeout
                ))
            }
        }
    }
}
