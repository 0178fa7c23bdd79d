//! The delivery worker: claims due outbox rows (leased, so several instances
//! never have one delivery in flight twice), sends them concurrently, and
//! records results in batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};

use super::destinations::{self, Destinations, Message, Sent};
use super::policy::{self, AttemptResult, RetrySchedule};
use super::signing;
use crate::store::{ClaimedDelivery, FinishedAttempt, Store};

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub schedule: RetrySchedule,
    /// Per attempt, connect to last byte.
    pub timeout: Duration,
    pub allow_private_destinations: bool,
    /// A subscription whose every delivery has failed for this long is disabled.
    pub disable_after: Duration,
    /// Deliveries in flight at once (per instance).
    pub concurrency: usize,
    /// How often to look for due deliveries when idle and not woken. New
    /// deliveries wake the worker at once (see `crate::store::OutboxWake`);
    /// the poll finds retries that came due, expired leases, and rows whose
    /// wake was lost (another process on SQLite, a dropped `LISTEN`).
    pub poll_interval: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            schedule: RetrySchedule::default(),
            timeout: Duration::from_secs(15),
            allow_private_destinations: false,
            disable_after: Duration::from_secs(5 * 86400),
            concurrency: 256,
            // Retries are due seconds apart at the least (the schedule's
            // granularity), so a second late is noise; idle it costs one
            // claim query a second.
            poll_interval: Duration::from_secs(1),
        }
    }
}

pub struct Forwarder {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Hears other processes' outbox commits (PostgreSQL), if the store can.
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(store: Arc<dyn Store>, config: ForwardConfig) -> anyhow::Result<Forwarder> {
        let destinations = Arc::new(Destinations::new(&config)?);
        let (stop, stopped) = watch::channel(false);
        let listener = store.listen_for_outbox();
        let task = tokio::spawn(run(store, config, destinations, stopped));
        Ok(Forwarder {
            stop,
            task,
            listener,
        })
    }

    /// Stops claiming, lets in-flight deliveries finish, records them.
    pub async fn stop(self) {
        if let Some(listener) = self.listener {
            listener.abort();
        }
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    store: Arc<dyn Store>,
    config: ForwardConfig,
    destinations: Arc<Destinations>,
    mut stopped: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let (results, finished) = mpsc::channel::<FinishedAttempt>(config.concurrency * 4);
    let wake = store.outbox_wake();
    let recorder = tokio::spawn(record(store.clone(), config.clone(), finished));

    while !*stopped.borrow() {
        // Wait for room before claiming, so claimed rows never sit leased in a queue.
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = stopped.changed() => break,
        };
        let room = permits.available_permits() + 1;
        let now = Utc::now();
        // Long enough for the attempt and recording it; short, because a crashed
        // instance's deliveries wait for their lease to expire before a retry.
        let lease = now
            + chrono::Duration::from_std(config.timeout + Duration::from_secs(5))
                .expect("small duration");
        let claimed = match store
            .claim_deliveries(now, lease, room.min(256) as u32)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "forwarding: cannot claim deliveries; retrying in 1 s");
                drop(first);
                sleep_or_stop(&mut stopped, Duration::from_secs(1)).await;
                continue;
            }
        };
        if claimed.is_empty() {
            drop(first);
            // A wake raised while the claim ran is kept, so a commit between
            // the claim and this wait is not missed: it ends the wait at once.
            tokio::select! {
                _ = wake.raised() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        let mut first = Some(first);
        for delivery in claimed {
            let permit = match first.take() {
                Some(p) => p,
                None => permits.clone().acquire_owned().await.expect("never closed"),
            };
            let (destinations, config, results) =
                (destinations.clone(), config.clone(), results.clone());
            tokio::spawn(async move {
                let finished = attempt(&destinations, &config, delivery).await;
                let _ = results.send(finished).await;
                drop(permit);
            });
        }
    }
    // Let in-flight deliveries finish (bounded by the attempt timeout), then flush.
    let _ = permits.acquire_many(config.concurrency as u32).await;
    drop(results);
    let _ = recorder.await;
}

async fn sleep_or_stop(stopped: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopped.changed() => {}
    }
}

