//! Deciding what to do with one delivery, independent of HTTP: find the source,
//! verify the signature on the raw bytes, parse. Used by the webhook endpoint
//! and by `quarantine retry` (which re-checks a kept delivery with today's secret).

use chrono::{DateTime, Utc};

use crate::config::Sources;
use crate::store::{NewEvent, NewQuarantine};
use crate::thinkific::{self, ParseError, SignatureError};

/// Why a delivery is refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(
        "no source named `{0}` is configured: check the webhook URL, or add a [[source]] with this name to enrollhook.toml"
    )]
    UnknownSource(String),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::UnknownSource(_) => "unknown_source",
            Rejection::Signature(e) => e.code(),
            Rejection::Parse(e) => e.code(),
        }
    }

    /// Unknown sources are not kept: anyone could fill the disk through them.
    pub fn is_quarantined(&self) -> bool {
        !matches!(self, Rejection::UnknownSource(_))
    }
}

/// The parts of a request the decision depends on.
pub struct Delivery<'a> {
    pub source: &'a str,
    pub signature: Option<&'a [u8]>,
    pub topic_header: Option<&'a str>,
    pub body: &'a [u8],
    pub received_at: DateTime<Utc>,
}

/// Checks a delivery and turns it into an event to store.
pub fn check(sources: &Sources, verify: bool, d: &Delivery<'_>) -> Result<NewEvent, Rejection> {
    authenticate(sources, verify, d)?;
    parse(d)
}

/// Step one of [`check`]: the source exists and the signature is valid. The
/// webhook endpoint charges rate-limit budgets between the two steps, by
/// whether this one passed (see `server::limits`).
pub fn authenticate(sources: &Sources, verify: bool, d: &Delivery<'_>) -> Result<(), Rejection> {
    let secret = sources
        .get(d.source)
        .ok_or_else(|| Rejection::UnknownSource(d.source.to_owned()))?;
    if verify {
        // `ServeConfig::validate` guarantees every source has a secret when verifying;
        // a source without one can therefore never verify.
        let secret = secret.ok_or(SignatureError::Mismatch)?;
        thinkific::verify(secret.expose().as_bytes(), d.body, d.signature)?;
    }
    Ok(())
}

/// Step two of [`check`], for an authenticated delivery: the topic is the
/// signed body's; the unsigned topic header is only compared with it.
pub fn parse(d: &Delivery<'_>) -> Result<NewEvent, Rejection> {
    let envelope = thinkific::parse_delivery(d.body)?;
    if let Some(header) = d.topic_header.map(str::trim).filter(|h| !h.is_empty())
        && !header.split_once('.').is_some_and(|(resource, action)| {
            resource.eq_ignore_ascii_case(&envelope.topic.resource)
                && thinkific::canonical_action(action).eq_ignore_ascii_case(&envelope.topic.action)
        })
    {
        tracing::warn!(
            source = d.source,
            event_id = envelope.id,
            header,
            topic = %envelope.topic,
            "X-Thinkific-Topic differs from the signed body's topic; the body's is used"
        );
    }
    // `parse_delivery` proved the body is UTF-8.
    let body = String::from_utf8(d.body.to_vec()).expect("parsed bodies are UTF-8");
    Ok(NewEvent::from_envelope(
        d.source,
        &envelope,
        body,
        d.received_at,
    ))
}

/// The headers kept with a quarantined delivery, besides every `X-Thinkific-*`
/// one: what helps to diagnose it, never credentials nor client addresses
/// (the README's *Security* section lists the same).
pub const KEPT_HEADERS: &[&str] = &["content-type", "user-agent"];

/// Whether a header is kept with a quarantined delivery (see [`KEPT_HEADERS`]).
pub fn is_kept_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("x-thinkific-") || KEPT_HEADERS.contains(&name.as_str())
}

pub fn quarantine_record(
    d: &Delivery<'_>,
    rejection: &Rejection,
    headers: Vec<(String, String)>,
) -> NewQuarantine {
    NewQuarantine {
        source: d.source.to_owned(),
        received_at: d.received_at,
        reason_code: rejection.code().to_owned(),
        reason: rejection.to_string(),
        headers,
        body: d.body.to_vec(),
    }
}
