//! The learning queries, written once for both backends (types in
//! [`crate::store::learning`]). Each is a range of an index of its own:
//! stalled students are `learners_open` / `learners_open_by_course` by last
//! activity; stalled counts (per course, per lesson) sum `stall_buckets` by
//! day (see [`stalled_counts`]); a course's funnel reads its lessons, its
//! completions (primary key prefix) and its stalled counts; a student's page reads the
//! `*_by_user` indexes and `event_users`.

use std::collections::BTreeMap;

use chrono::{NaiveTime, SecondsFormat};
use sqlx::{Pool, QueryBuilder};

use super::fetch_mapped;
use super::learning::{
    COURSE_LESSONS, QUIZZES, course_lesson_from_row, lesson_info_from_row, quiz_from_row,
};
use crate::projection::Enrollment;
use crate::projection::learning::{NO_LESSON, course_order};
use crate::store::dialect::{Binds, Cols, Dialect};
use crate::store::learning::*;
use crate::store::rows::{ENROLLMENT_COLUMNS, enrollment_from_row, event_from_row};
use crate::store::sql::{cursor_i64, fetch_limit, page_by};
use crate::store::*;

/// `WHERE` terms (after a `WHERE <true>`) of the learners of `l` stalled.
fn push_stalled<DB: Dialect>(q: &mut QueryBuilder<DB>, stalled: &Stalled) {
    q.push(" AND l.enrollment_id IS NOT NULL AND NOT l.completed AND l.last_activity < ")
        .push_bind(DB::time(stalled.before))
        .push(" AND (l.expiry_date IS NULL OR l.expiry_date >= ")
        .push_bind(DB::time(stalled.now))
        .push(")");
}

/// Stalled learners per (source, course, furthest lesson or [`NO_LESSON`]),
/// without reading one row per student: the whole days before the cutoff's
/// day from `stall_buckets`, plus the cutoff's own day counted exactly from
/// `learners_open*` (only its hours before the cutoff count), less the open
/// learners of those days already expired (`learners_expiring`: expiry
/// passes without an event, so the buckets still count them).
async fn stalled_counts<DB: Dialect>(
    pool: &Pool<DB>,
    source: Option<&str>,
    course_id: Option<i64>,
    stalled: &Stalled,
) -> Result<BTreeMap<(String, i64, i64), i64>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let day = stalled.before.date_naive();
    let day_start = day.and_time(NaiveTime::MIN).and_utc();
    let filter = |q: &mut QueryBuilder<DB>, alias: &str| {
        if let Some(s) = source {
            q.push(format!(" AND {alias}source = "))
                .push_bind(s.to_owned());
        }
        if let Some(c) = course_id {
            q.push(format!(" AND {alias}course_id = ")).push_bind(c);
        }
    };
    let row = |r: &DB::Row| {
        Ok((
            (
                r.text("source")?,
                r.int("course_id")?,
                r.int("last_lesson_id")?,
            ),
            r.int("n")?,
        ))
    };
    let mut q = QueryBuilder::<DB>::new(
        "SELECT source, course_id, last_lesson_id, CAST(SUM(learners) AS BIGINT) AS n
         FROM stall_buckets
         WHERE activity_day < ",
    );
    q.push_bind(day.format("%Y-%m-%d").to_string());
    filter(&mut q, "");
    q.push(" GROUP BY source, course_id, last_lesson_id");
    let mut counts: BTreeMap<(String, i64, i64), i64> =
        fetch_mapped(pool, q, row).await?.into_iter().collect();

    let open_learners = |through: &str| {
        format!(
            "SELECT l.source, l.course_id, COALESCE(l.last_lesson_id, {NO_LESSON}) AS last_lesson_id,
                    COUNT(*) AS n
             FROM learners AS l{through} WHERE l.enrollment_id IS NOT NULL AND NOT l.completed"
        )
    };
    let mut q = QueryBuilder::<DB>::new(open_learners(""));
    q.push(" AND l.last_activity >= ")
        .push_bind(DB::time(day_start))
        .push(" AND l.last_activity < ")
        .push_bind(DB::time(stalled.before))
        .push(" AND (l.expiry_date IS NULL OR l.expiry_date >= ")
        .push_bind(DB::time(stalled.now))
        .push(")");
    filter(&mut q, "l.");
    q.push(" GROUP BY 1, 2, 3");
    for (key, n) in fetch_mapped(pool, q, row).await? {
        *counts.entry(key).or_default() += n;
    }

    // A course's expired learners by expiry (learners_expiring_by_course),
    // not its stalled learners by activity: those are a third of a course.
    let through = match course_id {
        Some(_) => DB::indexed_by("learners_expiring_by_course"),
        None => String::new(),
    };
    let mut q = QueryBuilder::<DB>::new(open_learners(&through));
    q.push(" AND l.expiry_date IS NOT NULL AND l.expiry_date < ")
        .push_bind(DB::time(stalled.now))
        .push(" AND l.last_activity < ")
        .push_bind(DB::time(day_start));
    filter(&mut q, "l.");
    q.push(" GROUP BY 1, 2, 3");
    for (key, n) in fetch_mapped(pool, q, row).await? {
        *counts.entry(key).or_default() -= n;
    }
    counts.retain(|_, n| *n != 0);
    Ok(counts)
}

