//! Scheduled reconciliation (`serve --reconcile-every 24h`): the backfill run
//! for every source with Thinkific API credentials, each resuming where its
//! last run ended (a point stored in the database, not a flag), each run's
//! report kept (`GET /api/reconciliations`, `enrollhook reconciliations`).
//! One run at a time across all instances sharing the database
//! ([`Store::reconciliation_turn`]). When the source's public webhook URL is
//! known, the run also checks that Thinkific's webhooks deliver there.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::ids::SourceName;
use crate::store::{NewReconciliation, Store};
use crate::thinkific::backfill::{self, BackfillOptions};
use crate::thinkific::registration;
use crate::thinkific::rest::{MAX_PAGE_SIZE, RestClient};

/// One source to reconcile: its REST client, and where its webhooks should
/// deliver (`public_url` + `/webhooks/thinkific/SOURCE`), when known.
pub struct Target {
    pub source: SourceName,
    pub client: RestClient,
    pub webhook_url: Option<String>,
}

/// What one round did.
#[derive(Debug, Clone, PartialEq)]
pub enum Round {
    /// The ids of the runs recorded, one per target.
    Ran(Vec<i64>),
    /// Another instance was reconciling: nothing done.
    NotOurTurn,
}

/// Reconciles every target once, if it is this instance's turn.
pub async fn run_once(store: &dyn Store, targets: &[Target]) -> anyhow::Result<Round> {
    let Some(_turn) = store.reconciliation_turn().await? else {
        return Ok(Round::NotOurTurn);
    };
    let mut ids = Vec::with_capacity(targets.len());
    for t in targets {
        let started_at = Utc::now();
        let updated_after = store.reconciliation_resume_point(&t.source).await?;
        let options = BackfillOptions {
            source: t.source.clone(),
            updated_after,
            page_size: MAX_PAGE_SIZE,
        };
        let (mut report, resume_from, error) =
            match backfill::backfill(&t.client, store, &options, |_| {}).await {
                Ok(r) => (
                    json!({
                        "updated_after": updated_after,
                        "read": r.read,
                        "stored": r.stored,
                        "already_known": r.known,
                        "unusable": r.unusable,
                        "reconciliation": r.reconciliation,
                        "summary": r.reconciliation.summary(),
                    }),
                    r.resume_from,
                    None,
                ),
                Err(e) => (
                    json!({"updated_after": updated_after}),
                    None,
                    Some(format!("{e:#}")),
                ),
            };
        if let Some(url) = &t.webhook_url {
            report["webhooks"] = match t.client.list_webhooks().await {
                Ok(existing) => {
                    let topics: Vec<String> = registration::DEFAULT_TOPICS
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    let c = registration::check(&existing, url, &topics);
                    json!({"url": url, "registered": c.registered, "missing": c.missing,
                           "elsewhere": c.elsewhere})
                }
                Err(e) => json!({"url": url, "error": e.to_string()}),
            };
        }
        let id = store
            .insert_reconciliation(&NewReconciliation {
                source: t.source.to_string(),
                started_at,
                finished_at: Utc::now(),
                resume_from,
                report,
                error: error.clone(),
            })
            .await?;
        match &error {
            None => tracing::info!(source = %t.source, run = id, "reconciliation done"),
            Some(e) => {
                tracing::warn!(source = %t.source, run = id, error = %e, "reconciliation failed")
            }
        }
        ids.push(id);
    }
    Ok(Round::Ran(ids))
}

/// Reconciles now and then every `every`, until the task is aborted. A failed
/// round is logged and tried again at the next tick.
pub fn spawn(
    store: Arc<dyn Store>,
    targets: Vec<Target>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match run_once(store.as_ref(), &targets).await {
                Ok(Round::Ran(_)) => {}
                Ok(Round::NotOurTurn) => {
                    tracing::info!("reconciliation: another instance is running it")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation failed; retrying at the next tick")
                }
            }
        }
    })
}
