//! Applying stored events to the projection file, inside a transaction of
//! the projector thread ([`super::projector`], which decides when): the
//! enrollment rows folded by [`crate::projection`]'s rules, the course
//! tables and the topic index. rusqlite, like the batch writer: these run
//! back to back many thousand times per transaction.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{ENROLLMENT_UPSERT_ON_CONFLICT, ts, write_error};
use super::courses::{ACTIVITY_UPSERT, EXPIRIES_UPSERT, NEXT_TOTALS_VERSION, TOTALS_UPSERT};
use super::learning;
use crate::projection::learning::{Learning, LearningEvent};
use crate::projection::milestones::{self, LastLesson, Milestone, MilestoneRules};
use crate::projection::{self, Apply, Enrollment, EnrollmentEvent, Version};
use crate::store::shared::courses;
use crate::store::*;

/// Events read back from the log per projection transaction.
const LOG_EVENTS_PER_PROJECTION: i64 = 5_000;

/// One stored event as the log writer hands it over.
pub(super) struct StoredForProjection {
    pub seq: i64,
    pub source: String,
    pub topic: String,
    /// The enrollment event, if it is one.
    pub enrollment: Option<EnrollmentEvent>,
    /// The lesson or quiz event, if it is one.
    pub learning: Option<LearningEvent>,
    /// The student it names.
    pub user_id: Option<i64>,
}

/// Projects the events after the cursor, inside `tx`: from memory when they
/// are all this process's own (`own`, in seq order), else read back from the
/// log (at most [`LOG_EVENTS_PER_PROJECTION`]), up to `head` (the end of the
/// log as read before the transaction). Returns how far it projected.
pub(super) fn project_in_tx(
    tx: &Connection,
    own: &[StoredForProjection],
    head: i64,
    milestones: Milestones<'_>,
) -> Result<i64> {
    let through: i64 = tx
        .prepare_cached("SELECT projected_through_seq FROM projection_cursor")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(write_error)?;
    if through >= head {
        return Ok(through);
    }
    // Re-deriving a wiped projection: what it re-derives reached its
    // milestones long ago (or before they were configured); not again.
    let rules = milestones
        .rules
        .filter(|_| through >= milestones.quiet_through);
    let own: Vec<_> = own
        .iter()
        .filter(|e| e.seq > through && e.seq <= head)
        .collect();
    // The log writer hands events over just after they commit, so the log
    // may already hold some that are still on their way here: project this
    // process's own events up to the last of them, when nothing else lies in
    // between. Seqs are not contiguous (a duplicate can use one up), so when
    // they do not add up, count what the log holds there.
    let own_end = own.last().map_or(through, |e| e.seq);
    let all_own = !own.is_empty()
        && (own.len() as i64 == own_end - through
            || own.len() as i64
                == tx
                    .prepare_cached("SELECT COUNT(*) FROM events WHERE seq > ?1 AND seq <= ?2")
                    .and_then(|mut s| s.query_row([through, own_end], |r| r.get::<_, i64>(0)))
                    .map_err(write_error)?);
    let upto = if all_own {
        let events = own
            .iter()
            .filter_map(|e| Some((e.source.as_str(), e.enrollment.as_ref()?)))
            .collect::<Vec<_>>();
        let learned = own
            .iter()
            .filter_map(|e| Some((e.source.as_str(), e.learning.as_ref()?)))
            .collect::<Vec<_>>();
        project(tx, &events, &learned, own_end, rules)?;
        learning::index_users(
            tx,
            own.iter()
                .filter_map(|e| Some((e.seq, e.source.clone(), e.user_id?))),
        )?;
        let mut index = tx
            .prepare_cached("INSERT INTO event_topics (seq, resource, topic) VALUES (?1, ?2, ?3)")
            .map_err(write_error)?;
        for e in &own {
            index
                .execute(params![e.seq, topic_resource(&e.topic), e.topic])
                .map_err(write_error)?;
        }
        own_end
    } else {
        // Another process appended too, or a crash left events unprojected.
        let mut upto = head.min(through + LOG_EVENTS_PER_PROJECTION);
        if through < milestones.quiet_through {
            upto = upto.min(milestones.quiet_through);
        }
        let logged = logged_events(tx, through, upto)?;
        let events = logged
            .iter()
            .filter_map(|e| Some((e.source.as_str(), e.enrollment.as_ref()?)))
            .collect::<Vec<_>>();
        let learned = logged
            .iter()
            .filter_map(|e| Some((e.source.as_str(), e.learning.as_ref()?)))
            .collect::<Vec<_>>();
        project(tx, &events, &learned, upto, rules)?;
        learning::index_users(
            tx,
            logged
                .iter()
                .filter_map(|e| Some((e.seq, e.source.clone(), e.user_id?))),
        )?;
        tx.prepare_cached(INDEX_TOPICS_FROM_LOG)
            .and_then(|mut s| s.execute([through, upto]))
            .map_err(write_error)?;
        upto
    };
    tx.execute(
        "UPDATE projection_cursor SET projected_through_seq = ?1",
        [upto],
    )
    .map_err(write_error)?;
    Ok(upto)
}