pub(crate) async fn funnel<DB: Dialect>(
    pool: &Pool<DB>,
    source: &str,
    course_id: i64,
    stalled: &Stalled,
) -> Result<Option<Funnel>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let by_course = |select: &str, rest: &str| {
        let mut q = QueryBuilder::<DB>::new(format!("{select} WHERE l.source = "));
        q.push_bind(source.to_owned())
            .push(" AND l.course_id = ")
            .push_bind(course_id)
            .push(rest.to_owned());
        q
    };
    let mut lessons = fetch_mapped(
        pool,
        by_course(
            &format!(
                "SELECT {} FROM course_lessons AS l",
                COURSE_LESSONS.columns()
            ),
            "",
        ),
        course_lesson_from_row,
    )
    .await?;
    let stalled_at: Vec<(Option<i64>, i64)> =
        stalled_counts(pool, Some(source), Some(course_id), stalled)
            .await?
            .into_iter()
            .map(|((_, _, lesson), n)| ((lesson != NO_LESSON).then_some(lesson), n))
            .collect();
    // Kept by the projection: counting the course's learners cost an index
    // scan of one entry per student (8-19 ms a funnel at 10 M events).
    let enrolled = fetch_mapped(
        pool,
        by_course("SELECT l.enrolled AS n FROM course_learners AS l", ""),
        |r| r.int("n"),
    )
    .await?
    .pop()
    .unwrap_or(0);
    // The name one of its enrollments gives (one row: a scan of the course's
    // enrollments for MAX would cost more than the whole funnel).
    let mut q = QueryBuilder::<DB>::new(
        "SELECT e.course_name AS name FROM learners AS l
         JOIN enrollments AS e ON e.source = l.source AND e.enrollment_id = l.enrollment_id
         WHERE l.source = ",
    );
    q.push_bind(source.to_owned())
        .push(" AND l.course_id = ")
        .push_bind(course_id)
        .push(" AND l.enrollment_id IS NOT NULL AND e.course_name IS NOT NULL LIMIT 1");
    let course_name = fetch_mapped(pool, q, |r| r.opt_text("name"))
        .await?
        .pop()
        .flatten();
    if lessons.is_empty() && enrolled == 0 {
        return Ok(None);
    }
    let stalled_here: BTreeMap<Option<i64>, i64> = stalled_at.into_iter().collect();
    lessons.sort_by(|a, b| course_order((&a.info, a.completions), (&b.info, b.completions)));
    Ok(Some(Funnel {
        source: source.to_owned(),
        course_id,
        course_name,
        enrolled,
        stalled: stalled_here.values().sum(),
        stalled_before_first_lesson: stalled_here.get(&None).copied().unwrap_or(0),
        lessons: lessons
            .into_iter()
            .map(|l| FunnelLesson {
                stalled_here: stalled_here
                    .get(&Some(l.info.lesson_id))
                    .copied()
                    .unwrap_or(0),
                lesson: l.info,
                completed: l.completions,
            })
            .collect(),
    }))
}

const LEARNER_ROW_COLUMNS: &str = "l.source, l.course_id, l.user_id, l.enrollment_id, \
    l.completed, l.lessons_completed, l.last_lesson_id, l.last_lesson_at, l.last_activity, \
    e.email, e.first_name, e.last_name, e.course_name, e.progress, cl.name AS last_lesson_name";

const LEARNER_ROW_JOINS: &str = " FROM learners AS l
    LEFT JOIN enrollments AS e ON e.source = l.source AND e.enrollment_id = l.enrollment_id
    LEFT JOIN course_lessons AS cl ON cl.source = l.source AND cl.course_id = l.course_id
        AND cl.lesson_id = l.last_lesson_id
    WHERE 1 = 1";

