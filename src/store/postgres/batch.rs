//! A batch of deliveries in one transaction: events, projection, outbox (see
//! the locking order in the parent module's docs).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::codec::*;
use super::learning;
use super::outbox;
use crate::projection::learning::{
    EnrolledCounts, Learner, Learning, LearningEvent, Needs, StallDeltas,
};
use crate::projection::milestones::{self, LastLesson, MilestoneRules};
use crate::projection::{self, Enrollment, EnrollmentEvent};
use crate::store::bodies::Encoder;
use crate::store::shared::courses;
use crate::store::*;
use tracing::Instrument as _;

/// The advisory lock of one enrollment: `(hash of source, enrollment id folded
/// to 32 bits)`. A collision only serialises two unrelated enrollments. The hash
/// must stay stable across versions: instances of different versions share locks.
fn enrollment_lock(source: &str, enrollment_id: i64) -> (i32, i32) {
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in source.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let folded = (enrollment_id as u64 ^ (enrollment_id as u64 >> 32)) as u32;
    (h as i32, folded as i32)
}

/// Deadlocks and serialization failures: the batch did nothing and can be retried.
pub(super) fn is_retryable(e: &StoreError) -> bool {
    matches!(e.sqlstate().as_deref(), Some("40P01" | "40001"))
}

/// The advisory lock of one envelope id of a source (the one-bigint key
/// space, apart from the enrollments' two-int keys): transactions storing
/// events with one id take turns, so each sees whether another already has
/// it (`id_taken`, which forwarding's `webhook-id` depends on). FNV-1a, 64
/// bits; stable across versions, like [`enrollment_lock`].
fn event_id_lock(source: &str, event_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in source.bytes().chain([0xff]).chain(event_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// The advisory locks a batch's events call for, taken with its BEGIN: the
/// envelope ids (one-bigint keys), then the enrollments, then the learning
/// rows (two-int keys), each kind in sorted order, so concurrent batches wait
/// on each other in one order. A superset (duplicates' keys too) of what the
/// projection then needs; a learner row that only a stored enrollment names
/// (an event without its course or user) is locked when found
/// ([`lock_missing`]), out of that order: a deadlock it may cause is
/// detected by PostgreSQL and the batch retried ([`is_retryable`]).
struct BatchLocks {
    ids: Vec<i64>,
    /// Enrollments then learning rows, as taken.
    ordered: Vec<(i32, i32)>,
    /// The same, for lookups.
    pairs: BTreeSet<(i32, i32)>,
}

impl BatchLocks {
    fn of(events: &[NewEvent], order: &[usize]) -> BatchLocks {
        let mut ids: Vec<i64> = order
            .iter()
            .map(|&i| event_id_lock(&events[i].source, &events[i].event_id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut enrollments = BTreeSet::new();
        let mut learners = Vec::new();
        for ev in events {
            if let Some(e) = &ev.enrollment {
                let p = &e.payload;
                enrollments.insert(enrollment_lock(&ev.source, p.id));
                if let (Some(course), Some(user)) = (p.course_id, p.user_id) {
                    learners.push((ev.source.as_str(), course, user));
                }
            }
        }
        let learned = events
            .iter()
            .filter_map(|ev| Some((ev.source.as_str(), ev.learning.as_ref()?)));
        let mut needs = Learning::needs(learned, []);
        for (source, course, user) in learners {
            needs.learners.insert((source.to_owned(), course, user));
        }
        let learning: BTreeSet<(i32, i32)> = learning_locks(&needs).collect();
        let ordered: Vec<(i32, i32)> = enrollments
            .iter()
            .copied()
            .chain(
                learning
                    .iter()
                    .copied()
                    .filter(|k| !enrollments.contains(k)),
            )
            .collect();
        BatchLocks {
            ids,
            pairs: ordered.iter().copied().collect(),
            ordered,
        }
    }

    /// The BEGIN statement that takes them (simple query protocol).
    fn begin(&self) -> String {
        let list = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(",");
        let mut sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{}}}'::int8[]) AS k ORDER BY k",
            list(&mut self.ids.iter().map(i64::to_string))
        );
        if !self.ordered.is_empty() {
            sql.push_str(&format!(
                "; SELECT pg_advisory_xact_lock(k1, k2)
                 FROM unnest('{{{}}}'::int4[], '{{{}}}'::int4[]) WITH ORDINALITY AS k(k1, k2, n)
                 ORDER BY n",
                list(&mut self.ordered.iter().map(|k| k.0.to_string())),
                list(&mut self.ordered.iter().map(|k| k.1.to_string())),
            ));
        }
        sql
    }
}

/// Takes those of `wanted` that are not `held` yet, in sorted order.
async fn lock_missing(
    tx: &mut PgConnection,
    wanted: &BTreeSet<(i32, i32)>,
    held: &BTreeSet<(i32, i32)>,
) -> Result<()> {
    let (k1, k2): (Vec<i32>, Vec<i32>) = wanted.difference(held).copied().unzip();
    if k1.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k1, k2)
         FROM unnest($1::int4[], $2::int4[]) AS k(k1, k2) ORDER BY k1, k2",
    )
    .bind(&k1)
    .bind(&k2)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The locks of the learning rows `needs` names.
