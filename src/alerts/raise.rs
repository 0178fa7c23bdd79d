//! Raising alerts: after the worker records attempts ([`after_attempts`]),
//! and on a schedule ([`check`]: rejected signatures, silent sources).
//!
//! Every alert is appended through the ordinary append path, which writes
//! its outbox rows in its transaction. Order makes "once per incident" hold
//! across instances and crashes: an alert is appended *before* its incident
//! is recorded, and a recovery *before* the incident is closed; the ids are
//! derived from the incident, so doing either twice appends a duplicate the
//! log ignores, and only the open-incident row decides whether there is
//! something to do.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::*;
use crate::forward::policy::Next;
use crate::store::{DeliveryFilter, FinishedAttempt, PageRequest, Result, Store, StoreError};

/// Appends an alert and opens its incident (unless one is open); a point
/// alert's incident is recorded closed. Returns whether it was raised now.
pub async fn raise(
    store: &dyn Store,
    alert: &Alert,
    now: DateTime<Utc>,
    point: bool,
) -> Result<bool> {
    if !point
        && store
            .open_incident(alert.kind, &alert.subject)
            .await?
            .is_some()
    {
        return Ok(false);
    }
    // Written now whatever the check's clock says: its deliveries are due now.
    store.append_batch(&[alert.event(Utc::now())]).await?;
    let recorded = store.record_incident(&alert.incident(now, point)).await?;
    if recorded {
        tracing::warn!(topic = %alert.topic(), subject = %alert.subject, "alert: {}", alert.summary);
    }
    Ok(recorded)
}

/// Appends the recovery of the open incidents `ended` and closes them.
async fn recover(
    store: &dyn Store,
    alert: &Alert,
    ended: &[Incident],
    now: DateTime<Utc>,
) -> Result<()> {
    // Written now whatever the check's clock says: its deliveries are due now.
    store.append_batch(&[alert.event(Utc::now())]).await?;
    for i in ended {
        store
            .close_incident(&i.kind, &i.subject, now, &alert.id())
            .await?;
    }
    tracing::info!(topic = %alert.topic(), subject = %alert.subject, "alert: {}", alert.summary);
    Ok(())
}

fn last_failure(attempts: &[&FinishedAttempt]) -> LastFailure {
    attempts
        .iter()
        .rev()
        .find(|f| !matches!(f.next, Next::Delivered))
        .map(|f| LastFailure {
            at: Some(f.attempted_at),
            status: f.status,
            error: f.error.clone(),
            response: f.response.clone(),
        })
        .unwrap_or_default()
}

