//! Subscriptions: where events are forwarded, which ones, and how they are signed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::signing;
use crate::thinkific::Topic;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    pub id: String,
    pub url: String,
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
    pub description: Option<String>,
    /// Set at the first failure after a success; too old a date disables the subscription.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    pub fn matches(&self, source: &str, topic: &str, course_id: Option<i64>) -> bool {
        self.topics.iter().any(|p| topic_matches(p, topic))
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.iter().any(|s| s == source))
            && self
                .course_ids
                .as_ref()
                .is_none_or(|ids| course_id.is_some_and(|c| ids.contains(&c)))
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

/// `*` and `resource.*` match every topic of Thinkific's, but not the
/// backfill's `enrollment.backfill`: a backfill of thousands of enrollments
/// must not flood a CRM that asked for `enrollment.*` with events that are not
/// news. A subscription gets them by naming `enrollment.backfill` exactly.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    if topic == crate::thinkific::BACKFILL_TOPIC {
        return pattern == topic;
    }
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(resource) => topic.split_once('.').is_some_and(|(r, _)| r == resource),
        None => pattern == topic,
    }
}

/// The fields a client sends to create or change a subscription.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    pub url: Option<String>,
    pub topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub course_ids: Option<Option<Vec<i64>>>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub sources: Option<Option<Vec<String>>>,
    pub secret: Option<String>,
    pub enabled: Option<bool>,
    pub ordered: Option<bool>,
    pub headers: Option<BTreeMap<String, String>>,
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
        let url = self
            .url
            .clone()
            .ok_or_else(|| InvalidSubscription("`url` is required".into()))?;
        let base = Subscription {
            id,
            url,
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
            s.url = validate_url(&url, allow_private)?;
        }
        if let Some(topics) = self.topics {
            if topics.is_empty() {
                return Err(InvalidSubscription(
                    "`topics` must not be empty: use [\"*\"] for every topic".into(),
                ));
            }
            for t in &topics {
                validate_topic_pattern(t)?;
            }
            s.topics = topics;
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

fn validate_url(url: &str, allow_private: bool) -> Result<String, InvalidSubscription> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| InvalidSubscription(format!("`url` is not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(InvalidSubscription(
            "`url` must be http:// or https://".into(),
        ));
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
            url::Host::Domain(_) => None,
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

/// Whether an address is on the public internet. Refused (see [`non_public_reason`]):
/// loopback, private, link-local, unique- and site-local, CGNAT, multicast,
/// unspecified, documentation, benchmarking, reserved and special-purpose
/// ranges, and IPv6 addresses that carry such an IPv4 address inside them
/// (mapped, compatible, NAT64, 6to4, Teredo), since a gateway on the path may
/// deliver them to that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    non_public_reason(ip).is_none()
}

/// Why an address is not a public destination, or None when it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    let reason = if v4.is_loopback() {
        "loopback"
    } else if v4.is_private() {
        "private"
    } else if v4.is_link_local() {
        "link-local"
    } else if o[0] == 0 {
        "unspecified (0.0.0.0/8)"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "shared address space (CGNAT, 100.64.0.0/10)"
    } else if v4.is_multicast() {
        "multicast"
    } else if o[0] >= 240 {
        "reserved (240.0.0.0/4) or broadcast"
    } else if v4.is_documentation() {
        "documentation"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "benchmarking (198.18.0.0/15)"
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        "IETF protocol assignments (192.0.0.0/24)"
    } else if o[0] == 192 && o[1] == 88 && o[2] == 99 {
        "6to4 relay anycast (192.88.99.0/24)"
    } else {
        return None;
    };
    Some(reason)
}

