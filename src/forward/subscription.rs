//! Subscriptions: where events are forwarded, which ones, and how they are signed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::address::non_public_reason;
use super::destinations::{self, Kind};
use super::filter::Filter;
use super::signing;
use super::template::{Shaper, TemplateSpec};
use crate::thinkific::Topic;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    pub id: String,
    /// Where to: `https://…` (HTTP POST), `nats://…` (NATS JetStream),
    /// `amqp://…` (RabbitMQ) or `redis://…` (Redis Streams). Shown with its
    /// password replaced by `***`.
    pub url: String,
    /// NATS: the subject to publish to; `{source}` and `{topic}` are replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// AMQP: the exchange to publish to (`""` is the default exchange).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// AMQP: the routing key; `{source}` and `{topic}` are replaced. Default `{topic}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Redis: the stream key to `XADD` to; `{source}` and `{topic}` are replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Redis: `XADD … MAXLEN ~ n`, trimming the stream to about n entries. None = never trimmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxlen: Option<i64>,
    /// `*`, `enrollment.*`, or exact topics like `enrollment.completed`.
    pub topics: Vec<String>,
    /// Only events of these courses (events without a course never match). None = any.
    pub course_ids: Option<Vec<i64>>,
    /// Only events of these sources. None = any.
    pub sources: Option<Vec<String>>,
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_secret_until`.
    #[serde(skip)]
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Deliver the events of one enrollment one after the other, in log order.
    pub ordered: bool,
    pub headers: BTreeMap<String, String>,
    /// Only events this filter accepts (see `forward::filter`; README "Filters").
    #[schema(value_type = Option<Object>)]
    pub filter: Option<EventFilter>,
    /// What is sent instead of Thinkific's body (see `forward::template`;
    /// README "Templates and presets"). Checked to compile when set.
    pub template: Option<TemplateSpec>,
    pub description: Option<String>,
    /// Set at the first failure after a success; too old a date disables the subscription.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A subscription's filter: the JSON its owner gave (shown back as given)
/// and the parsed form that is evaluated.
#[derive(Debug, Clone)]
pub struct EventFilter {
    json: serde_json::Value,
    parsed: Filter,
}

impl EventFilter {
    pub fn new(json: serde_json::Value) -> Result<EventFilter, InvalidSubscription> {
        let parsed = Filter::from_value(&json)
            .map_err(|e| InvalidSubscription(format!("`filter` {}: {}", e.at, e.reason)))?;
        Ok(EventFilter { json, parsed })
    }

    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }
}

impl PartialEq for EventFilter {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Serialize for EventFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

/// One event as subscriptions look at it; its body is parsed once, and only
/// if a subscription with a filter gets that far.
pub struct EventToMatch<'a> {
    pub source: &'a str,
    pub topic: &'a str,
    pub course_id: Option<i64>,
    pub body: &'a str,
    parsed: std::cell::OnceCell<serde_json::Value>,
}

impl<'a> EventToMatch<'a> {
    pub fn new(source: &'a str, topic: &'a str, course_id: Option<i64>, body: &'a str) -> Self {
        EventToMatch {
            source,
            topic,
            course_id,
            body,
            parsed: std::cell::OnceCell::new(),
        }
    }

    fn json(&self) -> &serde_json::Value {
        // Stored bodies are valid JSON; a pruned (empty) one is matched as null.
        self.parsed
            .get_or_init(|| serde_json::from_str(self.body).unwrap_or(serde_json::Value::Null))
    }
}

impl Subscription {
    /// Whether this subscription takes the event: its topics, sources and
    /// courses, then its filter.
    pub fn matches(&self, event: &EventToMatch<'_>) -> bool {
        self.topics.iter().any(|p| topic_matches(p, event.topic))
            && !self.is_subject_of_alert(event)
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == event.source))
            && self
                .course_ids
                .as_ref()
                .is_none_or(|ids| event.course_id.is_some_and(|c| ids.contains(&c)))
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.parsed.matches(event.json()))
    }

    /// The secrets that sign a delivery now: the current one, and the previous
    /// one during its grace period.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && until > now
        {
            secrets.push(prev);
        }
        secrets
    }
}

impl Subscription {
    /// Whether `event` is an alert about this very subscription: never
    /// delivered to it, so an alert subscription that fails does not feed on
    /// its own alerts (see `crate::alerts`).
    fn is_subject_of_alert(&self, event: &EventToMatch<'_>) -> bool {
        event.topic.starts_with(ALERT_SUBSCRIPTION_TOPICS)
            && event
                .json()
                .pointer("/payload/subscription/id")
                .and_then(serde_json::Value::as_str)
                == Some(self.id.as_str())
    }

    /// Replaces the signing secret (a new random one when `new` is None); the
    /// old one keeps signing alongside for `grace`, so receivers can switch over.
    pub fn rotate_secret(
        &mut self,
        new: Option<String>,
        grace: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<(), InvalidSubscription> {
        let new = match new {
            Some(secret) => {
                signing::secret_key(&secret).map_err(|e| InvalidSubscription(e.to_string()))?;
                secret
            }
            None => signing::generate_secret(),
        };
        let grace =
            chrono::Duration::from_std(grace.min(std::time::Duration::from_secs(30 * 86_400)))
                .expect("at most 30 days");
        self.previous_secret = Some(std::mem::replace(&mut self.secret, new));
        self.previous_secret_until = Some(now + grace);
        self.updated_at = now;
        Ok(())
    }
}

/// The start of every alert topic (`enrollhook.subscription.failing`, …).
pub const ALERT_TOPIC_PREFIX: &str = "enrollhook.";
/// The start of the alerts about one subscription.
pub const ALERT_SUBSCRIPTION_TOPICS: &str = "enrollhook.subscription.";

/// `*` and `resource.*` match every topic of Thinkific's, but not the
/// backfill's `enrollment.backfill`: a backfill of thousands of enrollments
/// must not flood a CRM that asked for `enrollment.*` with events that are not
/// news. A subscription gets them by naming `enrollment.backfill` exactly.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    if topic == crate::thinkific::BACKFILL_TOPIC {
        return pattern == topic;
    }
    // enrollhook's own alerts go only where they are asked for by name
    // (`enrollhook.*` or exactly): `*` subscribers get Thinkific's events.
    if pattern == "*" && topic.starts_with(ALERT_TOPIC_PREFIX) {
        return false;
    }
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(resource) => topic.split_once('.').is_some_and(|(r, _)| r == resource),
        // Stored topics are canonical; a pattern saved before may not be.
        None => crate::thinkific::canonical_topic(pattern) == topic,
    }
}

/// The fields a client sends to create or change a subscription.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// `https://…`, or a broker: `nats://` / `tls://` (needs `subject`),
    /// `amqp://` / `amqps://` (needs `exchange`), `redis://` / `rediss://`
    /// (needs `stream`). A URL as shown (password `***`) keeps the stored password.
    pub url: Option<String>,
    /// NATS subject; `{source}` and `{topic}` are replaced, e.g. `thinkific.{source}.{topic}`.
    #[serde(default, deserialize_with = "explicit_null")]
    pub subject: Option<Option<String>>,
    /// AMQP exchange (`""`: the default exchange).
    #[serde(default, deserialize_with = "explicit_null")]
    pub exchange: Option<Option<String>>,
    /// AMQP routing key with placeholders; default `{topic}`.
    #[serde(default, deserialize_with = "explicit_null")]
    pub routing_key: Option<Option<String>>,
    /// Redis stream key with placeholders, e.g. `thinkific:{source}`.
    #[serde(default, deserialize_with = "explicit_null")]
    pub stream: Option<Option<String>>,
    /// Redis `XADD … MAXLEN ~ n` (at least 1); absent or null: never trimmed.
    #[serde(default, deserialize_with = "explicit_null")]
    pub maxlen: Option<Option<i64>>,
    pub topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub course_ids: Option<Option<Vec<i64>>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub sources: Option<Option<Vec<String>>>,
    pub secret: Option<String>,
    pub enabled: Option<bool>,
    pub ordered: Option<bool>,
    pub headers: Option<BTreeMap<String, String>>,
    /// A filter over the event (`null` removes it); see the README's "Filters".
    #[serde(default, deserialize_with = "explicit_null")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Option<serde_json::Value>>,
    /// What to send instead of Thinkific's body: a preset and/or templates
    /// (`null` removes it); see the README's "Templates and presets".
    #[serde(default, deserialize_with = "explicit_null")]
    #[schema(value_type = Option<TemplateSpec>)]
    pub template: Option<Option<TemplateSpec>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub description: Option<Option<String>>,
}

