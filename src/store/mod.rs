//! Storage: one [`Store`] trait, one implementation per database.
//!
//! [`Store::append_batch`] writes a delivery's event (exactly once per source,
//! envelope id and topic) and its outbox rows in one transaction. On PostgreSQL the
//! projection change commits in that transaction too; on SQLite the projection
//! always follows a few milliseconds behind, in a file and on a thread of its
//! own (see `sqlite::projector`). Every projection read catches it up first, so
//! readers never see a stored delivery missing; a crash loses nothing that was
//! acknowledged, because acknowledgement waits for the event's commit (see
//! [`crate::ingest`]). Layout: `sql` and `migrate` hold what both backends
//! share; `sqlite/` and `postgres/` import from them, never the reverse.

/// The columns a projection row is written with, in bind order, and the
/// upsert clause that replaces them all: one text for both backends (macros,
/// so that `concat!` builds `&'static str` queries from them).
macro_rules! enrollment_write_columns {
    () => {
        "source, enrollment_id, user_id, email, first_name, last_name, course_id, course_name, \
         progress, trial, completed, activated_at, started_at, completed_at, expiry_date, \
         created_at, updated_at, days_to_complete, event_count, v_updated_at, v_created_at, \
         v_event_id"
    };
}
macro_rules! enrollment_upsert_on_conflict {
    () => {
        "ON CONFLICT (source, enrollment_id) DO UPDATE SET
        user_id = excluded.user_id, email = excluded.email, first_name = excluded.first_name,
        last_name = excluded.last_name, course_id = excluded.course_id,
        course_name = excluded.course_name, progress = excluded.progress,
        trial = excluded.trial, completed = excluded.completed,
        activated_at = excluded.activated_at, started_at = excluded.started_at,
        completed_at = excluded.completed_at, expiry_date = excluded.expiry_date,
        created_at = excluded.created_at, updated_at = excluded.updated_at,
        days_to_complete = excluded.days_to_complete, event_count = excluded.event_count,
        v_updated_at = excluded.v_updated_at, v_created_at = excluded.v_created_at,
        v_event_id = excluded.v_event_id"
    };
}

pub mod alerts;
mod bodies;
mod dialect;
pub mod forward;
mod isolate;
pub mod learning;
mod migrate;
pub mod milestones;
pub mod postgres;
mod quarantine;
mod reconciliations;
mod rows;
mod shared;
mod sql;
pub mod sqlite;
mod stats;
mod wake;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::projection::learning::LearningEvent;
use crate::projection::{Enrollment, EnrollmentEvent, Status};
use crate::thinkific;

pub use alerts::{AlertStore, Incident};
pub use forward::*;
pub use isolate::{append_isolating, refusal_reason};
pub use learning::*;
pub use postgres::PostgresStore;
pub use quarantine::*;
pub use reconciliations::{NewReconciliation, ReconciliationRecord};
pub use sqlite::SqliteStore;
/// The projection file's path and schema (kept at its old path for callers).
pub use sqlite::projector as sqlite_projector;
pub(crate) use stats::CourseCounts;
pub use stats::{ActivityQuery, CourseStats, DayActivity, completed_on, enrolled_on};
pub(crate) use stats::{every_day, median};
pub use wake::{OUTBOX_CHANNEL, OutboxWake};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the write: callers answer 503
    /// so that Thinkific retries.
    #[error("database unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    /// The same, from SQLite's writer or projector threads (rusqlite), or
    /// such a thread has stopped: also 503.
    #[error("database unavailable: {0}")]
    Write(String),
    /// A request the store cannot answer (bad cursor, …): the caller's mistake.
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Data in the database that this version cannot read.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migrate(String),
    /// An envelope id that names events of several topics, asked for without
    /// a topic: the caller names one (`?topic=`).
    #[error(
        "event `{event_id}` of source `{event_source}` exists under {} topics ({}): name one with \
         ?topic= (e.g. ?topic={})",
        topics.len(),
        topics.join(", "),
        topics[0]
    )]
    Ambiguous {
        event_source: String,
        event_id: String,
        topics: Vec<String>,
    },
    /// The database refused this one event's data (a value it cannot hold):
    /// retrying cannot help, so the delivery is answered 400 and quarantined
    /// (reason code `store_rejected`), never 503. See [`append_isolating`].
    #[error("the database refused the event: {0}")]
    Rejected(String),
}

