//! Alerts: enrollhook tells someone when it breaks, with events of its own
//! (`enrollhook.*`) stored in the log like any other, so they are forwarded,
//! retried, replayable and listed like any other.
//!
//! Each alert belongs to an *incident* (a kind, a subject, a start): one alert
//! when it begins, one `…recovered` when it ends. The envelope id of each
//! event is derived from (kind, subject, incident start), so a second
//! instance, or a second look at the same incident, appends a duplicate,
//! which the log ignores; the store's table of open incidents (unique per
//! kind and subject while open) is what makes "once" hold when two instances
//! disagree on a start. This module holds the pure part (settings, bodies,
//! ids, the signature rule); [`raise`] the use cases and the periodic checks.

pub mod raise;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::forward::subscription::Subscription;
use crate::store::{Incident, NewEvent};
use crate::thinkific::envelope::OWN_RESOURCE;

/// The source of alerts that concern no single source (a subscription of
/// every source): only the admin token sees them.
pub const OWN_SOURCE: &str = "enrollhook";

pub const SUBSCRIPTION_FAILING: &str = "subscription.failing";
pub const SUBSCRIPTION_DISABLED: &str = "subscription.disabled";
pub const SUBSCRIPTION_RECOVERED: &str = "subscription.recovered";
pub const SUBSCRIPTION_EXHAUSTED: &str = "subscription.exhausted";
pub const SIGNATURES_FAILING: &str = "signatures.failing";
pub const SIGNATURES_RECOVERED: &str = "signatures.recovered";
pub const SOURCE_SILENT: &str = "source.silent";
pub const SOURCE_RECOVERED: &str = "source.recovered";

/// Where the periodic checks read the time (tests move it).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Utc::now))
    }
    pub fn new(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// When alerts are raised (`[alerts]` in `enrollhook.toml`).
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Failed attempts in a row after which a subscription is `failing`.
    pub failing_after: u32,
    /// More than this many rejected signatures of one source within
    /// `signature_window` make `signatures.failing`.
    pub signature_failures: u32,
    pub signature_window: Duration,
    /// Per source: no delivery for this long makes `source.silent` (off
    /// for sources not listed).
    pub silent_after: BTreeMap<String, Duration>,
    /// How often the periodic checks (signatures, silence) run.
    pub check_every: Duration,
    pub clock: Clock,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            failing_after: 5,
            signature_failures: 20,
            signature_window: Duration::from_secs(5 * 60),
            silent_after: BTreeMap::new(),
            check_every: Duration::from_secs(60),
            clock: Clock::system(),
        }
    }
}

/// An alert to raise: the event's topic is `enrollhook.{kind}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: &'static str,
    /// What it is about: a subscription id, a source name.
    pub subject: String,
    pub source: String,
    /// When the incident began (part of the id).
    pub started_at: DateTime<Utc>,
    pub summary: String,
    /// The whole payload (summary, what to do and the facts).
    pub payload: Value,
}

impl Alert {
    /// The envelope id: the same for the same incident, whoever raises it.
    pub fn id(&self) -> String {
        alert_id(self.kind, &self.subject, self.started_at)
    }

    pub fn topic(&self) -> String {
        format!("{OWN_RESOURCE}.{}", self.kind)
    }

    /// The event to append to the log: an envelope like Thinkific's, so it
    /// is read back, listed, filtered and templated like one.
    pub fn event(&self, now: DateTime<Utc>) -> NewEvent {
        let (resource, action) = self.topic().split_once('.').map_or_else(
            || unreachable!("topics have a dot"),
            |(r, a)| (r.to_owned(), a.to_owned()),
        );
        let body = json!({
            "id": self.id(),
            "resource": resource,
            "action": action,
            "created_at": iso(now),
            "payload": self.payload,
        });
        NewEvent {
            source: self.source.clone(),
            event_id: self.id(),
            topic: self.topic(),
            created_at: Some(now),
            received_at: now,
            body: body.to_string(),
            enrollment: None,
            learning: None,
            user_id: None,
            course_id: None,
            traceparent: None,
        }
    }