/// The part of a topic that `resource.*` matches: up to its first '.'.
pub(super) fn topic_resource(topic: &str) -> &str {
    topic
        .split_once('.')
        .map_or(topic, |(resource, _)| resource)
}

/// [`topic_resource`] in SQL, of the column `topic`.
macro_rules! resource_of_topic {
    () => {
        "CASE WHEN instr(topic, '.') > 0 THEN substr(topic, 1, instr(topic, '.') - 1) ELSE topic END"
    };
}
pub(super) use resource_of_topic;

/// Indexes the log's events with `?1 < seq <= ?2` by topic.
pub(super) const INDEX_TOPICS_FROM_LOG: &str = concat!(
    "INSERT INTO event_topics (seq, resource, topic) SELECT seq, ",
    resource_of_topic!(),
    ", topic FROM events WHERE seq > ?1 AND seq <= ?2"
);

/// The events of the log with `after < seq <= upto`, in order, as the
/// projection reads them (pruned ones have nothing left to read).
fn logged_events(conn: &Connection, after: i64, upto: i64) -> Result<Vec<StoredForProjection>> {
    let mut select = conn
        .prepare_cached(
            "SELECT seq, source, topic, event_id, body, body_zstd, body_dict, received_at,
                    enrollment_id FROM events
             WHERE seq > ?1 AND seq <= ?2 AND pruned_at IS NULL ORDER BY seq",
        )
        .map_err(write_error)?;
    let rows = select
        .query_map(params![after, upto], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                stored_body(r, 4)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<i64>>(8)?,
            ))
        })
        .map_err(write_error)?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, source, topic, event_id, body, received_at, enrollment_id) =
            row.map_err(write_error)?;
        let received_at = super::codec::req_ts(received_at)?;
        let body = decode_body(body, &source, &event_id, &topic)?;
        let (enrollment, learning, user_id) = match NewEvent::from_log(
            &source,
            &topic,
            &event_id,
            &body,
            received_at,
        ) {
            Ok(new) => (new.enrollment, new.learning, new.user_id),
            // Only enrollment rows must parse (as before learning): any other
            // body that no longer does is left out of lessons and the student
            // index, not allowed to stop the projection.
            Err(e) if enrollment_id.is_none() => {
                tracing::warn!(seq, error = %e, "a stored event no longer parses; left out of the learning projection");
                (None, None, None)
            }
            Err(e) => return Err(e),
        };
        events.push(StoredForProjection {
            seq,
            source,
            topic,
            enrollment,
            learning,
            user_id,
        });
    }
    Ok(events)
}

/// A log row's body columns (`body, body_zstd, body_dict`) from `at` on.
type StoredBody = (String, Option<Vec<u8>>, Option<i64>);

fn stored_body(r: &rusqlite::Row, at: usize) -> rusqlite::Result<StoredBody> {
    Ok((r.get(at)?, r.get(at + 1)?, r.get(at + 2)?))
}

/// The body as received (see `store::bodies`).
fn decode_body(body: StoredBody, source: &str, event_id: &str, topic: &str) -> Result<String> {
    let (text, frame, dictionary) = body;
    crate::store::bodies::decode(
        &|| format!("event `{event_id}` ({topic}) of source `{source}`"),
        text,
        frame,
        dictionary,
    )
}

