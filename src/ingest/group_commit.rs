//! Group commit: many concurrent deliveries, one writer, one transaction per batch.
//!
//! Each request hands its event to the [`Ingestor`] and waits. A writer task
//! takes everything that is waiting (up to `max_batch`), stores it with one
//! [`Store::append_batch`] transaction, and only then answers every request of
//! the batch. While one batch commits the next one fills up, so the cost of a
//! durable commit (an fsync) is shared by all deliveries that arrived meanwhile.
//!
//! An event the database refuses (a value it cannot hold) is isolated from
//! its batch by [`crate::store::append_isolating`]: the others commit, it is
//! answered alone with [`StoreError::Rejected`].
//!
//! The transaction belongs to the writer task, not to a request: a client that
//! disconnects mid-request can never leave a transaction open or half-written.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use crate::metrics::Metrics;
use crate::store::{AppendOutcome, NewEvent, Store, StoreError};

struct Job {
    event: NewEvent,
    reply: oneshot::Sender<Result<AppendOutcome, Arc<StoreError>>>,
    /// The delivery's `commit` span (disabled unless tracing is on).
    span: tracing::Span,
}

#[derive(Clone)]
pub struct Ingestor {
    queue: mpsc::Sender<Job>,
    /// Bumped after every commit that stored something, and by
    /// [`Ingestor::notify_change`]: wakes this instance's live streams at once
    /// (other instances' commits are found by their streams' short poll).
    changes: Arc<watch::Sender<u64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the writer has stopped (the service is shutting down)")]
    Stopped,
}

impl Ingestor {
    /// Starts `writers` writer tasks (1 for SQLite, which has one writer anyway).
    /// They stop when every `Ingestor` clone is dropped, after draining the queue.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        writers: usize,
        max_batch: usize,
    ) -> (Ingestor, tokio::task::JoinSet<()>) {
        let (tx, rx) = mpsc::channel::<Job>(max_batch * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let changes = Arc::new(watch::Sender::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..writers.max(1) {
            tasks.spawn(writer(
                store.clone(),
                metrics.clone(),
                rx.clone(),
                max_batch,
                changes.clone(),
            ));
        }
        (Ingestor { queue: tx, changes }, tasks)
    }

    /// A receiver that sees a change whenever this instance stores events or
    /// calls [`Ingestor::notify_change`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells live streams that something they show changed besides the event
    /// log (a delivery quarantined, a quarantined one re-admitted).
    pub fn notify_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Stores one event; returns once it is committed (or known to be a duplicate).
    pub async fn append(&self, event: NewEvent) -> Result<AppendOutcome, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                event,
                reply,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| IngestError::Stopped)?;
        match answer.await {
            Ok(result) => result.map_err(IngestError::Store),
            Err(_) => Err(IngestError::Stopped),
        }
    }
}

async fn writer(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
    changes: Arc<watch::Sender<u64>>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        {
            // One writer gathers a batch at a time; others wait their turn here.
            let mut rx = queue.lock().await;
            if rx.recv_many(&mut jobs, max_batch).await == 0 {
                return; // every sender is gone and the queue is empty
            }
        }
        let batch = batch_span(&jobs);
        let (events, replies): (Vec<NewEvent>, Vec<_>) =
            jobs.drain(..).map(|j| (j.event, j.reply)).unzip();
        let started = Instant::now();
        // One refused event is answered alone; the rest of its batch commits.
        let results = crate::store::append_isolating(store.as_ref(), &events)
            .instrument(batch)
            .await;
        metrics.observe_batch(events.len(), started.elapsed());
        if let Some(Err(e)) = results.iter().find(|r| {
            r.as_ref()
                .is_err_and(|e| !matches!(**e, StoreError::Rejected(_)))
        }) {
            tracing::error!(error = %e, batch = events.len(), "storing a batch failed; answering 503");
        }
        if results
            .iter()
            .any(|r| matches!(r, Ok(AppendOutcome::Stored { .. })))
        {
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        for (reply, result) in replies.into_iter().zip(results) {
            // The requester may have gone away; a stored event is stored regardless.
            let _ = reply.send(result);
        }
    }
}

/// The batch's span, when a delivery in it is traced and sampled: a batch is
/// shared by many deliveries, so it is a child of the first sampled one's
/// `commit` span (that trace shows the transaction and, on PostgreSQL, the
/// projection inside it) and linked to the others'; every `commit` span
/// records the batch's size. Parent-based sampling then keeps it exactly when
/// one of its deliveries is kept.
fn batch_span(jobs: &[Job]) -> tracing::Span {
    let mut sampled = jobs
        .iter()
        .filter(|j| !j.span.is_disabled())
        .inspect(|j| {
            j.span.record("batch.size", jobs.len());
        })
        .filter(|j| crate::telemetry::sampled_context(&j.span).is_some())
        .map(|j| &j.span);
    let Some(first) = sampled.next() else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(target: crate::telemetry::TARGET, parent: first, "batch",
        batch.size = jobs.len());
    for other in sampled {
        if let Some(cx) = crate::telemetry::sampled_context(other) {
            crate::telemetry::add_link(&span, cx);
        }
    }
    span
}
