//! The learning projection's rows (see [`crate::projection::learning`]),
//! written once for both backends: their columns and values, and `rebuild`'s
//! re-derivation. A batch loads and writes them with each backend's own
//! statements, over the same column lists and values: SQLite's projector
//! thread through `sqlite::learning` (rusqlite), PostgreSQL's batch through
//! `postgres::learning` (one array per column).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use crate::projection::Enrollment;
use crate::projection::learning::{
    CourseLesson, EnrolledCounts, Learner, Learning, LearningEvent, LessonCompletion, LessonInfo,
    QuizResult, StallDeltas, StallKey,
};
use crate::store::dialect::{Binds, Cols, Dialect};
use crate::store::rows::{ENROLLMENT_COLUMNS, enrollment_from_row};
use crate::store::*;

/// One table of the learning projection: its name, key and columns (keys first).
pub(crate) struct Table {
    pub name: &'static str,
    pub keys: usize,
    pub cols: &'static [&'static str],
}

pub(crate) const COMPLETIONS: Table = Table {
    name: "lesson_completions",
    keys: 4,
    cols: &[
        "source",
        "course_id",
        "user_id",
        "lesson_id",
        "enrollment_id",
        "completed_at",
    ],
};
pub(crate) const COURSE_LESSONS: Table = Table {
    name: "course_lessons",
    keys: 3,
    cols: &[
        "source",
        "course_id",
        "lesson_id",
        "name",
        "chapter_id",
        "chapter_name",
        "chapter_position",
        "position",
        "lesson_type",
        "version",
        "completions",
    ],
};
pub(crate) const LEARNERS: Table = Table {
    name: "learners",
    keys: 3,
    cols: &[
        "source",
        "course_id",
        "user_id",
        "lessons_completed",
        "last_lesson_id",
        "last_lesson_version",
        "last_lesson_at",
        "learning_activity",
        "enrollment_id",
        "completed",
        "expiry_date",
        "enrollment_activity",
        "last_activity",
    ],
};
pub(crate) const QUIZZES: Table = Table {
    name: "quiz_results",
    keys: 3,
    cols: &[
        "source",
        "quiz_id",
        "user_id",
        "quiz_name",
        "course_id",
        "enrollment_id",
        "attempts",
        "events",
        "best_grade",
        "latest_grade",
        "correct_count",
        "incorrect_count",
        "latest_at",
        "version",
    ],
};

impl Table {
    pub(crate) fn columns(&self) -> String {
        self.cols.join(", ")
    }

    /// `ON CONFLICT (keys) DO UPDATE SET` every other column.
    pub(crate) fn on_conflict(&self) -> String {
        let (keys, rest) = self.cols.split_at(self.keys);
        let set: Vec<String> = rest.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            keys.join(", "),
            set.join(", ")
        )
    }
}

/// A column's value, as either driver binds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Int(Option<i64>),
    Text(Option<String>),
    Float(Option<f64>),
    Time(Option<DateTime<Utc>>),
    Flag(bool),
}

fn int(v: i64) -> Val {
    Val::Int(Some(v))
}

fn text(v: &str) -> Val {
    Val::Text(Some(v.to_owned()))
}

pub(crate) fn completion_values(c: &LessonCompletion) -> Vec<Val> {
    vec![
        text(&c.source),
        int(c.course_id),
        int(c.user_id),
        int(c.lesson_id),
        Val::Int(c.enrollment_id),
        Val::Time(c.completed_at),
    ]
}

pub(crate) fn course_lesson_values(l: &CourseLesson) -> Vec<Val> {
    vec![
        text(&l.source),
        int(l.course_id),
        int(l.info.lesson_id),
        Val::Text(l.info.name.clone()),
        Val::Int(l.info.chapter_id),
        Val::Text(l.info.chapter_name.clone()),
        Val::Int(l.info.chapter_position),
        Val::Int(l.info.position),
        Val::Text(l.info.kind.clone()),
        text(&l.version),
        int(l.completions),
    ]
}

