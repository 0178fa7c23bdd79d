//! `thinkific webhooks …` and `thinkific backfill`: Thinkific's REST API.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::table::{Format, output};
use crate::config::Settings;
use crate::config::flags::ThinkificFlags;
use crate::thinkific::{self, backfill, registration, rest};
use crate::views;

#[derive(Args)]
pub struct ThinkificArgs {
    #[command(flatten)]
    flags: ThinkificFlags,
    #[command(subcommand)]
    command: ThinkificCommand,
}

#[derive(Subcommand)]
enum ThinkificCommand {
    /// List, register or delete the school's webhooks.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Load the school's enrollments from the REST API into the event log
    /// (as `enrollment.backfill` events; safe to repeat).
    Backfill {
        /// Only enrollments updated after this time (RFC 3339), e.g. the time
        /// the previous backfill printed.
        #[arg(long)]
        updated_after: Option<String>,
        /// Enrollments per request (at most 250).
        #[arg(long, default_value_t = rest::MAX_PAGE_SIZE, hide = true)]
        page_size: u32,
        /// The reconciliation report as a table per course, or as JSON.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// The webhooks registered in Thinkific.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Register webhooks to --url, keeping those that already exist.
    Register {
        /// https://HOST/webhooks/thinkific, or …/webhooks/thinkific/SOURCE.
        #[arg(long)]
        url: String,
        /// Topics (repeatable or comma-separated), or `all`
        /// [default: the enrollment topics, lesson.completed, user.signup, user.updated, order.created].
        #[arg(long)]
        topics: Vec<String>,
        /// Accept an http:// URL (Thinkific itself delivers only to https).
        #[arg(long)]
        allow_http: bool,
    },
    /// Which expected topics are registered to --url, missing, or pointing
    /// elsewhere; exits 1 when one is missing (`register` fixes it).
    Check {
        #[arg(long)]
        url: String,
        /// Expected topics, as for `register` [default: register's default set].
        #[arg(long)]
        topics: Vec<String>,
    },
    /// Delete webhooks by id, or every webhook delivering to --url.
    Delete {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        url: Option<String>,
    },
}

pub async fn thinkific(settings: &Settings, a: ThinkificArgs) -> anyhow::Result<ExitCode> {
    let credentials = settings.thinkific(&a.flags)?;
    let client = credentials.client()?;
    match a.command {
        ThinkificCommand::Webhooks(cmd) => webhooks(&client, cmd).await,
        ThinkificCommand::Backfill {
            updated_after,
            page_size,
            format,
        } => {
            let updated_after = updated_after
                .map(|t| {
                    thinkific::envelope::parse_timestamp(&t).with_context(|| {
                        format!("--updated-after `{t}` is not an RFC 3339 timestamp like 2024-05-01T00:00:00Z")
                    })
                })
                .transpose()?;
            let store = super::open_store(&settings.database_url, true).await?;
            let options = backfill::BackfillOptions {
                source: credentials.source,
                updated_after,
                page_size,
            };
            let report = backfill::backfill(&client, store.as_ref(), &options, |r| {
                let total = r.total_pages.map(|t| format!("/{t}")).unwrap_or_default();
                eprintln!(
                    "page {}{total}: {} enrollments read, {} stored, {} already known",
                    r.pages, r.read, r.stored, r.known
                );
            })
            .await?;
            for e in &report.examples {
                eprintln!("  not stored: {e}");
            }
            let resume = report
                .resume_from
                .map(|t| format!("; next time: --updated-after {}", views::rfc3339(&t)))
                .unwrap_or_default();
            let done = format!(
                "backfill done: {} enrollments in {} pages in {:.1} s: {} stored, {} already known, {} unusable{resume}",
                report.read,
                report.pages,
                report.elapsed.as_secs_f64(),
                report.stored,
                report.known,
                report.unusable
            );
            // Standard output holds only the JSON document when one is asked for.
            if format == Format::Json {
                eprintln!("{done}");
            } else {
                println!("{done}");
            }
            print_reconciliation(&report, format)?;
            Ok(if report.unusable > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn webhooks(client: &rest::RestClient, cmd: WebhooksCommand) -> anyhow::Result<ExitCode> {
    let show = |hooks: &[rest::Webhook], format: Format| {
        let header = ["id", "topic", "status", "target_url"];
        output(format, &header, hooks, |w| {
            vec![
                w.id.clone(),
                w.topic.clone(),
                w.status.clone().unwrap_or_default(),
                w.target_url.clone(),
            ]
        })
    };
    match cmd {
        WebhooksCommand::List { format } => show(&client.list_webhooks().await?, format)?,
        WebhooksCommand::Register {
            url,
            topics,
            allow_http,
        } => {
            let url = registration::target_url(&url, allow_http).map_err(anyhow::Error::msg)?;
            let topics = registration::topics(&topics).map_err(anyhow::Error::msg)?;
            let done = registration::register(client, &url, &topics).await?;
            for w in &done.kept {
                println!("kept     {}  {}  (already registered)", w.id, w.topic);
            }
            for w in &done.created {
                println!("created  {}  {}", w.id, w.topic);
            }
            println!(
                "{} webhooks deliver to {url}: {} created, {} already there. \
                 enrollhook verifies them with the source's secret, which must be this API key",
                done.kept.len() + done.created.len(),
                done.created.len(),
                done.kept.len()
            );
        }
        WebhooksCommand::Check { url, topics } => {
            let topics = registration::topics(&topics).map_err(anyhow::Error::msg)?;
            let c = registration::check(&client.list_webhooks().await?, &url, &topics);
            for t in &c.registered {
                println!("registered  {t}");
            }
            for (t, elsewhere) in &c.elsewhere {
                println!("elsewhere   {t}  (delivers to {elsewhere}, not here)");
            }
            for t in &c.missing {
                println!("missing     {t}");
            }
            println!(
                "{} of {} expected topics deliver to {url}: {} missing, {} pointing elsewhere{}",
                c.registered.len(),
                topics.len(),
                c.missing.len(),
                c.elsewhere.len(),
                if c.missing.is_empty() && c.elsewhere.is_empty() {
                    ""
                } else {
                    ". `enrollhook thinkific webhooks register --url …` fixes it"
                }
            );
            if !c.missing.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        WebhooksCommand::Delete { ids, url } => {
            if ids.is_empty() && url.is_none() {
                bail!(
                    "say what to delete: webhook ids (see `enrollhook thinkific webhooks list`), or --url URL"
                );
            }
            let deleted = registration::delete(client, &ids, url.as_deref()).await?;
            for id in &deleted {
                println!("deleted  {id}");
            }
            println!("{} webhooks deleted", deleted.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The backfill's reconciliation: one line per course and the total (a
/// table or CSV), or the whole report as one JSON document.
fn print_reconciliation(report: &backfill::BackfillReport, format: Format) -> anyhow::Result<()> {
    let r = &report.reconciliation;
    if format == Format::Json {
        let doc = serde_json::json!({
            "read": report.read,
            "stored": report.stored,
            "already_known": report.known,
            "unusable": report.unusable,
            "resume_from": report.resume_from.as_ref().map(views::rfc3339),
            "reconciliation": r,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let header = [
        "course_id",
        "course",
        "missing",
        "behind",
        "behind_points",
        "behind_max",
        "agree",
        "ahead",
    ];
    let total = thinkific::reconcile::CourseCounts {
        course_id: None,
        course_name: Some("TOTAL".into()),
        counts: r.total.clone(),
    };
    let rows: Vec<&thinkific::reconcile::CourseCounts> =
        r.courses.iter().chain(std::iter::once(&total)).collect();
    output(format, &header, &rows, |c| {
        vec![
            c.course_id.map(|id| id.to_string()).unwrap_or_default(),
            c.course_name.clone().unwrap_or_default(),
            c.counts.missing.to_string(),
            c.counts.behind.to_string(),
            format!("{:.1}", c.counts.behind_progress_points),
            format!("{:.1}", c.counts.behind_progress_max),
            c.counts.agree.to_string(),
            c.counts.ahead.to_string(),
        ]
    })?;
    if format == Format::Table {
        println!("{}", r.summary());
    }
    Ok(())
}
