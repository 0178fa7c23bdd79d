//! `funnel`, `stalled`, `student`: the learning projection on the command line.

use std::process::ExitCode;

use chrono::Utc;
use clap::Args;
use serde::Serialize;

use super::open_existing;
use super::table::{Format, opt, output};
use crate::config::Settings;
use crate::store::{self, PageRequest, Stalled, StalledFilter, StalledOrder};
use crate::views::{self, LearningView, rfc3339};

/// Days without activity after which a student counts as stalled, by default.
const DEFAULT_DAYS: u32 = 14;

fn check_days(days: u32) -> anyhow::Result<u32> {
    if !(1..=3660).contains(&days) {
        anyhow::bail!("--days must be between 1 and 3660 (days without activity), got {days}");
    }
    Ok(days)
}

#[derive(Args)]
pub struct FunnelArgs {
    #[arg(long = "course")]
    course_id: i64,
    #[arg(long, default_value = "default")]
    source: String,
    /// Days without activity after which a student counts as stalled.
    #[arg(long, default_value_t = DEFAULT_DAYS)]
    days: u32,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub async fn funnel(settings: &Settings, a: FunnelArgs) -> anyhow::Result<ExitCode> {
    let days = check_days(a.days)?;
    let store = open_existing(&settings.database_url).await?;
    let Some(funnel) = store
        .course_funnel(&a.source, a.course_id, &Stalled::days(days, Utc::now()))
        .await?
    else {
        eprintln!(
            "nothing is known of course {} from source `{}`: no enrollment or lesson event named it",
            a.course_id, a.source
        );
        return Ok(ExitCode::FAILURE);
    };
    if a.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&funnel)?);
        return Ok(ExitCode::SUCCESS);
    }
    if a.format == Format::Table {
        println!(
            "course {} ({}): {} enrolled, {} stalled ({} days), {} of them before any lesson",
            funnel.course_id,
            funnel.course_name.as_deref().unwrap_or("?"),
            funnel.enrolled,
            funnel.stalled,
            days,
            funnel.stalled_before_first_lesson
        );
    }
    let header = [
        "lesson_id",
        "name",
        "chapter",
        "position",
        "type",
        "completed",
        "stalled_here",
    ];
    output(a.format, &header, &funnel.lessons, |l| {
        vec![
            l.lesson.lesson_id.to_string(),
            l.lesson.name.clone().unwrap_or_default(),
            l.lesson.chapter_name.clone().unwrap_or_default(),
            opt(l.lesson.position),
            l.lesson.kind.clone().unwrap_or_default(),
            l.completed.to_string(),
            l.stalled_here.to_string(),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct StalledArgs {
    /// Days without activity after which a student counts as stalled.
    #[arg(long, default_value_t = DEFAULT_DAYS)]
    days: u32,
    #[arg(long = "course")]
    course_id: Option<i64>,
    #[arg(long)]
    source: Option<String>,
    /// At most this many rows (default: all), longest inactive first.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// One stalled student, flat.
#[derive(Serialize)]
struct StalledRow {
    source: String,
    enrollment_id: i64,
    course_id: i64,
    user_id: i64,
    email: Option<String>,
    progress: f64,
    #[serde(flatten)]
    learning: LearningView,
}

pub async fn stalled(settings: &Settings, a: StalledArgs) -> anyhow::Result<ExitCode> {
    let days = check_days(a.days)?;
    let store = open_existing(&settings.database_url).await?;
    let now = Utc::now();
    let filter = StalledFilter {
        source: a.source,
        course_id: a.course_id,
        stalled: Stalled::days(days, now),
        order: StalledOrder::MostInactive,
    };
    let limit = a.limit.unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    let mut cursor = None;
    while rows.len() < limit {
        let page = store
            .stalled_learners(
                &filter,
                &PageRequest {
                    limit: store::MAX_PAGE,
                    cursor,
                },
            )
            .await?;
        rows.extend(page.items.iter().map(|(e, l)| StalledRow {
            source: e.source.clone(),
            enrollment_id: e.enrollment_id,
            course_id: l.course_id,
            user_id: l.user_id,
            email: e.email.clone(),
            progress: e.progress,
            learning: LearningView::new(l, now),
        }));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    rows.truncate(limit);
    let header = [
        "source",
        "enrollment_id",
        "course_id",
        "user_id",
        "email",
        "progress",
        "lessons",
        "last_lesson",
        "last_activity_at",
        "days_inactive",
    ];
    output(a.format, &header, &rows, |r| {
        vec![
            r.source.clone(),
            r.enrollment_id.to_string(),
            r.course_id.to_string(),
            r.user_id.to_string(),
            r.email.clone().unwrap_or_default(),
            format!("{:.1}", r.progress),
            r.learning.lessons_completed.to_string(),
            r.learning
                .last_lesson_name
                .clone()
                .or(r.learning.last_lesson_id.map(|id| id.to_string()))
                .unwrap_or_default(),
            r.learning.last_activity_at.clone().unwrap_or_default(),
            r.learning
                .days_inactive
                .map(|d| format!("{d:.1}"))
                .unwrap_or_default(),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct StudentArgs {
    source: String,
    user_id: i64,
    /// table or json (a student is several tables; csv would be one of them).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub async fn student(settings: &Settings, a: StudentArgs) -> anyhow::Result<ExitCode> {
    if a.format == Format::Csv {
        anyhow::bail!("a student is several tables: use --format table or json");
    }
    let store = open_existing(&settings.database_url).await?;
    let record = store.student(&a.source, a.user_id, 500).await?;
    if record.enrollments.is_empty()
        && record.courses.is_empty()
        && record.quizzes.is_empty()
        && record.events.is_empty()
    {
        eprintln!(
            "no event from source `{}` names user {}",
            a.source, a.user_id
        );
        return Ok(ExitCode::FAILURE);
    }
    let view = views::student_view(a.source, a.user_id, record, Utc::now());
    if a.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let name = [view.first_name.as_deref(), view.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "user {} of {}: {} <{}>",
        view.user_id,
        view.source,
        name,
        view.email.as_deref().unwrap_or("")
    );
    println!("\nenrollments:");
    output(
        Format::Table,
        &[
            "enrollment_id",
            "course",
            "status",
            "progress",
            "lessons",
            "last_activity_at",
        ],
        &view.enrollments,
        |e| {
            let v = &e.enrollment;
            vec![
                v.enrollment_id.to_string(),
                v.course_name
                    .clone()
                    .or(v.course_id.map(|c| c.to_string()))
                    .unwrap_or_default(),
                v.status.as_str().to_owned(),
                format!("{:.1}", v.progress),
                e.lessons.len().to_string(),
                v.learning
                    .as_ref()
                    .and_then(|l| l.last_activity_at.clone())
                    .unwrap_or_default(),
            ]
        },
    )?;
    let lessons: Vec<_> = view
        .enrollments
        .iter()
        .flat_map(|e| e.lessons.iter())
        .chain(
            view.courses_without_enrollment
                .iter()
                .flat_map(|c| c.lessons.iter()),
        )
        .collect();
    println!("\nlessons:");
    output(
        Format::Table,
        &["course_id", "lesson_id", "name", "completed_at"],
        &lessons,
        |l| {
            vec![
                l.course_id.to_string(),
                l.lesson.lesson_id.to_string(),
                l.lesson.name.clone().unwrap_or_default(),
                l.completed_at.as_ref().map(rfc3339).unwrap_or_default(),
            ]
        },
    )?;
    println!("\nquizzes:");
    output(
        Format::Table,
        &["quiz_id", "name", "attempts", "best_grade", "latest_grade"],
        &view.quizzes,
        |q| {
            vec![
                q.quiz_id.to_string(),
                q.quiz_name.clone().unwrap_or_default(),
                q.attempts.to_string(),
                opt(q.best_grade),
                opt(q.latest_grade),
            ]
        },
    )?;
    println!("\ntimeline:");
    output(
        Format::Table,
        &["seq", "topic", "created_at", "event_id"],
        &view.timeline,
        |e| {
            vec![
                e.seq.to_string(),
                e.topic.clone(),
                e.created_at.clone().unwrap_or_default(),
                e.event_id.clone(),
            ]
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
