//! Where a delivery goes. One [`Destination`] per kind of URL, chosen by the
//! URL's scheme: `http`/`https` (a signed POST), `nats`/`tls` (NATS JetStream),
//! `amqp`/`amqps` (RabbitMQ), `redis`/`rediss` (Redis Streams). A destination
//! takes the bytes to send and their headers (a [`Message`]); what to send is
//! decided before (today the original body, later a rendered template), so a
//! new broker (Kafka) is one more module and one more arm in [`Kind`].
//!
//! Broker connections are pooled per URL ([`Pool`]) and dropped after a
//! failure, so the next attempt reconnects; a broker that is down fails the
//! attempt, and the delivery is retried on the schedule like an HTTP 503.

pub mod amqp;
pub mod http;
pub mod nats;
pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};

use super::address::is_public;
use super::policy::AttemptResult;
use super::subscription::Subscription;
use super::worker::ForwardConfig;

/// The schemes a subscription URL may have, as said to a user.
pub const SCHEMES: &str = "http:// or https:// (a webhook), nats:// or tls:// (NATS JetStream), \
     amqp:// or amqps:// (RabbitMQ) or redis:// or rediss:// (Redis Streams)";

/// The kind of destination a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Nats,
    Amqp,
    Redis,
}

impl Kind {
    pub fn of_scheme(scheme: &str) -> Option<Kind> {
        Some(match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => Kind::Http,
            "nats" | "tls" => Kind::Nats,
            "amqp" | "amqps" => Kind::Amqp,
            "redis" | "rediss" => Kind::Redis,
            _ => return None,
        })
    }

    pub fn of_url(url: &str) -> Option<Kind> {
        Kind::of_scheme(url.split_once("://")?.0)
    }
}

/// One delivery as every destination sends it: the bytes and what goes with them.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The stable delivery id (`webhook-id`, `Nats-Msg-Id`, AMQP `message_id`).
    pub id: &'a str,
    pub topic: &'a str,
    pub source: &'a str,
    /// When the event happened (Thinkific's `created_at`, else when it arrived).
    pub event_time: DateTime<Utc>,
    /// The Standard Webhooks timestamp and signature over `id.timestamp.body`.
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: &'a [u8],
    /// The subscription's own extra headers.
    pub headers: &'a BTreeMap<String, String>,
    /// The request the subscription's template rendered (its body is `body`):
    /// HTTP takes its method, URL, content type and headers; brokers only
    /// the body.
    pub shape: Option<&'a crate::forward::template::Rendered>,
    /// The W3C `traceparent` of this attempt's span, when the delivery was
    /// traced (see `crate::telemetry`).
    pub traceparent: Option<&'a str>,
}

impl Message<'_> {
    /// The headers (HTTP, NATS) or properties (AMQP headers, Redis fields)
    /// every message carries, then the subscription's own.
    pub fn properties(&self) -> Vec<(&str, String)> {
        let mut p = vec![
            (
                "content-type",
                self.shape
                    .map_or("application/json", |r| r.content_type.as_str())
                    .to_owned(),
            ),
            ("webhook-id", self.id.to_owned()),
            ("webhook-timestamp", self.timestamp.to_string()),
            ("webhook-signature", self.signature.to_owned()),
            ("x-enrollhook-topic", self.topic.to_owned()),
            ("x-enrollhook-source", self.source.to_owned()),
            (
                "x-enrollhook-event-time",
                self.event_time.to_rfc3339_opts(SecondsFormat::Secs, true),
            ),
        ];
        if let Some(traceparent) = self.traceparent {
            p.push(("traceparent", traceparent.to_owned()));
        }
        // A template's header replaces the subscription's of the same name
        // (sent twice, a receiver would see both values).
        let templated = |name: &str| {
            self.shape
                .is_some_and(|r| r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)))
        };
        p.extend(
            self.headers
                .iter()
                .filter(|(k, _)| !templated(k))
                .map(|(k, v)| (k.as_str(), v.clone())),
        );
        if let Some(r) = self.shape {
            p.extend(r.headers.iter().map(|(k, v)| (k.as_str(), v.clone())));
        }
        p
    }

    /// A subject, routing key or stream key template with `{source}` and
    /// `{topic}` replaced.
    pub fn render(&self, template: &str) -> String {
        render(template, self.source, self.topic)
    }
}