fn learning_locks(needs: &Needs) -> impl Iterator<Item = (i32, i32)> + '_ {
    let learners = needs
        .learners
        .iter()
        .map(|(s, course, user)| learning_lock(b'L', s, *course, *user));
    let lessons = needs
        .lessons
        .iter()
        .map(|(s, course, lesson)| learning_lock(b'C', s, *course, *lesson));
    let quizzes = needs
        .quizzes
        .iter()
        .map(|(s, quiz, user)| learning_lock(b'Q', s, *quiz, *user));
    learners.chain(lessons).chain(quizzes)
}

/// One batch, one transaction (see the module comment for the locking order).
/// The milestones the batch reaches (`rules`) are stored in it too.
pub(super) async fn append_on(
    conn: &mut PgConnection,
    events: &[NewEvent],
    rules: &MilestoneRules,
    encoder: &Encoder,
) -> Result<Vec<AppendOutcome>> {
    let mut outcomes = vec![AppendOutcome::Duplicate; events.len()];
    let key = |i: usize| (&events[i].source, &events[i].event_id, &events[i].topic);
    // The first occurrence of each (source, event id, topic) is the one
    // inserted, in sorted order; later occurrences in the batch are duplicates.
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| key(a).cmp(&key(b)).then(a.cmp(&b)));
    order.dedup_by(|b, a| key(*a) == key(*b));
    // An id an earlier event of this batch (another topic) has is taken; one
    // the log already has is found by the insert itself.
    let mut first_topic: HashMap<(&str, &str), &str> = HashMap::new();
    let mut taken_in_batch = vec![false; events.len()];
    for (i, ev) in events.iter().enumerate() {
        let first = first_topic
            .entry((ev.source.as_str(), ev.event_id.as_str()))
            .or_insert(ev.topic.as_str());
        taken_in_batch[i] = *first != ev.topic;
    }

    // Every lock the batch's events call for, with BEGIN, in one round trip
    // (a batch's time is mostly round trips): the keys are our own integers,
    // written as literals.
    let locks = BatchLocks::of(events, &order);
    let mut tx = conn.begin_with(sqlx::AssertSqlSafe(locks.begin())).await?;
    let seqs = insert_events(&mut tx, events, &order, &taken_in_batch, encoder).await?;

    // New enrollment events, grouped by enrollment in sorted order.
    let mut touched: BTreeMap<(&str, i64), Vec<&EnrollmentEvent>> = BTreeMap::new();
    for &i in &order {
        let ev = &events[i];
        let Some(&seq) = seqs.get(&(ev.source.clone(), ev.event_id.clone(), ev.topic.clone()))
        else {
            continue;
        };
        outcomes[i] = AppendOutcome::Stored { seq };
        if let Some(enrollment) = &ev.enrollment {
            touched
                .entry((ev.source.as_str(), enrollment.payload.id))
                .or_default()
                .push(enrollment);
        }
    }
    // Traced as the batch's `projection` span (see `crate::telemetry`).
    let projection = if crate::telemetry::in_trace() {
        tracing::info_span!(target: crate::telemetry::TARGET, "projection",
            enrollments = touched.len())
    } else {
        tracing::Span::none()
    };
    let (next, before, learned, stall_deltas) = async {
        let mut next = Vec::new();
        let mut before = Vec::new();
        if !touched.is_empty() {
            (next, before) = project(&mut tx, &touched, &locks.pairs).await?;
            upsert_enrollments(&mut tx, &next).await?;
        }
        let (learned, stall_deltas) =
            project_learning(&mut tx, events, &outcomes, &next, &locks.pairs).await?;
        Ok::<_, StoreError>((next, before, learned, stall_deltas))
    }
    .instrument(projection)
    .await?;
    let mut stored: Vec<(&NewEvent, i64)> = events
        .iter()
        .zip(&outcomes)
        .filter_map(|(ev, o)| match o {
            AppendOutcome::Stored { seq } => Some((ev, *seq)),
            AppendOutcome::Duplicate => None,
        })
        .collect();
    // Milestones: derived here, in the transaction that advances the
    // projection, so both commit or neither does.
    let reached = if rules.is_empty() {
        Vec::new()
    } else {
        milestone_events(
            &mut tx,
            rules,
            &touched,
            &before,
            &next,
            &stored,
            learned.as_ref(),
        )
        .await?
    };
    if !reached.is_empty() {
        let order: Vec<usize> = (0..reached.len()).collect();
        let seqs = insert_events(
            &mut tx,
            &reached,
            &order,
            &vec![false; reached.len()],
            encoder,
        )
        .await?;
        for ev in &reached {
            if let Some(&seq) =
                seqs.get(&(ev.source.clone(), ev.event_id.clone(), ev.topic.clone()))
            {
                stored.push((ev, seq));
            }
        }
    }
    // Forwarding: the outbox rows commit with their events, or not at all.
    let subscriptions =
        crate::store::shared::forward::enabled_subscriptions::<sqlx::Postgres>(&mut tx).await?;
    if !subscriptions.is_empty() && !stored.is_empty() {
        outbox::enqueue(&mut tx, &subscriptions, &stored).await?;
    }
    // Last: the course totals and the buckets of today are rows every
    // concurrent batch updates (one statement, each table in key order).
    let changes: Vec<(Option<&Enrollment>, &Enrollment)> =
        before.iter().map(Option::as_ref).zip(&next).collect();
    let no_learners = EnrolledCounts::new();
    let enrolled = learned
        .as_ref()
        .map_or(&no_learners, |l| &l.changed.enrolled);
    super::courses::write_deltas(&mut tx, &courses::deltas(&changes), &stall_deltas, enrolled)
        .await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Inserts `events` (the indexes `order` names, in that order; each once per
/// (source, event id, topic) already), returning the seq of each one stored,
/// and indexes the stored ones by student (`event_users`) in the same statement.
async fn insert_events(
    tx: &mut PgConnection,
    events: &[NewEvent],
    order: &[usize],
    taken_in_batch: &[bool],
    encoder: &Encoder,
) -> Result<HashMap<(String, String, String), i64>> {
    let sources: Vec<String> = order.iter().map(|&i| events[i].source.clone()).collect();
    let ids: Vec<String> = order.iter().map(|&i| events[i].event_id.clone()).collect();
    let topics: Vec<String> = order.iter().map(|&i| events[i].topic.clone()).collect();
    let created: Vec<Option<DateTime<Utc>>> = order
        .iter()
        .map(|&i| us_opt(events[i].created_at))
        .collect();
    let received: Vec<DateTime<Utc>> = order.iter().map(|&i| us(events[i].received_at)).collect();
    let enrollment_ids: Vec<Option<i64>> =
        order.iter().map(|&i| events[i].enrollment_id()).collect();
    // Bodies compressed with the current dictionary (`body` stays empty).
    let frames: Vec<Vec<u8>> = order
        .iter()
        .map(|&i| encoder.compress(&events[i].body))
        .collect();
    let positions: Vec<i32> = order.iter().map(|&i| i as i32).collect();
    let taken: Vec<bool> = order.iter().map(|&i| taken_in_batch[i]).collect();
    let users: Vec<Option<i64>> = order.iter().map(|&i| events[i].user_id).collect();
    // Sequence numbers follow the input (arrival) order; rows are inserted in
    // key order, so concurrent batches wait on each other's keys in one order.
    let inserted: Vec<(String, String, String, i64)> = sqlx::query_as(
        "WITH input AS (
             SELECT nextval('events_seq_seq') AS seq, source, event_id, topic, created_at,
                    received_at, enrollment_id, body_zstd, taken, user_id
             FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::timestamptz[], $6::bigint[], $7::bytea[], $8::int4[], $9::bool[],
                         $11::bigint[])
                  AS u(source, event_id, topic, created_at, received_at, enrollment_id, body_zstd,
                       pos, taken, user_id)
             ORDER BY pos),
         -- Exactly once by the identity table (migration 23): only events
         -- whose identity is new here reach the log.
         ids AS (
             INSERT INTO event_ids (source, event_id, topic, seq, received_at)
             SELECT source, event_id, topic, seq, received_at FROM input
             ORDER BY source, event_id, topic
             ON CONFLICT (source, event_id, topic) DO NOTHING
             RETURNING seq),
         stored AS (
             INSERT INTO events (seq, source, event_id, topic, created_at, received_at,
                                 enrollment_id, body, body_zstd, body_dict, id_taken)
             SELECT seq, source, event_id, topic, created_at, received_at, enrollment_id, '',
                    body_zstd, $10, taken OR earlier.found IS NOT NULL
             FROM input JOIN ids USING (seq)
             -- One index probe per event: as an `EXISTS` beside `OR`, the planner
             -- hashed a scan of the whole identity table instead (auto_explain:
             -- every batch read all of event_ids).
             LEFT JOIN LATERAL (
                 SELECT true AS found FROM event_ids AS e
                 WHERE e.source = input.source AND e.event_id = input.event_id LIMIT 1
             ) AS earlier ON true
             RETURNING source, event_id, topic, seq),
         users AS (
             INSERT INTO event_users (source, user_id, seq)
             SELECT stored.source, input.user_id, stored.seq
             FROM stored JOIN input USING (seq)
             WHERE input.user_id IS NOT NULL
             ON CONFLICT DO NOTHING)
         SELECT source, event_id, topic, seq FROM stored",
    )
    .bind(&sources)
    .bind(&ids)
    .bind(&topics)
    .bind(&created)
    .bind(&received)
    .bind(&enrollment_ids)
    .bind(&frames)
    .bind(&positions)
    .bind(&taken)
    .bind(encoder.id())
    .bind(&users)
    .fetch_all(&mut *tx)
    .await?;
    Ok(inserted
        .into_iter()
        .map(|(source, event_id, topic, seq)| ((source, event_id, topic), seq))
        .collect())
}

