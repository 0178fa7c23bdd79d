//! `enrollhook copy`: moves an install from one database to another (SQLite to
//! PostgreSQL, or back) without losing or duplicating anything.
//!
//! Events are re-appended in log order through [`Store::append_batch`], so the
//! target dedupes them by (source, event id, topic) and derives its projection with
//! the same fold as live deliveries: nothing of the source's projection is
//! trusted, and running the copy twice adds nothing. Events that retention
//! pruned are copied as pruned ([`Store::append_pruned`]), and so are those
//! whose rows a PostgreSQL retention dropped with their month
//! ([`Store::dropped_events`]). Quarantined deliveries are
//! recognised by (source, arrival time, reason code, body).

use serde::Serialize;

use crate::store::{self, EventFilter, NewEvent, PageRequest, Store};

#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct CopyReport {
    pub events: u64,
    pub events_added: u64,
    pub quarantine: u64,
    pub quarantine_added: u64,
}

pub async fn copy(from: &dyn Store, to: &dyn Store) -> anyhow::Result<CopyReport> {
    let mut report = CopyReport::default();
    let mut cursor = None;
    loop {
        let page = from
            .list_events(
                &EventFilter::default(),
                &PageRequest {
                    limit: store::MAX_PAGE,
                    cursor,
                },
            )
            .await?;
        // In log order, runs of whole events through `append_batch` (which
        // derives the projection and the outbox), runs of pruned ones as
        // they are: their rows keep redeliveries duplicates in the target.
        for run in page
            .items
            .chunk_by(|a, b| a.pruned_at.is_some() == b.pruned_at.is_some())
        {
            let outcomes = if run[0].pruned_at.is_some() {
                to.append_pruned(run).await?
            } else {
                let batch = run
                    .iter()
                    .map(|e| {
                        let mut new = NewEvent::from_log(
                            &e.source,
                            &e.topic,
                            &e.event_id,
                            &e.body,
                            e.received_at,
                        )?;
                        new.created_at = e.created_at;
                        new.event_id.clone_from(&e.event_id);
                        new.course_id = crate::thinkific::envelope::course_id_of_body(&e.body);
                        Ok(new)
                    })
                    .collect::<store::Result<Vec<_>>>()?;
                to.append_batch(&batch).await?
            };
            report.events += run.len() as u64;
            report.events_added += store::AppendOutcome::tally(&outcomes).0;
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }

    // Events whose rows the source's retention dropped with their month
    // (PostgreSQL) are not in its log but their identities are: copied as
    // pruned, so that a redelivery stays a duplicate in the target too.
    let mut cursor = None;
    loop {
        let page = from
            .dropped_events(&PageRequest {
                limit: store::MAX_PAGE,
                cursor,
            })
            .await?;
        if !page.items.is_empty() {
            let outcomes = to.append_pruned(&page.items).await?;
            report.events += page.items.len() as u64;
            report.events_added += store::AppendOutcome::tally(&outcomes).0;
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }

    // Quarantine pages come newest first: copy oldest first, keeping the order.
    let mut records = Vec::new();
    let mut cursor = None;
    loop {
        let page = from
            .list_quarantine(
                None,
                &PageRequest {
                    limit: store::MAX_PAGE,
                    cursor,
                },
            )
            .await?;
        records.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    for record in records.iter().rev() {
        report.quarantine += 1;
        if to.import_quarantine(record).await? {
            report.quarantine_added += 1;
        }
    }
    Ok(report)
}