/// What one send produced, and the first bytes of the answer (or the broker's
/// receipt) to keep with the attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub result: AttemptResult,
    pub response: Option<String>,
}

impl Sent {
    pub fn failed(error: impl Into<String>) -> Sent {
        Sent {
            result: AttemptResult::Failed {
                error: error.into(),
            },
            response: None,
        }
    }

    /// The broker confirmed it holds the message; `receipt` says where.
    pub fn accepted(receipt: String) -> Sent {
        Sent {
            result: AttemptResult::Accepted,
            response: Some(receipt),
        }
    }
}

#[async_trait]
pub trait Destination: Send + Sync {
    /// Sends one message to `to`'s destination. Never panics on the
    /// destination's behaviour: everything that goes wrong is a `Failed`.
    async fn send(&self, to: &Subscription, message: &Message<'_>) -> Sent;
}

/// One destination of each kind, sharing their connections among deliveries.
pub struct Destinations {
    http: http::Http,
    nats: nats::Nats,
    amqp: amqp::Amqp,
    redis: redis::Redis,
}

impl Destinations {
    pub fn new(config: &ForwardConfig) -> anyhow::Result<Destinations> {
        crate::client::install_crypto_provider();
        Ok(Destinations {
            http: http::Http::new(config)?,
            nats: nats::Nats::new(config),
            amqp: amqp::Amqp::new(config),
            redis: redis::Redis::new(config),
        })
    }

    /// The destination for a subscription URL (None: a scheme we do not send to).
    pub fn for_url(&self, url: &str) -> Option<&dyn Destination> {
        Some(match Kind::of_url(url)? {
            Kind::Http => &self.http,
            Kind::Nats => &self.nats,
            Kind::Amqp => &self.amqp,
            Kind::Redis => &self.redis,
        })
    }
}

/// The placeholders a subject, routing key or stream key may hold.
const PLACEHOLDERS: &[&str] = &["{source}", "{topic}"];

pub fn render(template: &str, source: &str, topic: &str) -> String {
    template
        .replace("{source}", source)
        .replace("{topic}", topic)
}

/// Checks that the broker fields fit the URL's kind and are well formed.
/// The message says what was wrong and what to do.
pub fn validate(s: &Subscription) -> Result<(), String> {
    let kind = Kind::of_url(&s.url);
    let fields: [(&str, bool, Kind); 5] = [
        ("subject", s.subject.is_some(), Kind::Nats),
        ("exchange", s.exchange.is_some(), Kind::Amqp),
        ("routing_key", s.routing_key.is_some(), Kind::Amqp),
        ("stream", s.stream.is_some(), Kind::Redis),
        ("maxlen", s.maxlen.is_some(), Kind::Redis),
    ];
    for (name, set, belongs) in fields {
        if set && kind != Some(belongs) {
            let scheme = match belongs {
                Kind::Nats => "nats://",
                Kind::Amqp => "amqp://",
                Kind::Redis => "redis://",
                Kind::Http => "http://",
            };
            return Err(format!(
                "`{name}` applies to {scheme} destinations only: leave it out (or set it to null) for this URL"
            ));
        }
    }
    match kind {
        Some(Kind::Nats) => {
            let subject = s.subject.as_deref().ok_or(
                "a nats:// destination needs a `subject`, e.g. `thinkific.{source}.{topic}`",
            )?;
            check_template("subject", subject, 200)?;
            // A published subject is dot-separated tokens, without wildcards or spaces.
            let sample = render(subject, "default", "enrollment.created");
            if sample
                .split('.')
                .any(|t| t.is_empty() || t == "*" || t == ">")
                || sample.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "`subject` `{subject}` is not a NATS subject to publish to: use dot-separated tokens without spaces, empty tokens or wildcards (`*`, `>`)"
                ));
            }
            reserved_headers(s, &["nats-"], &[])?;
        }
        Some(Kind::Amqp) => {
            let exchange = s.exchange.as_deref().ok_or(
                "an amqp:// destination needs an `exchange` (\"\" for the default exchange, which routes to the queue named by the routing key)",
            )?;
            if exchange.len() > 127 || exchange.chars().any(|c| c.is_control()) {
                return Err(
                    "`exchange` must be at most 127 characters, without control characters".into(),
                );
            }
            if let Some(key) = &s.routing_key {
                check_template("routing_key", key, 200)?;
            }
        }
        Some(Kind::Redis) => {
            let stream = s
                .stream
                .as_deref()
                .ok_or("a redis:// destination needs a `stream` key, e.g. `thinkific:{source}`")?;
            check_template("stream", stream, 512)?;
            if s.maxlen.is_some_and(|n| n < 1) {
                return Err("`maxlen` must be at least 1 (leave it out to never trim)".into());
            }
            reserved_headers(s, &[], &["body"])?;
        }
        Some(Kind::Http) | None => {}
    }
    Ok(())
}