/// Writes attempt results in batches: one transaction for all that finished meanwhile.
async fn record(
    store: Arc<dyn Store>,
    config: Arc<ForwardConfig>,
    mut finished: mpsc::Receiver<FinishedAttempt>,
) {
    let mut batch = Vec::with_capacity(256);
    while finished.recv_many(&mut batch, 256).await > 0 {
        let cutoff = Utc::now()
            - chrono::Duration::from_std(config.disable_after).unwrap_or(chrono::Duration::days(5));
        loop {
            match store
                .finish_attempts(
                    &batch,
                    &super::health::Rules {
                        disable_failing_before: cutoff,
                    },
                )
                .await
            {
                Ok(disabled) => {
                    for id in disabled {
                        tracing::warn!(subscription = %id, "forwarding: subscription disabled (410 Gone, or failing for too long); re-enable it with PATCH /api/subscriptions/{id}");
                    }
                    break;
                }
                Err(e) => {
                    // The deliveries stay leased; if we never manage to record
                    // them the lease expires and they are attempted again.
                    tracing::warn!(error = %e, "forwarding: cannot record attempts; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // A finished delivery can make the next one of its enrollment due
        // (ordered subscriptions): claim it now, not at the next poll.
        store.outbox_wake().raise();
        batch.clear();
    }
}

/// The `webhook-id` of an event: stable across retries and replays, and
/// different for every stored event, so a receiver can de-duplicate on it.
///
/// Source names may contain `_`, so `evt_{source}_{id}` alone is ambiguous
/// (`acme` + `x_1` and `acme_x` + `1` both give `evt_acme_x_1`). For a source
/// without `_` the first `_` after `evt_` ends the name, so that form is
/// unambiguous among such sources and is kept: existing installs (the default
/// source is `default`) keep every id they had. A source with `_` gets
/// `evs_{length}_{source}_{id}`: the length makes it unambiguous, and no `evt_`
/// id starts with `evs_`.
///
/// Thinkific gives events of two topics one envelope id (its published
/// `lesson.completed` and `quiz.attempted`). The first event stored with an
/// id keeps the form above (so every event forwarded before the log was
/// keyed by topic keeps its id); a later one of another topic (`id_taken`,
/// decided when it was stored) gets `evq_{source length}_{source}_{topic
/// length}_{topic}_{id}`, unambiguous by its lengths and unlike any `evt_` or
/// `evs_` id.
pub fn message_id(source: &str, event_id: &str, topic: &str, id_taken: bool) -> String {
    if id_taken {
        format!(
            "evq_{}_{source}_{}_{topic}_{event_id}",
            source.len(),
            topic.len()
        )
    } else if source.contains('_') {
        format!("evs_{}_{source}_{event_id}", source.len())
    } else {
        format!("evt_{source}_{event_id}")
    }
}

/// What a test delivery got back (nothing is recorded: no event happened).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TestDelivery {
    /// The destination answered 2xx (a broker: confirmed it holds the message).
    pub ok: bool,
    /// The HTTP status, absent when there was no answer or the destination is a broker.
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// Why it failed (the status, or what went wrong on the way).
    pub error: Option<String>,
    /// The first KiB of the answer's body.
    pub response: Option<String>,
    /// The `webhook-id` it was sent with.
    pub webhook_id: String,
}

/// The topic of a test delivery; no subscription filter applies to it.
pub const TEST_TOPIC: &str = "enrollhook.test";

/// Sends one signed test event to `subscription` as the worker would send a
/// real one (same headers, signature, timeouts and address rules), and says
/// what came back.
pub async fn send_test(
    config: &ForwardConfig,
    subscription: &crate::forward::subscription::Subscription,
) -> anyhow::Result<TestDelivery> {
    // Its own connections: a test must not wait behind, or disturb, the worker's.
    let destinations = Destinations::new(config)?;
    let now = Utc::now();
    let event_id = format!("test_{}", now.timestamp_micros());
    let body = serde_json::json!({
        "id": event_id,
        "resource": "enrollhook",
        "action": "test",
        "created_at": crate::views::rfc3339(&now),
        "payload": {
            "message": "A test delivery from enrollhook: no Thinkific event happened.",
            "subscription_id": subscription.id,
        },
    });
    let delivery = ClaimedDelivery {
        outbox_id: 0,
        attempts: 0,
        subscription: subscription.clone(),
        event: crate::store::StoredEvent {
            seq: 0,
            source: "enrollhook".into(),
            event_id: event_id.clone(),
            topic: TEST_TOPIC.into(),
            created_at: Some(now),
            received_at: now,
            enrollment_id: None,
            body: body.to_string(),
            pruned_at: None,
            position: String::new(),
            id_taken: false,
        },
    };
    let started = Instant::now();
    let Sent { result, response } = send(&destinations, &delivery, now).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, error) = match &result {
        AttemptResult::Response { status, .. } => (
            Some(*status),
            (!(200..300).contains(status)).then(|| policy::describe(&result)),
        ),
        AttemptResult::Failed { error } => (None, Some(error.clone())),
        AttemptResult::Accepted => (None, None),
    };
    Ok(TestDelivery {
        ok: error.is_none(),
        status,
        latency_ms,
        error,
        response,
        webhook_id: message_id("enrollhook", &event_id, TEST_TOPIC, false),
    })
}

async fn attempt(
    destinations: &Destinations,
    config: &ForwardConfig,
    d: ClaimedDelivery,
) -> FinishedAttempt {
    let started = Instant::now();
    let attempted_at = Utc::now();
    let number = d.attempts + 1;
    let Sent { result, response } = send(destinations, &d, attempted_at).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let jitter = rand::rng().random_range(-1.0..=1.0);
    let next = policy::next_step(&result, number, &config.schedule, Utc::now(), jitter);
    let (status, error) = match &result {
        AttemptResult::Response { status, .. } => (
            Some(*status),
            (!(200..300).contains(status)).then(|| policy::describe(&result)),
        ),
        AttemptResult::Failed { error } => (None, Some(error.clone())),
        AttemptResult::Accepted => (None, None),
    };
    tracing::info!(
        subscription = %d.subscription.id,
        event_id = %d.event.event_id,
        attempt = number,
        status,
        error = error.as_deref().unwrap_or(""),
        latency_ms,
        next = ?next,
        "forward"
    );
    FinishedAttempt {
        outbox_id: d.outbox_id,
        subscription_id: d.subscription.id.clone(),
        event_seq: d.event.seq,
        attempt: number,
        attempted_at,
        status,
        latency_ms,
        error,
        response,
        next,
    }
}

/// Signs the event and hands it to the subscription's destination.
async fn send(
    destinations: &Destinations,
    d: &ClaimedDelivery,
    now: chrono::DateTime<Utc>,
) -> Sent {
    let s = &d.subscription;
    let Some(destination) = destinations.for_url(&s.url) else {
        return Sent::failed(format!(
            "the URL's scheme is not one enrollhook sends to: use {}",
            destinations::SCHEMES
        ));
    };
    let id = message_id(
        &d.event.source,
        &d.event.event_id,
        &d.event.topic,
        d.event.id_taken,
    );
    let timestamp = now.timestamp();
    let body = d.event.body.as_bytes();
    let signature = match signing::signature_header(&s.signing_secrets(now), &id, timestamp, body) {
        Ok(sig) => sig,
        Err(e) => return Sent::failed(e.to_string()),
    };
    let message = Message {
        id: &id,
        topic: &d.event.topic,
        source: &d.event.source,
        event_time: d.event.created_at.unwrap_or(d.event.received_at),
        timestamp,
        signature: &signature,
        body,
        headers: &s.headers,
    };
    destination.send(s, &message).await
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn message_ids_never_collide_across_sources() {
        // The collision of the old encoding, and its neighbours.
        let pairs = [
            ("acme", "x_1"),
            ("acme_x", "1"),
            ("acme_x_1", ""),
            ("a", "cme_x_1"),
            ("acme_x", "_1"),
            ("acme__x", "1"),
            ("default", "20190131192004041953291"),
        ];
        let ids: std::collections::HashSet<String> = pairs
            .iter()
            .map(|(s, e)| message_id(s, e, "order.created", false))
            .collect();
        assert_eq!(ids.len(), pairs.len(), "{ids:?}");
        // Sources without `_` keep the ids they always had.
        assert_eq!(
            message_id("default", "42", "order.created", false),
            "evt_default_42"
        );
        assert_eq!(
            message_id("acme_x", "1", "order.created", false),
            "evs_6_acme_x_1"
        );
    }

    #[test]
    fn an_id_shared_by_two_topics_gives_two_message_ids() {
        // Thinkific's published lesson.completed and quiz.attempted share this id.
        let id = "20190131192004041953291";
        let first = message_id("default", id, "lesson.completed", false);
        let second = message_id("default", id, "quiz.attempted", true);
        assert_eq!(first, format!("evt_default_{id}"), "the first keeps its id");
        assert_eq!(second, format!("evq_7_default_14_quiz.attempted_{id}"));
        // The taken form is injective and never equals an untaken one, even
        // for ids and names built to look alike.
        let cases = [
            ("a", "b_1", "x.y", true),
            ("a_1", "b", "x.y", true),
            ("a", "1", "b.c_x.y", true),
            ("a", "x.y_1", "b.c", true),
            ("evq_1_a_3_x.y", "1", "t.t", false),
            ("a", "3_x.y_1", "t.t", false),
            ("a_3", "x.y_1", "t.t", false),
        ];
        let ids: std::collections::HashSet<String> = cases
            .iter()
            .map(|(s, e, t, taken)| message_id(s, e, t, *taken))
            .collect();
        assert_eq!(ids.len(), cases.len(), "{ids:?}");
    }
}
