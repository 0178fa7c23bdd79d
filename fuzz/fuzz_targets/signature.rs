//! The `X-Thinkific-Hmac-Sha256` header check.
//!
//! Input: `N SECRET[N] HEADER 0xFF BODY` where N is one byte (the secret's
//! length, clipped to what is there). Without a 0xFF the header is absent and
//! the rest is the body. Invariants: the digest we sign verifies (in any case,
//! padded with whitespace); anything else is refused with a reason; no panic.
//! (The reasons are fixed texts that interpolate only lengths, so they cannot
//! echo the secret.)
#![no_main]

use enrollhook::thinkific::{SignatureError, sign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (secret, rest) = rest.split_at(usize::from(n).min(rest.len()));
    let (header, body) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };

    // What Thinkific would send always verifies, in either case and padded.
    let good = sign(secret, body);
    assert_eq!(good.len(), 64);
    assert!(
        good.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(verify(secret, body, Some(good.as_bytes())), Ok(()));
    let upper = good.to_ascii_uppercase();
    assert_eq!(verify(secret, body, Some(upper.as_bytes())), Ok(()));
    let padded = format!(" \t{good} \r\n");
    assert_eq!(verify(secret, body, Some(padded.as_bytes())), Ok(()));

    // One wrong digit is refused.
    let mut wrong = good.clone().into_bytes();
    wrong[usize::from(n) % 64] = if wrong[usize::from(n) % 64] == b'0' {
        b'1'
    } else {
        b'0'
    };
    assert!(verify(secret, body, Some(&wrong)).is_err());

    // The fuzzed header: accepted exactly when it is the right digest, give or
    // take case and surrounding whitespace.
    let result = verify(secret, body, header);
    let is_right_digest = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .is_some_and(|h| h.trim().to_ascii_lowercase() == good);
    assert_eq!(result.is_ok(), is_right_digest, "header {header:?}");

    if let Err(err) = result {
        let blank = match header {
            None => true,
            Some(h) => std::str::from_utf8(h).is_ok_and(|h| h.trim().is_empty()),
        };
        assert_eq!(err == SignatureError::Missing, blank, "{err}");
        assert!(!err.to_string().is_empty());
        assert!(!err.code().is_empty());
    }
});