/// A template: not empty, at most `max` bytes, only known placeholders, no control characters.
fn check_template(name: &str, template: &str, max: usize) -> Result<(), String> {
    if template.is_empty() || template.len() > max {
        return Err(format!("`{name}` must be 1 to {max} characters"));
    }
    if template.chars().any(|c| c.is_control()) {
        return Err(format!("`{name}` must not contain control characters"));
    }
    let stripped = PLACEHOLDERS
        .iter()
        .fold(template.to_owned(), |t, p| t.replace(p, ""));
    if stripped.contains(['{', '}']) {
        return Err(format!(
            "`{name}` `{template}` has an unknown placeholder: use {{source}} and {{topic}}"
        ));
    }
    Ok(())
}

fn reserved_headers(s: &Subscription, prefixes: &[&str], names: &[&str]) -> Result<(), String> {
    for name in s.headers.keys() {
        let lower = name.to_ascii_lowercase();
        if prefixes.iter().any(|p| lower.starts_with(p)) || names.contains(&lower.as_str()) {
            return Err(format!(
                "header `{name}` is set by enrollhook for this destination and cannot be overridden"
            ));
        }
    }
    Ok(())
}

/// The URL to connect to: its host resolved, and unless private destinations
/// are allowed, refused when no public address is among the results (SSRF).
/// For plain-text schemes the host is replaced by the checked address, so the
/// client cannot resolve the name again to somewhere else; a TLS scheme keeps
/// the name (the certificate is checked against it).
pub(crate) async fn checked_url(
    raw: &str,
    default_port: u16,
    tls: bool,
    allow_private: bool,
) -> Result<url::Url, String> {
    let mut url = url::Url::parse(raw).map_err(|e| format!("the URL does not parse ({e})"))?;
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let Some(addr) = addrs.iter().find(|a| allow_private || is_public(a.ip())) else {
        return Err(format!(
            "{host} resolves only to private, loopback or link-local addresses (refused; see --allow-private-destinations)"
        ));
    };
    if !tls {
        let ip = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        url.set_host(Some(&ip))
            .map_err(|e| format!("cannot use the address {ip} ({e})"))?;
        url.set_port(Some(port))
            .map_err(|()| "the URL cannot have a port".to_owned())?;
    }
    Ok(url)
}

/// `error` with the URL's password (if any) masked: a client library's error
/// text may quote the URL it was given.
pub(crate) fn scrub(error: String, url: &str) -> String {
    let password = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned));
    match password {
        Some(p) if !p.is_empty() => error.replace(&p, "***"),
        _ => error,
    }
}

/// Broker connections by URL: one per URL, made by the first delivery that
/// needs it (others wait for it rather than connect too), shared by all
/// deliveries, dropped after a failure so that the next one reconnects, and
/// dropped when unused for [`IDLE`] (a URL no subscription names any more).
pub(crate) struct Pool<C> {
    slots: std::sync::Mutex<Slots<C>>,
    generation: AtomicU64,
    idle: Duration,
}