    /// The incident row this alert opens (closed at once for point alerts).
    pub fn incident(&self, now: DateTime<Utc>, point: bool) -> Incident {
        Incident {
            id: 0,
            kind: self.kind.to_owned(),
            subject: self.subject.clone(),
            source: self.source.clone(),
            started_at: self.started_at,
            opened_at: now,
            alert_id: self.id(),
            summary: self.summary.clone(),
            detail: self.payload.clone(),
            closed_at: point.then_some(now),
            recovered_id: None,
        }
    }
}

/// `alert_` and 24 hex digits of SHA-256 over (kind, subject, start).
pub fn alert_id(kind: &str, subject: &str, started_at: DateTime<Utc>) -> String {
    let mut h = Sha256::new();
    for part in [kind, subject, &iso_ms(started_at)] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("alert_{}", &hex::encode(h.finalize())[..24])
}

pub(crate) fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Ids are derived at millisecond precision: what both databases keep.
fn iso_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The source a subscription's alerts belong to: its one source when it is
/// scoped to exactly one, else [`OWN_SOURCE`] (admin only).
pub fn subscription_source(s: &Subscription) -> String {
    match s.sources.as_deref() {
        Some([one]) => one.clone(),
        _ => OWN_SOURCE.to_owned(),
    }
}

/// What an alert may show of a destination: scheme and host only. Slack,
/// Discord and Teams webhook URLs carry their secret in the path.
pub fn destination(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "***".to_owned(),
    }
}

/// Text from outside (an error, a receiver's answer) as an alert shows it:
/// URLs cut to their host, at most `max` characters.
pub fn scrub(text: &str, max: usize) -> String {
    let words: Vec<String> = text
        .split(' ')
        .map(|w| match w.find("://") {
            Some(at) => {
                let start = w[..at]
                    .rfind(|c: char| !c.is_ascii_alphanumeric() && c != '+' && c != '-')
                    .map_or(0, |i| i + 1);
                format!("{}{}", &w[..start], destination(&w[start..]))
            }
            None => w.to_owned(),
        })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

fn subscription_json(s: &Subscription) -> Value {
    json!({
        "id": s.id,
        "description": s.description,
        "destination": destination(&s.url),
        "topics": s.topics,
    })
}

fn name(s: &Subscription) -> String {
    match &s.description {
        Some(d) if !d.is_empty() => format!("`{}` ({})", s.id, scrub(d, 80)),
        _ => format!("`{}`", s.id),
    }
}

/// The last failed attempt, as an alert shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastFailure {
    pub at: Option<DateTime<Utc>>,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub response: Option<String>,
}

impl LastFailure {
    fn describe(&self) -> String {
        let mut text = match self.status {
            Some(status) => format!("the endpoint answered {status}"),
            None => "no answer".to_owned(),
        };
        if let Some(e) = &self.error {
            text.push_str(&format!(": {}", scrub(e, 300)));
        }
        if let Some(r) = self.response.as_deref().filter(|r| !r.trim().is_empty()) {
            text.push_str(&format!(" (response: {})", scrub(r.trim(), 200)));
        }
        text
    }

    fn json(&self) -> Value {
        json!({
            "at": self.at.map(iso),
            "status": self.status,
            "error": self.error.as_deref().map(|e| scrub(e, 300)),
            "response": self.response.as_deref().map(|r| scrub(r, 200)),
        })
    }
}

pub fn subscription_failing(
    s: &Subscription,
    since: DateTime<Utc>,
    failures: u32,
    last: &LastFailure,
) -> Alert {
    let summary = format!(
        "Subscription {} is failing: {failures} deliveries in a row failed since {}; last: {}.",
        name(s),
        iso(since),
        last.describe()
    );
    let what = format!(
        "Check that {} is up and accepts the deliveries; see GET /api/subscriptions/{}/attempts. \
         Deliveries are retried; the subscription is disabled if it keeps failing.",
        destination(&s.url),
        s.id
    );
    Alert {
        kind: SUBSCRIPTION_FAILING,
        subject: s.id.clone(),
        source: subscription_source(s),
        started_at: since,
        payload: json!({
            "kind": SUBSCRIPTION_FAILING,
            "summary": summary,
            "what_to_do": what,
            "since": iso(since),
            "consecutive_failures": failures,
            "subscription": subscription_json(s),
            "last_failure": last.json(),
        }),
        summary,
    }
}

