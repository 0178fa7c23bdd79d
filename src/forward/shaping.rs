//! Renders a templated subscription's request for one stored event: the thin
//! shell around the pure [`template`](super::template) module that looks up
//! the enrollment in the store and keeps each subscription's compiled
//! template, so a delivery never compiles one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::subscription::{Subscription, validate_url};
use super::template::{RenderInput, Rendered, Shaper};
use crate::store::{StoredEvent, Store};

/// Compiled templates by subscription id, recompiled when the subscription
/// changes (its `updated_at`).
#[derive(Default)]
pub struct Shapers {
    compiled: Mutex<HashMap<String, (DateTime<Utc>, Arc<Shaper>)>>,
}

impl Shapers {
    fn shaper(&self, s: &Subscription) -> Result<Option<Arc<Shaper>>, String> {
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
        let shaper = Arc::new(Shaper::new(spec).map_err(|e| e.to_string())?);
        compiled.insert(s.id.clone(), (s.updated_at, shaper.clone()));
        Ok(Some(shaper))
    }

    /// What to send for `event` to `s`: None when the subscription has no
    /// template (Thinkific's body is sent as it is), or why nothing can be.
    pub async fn shape(
        &self,
        store: Option<&dyn Store>,
        s: &Subscription,
        event: &StoredEvent,
        allow_private: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<Rendered>, String> {
        let Some(shaper) = self.shaper(s)? else {
            return Ok(None);
        };
        let body: serde_json::Value = serde_json::from_str(&event.body).map_err(|_| {
            "the event's body is not JSON (pruned by retention?): nothing to render".to_owned()
        })?;
        let enrollment = match (store, event.enrollment_id) {
            (Some(store), Some(id)) => store
                .get_enrollment(&event.source, id)
                .await
                .map_err(|e| format!("cannot read enrollment {id} to render the template: {e}"))?
                .map(|e| serde_json::to_value(crate::views::EnrollmentView::new(&e, now)))
                .transpose()
                .map_err(|e| e.to_string())?,
            _ => None,
        };
        let rendered = shaper
            .render(&RenderInput {
                source: &event.source,
                topic: &event.topic,
                event: &body,
                enrollment: enrollment.as_ref(),
            })
            .map_err(|e| e.to_string())?;
        if let Some(url) = &rendered.url {
            // A rendered URL obeys the rules of a subscription's URL, and
            // stays on HTTP: a payload value must not choose the destination kind.
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err("template url: rendered a URL that is not http(s)".into());
            }
            validate_url(url, allow_private)
                .map_err(|e| format!("template url: rendered {}", e.0))?;
        }
        Ok(Some(rendered))
    }
}
