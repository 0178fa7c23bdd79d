//! `X-Thinkific-Hmac-Sha256`: lowercase hex HMAC-SHA256 of the raw request body,
//! keyed with the school's API key (or an app's client secret).
//!
//! Verification works on the bytes exactly as received and compares in constant
//! time. Failures are classified so the sender learns *what* is wrong: a missing
//! header, a header that is not hex (base64 is the common mistake), or a digest
//! that does not match (with a hint when it matches a re-serialized body).

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header Thinkific signs deliveries with.
pub const SIGNATURE_HEADER: &str = "x-thinkific-hmac-sha256";

/// Why a delivery's signature was not accepted. The `Display` text is shown to
/// the sender and stored in the quarantine, so it says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "missing X-Thinkific-Hmac-Sha256 header: the body must be signed with HMAC-SHA256 of the raw body, keyed with the school's API key"
    )]
    Missing,
    #[error(
        "malformed X-Thinkific-Hmac-Sha256 header: it looks like base64, but Thinkific sends the HMAC-SHA256 as 64 hex characters"
    )]
    Base64,
    #[error(
        "malformed X-Thinkific-Hmac-Sha256 header: expected 64 hex characters (HMAC-SHA256 of the raw body), got {0} characters that are not valid hex"
    )]
    NotHex(usize),
    #[error(
        "malformed X-Thinkific-Hmac-Sha256 header: expected 64 hex characters (32 bytes), got {0} bytes"
    )]
    WrongLength(usize),
    #[error(
        "signature mismatch: the signature was computed over re-serialized JSON; sign the raw body bytes exactly as sent"
    )]
    Reserialized,
    #[error(
        "signature mismatch: X-Thinkific-Hmac-Sha256 is not the HMAC-SHA256 of the body with this source's secret; check that the secret is the school's API key"
    )]
    Mismatch,
}

impl SignatureError {
    /// A short machine-readable code for logs, metrics and API clients.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Base64 | SignatureError::NotHex(_) | SignatureError::WrongLength(_) => {
                "signature_malformed"
            }
            SignatureError::Reserialized | SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// The signature Thinkific would send for `body`: lowercase hex.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

/// Checks `header` (the value of `X-Thinkific-Hmac-Sha256`, if any) against the
/// raw `body`. Accepts upper- or lower-case hex and surrounding whitespace.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    let raw = header.ok_or(SignatureError::Missing)?;
    let text = std::str::from_utf8(raw)
        .map_err(|_| SignatureError::NotHex(raw.len()))?
        .trim();
    if text.is_empty() {
        return Err(SignatureError::Missing);
    }
    let expected = match hex::decode(text) {
        Ok(bytes) => bytes,
        Err(_) => {
            let b64 = base64::engine::general_purpose::STANDARD;
            return Err(match b64.decode(text) {
                Ok(bytes) if bytes.len() == 32 => SignatureError::Base64,
                _ => SignatureError::NotHex(text.len()),
            });
        }
    };
    if expected.len() != 32 {
        return Err(SignatureError::WrongLength(expected.len()));
    }
    let mut m = mac(secret);
    m.update(body);
    // `verify_slice` compares in constant time.
    if m.verify_slice(&expected).is_ok() {
        return Ok(());
    }
    if reserialized_candidates(body).iter().any(|candidate| {
        mac(secret)
            .chain_update(candidate)
            .verify_slice(&expected)
            .is_ok()
    }) {
        return Err(SignatureError::Reserialized);
    }
    Err(SignatureError::Mismatch)
}

/// The re-serialization hint is computed for bodies up to this size only: it
/// costs an HMAC per candidate, and Thinkific's deliveries are a few KiB.
pub const HINT_MAX_BODY: usize = 64 * 1024;