pub(crate) fn learner_values(l: &Learner) -> Vec<Val> {
    vec![
        text(&l.source),
        int(l.course_id),
        int(l.user_id),
        int(l.lessons_completed),
        Val::Int(l.last_lesson_id),
        Val::Text(l.last_lesson_version.clone()),
        Val::Time(l.last_lesson_at),
        Val::Time(l.learning_activity),
        Val::Int(l.enrollment_id),
        Val::Flag(l.completed),
        Val::Time(l.expiry_date),
        Val::Time(l.enrollment_activity),
        Val::Time(l.last_activity()),
    ]
}

pub(crate) fn quiz_values(q: &QuizResult) -> Vec<Val> {
    vec![
        text(&q.source),
        int(q.quiz_id),
        int(q.user_id),
        Val::Text(q.quiz_name.clone()),
        Val::Int(q.course_id),
        Val::Int(q.enrollment_id),
        int(q.attempts),
        int(q.events),
        Val::Float(q.best_grade),
        Val::Float(q.latest_grade),
        Val::Int(q.correct_count),
        Val::Int(q.incorrect_count),
        Val::Time(q.latest_at),
        text(&q.version),
    ]
}

pub(crate) fn completion_from_row(r: &impl Cols) -> Result<LessonCompletion> {
    Ok(LessonCompletion {
        source: r.text("source")?,
        course_id: r.int("course_id")?,
        user_id: r.int("user_id")?,
        lesson_id: r.int("lesson_id")?,
        enrollment_id: r.opt_int("enrollment_id")?,
        completed_at: r.opt_time("completed_at")?,
    })
}

pub(crate) fn lesson_info_from_row(r: &impl Cols) -> Result<LessonInfo> {
    Ok(LessonInfo {
        lesson_id: r.int("lesson_id")?,
        name: r.opt_text("name")?,
        chapter_id: r.opt_int("chapter_id")?,
        chapter_name: r.opt_text("chapter_name")?,
        chapter_position: r.opt_int("chapter_position")?,
        position: r.opt_int("position")?,
        kind: r.opt_text("lesson_type")?,
    })
}

pub(crate) fn course_lesson_from_row(r: &impl Cols) -> Result<CourseLesson> {
    Ok(CourseLesson {
        source: r.text("source")?,
        course_id: r.int("course_id")?,
        info: lesson_info_from_row(r)?,
        version: r.text("version")?,
        completions: r.int("completions")?,
    })
}

pub(crate) fn learner_from_row(r: &impl Cols) -> Result<Learner> {
    Ok(Learner {
        source: r.text("source")?,
        course_id: r.int("course_id")?,
        user_id: r.int("user_id")?,
        lessons_completed: r.int("lessons_completed")?,
        last_lesson_id: r.opt_int("last_lesson_id")?,
        last_lesson_version: r.opt_text("last_lesson_version")?,
        last_lesson_at: r.opt_time("last_lesson_at")?,
        learning_activity: r.opt_time("learning_activity")?,
        enrollment_id: r.opt_int("enrollment_id")?,
        completed: r.flag("completed")?,
        expiry_date: r.opt_time("expiry_date")?,
        enrollment_activity: r.opt_time("enrollment_activity")?,
    })
}

pub(crate) fn quiz_from_row(r: &impl Cols) -> Result<QuizResult> {
    Ok(QuizResult {
        source: r.text("source")?,
        quiz_id: r.int("quiz_id")?,
        user_id: r.int("user_id")?,
        quiz_name: r.opt_text("quiz_name")?,
        course_id: r.opt_int("course_id")?,
        enrollment_id: r.opt_int("enrollment_id")?,
        attempts: r.int("attempts")?,
        events: r.int("events")?,
        best_grade: r.opt_float("best_grade")?,
        latest_grade: r.opt_float("latest_grade")?,
        correct_count: r.opt_int("correct_count")?,
        incorrect_count: r.opt_int("incorrect_count")?,
        latest_at: r.opt_time("latest_at")?,
        version: r.text("version")?,
    })
}