/// The milestone events this batch reaches (see `projection::milestones`),
/// from what the projection step has in memory; a configured lesson whose
/// enrollment the batch did not touch reads that one row.
async fn milestone_events(
    tx: &mut PgConnection,
    rules: &MilestoneRules,
    touched: &BTreeMap<(&str, i64), Vec<&EnrollmentEvent>>,
    before: &[Option<Enrollment>],
    next: &[Enrollment],
    stored: &[(&NewEvent, i64)],
    learned: Option<&Learning>,
) -> Result<Vec<NewEvent>> {
    let mut found = Vec::new();
    for (before, after) in before.iter().zip(next) {
        if let Some(r) = rules.of(&after.source) {
            let of_this = touched
                .get(&(after.source.as_str(), after.enrollment_id))
                .map_or(&[][..], Vec::as_slice);
            found.extend(milestones::detect(r, before.as_ref(), after, of_this));
        }
    }
    if rules.any_lessons() {
        for (ev, _) in stored {
            if let (Some(LearningEvent::Lesson(lesson)), Some(r)) =
                (&ev.learning, rules.of(&ev.source))
            {
                found.extend(milestones::detect_lesson(r, &ev.source, lesson));
            }
        }
    }
    let now = Utc::now();
    let mut reached = Vec::with_capacity(found.len());
    for m in found {
        let enrollment = match m.enrollment_id {
            Some(id) => match next
                .iter()
                .find(|e| e.source == m.source && e.enrollment_id == id)
            {
                Some(e) => Some(e.clone()),
                None => {
                    crate::store::shared::log::load_enrollment::<sqlx::Postgres>(tx, &m.source, id)
                        .await?
                }
            },
            None => None,
        };
        let last_lesson = enrollment.as_ref().and_then(|e| {
            let learning = learned?;
            let learner = learning
                .learners
                .get(&(e.source.clone(), e.course_id?, e.user_id?))?;
            last_lesson_of(learner, learning)
        });
        let body = m.body(enrollment.as_ref(), last_lesson.as_ref(), now);
        reached.push(NewEvent::from_log(
            &m.source,
            m.topic(),
            &m.event_id(),
            &body,
            now,
        )?);
    }
    Ok(reached)
}