/// How long an unused connection is kept.
const IDLE: Duration = Duration::from_secs(600);

struct Slots<C> {
    by_url: HashMap<String, (Slot<C>, Instant)>,
    swept: Instant,
}

/// A URL's connection (with its generation) once made; locked while connecting.
type Slot<C> = Arc<tokio::sync::Mutex<Option<(u64, C)>>>;

impl<C: Clone> Pool<C> {
    pub fn new() -> Pool<C> {
        Pool::with_idle(IDLE)
    }

    fn with_idle(idle: Duration) -> Pool<C> {
        Pool {
            slots: std::sync::Mutex::new(Slots {
                by_url: HashMap::new(),
                swept: Instant::now(),
            }),
            generation: AtomicU64::new(0),
            idle,
        }
    }

    fn slot(&self, url: &str) -> Slot<C> {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("never poisoned");
        // Now and then, forget connections nobody used for a while; one in
        // use elsewhere lives on in its holders until they are done.
        if now.duration_since(slots.swept) >= self.idle / 10 {
            let idle = self.idle;
            slots
                .by_url
                .retain(|_, (_, used)| now.duration_since(*used) < idle);
            slots.swept = now;
        }
        let (slot, used) = slots
            .by_url
            .entry(url.to_owned())
            .or_insert_with(|| (Slot::default(), now));
        *used = now;
        slot.clone()
    }

