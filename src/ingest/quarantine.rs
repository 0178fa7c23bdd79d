//! Re-admitting a quarantined delivery: the one use case behind both
//! `POST /api/quarantine/{id}/retry` and `enrollhook quarantine retry`.
//!
//! The kept headers and raw body are checked again with today's configuration
//! (typically after fixing a wrong secret), stored like any delivery, and the
//! record is marked resolved so it is not retried twice by mistake.

use crate::config::Sources;
use crate::ingest::receive::{self, Delivery, Rejection};
use crate::ingest::{IngestError, Ingestor};
use crate::store::{AppendOutcome, QuarantineRecord, Store, StoreError};
use crate::thinkific::{SIGNATURE_HEADER, TOPIC_HEADER};

/// Where the admitted event is written: through a running server's group
/// commit, or straight into the store (the CLI, which runs without a server).
#[derive(Clone, Copy)]
pub enum Writer<'a> {
    GroupCommit(&'a Ingestor),
    Direct(&'a dyn Store),
}

/// A delivery that passed this time.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub event_id: String,
    pub outcome: AppendOutcome,
    /// What was recorded on the quarantine record.
    pub resolution: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The delivery fails again; the record is left as it was.
    #[error("still rejected: {0}")]
    StillRejected(Rejection),
    /// The group commit could not store the event (storage down, shutting down).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Storing directly, or marking the record resolved, failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `record` again (`verify`: whether signatures are checked, as the
/// server is configured) and, if it passes, stores it and resolves the record.
pub async fn retry(
    store: &dyn Store,
    writer: Writer<'_>,
    sources: &Sources,
    verify: bool,
    record: &QuarantineRecord,
) -> Result<Admitted, RetryError> {
    if record.truncated {
        return Err(RetryError::Store(StoreError::Invalid(format!(
            "quarantined delivery #{} was {} bytes, of which only the first {} were kept: \
             it cannot be verified or stored again; ask the sender to redeliver it",
            record.id,
            record.body_size,
            record.body.len()
        ))));
    }
    let delivery = Delivery {
        source: &record.source,
        signature: record.header(SIGNATURE_HEADER).map(str::as_bytes),
        topic_header: record.header(TOPIC_HEADER),
        body: &record.body,
        received_at: record.received_at,
    };
    let event = receive::check(sources, verify, &delivery).map_err(RetryError::StillRejected)?;
    let event_id = event.event_id.clone();
    // An event the database refuses answers `Rejected` (400), not "unavailable".
    let refused = |e: StoreError| match e.is_data_refusal() {
        true => StoreError::Rejected(crate::store::refusal_reason(e)),
        false => e,
    };
    let outcome = match writer {
        Writer::GroupCommit(ingestor) => match ingestor.append(event).await {
            Err(IngestError::Store(e)) if matches!(*e, StoreError::Rejected(_)) => {
                let reason = match &*e {
                    StoreError::Rejected(r) => r.clone(),
                    other => other.to_string(),
                };
                return Err(RetryError::Store(StoreError::Rejected(reason)));
            }
            other => other?,
        },
        Writer::Direct(store) => store
            .append_batch(std::slice::from_ref(&event))
            .await
            .map_err(refused)?[0],
    };
    let resolution = admitted_resolution(&event_id, outcome);
    store.resolve_quarantine(record.id, &resolution).await?;
    Ok(Admitted {
        event_id,
        outcome,
        resolution,
    })
}

/// The resolution stored on a re-admitted record (shown by the API and CLI).
fn admitted_resolution(event_id: &str, outcome: AppendOutcome) -> String {
    match outcome {
        AppendOutcome::Stored { .. } => format!("admitted as event {event_id}"),
        AppendOutcome::Duplicate => format!("event {event_id} was already stored"),
    }
}