fn learner_row(r: &impl Cols) -> Result<LearnerRow> {
    Ok(LearnerRow {
        source: r.text("source")?,
        course_id: r.int("course_id")?,
        user_id: r.int("user_id")?,
        enrollment_id: r.opt_int("enrollment_id")?,
        email: r.opt_text("email")?,
        first_name: r.opt_text("first_name")?,
        last_name: r.opt_text("last_name")?,
        course_name: r.opt_text("course_name")?,
        progress: r.opt_float("progress")?,
        completed: r.flag("completed")?,
        lessons_completed: r.int("lessons_completed")?,
        last_lesson_id: r.opt_int("last_lesson_id")?,
        last_lesson_name: r.opt_text("last_lesson_name")?,
        last_lesson_at: r.opt_time("last_lesson_at")?,
        last_activity_at: r.opt_time("last_activity")?,
    })
}

fn stalled_cursor((_, l): &(Enrollment, LearnerRow)) -> String {
    let at = l
        .last_activity_at
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default();
    encode_cursor(&[
        &at,
        &l.source,
        &l.course_id.to_string(),
        &l.user_id.to_string(),
    ])
}

/// A page of stalled students with their enrollments, by last activity.
pub(crate) async fn stalled<DB: Dialect>(
    pool: &Pool<DB>,
    f: &StalledFilter,
    page: &PageRequest,
) -> Result<Page<(Enrollment, LearnerRow)>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let enrollment_columns: Vec<String> = ENROLLMENT_COLUMNS
        .split(',')
        .map(|c| format!("e.{}", c.trim()))
        .collect();
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {}, l.lessons_completed, l.last_lesson_id, l.last_lesson_at, l.last_activity,
                l.course_id AS learner_course_id, l.user_id AS learner_user_id,
                cl.name AS last_lesson_name
         FROM learners AS l
         JOIN enrollments AS e ON e.source = l.source AND e.enrollment_id = l.enrollment_id
         LEFT JOIN course_lessons AS cl ON cl.source = l.source AND cl.course_id = l.course_id
             AND cl.lesson_id = l.last_lesson_id
         WHERE 1 = 1",
        enrollment_columns.join(", ")
    ));
    push_stalled(&mut q, &f.stalled);
    if let Some(s) = &f.source {
        q.push(" AND l.source = ").push_bind(s.clone());
    }
    if let Some(c) = f.course_id {
        q.push(" AND l.course_id = ").push_bind(c);
    }
    let (cmp, dir) = match f.order {
        StalledOrder::MostInactive => (">", "ASC"),
        StalledOrder::LeastInactive => ("<", "DESC"),
    };
    if let Some(c) = &page.cursor {
        let parts = decode_cursor(c, 4)?;
        let at = crate::thinkific::envelope::parse_timestamp(&parts[0])
            .ok_or_else(|| StoreError::Invalid("invalid cursor".into()))?;
        q.push(format!(
            " AND (l.last_activity, l.source, l.course_id, l.user_id) {cmp} ("
        ))
        .push_bind(DB::time(at))
        .push(", ")
        .push_bind(parts[1].clone())
        .push(", ")
        .push_bind(cursor_i64(&parts[2])?)
        .push(", ")
        .push_bind(cursor_i64(&parts[3])?)
        .push(")");
    }
    q.push(format!(
        " ORDER BY l.last_activity {dir}, l.source {dir}, l.course_id {dir}, l.user_id {dir} LIMIT "
    ))
    .push_bind(fetch_limit(page));
    let items = fetch_mapped(pool, q, |r| {
        let e = enrollment_from_row(r)?;
        let learner = LearnerRow {
            source: e.source.clone(),
            course_id: r.int("learner_course_id")?,
            user_id: r.int("learner_user_id")?,
            enrollment_id: Some(e.enrollment_id),
            email: e.email.clone(),
            first_name: e.first_name.clone(),
            last_name: e.last_name.clone(),
            course_name: e.course_name.clone(),
            progress: Some(e.progress),
            completed: e.completed,
            lessons_completed: r.int("lessons_completed")?,
            last_lesson_id: r.opt_int("last_lesson_id")?,
            last_lesson_name: r.opt_text("last_lesson_name")?,
            last_lesson_at: r.opt_time("last_lesson_at")?,
            last_activity_at: r.opt_time("last_activity")?,
        };
        Ok((e, learner))
    })
    .await?;
    Ok(page_by(items, page.limit, stalled_cursor))
}