/// A learner's most recent lesson, with its name when the batch knows it.
fn last_lesson_of(learner: &Learner, learning: &Learning) -> Option<LastLesson> {
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

/// The learning projection's part of a batch: the stored events' lessons and
/// quizzes, the learners of the changed enrollments, and the student index.
async fn project_learning(
    tx: &mut PgConnection,
    events: &[NewEvent],
    outcomes: &[AppendOutcome],
    enrollments: &[Enrollment],
    held: &BTreeSet<(i32, i32)>,
) -> Result<(Option<Learning>, StallDeltas)> {
    let stored: Vec<(&NewEvent, i64)> = events
        .iter()
        .zip(outcomes)
        .filter_map(|(ev, o)| match o {
            AppendOutcome::Stored { seq } => Some((ev, *seq)),
            AppendOutcome::Duplicate => None,
        })
        .collect();
    let learned: Vec<(&str, &LearningEvent)> = stored
        .iter()
        .filter_map(|(ev, _)| Some((ev.source.as_str(), ev.learning.as_ref()?)))
        .collect();
    let needs = Learning::needs(learned.iter().copied(), enrollments);
    if needs.is_empty() {
        return Ok((None, StallDeltas::new()));
    }
    // Rows other writers may change at once: locked like enrollments, after
    // them, in sorted order; with BEGIN already, unless only the stored
    // enrollment told whose learner row it is (see [`BatchLocks`]).
    let locks: BTreeSet<(i32, i32)> = learning_locks(&needs).collect();
    lock_missing(tx, &locks, held).await?;
    let mut state = learning::load(tx, &needs).await?;
    let loaded_stalls = state.stall_keys();
    for (source, event) in learned {
        state.apply(source, event);
    }
    for e in enrollments {
        state.enrollment(e);
    }
    learning::write(tx, &state).await?;
    let stall_deltas = state.stall_deltas(&loaded_stalls);
    Ok((Some(state), stall_deltas))
}

/// The advisory lock of a learning row: a kind tag and the source hashed,
/// and its two ids folded (a collision only serialises two batches).
fn learning_lock(kind: u8, source: &str, a: i64, b: i64) -> (i32, i32) {
    let mut h: u32 = 0x811c_9dc5;
    for byte in std::iter::once(kind).chain(source.bytes()) {
        h ^= u32::from(byte);
        h = h.wrapping_mul(0x0100_0193);
    }
    let folded = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64);
    (h as i32, (folded ^ (folded >> 32)) as u32 as i32)
}

