//! The envelope/payload parser and the projection rules behind it.
//!
//! Input: `HEADER_TOPIC 0xFF BODY [0xFF BODY]…` (0xFF never occurs in UTF-8, so
//! it cannot be part of a body that parses). The header topic may be empty (no
//! `X-Thinkific-Topic` header). Each body goes through what a delivery goes
//! through — `thinkific::parse`, `NewEvent::from_envelope` — and the enrollment
//! events among them are folded as one enrollment, checking the rules a store
//! relies on: duplicates change nothing, arrival order changes nothing, and the
//! incremental path (`projection::apply`) ends where a full `fold` ends.
#![no_main]

use chrono::{TimeZone, Utc};
use enrollhook::projection::{self, Apply, EnrollmentEvent};
use enrollhook::store::NewEvent;
use enrollhook::thinkific::{self, Topic};
use libfuzzer_sys::fuzz_target;

/// More bodies add little coverage and make each run slower.
const MAX_BODIES: usize = 4;
const SOURCE: &str = "fuzz";

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let header = parts.next().and_then(|h| std::str::from_utf8(h).ok());
    let header = header.filter(|h| !h.is_empty());

    let mut events: Vec<EnrollmentEvent> = Vec::new();
    for body in parts.take(MAX_BODIES) {
        if let Some(event) = check_delivery(body, header) {
            events.push(event);
        }
    }
    check_projection(events);
});

/// Parses one body as the receive path does; returns its enrollment event, if any.
fn check_delivery(body: &[u8], header: Option<&str>) -> Option<EnrollmentEvent> {
    let envelope = match thinkific::parse(body, header) {
        Ok(e) => e,
        Err(err) => {
            // Every rejection tells the sender something, under a stable code.
            assert!(!err.to_string().is_empty());
            assert!(!err.code().is_empty());
            return None;
        }
    };

    assert!(!envelope.id.is_empty() && envelope.id.len() <= 128);
    assert!(!envelope.id.chars().any(char::is_control));
    // The topic we store must parse back to itself.
    let topic = envelope.topic.to_string();
    assert_eq!(Topic::parse(&topic).as_ref(), Some(&envelope.topic));
    assert_eq!(
        envelope.enrollment.is_some(),
        envelope.enrollment_topic().is_some()
    );
    if let Some(p) = &envelope.enrollment {
        if let Some(pct) = p.percentage_completed {
            assert!(pct.is_finite() && (0.0..=100.0).contains(&pct), "{pct}");
        }
    }

    // A parsed body is valid UTF-8: it is what the event log stores.
    let text = std::str::from_utf8(body).expect("parse accepted non-UTF-8");
    let received_at = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let new = NewEvent::from_envelope(SOURCE, &envelope, text.to_owned(), received_at);
    assert_eq!(new.event_id, envelope.id);
    assert_eq!(new.topic, topic);

    // Re-folds and `rebuild` re-parse the stored body with the stored topic:
    // they must see exactly the event that was applied when it arrived.
    let from_log = thinkific::parse(new.body.as_bytes(), Some(&new.topic))
        .expect("a stored event no longer parses from the log");
    let again = NewEvent::from_envelope(SOURCE, &from_log, new.body.clone(), received_at);
    assert_eq!(again.enrollment, new.enrollment);
    assert_eq!(again.topic, new.topic);
    assert_eq!(again.course_id, new.course_id);

    new.enrollment
}

/// Treats the events as one enrollment's (as a store would see them) and checks
/// that the projection does not depend on duplicates or arrival order.
fn check_projection(mut events: Vec<EnrollmentEvent>) {
    let Some(first) = events.first() else { return };
    let enrollment_id = first.payload.id;
    for e in &mut events {
        e.payload.id = enrollment_id;
    }
    // The store keeps one event per envelope id: the first delivery wins.
    let mut seen = std::collections::HashSet::new();
    events.retain(|e| seen.insert(e.event_id.clone()));

    let folded = projection::fold(SOURCE, events.clone()).expect("events fold to a state");
    assert_eq!(folded.event_count, events.len() as i64);
    assert!(
        folded.progress.is_finite() && (0.0..=100.0).contains(&folded.progress),
        "{}",
        folded.progress
    );
    let now = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let _ = folded.status(now);
    if let Some(days) = folded.days_to_complete() {
        assert!(days.is_finite() && days >= 0.0, "{days}");
    }

    // Duplicates (redeliveries) change nothing.
    let doubled: Vec<_> = events.iter().chain(events.iter()).cloned().collect();
    assert_eq!(projection::fold(SOURCE, doubled).as_ref(), Some(&folded));

    // Arrival order changes nothing: every rotation, and the reverse.
    for k in 1..events.len() {
        let mut rotated = events.clone();
        rotated.rotate_left(k);
        assert_eq!(
            projection::fold(SOURCE, rotated).as_ref(),
            Some(&folded),
            "rotation by {k}"
        );
    }
    let reversed: Vec<_> = events.iter().rev().cloned().collect();
    assert_eq!(projection::fold(SOURCE, reversed).as_ref(), Some(&folded));

    // The store's incremental path: one `apply` per arrival, re-folding what has
    // arrived so far when a late (older) event comes in.
    let mut state = None;
    for (i, e) in events.iter().enumerate() {
        state = Some(match projection::apply(state.as_ref(), SOURCE, e) {
            Apply::Newer(s) => s,
            Apply::Older => projection::fold(SOURCE, events[..=i].to_vec()).unwrap(),
        });
    }
    assert_eq!(state.as_ref(), Some(&folded));
}
