//! Renders a templated subscription's request for one stored event: the thin
//! shell around the pure [`template`](super::template) module that looks up
//! the enrollment in the store and keeps each subscription's compiled
//! template, so a delivery never compiles one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::subscription::{Subscription, validate_url};
use super::template::{RenderInput, Rendered, Shaper};
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

/// Compiled templates by subscription id, recompiled when the subscription
/// changes (its `updated_at`).
/// How many compiled templates a worker keeps before starting over.
const MAX_COMPILED: usize = 1024;

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
    /// Without a store the template sees no enrollment.
    pub async fn shape(
        &self,
        store: Option<&dyn Store>,
        s: &Subscription,
        event: &StoredEvent,
        allow_private: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<Rendered>, ShapeError> {
        let Some(shaper) = self.shaper(s)? else {
            return Ok(None);
        };
        let body: serde_json::Value = serde_json::from_str(&event.body).map_err(|_| {
            ShapeError::Unsendable(
                "the event's body is not JSON (pruned by retention?): nothing to render the template with".to_owned(),
            )
        })?;
        let enrollment = match (store, event.enrollment_id) {
            (Some(store), Some(id)) => store
                .enrollment_through(&event.source, id, event.seq)
                .await
                .map_err(|e| {
                    ShapeError::Transient(format!(
                        "cannot read enrollment {id} to render the template: {e}"
                    ))
                })?
                .map(|e| serde_json::to_value(crate::views::EnrollmentView::new(&e, now)))
                .transpose()
                .map_err(|e| ShapeError::Unsendable(e.to_string()))?,
            _ => None,
        };
        let rendered = shaper
            .render(&RenderInput {
                source: &event.source,
                topic: &event.topic,
                event: &body,
                enrollment: enrollment.as_ref(),
            })
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
