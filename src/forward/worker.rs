//! The delivery worker: claims due outbox rows (leased, so several instances
//! never have one delivery in flight twice), sends them concurrently, and
//! records results in batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};

use super::destinations::{self, Destinations, Kind, Message, Sent};
use super::policy::{self, AttemptResult, RetrySchedule};
use super::shaping::{BatchEnrollments, Enrollments, ShapeError, Shapers};
use super::signing;
use super::subscription::Subscription;
use super::template::Rendered;
use crate::log_budget::DeliveryLog;
use crate::store::{ClaimRoom, ClaimedDelivery, FinishedAttempt, Store};

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
    /// Deliveries of one HTTP subscription in flight at once (per instance),
    /// so that a destination that hangs, or one subscription's backlog,
    /// leaves room for the others; a broker subscription (one connection,
    /// publishes pipelined on it) takes twice as many.
    pub per_subscription: usize,
    /// How often to look for due deliveries when idle and not woken. New
    /// deliveries wake the worker at once (see `crate::store::OutboxWake`);
    /// the poll finds retries that came due, expired leases, and rows whose
    /// wake was lost (another process on SQLite, a dropped `LISTEN`).
    pub poll_interval: Duration,
    /// When alerts (`enrollhook.*`) are raised.
    pub alerts: crate::alerts::AlertConfig,
}

impl ForwardConfig {
    /// The most deliveries of `s` in flight at once: `per_subscription`, twice
    /// that for a broker (its publishes share one connection, and a broker
    /// confirms persistent messages after a disk sync, tens of milliseconds).
    pub fn in_flight_cap(&self, s: &Subscription) -> u32 {
        let cap = match Kind::of_url(&s.url) {
            Some(Kind::Http) | None => self.per_subscription,
            Some(_) => self.per_subscription.saturating_mul(2),
        };
        cap.clamp(1, self.concurrency.max(1)) as u32
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            schedule: RetrySchedule::default(),
            timeout: Duration::from_secs(15),
            allow_private_destinations: false,
            disable_after: Duration::from_secs(5 * 86400),
            concurrency: 1024,
            per_subscription: 256,
            // Retries are due seconds apart at the least (the schedule's
            // granularity), so a second late is noise; idle it costs one
            // claim query a second.
            poll_interval: Duration::from_secs(1),
            alerts: crate::alerts::AlertConfig::default(),
        }
    }
}

/// After a claim that took everything due, the next one waits for new rows
/// (a commit's wake) and comes no sooner than this after it: under load one
/// claim then takes the rows of several commits instead of one each (a claim
/// per commit, and an empty one after it, were most of the log writer's
/// forwarding work). At light load commits are further apart than this, so a
/// forward leaves as soon as its event is stored.
const CLAIM_SPACING: Duration = Duration::from_millis(10);
/// Finished attempts wait this long for others to be recorded with them, in
/// one job of the log writer instead of one per handful (a delivery has
/// already reached its destination; only its record waits).
const RECORD_GATHERING: Duration = Duration::from_millis(25);
/// The most attempts recorded in one job.
const RECORD_AT_MOST: usize = 256;

pub struct Forwarder {
    stop: watch::Sender<bool>,
    running: Running,
    /// Hears other processes' outbox commits (PostgreSQL), if the store can.
    listener: Option<tokio::task::JoinHandle<()>>,
}

/// Where the worker runs.
enum Running {
    /// A task of the server's runtime.
    Here(tokio::task::JoinHandle<()>),
    /// Threads of its own, with their own runtime; says when it is done.
    Apart(tokio::sync::oneshot::Receiver<()>),
}

