//! HTTP destinations: a signed POST of the message (Standard Webhooks
//! headers), 2xx is delivered, 410 disables, the rest is retried. Names are
//! resolved to public addresses only unless private destinations are allowed.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::{Destination, Message, Sent};
use crate::forward::address::is_public;
use crate::forward::policy::{self, AttemptResult};
use crate::forward::subscription::Subscription;
use crate::forward::worker::ForwardConfig;

/// Bytes of a destination's response kept with each attempt.
const RESPONSE_SNIPPET: usize = 1024;

pub struct Http {
    client: reqwest::Client,
    allow_private: bool,
}

impl Http {
    pub fn new(config: &ForwardConfig) -> anyhow::Result<Http> {
        Ok(Http {
            client: destination_client(config)?,
            allow_private: config.allow_private_destinations,
        })
    }
}

fn destination_client(config: &ForwardConfig) -> anyhow::Result<reqwest::Client> {
    crate::client::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        // 3xx is a failure: never follow a redirect with a signed body.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("enrollhook/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(config.concurrency);
    if !config.allow_private_destinations {
        builder = builder.dns_resolver(PublicOnlyResolver);
    }
    Ok(builder.build()?)
}

/// Resolves names to public addresses only: a destination that resolves to a
/// private, loopback or link-local address (a DNS-rebinding attempt on the
/// cloud metadata service, say) is refused at connect time.
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to private, loopback or link-local addresses (refused; see --allow-private-destinations)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[async_trait]
impl Destination for Http {
    async fn send(&self, s: &Subscription, m: &Message<'_>) -> Sent {
        // A template may render its own URL (already checked like a
        // subscription's) and method; the address rules below apply to it too.
        let target = m.shape.and_then(|r| r.url.as_deref()).unwrap_or(&s.url);
        let method = match m.shape {
            Some(r) => match reqwest::Method::from_bytes(r.method.as_bytes()) {
                Ok(method) => method,
                Err(_) => {
                    return Sent::failed(format!(
                        "template method `{}` is not an HTTP method",
                        r.method
                    ));
                }
            },
            None => reqwest::Method::POST,
        };
        if !self.allow_private
            && let Ok(url) = reqwest::Url::parse(target)
            && let Some(ip) = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            }
            && !is_public(ip)
        {
            return Sent::failed(format!(
                "destination {ip} is a private, loopback or link-local address (refused; see --allow-private-destinations)"
            ));
        }
        let mut request = self.client.request(method, target).body(m.body.to_vec());
        for (name, value) in m.properties() {
            request = request.header(name, value);
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Sent::failed(describe_error(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| policy::parse_retry_after(v, Utc::now()));
        // Keep the first bytes of the answer; do not wait for (or store) a huge body.
        let mut snippet = Vec::new();
        while snippet.len() < RESPONSE_SNIPPET {
            match response.chunk().await {
                Ok(Some(chunk)) => snippet.extend_from_slice(&chunk),
                _ => break,
            }
        }
        snippet.truncate(RESPONSE_SNIPPET);
        let body = String::from_utf8_lossy(&snippet).into_owned();
        Sent {
            result: AttemptResult::Response {
                status,
                retry_after,
            },
            response: (!body.is_empty()).then_some(body),
        }
    }
}

fn describe_error(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