/// Tells "absent" (outer None: leave unchanged) from `null` (Some(None): clear).
fn explicit_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSubscription(pub String);

/// A template compiles, sets no header enrollhook sets, and asks of a broker
/// destination only what a broker takes: its body (a message has no method,
/// URL or HTTP headers). A URL without placeholders is checked now like the
/// subscription's; a rendered one is checked at every send.
pub fn check_template(
    t: &TemplateSpec,
    url: &str,
    allow_private: bool,
) -> Result<(), InvalidSubscription> {
    Shaper::new(t)
        .map_err(|e| InvalidSubscription(format!("{e} (fix that part of `template`)")))?;
    let is_http = matches!(Kind::of_url(url), Some(Kind::Http));
    if !is_http && (t.method.is_some() || t.url.is_some() || !t.headers.is_empty()) {
        return Err(InvalidSubscription(
            "`template`: a broker destination takes only the rendered body (preset, body, message, content_type); remove `method`, `url` and `headers`, which apply to http(s) URLs only".into(),
        ));
    }
    if let Some(target) = &t.url
        && !target.contains("{{")
        && !target.contains("{%")
    {
        let scheme_ok =
            reqwest::Url::parse(target).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !scheme_ok {
            return Err(InvalidSubscription(format!(
                "template url `{}` is not an http(s) URL",
                crate::redact::url(target)
            )));
        }
        validate_url(target, allow_private)
            .map_err(|e| InvalidSubscription(format!("template {}", e.0)))?;
    }
    for name in t.headers.keys() {
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("x-enrollhook-")
        {
            return Err(InvalidSubscription(format!(
                "template header `{name}` is set by enrollhook and cannot be overridden (the content type is `template.content_type`)"
            )));
        }
    }
    Ok(())
}