/// The rows `learning` changed, per table (in key order), as their values:
/// what a batch writes, on either backend.
pub(crate) fn changed_rows(learning: &Learning) -> [(&'static Table, Vec<Vec<Val>>); 4] {
    /// The rows of `all` whose keys are in `changed`, as values.
    fn rows<K: Ord, V>(
        changed: &BTreeSet<K>,
        all: &BTreeMap<K, V>,
        values: fn(&V) -> Vec<Val>,
    ) -> Vec<Vec<Val>> {
        changed
            .iter()
            .filter_map(|k| all.get(k).map(values))
            .collect()
    }
    let c = &learning.changed;
    [
        (
            &COMPLETIONS,
            rows(&c.completions, &learning.completions, completion_values),
        ),
        (
            &COURSE_LESSONS,
            rows(&c.lessons, &learning.lessons, course_lesson_values),
        ),
        (
            &LEARNERS,
            rows(&c.learners, &learning.learners, learner_values),
        ),
        (&QUIZZES, rows(&c.quizzes, &learning.quizzes, quiz_values)),
    ]
}

/// Binds one value, the backend's way.
fn push_val<DB: Dialect>(q: &mut sqlx::query_builder::Separated<'_, DB, &'static str>, v: Val)
where
    Option<i64>: Binds<DB>,
    Option<String>: Binds<DB>,
    Option<f64>: Binds<DB>,
    bool: Binds<DB>,
{
    match v {
        Val::Int(i) => q.push_bind(i),
        Val::Text(t) => q.push_bind(t),
        Val::Float(f) => q.push_bind(f),
        Val::Time(t) => q.push_bind(DB::opt_time(t)),
        Val::Flag(b) => q.push_bind(b),
    };
}

/// Rows per multi-row statement (SQLite allows 32,766 bound values).
const ROWS_PER_STATEMENT: usize = 500;

/// Upserts rows of `table` given as their values.
async fn upsert<DB: Dialect>(
    conn: &mut DB::Connection,
    table: &Table,
    rows: Vec<Vec<Val>>,
) -> Result<()>
where
    Option<i64>: Binds<DB>,
    Option<String>: Binds<DB>,
    Option<f64>: Binds<DB>,
    bool: Binds<DB>,
{
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Val>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        let mut q =
            QueryBuilder::<DB>::new(format!("INSERT INTO {} ({}) ", table.name, table.columns()));
        q.push_values(chunk, |mut b, values| {
            for v in values {
                push_val::<DB>(&mut b, v);
            }
        });
        q.push(table.on_conflict());
        q.build().execute(DB::on(conn)).await?;
    }
    Ok(())
}

/// Moves learners between `stall_buckets` (see [`Learning::stall_deltas`]),
/// in key order: on PostgreSQL the day's buckets are the rows two writers
/// share, so a batch applies them last (held until its commit) and sorted
/// (no two batches wait on each other in opposite orders).
pub(crate) async fn write_stall_deltas<DB: Dialect>(
    conn: &mut DB::Connection,
    deltas: &StallDeltas,
) -> Result<()>
where
    Option<i64>: Binds<DB>,
    Option<String>: Binds<DB>,
    Option<f64>: Binds<DB>,
    bool: Binds<DB>,
{
    let rows: Vec<(&StallKey, &i64)> = deltas.iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<DB>::new(
            "INSERT INTO stall_buckets (source, course_id, last_lesson_id, activity_day, learners) ",
        );
        q.push_values(chunk, |mut b, (key, n)| {
            for v in bucket_values(key, **n) {
                push_val::<DB>(&mut b, v);
            }
        });
        q.push(
            " ON CONFLICT (source, course_id, last_lesson_id, activity_day)
              DO UPDATE SET learners = stall_buckets.learners + excluded.learners",
        );
        q.build().execute(DB::on(conn)).await?;
    }
    Ok(())
}