impl Forwarder {
    /// Starts the worker. Where the store allows it (SQLite), it runs on
    /// threads of its own: on the server's runtime, its tasks and the
    /// deliveries' would share one queue. At the same priority as the
    /// deliveries: at nice 10 it waited for a core as long as it ran once the
    /// cores were busy, and two templated subscriptions at 5,000 events/s
    /// fell into a backlog they did not leave during the load. At nice 0 they
    /// keep up over 20 s and build half the backlog over 60 s; ingest beside
    /// one subscription at 3,000 events/s stays within 1.5 × of none, though
    /// under a backlog deliveries now share the cores with it (BENCHMARKS.md).
    pub fn start(store: Arc<dyn Store>, config: ForwardConfig) -> anyhow::Result<Forwarder> {
        let destinations = Arc::new(Destinations::new(&config)?);
        let (stop, stopped) = watch::channel(false);
        let listener = store.listen_for_outbox();
        let running = if store.usable_from_any_runtime() {
            let (done, finished) = tokio::sync::oneshot::channel();
            // As many workers as the server's (brokers' clients do their I/O
            // on them too).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(crate::background::runtime_workers())
                .enable_all()
                .thread_name("forwarder")
                .build()?;
            std::thread::Builder::new()
                .name("forwarder".into())
                .spawn(move || {
                    // The claim loop is a task of the runtime, not the thread
                    // blocking on it: the deliveries it spawns then go on its
                    // worker's own queue, instead of waking the worker from
                    // outside for each one (two threads taking turns).
                    runtime.block_on(async {
                        let _ = tokio::spawn(run(store, config, destinations, stopped)).await;
                    });
                    let _ = done.send(());
                })?;
            Running::Apart(finished)
        } else {
            Running::Here(tokio::spawn(run(store, config, destinations, stopped)))
        };
        Ok(Forwarder {
            stop,
            running,
            listener,
        })
    }

    /// Stops claiming, lets in-flight deliveries finish, records them.
    pub async fn stop(self) {
        if let Some(listener) = self.listener {
            listener.abort();
        }
        let _ = self.stop.send(true);
        match self.running {
            Running::Here(task) => {
                let _ = task.await;
            }
            Running::Apart(finished) => {
                let _ = finished.await;
            }
        }
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
    let shared = Arc::new(Shared {
        destinations,
        config: config.clone(),
        shapers: Shapers::default(),
        log: DeliveryLog::start(
            "forward attempts",
            || tracing::enabled!(target: "enrollhook::forward::worker", tracing::Level::DEBUG),
        ),
    });

    let in_flight = Arc::new(InFlight::default());
    // Set after a claim that took everything due: wait for new rows, and
    // claim no sooner than CLAIM_SPACING after it.
    let mut caught_up_at: Option<tokio::time::Instant> = None;
    while !*stopped.borrow() {
        if let Some(at) = caught_up_at.take() {
            tokio::select! {
                _ = wake.raised() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = stopped.changed() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at + CLAIM_SPACING) => {}
                _ = stopped.changed() => break,
            }
        }
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
        let room = in_flight.room(room.min(256) as u32, &config);
        let claimed_at = tokio::time::Instant::now();
        let claimed = match store.claim_deliveries(now, lease, &room).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "forwarding: cannot claim deliveries; retrying in 1 s");
                drop(first);
                sleep_or_stop(&mut stopped, Duration::from_secs(1)).await;
                continue;
            }
        };
        // Everything due was taken: neither the claim's room nor any
        // subscription's was filled. (A wake raised while the claim ran is
        // kept, so a commit between the claim and the wait is not missed: it
        // ends the wait at once.)
        if claimed.len() < room.total as usize && !fills_a_room(&claimed, &room) {
            caught_up_at = Some(claimed_at);
        }
        if claimed.is_empty() {
            drop(first);
            continue;
        }
        // Templated deliveries render with their enrollment: read those in
        // one statement for the batch, after the others are on their way.
        let (templated, plain): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .partition(|d| d.subscription.template.is_some());
        let templated_events: Vec<Arc<crate::store::StoredEvent>> =
            templated.iter().map(|d| d.event.clone()).collect();
        for delivery in plain.iter().chain(&templated) {
            in_flight.start(&delivery.subscription, &config);
        }
        let mut first = Some(first);
        let mut enrollments = None;
        for delivery in plain.into_iter().chain(templated) {
            if enrollments.is_none() && delivery.subscription.template.is_some() {
                enrollments = Some(read_enrollments(&*store, &templated_events, now).await);
            }
            let permit = match first.take() {
                Some(p) => p,
                None => permits.clone().acquire_owned().await.expect("never closed"),
            };
            let (shared, results, store, enrollments, in_flight) = (
                shared.clone(),
                results.clone(),
                store.clone(),
                enrollments.clone().flatten(),
                in_flight.clone(),
            );
            tokio::spawn(async move {
                let from = match &enrollments {
                    Some(batch) => Enrollments::Batch(batch),
                    None => Enrollments::Store(&*store),
                };
                let subscription = delivery.subscription.id.clone();
                let finished = attempt(&shared, from, delivery).await;
                let _ = results.send(finished).await;
                in_flight.end(&subscription);
                drop(permit);
            });
        }
    }
    // Let in-flight deliveries finish (bounded by the attempt timeout), then flush.
    let _ = permits.acquire_many(config.concurrency as u32).await;
    drop(results);
    let _ = recorder.await;
}

