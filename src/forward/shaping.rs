//! Renders a templated subscription's request for one stored event: the thin
//! shell around the pure [`template`](super::template) module that looks up
//! the enrollment in the store and keeps each subscription's compiled
//! template, so a delivery never compiles one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::subscription::{Subscription, validate_url};
use super::template::{Prepared, Rendered, Shaper};
use crate::projection::Enrollment;
use crate::store::{Store, StoredEvent};

/// Why a templated delivery could not be shaped.
#[derive(Debug, Clone, PartialEq)]
pub enum ShapeError {
    /// The template cannot give a request for this event (it fails to
    /// render, or renders a refused URL): retrying cannot help, so the
    /// delivery goes dead with this reason and nothing is sent.
    Unsendable(String),
    /// The enrollment could not be read (the database is busy or away):
    /// retried like a failed send.
    Transient(String),
}

impl ShapeError {
    pub fn message(&self) -> &str {
        match self {
            ShapeError::Unsendable(m) | ShapeError::Transient(m) => m,
        }
    }
}

/// A compiled template and the subscription version it was compiled from.
type Compiled = (DateTime<Utc>, Arc<Shaper>);

/// How many compiled templates a worker keeps before starting over.
const MAX_COMPILED: usize = 1024;

/// Where a template's enrollment comes from.
#[derive(Clone, Copy)]
pub enum Enrollments<'a> {
    /// Read from the store for this one delivery.
    Store(&'a dyn Store),
    /// Read beforehand for a whole batch of claimed deliveries (one
    /// statement instead of one per delivery): what it lacks does not exist.
    Batch(&'a BatchEnrollments),
}

/// The enrollments of a batch of templated deliveries, as projected through
/// the newest of their events, by (source, enrollment id), and what each
/// event's templates see, by log position (see [`BatchEnrollments::prepare`]).
#[derive(Default)]
pub struct BatchEnrollments {
    found: HashMap<String, HashMap<i64, Enrollment>>,
    prepared: HashMap<i64, Arc<Prepared>>,
}

impl BatchEnrollments {
    /// Reads the enrollments of `events` (source, enrollment id, log
    /// position): one statement per source.
    pub async fn read(
        store: &dyn Store,
        events: impl IntoIterator<Item = (&str, i64, i64)>,
    ) -> crate::store::Result<BatchEnrollments> {
        let mut wanted: HashMap<&str, (Vec<i64>, i64)> = HashMap::new();
        for (source, id, seq) in events {
            let (ids, through) = wanted.entry(source).or_default();
            ids.push(id);
            *through = (*through).max(seq);
        }
        let mut found = HashMap::new();
        for (source, (mut ids, through)) in wanted {
            ids.sort_unstable();
            ids.dedup();
            let enrollments = store.enrollments_through(source, &ids, through).await?;
            found.insert(
                source.to_owned(),
                enrollments
                    .into_iter()
                    .map(|e| (e.enrollment_id, e))
                    .collect(),
            );
        }
        Ok(BatchEnrollments {
            found,
            prepared: HashMap::new(),
        })
    }

    /// Makes what the templates see for each of `events` once, for all the
    /// subscriptions that render it. An event that cannot be prepared (its
    /// body is not JSON) is left out: its deliveries report why.
    pub fn prepare<'e>(
        &mut self,
        events: impl IntoIterator<Item = &'e StoredEvent>,
        now: DateTime<Utc>,
    ) {
        for event in events {
            if self.prepared.contains_key(&event.seq) {
                continue;
            }
            if let Ok(prepared) = prepare(self.enrollment_of(event), event, now) {
                self.prepared.insert(event.seq, Arc::new(prepared));
            }
        }
    }

    fn enrollment_of(&self, event: &StoredEvent) -> Option<&Enrollment> {
        let id = event.enrollment_id?;
        self.found.get(&event.source)?.get(&id)
    }
}

/// What the templates see for `event`, with its enrollment if it has one.
fn prepare(
    enrollment: Option<&Enrollment>,
    event: &StoredEvent,
    now: DateTime<Utc>,
) -> Result<Prepared, ShapeError> {
    let body: serde_json::Value = serde_json::from_str(&event.body).map_err(|_| {
        ShapeError::Unsendable(
            "the event's body is not JSON (pruned by retention?): nothing to render the template with".to_owned(),
        )
    })?;
    let enrollment = enrollment
        .map(|e| serde_json::to_value(crate::views::EnrollmentView::new(e, now)))
        .transpose()
        .map_err(|e| ShapeError::Unsendable(e.to_string()))?;
    Ok(Prepared::owned(
        &event.source,
        &event.topic,
        body,
        enrollment,
    ))
}

/// Compiled templates by subscription id, recompiled when the subscription
/// changes (its `updated_at`).
#[derive(Default)]
pub struct Shapers {
    compiled: Mutex<HashMap<String, Compiled>>,
}

impl Shapers {
    fn shaper(&self, s: &Subscription) -> Result<Option<Arc<Shaper>>, ShapeError> {
        let Some(spec) = &s.template else {
            return Ok(None);
        };
        let mut compiled = self.compiled.lock().expect("never poisoned");
        if let Some((at, shaper)) = compiled.get(&s.id)
            && *at == s.updated_at
        {
            return Ok(Some(shaper.clone()));
        }
        // Checked when it was saved; a stored one that no longer compiles
        // (an older version's syntax) is reported like a render error.
        let shaper =
            Arc::new(Shaper::new(spec).map_err(|e| ShapeError::Unsendable(e.to_string()))?);
        // Deleted subscriptions stay in the map; bound it rather than track
        // deletions: a recompile is one parse of the template.
        if compiled.len() >= MAX_COMPILED {
            compiled.clear();
        }
        compiled.insert(s.id.clone(), (s.updated_at, shaper.clone()));
        Ok(Some(shaper))
    }

    /// What to send for `event` to `s`: None when the subscription has no
    /// template (Thinkific's body is sent as it is), or why nothing can be.
    pub async fn shape(
        &self,
        enrollments: Enrollments<'_>,
        s: &Subscription,
        event: &StoredEvent,
        allow_private: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<Rendered>, ShapeError> {
        let Some(shaper) = self.shaper(s)? else {
            return Ok(None);
        };
        let prepared = match enrollments {
            Enrollments::Batch(batch) => match batch.prepared.get(&event.seq) {
                Some(prepared) => prepared.clone(),
                None => Arc::new(prepare(batch.enrollment_of(event), event, now)?),
            },
            Enrollments::Store(store) => {
                let read = match event.enrollment_id {
                    Some(id) => store
                        .enrollment_through(&event.source, id, event.seq)
                        .await
                        .map_err(|e| {
                            ShapeError::Transient(format!(
                                "cannot read enrollment {id} to render the template: {e}"
                            ))
                        })?,
                    None => None,
                };
                Arc::new(prepare(read.as_ref(), event, now)?)
            }
        };
        let rendered = shaper
            .render_prepared(&prepared)
            .map_err(|e| ShapeError::Unsendable(e.to_string()))?;
        if let Some(url) = &rendered.url {
            // A rendered URL obeys the rules of a subscription's URL, and
            // stays on HTTP: a payload value must not choose the destination kind.
            let scheme_ok =
                reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !scheme_ok {
                return Err(ShapeError::Unsendable(format!(
                    "template url: rendered `{}`, which is not an http(s) URL",
                    crate::redact::url(url)
                )));
            }
            validate_url(url, allow_private)
                .map_err(|e| ShapeError::Unsendable(format!("template url: rendered {}", e.0)))?;
        }
        Ok(Some(rendered))
    }
}