/// Adds learners given their first enrollment to `course_learners` (see
/// [`Changed::enrolled`](crate::projection::learning::Changed)).
pub(crate) async fn write_enrolled<DB: Dialect>(
    conn: &mut DB::Connection,
    counts: &EnrolledCounts,
) -> Result<()>
where
    Option<i64>: Binds<DB>,
    Option<String>: Binds<DB>,
    Option<f64>: Binds<DB>,
    bool: Binds<DB>,
{
    let rows: Vec<_> = counts.iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::<DB>::new("INSERT INTO course_learners (source, course_id, enrolled) ");
        q.push_values(chunk, |mut b, ((source, course_id), n)| {
            for v in [text(source), int(*course_id), int(**n)] {
                push_val::<DB>(&mut b, v);
            }
        });
        q.push(
            " ON CONFLICT (source, course_id)
              DO UPDATE SET enrolled = course_learners.enrolled + excluded.enrolled",
        );
        q.build().execute(DB::on(conn)).await?;
    }
    Ok(())
}

/// Log events read per round of `rebuild`'s walk.
const EVENTS_PER_PAGE: i64 = 5_000;

/// What `rebuild` found about the learning projection.
#[derive(Debug, Default)]
pub(crate) struct LearningRebuild {
    /// Rows of lessons, learners, quizzes and stall buckets added, changed or removed.
    pub rows: u64,
    /// `event_users` rows missing, or with no event.
    pub index_rows: u64,
}

