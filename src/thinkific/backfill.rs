//! `enrollhook thinkific backfill`: load the enrollments that existed before
//! the webhooks pointed at enrollhook, from Thinkific's REST API.
//!
//! The event log is the truth, so a backfilled enrollment becomes an event in
//! it, and the projection follows from the same rules as for webhooks:
//!
//! - topic `enrollment.backfill` (ours: Thinkific never sends it);
//! - the body is an envelope around the REST enrollment exactly as Thinkific
//!   listed it: `{"id":"backfill-…","resource":"enrollment","action":"backfill",
//!   "payload":{…REST item…}}`, read with the REST API's conventions (progress
//!   as a fraction 0.0–1.0, `completed`, `is_free_trial`, flat user fields; see
//!   `thinkific::envelope`);
//! - the event id is derived from (enrollment id, `updated_at`), so running the
//!   backfill again stores nothing new, and an enrollment that changed since is
//!   stored as its newer version;
//! - no envelope `created_at`: its version is its `updated_at`, so a webhook
//!   newer than it wins, it never overrides newer webhook data, and on the same
//!   `updated_at` the webhook (which has an envelope time) wins the tie;
//! - it is stored through `Store::append_batch` like every delivery, on SQLite
//!   and PostgreSQL alike, so `rebuild` derives the same projection;
//! - it is not forwarded to `*` or `enrollment.*` subscriptions, only to those
//!   naming `enrollment.backfill` (see `forward::subscription::topic_matches`);
//! - each enrollment is compared with what the projection held before it was
//!   stored (see [`crate::thinkific::reconcile`]): the run's report says which
//!   the webhooks missed, which they had behind, and which agree.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sha2::Digest;

use crate::store::{AppendOutcome, NewEvent, Store};
use crate::thinkific::reconcile::{self, Reconciliation};
use crate::thinkific::rest::{MAX_PAGE_SIZE, RestClient};
use crate::thinkific::{self, BACKFILL_TOPIC};

/// Why one REST enrollment could not be stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("enrollment {id}: {why}")]
pub struct Unusable {
    /// The enrollment id when it could be read, else `?`.
    pub id: String,
    pub why: String,
}

/// The deterministic event id of a REST enrollment: `backfill-{id}-{updated_at}`
/// (UTC, microseconds), or with a digest of the item when it has no `updated_at`.
pub fn backfill_event_id(
    enrollment_id: i64,
    updated_at: Option<DateTime<Utc>>,
    item: &str,
) -> String {
    match updated_at {
        Some(t) => format!(
            "backfill-{enrollment_id}-{}",
            t.format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ),
        None => {
            let digest = sha2::Sha256::digest(item.as_bytes());
            format!("backfill-{enrollment_id}-{}", &hex::encode(digest)[..16])
        }
    }
}

/// A REST enrollment (`item`, as Thinkific sent it) as an event of `source`.
pub fn event_from_rest(
    source: &str,
    item: &RawValue,
    received_at: DateTime<Utc>,
) -> Result<NewEvent, Unusable> {
    let unusable = |id: String, why: String| Unusable { id, why };
    if !item.get().trim_start().starts_with('{') {
        return Err(unusable("?".into(), "not a JSON object".into()));
    }
    // The id first: read through the envelope parser with a placeholder event id.
    let wrap = |event_id: &str| {
        format!(
            r#"{{"id":{},"resource":"enrollment","action":"backfill","payload":{}}}"#,
            serde_json::Value::String(event_id.to_owned()),
            item.get()
        )
    };
    let provisional = thinkific::parse(wrap("backfill").as_bytes(), None)
        .map_err(|e| unusable(rest_id(item), e.to_string()))?;
    let payload = provisional
        .enrollment
        .expect("an enrollment topic yields an enrollment payload");
    let event_id = backfill_event_id(payload.id, payload.updated_at, item.get());
    let body = wrap(&event_id);
    let envelope = thinkific::parse(body.as_bytes(), None)
        .map_err(|e| unusable(payload.id.to_string(), e.to_string()))?;
    debug_assert_eq!(envelope.topic.to_string(), BACKFILL_TOPIC);
    Ok(NewEvent::from_envelope(
        source,
        &envelope,
        body,
        received_at,
    ))
}

