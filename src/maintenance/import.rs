//! `enrollhook import FILE.jsonl`: load recorded deliveries straight into the
//! database, through the same parse and the same store path as the receiver
//! (`thinkific::parse`, `NewEvent::from_envelope`, `Store::append_batch`), in
//! large transactions. Events already stored are skipped (duplicates), so an
//! import can be re-run or resumed safely.
//!
//! One JSON object per line, in either form:
//! - a delivery, as `enrollhook simulate --out` writes it:
//!   `{"source":"default","headers":{"x-thinkific-hmac-sha256":"…","x-thinkific-topic":"…"},"body":"<raw body>"}`
//! - an event export, as the API shows events (`/api/events` items):
//!   `{"source":"default","received_at":"…","body":{…the envelope…}}`. A body
//!   given as an object is stored in compact JSON; its signature cannot be checked.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::store::{AppendOutcome, NewEvent, Store};
use crate::thinkific::{self, SIGNATURE_HEADER, TOPIC_HEADER};

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Files every event under this source, whatever the lines say.
    pub source: Option<crate::ids::SourceName>,
    /// Verify each line's X-Thinkific-Hmac-Sha256 with this secret; lines that
    /// fail are rejected (not stored).
    pub verify_with: Option<String>,
    /// Events per transaction.
    pub batch: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            source: None,
            verify_with: None,
            batch: 2000,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub lines: u64,
    pub stored: u64,
    pub duplicates: u64,
    /// Lines not stored, by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// The first few rejections, with their line numbers.
    pub examples: Vec<String>,
    pub elapsed: Duration,
}

impl ImportReport {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn reject(&mut self, line: u64, code: &str, why: impl std::fmt::Display) {
        *self.rejected.entry(code.to_owned()).or_default() += 1;
        if self.examples.len() < 10 {
            self.examples.push(format!("line {line}: {why}"));
        }
    }
}

#[derive(Deserialize)]
struct Line {
    source: Option<crate::ids::SourceName>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<Value>,
    received_at: Option<String>,
}

fn header<'a>(headers: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Turns one line into an event, or says why it cannot be stored.
fn event_from_line(
    text: &str,
    opts: &ImportOptions,
    now: DateTime<Utc>,
) -> Result<NewEvent, (&'static str, String)> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        (
            "line_not_json",
            format!("not a JSON object with a `body`: {e}"),
        )
    })?;
    let body = match line.body {
        Some(Value::String(raw)) => raw,
        Some(v @ Value::Object(_)) => {
            if opts.verify_with.is_some() {
                return Err((
                    "signature_unverifiable",
                    "the body is a JSON object (an export), so its signature cannot be verified: import without --verify-signatures".into(),
                ));
            }
            v.to_string()
        }
        _ => {
            return Err((
                "body_missing",
                "`body` must be the raw delivery body (a string) or the envelope (an object)"
                    .into(),
            ));
        }
    };
    if let Some(secret) = &opts.verify_with {
        let signature = header(&line.headers, SIGNATURE_HEADER).map(str::as_bytes);
        thinkific::verify(secret.as_bytes(), body.as_bytes(), signature)
            .map_err(|e| (e.code(), e.to_string()))?;
    }
    let envelope = thinkific::parse(body.as_bytes(), header(&line.headers, TOPIC_HEADER))
        .map_err(|e| (e.code(), e.to_string()))?;
    let source = opts
        .source
        .clone()
        .or(line.source)
        .unwrap_or_else(crate::ids::SourceName::default_source);
    let received_at = line
        .received_at
        .as_deref()
        .and_then(thinkific::envelope::parse_timestamp)
        .unwrap_or(now);
    Ok(NewEvent::from_envelope(
        &source,
        &envelope,
        body,
        received_at,
    ))
}

/// Imports every line of `input`. `progress` is called after each batch.
pub async fn import(
    store: &dyn Store,
    input: impl BufRead,
    opts: &ImportOptions,
    mut progress: impl FnMut(&ImportReport),
) -> anyhow::Result<ImportReport> {
    anyhow::ensure!(opts.batch >= 1, "the batch size must be at least 1");
    let started = Instant::now();
    let now = Utc::now();
    let mut report = ImportReport::default();
    let mut batch: Vec<NewEvent> = Vec::with_capacity(opts.batch);
    for (n, line) in input.lines().enumerate() {
        let line_no = n as u64 + 1;
        let line = line.map_err(|e| {
            anyhow::anyhow!("cannot read line {line_no}: {e} (the file must be UTF-8 JSON lines)")
        })?;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        match event_from_line(&line, opts, now) {
            Ok(event) => batch.push(event),
            Err((code, why)) => report.reject(line_no, code, why),
        }
        if batch.len() >= opts.batch {
            write(store, &mut batch, &mut report).await?;
            progress(&report);
        }
    }
    write(store, &mut batch, &mut report).await?;
    // So the import's enrollments are there when it reports done.
    store.sync_projection().await?;
    // The data is in; stale planner statistics only make reads slow, so a
    // failure here is a warning, not a failed import.
    if let Err(e) = store.refresh_statistics().await {
        tracing::warn!(error = %e, "import: could not refresh the planner's statistics (VACUUM ANALYZE); reads may be slow until autovacuum does");
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn write(
    store: &dyn Store,
    batch: &mut Vec<NewEvent>,
    report: &mut ImportReport,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcomes = store.append_batch(batch).await.map_err(|e| {
        anyhow::anyhow!(
            "storing a batch failed after {} stored events: {e}. Events already stored are skipped when you run the import again.",
            report.stored
        )
    })?;
    let (stored, duplicates) = AppendOutcome::tally(&outcomes);
    report.stored += stored;
    report.duplicates += duplicates;
    batch.clear();
    Ok(())
}