/// Headers a subscription may not set: they carry the signature and framing.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

impl SubscriptionInput {
    /// A new subscription from this input (url and topics required).
    pub fn create(
        self,
        id: String,
        now: DateTime<Utc>,
        allow_private: bool,
    ) -> Result<Subscription, InvalidSubscription> {
        if self.url.is_none() {
            return Err(InvalidSubscription("`url` is required".into()));
        }
        let base = Subscription {
            id,
            // Empty until `apply` validates the given one.
            url: String::new(),
            subject: None,
            exchange: None,
            routing_key: None,
            stream: None,
            maxlen: None,
            topics: vec!["*".into()],
            course_ids: None,
            sources: None,
            secret: String::new(),
            previous_secret: None,
            previous_secret_until: None,
            enabled: true,
            disabled_reason: None,
            ordered: false,
            headers: BTreeMap::new(),
            filter: None,
            template: None,
            description: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        let mut s = self.apply(base, now, allow_private)?;
        if s.secret.is_empty() {
            s.secret = signing::generate_secret();
        }
        Ok(s)
    }

    /// `existing` with the given fields changed, validated.
    pub fn apply(
        self,
        mut s: Subscription,
        now: DateTime<Utc>,
        allow_private: bool,
    ) -> Result<Subscription, InvalidSubscription> {
        if let Some(url) = self.url {
            // A URL as shown (password `***`) sent back unchanged keeps the stored one.
            if url != crate::redact::url(&s.url) || s.url.is_empty() {
                s.url = validate_url(&url, allow_private)?;
            }
        }
        if let Some(subject) = self.subject {
            s.subject = subject;
        }
        if let Some(exchange) = self.exchange {
            s.exchange = exchange;
        }
        if let Some(routing_key) = self.routing_key {
            s.routing_key = routing_key;
        }
        if let Some(stream) = self.stream {
            s.stream = stream;
        }
        if let Some(maxlen) = self.maxlen {
            s.maxlen = maxlen;
        }
        destinations::validate(&s).map_err(InvalidSubscription)?;
        if let Some(topics) = self.topics {
            if topics.is_empty() {
                return Err(InvalidSubscription(
                    "`topics` must not be empty: use [\"*\"] for every topic".into(),
                ));
            }
            for t in &topics {
                validate_topic_pattern(t)?;
            }
            // Stored in the spelling events are stored in (`*.cancelled`).
            s.topics = topics
                .iter()
                .map(|t| crate::thinkific::canonical_topic(t).into_owned())
                .collect();
        }
        if let Some(c) = self.course_ids {
            s.course_ids = c;
        }
        if let Some(sources) = self.sources {
            s.sources = sources;
        }
        if let Some(secret) = self.secret {
            signing::secret_key(&secret).map_err(|e| InvalidSubscription(e.to_string()))?;
            s.secret = secret;
        }
        if let Some(enabled) = self.enabled {
            if enabled && !s.enabled {
                s.disabled_reason = None;
                s.failing_since = None;
            }
            if !enabled && s.enabled {
                s.disabled_reason = Some("disabled by an operator".into());
            }
            s.enabled = enabled;
        }
        if let Some(ordered) = self.ordered {
            s.ordered = ordered;
        }
        if let Some(headers) = self.headers {
            for (name, value) in &headers {
                let lower = name.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
                    return Err(InvalidSubscription(format!(
                        "header `{name}` is set by enrollhook and cannot be overridden"
                    )));
                }
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(value).is_err()
                {
                    return Err(InvalidSubscription(format!(
                        "header `{name}: {value}` is not a valid HTTP header"
                    )));
                }
            }
            s.headers = headers;
        }
        if let Some(filter) = self.filter {
            s.filter = filter.map(EventFilter::new).transpose()?;
        }
        if let Some(template) = self.template {
            s.template = template;
        }
        if let Some(t) = &s.template {
            check_template(t, &s.url, allow_private)?;
        }
        if let Some(d) = self.description {
            s.description = d;
        }
        s.updated_at = now;
        Ok(s)
    }
}

