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
    // Diagnose the most common integration bug: signing `JSON.stringify(JSON.parse(body))`.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let reserialized = [
            serde_json::to_vec(&value).unwrap_or_default(),
            serde_json::to_vec_pretty(&value).unwrap_or_default(),
        ];
        for candidate in reserialized.iter().filter(|c| c.as_slice() != body) {
            let mut m = mac(secret);
            m.update(candidate);
            if m.verify_slice(&expected).is_ok() {
                return Err(SignatureError::Reserialized);
            }
        }
    }
    Err(SignatureError::Mismatch)
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
}