/// Locks the touched enrollments and computes their new state and their state
/// before, in the same order (for the course totals and milestones).
async fn project(
    tx: &mut PgConnection,
    touched: &BTreeMap<(&str, i64), Vec<&EnrollmentEvent>>,
    held: &BTreeSet<(i32, i32)>,
) -> Result<(Vec<Enrollment>, Vec<Option<Enrollment>>)> {
    let locks: BTreeSet<(i32, i32)> = touched
        .keys()
        .map(|(source, id)| enrollment_lock(source, *id))
        .collect();
    lock_missing(tx, &locks, held).await?;

    let (sources, ids): (Vec<&str>, Vec<i64>) = touched.keys().copied().unzip();
    // FOR UPDATE also waits for a running `rebuild` (it locks the table).
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments
         WHERE (source, enrollment_id) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))
         FOR UPDATE"
    )))
    .bind(&sources)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut current: HashMap<(String, i64), Enrollment> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let e = enrollment_from_row(row)?;
        current.insert((e.source.clone(), e.enrollment_id), e);
    }

    let mut next = Vec::with_capacity(touched.len());
    let mut before = Vec::new();
    for (&(source, id), new) in touched {
        let mut new: Vec<&EnrollmentEvent> = new.clone();
        new.sort_by_cached_key(|e| e.version());
        let state = current.remove(&(source.to_owned(), id));
        let state_before = state.clone();
        let all_newer = state
            .as_ref()
            .is_none_or(|s| new.first().is_some_and(|e| e.version() > s.version));
        let folded = if all_newer {
            // Each event is newer than the last: stepping equals a full fold.
            new.iter()
                .fold(state, |s, e| Some(projection::step(s, source, e)))
        } else {
            // A late event: re-fold from the log (which holds this batch's events too).
            crate::store::shared::rebuild::refold::<sqlx::Postgres>(tx, source, id, None)
                .await?
                .1
        };
        if let Some(after) = folded {
            next.push(after);
            before.push(state_before);
        }
    }
    Ok((next, before))
}