fn validate_topic_pattern(p: &str) -> Result<(), InvalidSubscription> {
    let ok = p == "*"
        || p.strip_suffix(".*")
            .is_some_and(|r| Topic::parse(&format!("{r}.x")).is_some())
        || Topic::parse(p).is_some();
    if ok {
        Ok(())
    } else {
        Err(InvalidSubscription(format!(
            "topic pattern `{p}` is invalid: use `*`, `enrollment.*` or an exact topic like `enrollment.completed`"
        )))
    }
}

pub(crate) fn validate_url(url: &str, allow_private: bool) -> Result<String, InvalidSubscription> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| InvalidSubscription(format!("`url` is not a valid URL ({e})")))?;
    if Kind::of_scheme(parsed.scheme()).is_none() {
        return Err(InvalidSubscription(format!(
            "`url` must be {}",
            destinations::SCHEMES
        )));
    }
    let Some(host) = parsed.host() else {
        return Err(InvalidSubscription("`url` has no host".into()));
    };
    if !allow_private {
        let reason = match host {
            url::Host::Domain(d)
                if d.eq_ignore_ascii_case("localhost")
                    || d.to_ascii_lowercase().ends_with(".localhost") =>
            {
                Some("loopback")
            }
            // Non-special schemes (nats://, amqp://, redis://) leave IPv4 hosts as names.
            url::Host::Domain(d) => d.parse::<IpAddr>().ok().and_then(non_public_reason),
            url::Host::Ipv4(ip) => non_public_reason(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => non_public_reason(IpAddr::V6(ip)),
        };
        if let Some(reason) = reason {
            return Err(InvalidSubscription(format!(
                "`url` points to a non-public address ({host}: {reason}); start the server with --allow-private-destinations to allow that"
            )));
        }
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(url: &str) -> SubscriptionInput {
        SubscriptionInput {
            url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn topic_patterns() {
        // Topics are stored canonical; a pattern in either spelling matches.
        assert!(topic_matches(
            "subscription.canceled",
            "subscription.cancelled"
        ));
        assert!(topic_matches(
            "subscription.cancelled",
            "subscription.cancelled"
        ));
        assert!(topic_matches("*", "order.created"));
        assert!(topic_matches("enrollment.*", "enrollment.progress"));
        assert!(!topic_matches("enrollment.*", "enrollments.progress"));
        assert!(topic_matches(
            "enrollment.completed",
            "enrollment.completed"
        ));
        assert!(!topic_matches("enrollment.completed", "enrollment.created"));
        // The backfill is forwarded only to those who name it.
        assert!(!topic_matches("*", "enrollment.backfill"));
        assert!(!topic_matches("enrollment.*", "enrollment.backfill"));
        assert!(topic_matches("enrollment.backfill", "enrollment.backfill"));
        assert!(validate_topic_pattern("enrollment.*").is_ok());
        assert!(validate_topic_pattern("Enrollment").is_err());
        assert!(validate_topic_pattern("*.created").is_err());
        // Alerts go only to those who ask for them.
        assert!(!topic_matches("*", "enrollhook.subscription.failing"));
        assert!(topic_matches(
            "enrollhook.*",
            "enrollhook.subscription.failing"
        ));
        assert!(topic_matches(
            "enrollhook.signatures.failing",
            "enrollhook.signatures.failing"
        ));
        assert!(validate_topic_pattern("enrollhook.*").is_ok());
        assert!(validate_topic_pattern("enrollhook.source.silent").is_ok());
        assert!(validate_topic_pattern("enrollment.a.b").is_err());
    }

    #[test]
    fn an_alert_about_a_subscription_never_goes_to_it() {
        let mut s = input("https://ops.example.com/hook")
            .create("ops".into(), Utc::now(), false)
            .unwrap();
        s.topics = vec!["enrollhook.*".into()];
        let about = |id: &str| {
            format!(
                r#"{{"id":"a","resource":"enrollhook","action":"subscription.failing","payload":{{"subscription":{{"id":"{id}"}}}}}}"#
            )
        };
        let (own, other) = (about("ops"), about("crm"));
        let topic = "enrollhook.subscription.failing";
        assert!(!s.matches(&EventToMatch::new("enrollhook", topic, None, &own)));
        assert!(s.matches(&EventToMatch::new("enrollhook", topic, None, &other)));
    }

    #[test]
    fn filters() {
        let now = Utc::now();
        let mut s = input("https://crm.example.com/hook")
            .create("s1".into(), now, false)
            .unwrap();
        let ev = |source, topic, course| EventToMatch::new(source, topic, course, "{}");
        assert!(s.matches(&ev("default", "order.created", None)));
        s.topics = vec!["enrollment.*".into()];
        s.course_ids = Some(vec![68]);
        assert!(s.matches(&ev("a", "enrollment.created", Some(68))));
        assert!(!s.matches(&ev("a", "enrollment.created", Some(25))));
        assert!(!s.matches(&ev("a", "enrollment.created", None)));
        assert!(!s.matches(&ev("a", "order.created", Some(68))));
        s.sources = Some(vec!["b".into()]);
        assert!(!s.matches(&ev("a", "enrollment.created", Some(68))));
    }

    #[test]
    fn a_filter_looks_into_the_body() {
        let now = Utc::now();
        let mut i = input("https://crm.example.com/hook");
        i.filter = Some(Some(serde_json::json!({"payload.free_trial": false})));
        let s = i.create("s".into(), now, false).unwrap();
        // The published sample is not a free trial.
        let body = crate::thinkific::samples::CREATED;
        let e = EventToMatch::new("default", "enrollment.created", Some(1), body);
        assert!(s.matches(&e));
        let mut trials_only = s.clone();
        trials_only.filter =
            Some(EventFilter::new(serde_json::json!({"payload.free_trial": true})).unwrap());
        assert!(!trials_only.matches(&e));
        let e = EventToMatch::new("default", "enrollment.created", Some(1), "");
        assert!(!s.matches(&e), "a pruned body has no fields to match");

        let mut i = input("https://crm.example.com/hook");
        i.filter = Some(Some(serde_json::json!({"payload.course.id": {"$in": 68}})));
        let e = i.create("s".into(), now, false).unwrap_err();
        assert!(e.0.contains(r#"$["payload.course.id"]["$in"]"#), "{e}");
        assert!(e.0.contains("array"), "{e}");
    }

    #[test]
    fn validation() {
        let now = Utc::now();
        let created = input("https://crm.example.com/x")
            .create("s".into(), now, false)
            .unwrap();
        assert!(created.secret.starts_with("whsec_"));
        assert!(created.enabled);
        for bad in [
            "ftp://x.example.com",
            "not a url",
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://169.254.169.254/latest",
        ] {
            assert!(input(bad).create("s".into(), now, false).is_err(), "{bad}");
        }
        assert!(
            input("http://127.0.0.1:9/x")
                .create("s".into(), now, true)
                .is_ok()
        );
        // Broker URLs follow the same rule.
        for bad in [
            "nats://127.0.0.1:4222",
            "amqp://guest:guest@10.0.0.5:5672/%2f",
            "redis://localhost:6379",
            "redis://[::1]:6379",
            "kafka://k.example.com:9092",
        ] {
            let mut i = input(bad);
            i.subject = Some(Some("x".into()));
            i.exchange = Some(Some("x".into()));
            i.stream = Some(Some("x".into()));
            let e = i.create("s".into(), now, false).unwrap_err();
            assert!(
                e.0.contains("non-public") || e.0.contains("must be http://"),
                "{bad}: {e}"
            );
        }
        let mut i = input("https://a.example.com");
        i.headers = Some([("Webhook-Signature".to_string(), "x".to_string())].into());
        assert!(i.create("s".into(), now, false).is_err());
        let mut i = input("https://a.example.com");
        i.secret = Some("plain".into());
        assert!(i.create("s".into(), now, false).is_err());
        let mut i = input("https://a.example.com");
        i.topics = Some(vec![]);
        assert!(i.create("s".into(), now, false).is_err());
    }

    #[test]
    fn a_refused_url_names_the_reason() {
        let e = input("http://[64:ff9b::a00:1]/x")
            .create("s".into(), Utc::now(), false)
            .unwrap_err();
        assert!(e.0.contains("NAT64"), "{e}");
    }
}