/// Whether a claim took as many deliveries of some subscription as it had
/// room for (more of them may be due).
fn fills_a_room(claimed: &[ClaimedDelivery], room: &ClaimRoom) -> bool {
    let mut taken: HashMap<&str, u32> = HashMap::new();
    for d in claimed {
        *taken.entry(d.subscription.id.as_str()).or_default() += 1;
    }
    taken.iter().any(|(id, n)| *n >= room.of(id))
}

/// Deliveries in flight per subscription: what room each has left in a claim.
#[derive(Default)]
struct InFlight(std::sync::Mutex<HashMap<String, (u32, u32)>>);

impl InFlight {
    /// The claim's room: `total` in all; a subscription with deliveries in
    /// flight, its cap minus those.
    fn room(&self, total: u32, config: &ForwardConfig) -> ClaimRoom {
        let in_flight = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ClaimRoom {
            total,
            per_subscription: config.per_subscription as u32,
            busy: in_flight
                .iter()
                .map(|(id, (n, cap))| (id.clone(), cap.saturating_sub(*n)))
                .collect(),
        }
    }

    /// One more delivery of `s` in flight; its cap is `config`'s.
    fn start(&self, s: &Subscription, config: &ForwardConfig) {
        let cap = config.in_flight_cap(s);
        let mut in_flight = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = in_flight.entry(s.id.clone()).or_insert((0, cap));
        entry.0 += 1;
    }

    fn end(&self, subscription: &str) {
        let mut in_flight = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = in_flight.get_mut(subscription) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(subscription);
            }
        }
    }
}