pub(super) async fn upsert_enrollments(tx: &mut PgConnection, rows: &[Enrollment]) -> Result<()> {
    fn col<T>(rows: &[Enrollment], f: impl Fn(&Enrollment) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    sqlx::query(concat!(
        "INSERT INTO enrollments (",
        enrollment_write_columns!(),
        ")
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
            $6::text[], $7::bigint[], $8::text[], $9::float8[], $10::bool[], $11::bool[],
            $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
            $16::timestamptz[], $17::timestamptz[], $18::float8[], $19::bigint[],
            $20::timestamptz[], $21::timestamptz[], $22::text[])
         ",
        enrollment_upsert_on_conflict!()
    ))
    .bind(col(rows, |e| e.source.clone()))
    .bind(col(rows, |e| e.enrollment_id))
    .bind(col(rows, |e| e.user_id))
    .bind(col(rows, |e| e.email.clone()))
    .bind(col(rows, |e| e.first_name.clone()))
    .bind(col(rows, |e| e.last_name.clone()))
    .bind(col(rows, |e| e.course_id))
    .bind(col(rows, |e| e.course_name.clone()))
    .bind(col(rows, |e| e.progress))
    .bind(col(rows, |e| e.trial))
    .bind(col(rows, |e| e.completed))
    .bind(col(rows, |e| us_opt(e.activated_at)))
    .bind(col(rows, |e| us_opt(e.started_at)))
    .bind(col(rows, |e| us_opt(e.completed_at)))
    .bind(col(rows, |e| us_opt(e.expiry_date)))
    .bind(col(rows, |e| us_opt(e.created_at)))
    .bind(col(rows, |e| us_opt(e.updated_at)))
    .bind(col(rows, Enrollment::days_to_complete))
    .bind(col(rows, |e| e.event_count))
    .bind(col(rows, |e| us_opt(e.version.updated_at)))
    .bind(col(rows, |e| us_opt(e.version.created_at)))
    .bind(col(rows, |e| e.version.event_id.clone()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Inserts events whose bodies retention emptied elsewhere (see
/// [`Store::append_pruned`]): each identity into `event_ids` and, when it
/// is new, its row into the log; `tx` is a transaction the caller commits
/// (after making the months' partitions).
pub(super) async fn insert_pruned(
    tx: &mut PgConnection,
    events: &[StoredEvent],
) -> Result<Vec<AppendOutcome>> {
    let mut outcomes = Vec::with_capacity(events.len());
    for e in events {
        // As in the batch: an id an earlier event already has is taken.
        let seq: Option<i64> = sqlx::query_scalar(
            "WITH id AS (
                 INSERT INTO event_ids (source, event_id, topic, seq, received_at)
                 VALUES ($1, $2, $3, nextval('events_seq_seq'), $5)
                 ON CONFLICT (source, event_id, topic) DO NOTHING
                 RETURNING seq)
             INSERT INTO events (seq, source, event_id, topic, created_at, received_at,
                                 enrollment_id, body, pruned_at, id_taken)
             SELECT seq, $1, $2, $3, $4, $5, $6, '', $7,
                    EXISTS (SELECT 1 FROM event_ids WHERE source = $1 AND event_id = $2)
             FROM id
             RETURNING seq",
        )
        .bind(&e.source)
        .bind(&e.event_id)
        .bind(&e.topic)
        .bind(us_opt(e.created_at))
        .bind(us(e.received_at))
        .bind(e.enrollment_id)
        .bind(e.pruned_at)
        .fetch_optional(&mut *tx)
        .await?;
        outcomes.push(match seq {
            Some(seq) => AppendOutcome::Stored { seq },
            None => AppendOutcome::Duplicate,
        });
    }
    Ok(outcomes)
}