    /// The connection for `url` and its generation, connecting when there is none.
    pub async fn get<F, Fut>(&self, url: &str, connect: F) -> Result<(u64, C), String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<C, String>>,
    {
        let slot = self.slot(url);
        let mut held = slot.lock().await;
        if let Some((generation, conn)) = &*held {
            return Ok((*generation, conn.clone()));
        }
        let conn = connect().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *held = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops the connection of `generation` (not a newer one another delivery made).
    pub async fn drop_failed(&self, url: &str, generation: u64) {
        let slot = self.slot(url);
        let mut held = slot.lock().await;
        if held.as_ref().is_some_and(|(g, _)| *g == generation) {
            *held = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(url: &str) -> Subscription {
        crate::forward::SubscriptionInput {
            url: Some("https://example.com/x".into()),
            ..Default::default()
        }
        .create("s".into(), Utc::now(), true)
        .map(|mut s| {
            s.url = url.to_owned();
            s
        })
        .unwrap()
    }

    #[test]
    fn kinds_by_scheme() {
        assert_eq!(Kind::of_url("https://x.example.com/h"), Some(Kind::Http));
        assert_eq!(Kind::of_url("nats://127.0.0.1:4222"), Some(Kind::Nats));
        assert_eq!(Kind::of_url("TLS://n.example.com"), Some(Kind::Nats));
        assert_eq!(
            Kind::of_url("amqps://u:p@mq.example.com/%2f"),
            Some(Kind::Amqp)
        );
        assert_eq!(Kind::of_url("rediss://r.example.com"), Some(Kind::Redis));
        assert_eq!(Kind::of_url("kafka://k.example.com"), None);
        assert_eq!(Kind::of_url("no scheme"), None);
    }

    #[test]
    fn templates_render_and_are_checked() {
        assert_eq!(
            render("thinkific.{source}.{topic}", "acme", "enrollment.created"),
            "thinkific.acme.enrollment.created"
        );
        assert!(check_template("subject", "a.{source}", 200).is_ok());
        let e = check_template("subject", "a.{course}", 200).unwrap_err();
        assert!(e.contains("unknown placeholder"), "{e}");
        assert!(check_template("subject", "a.{source", 200).is_err());
        assert!(check_template("subject", "", 200).is_err());
    }

    #[test]
    fn broker_fields_must_fit_the_url() {
        let mut s = sub("nats://127.0.0.1:4222");
        assert!(validate(&s).unwrap_err().contains("needs a `subject`"));
        s.subject = Some("thinkific.{source}.{topic}".into());
        assert!(validate(&s).is_ok());
        for bad in ["a..b", "a.*", "a.>", "a b", ".a"] {
            s.subject = Some(bad.into());
            assert!(validate(&s).is_err(), "{bad}");
        }
        s.subject = Some("x".into());
        s.headers = [("Nats-Msg-Id".to_owned(), "x".to_owned())].into();
        assert!(validate(&s).unwrap_err().contains("cannot be overridden"));

        let mut s = sub("https://example.com/h");
        s.subject = Some("x".into());
        assert!(
            validate(&s)
                .unwrap_err()
                .contains("nats:// destinations only")
        );

        let mut s = sub("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert!(validate(&s).unwrap_err().contains("needs an `exchange`"));
        s.exchange = Some(String::new());
        assert!(validate(&s).is_ok());
        s.maxlen = Some(5);
        assert!(
            validate(&s)
                .unwrap_err()
                .contains("redis:// destinations only")
        );

        let mut s = sub("redis://127.0.0.1:6379");
        assert!(validate(&s).unwrap_err().contains("needs a `stream`"));
        s.stream = Some("thinkific:{source}".into());
        s.maxlen = Some(0);
        assert!(validate(&s).is_err());
        s.maxlen = Some(1000);
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn scrub_masks_the_password() {
        assert_eq!(
            scrub(
                "ACCESS_REFUSED for guest:s3cret".into(),
                "amqp://guest:s3cret@h/%2f"
            ),
            "ACCESS_REFUSED for guest:***"
        );
        assert_eq!(scrub("x".into(), "redis://h"), "x");
    }

    #[tokio::test]
    async fn the_pool_connects_once_per_url_and_again_after_a_failure() {
        let pool: Pool<u32> = Pool::new();
        let connects = AtomicU64::new(0);
        let connect = || async { Ok(connects.fetch_add(1, Ordering::SeqCst) as u32) };
        let (a, b) = tokio::join!(pool.get("nats://a", connect), pool.get("nats://a", connect));
        assert_eq!(a, b, "waiters share the first connection");
        assert_eq!(connects.load(Ordering::SeqCst), 1);
        let (stale, _) = a.unwrap();
        let (fresh, _) = {
            pool.drop_failed("nats://a", stale).await;
            pool.get("nats://a", connect).await.unwrap()
        };
        assert_ne!(fresh, stale);
        assert_eq!(connects.load(Ordering::SeqCst), 2);
        // A late failure report of the old connection leaves the new one.
        pool.drop_failed("nats://a", stale).await;
        assert_eq!(pool.get("nats://a", connect).await.unwrap().0, fresh);
        let e = pool
            .get("nats://b", || async { Err("refused".to_owned()) })
            .await
            .unwrap_err();
        assert_eq!(e, "refused");
    }

    #[tokio::test]
    async fn the_pool_forgets_unused_urls() {
        let pool: Pool<u32> = Pool::with_idle(Duration::ZERO);
        let connects = AtomicU64::new(0);
        let connect = || async { Ok(connects.fetch_add(1, Ordering::SeqCst) as u32) };
        pool.get("redis://a", connect).await.unwrap();
        pool.get("redis://b", connect).await.unwrap();
        assert_eq!(pool.slots.lock().unwrap().by_url.len(), 1, "a was swept");
        pool.get("redis://a", connect).await.unwrap();
        assert_eq!(connects.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn private_broker_addresses_are_refused_unless_allowed() {
        let e = checked_url("nats://127.0.0.1:4222", 4222, false, false)
            .await
            .unwrap_err();
        assert!(e.contains("--allow-private-destinations"), "{e}");
        let e = checked_url("redis://localhost", 6379, false, false)
            .await
            .unwrap_err();
        assert!(e.contains("private"), "{e}");
        let u = checked_url("amqp://u:p@localhost/%2f", 5672, false, true)
            .await
            .unwrap();
        assert!(
            u.host_str()
                .is_some_and(|h| h == "127.0.0.1" || h == "[::1]"),
            "{u}"
        );
        assert_eq!(u.port(), Some(5672));
        assert_eq!(u.password(), Some("p"));
    }
}