pub fn subscription_disabled(
    s: &Subscription,
    started_at: DateTime<Utc>,
    last: &LastFailure,
) -> Alert {
    let reason = s
        .disabled_reason
        .clone()
        .unwrap_or_else(|| "disabled".to_owned());
    let summary = format!(
        "Subscription {} was disabled: {}; last: {}.",
        name(s),
        scrub(&reason, 200),
        last.describe()
    );
    let what = format!(
        "Fix {} then resume it (PATCH /api/subscriptions/{} with {{\"enabled\": true}}) and \
         replay what it missed (POST /api/subscriptions/{}/replay).",
        destination(&s.url),
        s.id,
        s.id
    );
    Alert {
        kind: SUBSCRIPTION_DISABLED,
        subject: s.id.clone(),
        source: subscription_source(s),
        started_at,
        payload: json!({
            "kind": SUBSCRIPTION_DISABLED,
            "summary": summary,
            "what_to_do": what,
            "since": iso(started_at),
            "reason": scrub(&reason, 200),
            "subscription": subscription_json(s),
            "last_failure": last.json(),
        }),
        summary,
    }
}

/// The end of a subscription's incidents (`ended`: the failing and
/// disabled incidents it closes, oldest first; their start is its id's).
pub fn subscription_recovered(
    s: &Subscription,
    ended: &[Incident],
    at: DateTime<Utc>,
) -> Option<Alert> {
    let first = ended.iter().min_by_key(|i| i.started_at)?;
    let summary = format!(
        "Subscription {} delivers again (failing since {}, recovered at {}).",
        name(s),
        iso(first.started_at),
        iso(at)
    );
    Some(Alert {
        kind: SUBSCRIPTION_RECOVERED,
        subject: s.id.clone(),
        source: subscription_source(s),
        started_at: first.started_at,
        payload: json!({
            "kind": SUBSCRIPTION_RECOVERED,
            "summary": summary,
            "what_to_do": "Nothing. Deliveries that went dead meanwhile can be replayed (POST /api/subscriptions/{id}/replay).",
            "since": iso(first.started_at),
            "recovered_at": iso(at),
            "ended": ended.iter().map(|i| json!({"kind": i.kind, "alert_id": i.alert_id})).collect::<Vec<_>>(),
            "subscription": subscription_json(s),
        }),
        summary,
    })
}

/// A delivery that ran out of attempts (or was refused with 410).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadDelivery {
    pub outbox_id: i64,
    pub source: String,
    pub event_id: String,
    pub topic: String,
    pub attempts: u32,
    pub at: DateTime<Utc>,
    pub reason: String,
}

pub fn subscription_exhausted(s: &Subscription, d: &DeadDelivery, last: &LastFailure) -> Alert {
    let summary = format!(
        "A delivery to subscription {} went dead after {} attempts: event `{}` ({}) of source \
         `{}`; {}; last: {}.",
        name(s),
        d.attempts,
        scrub(&d.event_id, 80),
        d.topic,
        d.source,
        scrub(&d.reason, 200),
        last.describe()
    );
    let what = format!(
        "Fix {} then replay the dead deliveries (POST /api/subscriptions/{}/replay with \
         {{\"dead\": true}}).",
        destination(&s.url),
        s.id
    );
    Alert {
        kind: SUBSCRIPTION_EXHAUSTED,
        // One incident per dead delivery (and per time it died).
        subject: format!("{}/{}", s.id, d.outbox_id),
        source: d.source.clone(),
        started_at: d.at,
        payload: json!({
            "kind": SUBSCRIPTION_EXHAUSTED,
            "summary": summary,
            "what_to_do": what,
            "since": iso(d.at),
            "subscription": subscription_json(s),
            "delivery": {
                "outbox_id": d.outbox_id,
                "source": d.source,
                "event_id": d.event_id,
                "topic": d.topic,
                "attempts": d.attempts,
                "reason": scrub(&d.reason, 200),
            },
            "last_failure": last.json(),
        }),
        summary,
    }
}