/// Runs `sql`, which selects (source, topic, event_id, body, body_zstd,
/// body_dict) from the log,
/// and parses each row's enrollment event.
fn enrollment_events_from_log(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(String, EnrollmentEvent)>> {
    let mut select = conn.prepare_cached(sql).map_err(write_error)?;
    let rows = select
        .query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                stored_body(r, 3)?,
            ))
        })
        .map_err(write_error)?;
    let mut events = Vec::new();
    for row in rows {
        let (source, topic, event_id, body) = row.map_err(write_error)?;
        let body = decode_body(body, &source, &event_id, &topic)?;
        if let Some(event) = enrollment_event_from_log(&topic, &event_id, &body)? {
            events.push((source, event));
        }
    }
    Ok(events)
}

/// Applies stored events (in log order) to the projection and the course
/// totals. An enrollment that receives a late event is re-folded from the log
/// instead, after all of these are in the log (the rules do not depend on
/// order, so this is what one event at a time gives).
/// `through`: the last seq being projected, which late events re-fold up to.
fn project(
    conn: &Connection,
    updates: &[(&str, &EnrollmentEvent)],
    learned: &[(&str, &LearningEvent)],
    through: i64,
    rules: Option<&MilestoneRules>,
) -> Result<()> {
    if updates.is_empty() && learned.is_empty() {
        return Ok(());
    }
    let mut state: HashMap<(&str, i64), Enrollment> = HashMap::new();
    for (source, event) in updates {
        let key = (*source, event.payload.id);
        if !state.contains_key(&key)
            && let Some(e) = load_enrollment(conn, key.0, key.1)?
        {
            state.insert(key, e);
        }
    }
    // What the course totals counted for these enrollments before the batch.
    let before = state.clone();

    let mut changed = HashSet::new();
    let mut late = HashSet::new();
    for &(source, event) in updates {
        let key = (source, event.payload.id);
        if late.contains(&key) {
            continue; // the re-fold below includes this event
        }
        match projection::apply(state.get(&key), source, event) {
            Apply::Newer(next) => {
                state.insert(key, next);
                changed.insert(key);
            }
            Apply::Older => {
                late.insert(key);
            }
        }
    }
    for key in late {
        if let Some(folded) = refold(conn, key.0, key.1, through)? {
            state.insert(key, folded);
            changed.insert(key);
        }
    }
    let mut rows: Vec<&Enrollment> = changed.iter().filter_map(|k| state.get(k)).collect();
    rows.sort_unstable_by(|a, b| (&a.source, a.enrollment_id).cmp(&(&b.source, b.enrollment_id)));
    let changes: Vec<(Option<&Enrollment>, &Enrollment)> = rows
        .iter()
        .map(|row| (before.get(&(row.source.as_str(), row.enrollment_id)), *row))
        .collect();
    adjust_course_tables(conn, &changes).map_err(write_error)?;
    static UPSERT: OnceLock<String> = OnceLock::new();
    let sql = UPSERT.get_or_init(|| {
        format!(
            "INSERT INTO enrollments ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) {ENROLLMENT_UPSERT_ON_CONFLICT}",
            super::codec::ENROLLMENT_WRITE_COLUMNS
        )
    });
    let mut upsert = conn.prepare_cached(sql).map_err(write_error)?;
    let changed_rows: Vec<&Enrollment> = rows.clone();
    for e in rows {
        upsert
            .execute(params![
                e.source,
                e.enrollment_id,
                e.user_id,
                e.email,
                e.first_name,
                e.last_name,
                e.course_id,
                e.course_name,
                e.progress,
                e.trial,
                e.completed,
                ts(e.activated_at),
                ts(e.started_at),
                ts(e.completed_at),
                ts(e.expiry_date),
                ts(e.created_at),
                ts(e.updated_at),
                e.days_to_complete(),
                e.event_count,
                ts(e.version.updated_at),
                ts(e.version.created_at),
                e.version.event_id,
            ])
            .map_err(write_error)?;
    }
    // The learning projection, after the enrollments its learners copy.
    let needs = Learning::needs(learned.iter().copied(), changed_rows.iter().copied());
    let mut learning_state = None;
    if !needs.is_empty() {
        let mut state = learning::load(conn, &needs)?;
        let loaded_stalls = state.stall_keys();
        for &(source, event) in learned {
            state.apply(source, event);
        }
        for e in &changed_rows {
            state.enrollment(e);
        }
        learning::write(conn, &state)?;
        learning::write_stall_deltas(conn, &state.stall_deltas(&loaded_stalls))?;
        learning::write_enrolled(conn, &state.changed.enrolled)?;
        learning_state = Some(state);
    }
    if let Some(rules) = rules.filter(|r| !r.is_empty()) {
        let found = detect_milestones(rules, updates, learned, &changes);
        if !found.is_empty() {
            write_pending(conn, &found, &state, learning_state.as_ref())?;
        }
    }
    Ok(())
}

