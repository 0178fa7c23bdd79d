//! `enrollhook thinkific webhooks …`: registering enrollhook's webhooks in
//! Thinkific, idempotently. What to create is decided by pure functions
//! ([`target_url`], [`topics`], [`plan`]); the commands only call the API.

use crate::ids::SourceName;
use crate::thinkific::rest::{RestClient, RestError, Webhook};

/// Every topic Thinkific documents.
pub const DOCUMENTED_TOPICS: &[&str] = &[
    "enrollment.created",
    "enrollment.progress",
    "enrollment.completed",
    "enrollment.trial",
    "lesson.completed",
    "quiz.attempted",
    "order.created",
    "order_transaction.succeeded",
    "order_transaction.failed",
    "order_transaction.refunded",
    "subscription.cancelled",
    "subscription.past_due",
    "subscription.unpaid",
    "user.signup",
    "user.signin",
    "user.updated",
    "course.created",
    "course.updated",
    "course.deleted",
    "product.created",
    "product.updated",
    "product.deleted",
    "plan.updated",
    "lead.created",
    "app.uninstalled",
];

/// Registered when `--topics` is not given: what the projection reads (the
/// enrollment topics), and the student's path around them (sign-up, profile
/// changes, lessons, purchases) that forwarding subscriptions most often want.
/// Not `user.signin` (one event per login: noise for most schools).
pub const DEFAULT_TOPICS: &[&str] = &[
    "enrollment.created",
    "enrollment.progress",
    "enrollment.completed",
    "enrollment.trial",
    "lesson.completed",
    "user.signup",
    "user.updated",
    "order.created",
];

/// The topics `--topics` names: none (the default set), `all`, or a list
/// (repeated or comma-separated) of documented topics.
pub fn topics(given: &[String]) -> Result<Vec<String>, String> {
    let named: Vec<&str> = given
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if named.is_empty() {
        return Ok(DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect());
    }
    if named.contains(&"all") {
        return Ok(DOCUMENTED_TOPICS.iter().map(|t| t.to_string()).collect());
    }
    let mut out: Vec<String> = Vec::new();
    for t in named {
        let t = crate::thinkific::canonical_topic(&t.to_ascii_lowercase()).into_owned();
        if !DOCUMENTED_TOPICS.contains(&t.as_str()) {
            return Err(format!(
                "`{t}` is not a topic Thinkific documents. Use `all`, or some of: {}",
                DOCUMENTED_TOPICS.join(", ")
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Checks the URL Thinkific is to deliver to: https (Thinkific delivers only
/// there) unless `allow_http`, and enrollhook's webhook path
/// (`…/webhooks/thinkific` or `…/webhooks/thinkific/{source}`).
pub fn target_url(url: &str, allow_http: bool) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
        format!(
            "--url `{url}` is not a URL ({e}): e.g. https://hooks.example.com/webhooks/thinkific"
        )
    })?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "--url `{url}` is http: Thinkific delivers webhooks only to https URLs. \
                 Serve TLS (--tls-cert/--tls-key) or put enrollhook behind a TLS proxy, \
                 and register the https URL (--allow-http for a test stand-in only)"
            ));
        }
        other => return Err(format!("--url `{url}` must be https, not {other}")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("--url `{url}` has no host"));
    }
    // A stand-in (--allow-http) may be local; Thinkific's own rules apply otherwise.
    if !allow_http && let Some(why) = parsed.host().and_then(|h| refused_host(&h)) {
        return Err(format!(
            "--url `{url}`: Thinkific refuses this target ({why}). Register the public https \
             address Thinkific can reach"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "--url `{url}` has a query or fragment: enrollhook's webhook URL has neither"
        ));
    }
    let path = parsed.path().trim_end_matches('/');
    let ok = match path.rsplit_once("/webhooks/thinkific") {
        Some((_, "")) => true,
        Some((_, rest)) => rest
            .strip_prefix('/')
            .is_some_and(|source| SourceName::parse(source).is_ok()),
        None => false,
    };
    if !ok {
        return Err(format!(
            "--url `{url}` is not enrollhook's webhook endpoint: it ends in /webhooks/thinkific \
             (the default source) or /webhooks/thinkific/SOURCE (a [[source]] of enrollhook.toml)"
        ));
    }
    // Compared with what Thinkific lists as is: keep the user's text, minus a trailing slash.
    Ok(url.trim().trim_end_matches('/').to_owned())
}

/// Reserved or invented top-level names (RFC 2606, RFC 6761, mDNS) Thinkific
/// cannot deliver to.
const RESERVED_TLDS: &[&str] = &[
    "example",
    "test",
    "invalid",
    "local",
    "localhost",
    "internal",
    "lan",
    "home",
];

