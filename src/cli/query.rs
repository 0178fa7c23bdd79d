//! `enrollments`, `courses`, `events`, `reconciliations`: reading the
//! projection, the event log and the reconciliations' reports.

use std::process::ExitCode;

use chrono::Utc;
use clap::Args;

use super::open_existing;
use super::table::{Format, opt, output};
use crate::config::Settings;
use crate::projection::Status;
use crate::store::{self, EnrollmentFilter, EventFilter, PageRequest};
use crate::views::{self, EnrollmentView};

#[derive(Args)]
pub struct EnrollmentsArgs {
    #[arg(long = "course")]
    course_id: Option<i64>,
    #[arg(long, value_parser = parse_status)]
    status: Option<Status>,
    #[arg(long)]
    source: Option<String>,
    #[arg(long = "user")]
    user_id: Option<i64>,
    #[arg(long)]
    email: Option<String>,
    /// At most this many rows (default: all).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

fn parse_status(s: &str) -> Result<Status, String> {
    s.parse()
}

#[derive(Args)]
pub struct CoursesArgs {
    #[arg(long)]
    source: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
pub struct EventsArgs {
    /// Exact topic (enrollment.progress) or a resource (enrollment.*).
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    source: Option<String>,
    /// Only events after this log position (seq).
    #[arg(long)]
    after: Option<i64>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
pub struct ReconciliationsArgs {
    #[arg(long)]
    source: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
pub struct MilestonesArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// The milestones of each source, from the config file (what `serve` with
/// this file derives); reads no database.
pub fn milestones(settings: &Settings, a: MilestonesArgs) -> anyhow::Result<ExitCode> {
    let rules = settings.file.milestone_rules()?;
    let rows: Vec<crate::server::SourceMilestonesView> = rules
        .iter()
        .map(|(s, m)| crate::server::SourceMilestonesView {
            source: s.to_owned(),
            milestones: m.clone(),
            topics: crate::server::milestone_topics(m),
        })
        .collect();
    if rows.is_empty() && a.format == Format::Table {
        println!(
            "no milestones configured: add [milestones] (default source) or [source.milestones] to enrollhook.toml"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let header = [
        "source",
        "progress",
        "completed",
        "trial_converted",
        "stalled_days",
        "lessons",
    ];
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "off".to_owned()
        } else {
            v.join(",")
        }
    };
    let on = |b: bool| if b { "on" } else { "off" }.to_owned();
    output(a.format, &header, &rows, |r| {
        let m = &r.milestones;
        vec![
            r.source.clone(),
            list(m.progress.iter().map(|p| p.to_string()).collect()),
            on(m.completed),
            on(m.trial_converted),
            m.stalled_days
                .map_or_else(|| "off".to_owned(), |d| d.to_string()),
            list(m.lessons.iter().map(|l| l.to_string()).collect()),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The newest runs: when, which source, what they found (the report's
/// summary and webhook check), or why they failed.
pub async fn reconciliations(
    settings: &Settings,
    a: ReconciliationsArgs,
) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let page = store
        .list_reconciliations(
            a.source.as_deref(),
            &PageRequest {
                limit: a.limit.clamp(1, store::MAX_PAGE),
                cursor: None,
            },
        )
        .await?;
    let header = ["id", "source", "finished_at", "found", "webhooks"];
    output(a.format, &header, &page.items, |r| {
        let webhooks = &r.report["webhooks"];
        let missing = webhooks["missing"].as_array().map_or(0, Vec::len);
        vec![
            r.id.to_string(),
            r.source.clone(),
            views::rfc3339(&r.finished_at),
            match &r.error {
                Some(e) => format!("failed: {e}"),
                None => r.report["summary"].as_str().unwrap_or_default().to_owned(),
            },
            if webhooks.is_null() {
                String::new()
            } else if missing == 0 {
                "all registered".to_owned()
            } else {
                format!("{missing} topics missing")
            },
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn enrollments(settings: &Settings, a: EnrollmentsArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let filter = EnrollmentFilter {
        source: a.source,
        course_id: a.course_id,
        user_id: a.user_id,
        email: a.email,
        status: a.status,
        updated_after: None,
    };
    let now = Utc::now();
    let mut rows: Vec<EnrollmentView> = Vec::new();
    let mut cursor = None;
    let limit = a.limit.unwrap_or(usize::MAX);
    while rows.len() < limit {
        let page = store
            .list_enrollments(
                &filter,
                &PageRequest {
                    limit: store::MAX_PAGE,
                    cursor,
                },
                now,
            )
            .await?;
        rows.extend(page.items.iter().map(|e| EnrollmentView::new(e, now)));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    rows.truncate(limit);
    let header = [
        "source",
        "enrollment_id",
        "status",
        "progress",
        "course_id",
        "course_name",
        "user_id",
        "email",
        "started_at",
        "completed_at",
        "days_to_complete",
    ];
    let cells = |v: &EnrollmentView| -> Vec<String> {
        vec![
            v.source.clone(),
            v.enrollment_id.to_string(),
            v.status.as_str().to_owned(),
            format!("{:.1}", v.progress),
            opt(v.course_id),
            v.course_name.clone().unwrap_or_default(),
            opt(v.user_id),
            v.email.clone().unwrap_or_default(),
            v.started_at.clone().unwrap_or_default(),
            v.completed_at.clone().unwrap_or_default(),
            v.days_to_complete
                .map(|d| format!("{d:.2}"))
                .unwrap_or_default(),
        ]
    };
    output(a.format, &header, &rows, cells)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn courses(settings: &Settings, a: CoursesArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let stats = store.course_stats(a.source.as_deref(), Utc::now()).await?;
    let header = [
        "source",
        "course_id",
        "name",
        "enrollments",
        "active",
        "trial",
        "completed",
        "expired",
        "completion_rate",
        "average_progress",
        "median_days_to_complete",
    ];
    output(a.format, &header, &stats, |c| {
        vec![
            c.source.clone(),
            c.course_id.to_string(),
            c.name.clone().unwrap_or_default(),
            c.enrollments.to_string(),
            c.active.to_string(),
            c.trial.to_string(),
            c.completed.to_string(),
            c.expired.to_string(),
            format!("{:.3}", c.completion_rate),
            format!("{:.1}", c.average_progress),
            c.median_days_to_complete
                .map(|d| format!("{d:.2}"))
                .unwrap_or_default(),
        ]
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn events(settings: &Settings, a: EventsArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let filter = EventFilter {
        source: a.source,
        topic: a
            .topic
            .map(|t| crate::thinkific::canonical_topic(&t).into_owned()),
        after_seq: a.after,
    };
    let mut items = Vec::new();
    let mut cursor = None;
    while items.len() < a.limit {
        let want = (a.limit - items.len()).min(store::MAX_PAGE as usize) as u32;
        let page = store
            .list_events(
                &filter,
                &PageRequest {
                    limit: want,
                    cursor,
                },
            )
            .await?;
        items.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    if a.format == Format::Json {
        let values: Vec<_> = items.iter().map(views::event_view).collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(ExitCode::SUCCESS);
    }
    let header = [
        "seq",
        "source",
        "event_id",
        "topic",
        "created_at",
        "received_at",
        "enrollment_id",
    ];
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.source.clone(),
                e.event_id.clone(),
                e.topic.clone(),
                e.created_at
                    .as_ref()
                    .map(views::rfc3339)
                    .unwrap_or_default(),
                views::rfc3339(&e.received_at),
                opt(e.enrollment_id),
            ]
        })
        .collect();
    output(a.format, &header, &rows, Clone::clone)?;
    Ok(ExitCode::SUCCESS)
}
