//! For `bench/forward.py`: makes or removes a benchmark's place in a local
//! broker on its default port, and counts what it holds.
//!
//! `broker_place create|remove|count nats|amqp|redis NAME`
//! - nats: a JetStream stream NAME taking `NAME.>` (at most 1,000,000 messages);
//! - amqp: a topic exchange NAME and a durable queue NAME bound with `#`
//!   (at most 1,000,000 messages);
//! - redis: the stream keys `NAME:0` and `NAME:1` (created by XADD; removed here).
//!
//! `broker_place ceiling amqp NAME [MESSAGES] [CHANNELS]` publishes MESSAGES
//! (default 100,000) persistent, mandatory messages of ~600 bytes to the exchange
//! NAME on CHANNELS confirm-mode channels (default 1), at most 256 in flight
//! as the forwarder does, and prints messages per second: what RabbitMQ itself
//! takes on this machine with the same library, beside which the forwarder's
//! rate means something.

use async_nats::jetstream;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [action, kind, name, rest @ ..] = args.as_slice()
        && action == "ceiling"
        && kind == "amqp"
    {
        let messages = rest.first().map_or(Ok(100_000), |n| n.parse())?;
        let channels = rest.get(1).map_or(Ok(1), |n| n.parse())?;
        return amqp_ceiling(name, messages, channels).await;
    }
    let [action, kind, name] = args.as_slice() else {
        anyhow::bail!("usage: broker_place create|remove|count nats|amqp|redis NAME");
    };
    match (kind.as_str(), action.as_str()) {
        ("nats", action) => {
            let js = jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
            match action {
                "create" => {
                    js.create_stream(jetstream::stream::Config {
                        name: name.clone(),
                        subjects: vec![format!("{name}.>")],
                        max_messages: 1_000_000,
                        ..Default::default()
                    })
                    .await?;
                }
                "remove" => {
                    js.delete_stream(name).await?;
                }
                _ => println!(
                    "{}",
                    js.get_stream(name).await?.info().await?.state.messages
                ),
            }
        }
        ("amqp", action) => {
            let conn = Connection::connect(
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                ConnectionProperties::default(),
            )
            .await?;
            let ch = conn.create_channel().await?;
            let n = name.as_str();
            match action {
                "create" => {
                    ch.exchange_declare(
                        n.into(),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                    let mut limit = FieldTable::default();
                    limit.insert("x-max-length".into(), AMQPValue::LongInt(1_000_000));
                    ch.queue_declare(
                        n.into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        limit,
                    )
                    .await?;
                    ch.queue_bind(
                        n.into(),
                        n.into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                }
                "remove" => {
                    ch.queue_delete(n.into(), QueueDeleteOptions::default())
                        .await?;
                    ch.exchange_delete(n.into(), ExchangeDeleteOptions::default())
                        .await?;
                }
                _ => {
                    let q = ch
                        .queue_declare(
                            n.into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                    println!("{}", q.message_count());
                }
            }
        }
        ("redis", action) => {
            let mut conn = redis::Client::open("redis://127.0.0.1:6379")?
                .get_multiplexed_async_connection()
                .await?;
            let keys = [format!("{name}:0"), format!("{name}:1")];
            match action {
                "create" => {}
                "remove" => {
                    redis::cmd("DEL")
                        .arg(&keys)
                        .query_async::<i64>(&mut conn)
                        .await?;
                }
                _ => {
                    let mut total = 0;
                    for key in &keys {
                        total += redis::cmd("XLEN")
                            .arg(key)
                            .query_async::<i64>(&mut conn)
                            .await?;
                    }
                    println!("{total}");
                }
            }
        }
        _ => anyhow::bail!("unknown broker `{kind}`: use nats, amqp or redis"),
    }
    Ok(())
}

async fn amqp_ceiling(exchange: &str, messages: usize, channels: usize) -> anyhow::Result<()> {
    use futures::StreamExt;
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

    let conn = Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await?;
    let mut chans = Vec::new();
    for _ in 0..channels.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        chans.push(ch);
    }
    let body = vec![b'x'; 600];
    let started = std::time::Instant::now();
    let confirmed = futures::stream::iter(0..messages)
        .map(|i| {
            let (ch, body) = (&chans[i % chans.len()], &body);
            async move {
                let properties = BasicProperties::default()
                    .with_message_id(format!("ceiling-{i}").into())
                    .with_delivery_mode(2);
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                ch.basic_publish(exchange.into(), "ceiling".into(), options, body, properties)
                    .await?
                    .await
            }
        })
        .buffer_unordered(256)
        .filter(|r| std::future::ready(matches!(r, Ok(lapin::Confirmation::Ack(None)))))
        .count()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"messages\": {messages}, \"confirmed\": {confirmed}, \"channels\": {channels}, \"seconds\": {seconds:.2}, \"per_s\": {:.0}}}",
        confirmed as f64 / seconds
    );
    Ok(())
}