/// Re-derives the learning projection from the log (events up to seq
/// `through`, if given) and the enrollment rows as they now stand in `conn`
/// (a transaction of the caller), compares it with what is stored and,
/// unless `dry_run`, replaces what differs. Pruned events keep their rows
/// in `event_users` (their bodies are gone; learning events are never pruned).
pub(crate) async fn rebuild<DB: Dialect>(
    conn: &mut DB::Connection,
    through: Option<i64>,
    dry_run: bool,
) -> Result<LearningRebuild>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    Option<i64>: Binds<DB>,
    Option<String>: Binds<DB>,
    Option<f64>: Binds<DB>,
    bool: Binds<DB>,
{
    // Every event, in pages by seq: its learning event and its student.
    let mut events: Vec<(String, LearningEvent)> = Vec::new();
    let mut users: BTreeSet<(String, i64, i64)> = BTreeSet::new();
    let mut after = 0i64;
    loop {
        let mut q = QueryBuilder::<DB>::new(
            "SELECT seq, source, topic, event_id, body, body_zstd, body_dict, received_at,
                    enrollment_id FROM events
             WHERE pruned_at IS NULL AND seq > ",
        );
        q.push_bind(after);
        if let Some(through) = through {
            q.push(" AND seq <= ").push_bind(through);
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(EVENTS_PER_PAGE);
        let rows = q.build().fetch_all(DB::on(conn)).await?;
        let Some(last) = rows.last() else { break };
        after = last.int("seq")?;
        for r in &rows {
            let (source, topic, event_id) =
                (r.text("source")?, r.text("topic")?, r.text("event_id")?);
            let body = crate::store::rows::log_body(r, &source, &event_id, &topic)?;
            let new =
                match NewEvent::from_log(&source, &topic, &event_id, &body, r.time("received_at")?)
                {
                    Ok(new) => new,
                    // As the projector does: only enrollment rows must parse.
                    Err(_) if r.opt_int("enrollment_id")?.is_none() => continue,
                    Err(e) => return Err(e),
                };
            if let Some(user) = new.user_id {
                users.insert((source.clone(), user, r.int("seq")?));
            }
            if let Some(learning) = new.learning {
                events.push((source, learning));
            }
        }
    }
    let enrollments =
        QueryBuilder::<DB>::new(format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments"))
            .build()
            .fetch_all(DB::on(conn))
            .await?
            .iter()
            .map(enrollment_from_row)
            .collect::<Result<Vec<Enrollment>>>()?;
    let derived = Learning::fold(&enrollments, events.iter().map(|(s, e)| (s.as_str(), e)));

    let mut report = LearningRebuild::default();
    let stored_completions = all::<DB, _>(conn, &COMPLETIONS, completion_from_row).await?;
    let stored_lessons = all::<DB, _>(conn, &COURSE_LESSONS, course_lesson_from_row).await?;
    let stored_learners = all::<DB, _>(conn, &LEARNERS, learner_from_row).await?;
    let stored_quizzes = all::<DB, _>(conn, &QUIZZES, quiz_from_row).await?;
    let differs = [
        diff(
            stored_completions.iter().map(completion_values),
            derived.completions.values().map(completion_values),
        ),
        diff(
            stored_lessons.iter().map(course_lesson_values),
            derived.lessons.values().map(course_lesson_values),
        ),
        diff(
            stored_learners.iter().map(learner_values),
            derived.learners.values().map(learner_values),
        ),
        diff(
            stored_quizzes.iter().map(quiz_values),
            derived.quizzes.values().map(quiz_values),
        ),
    ];
    report.rows = differs.iter().sum();
    let stored_buckets: StallDeltas = QueryBuilder::<DB>::new(
        "SELECT source, course_id, last_lesson_id, activity_day, learners FROM stall_buckets
         WHERE learners <> 0",
    )
    .build()
    .fetch_all(DB::on(conn))
    .await?
    .iter()
    .map(|r| {
        Ok((
            (
                r.text("source")?,
                r.int("course_id")?,
                r.int("last_lesson_id")?,
                r.text("activity_day")?,
            ),
            r.int("learners")?,
        ))
    })
    .collect::<Result<_>>()?;
    let derived_buckets = derived.stall_buckets();
    let bucket_rows = diff(
        stored_buckets.iter().map(|(k, n)| bucket_values(k, *n)),
        derived_buckets.iter().map(|(k, n)| bucket_values(k, *n)),
    );
    report.rows += bucket_rows;
    let stored_enrolled: EnrolledCounts = QueryBuilder::<DB>::new(
        "SELECT source, course_id, enrolled FROM course_learners WHERE enrolled <> 0",
    )
    .build()
    .fetch_all(DB::on(conn))
    .await?
    .iter()
    .map(|r| Ok(((r.text("source")?, r.int("course_id")?), r.int("enrolled")?)))
    .collect::<Result<_>>()?;
    let derived_enrolled = derived.enrolled_counts();
    let enrolled_rows = diff(
        stored_enrolled
            .iter()
            .map(|((s, c), n)| vec![text(s), int(*c), int(*n)]),
        derived_enrolled
            .iter()
            .map(|((s, c), n)| vec![text(s), int(*c), int(*n)]),
    );
    report.rows += enrolled_rows;

    let mut q = QueryBuilder::<DB>::new(
        "SELECT u.source, u.user_id, u.seq FROM event_users AS u
         WHERE NOT EXISTS (SELECT 1 FROM events AS e WHERE e.seq = u.seq AND e.pruned_at IS NOT NULL)",
    );
    if let Some(through) = through {
        q.push(" AND u.seq <= ").push_bind(through);
    }
    let stored_users = q
        .build()
        .fetch_all(DB::on(conn))
        .await?
        .iter()
        .map(|r| Ok((r.text("source")?, r.int("user_id")?, r.int("seq")?)))
        .collect::<Result<BTreeSet<_>>>()?;
    report.index_rows = stored_users.symmetric_difference(&users).count() as u64;

    if dry_run {
        return Ok(report);
    }
    let tables: [(&Table, Vec<Vec<Val>>); 4] = [
        (
            &COMPLETIONS,
            derived
                .completions
                .values()
                .map(completion_values)
                .collect(),
        ),
        (
            &COURSE_LESSONS,
            derived.lessons.values().map(course_lesson_values).collect(),
        ),
        (
            &LEARNERS,
            derived.learners.values().map(learner_values).collect(),
        ),
        (
            &QUIZZES,
            derived.quizzes.values().map(quiz_values).collect(),
        ),
    ];
    for ((table, rows), differ) in tables.into_iter().zip(differs) {
        if differ > 0 {
            QueryBuilder::<DB>::new(format!("DELETE FROM {}", table.name))
                .build()
                .execute(DB::on(conn))
                .await?;
            upsert::<DB>(conn, table, rows).await?;
        }
    }
    if bucket_rows > 0 {
        QueryBuilder::<DB>::new("DELETE FROM stall_buckets")
            .build()
            .execute(DB::on(conn))
            .await?;
        write_stall_deltas::<DB>(conn, &derived_buckets).await?;
    }
    if enrolled_rows > 0 {
        QueryBuilder::<DB>::new("DELETE FROM course_learners")
            .build()
            .execute(DB::on(conn))
            .await?;
        write_enrolled::<DB>(conn, &derived_enrolled).await?;
    }
    if report.index_rows > 0 {
        for (source, user, seq) in stored_users.difference(&users) {
            let mut q = QueryBuilder::<DB>::new("DELETE FROM event_users WHERE source = ");
            q.push_bind(source.clone())
                .push(" AND user_id = ")
                .push_bind(*user)
                .push(" AND seq = ")
                .push_bind(*seq);
            q.build().execute(DB::on(conn)).await?;
        }
        let missing: Vec<Vec<Val>> = users
            .difference(&stored_users)
            .map(|(s, u, seq)| vec![text(s), int(*u), int(*seq)])
            .collect();
        upsert_ignore::<DB>(conn, "event_users (source, user_id, seq)", missing).await?;
    }
    Ok(report)
}

fn bucket_values((source, course_id, lesson_id, day): &StallKey, learners: i64) -> Vec<Val> {
    vec![
        text(source),
        int(*course_id),
        int(*lesson_id),
        text(day),
        int(learners),
    ]
}

/// Inserts rows, skipping those already there.
pub(crate) async fn upsert_ignore<DB: Dialect>(
    conn: &mut DB::Connection,
    into: &str,
    rows: Vec<Vec<Val>>,
) -> Result<()>
where
    Option<i64>: Binds<DB>,
    Option<String>: Binds<DB>,
    Option<f64>: Binds<DB>,
    bool: Binds<DB>,
{
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Val>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO {into} "));
        q.push_values(chunk, |mut b, values| {
            for v in values {
                push_val::<DB>(&mut b, v);
            }
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(DB::on(conn)).await?;
    }
    Ok(())
}

async fn all<DB: Dialect, T>(
    conn: &mut DB::Connection,
    table: &Table,
    map: impl Fn(&DB::Row) -> Result<T>,
) -> Result<Vec<T>> {
    QueryBuilder::<DB>::new(format!("SELECT {} FROM {}", table.columns(), table.name))
        .build()
        .fetch_all(DB::on(conn))
        .await?
        .iter()
        .map(map)
        .collect()
}

/// Rows present in one set and not the other (values compared whole; the
/// key columns come first, so a changed row counts once).
fn diff(stored: impl Iterator<Item = Vec<Val>>, derived: impl Iterator<Item = Vec<Val>>) -> u64 {
    let key = |v: &Vec<Val>| format!("{v:?}");
    let stored: BTreeMap<String, ()> = stored.map(|v| (key(&v), ())).collect();
    let derived: BTreeMap<String, ()> = derived.map(|v| (key(&v), ())).collect();
    let only_stored = stored.keys().filter(|k| !derived.contains_key(*k)).count();
    let only_derived = derived.keys().filter(|k| !stored.contains_key(*k)).count();
    only_stored.max(only_derived) as u64
}