/// A student's courses (with or without an enrollment yet).
pub(crate) async fn learners_of<DB: Dialect>(
    pool: &Pool<DB>,
    source: &str,
    user_id: i64,
) -> Result<Vec<LearnerRow>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!("SELECT {LEARNER_ROW_COLUMNS}{LEARNER_ROW_JOINS}"));
    q.push(" AND l.source = ")
        .push_bind(source.to_owned())
        .push(" AND l.user_id = ")
        .push_bind(user_id);
    // Sorted here: an ORDER BY made SQLite scan the school by its primary key.
    let mut rows = fetch_mapped(pool, q, learner_row).await?;
    rows.sort_by_key(|l| l.course_id);
    Ok(rows)
}

/// The lessons a student completed, in one course or all, in completion order.
pub(crate) async fn lessons_of<DB: Dialect>(
    pool: &Pool<DB>,
    source: &str,
    user_id: i64,
    course_id: Option<i64>,
) -> Result<Vec<LessonDone>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
        "SELECT c.course_id, c.lesson_id, c.enrollment_id, c.completed_at, cl.name,
                cl.chapter_id, cl.chapter_name, cl.chapter_position, cl.position, cl.lesson_type
         FROM lesson_completions AS c
         LEFT JOIN course_lessons AS cl ON cl.source = c.source AND cl.course_id = c.course_id
             AND cl.lesson_id = c.lesson_id
         WHERE c.source = ",
    );
    q.push_bind(source.to_owned())
        .push(" AND c.user_id = ")
        .push_bind(user_id);
    if let Some(course_id) = course_id {
        q.push(" AND c.course_id = ").push_bind(course_id);
    }
    // Sorted below: an ORDER BY made SQLite scan the school by its primary key.
    let mut lessons = fetch_mapped(pool, q, |r| {
        Ok(LessonDone {
            course_id: r.int("course_id")?,
            lesson: lesson_info_from_row(r)?,
            completed_at: r.opt_time("completed_at")?,
            enrollment_id: r.opt_int("enrollment_id")?,
        })
    })
    .await?;
    lessons.sort_by(|a, b| {
        (a.course_id, a.completed_at, a.lesson.lesson_id).cmp(&(
            b.course_id,
            b.completed_at,
            b.lesson.lesson_id,
        ))
    });
    Ok(lessons)
}

fn attempts_view(q: crate::projection::learning::QuizResult) -> QuizAttempts {
    QuizAttempts {
        source: q.source,
        quiz_id: q.quiz_id,
        quiz_name: q.quiz_name,
        user_id: q.user_id,
        course_id: q.course_id,
        attempts: q.attempts,
        best_grade: q.best_grade,
        latest_grade: q.latest_grade,
        correct_count: q.correct_count,
        incorrect_count: q.incorrect_count,
        latest_at: q.latest_at,
    }
}

/// A student's quiz results.
pub(crate) async fn quizzes_of<DB: Dialect>(
    pool: &Pool<DB>,
    source: &str,
    user_id: i64,
) -> Result<Vec<QuizAttempts>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {} FROM quiz_results WHERE source = ",
        QUIZZES.columns()
    ));
    q.push_bind(source.to_owned())
        .push(" AND user_id = ")
        .push_bind(user_id);
    let mut rows = fetch_mapped(pool, q, quiz_from_row).await?;
    rows.sort_by_key(|q| q.quiz_id);
    Ok(rows.into_iter().map(attempts_view).collect())
}

/// The newest `limit` events naming a student, oldest first.
pub(crate) async fn events_of<DB: Dialect>(
    pool: &Pool<DB>,
    event_columns: &str,
    source: &str,
    user_id: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {event_columns} FROM events WHERE seq IN (
             SELECT seq FROM event_users WHERE source = "
    ));
    q.push_bind(source.to_owned())
        .push(" AND user_id = ")
        .push_bind(user_id)
        .push(" ORDER BY seq DESC LIMIT ")
        .push_bind(limit)
        .push(") ORDER BY seq");
    fetch_mapped(pool, q, event_from_row).await
}