/// The enrollments of a batch's templated deliveries, read together, and
/// what each event's templates see; None when the read fails (each delivery
/// then reads its own, and retries if it must).
async fn read_enrollments(
    store: &dyn Store,
    events: &[Arc<crate::store::StoredEvent>],
    now: chrono::DateTime<Utc>,
) -> Option<Arc<BatchEnrollments>> {
    let wanted = events
        .iter()
        .filter_map(|e| e.enrollment_id.map(|id| (e.source.as_str(), id, e.seq)));
    match BatchEnrollments::read(store, wanted).await {
        Ok(mut batch) => {
            batch.prepare(events.iter().map(|e| &**e), now);
            Some(Arc::new(batch))
        }
        Err(e) => {
            tracing::warn!(error = %e, "forwarding: cannot read the enrollments of a batch of templated deliveries; reading them one by one");
            None
        }
    }
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
    let mut batch = Vec::with_capacity(RECORD_AT_MOST);
    while finished.recv_many(&mut batch, RECORD_AT_MOST).await > 0 {
        let until = tokio::time::Instant::now() + RECORD_GATHERING;
        while batch.len() < RECORD_AT_MOST {
            let room = RECORD_AT_MOST - batch.len();
            match tokio::time::timeout_at(until, finished.recv_many(&mut batch, room)).await {
                Ok(n) if n > 0 => {}
                _ => break, // the time is up, or the workers are gone
            }
        }
        let cutoff = Utc::now()
            - chrono::Duration::from_std(config.disable_after).unwrap_or(chrono::Duration::days(5));
        loop {
            match store
                .finish_attempts(
                    &batch,
                    Arc::new(super::health::Rules {
                        disable_failing_before: cutoff,
                    }),
                )
                .await
            {
                Ok(disabled) => {
                    for id in &disabled {
                        tracing::warn!(subscription = %id, "forwarding: subscription disabled (410 Gone, or failing for too long); re-enable it with PATCH /api/subscriptions/{id}");
                    }
                    let alerts = crate::alerts::raise::after_attempts(
                        store.as_ref(),
                        &config.alerts,
                        &batch,
                        &disabled,
                    );
                    if let Err(e) = alerts.await {
                        tracing::warn!(error = %e, "alerts: cannot raise the alerts of recorded attempts");
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

/// The request a test renders: what the destination would receive.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TestRequest {
    /// POST, PUT or PATCH; `PUBLISH` for a broker destination.
    pub method: String,
    /// Where it goes (a password in it shown as `***`).
    pub url: String,
    /// Every header (property, for a broker) in the order they are sent.
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// The exact bytes sent and signed, as text.
    pub body: String,
}

/// What a test rendered and, when sent, what came back (nothing is recorded:
/// no delivery happened).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TestDelivery {
    /// The request went out (`?send=true`); otherwise it was only rendered.
    pub sent: bool,
    /// Rendered (and, when sent, the destination answered 2xx or a broker
    /// confirmed it holds the message).
    pub ok: bool,
    /// The event rendered: `SOURCE/EVENT_ID`, or `sample:NAME`.
    pub event: String,
    pub topic: String,
    /// What is (or would be) sent; absent when the template cannot render.
    pub request: Option<TestRequest>,
    /// The HTTP status, absent when nothing was sent, there was no answer or
    /// the destination is a broker.
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// Why it failed (the template's error, the status, or what went wrong on the way).
    pub error: Option<String>,
    /// The first KiB of the answer's body.
    pub response: Option<String>,
    /// The `webhook-id` it was (or would be) sent with: a test's own, so a
    /// receiver's de-duplication never drops the real delivery.
    pub webhook_id: String,
}

/// The topic of a test delivery; no subscription filter applies to it.
pub const TEST_TOPIC: &str = "enrollhook.test";

/// What a test renders: a stored event, or a built-in one.
#[derive(Debug, Clone)]
pub enum TestEvent {
    /// `enrollhook.test`: says no Thinkific event happened.
    Ping,
    /// A Thinkific sample by name (`completed`, `enrollment.progress`…;
    /// see [`crate::thinkific::samples::by_name`]).
    Sample(String),
    /// An event from the log, rendered with its enrollment as it is now.
    Stored(Box<crate::store::StoredEvent>),
}

/// Renders the request `subscription` would send for `event`, as the worker
/// would (same template, headers, signature and address rules), and sends it
/// when `send` is set. A test never queues or records anything.
pub async fn test_delivery(
    config: &ForwardConfig,
    store: &dyn Store,
    subscription: &crate::forward::subscription::Subscription,
    event: TestEvent,
    send_it: bool,
) -> anyhow::Result<TestDelivery> {
    let now = Utc::now();
    let test_id = format!("test_{}", now.timestamp_micros());
    let (label, event) = match event {
        TestEvent::Ping => {
            let body = serde_json::json!({
                "id": test_id,
                "resource": "enrollhook",
                "action": "test",
                "created_at": crate::views::rfc3339(&now),
                "payload": {
                    "message": "A test delivery from enrollhook: no Thinkific event happened.",
                    "subscription_id": subscription.id,
                },
            });
            (
                "sample:ping".to_owned(),
                test_event("enrollhook", &test_id, TEST_TOPIC, body.to_string(), now),
            )
        }
        TestEvent::Sample(name) => {
            let body = crate::thinkific::samples::by_name(&name).ok_or_else(|| {
                anyhow::anyhow!(
                    "no sample `{name}`: use created, progress, completed, lesson, order or signup"
                )
            })?;
            let envelope: serde_json::Value = serde_json::from_str(body)?;
            let topic = format!(
                "{}.{}",
                envelope["resource"].as_str().unwrap_or_default(),
                envelope["action"].as_str().unwrap_or_default()
            );
            let event_id = envelope["id"].as_str().unwrap_or(&test_id).to_owned();
            (
                format!("sample:{name}"),
                test_event("default", &event_id, &topic, body.to_owned(), now),
            )
        }
        TestEvent::Stored(e) => (format!("{}/{}", e.source, e.event_id), *e),
    };
    // A test's own id: the receiver must not take it for the real delivery.
    let id = message_id("enrollhook", &test_id, TEST_TOPIC, false);
    let delivery = ClaimedDelivery {
        outbox_id: 0,
        attempts: 0,
        subscription: Arc::new(subscription.clone()),
        event: Arc::new(event),
        traceparent: None,
    };
    let mut report = TestDelivery {
        sent: false,
        ok: false,
        event: label,
        topic: delivery.event.topic.clone(),
        request: None,
        status: None,
        latency_ms: 0.0,
        error: None,
        response: None,
        webhook_id: id.clone(),
    };
    let started = Instant::now();
    let shape = match Shapers::default()
        .shape(
            Enrollments::Store(store),
            subscription,
            &delivery.event,
            config.allow_private_destinations,
            now,
        )
        .await
    {
        Ok(shape) => shape,
        Err(e) => {
            report.error = Some(e.message().to_owned());
            return Ok(report);
        }
    };
    let outgoing = match Outgoing::new(&delivery, id, now, shape.as_ref(), None) {
        Ok(o) => o,
        Err(e) => {
            report.error = Some(e);
            return Ok(report);
        }
    };
    report.request = Some(outgoing.preview(&delivery, shape.as_ref()));
    if !send_it {
        report.ok = true;
        return Ok(report);
    }
    // Its own connections: a test must not wait behind, or disturb, the worker's.
    let destinations = Destinations::new(config)?;
    let Sent { result, response } = outgoing
        .send(&destinations, &delivery, shape.as_ref())
        .await;
    report.sent = true;
    report.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, error) = outcome(&result);
    report.ok = error.is_none();
    (report.status, report.error, report.response) = (status, error, response);
    Ok(report)
}

fn test_event(
    source: &str,
    event_id: &str,
    topic: &str,
    body: String,
    now: chrono::DateTime<Utc>,
) -> crate::store::StoredEvent {
    crate::store::StoredEvent {
        seq: 0,
        source: source.into(),
        event_id: event_id.into(),
        topic: topic.into(),
        created_at: Some(now),
        received_at: now,
        enrollment_id: None,
        body,
        pruned_at: None,
        position: String::new(),
        id_taken: false,
    }
}

/// The status and error an attempt records.
fn outcome(result: &AttemptResult) -> (Option<u16>, Option<String>) {
    match result {
        AttemptResult::Response { status, .. } => (
            Some(*status),
            (!(200..300).contains(status)).then(|| policy::describe(result)),
        ),
        AttemptResult::Failed { error } | AttemptResult::Unsendable { error } => {
            (None, Some(error.clone()))
        }
        AttemptResult::Accepted => (None, None),
    }
}

/// What every attempt of a worker shares.
struct Shared {
    destinations: Arc<Destinations>,
    config: Arc<ForwardConfig>,
    shapers: Shapers,
    log: Arc<DeliveryLog>,
}

async fn attempt(
    shared: &Shared,
    enrollments: Enrollments<'_>,
    d: ClaimedDelivery,
) -> FinishedAttempt {
    let Shared {
        destinations,
        config,
        shapers,
        log,
    } = shared;
    let started = Instant::now();
    let attempted_at = Utc::now();
    let number = d.attempts + 1;
    // A child of the delivery's trace, when it was traced: the destination
    // gets this span's `traceparent`.
    let span = match &d.traceparent {
        Some(parent) => {
            let span = tracing::info_span!(target: crate::telemetry::TARGET, parent: None,
                "forward", otel.kind = "client", subscription = %d.subscription.id,
                attempt = number, http.response.status_code = tracing::field::Empty,
                outcome = tracing::field::Empty);
            crate::telemetry::set_parent(&span, parent);
            span
        }
        None => tracing::Span::none(),
    };
    let traceparent = crate::telemetry::traceparent(&span);
    let shaped = shapers
        .shape(
            enrollments,
            &d.subscription,
            &d.event,
            config.allow_private_destinations,
            attempted_at,
        )
        .await;
    let id = message_id(
        &d.event.source,
        &d.event.event_id,
        &d.event.topic,
        d.event.id_taken,
    );
    let Sent { result, response } = match shaped {
        Ok(shape) => match Outgoing::new(&d, id, attempted_at, shape.as_ref(), traceparent) {
            Ok(outgoing) => outgoing.send(destinations, &d, shape.as_ref()).await,
            Err(e) => Sent::failed(e),
        },
        // Nothing half-rendered is sent: the delivery is dead with the reason.
        Err(ShapeError::Unsendable(error)) => Sent {
            result: AttemptResult::Unsendable { error },
            response: None,
        },
        Err(ShapeError::Transient(error)) => Sent::failed(error),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let jitter = rand::rng().random_range(-1.0..=1.0);
    let next = policy::next_step(&result, number, &config.schedule, Utc::now(), jitter);
    let (status, error) = outcome(&result);
    if !span.is_disabled() {
        span.record("outcome", policy::describe(&result));
        if let Some(status) = status {
            span.record("http.response.status_code", status);
        }
    }
    let logged = match &next {
        policy::Next::Delivered => "delivered",
        policy::Next::Retry { .. } => "retry",
        policy::Next::Dead { .. } => "dead",
        policy::Next::Gone => "gone",
    };
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                subscription = %d.subscription.id,
                event_id = %d.event.event_id,
                attempt = number,
                status,
                error = error.as_deref().unwrap_or(""),
                latency_ms,
                next = ?next,
                "forward"
            )
        };
    }
    if log.shown(logged, logged == "delivered", started) {
        line!(info);
    } else {
        line!(debug);
    }
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

/// A delivery ready to go: its id and the signature over the bytes sent
/// (the rendered body, else the event's).
struct Outgoing {
    id: String,
    timestamp: i64,
    signature: String,
    traceparent: Option<String>,
}

impl Outgoing {
    fn new(
        d: &ClaimedDelivery,
        id: String,
        now: chrono::DateTime<Utc>,
        shape: Option<&Rendered>,
        traceparent: Option<String>,
    ) -> Result<Outgoing, String> {
        let timestamp = now.timestamp();
        let signature = signing::signature_header(
            &d.subscription.signing_secrets(now),
            &id,
            timestamp,
            body(d, shape),
        )
        .map_err(|e| e.to_string())?;
        Ok(Outgoing {
            id,
            timestamp,
            signature,
            traceparent,
        })
    }

    fn message<'a>(&'a self, d: &'a ClaimedDelivery, shape: Option<&'a Rendered>) -> Message<'a> {
        Message {
            id: &self.id,
            topic: &d.event.topic,
            source: &d.event.source,
            event_time: d.event.created_at.unwrap_or(d.event.received_at),
            timestamp: self.timestamp,
            signature: &self.signature,
            body: body(d, shape),
            headers: &d.subscription.headers,
            shape,
            traceparent: self.traceparent.as_deref(),
        }
    }

    /// Hands the message to the subscription's destination.
    async fn send(
        &self,
        destinations: &Destinations,
        d: &ClaimedDelivery,
        shape: Option<&Rendered>,
    ) -> Sent {
        let s = &d.subscription;
        let Some(destination) = destinations.for_url(&s.url) else {
            return Sent::failed(format!(
                "the URL's scheme is not one enrollhook sends to: use {}",
                destinations::SCHEMES
            ));
        };
        destination.send(s, &self.message(d, shape)).await
    }

    /// The request as a test shows it.
    fn preview(&self, d: &ClaimedDelivery, shape: Option<&Rendered>) -> TestRequest {
        let message = self.message(d, shape);
        let is_http = matches!(
            destinations::Kind::of_url(&d.subscription.url),
            Some(destinations::Kind::Http)
        );
        let method = match (is_http, shape) {
            (false, _) => "PUBLISH".to_owned(),
            (true, Some(r)) => r.method.clone(),
            (true, None) => "POST".to_owned(),
        };
        let url = shape
            .and_then(|r| r.url.as_deref())
            .unwrap_or(&d.subscription.url);
        TestRequest {
            method,
            url: crate::redact::url(url),
            headers: message
                .properties()
                .into_iter()
                // As they go out on the wire: HTTP header names are lower case.
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body: String::from_utf8_lossy(message.body).into_owned(),
        }
    }
}

