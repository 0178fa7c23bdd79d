//! The quarantine's types and its bounds (issue #15, item 3): at most `keep`
//! records and `max_bytes` of kept bodies, each body kept up to
//! [`QUARANTINE_BODY_KEPT`]. Both backends write through [`NewQuarantine::to_store`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::without_nul;

/// Whether the quarantine insert that got `id` should prune the quarantine
/// down to `keep`: once every `keep / 64` inserts (every insert for a small
/// bound), so a flood of forged deliveries pays one short delete per batch
/// of them instead of one per delivery under the write lock that deliveries
/// share, and the quarantine overshoots its bound by at most 1/64.
pub fn quarantine_prune_due(id: i64, keep: u64) -> bool {
    quarantine_prune_due_within(id, keep, u64::MAX)
}

/// [`quarantine_prune_due`] for both bounds: also once every 1/64 of
/// `max_bytes` in bodies of the largest kept size, so that the byte bound too
/// is overshot by at most 1/64 (for `max_bytes` of 256 MiB: every 64 inserts).
pub fn quarantine_prune_due_within(id: i64, keep: u64, max_bytes: u64) -> bool {
    let by_bytes = max_bytes / 64 / QUARANTINE_BODY_KEPT as u64;
    let every = (keep / 64).min(by_bytes).max(1);
    u64::try_from(id).is_ok_and(|id| id.is_multiple_of(every))
}

/// How much of a quarantined body is kept (issue #15, item 3): a longer one
/// keeps this prefix, its `body_size` says how long it was, and it shows as
/// `truncated` (it can no longer be retried: its signature covered it all).
pub const QUARANTINE_BODY_KEPT: usize = 64 * 1024;

/// A rejected delivery, kept with its reason.
#[derive(Debug, Clone)]
pub struct NewQuarantine {
    pub source: String,
    pub received_at: DateTime<Utc>,
    pub reason_code: String,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl NewQuarantine {
    /// What both backends write: the body's kept prefix (see
    /// [`QUARANTINE_BODY_KEPT`]) with its whole size, and text without NUL
    /// (see [`without_nul`]; a parse error's reason may quote the body).
    pub(crate) fn to_store(&self) -> (&[u8], i64, String, String, String) {
        let kept = &self.body[..self.body.len().min(QUARANTINE_BODY_KEPT)];
        (
            kept,
            self.body.len() as i64,
            without_nul(&self.source).into_owned(),
            without_nul(&self.reason_code).into_owned(),
            without_nul(&self.reason).into_owned(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineRecord {
    pub id: i64,
    pub source: String,
    pub received_at: DateTime<Utc>,
    pub reason_code: String,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The size of the body as delivered (the body kept may be a prefix).
    pub body_size: i64,
    /// Only a prefix of the body is kept (see [`QUARANTINE_BODY_KEPT`]).
    pub truncated: bool,
    pub resolved_at: Option<DateTime<Utc>>,
    /// How it was resolved, e.g. `admitted as event 2019…`.
    pub resolution: Option<String>,
}

impl QuarantineRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