/// The milestones of this projection step, in memory: from the enrollments'
/// states before and after it and its events (see `projection::milestones`).
fn detect_milestones(
    rules: &MilestoneRules,
    updates: &[(&str, &EnrollmentEvent)],
    learned: &[(&str, &LearningEvent)],
    changes: &[(Option<&Enrollment>, &Enrollment)],
) -> Vec<Milestone> {
    let mut found = Vec::new();
    if !changes.is_empty() {
        let mut events: HashMap<(&str, i64), Vec<&EnrollmentEvent>> = HashMap::new();
        for &(source, e) in updates {
            events.entry((source, e.payload.id)).or_default().push(e);
        }
        for &(before, after) in changes {
            if let Some(r) = rules.of(&after.source) {
                let of_this = events
                    .get(&(after.source.as_str(), after.enrollment_id))
                    .map_or(&[][..], Vec::as_slice);
                found.extend(milestones::detect(r, before, after, of_this));
            }
        }
    }
    if rules.any_lessons() {
        for &(source, event) in learned {
            if let (LearningEvent::Lesson(lesson), Some(r)) = (event, rules.of(source)) {
                found.extend(milestones::detect_lesson(r, source, lesson));
            }
        }
    }
    found
}

/// Keeps the milestones in the projection file, in this transaction: a
/// crash either keeps both the projection step and its milestones or
/// neither (and the step is re-applied). The store moves them into the log
/// after the commit (`SqliteStore::emit_milestones`).
fn write_pending(
    conn: &Connection,
    found: &[Milestone],
    state: &HashMap<(&str, i64), Enrollment>,
    learning_state: Option<&Learning>,
) -> Result<()> {
    let now = Utc::now();
    let mut insert = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO milestones_pending (source, event_id, topic, body)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(write_error)?;
    for m in found {
        let enrollment = match m.enrollment_id {
            Some(id) => match state.get(&(m.source.as_str(), id)) {
                Some(e) => Some(e.clone()),
                None => load_enrollment(conn, &m.source, id)?,
            },
            None => None,
        };
        let last_lesson = enrollment.as_ref().and_then(|e| {
            let learner =
                learning_state?
                    .learners
                    .get(&(e.source.clone(), e.course_id?, e.user_id?))?;
            last_lesson_of(learner, learning_state?)
        });
        let body = m.body(enrollment.as_ref(), last_lesson.as_ref(), now);
        insert
            .execute(params![m.source, m.event_id(), m.topic(), body])
            .map_err(write_error)?;
    }
    Ok(())
}

/// A learner's most recent lesson, with its name when the batch knows it.
pub(crate) fn last_lesson_of(
    learner: &crate::projection::learning::Learner,
    learning: &Learning,
) -> Option<LastLesson> {
    let lesson_id = learner.last_lesson_id?;
    let name = learning
        .lessons
        .get(&(learner.source.clone(), learner.course_id, lesson_id))
        .and_then(|l| l.info.name.clone());
    Some(LastLesson {
        lesson_id,
        name,
        at: learner.last_lesson_at,
    })
}

/// Which milestones a projection transaction derives.
#[derive(Clone, Copy)]
pub(super) struct Milestones<'a> {
    /// None: none (no source has any, or a process that does not emit them).
    pub rules: Option<&'a MilestoneRules>,
    /// Events up to this seq are re-derived after the projection was wiped:
    /// their milestones are not derived again.
    pub quiet_through: i64,
}