fn body<'a>(d: &'a ClaimedDelivery, shape: Option<&'a Rendered>) -> &'a [u8] {
    shape.map_or(d.event.body.as_bytes(), |r| r.body.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::subscription::SubscriptionInput;

    #[test]
    fn a_claim_that_fills_a_subscriptions_room_is_not_taken_for_caught_up() {
        let now = Utc::now();
        let subscription = |id: &str| {
            let input = SubscriptionInput {
                url: Some("http://127.0.0.1:9/hook".into()),
                topics: Some(vec!["*".into()]),
                ..Default::default()
            };
            input.create(id.into(), now, true).unwrap()
        };
        let of = |s: &Subscription| ClaimedDelivery {
            outbox_id: 1,
            attempts: 0,
            subscription: Arc::new(s.clone()),
            event: Arc::new(test_event(
                "default",
                "1",
                "enrollment.created",
                "{}".into(),
                now,
            )),
            traceparent: None,
        };
        let (a, b) = (subscription("a"), subscription("b"));
        // `a` may take 3, `b` (one slot left under its cap) 1.
        let room = ClaimRoom {
            total: 10,
            per_subscription: 3,
            busy: vec![("b".into(), 1)],
        };
        assert!(!fills_a_room(&[], &room));
        assert!(!fills_a_room(&[of(&a), of(&a)], &room));
        assert!(fills_a_room(&[of(&a), of(&a), of(&a)], &room));
        assert!(
            fills_a_room(&[of(&a), of(&b)], &room),
            "b's one slot is taken"
        );
    }

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