fn non_public_v6(v6: Ipv6Addr) -> Option<&'static str> {
    let seg = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // An IPv4 address inside: refused when that address would be.
    let inner = |what: &'static str, v4: Ipv4Addr| non_public_v4(v4).map(|_| what);
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    if v6.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = v6.to_ipv4_mapped() {
        return inner("an IPv4-mapped address of a non-public IPv4 address", v4);
    }
    if seg[..6] == [0; 6] {
        // ::a.b.c.d, IPv4-compatible (deprecated, still routed by some stacks).
        return inner(
            "an IPv4-compatible address of a non-public IPv4 address",
            embedded(seg[6], seg[7]),
        );
    }
    if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some("IPv4-translated (::ffff:0:0:0/96)");
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return inner(
            "a NAT64 address (64:ff9b::/96) of a non-public IPv4 address",
            embedded(seg[6], seg[7]),
        );
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        // RFC 8215: for networks' own translators; where the IPv4 sits varies.
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    if seg[0] == 0x2002 {
        return inner(
            "a 6to4 address (2002::/16) of a non-public IPv4 address",
            embedded(seg[1], seg[2]),
        );
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo: the server's IPv4 is in clear, the client's inverted.
        let server = inner(
            "a Teredo address (2001::/32) of a non-public IPv4 address",
            embedded(seg[2], seg[3]),
        );
        let client = inner(
            "a Teredo address (2001::/32) of a non-public IPv4 address",
            embedded(!seg[6], !seg[7]),
        );
        return server.or(client);
    }
    let reason = if v6.is_multicast() {
        "multicast"
    } else if v6.is_unique_local() {
        "unique-local (fc00::/7)"
    } else if v6.is_unicast_link_local() {
        "link-local"
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        "site-local (fec0::/10)"
    } else if seg[..4] == [0x100, 0, 0, 0] {
        "discard-only (100::/64)"
    } else if seg[0] == 0x2001 && seg[1] == 0xdb8 || (seg[0] & 0xfff0) == 0x3ff0 {
        "documentation"
    } else if seg[0] == 0x2001 && seg[1] == 2 && seg[2] == 0 {
        "benchmarking (2001:2::/48)"
    } else {
        return None;
    };
    Some(reason)
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
    }

    #[test]
    fn filters() {
        let now = Utc::now();
        let mut s = input("https://crm.example.com/hook")
            .create("s1".into(), now, false)
            .unwrap();
        assert!(s.matches("default", "order.created", None));
        s.topics = vec!["enrollment.*".into()];
        s.course_ids = Some(vec![68]);
        assert!(s.matches("a", "enrollment.created", Some(68)));
        assert!(!s.matches("a", "enrollment.created", Some(25)));
        assert!(!s.matches("a", "enrollment.created", None));
        assert!(!s.matches("a", "order.created", Some(68)));
        s.sources = Some(vec!["b".into()]);
        assert!(!s.matches("a", "enrollment.created", Some(68)));
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
    fn public_addresses() {
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    fn refused(ip: &str) -> bool {
        !is_public(ip.parse().unwrap())
    }

    #[test]
    fn ipv4_compatible_ipv6_of_a_private_address_is_refused() {
        assert!(refused("::127.0.0.1"));
        assert!(refused("::10.0.0.1"));
        assert!(refused("::169.254.169.254"));
        assert!(!refused("::8.8.8.8"));
    }

    #[test]
    fn nat64_of_a_private_address_is_refused() {
        assert!(refused("64:ff9b::127.0.0.1"));
        assert!(refused("64:ff9b::a9fe:a9fe")); // 169.254.169.254
        assert!(refused("64:ff9b::192.168.0.1"));
        assert!(!refused("64:ff9b::8.8.8.8"));
        // Local-use NAT64: the network's own translator, refused whole.
        assert!(refused("64:ff9b:1::808:808"));
        assert!(refused("64:ff9b:1:ffff::1"));
    }

    #[test]
    fn six_to_four_of_a_private_address_is_refused() {
        assert!(refused("2002:7f00:1::1")); // 127.0.0.1
        assert!(refused("2002:a00:1::")); // 10.0.0.1
        assert!(refused("2002:c0a8:101::1")); // 192.168.1.1
        assert!(!refused("2002:808:808::1")); // 8.8.8.8
    }

    #[test]
    fn teredo_with_a_private_address_is_refused() {
        // Server 10.0.0.1.
        assert!(refused("2001:0:a00:1::ffff:ffff"));
        // Client 127.0.0.1 (stored inverted: 80ff:fffe).
        assert!(refused("2001:0:808:808:0:0:80ff:fffe"));
        // Server 8.8.8.8, client 8.8.4.4 (inverted f7f7:fbfb).
        assert!(!refused("2001:0:808:808:0:0:f7f7:fbfb"));
    }

    #[test]
    fn site_local_and_other_special_ipv6_are_refused() {
        assert!(refused("fec0::1"));
        assert!(refused("feff::1"));
        assert!(refused("100::1"));
        assert!(refused("2001:db8::1"));
        assert!(refused("3fff::1"));
        assert!(refused("2001:2::1"));
        assert!(refused("::ffff:0:7f00:1"));
        assert!(!refused("2a00:1450:4001::200e"));
    }

    #[test]
    fn benchmarking_reserved_and_protocol_ipv4_ranges_are_refused() {
        for ip in [
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
            "192.0.0.8",
            "192.88.99.1",
            "224.0.0.1",
        ] {
            assert!(refused(ip), "{ip}");
        }
        for ip in [
            "198.17.255.255",
            "198.20.0.1",
            "239.255.255.255",
            "192.0.1.1",
        ] {
            // 239/8 is multicast: refused, the others are public.
            assert_eq!(refused(ip), ip.starts_with("239."), "{ip}");
        }
    }

    #[test]
    fn a_refused_url_names_the_reason() {
        let e = input("http://[64:ff9b::a00:1]/x")
            .create("s".into(), Utc::now(), false)
            .unwrap_err();
        assert!(e.0.contains("NAT64"), "{e}");
    }
}