/// One rejected delivery as `signatures.failing` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub quarantine_id: i64,
    pub received_at: DateTime<Utc>,
    pub reason_code: String,
    pub reason: String,
}

/// Whether a quarantine reason is a rejected signature.
pub fn is_signature_rejection(reason_code: &str) -> bool {
    matches!(
        reason_code,
        "signature_missing" | "signature_malformed" | "signature_mismatch"
    )
}

/// What the signature check decides for one source, given the rejections
/// of the last window (newest first) and whether an incident is open.
#[derive(Debug, Clone, PartialEq)]
pub enum SignatureVerdict {
    Raise(Alert),
    Recover,
    Nothing,
}

/// More than `threshold` rejections in the window raise; an open incident
/// recovers once the window holds at most half the threshold (so a rate
/// hovering at the threshold does not flap).
pub fn signature_verdict(
    source: &str,
    window: Duration,
    threshold: u32,
    recent: &[Rejection],
    open: bool,
) -> SignatureVerdict {
    let count = recent.len();
    if !open && count > threshold as usize {
        let since = recent
            .iter()
            .map(|r| r.received_at)
            .min()
            .expect("non-empty");
        let minutes = window.as_secs().div_ceil(60);
        let summary = format!(
            "Source `{source}`: {count} deliveries with a wrong or missing signature in the last \
             {minutes} min (since {}): usually a wrong or rotated API key.",
            iso(since)
        );
        let what = format!(
            "Check the API key of source `{source}` (its `secret` in enrollhook.toml) against the \
             school's Thinkific API key; after fixing it, re-admit the quarantined deliveries \
             with `enrollhook quarantine retry`."
        );
        let newest: Vec<Value> = recent
            .iter()
            .take(5)
            .map(|r| {
                json!({
                    "quarantine_id": r.quarantine_id,
                    "received_at": iso(r.received_at),
                    "reason_code": r.reason_code,
                    "reason": scrub(&r.reason, 200),
                })
            })
            .collect();
        return SignatureVerdict::Raise(Alert {
            kind: SIGNATURES_FAILING,
            subject: source.to_owned(),
            source: source.to_owned(),
            started_at: since,
            payload: json!({
                "kind": SIGNATURES_FAILING,
                "summary": summary,
                "what_to_do": what,
                "since": iso(since),
                "source": source,
                "rejected": count,
                "window_minutes": minutes,
                "threshold": threshold,
                "newest": newest,
            }),
            summary,
        });
    }
    if open && count <= threshold as usize / 2 {
        return SignatureVerdict::Recover;
    }
    SignatureVerdict::Nothing
}

pub fn source_silent(
    source: &str,
    last_delivery: Option<DateTime<Utc>>,
    silent_after: Duration,
    since: DateTime<Utc>,
) -> Alert {
    let hours = silent_after.as_secs_f64() / 3600.0;
    let summary = match last_delivery {
        Some(t) => format!(
            "Source `{source}` is silent: no delivery for more than {hours} h (the last one \
             arrived {}).",
            iso(t)
        ),
        None => format!("Source `{source}` is silent: no delivery for more than {hours} h."),
    };
    let what = format!(
        "Check that the school's webhooks still point at this server (`enrollhook thinkific \
         webhooks` for source `{source}`) and that Thinkific shows no failing deliveries."
    );
    Alert {
        kind: SOURCE_SILENT,
        subject: source.to_owned(),
        source: source.to_owned(),
        started_at: since,
        payload: json!({
            "kind": SOURCE_SILENT,
            "summary": summary,
            "what_to_do": what,
            "since": iso(since),
            "source": source,
            "last_delivery": last_delivery.map(iso),
            "silent_after_hours": hours,
        }),
        summary,
    }
}