/// How a sender may have re-serialized the body before signing it (the most
/// common integration bug, `JSON.stringify(JSON.parse(body))` and friends):
/// in the body's key order and sorted; compact, Python's `json.dumps`
/// separators (`", "`, `": "`), pretty with 2 and 4 spaces; strings as sent,
/// minimally escaped (JavaScript, serde) and ASCII-only (Python's default).
fn reserialized_candidates(body: &[u8]) -> Vec<Vec<u8>> {
    if body.len() > HINT_MAX_BODY {
        return Vec::new();
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    // serde_json's map is sorted by key.
    let sorted = serde_json::to_string(&value).unwrap_or_default();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for source in [text, sorted.as_str()] {
        for layout in [
            Layout::Compact,
            Layout::Python,
            Layout::Pretty(2),
            Layout::Pretty(4),
        ] {
            for strings in [Strings::AsSent, Strings::Minimal, Strings::Ascii] {
                if let Some(c) = reformat(source, layout, strings)
                    && c.as_bytes() != body
                    && !out.iter().any(|o| o == c.as_bytes())
                {
                    out.push(c.into_bytes());
                }
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Layout {
    /// `,` and `:`.
    Compact,
    /// `, ` and `: ` on one line (Python's `json.dumps` default).
    Python,
    /// One member per line, indented by this many spaces, `: `.
    Pretty(usize),
}

#[derive(Clone, Copy)]
enum Strings {
    AsSent,
    /// Only `"`, `\` and control characters escaped.
    Minimal,
    /// Minimal, and every non-ASCII character as `\uXXXX`.
    Ascii,
}

/// Re-lays out valid JSON text token by token, keeping key order and number
/// literals as they are. None if the text turns out not to be JSON.
fn reformat(text: &str, layout: Layout, strings: Strings) -> Option<String> {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut depth = 0usize;
    let newline = |out: &mut String, depth: usize| {
        if let Layout::Pretty(n) = layout {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {}
            '"' => {
                let mut end = None;
                let mut escaped = false;
                for (j, d) in chars.by_ref() {
                    match d {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = Some(j);
                            break;
                        }
                        _ => {}
                    }
                }
                let literal = &text[i..=end?];
                match strings {
                    Strings::AsSent => out.push_str(literal),
                    Strings::Minimal | Strings::Ascii => {
                        let decoded: String = serde_json::from_str(literal).ok()?;
                        let minimal = serde_json::to_string(&decoded).ok()?;
                        if matches!(strings, Strings::Ascii) {
                            for ch in minimal.chars() {
                                if ch.is_ascii() {
                                    out.push(ch);
                                } else {
                                    for unit in ch.encode_utf16(&mut [0; 2]) {
                                        out.push_str(&format!("\\u{unit:04x}"));
                                    }
                                }
                            }
                        } else {
                            out.push_str(&minimal);
                        }
                    }
                }
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                while chars.next_if(|(_, d)| d.is_ascii_whitespace()).is_some() {}
                if chars.next_if(|(_, d)| *d == close).is_some() {
                    out.push(close); // empty: `{}` / `[]` in every layout
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                match layout {
                    Layout::Python => out.push(' '),
                    Layout::Pretty(_) => newline(&mut out, depth),
                    Layout::Compact => {}
                }
            }
            ':' => out.push_str(if matches!(layout, Layout::Compact) {
                ":"
            } else {
                ": "
            }),
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"school-api-key";

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        let mut m = mac(b"Jefe");
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_lower_and_upper_hex() {
        let body = br#"{"id":"1"}"#;
        let sig = sign(SECRET, body);
        assert_eq!(verify(SECRET, body, Some(sig.as_bytes())), Ok(()));
        let upper = sig.to_uppercase();
        assert_eq!(verify(SECRET, body, Some(upper.as_bytes())), Ok(()));
        let padded = format!(" {sig}\t");
        assert_eq!(verify(SECRET, body, Some(padded.as_bytes())), Ok(()));
    }

    #[test]
    fn classifies_failures() {
        let body = br#"{"id": "1",  "resource":"enrollment"}"#;
        assert_eq!(verify(SECRET, body, None), Err(SignatureError::Missing));
        assert_eq!(
            verify(SECRET, body, Some(b"")),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, body, Some(b"zz-not-hex")),
            Err(SignatureError::NotHex(10))
        );
        assert_eq!(
            verify(SECRET, body, Some(b"abcd")),
            Err(SignatureError::WrongLength(2))
        );

        let mut m = mac(SECRET);
        m.update(body);
        let b64 = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
        assert_eq!(
            verify(SECRET, body, Some(b64.as_bytes())),
            Err(SignatureError::Base64)
        );

        let wrong = sign(b"another-key", body);
        assert_eq!(
            verify(SECRET, body, Some(wrong.as_bytes())),
            Err(SignatureError::Mismatch)
        );

        let compact =
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(body).unwrap())
                .unwrap();
        let resig = sign(SECRET, &compact);
        assert_eq!(
            verify(SECRET, body, Some(resig.as_bytes())),
            Err(SignatureError::Reserialized)
        );
        // One changed byte in the body is a plain mismatch.
        let sig = sign(SECRET, body);
        let mut tampered = body.to_vec();
        tampered[8] = b'2';
        assert_eq!(
            verify(SECRET, &tampered, Some(sig.as_bytes())),
            Err(SignatureError::Mismatch)
        );
    }

    fn hint_for(body: &[u8], signed: &[u8]) -> Result<(), SignatureError> {
        verify(SECRET, body, Some(sign(SECRET, signed).as_bytes()))
    }

    #[test]
    fn the_reserialized_hint_covers_the_common_serializers() {
        let body = "{\"id\":\"1\",  \"resource\":\"enrollment\",\"payload\":{\"name\":\"Zo\u{e9}\",\"list\":[1,2.5,{}],\"empty\":[]}}";
        let body = body.as_bytes();
        let signed_as = [
            // JSON.stringify(JSON.parse(body)): compact, key order kept.
            r#"{"id":"1","resource":"enrollment","payload":{"name":"Zoé","list":[1,2.5,{}],"empty":[]}}"#.to_owned(),
            // JSON.stringify(v, null, 2)
            "{\n  \"id\": \"1\",\n  \"resource\": \"enrollment\",\n  \"payload\": {\n    \"name\": \"Zoé\",\n    \"list\": [\n      1,\n      2.5,\n      {}\n    ],\n    \"empty\": []\n  }\n}".to_owned(),
            // JSON.stringify(v, null, 4)
            "{\n    \"id\": \"1\",\n    \"resource\": \"enrollment\",\n    \"payload\": {\n        \"name\": \"Zoé\",\n        \"list\": [\n            1,\n            2.5,\n            {}\n        ],\n        \"empty\": []\n    }\n}".to_owned(),
            // Python json.dumps(v): ", " and ": ", ensure_ascii.
            r#"{"id": "1", "resource": "enrollment", "payload": {"name": "Zo\u00e9", "list": [1, 2.5, {}], "empty": []}}"#.to_owned(),
            // Python json.dumps(v, sort_keys=True)
            r#"{"id": "1", "payload": {"empty": [], "list": [1, 2.5, {}], "name": "Zo\u00e9"}, "resource": "enrollment"}"#.to_owned(),
            // Sorted keys, compact and pretty (serde_json::Value).
            r#"{"id":"1","payload":{"empty":[],"list":[1,2.5,{}],"name":"Zoé"},"resource":"enrollment"}"#.to_owned(),
        ];
        for signed in &signed_as {
            assert_eq!(
                hint_for(body, signed.as_bytes()),
                Err(SignatureError::Reserialized),
                "{signed}"
            );
        }
        let other = br#"{"id":"2","resource":"enrollment","payload":{}}"#;
        assert_eq!(hint_for(body, other), Err(SignatureError::Mismatch));
    }

    #[test]
    fn the_hint_is_skipped_for_large_bodies() {
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(HINT_MAX_BODY));
        let compact = format!("{{\"pad\":\"{}\"}}", "x".repeat(HINT_MAX_BODY));
        assert_eq!(
            hint_for(big.as_bytes(), compact.as_bytes()),
            Err(SignatureError::Mismatch)
        );
    }
}
