//! One bad event must not fail its batch (issue #15, item 5).
//!
//! [`Store::append_batch`] is one transaction: when the database refuses one
//! event's data (see [`StoreError::is_data_refusal`]) the whole batch rolls
//! back. [`append_isolating`] then bisects: each half is tried again, in order,
//! until the refused events stand alone; they get [`StoreError::Rejected`], the
//! others commit. k bad events in a batch of n cost O(k log n) extra
//! transactions, none when all is well. Written once, over the trait, for both
//! backends.

use std::sync::Arc;

use super::{AppendOutcome, NewEvent, Store, StoreError};

/// Per-event results of storing `events`, in input order. An event gets
/// `Err(Rejected)` when the database refused its data alone, and the error
/// that stopped the store (e.g. `Unavailable`) when it was not stored for
/// another reason; every `Ok` is committed. Order is kept: of two deliveries
/// of one event in a batch, the first is stored and the second a duplicate.
pub async fn append_isolating(
    store: &dyn Store,
    events: &[NewEvent],
) -> Vec<Result<AppendOutcome, Arc<StoreError>>> {
    let mut results: Vec<Option<Result<AppendOutcome, Arc<StoreError>>>> =
        (0..events.len()).map(|_| None).collect();
    // Ranges still to store, the next one on top (left before right).
    let mut pending: Vec<std::ops::Range<usize>> = Vec::new();
    pending.push(0..events.len());
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        match store.append_batch(&events[range.clone()]).await {
            Ok(outcomes) => {
                for (slot, outcome) in results[range].iter_mut().zip(outcomes) {
                    *slot = Some(Ok(outcome));
                }
            }
            Err(e) if e.is_data_refusal() => {
                if range.len() == 1 {
                    let reason = refusal_reason(e);
                    results[range.start] = Some(Err(Arc::new(StoreError::Rejected(reason))));
                } else {
                    let mid = range.start + range.len() / 2;
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
            }
            Err(e) => {
                // Not the data: nothing more can be stored now.
                let e = Arc::new(e);
                for slot in results.iter_mut().filter(|s| s.is_none()) {
                    *slot = Some(Err(e.clone()));
                }
                break;
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every range was stored, refused or failed"))
        .collect()
}

/// Why the database refused an event: its own words (and SQLSTATE), without
/// the driver's wrapping.
pub fn refusal_reason(e: StoreError) -> String {
    match e {
        StoreError::Rejected(r) => r,
        StoreError::Unavailable(sqlx::Error::Database(db)) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}