/// What a batch of recorded attempts raises: `exhausted` per dead delivery,
/// `failing` at the configured count of failures in a row, `disabled` for
/// the subscriptions the batch disabled, `recovered` when a subscription
/// with an open incident delivers again. Called after `finish_attempts`
/// committed; errors are logged by the caller and the alerts of the next
/// batch still come (the ids make a repeated one a no-op).
pub async fn after_attempts(
    store: &dyn Store,
    config: &AlertConfig,
    done: &[FinishedAttempt],
    disabled: &[String],
) -> Result<()> {
    let mut by_subscription: BTreeMap<&str, Vec<&FinishedAttempt>> = BTreeMap::new();
    for f in done {
        by_subscription
            .entry(&f.subscription_id)
            .or_default()
            .push(f);
    }
    let now = Utc::now();
    // One read a batch: a healthy batch needs nothing more (usually no rows).
    let open = store
        .list_incidents(None, true, crate::store::MAX_PAGE)
        .await?;
    for (id, attempts) in by_subscription {
        let failed = attempts.iter().any(|f| !matches!(f.next, Next::Delivered));
        let delivered = attempts.iter().any(|f| matches!(f.next, Next::Delivered));
        let just_disabled = disabled.iter().any(|d| d == id);
        let open_here: Vec<Incident> = open
            .iter()
            .filter(|i| {
                i.subject == id
                    && [SUBSCRIPTION_FAILING, SUBSCRIPTION_DISABLED].contains(&i.kind.as_str())
            })
            .cloned()
            .collect();
        let may_recover = delivered && !open_here.is_empty();
        if !failed && !just_disabled && !may_recover {
            continue;
        }
        // Deleted meanwhile: nothing to tell about.
        let Some(s) = store.get_subscription(id).await? else {
            continue;
        };
        let last = last_failure(&attempts);

        for f in attempts
            .iter()
            .filter(|f| matches!(f.next, Next::Dead { .. } | Next::Gone))
        {
            exhausted(store, &s, f, &last, now).await?;
        }

        if may_recover
            && s.failing_since.is_none()
            && s.enabled
            && let Some(alert) = subscription_recovered(&s, &open_here, now)
        {
            recover(store, &alert, &open_here, now).await?;
        }

        if just_disabled {
            // Its start: since when it failed, or (410 Gone) when it was disabled.
            let started = s.failing_since.unwrap_or(s.updated_at);
            raise(
                store,
                &subscription_disabled(&s, started, &last),
                now,
                false,
            )
            .await?;
        } else if failed
            && s.enabled
            && let Some(since) = s.failing_since
            && !open_here.iter().any(|i| i.kind == SUBSCRIPTION_FAILING)
        {
            let n = config.failing_after.max(1);
            let page = PageRequest {
                limit: n,
                cursor: None,
            };
            // Every attempt since `failing_since` failed (a delivery clears it).
            let newest = store.list_attempts(Some(id), None, &page, true).await?;
            let in_a_row = newest
                .items
                .iter()
                .filter(|a| a.attempted_at >= since)
                .count() as u32;
            if in_a_row >= n {
                raise(
                    store,
                    &subscription_failing(&s, since, in_a_row, &last),
                    now,
                    false,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// `exhausted` for one dead delivery, unless that delivery carried an alert:
/// an alert subscription whose deliveries die must not start a chain of
/// alerts about alerts (it still gets `failing` and `disabled`, once each).
async fn exhausted(
    store: &dyn Store,
    s: &Subscription,
    f: &FinishedAttempt,
    last: &LastFailure,
    now: DateTime<Utc>,
) -> Result<()> {
    let filter = DeliveryFilter {
        subscription_id: Some(s.id.clone()),
        event_seq: Some(f.event_seq),
        state: None,
    };
    let page = PageRequest {
        limit: 1,
        cursor: None,
    };
    let Some(entry) = store.list_deliveries(&filter, &page).await?.items.pop() else {
        return Ok(());
    };
    if entry
        .topic
        .starts_with(crate::forward::subscription::ALERT_TOPIC_PREFIX)
    {
        return Ok(());
    }
    let reason = match &f.next {
        Next::Dead { reason } => reason.clone(),
        _ => "the destination answered 410 Gone".to_owned(),
    };
    let dead = DeadDelivery {
        outbox_id: f.outbox_id,
        source: entry.source,
        event_id: entry.event_id,
        topic: entry.topic,
        attempts: f.attempt,
        at: f.attempted_at,
        reason,
    };
    raise(store, &subscription_exhausted(s, &dead, last), now, true).await?;
    Ok(())
}

/// Rejections of `source` kept in the quarantine since `after`, newest first
/// (at most a few pages: the threshold needs only one more than it).
async fn rejections_since(
    store: &dyn Store,
    source: &str,
    after: DateTime<Utc>,
    enough: usize,
) -> Result<Vec<Rejection>> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        limit: 500,
        cursor: None,
    };
    for _ in 0..20 {
        let got = store.list_quarantine(Some(source), &page).await?;
        let mut older = false;
        for r in &got.items {
            if r.received_at < after {
                older = true;
                break;
            }
            if is_signature_rejection(&r.reason_code) {
                out.push(Rejection {
                    quarantine_id: r.id,
                    received_at: r.received_at,
                    reason_code: r.reason_code.clone(),
                    reason: r.reason.clone(),
                });
            }
        }
        match got.next_cursor {
            Some(c) if !older && out.len() <= enough => page.cursor = Some(c),
            _ => break,
        }
    }
    Ok(out)
}

/// One round of the periodic checks, at `config.clock`'s now, for `sources`.
pub async fn check(store: &dyn Store, config: &AlertConfig, sources: &[String]) -> Result<()> {
    let now = config.clock.now();
    let window = chrono::Duration::from_std(config.signature_window)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    for source in sources {
        let recent = rejections_since(
            store,
            source,
            now - window,
            config.signature_failures as usize + 1,
        )
        .await?;
        let open = store.open_incident(SIGNATURES_FAILING, source).await?;
        match signature_verdict(
            source,
            config.signature_window,
            config.signature_failures,
            &recent,
            open.is_some(),
        ) {
            SignatureVerdict::Raise(alert) => {
                raise(store, &alert, now, false).await?;
            }
            SignatureVerdict::Recover => {
                let open = open.expect("recover only when open");
                let alert = source_recovered(&open, now, "Nothing.");
                recover(store, &alert, &[open], now).await?;
            }
            SignatureVerdict::Nothing => {}
        }
    }
    for (source, after) in &config.silent_after {
        let Ok(after_c) = chrono::Duration::from_std(*after) else {
            continue;
        };
        // A source that never delivered is not watched: silence is measured
        // from a delivery.
        let Some(last) = store.last_received(source).await? else {
            continue;
        };
        let open = store.open_incident(SOURCE_SILENT, source).await?;
        match open {
            None if now - last > after_c => {
                // The start is derived from the last delivery, so every
                // instance derives the same id.
                raise(
                    store,
                    &source_silent(source, Some(last), *after, last + after_c),
                    now,
                    false,
                )
                .await?;
            }
            // A delivery newer than the one the silence was measured from.
            Some(open) if last > open.started_at - after_c => {
                let alert = source_recovered(&open, now, "Nothing.");
                recover(store, &alert, &[open], now).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs [`check`] every `config.check_every`. Instances sharing a database
/// each run it (a few reads per source a round); the ids and the
/// open-incident rows keep what they raise to once.
pub fn spawn(
    store: Arc<dyn Store>,
    config: AlertConfig,
    sources: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = check(store.as_ref(), &config, &sources).await {
                tracing::warn!(error = %e, "alerts: check failed; retrying at the next tick");
            }
        }
    })
}