/// Per quiz: students, attempts, average and median best grade.
pub(crate) async fn quiz_stats<DB: Dialect>(
    pool: &Pool<DB>,
    source: Option<&str>,
    course_id: Option<i64>,
) -> Result<Vec<QuizStats>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT {} FROM quiz_results WHERE 1 = 1",
        QUIZZES.columns()
    ));
    if let Some(s) = source {
        q.push(" AND source = ").push_bind(s.to_owned());
    }
    if let Some(c) = course_id {
        q.push(" AND course_id = ").push_bind(c);
    }
    q.push(" ORDER BY source, quiz_id");
    let rows = fetch_mapped(pool, q, quiz_from_row).await?;
    let mut out: Vec<QuizStats> = Vec::new();
    for quiz in rows.chunk_by(|a, b| (&a.source, a.quiz_id) == (&b.source, b.quiz_id)) {
        let mut grades: Vec<f64> = quiz.iter().filter_map(|r| r.best_grade).collect();
        let average =
            (!grades.is_empty()).then(|| grades.iter().sum::<f64>() / grades.len() as f64);
        let latest = quiz.iter().max_by(|a, b| a.version.cmp(&b.version));
        out.push(QuizStats {
            source: quiz[0].source.clone(),
            quiz_id: quiz[0].quiz_id,
            quiz_name: latest.and_then(|r| r.quiz_name.clone()),
            course_id: quiz.iter().filter_map(|r| r.course_id).max(),
            students: quiz.len() as i64,
            attempts: quiz.iter().map(|r| r.attempts).sum(),
            average_best_grade: average,
            median_best_grade: crate::store::median(&mut grades),
        });
    }
    Ok(out)
}

/// Per course: lessons seen and students stalled.
pub(crate) async fn course_learning<DB: Dialect>(
    pool: &Pool<DB>,
    source: Option<&str>,
    stalled: &Stalled,
) -> Result<Vec<CourseLearning>>
where
    i64: Binds<DB>,
    String: Binds<DB>,
{
    let mut counts: BTreeMap<(String, i64), CourseLearning> = BTreeMap::new();
    let mut q = QueryBuilder::<DB>::new(
        "SELECT l.source, l.course_id, COUNT(*) AS n FROM course_lessons AS l WHERE 1 = 1",
    );
    if let Some(s) = source {
        q.push(" AND l.source = ").push_bind(s.to_owned());
    }
    q.push(" GROUP BY l.source, l.course_id");
    let lessons = fetch_mapped(pool, q, |r| {
        Ok((r.text("source")?, r.int("course_id")?, r.int("n")?))
    })
    .await?;
    let mut stalled_by_course: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for ((s, c, _), n) in stalled_counts(pool, source, None, stalled).await? {
        *stalled_by_course.entry((s, c)).or_default() += n;
    }
    let stalled = stalled_by_course.into_iter().map(|((s, c), n)| (s, c, n));
    for (s, c, n) in lessons {
        let key = (s.clone(), c);
        counts
            .entry(key)
            .or_insert_with(|| CourseLearning {
                source: s,
                course_id: c,
                lessons_seen: 0,
                stalled: 0,
            })
            .lessons_seen = n;
    }
    for (s, c, n) in stalled {
        let key = (s.clone(), c);
        counts
            .entry(key)
            .or_insert_with(|| CourseLearning {
                source: s,
                course_id: c,
                lessons_seen: 0,
                stalled: 0,
            })
            .stalled = n;
    }
    Ok(counts.into_values().collect())
}

/// Everything stored about one student (see [`Store::student`]).
pub(crate) async fn student<DB: Dialect>(
    pool: &Pool<DB>,
    event_columns: &str,
    source: &str,
    user_id: i64,
    events: i64,
) -> Result<StudentRecord>
where
    i64: Binds<DB>,
    String: Binds<DB>,
    bool: Binds<DB>,
{
    let filter = EnrollmentFilter {
        source: Some(source.to_owned()),
        user_id: Some(user_id),
        ..EnrollmentFilter::default()
    };
    let page = PageRequest {
        limit: MAX_PAGE,
        cursor: None,
    };
    let enrollments = super::log::list_enrollments(pool, &filter, &page, chrono::Utc::now())
        .await?
        .items;
    Ok(StudentRecord {
        enrollments,
        courses: learners_of(pool, source, user_id).await?,
        lessons: lessons_of(pool, source, user_id, None).await?,
        quizzes: quizzes_of(pool, source, user_id).await?,
        events: events_of(pool, event_columns, source, user_id, events).await?,
    })
}