/// The `id` of an item that failed to parse, for the message.
fn rest_id(item: &RawValue) -> String {
    serde_json::from_str::<serde_json::Value>(item.get())
        .ok()
        .and_then(|v| v.get("id").map(|id| id.to_string()))
        .unwrap_or_else(|| "?".into())
}

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub source: crate::ids::SourceName,
    /// Only enrollments updated after this time (RFC 3339), as Thinkific filters.
    pub updated_after: Option<DateTime<Utc>>,
    /// Enrollments per page (Thinkific allows up to 250).
    pub page_size: u32,
}

#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    pub pages: u32,
    /// What Thinkific said the listing holds.
    pub total_pages: Option<u32>,
    pub total_items: Option<u64>,
    pub read: u64,
    pub stored: u64,
    /// Already in the log (an earlier backfill saw the same version).
    pub known: u64,
    /// Items that could not be read, with the first few reasons.
    pub unusable: u64,
    pub examples: Vec<Unusable>,
    /// The newest `updated_at` seen.
    pub newest_updated_at: Option<DateTime<Utc>>,
    /// The `--updated-after` for the next run (see [`resume_point`]).
    pub resume_from: Option<DateTime<Utc>>,
    pub elapsed: Duration,
    /// What the webhooks had told us, against what the API listed.
    pub reconciliation: Reconciliation,
}

/// Margin for the difference between our clock and Thinkific's.
const CLOCK_MARGIN_MINUTES: i64 = 5;

/// Where the next run can start and miss nothing: the newest `updated_at`
/// seen, but no later than the moment this run started (less a margin for
/// clock skew), because an enrollment changed while we paged may have moved
/// past our position in the listing. Overlap only costs events already known.
pub fn resume_point(
    newest_updated_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
) -> DateTime<Utc> {
    let before_start = started_at - chrono::Duration::minutes(CLOCK_MARGIN_MINUTES);
    newest_updated_at.map_or(before_start, |t| t.min(before_start))
}

