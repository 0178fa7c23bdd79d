//! `GET /api/stream`: what the dashboard keeps open to stay live, as
//! server-sent events, with the API's authentication and per-school scope.
//!
//! - `delivery`: one stored event of the feed (`/api/events`' order), its `id:`
//!   its feed position. A client that reconnects with `Last-Event-ID` resumes
//!   right after it, on any instance sharing the database: nothing missed,
//!   nothing twice. Without it the stream starts at the feed's end.
//! - `quarantine`: the newest quarantined delivery's id, when it changes.
//! - `counters`: deliveries this instance answered (admin only), when they change.
//!
//! The stream reads the store's feed, woken at once when this instance commits
//! (or quarantines) and every [`POLL`] otherwise (another instance's commits).
//! Bounded: at most `--max-streams` at once (503 beyond, shown in `/metrics`);
//! each has [`BUFFER`] messages of room, and a client that does not take one
//! within [`SEND_TIMEOUT`] is dropped (its browser reconnects and resumes).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::mpsc;

use super::auth::Scope;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::metrics::DeliveryTotals;
use crate::store::{EventFilter, PageRequest, StoredEvent};
use crate::views::rfc3339;

/// How often a stream looks for events committed by other instances.
pub const POLL: Duration = Duration::from_secs(1);
/// Messages waiting for one client, at most.
pub const BUFFER: usize = 256;
/// A client that cannot take a message for this long is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Events read from the feed at a time.
const PAGE: u32 = 200;

/// How many streams are open, against `--max-streams`.
pub struct StreamSlots {
    open: AtomicUsize,
    max: usize,
    gauge: Gauge,
}

impl StreamSlots {
    pub fn new(max: usize, gauge: Gauge) -> StreamSlots {
        StreamSlots {
            open: AtomicUsize::new(0),
            max,
            gauge,
        }
    }

    /// A slot, held as long as the stream runs; None when all are taken.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.inc();
        Some(Slot(self.clone()))
    }
}

struct Slot(Arc<StreamSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// One stored event, as a `delivery` message carries it (no body: the
/// dashboard reads what it shows from the API).
#[derive(Serialize)]
struct DeliveryMessage<'a> {
    seq: i64,
    source: &'a str,
    event_id: &'a str,
    topic: &'a str,
    enrollment_id: Option<i64>,
    created_at: Option<String>,
    received_at: String,
}

fn delivery(e: &StoredEvent) -> Event {
    let message = DeliveryMessage {
        seq: e.seq,
        source: &e.source,
        event_id: &e.event_id,
        topic: &e.topic,
        enrollment_id: e.enrollment_id,
        created_at: e.created_at.as_ref().map(rfc3339),
        received_at: rfc3339(&e.received_at),
    };
    json_event("delivery", &message).id(&e.position)
}

fn json_event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).expect("plain data"))
}

/// Live updates: stored deliveries (resumable with `Last-Event-ID`), quarantine
/// and counter changes, as `text/event-stream`.
#[utoipa::path(get, path = "/api/stream", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "the `id:` of the last `delivery` message received: the stream resumes after it")),
    responses(
        (status = 200, description = "server-sent events: `delivery` (id = feed position; data = seq, source, event_id, topic, enrollment_id, created_at, received_at), `quarantine` (data = newest_id), `counters` (admin only; data = stored, duplicate, rejected since this instance started)", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody, description = "Last-Event-ID is not a position this feed gave"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "--max-streams streams are open already")))]
