//! Each instance's `LISTEN` connection: hears the `NOTIFY` that every commit
//! writing outbox rows sends (from any instance sharing the database) and
//! raises this instance's [`OutboxWake`].
//!
//! Notifications sent while the connection is down are lost, so every time
//! the `LISTEN` is (re)established the wake is raised once: the forwarder
//! claims whatever was committed meanwhile. A dropped connection is
//! re-established with backoff; until then the forwarder's poll finds the
//! rows, later but never lost.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::store::{OUTBOX_CHANNEL, OutboxWake};

/// The first retry after a failed connection, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that listened this long before it was lost is reconnected at
/// once, with the backoff started afresh.
const STABLE: Duration = Duration::from_secs(10);

/// Runs until aborted.
pub(super) fn spawn_listener(
    options: PgConnectOptions,
    wake: OutboxWake,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        // Whether the current outage was logged: warn once per outage, not per retry.
        let mut outage_logged = false;
        loop {
            let mut listener = match listen(&options).await {
                Ok(l) => l,
                Err(e) => {
                    if !outage_logged {
                        tracing::warn!(error = %e, "forwarding: cannot LISTEN for new deliveries; retrying with backoff, delivering at each poll meanwhile");
                        outage_logged = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if outage_logged {
                tracing::info!("forwarding: LISTEN for new deliveries re-established");
            }
            let listening_since = std::time::Instant::now();
            wake.raise();
            let lost = loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => wake.raise(),
                    Ok(None) => break "the connection was closed".to_owned(),
                    Err(e) => break e.to_string(),
                }
            };
            tracing::warn!(error = %lost, "forwarding: lost the LISTEN connection for new deliveries; reconnecting, delivering at each poll meanwhile");
            outage_logged = true;
            // Whatever it holds is dropped with it; the next one is fresh.
            drop(listener);
            // A connection that keeps being dropped at once is not retried in a tight loop.
            if listening_since.elapsed() < STABLE {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                backoff = FIRST_BACKOFF;
            }
        }
    })
}

/// A connection of its own (not one of the store's pools: it is held for
/// good), listening on [`OUTBOX_CHANNEL`].
async fn listen(options: &PgConnectOptions) -> sqlx::Result<PgListener> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    // Reconnecting is ours (fresh connection, backoff, a wake once listening).
    listener.eager_reconnect(false);
    listener.listen(OUTBOX_CHANNEL).await?;
    Ok(listener)
}
