//! `--retain-events`: drops the raw bodies of old events on a schedule.
//!
//! What is kept and why is documented on [`Store::prune_events`]: event rows
//! stay (exactly-once holds forever), enrollment events stay whole (the
//! projection and `rebuild` derive from them), old delivery history goes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::store::{PruneReport, Store};

/// How often a running server prunes.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Prunes everything received more than `retain` ago.
pub async fn prune(store: &dyn Store, retain: Duration) -> anyhow::Result<PruneReport> {
    let retain = chrono::Duration::from_std(retain)
        .map_err(|_| anyhow::anyhow!("the retention period is too long"))?;
    let cutoff = Utc::now()
        .checked_sub_signed(retain)
        .ok_or_else(|| anyhow::anyhow!("the retention period is too long"))?;
    Ok(store.prune_events(cutoff).await?)
}

/// Prunes now and then every `every`, until the task is aborted. A failed run
/// is logged and retried at the next tick: retention never stops the service.
pub fn spawn(
    store: Arc<dyn Store>,
    retain: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match prune(store.as_ref(), retain).await {
                Ok(r) => tracing::info!(
                    events = r.events,
                    delivery_attempts = r.delivery_attempts,
                    deliveries = r.deliveries,
                    months_dropped = r.partitions_dropped,
                    retain_days = retain.as_secs_f64() / 86400.0,
                    "retention: pruned what was received before the retention period"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "retention: pruning failed; retrying in an hour")
                }
            }
        }
    })
}