pub(super) async fn stream(
    State(app): State<AppState>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let source = scope.restrict(None)?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Last-Event-ID must be the id of a delivery message of this stream",
                    )
                })?
                .to_owned(),
        ),
        None => None,
    };
    let cursor = match resume {
        Some(position) => {
            // A position this feed never gave is the caller's mistake: say so now.
            let probe = PageRequest {
                limit: 1,
                cursor: Some(position.clone()),
            };
            app.store
                .list_events(&EventFilter::default(), &probe)
                .await?;
            Some(position)
        }
        None => app.store.feed_end().await?,
    };
    let Some(slot) = app.streams.take() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} live streams are open already (--max-streams): close a dashboard tab, or raise --max-streams",
                app.streams.max
            ),
        ));
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    let admin = scope == Scope::All;
    tokio::spawn(async move {
        let _slot = slot;
        pump(&app, source, cursor, admin, &tx).await;
    });
    let messages = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Ok(Sse::new(messages)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Why a stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client went away.
    Gone,
    /// The client did not take a message within the timeout.
    TooSlow,
}

/// Hands `event` to the client's buffer, waiting at most `timeout` for room.
pub async fn offer<T>(tx: &mpsc::Sender<T>, event: T, timeout: Duration) -> Result<(), Ended> {
    match tokio::time::timeout(timeout, tx.send(event)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Gone),
        Err(_) => Err(Ended::TooSlow),
    }
}

async fn pump(
    app: &AppState,
    source: Option<String>,
    mut cursor: Option<String>,
    admin: bool,
    tx: &mpsc::Sender<Event>,
) {
    let mut changes = app.ingestor.changes();
    let mut stopping = app.stopping.clone();
    let filter = EventFilter {
        source: source.clone(),
        ..EventFilter::default()
    };
    let mut newest_quarantine: Option<Option<i64>> = None;
    let mut totals: Option<DeliveryTotals> = None;
    let ended = 'stream: loop {
        changes.borrow_and_update();
        // Everything stored since the cursor, page by page.
        loop {
            let request = PageRequest {
                limit: PAGE,
                cursor: cursor.clone(),
            };
            let page = match app.store.list_events(&filter, &request).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "live stream: cannot read the feed; trying again");
                    break;
                }
            };
            for e in &page.items {
                if let Err(ended) = offer(tx, delivery(e), SEND_TIMEOUT).await {
                    break 'stream ended;
                }
                cursor = Some(e.position.clone());
            }
            if page.next_cursor.is_none() {
                break;
            }
        }
        if let Ok(newest) = app.store.newest_quarantine(source.as_deref()).await
            && newest_quarantine != Some(newest)
        {
            newest_quarantine = Some(newest);
            let data = serde_json::json!({ "newest_id": newest });
            if let Err(ended) = offer(tx, json_event("quarantine", &data), SEND_TIMEOUT).await {
                break ended;
            }
        }
        let now = app.metrics.delivery_totals();
        if admin && totals != Some(now) {
            totals = Some(now);
            if let Err(ended) = offer(tx, json_event("counters", &now), SEND_TIMEOUT).await {
                break ended;
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(POLL) => {}
            _ = stopping.changed() => return,
            _ = tx.closed() => break Ended::Gone,
        }
    };
    if ended == Ended::TooSlow {
        tracing::info!("live stream dropped: the client did not read for {SEND_TIMEOUT:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_not_buffered() {
        let (tx, mut rx) = mpsc::channel(2);
        let wait = Duration::from_millis(50);
        assert_eq!(offer(&tx, 1, wait).await, Ok(()));
        assert_eq!(offer(&tx, 2, wait).await, Ok(()));
        // The buffer is full and nobody reads: given up, not queued.
        assert_eq!(offer(&tx, 3, wait).await, Err(Ended::TooSlow));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(offer(&tx, 4, wait).await, Ok(()));
        drop(rx);
        assert_eq!(offer(&tx, 5, wait).await, Err(Ended::Gone));
    }

    #[test]
    fn slots_stop_at_the_cap_and_come_back_when_a_stream_ends() {
        let gauge = Gauge::default();
        let slots = Arc::new(StreamSlots::new(2, gauge.clone()));
        let a = slots.take().expect("first");
        let _b = slots.take().expect("second");
        assert!(slots.take().is_none());
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(gauge.get(), 1);
        assert!(slots.take().is_some());
    }
}