/// Why Thinkific refuses a target host, if it does: localhost, an invented or
/// reserved domain, a bare IP that is not public, thinkific.com itself.
pub fn refused_host(host: &url::Host<&str>) -> Option<String> {
    use std::net::IpAddr;
    let ip_reason = |ip: IpAddr| -> Option<String> {
        let private = match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_broadcast()
                    || v4.is_documentation()
                    || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1])
            }
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (v6.segments()[0] & 0xfe00) == 0xfc00
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6.to_ipv4_mapped().is_some()
            }
        };
        private.then(|| format!("{ip} is not a public address"))
    };
    match host {
        url::Host::Ipv4(ip) => ip_reason(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => ip_reason(IpAddr::V6(*ip)),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            let tld = d.rsplit('.').next().unwrap_or(&d);
            if d == "localhost" || d.ends_with(".localhost") {
                Some("localhost is not reachable from Thinkific".into())
            } else if RESERVED_TLDS.contains(&tld) || !d.contains('.') {
                Some(format!(
                    "`{d}` is not a public domain (`.{tld}` is reserved or invented)"
                ))
            } else if d == "thinkific.com" || d.ends_with(".thinkific.com") {
                Some("a thinkific.com address cannot receive Thinkific's webhooks".into())
            } else {
                None
            }
        }
    }
}

/// What registering `topics` at `url` takes, given the webhooks that exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Webhooks already delivering a wanted topic to `url`: kept as they are.
    pub kept: Vec<Webhook>,
    /// Topics to create.
    pub create: Vec<String>,
}

/// Whether two topic names are one topic: case aside, and `canceled` is
/// `cancelled` (Thinkific spells the subscription topic both ways).
pub fn same_topic(a: &str, b: &str) -> bool {
    let a = crate::thinkific::canonical_topic(a.trim()).to_ascii_lowercase();
    let b = crate::thinkific::canonical_topic(b.trim()).to_ascii_lowercase();
    a == b
}

pub fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

pub fn plan(existing: &[Webhook], url: &str, topics: &[String]) -> Plan {
    let mut kept = Vec::new();
    let mut create = Vec::new();
    for topic in topics {
        match existing
            .iter()
            .find(|w| same_url(&w.target_url, url) && same_topic(&w.topic, topic))
        {
            Some(w) => kept.push(w.clone()),
            None => create.push(topic.clone()),
        }
    }
    Plan { kept, create }
}

/// `webhooks check`: for each expected topic, whether it delivers to `url`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Check {
    /// Expected topics registered to `url`.
    pub registered: Vec<String>,
    /// Expected topics registered nowhere.
    pub missing: Vec<String>,
    /// Expected topics not registered to `url` but to another URL: (topic, that URL).
    pub elsewhere: Vec<(String, String)>,
}

pub fn check(existing: &[Webhook], url: &str, topics: &[String]) -> Check {
    let mut c = Check::default();
    for topic in topics {
        let of_topic: Vec<&Webhook> = existing
            .iter()
            .filter(|w| same_topic(&w.topic, topic))
            .collect();
        if of_topic.iter().any(|w| same_url(&w.target_url, url)) {
            c.registered.push(topic.clone());
        } else if let Some(w) = of_topic.first() {
            c.elsewhere.push((topic.clone(), w.target_url.clone()));
        } else {
            c.missing.push(topic.clone());
        }
    }
    c
}

/// What `register` did.
#[derive(Debug, Clone, Default)]
pub struct Registered {
    pub kept: Vec<Webhook>,
    pub created: Vec<Webhook>,
}

pub async fn register(
    client: &RestClient,
    url: &str,
    topics: &[String],
) -> Result<Registered, RestError> {
    let existing = client.list_webhooks().await?;
    let plan = plan(&existing, url, topics);
    let mut created = Vec::new();
    for topic in &plan.create {
        created.push(client.create_webhook(topic, url).await?);
    }
    Ok(Registered {
        kept: plan.kept,
        created,
    })
}