impl StoreError {
    /// Whether the database refused the data rather than the request: on
    /// PostgreSQL SQLSTATE class 22 (data exception), 23 (integrity) and 54
    /// (program limit, e.g. an index row too large). Anything else (the
    /// database being away, out of disk, a deadlock) is "unavailable".
    pub fn is_data_refusal(&self) -> bool {
        matches!(self, StoreError::Rejected(_))
            || self
                .sqlstate()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
    }

    /// The code of an error the database answered with (PostgreSQL's
    /// SQLSTATE; SQLite's extended result code).
    pub(crate) fn sqlstate(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            StoreError::Unavailable(sqlx::Error::Database(db)) => db.code(),
            _ => None,
        }
    }
}

/// What text columns are given instead of a NUL character, which
/// PostgreSQL's `text` cannot hold: U+FFFD, on both backends alike, so that
/// both accept and show the same events (the raw body keeps its `\u0000`
/// escape byte for byte: JSON text never holds a raw NUL).
pub(crate) fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn without_nul_opt(s: &mut Option<String>) {
    if let Some(v) = s
        && v.contains('\0')
    {
        *v = without_nul(v).into_owned();
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A verified, parsed delivery, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub source: String,
    /// Thinkific's envelope id.
    pub event_id: String,
    /// `resource.action`.
    pub topic: String,
    pub created_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    /// The raw body, exactly as received (it is valid UTF-8 JSON).
    pub body: String,
    /// Set for the enrollment topics: what the projection needs.
    pub enrollment: Option<EnrollmentEvent>,
    /// Set for `lesson.completed` and `quiz.attempted` when their payload
    /// names what the learning projection needs.
    pub learning: Option<LearningEvent>,
    /// The student the event is about, if it names one (for their timeline).
    pub user_id: Option<i64>,
    /// The course the event is about, if any (for forwarding filters).
    pub course_id: Option<i64>,
    /// The W3C `traceparent` of the delivery that brought it, when it was
    /// traced and sampled: kept with its outbox rows, so forward attempts
    /// join the delivery's trace (see `crate::telemetry`).
    pub traceparent: Option<String>,
}

impl NewEvent {
    pub fn from_envelope(
        source: &str,
        envelope: &thinkific::Envelope,
        body: String,
        received_at: DateTime<Utc>,
    ) -> NewEvent {
        let enrollment = envelope
            .enrollment
            .as_ref()
            .zip(envelope.enrollment_topic())
            .map(|(payload, topic)| {
                let mut payload = payload.clone();
                // Projected text: see [`without_nul`]. Here, so that a rebuild
                // from the log derives the same.
                for field in [
                    &mut payload.email,
                    &mut payload.first_name,
                    &mut payload.last_name,
                    &mut payload.course_name,
                ] {
                    without_nul_opt(field);
                }
                EnrollmentEvent {
                    topic,
                    event_id: envelope.id.clone(),
                    envelope_created_at: envelope.created_at,
                    payload,
                }
            });
        let topic = envelope.topic.to_string();
        let (learning, user_id) = match &enrollment {
            Some(e) => (None, e.payload.user_id),
            None => thinkific::learning::read(&topic, &envelope.id, envelope.created_at, &body),
        };
        NewEvent {
            source: source.to_owned(),
            event_id: envelope.id.clone(),
            topic,
            created_at: envelope.created_at,
            received_at,
            body,
            enrollment,
            learning,
            user_id,
            course_id: envelope.course_id,
            traceparent: None,
        }
    }

    /// The event as the projection reads it back from the log (enrollment,
    /// learning event and student), or what makes the stored body unreadable.
    pub fn from_log(
        source: &str,
        topic: &str,
        event_id: &str,
        body: &str,
        received_at: DateTime<Utc>,
    ) -> Result<NewEvent> {
        let envelope = thinkific::parse(body.as_bytes(), Some(topic))
            .map_err(|e| StoreError::Corrupt(format!("event {event_id} no longer parses: {e}")))?;
        let mut new = NewEvent::from_envelope(source, &envelope, body.to_owned(), received_at);
        // The row's topic is the one stored (see `thinkific::parse`).
        new.topic = topic.to_owned();
        Ok(new)
    }

    pub fn enrollment_id(&self) -> Option<i64> {
        self.enrollment.as_ref().map(|e| e.payload.id)
    }

    /// Events of one enrollment share a key: ordered subscriptions deliver them in turn.
    pub fn order_key(&self) -> Option<String> {
        order_key(&self.source, self.enrollment_id())
    }
}

pub(crate) fn order_key(source: &str, enrollment_id: Option<i64>) -> Option<String> {
    enrollment_id.map(|id| format!("{source}/{id}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum AppendOutcome {
    /// Newly stored at this position of the event log.
    Stored { seq: i64 },
    /// Already stored before: nothing changed.
    Duplicate,
}

impl AppendOutcome {
    /// How many of a batch's outcomes were (stored, duplicates).
    pub fn tally(outcomes: &[AppendOutcome]) -> (u64, u64) {
        let stored = outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
            .count() as u64;
        (stored, outcomes.len() as u64 - stored)
    }
}

/// An event as kept in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub source: String,
    pub event_id: String,
    pub topic: String,
    pub created_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub enrollment_id: Option<i64>,
    /// Empty once retention pruned the event (see [`Store::prune_events`]).
    pub body: String,
    pub pruned_at: Option<DateTime<Utc>>,
    /// Another event of this source (of another topic) was stored with the
    /// same envelope id before this one: forwarding gives it a `webhook-id` of
    /// its own (see [`crate::forward::worker::message_id`]).
    pub id_taken: bool,
    /// Where this event is in the feed, as a `list_events` cursor: what follows
    /// it is read by passing it. (On PostgreSQL the feed is in the order of
    /// the writing transactions, which with several writers can differ from
    /// seq order; see migration postgres/0004.)
    pub position: String,
}

impl StoredEvent {
    /// Re-reads an enrollment event from the log (for re-folds and rebuilds).
    pub fn enrollment_event(&self) -> Result<Option<EnrollmentEvent>> {
        enrollment_event_from_log(&self.topic, &self.event_id, &self.body)
    }
}

pub(crate) fn enrollment_event_from_log(
    topic: &str,
    event_id: &str,
    body: &str,
) -> Result<Option<EnrollmentEvent>> {
    let envelope = thinkific::parse(body.as_bytes(), Some(topic))
        .map_err(|e| StoreError::Corrupt(format!("event {event_id} no longer parses: {e}")))?;
    let new = NewEvent::from_envelope("", &envelope, String::new(), Utc::now());
    Ok(new.enrollment)
}

/// The one event of `found` (the events with one envelope id, in log order)
/// that has `topic`, or the only one when no topic is given; several without a
/// topic are [`StoreError::Ambiguous`].
pub(crate) fn one_event(
    mut found: Vec<StoredEvent>,
    source: &str,
    event_id: &str,
    topic: Option<&str>,
) -> Result<Option<StoredEvent>> {
    if let Some(topic) = topic {
        let topic = thinkific::canonical_topic(topic);
        found.retain(|e| e.topic == topic);
    }
    if found.len() > 1 {
        return Err(StoreError::Ambiguous {
            event_source: source.to_owned(),
            event_id: event_id.to_owned(),
            topics: found.into_iter().map(|e| e.topic).collect(),
        });
    }
    Ok(found.pop())
}

/// What one retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Events whose bodies were dropped.
    pub events: u64,
    pub delivery_attempts: u64,
    /// Finished (delivered or dead) outbox deliveries.
    pub deliveries: u64,
    /// Whole months of prunable events dropped (PostgreSQL's partitioned log;
    /// SQLite prunes row by row and reports 0).
    pub partitions_dropped: u64,
}

/// Events pruned per transaction: short, so deliveries barely wait for it.
pub(crate) const PRUNE_EVENTS_PER_ROUND: i64 = 2000;

#[derive(Debug, Clone, Default)]
pub struct EnrollmentFilter {
    pub source: Option<String>,
    pub course_id: Option<i64>,
    pub user_id: Option<i64>,
    pub email: Option<String>,
    pub status: Option<Status>,
    pub updated_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub source: Option<String>,
    pub topic: Option<String>,
    /// Only events after this log position.
    pub after_seq: Option<i64>,
}

pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;

#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            limit: DEFAULT_PAGE,
            cursor: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Cursors are opaque to clients: base64url of the last key of the page.
pub(crate) fn encode_cursor(parts: &[&str]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

pub(crate) fn decode_cursor(cursor: &str, arity: usize) -> Result<Vec<String>> {
    let invalid = || {
        StoreError::Invalid(
            "invalid cursor: pass next_cursor from the previous page unchanged".into(),
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let parts: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if parts.len() != arity {
        return Err(invalid());
    }
    Ok(parts)
}

/// The id after which a page keyed by one integer id starts.
pub(crate) fn page_after(cursor: &Option<String>) -> Result<i64> {
    match cursor {
        Some(c) => decode_cursor(c, 1)?[0]
            .parse()
            .map_err(|_| StoreError::Invalid("invalid cursor".into())),
        None => Ok(0),
    }
}

/// A page from `limit + 1` fetched rows: the extra row only tells that more follow.
pub(crate) fn page_of<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = (items.len() > limit as usize).then(|| {
        items.truncate(limit as usize);
        encode_cursor(&[&id(items.last().expect("non-empty")).to_string()])
    });
    Page { items, next_cursor }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RebuildReport {
    pub events: u64,
    pub enrollments: u64,
    /// Rows that differed from the stored projection (added or changed).
    pub changed: u64,
    /// Stored rows that no event supports any more.
    pub removed: u64,
    /// Rows of a derived index of the log (SQLite's `event_topics`, the
    /// student index `event_users`) that were missing, wrong or had no event.
    pub index_rows: u64,
    /// Rows of the learning projection (lesson completions, course lessons,
    /// learners, quiz results) that differed (added, changed or removed).
    pub learning: u64,
    /// Rows of the per-course totals (`course_totals`, `course_expiries`,
    /// `activity_days`) that differed from the enrollments.
    pub courses: u64,
}

#[async_trait]
pub trait Store: ForwardStore + AlertStore + Send + Sync + 'static {
    /// Human name of the backend, for logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// How many group-commit writers suit this backend: SQLite has one writer
    /// anyway; PostgreSQL commits several transactions in parallel.
    fn writers(&self) -> usize {
        1
    }

    /// Stores a batch in ONE transaction: each event exactly once per (source,
    /// event id, topic), with its outbox rows and (but for SQLite, which projects behind, see the
    /// module docs) its projection change. Outcomes are in input order.
    async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<AppendOutcome>>;

    /// Stored events this process has not applied to the projection yet
    /// (only SQLite defers it).
    fn projection_waiting(&self) -> u64 {
        0
    }

    /// Returns once every stored event is applied to the projection.
    async fn sync_projection(&self) -> Result<()> {
        Ok(())
    }

    /// Retention: drops the bodies of events received before `cutoff`, keeping
    /// their rows, so a redelivery is still a duplicate. Enrollment events are
    /// kept whole: they are what `rebuild` and the re-fold of a late event
    /// derive the projection from, so the projection is never touched. Delivery
    /// attempts made, and finished outbox deliveries, before `cutoff` are deleted.
    async fn prune_events(&self, cutoff: DateTime<Utc>) -> Result<PruneReport>;

    /// Stores events that retention pruned in another database (for `copy`),
    /// as they are there: row, ids, empty body and `pruned_at`, so that a
    /// redelivery stays a duplicate. They have no projection (enrollment
    /// events are never pruned) and nothing to forward. Outcomes are in input
    /// order, each event once per (source, event id, topic) as in [`Store::append_batch`].
    async fn append_pruned(&self, events: &[StoredEvent]) -> Result<Vec<AppendOutcome>>;

    /// Events whose rows retention dropped with their whole month
    /// (PostgreSQL's partitioned log keeps only their identities), a page at
    /// a time: as pruned events with no body and `pruned_at` now, for `copy`
    /// to carry their identities. SQLite keeps every pruned row in its log:
    /// none.
    async fn dropped_events(&self, _page: &PageRequest) -> Result<Page<StoredEvent>> {
        Ok(Page {
            items: Vec::new(),
            next_cursor: None,
        })
    }

    async fn quarantine(&self, record: NewQuarantine) -> Result<i64>;
    /// Deletes the oldest quarantined deliveries beyond both bounds: beyond
    /// the newest `keep` (ids more than `keep` below the newest, ids being
    /// dense), and beyond the newest whose kept bodies total at most
    /// `max_bytes`; by a range of the primary key; returns how many. See
    /// [`quarantine_prune_due_within`].
    async fn prune_quarantine(&self, keep: u64, max_bytes: u64) -> Result<u64>;
    async fn list_quarantine(
        &self,
        source: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<QuarantineRecord>>;
    async fn get_quarantine(&self, id: i64) -> Result<Option<QuarantineRecord>>;
    /// The id of the newest quarantined delivery (of `source`): cheap, for
    /// live streams to notice new rejections.
    async fn newest_quarantine(&self, source: Option<&str>) -> Result<Option<i64>>;
    async fn resolve_quarantine(&self, id: i64, resolution: &str) -> Result<()>;
    /// Copies a record from another database, keeping its resolution, unless a
    /// record with the same source, arrival time, reason code and body is
    /// already there. Returns whether it was added.
    async fn import_quarantine(&self, record: &QuarantineRecord) -> Result<bool>;

    async fn list_enrollments(
        &self,
        filter: &EnrollmentFilter,
        page: &PageRequest,
        now: DateTime<Utc>,
    ) -> Result<Page<Enrollment>>;
    async fn get_enrollment(&self, source: &str, enrollment_id: i64) -> Result<Option<Enrollment>>;
    /// The enrollment as projected at least through log position `seq` (an
    /// event being forwarded): unlike [`Store::get_enrollment`] it need not
    /// wait for the projection to reach the end of the log, which under load
    /// it rarely does (forwarding renders templates with it).
    async fn enrollment_through(
        &self,
        source: &str,
        enrollment_id: i64,
        _seq: i64,
    ) -> Result<Option<Enrollment>> {
        self.get_enrollment(source, enrollment_id).await
    }
    /// Enrollments of one source as projected at least through log position
    /// `seq` (the newest of a batch of events being forwarded), read together;
    /// ids not found are absent from the answer.
    async fn enrollments_through(
        &self,
        source: &str,
        enrollment_ids: &[i64],
        seq: i64,
    ) -> Result<Vec<Enrollment>> {
        let mut found = Vec::with_capacity(enrollment_ids.len());
        for id in enrollment_ids {
            found.extend(self.enrollment_through(source, *id, seq).await?);
        }
        Ok(found)
    }
    /// The events of one enrollment, oldest log position first.
    async fn enrollment_events(&self, source: &str, enrollment_id: i64)
    -> Result<Vec<StoredEvent>>;
    async fn course_stats(
        &self,
        source: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<CourseStats>>;
    /// New enrollments and completions per UTC day, every day of the query's
    /// range present (zeros included), oldest first (see [`enrolled_on`],
    /// [`completed_on`]).
    async fn activity(&self, query: &ActivityQuery) -> Result<Vec<DayActivity>>;
    async fn list_events(
        &self,
        filter: &EventFilter,
        page: &PageRequest,
    ) -> Result<Page<StoredEvent>>;
    /// The event with this envelope id (and topic, in either spelling of
    /// `cancelled`): [`StoreError::Ambiguous`] when, without a topic, the id
    /// names events of several topics (Thinkific gives `lesson.completed` and
    /// `quiz.attempted` one id).
    async fn get_event(
        &self,
        source: &str,
        event_id: &str,
        topic: Option<&str>,
    ) -> Result<Option<StoredEvent>>;
    /// The feed's end now: the `list_events` cursor after the last event a
    /// reader can see (None when the feed is empty). Everything read from it
    /// later is stored after this call's view: where a live stream starts.
    async fn feed_end(&self) -> Result<Option<String>>;

    /// Records a scheduled reconciliation's run; returns its id.
    async fn insert_reconciliation(&self, run: &NewReconciliation) -> Result<i64>;
    /// Reconciliation runs, newest first, of one source or all.
    async fn list_reconciliations(
        &self,
        source: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<ReconciliationRecord>>;
    /// Where the next reconciliation of `source` starts (None: from the beginning).
    async fn reconciliation_resume_point(&self, source: &str) -> Result<Option<DateTime<Utc>>>;
    /// One reconciliation at a time across every instance sharing the
    /// database: `Some(guard)` to run (the turn lasts while the guard lives),
    /// `None` when another has it now. PostgreSQL: a session advisory lock on
    /// a connection of its own, closed with the guard (so a crash cannot leave
    /// it held). SQLite: a database file has one server.
    async fn reconciliation_turn(&self) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        Ok(Some(Box::new(())))
    }

    /// A course's lesson funnel; `None` when nothing is known of the course.
    async fn course_funnel(
        &self,
        source: &str,
        course_id: i64,
        stalled: &Stalled,
    ) -> Result<Option<Funnel>>;
    /// A page of stalled students (see [`Stalled`]), by days inactive.
    async fn stalled_learners(
        &self,
        filter: &StalledFilter,
        page: &PageRequest,
    ) -> Result<Page<(Enrollment, LearnerRow)>>;
    /// One student: their courses, lessons, quiz results and (the newest
    /// `events`) events naming them.
    async fn student(&self, source: &str, user_id: i64, events: i64) -> Result<StudentRecord>;
    /// The lessons a student completed (in one course, or all).
    async fn lessons_of(
        &self,
        source: &str,
        user_id: i64,
        course_id: Option<i64>,
    ) -> Result<Vec<LessonDone>>;
    /// Per quiz: students, attempts, average and median best grade.
    async fn quiz_stats(
        &self,
        source: Option<&str>,
        course_id: Option<i64>,
    ) -> Result<Vec<QuizStats>>;
    /// Per course: lessons seen and students stalled.
    async fn course_learning(
        &self,
        source: Option<&str>,
        stalled: &Stalled,
    ) -> Result<Vec<CourseLearning>>;

    /// Re-derives the projection from the event log. With `dry_run` nothing is
    /// written; the report says how the stored projection differs.
    async fn rebuild_projection(&self, dry_run: bool) -> Result<RebuildReport>;

    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// Keeps a zstd dictionary for event bodies (see `store/bodies.rs`) and,
    /// with `make_current`, makes it the one new bodies are compressed with
    /// by stores opened from now on (a running one keeps its dictionary until
    /// restarted; every stored dictionary stays readable). Returns its id.
    async fn add_body_dictionary(&self, dictionary: &[u8], make_current: bool) -> Result<i64>;

    /// Brings the query planner's statistics up to date after a bulk load
    /// (`import`): PostgreSQL plans from them, and autovacuum may not analyze
    /// for minutes (measured: a student page 60 ms before `ANALYZE` after a
    /// 1M-event import, 3 ms after); PostgreSQL also vacuums the projection
    /// so its index-only scans skip the heap. SQLite's planner uses no
    /// statistics here.
    async fn refresh_statistics(&self) -> Result<()> {
        Ok(())
    }

    /// One scheduled stalled-milestone scan at a time across instances, like
    /// [`Store::reconciliation_turn`] (a lock of its own).
    async fn milestone_scan_turn(&self) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        Ok(Some(Box::new(())))
    }

    /// The milestone rules this store derives milestones with.
    fn milestone_cell(&self) -> &milestones::RulesCell;

    /// Derives these milestones from now on (see `projection::milestones`).
    fn set_milestones(&self, rules: crate::projection::milestones::MilestoneRules) {
        self.milestone_cell().set(rules);
    }

    fn milestones(&self) -> std::sync::Arc<crate::projection::milestones::MilestoneRules> {
        self.milestone_cell().rules()
    }
}

/// Opens the store a database URL names, running migrations unless told not
/// to. It derives no milestones (see [`open_with_milestones`]).
pub async fn open(url: &str, migrate: bool) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    open_with_milestones(url, migrate, Default::default()).await
}

/// [`open`], deriving these milestones from the first event it projects
/// (on SQLite, the ones a crash left unprojected are projected while opening).
pub async fn open_with_milestones(
    url: &str,
    migrate: bool,
    milestones: crate::projection::milestones::MilestoneRules,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            SqliteStore::open_with_milestones(url, migrate, milestones).await?,
        ))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::open(url, migrate).await?;
        store.set_milestones(milestones);
        Ok(std::sync::Arc::new(store))
    } else {
        anyhow::bail!(
            "unsupported database URL `{}`: use sqlite://PATH (e.g. sqlite://enrollhook.db) \
             or postgres://USER@HOST/DATABASE",
            crate::redact::url(url)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(&["school a", "42"]);
        assert_eq!(decode_cursor(&c, 2).unwrap(), vec!["school a", "42"]);
        assert!(decode_cursor(&c, 1).is_err());
        assert!(decode_cursor("!!!", 2).is_err());
    }
}