fn adjust_course_tables(
    conn: &Connection,
    changes: &[(Option<&Enrollment>, &Enrollment)],
) -> rusqlite::Result<()> {
    let deltas = courses::deltas(changes);
    let version: i64 = if deltas.totals.is_empty() {
        0
    } else {
        conn.prepare_cached(NEXT_TOTALS_VERSION)?
            .query_row([], |r| r.get(0))?
    };
    let mut totals = conn.prepare_cached(TOTALS_UPSERT)?;
    for ((source, course_id), d) in &deltas.totals {
        totals.execute(params![
            source,
            course_id,
            d.name,
            d.enrollments,
            d.completed,
            d.open_trials,
            d.progress_micros,
            d.with_days,
            version
        ])?;
    }
    let mut expiries = conn.prepare_cached(EXPIRIES_UPSERT)?;
    for ((source, course_id, month), (enrollments, trials)) in &deltas.expiries {
        expiries.execute(params![source, course_id, month, enrollments, trials])?;
    }
    let mut days = conn.prepare_cached(ACTIVITY_UPSERT)?;
    for ((day, source, course_id), (enrolled, completed)) in &deltas.days {
        days.execute(params![day, source, course_id, enrolled, completed])?;
    }
    Ok(())
}

fn load_enrollment(conn: &Connection, source: &str, id: i64) -> Result<Option<Enrollment>> {
    static SELECT: OnceLock<String> = OnceLock::new();
    let sql = SELECT.get_or_init(|| {
        format!(
            "SELECT {} FROM enrollments WHERE source = ?1 AND enrollment_id = ?2",
            super::codec::ENROLLMENT_COLUMNS
        )
    });
    let mut select = conn.prepare_cached(sql).map_err(write_error)?;
    select
        .query_row(params![source, id], enrollment_from_row)
        .optional()
        .map_err(write_error)
}

/// Folds the logged events of one enrollment up to `through` (for late events).
fn refold(conn: &Connection, source: &str, id: i64, through: i64) -> Result<Option<Enrollment>> {
    let events = enrollment_events_from_log(
        conn,
        "SELECT source, topic, event_id, body, body_zstd, body_dict FROM events
         WHERE source = ?1 AND enrollment_id = ?2 AND seq <= ?3",
        params![source, id, through],
    )?;
    Ok(projection::fold(source, events.into_iter().map(|(_, e)| e)))
}

/// A timestamp column (RFC 3339 text), as the sqlx reader parses it.
fn ts_col(row: &rusqlite::Row, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    idx,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })
    })
    .transpose()
}

/// A row of `SELECT {ENROLLMENT_COLUMNS}` (the order of that list).
fn enrollment_from_row(row: &rusqlite::Row) -> rusqlite::Result<Enrollment> {
    Ok(Enrollment {
        source: row.get(0)?,
        enrollment_id: row.get(1)?,
        user_id: row.get(2)?,
        email: row.get(3)?,
        first_name: row.get(4)?,
        last_name: row.get(5)?,
        course_id: row.get(6)?,
        course_name: row.get(7)?,
        progress: row.get(8)?,
        trial: row.get(9)?,
        completed: row.get(10)?,
        activated_at: ts_col(row, 11)?,
        started_at: ts_col(row, 12)?,
        completed_at: ts_col(row, 13)?,
        expiry_date: ts_col(row, 14)?,
        created_at: ts_col(row, 15)?,
        updated_at: ts_col(row, 16)?,
        event_count: row.get(17)?,
        version: Version {
            updated_at: ts_col(row, 18)?,
            created_at: ts_col(row, 19)?,
            event_id: row.get(20)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_resource_is_the_part_before_the_first_dot() {
        assert_eq!(topic_resource("enrollment.progress"), "enrollment");
        assert_eq!(
            topic_resource("order_transaction.succeeded"),
            "order_transaction"
        );
        assert_eq!(topic_resource("a.b.c"), "a");
        assert_eq!(topic_resource("nodot"), "nodot");
    }
}