/// `query[updated_after]` in the form Thinkific documents ("returned and
/// expected"): `YYYY-MM-DDTHH:MM:SSZ`, floored to the second. Flooring only
/// widens the window; the resume point's overlap already tolerates that.
pub fn updated_after_param(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Pages through the enrollments and stores each one; `progress` is called
/// after every page. Each page is stored in one transaction before the next is
/// fetched, so an interrupted backfill keeps what it stored.
pub async fn backfill(
    client: &RestClient,
    store: &dyn Store,
    opts: &BackfillOptions,
    mut progress: impl FnMut(&BackfillReport),
) -> anyhow::Result<BackfillReport> {
    let started = Instant::now();
    let started_at = Utc::now();
    let mut report = BackfillReport::default();
    let updated_after = opts.updated_after.map(|t| updated_after_param(&t));
    let page_size = opts.page_size.clamp(1, MAX_PAGE_SIZE);
    let mut page = 1;
    loop {
        let listed = client
            .enrollments(page, page_size, updated_after.as_deref())
            .await?;
        let received_at = Utc::now();
        let mut events = Vec::with_capacity(listed.items.len());
        for item in &listed.items {
            report.read += 1;
            match event_from_rest(&opts.source, item, received_at) {
                Ok(event) => {
                    let updated = event.enrollment.as_ref().and_then(|e| e.payload.updated_at);
                    report.newest_updated_at = report.newest_updated_at.max(updated);
                    events.push(event);
                }
                Err(why) => {
                    report.unusable += 1;
                    if report.examples.len() < 10 {
                        report.examples.push(why);
                    }
                }
            }
        }
        if !events.is_empty() {
            // What we knew of each before storing the API's copy.
            for event in &events {
                let Some(api) = event.enrollment.as_ref().map(|e| &e.payload) else {
                    continue;
                };
                let known = store.get_enrollment(&opts.source, api.id).await?;
                report
                    .reconciliation
                    .add(api, reconcile::compare(known.as_ref(), api));
            }
            let outcomes = store.append_batch(&events).await.map_err(|e| {
                anyhow::anyhow!(
                    "storing page {page} failed after {} enrollments were stored: {e}. \
                     Run the backfill again: what is stored is skipped",
                    report.stored
                )
            })?;
            let (stored, known) = AppendOutcome::tally(&outcomes);
            report.stored += stored;
            report.known += known;
        }
        report.pages += 1;
        report.total_pages = listed.pagination.total_pages.or(report.total_pages);
        report.total_items = listed.pagination.total_items.or(report.total_items);
        progress(&report);
        match next_page(page, &listed.pagination, listed.items.len()) {
            Some(next) => page = next,
            None => break,
        }
    }
    // So the backfilled enrollments are there when it reports done.
    store.sync_projection().await?;
    report.resume_from = Some(resume_point(report.newest_updated_at, started_at));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The page after `page`, if any: Thinkific's `next_page`, else (when it is
/// missing) the next page while `total_pages` says there are more. An empty
/// page ends the listing whatever the meta says, and a `next_page` that does
/// not move forward is not followed (it would loop forever).
pub fn next_page(
    page: u32,
    pagination: &crate::thinkific::rest::Pagination,
    items: usize,
) -> Option<u32> {
    if items == 0 {
        return None;
    }
    match (pagination.next_page, pagination.total_pages) {
        (Some(next), _) if next > page => Some(next),
        (Some(_), _) => None,
        (None, Some(total)) if page < total => Some(page + 1),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::fold;
    use crate::thinkific::EnrollmentTopic;
    use crate::thinkific::rest::Pagination;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    /// Thinkific's documented example enrollment.
    const EXAMPLE: &str = r#"{"id":1,"user_email":"bob@example.com","user_name":"Bob Smith","user_id":1,"course_name":"My Course","course_id":1,"percentage_completed":1.0,"expired":false,"is_free_trial":false,"completed":true,"started_at":"2018-01-01T01:01:00Z","activated_at":"2018-01-01T01:01:00Z","completed_at":"2018-01-31T01:01:00Z","updated_at":"2018-01-31T01:01:00Z","expiry_date":"2019-01-01T01:01:00Z"}"#;

    #[test]
    fn a_rest_enrollment_becomes_a_backfill_event() {
        let now = Utc::now();
        let e = event_from_rest("acme", &raw(EXAMPLE), now).unwrap();
        assert_eq!(e.topic, "enrollment.backfill");
        assert_eq!(e.source, "acme");
        assert_eq!(e.event_id, "backfill-1-2018-01-31T01:01:00.000000Z");
        assert_eq!(e.created_at, None);
        assert_eq!(e.course_id, Some(1));
        // The REST item is kept as it came, inside the envelope.
        assert!(
            e.body.ends_with(&format!(r#""payload":{EXAMPLE}}}"#)),
            "{}",
            e.body
        );
        let ev = e.enrollment.clone().unwrap();
        assert_eq!(ev.topic, EnrollmentTopic::Backfill);
        let p = &ev.payload;
        assert_eq!(p.percentage_completed, Some(100.0));
        assert_eq!(p.completed, Some(true));
        assert_eq!(p.free_trial, Some(false));
        assert_eq!(p.email.as_deref(), Some("bob@example.com"));
        assert_eq!(
            (p.first_name.as_deref(), p.last_name.as_deref()),
            (Some("Bob"), Some("Smith"))
        );
        assert_eq!(p.course_name.as_deref(), Some("My Course"));
        // What the log holds reads back to the same event (rebuilds agree).
        let again = crate::store::enrollment_event_from_log(&e.topic, &e.event_id, &e.body)
            .unwrap()
            .unwrap();
        assert_eq!(again, ev);
        let s = fold("acme", [ev]).unwrap();
        assert!(s.completed);
        assert_eq!(s.progress, 100.0);
    }

    #[test]
    fn percentages_are_fractions_and_normalised_to_0_100() {
        let item = |pct: &str| {
            raw(&format!(
                r#"{{"id":5,"percentage_completed":{pct},"updated_at":"2024-01-01T00:00:00Z"}}"#
            ))
        };
        let pct = |json: &str| {
            event_from_rest("s", &item(json), Utc::now())
                .map(|e| e.enrollment.unwrap().payload.percentage_completed)
        };
        assert_eq!(pct("0.24"), Ok(Some(24.0)));
        assert_eq!(pct("0.29"), Ok(Some(29.0)));
        assert_eq!(pct("0"), Ok(Some(0.0)));
        assert_eq!(pct("1"), Ok(Some(100.0)));
        assert_eq!(pct("\"0.5\""), Ok(Some(50.0)), "a string is a fraction too");
        assert_eq!(pct("null"), Ok(None));
        let e = pct("24.0").unwrap_err();
        assert_eq!(e.id, "5");
        assert!(e.why.contains("outside 0.0–1.0"), "{e}");
    }

    #[test]
    fn event_ids_are_deterministic() {
        let a = event_from_rest("s", &raw(EXAMPLE), Utc::now()).unwrap();
        let b = event_from_rest("s", &raw(EXAMPLE), Utc::now()).unwrap();
        assert_eq!(a.event_id, b.event_id);
        // A newer version of the same enrollment is a new event.
        let newer = EXAMPLE.replace(
            r#""updated_at":"2018-01-31T01:01:00Z""#,
            r#""updated_at":"2018-02-01T00:00:00.5Z""#,
        );
        let c = event_from_rest("s", &raw(&newer), Utc::now()).unwrap();
        assert_eq!(c.event_id, "backfill-1-2018-02-01T00:00:00.500000Z");
        // Without updated_at: a digest of the item.
        let bare = r#"{"id":3,"percentage_completed":0.5}"#;
        let d = event_from_rest("s", &raw(bare), Utc::now()).unwrap();
        assert!(d.event_id.starts_with("backfill-3-"), "{}", d.event_id);
        assert_eq!(
            d.event_id,
            event_from_rest("s", &raw(bare), Utc::now())
                .unwrap()
                .event_id
        );
    }

    #[test]
    fn unusable_items_say_why() {
        let e = event_from_rest("s", &raw("[1]"), Utc::now()).unwrap_err();
        assert!(e.why.contains("not a JSON object"));
        let e = event_from_rest("s", &raw(r#"{"user_id":1}"#), Utc::now()).unwrap_err();
        assert!(e.why.contains("needs its id"), "{e}");
        let e = event_from_rest(
            "s",
            &raw(r#"{"id":9,"updated_at":"yesterday"}"#),
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(e.id, "9");
        assert!(e.why.contains("updated_at"), "{e}");
    }

    #[test]
    fn resuming_starts_no_later_than_the_run() {
        let start = chrono::TimeZone::with_ymd_and_hms(&Utc, 2024, 5, 1, 12, 0, 0).unwrap();
        let old = start - chrono::Duration::days(3);
        assert_eq!(resume_point(Some(old), start), old);
        // Changed while we paged: the next run looks from before this one began.
        let during = start + chrono::Duration::seconds(30);
        let expected = start - chrono::Duration::minutes(5);
        assert_eq!(resume_point(Some(during), start), expected);
        assert_eq!(resume_point(None, start), expected);
    }

    #[test]
    fn paging_follows_next_page_and_stops() {
        let p = |next: Option<u32>, total: Option<u32>| Pagination {
            current_page: None,
            next_page: next,
            total_pages: total,
            total_items: None,
        };
        assert_eq!(next_page(1, &p(Some(2), Some(3)), 250), Some(2));
        assert_eq!(next_page(3, &p(None, Some(3)), 250), None);
        assert_eq!(next_page(1, &p(None, Some(3)), 250), Some(2));
        assert_eq!(next_page(2, &p(Some(2), None), 250), None, "no loop");
        assert_eq!(
            next_page(1, &p(Some(2), Some(3)), 0),
            None,
            "empty page ends"
        );
        assert_eq!(next_page(1, &p(None, None), 250), None);
    }
}