/// The recovery of a source-level incident (`signatures.failing`,
/// `source.silent`): same subject and start, so one per incident.
pub fn source_recovered(incident: &Incident, at: DateTime<Utc>, what: &str) -> Alert {
    let (kind, summary) = match incident.kind.as_str() {
        SIGNATURES_FAILING => (
            SIGNATURES_RECOVERED,
            format!(
                "Source `{}`: signatures verify again (rejections since {} ended by {}).",
                incident.subject,
                iso(incident.started_at),
                iso(at)
            ),
        ),
        _ => (
            SOURCE_RECOVERED,
            format!(
                "Source `{}` delivers again (silent since {}).",
                incident.subject,
                iso(incident.started_at)
            ),
        ),
    };
    Alert {
        kind,
        subject: incident.subject.clone(),
        source: incident.source.clone(),
        started_at: incident.started_at,
        payload: json!({
            "kind": kind,
            "summary": summary,
            "what_to_do": what,
            "since": iso(incident.started_at),
            "recovered_at": iso(at),
            "source": incident.subject,
            "ended": [{"kind": incident.kind, "alert_id": incident.alert_id}],
        }),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap()
    }

    fn rejection(id: i64, minute: u32) -> Rejection {
        Rejection {
            quarantine_id: id,
            received_at: t(minute),
            reason_code: "signature_mismatch".into(),
            reason: "signature mismatch".into(),
        }
    }

    #[test]
    fn ids_depend_on_kind_subject_and_start_only() {
        let a = alert_id("subscription.failing", "sub_1", t(1));
        assert_eq!(a, alert_id("subscription.failing", "sub_1", t(1)));
        assert_ne!(a, alert_id("subscription.failing", "sub_1", t(2)));
        assert_ne!(a, alert_id("subscription.failing", "sub_2", t(1)));
        assert_ne!(a, alert_id("subscription.disabled", "sub_1", t(1)));
        assert!(a.starts_with("alert_") && a.len() == 30, "{a}");
    }

    #[test]
    fn alert_events_parse_back_as_their_topic() {
        let a = source_silent("acme", Some(t(1)), Duration::from_secs(3600), t(2));
        let e = a.event(t(3));
        assert_eq!(e.topic, "enrollhook.source.silent");
        let back = crate::thinkific::parse(e.body.as_bytes(), Some(&e.topic)).unwrap();
        assert_eq!(back.topic.to_string(), "enrollhook.source.silent");
        assert_eq!(back.id, a.id());
        // ...but a webhook cannot deliver one.
        assert!(crate::thinkific::envelope::parse_delivery(e.body.as_bytes()).is_err());
    }

    #[test]
    fn signatures_raise_above_the_threshold_and_recover_at_half() {
        let window = Duration::from_secs(300);
        let three: Vec<_> = (0..3).map(|i| rejection(10 - i, 4 - i as u32)).collect();
        assert_eq!(
            signature_verdict("acme", window, 3, &three, false),
            SignatureVerdict::Nothing
        );
        let four: Vec<_> = (0..4).map(|i| rejection(10 - i, 4 - i as u32)).collect();
        let SignatureVerdict::Raise(a) = signature_verdict("acme", window, 3, &four, false) else {
            panic!("four of three raise")
        };
        assert_eq!(a.started_at, t(1), "since the oldest in the window");
        assert_eq!(a.payload["rejected"], 4);
        assert_eq!(a.payload["newest"][0]["quarantine_id"], 10);
        assert!(a.summary.contains("API key"), "{}", a.summary);
        // Open: nothing until at most half the threshold remains.
        assert_eq!(
            signature_verdict("acme", window, 3, &four, true),
            SignatureVerdict::Nothing
        );
        assert_eq!(
            signature_verdict("acme", window, 3, &three[..2], true),
            SignatureVerdict::Nothing
        );
        assert_eq!(
            signature_verdict("acme", window, 3, &three[..1], true),
            SignatureVerdict::Recover
        );
    }

    #[test]
    fn destinations_and_errors_show_no_secret_path() {
        assert_eq!(
            destination("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com"
        );
        let s = scrub(
            "request failed: error sending request for url (https://h.example/hook/SECRET?x=1)",
            300,
        );
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("h.example"), "{s}");
        assert_eq!(scrub("abcdef", 3), "abc…");
    }
}