/// Deletes the webhooks with these ids, or every webhook delivering to `url`.
/// Returns the deleted ones (by id only, when deleting by id).
pub async fn delete(
    client: &RestClient,
    ids: &[String],
    url: Option<&str>,
) -> Result<Vec<String>, RestError> {
    let ids: Vec<String> = match url {
        Some(url) => client
            .list_webhooks()
            .await?
            .into_iter()
            .filter(|w| same_url(&w.target_url, url))
            .map(|w| w.id)
            .collect(),
        None => ids.to_vec(),
    };
    for id in &ids {
        client.delete_webhook(id).await?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str, topic: &str, url: &str) -> Webhook {
        Webhook {
            id: id.into(),
            topic: topic.into(),
            target_url: url.into(),
            status: Some("active".into()),
            created_at: None,
        }
    }

    #[test]
    fn either_spelling_of_cancelled_is_the_documented_topic() {
        assert_eq!(
            topics(&["subscription.canceled".into()]).unwrap(),
            ["subscription.cancelled"]
        );
        let url = "https://hooks.example.com/webhooks/thinkific";
        let existing = [hook("1", "subscription.canceled", url)];
        let wanted = ["subscription.cancelled".to_owned()];
        assert_eq!(plan(&existing, url, &wanted).create, Vec::<String>::new());
        assert_eq!(check(&existing, url, &wanted).registered, wanted);
    }

    #[test]
    fn default_topics_are_documented_and_cover_the_projection() {
        for t in DEFAULT_TOPICS {
            assert!(DOCUMENTED_TOPICS.contains(t), "{t}");
        }
        for t in [
            "enrollment.created",
            "enrollment.progress",
            "enrollment.completed",
            "enrollment.trial",
        ] {
            assert!(DEFAULT_TOPICS.contains(&t), "{t}");
        }
        assert!(!DOCUMENTED_TOPICS.contains(&crate::thinkific::BACKFILL_TOPIC));
    }

    #[test]
    fn topic_arguments() {
        assert_eq!(topics(&[]).unwrap().len(), DEFAULT_TOPICS.len());
        assert_eq!(
            topics(&["all".into()]).unwrap().len(),
            DOCUMENTED_TOPICS.len()
        );
        assert_eq!(
            topics(&[
                "order.created, enrollment.completed".into(),
                "order.created".into()
            ])
            .unwrap(),
            ["order.created", "enrollment.completed"]
        );
        let e = topics(&["enrollment.updated".into()]).unwrap_err();
        assert!(e.contains("not a topic Thinkific documents"), "{e}");
    }

    #[test]
    fn target_urls() {
        let ok = "https://hooks.example.com/webhooks/thinkific";
        assert_eq!(target_url(ok, false).unwrap(), ok);
        assert_eq!(target_url(&format!("{ok}/"), false).unwrap(), ok);
        assert!(target_url(&format!("{ok}/acme-academy"), false).is_ok());
        assert!(target_url("https://x.example.org/prefix/webhooks/thinkific", false).is_ok());
        for (bad, why) in [
            ("https://localhost/webhooks/thinkific", "localhost"),
            ("https://hooks.test/webhooks/thinkific", "reserved"),
            ("https://h.example/webhooks/thinkific", "reserved"),
            ("https://x.invalid/webhooks/thinkific", "reserved"),
            ("https://box.local/webhooks/thinkific", "reserved"),
            (
                "https://10.0.0.5/webhooks/thinkific",
                "not a public address",
            ),
            ("https://[::1]/webhooks/thinkific", "not a public address"),
            (
                "https://acme.thinkific.com/webhooks/thinkific",
                "thinkific.com",
            ),
        ] {
            let e = target_url(bad, false).unwrap_err();
            assert!(
                e.contains(why) && e.contains("Thinkific refuses"),
                "{bad}: {e}"
            );
        }
        assert!(target_url("https://203.0.113.7/webhooks/thinkific", false).is_err());
        assert!(target_url("https://93.184.215.14/webhooks/thinkific", false).is_ok());
        let e = target_url("http://hooks.example.com/webhooks/thinkific", false).unwrap_err();
        assert!(e.contains("only to https"), "{e}");
        assert!(target_url("http://127.0.0.1:9/webhooks/thinkific", true).is_ok());
        let e = target_url("https://hooks.example.com/hooks", false).unwrap_err();
        assert!(e.contains("/webhooks/thinkific"), "{e}");
        assert!(target_url("https://h.example.org/webhooks/thinkific/a%2Fb", false).is_err());
        assert!(target_url("https://h.example.org/webhooks/thinkific?x=1", false).is_err());
        assert!(target_url("ftp://h.example/webhooks/thinkific", true).is_err());
        assert!(target_url("not a url", false).is_err());
    }

    #[test]
    fn checks_say_registered_missing_and_elsewhere() {
        let url = "https://h.example.org/webhooks/thinkific";
        let existing = vec![
            hook("1", "enrollment.created", url),
            hook("2", "enrollment.progress", "https://other.example.org/hook"),
        ];
        let wanted: Vec<String> = ["enrollment.created", "enrollment.progress", "order.created"]
            .map(String::from)
            .to_vec();
        let c = check(&existing, url, &wanted);
        assert_eq!(c.registered, ["enrollment.created"]);
        assert_eq!(c.missing, ["order.created"]);
        assert_eq!(
            c.elsewhere,
            [(
                "enrollment.progress".to_string(),
                "https://other.example.org/hook".to_string()
            )]
        );
    }

    #[test]
    fn plans_keep_what_exists_and_create_the_rest() {
        let url = "https://h.example/webhooks/thinkific";
        let existing = vec![
            hook("1", "enrollment.created", url),
            hook("2", "enrollment.progress", "https://other.example/hook"),
            hook("3", "order.created", &format!("{url}/")),
        ];
        let wanted: Vec<String> = ["enrollment.created", "enrollment.progress", "order.created"]
            .map(String::from)
            .to_vec();
        let p = plan(&existing, url, &wanted);
        assert_eq!(
            p.kept.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            ["1", "3"]
        );
        assert_eq!(p.create, ["enrollment.progress"]);
        // Once created, nothing more to do.
        let mut after = existing.clone();
        after.push(hook("4", "enrollment.progress", url));
        assert!(plan(&after, url, &wanted).create.is_empty());
    }
}
