//! The signal that due outbox rows were committed, so the forwarder claims
//! them at once instead of at its next poll.
//!
//! Every store keeps one [`OutboxWake`] and raises it after a commit that wrote
//! outbox rows (an ingest batch, a replay, a re-enabled subscription). On
//! PostgreSQL the commit also sends `NOTIFY enrollhook_outbox`, and each
//! instance's forwarder keeps a `LISTEN` connection (`postgres::wake`) that
//! raises its own instance's wake, so rows written by any instance wake all
//! of them. The forwarder's poll stays as the fallback: a lost signal only
//! delays a delivery, never loses it (the rows are in the outbox).

use std::sync::Arc;

use tokio::sync::Notify;

/// The PostgreSQL notification channel (per database, so every instance
/// sharing the database hears it). The payload is empty.
pub const OUTBOX_CHANNEL: &str = "enrollhook_outbox";

/// Cheap to clone; all clones share one signal.
#[derive(Debug, Clone, Default)]
pub struct OutboxWake(Arc<Notify>);

impl OutboxWake {
    /// Wakes the forwarder. Raised while nobody waits (the forwarder is
    /// claiming), it is kept, once: any number of raises meanwhile make one
    /// more claim after the running one, never a burst of claims.
    pub fn raise(&self) {
        self.0.notify_one();
    }

    /// Returns when raised (at once if it was raised since the last return).
    pub async fn raised(&self) {
        self.0.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[test]
    fn raises_while_nobody_waits_make_one_wake() {
        let wake = OutboxWake::default();
        assert!(wake.raised().now_or_never().is_none(), "not raised yet");
        let clone = wake.clone();
        for _ in 0..5 {
            clone.raise();
        }
        assert!(
            wake.raised().now_or_never().is_some(),
            "kept while nobody waited"
        );
        assert!(
            wake.raised().now_or_never().is_none(),
            "five raises meanwhile make one wake, not five"
        );
    }
}
