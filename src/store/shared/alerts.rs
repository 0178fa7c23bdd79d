//! Alert incidents written once for both backends (see [`crate::store::alerts`]).

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use crate::store::dialect::{Binds, Cols, Dialect};
use crate::store::{Incident, Result};

const INCIDENT_COLUMNS: &str = "id, kind, subject, source, started_at, opened_at, alert_id, \
    summary, detail, closed_at, recovered_id";

fn incident_from_row(row: &impl Cols) -> Result<Incident> {
    Ok(Incident {
        id: row.int("id")?,
        kind: row.text("kind")?,
        subject: row.text("subject")?,
        source: row.text("source")?,
        started_at: row.time("started_at")?,
        opened_at: row.time("opened_at")?,
        alert_id: row.text("alert_id")?,
        summary: row.text("summary")?,
        detail: row.json("detail", "an alert incident's detail")?,
        closed_at: row.opt_time("closed_at")?,
        recovered_id: row.opt_text("recovered_id")?,
    })
}

pub(crate) async fn record_incident<DB: Dialect>(
    conn: &mut DB::Connection,
    i: &Incident,
) -> Result<bool>
where
    String: Binds<DB>,
    Option<String>: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO alert_incidents (kind, subject, source, started_at, opened_at, alert_id, \
         summary, detail, closed_at, recovered_id) ",
    );
    q.push_values([i], |mut row, i| {
        row.push_bind(i.kind.clone())
            .push_bind(i.subject.clone())
            .push_bind(i.source.clone())
            .push_bind(DB::time(i.started_at))
            .push_bind(DB::time(i.opened_at))
            .push_bind(i.alert_id.clone())
            .push_bind(i.summary.clone())
            .push_bind(DB::json(&i.detail))
            .push_bind(DB::opt_time(i.closed_at))
            .push_bind(i.recovered_id.clone());
    });
    // The partial unique index on open incidents: a second opener is a no-op.
    q.push(" ON CONFLICT DO NOTHING");
    let done = q.build().execute(DB::on(conn)).await?;
    Ok(DB::rows_affected(&done) == 1)
}

pub(crate) async fn close_incident<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: &str,
    subject: &str,
    closed_at: DateTime<Utc>,
    recovered_id: &str,
) -> Result<bool>
where
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new("UPDATE alert_incidents SET closed_at = ");
    q.push_bind(DB::time(closed_at))
        .push(", recovered_id = ")
        .push_bind(recovered_id.to_owned())
        .push(" WHERE closed_at IS NULL AND kind = ")
        .push_bind(kind.to_owned())
        .push(" AND subject = ")
        .push_bind(subject.to_owned());
    let done = q.build().execute(DB::on(conn)).await?;
    Ok(DB::rows_affected(&done) > 0)
}

pub(crate) async fn open_incident<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: &str,
    subject: &str,
) -> Result<Option<Incident>>
where
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {INCIDENT_COLUMNS} FROM alert_incidents WHERE closed_at IS NULL AND kind = "
    ));
    q.push_bind(kind.to_owned())
        .push(" AND subject = ")
        .push_bind(subject.to_owned());
    let row = q.build().fetch_optional(DB::on(conn)).await?;
    row.as_ref().map(incident_from_row).transpose()
}

pub(crate) async fn list_incidents<DB: Dialect>(
    conn: &mut DB::Connection,
    source: Option<&str>,
    open_only: bool,
    limit: u32,
) -> Result<Vec<Incident>>
where
    String: Binds<DB>,
    i64: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {INCIDENT_COLUMNS} FROM alert_incidents WHERE 1 = 1"
    ));
    if let Some(s) = source {
        q.push(" AND source = ").push_bind(s.to_owned());
    }
    if open_only {
        q.push(" AND closed_at IS NULL");
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit));
    let rows = q.build().fetch_all(DB::on(conn)).await?;
    rows.iter().map(incident_from_row).collect()
}

/// When the newest delivery of `source` arrived, by log position: a walk back the primary key
/// that stops at the source's newest event (short for a source that delivers).
pub(crate) async fn last_received<DB: Dialect>(
    conn: &mut DB::Connection,
    source: &str,
) -> Result<Option<DateTime<Utc>>>
where
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new("SELECT received_at FROM events WHERE source = ");
    // Our own alerts (of this source) are not deliveries from it.
    q.push_bind(source.to_owned())
        .push(" AND topic NOT LIKE 'enrollhook.%' ORDER BY seq DESC LIMIT 1");
    let row = q.build().fetch_optional(DB::on(conn)).await?;
    row.as_ref().map(|r| r.time("received_at")).transpose()
}
