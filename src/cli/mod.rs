//! The command line: parse, call one use case, print. Every setting is merged
//! by [`crate::config`]; every decision lives in the modules the commands call.
//! Commands that read data open the database directly, so they work without a
//! running server.

mod alerts;
mod learning;
mod quarantine;
mod query;
mod serve;
mod subscriptions;
mod table;
mod thinkific;
mod tools;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::Settings;
use crate::config::flags::{GlobalFlags, ServeFlags};
use crate::store::{self, Store};

#[derive(Parser)]
#[command(
    name = "enrollhook",
    version,
    about = "Receive, verify, keep and query Thinkific webhooks"
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook receiver and the query API.
    Serve(ServeFlags),
    /// Sign and POST a delivery: a built-in sample (created, progress, completed), a FILE, or - for stdin.
    Send(tools::SendArgs),
    /// Print the X-Thinkific-Hmac-Sha256 signature of the body read from stdin.
    Sign,
    /// List enrollments.
    Enrollments(query::EnrollmentsArgs),
    /// Per-course statistics.
    Courses(query::CoursesArgs),
    /// A course's lesson funnel: completions per lesson, where stalled students stopped.
    Funnel(learning::FunnelArgs),
    /// Stalled students: enrolled, not completed, not expired, inactive for --days.
    Stalled(learning::StalledArgs),
    /// One student: enrollments, lessons, quizzes and their events.
    Student(learning::StudentArgs),
    /// List stored events (the event log).
    Events(query::EventsArgs),
    /// The scheduled reconciliations' runs (`serve --reconcile-every`), newest first.
    Reconciliations(query::ReconciliationsArgs),
    /// Alerts (`enrollhook.*` events): incidents open and recent, newest first.
    Alerts(alerts::AlertsArgs),
    /// The milestones each source emits, as configured in enrollhook.toml.
    Milestones(query::MilestonesArgs),
    /// Inspect and re-admit rejected deliveries.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Manage forwarding subscriptions (where events are passed on).
    #[command(subcommand)]
    Subscriptions(subscriptions::SubscriptionsCommand),
    /// Deliver events again: one event, a subscription's dead deliveries, or a time range.
    Replay(subscriptions::ReplayArgs),
    /// Re-derive the enrollment projection from the event log.
    Rebuild {
        /// Only compare: change nothing, exit 1 when the projection differs.
        #[arg(long)]
        check: bool,
    },
    /// Drop the raw bodies of events received longer ago than --older-than
    /// (what `serve --retain-events` does every hour).
    Prune {
        /// e.g. 90d.
        #[arg(long, value_parser = crate::forward::policy::parse_duration)]
        older_than: Duration,
    },
    /// Create or upgrade the database schema.
    Migrate,
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Copy events, projection and quarantine to another database (safe to repeat).
    Copy {
        /// The database to read, e.g. sqlite://enrollhook.db.
        #[arg(long)]
        from: String,
        /// The database to write (created or migrated), e.g. postgres://user@host/db.
        #[arg(long)]
        to: String,
    },
    /// Send realistic, signed Thinkific traffic to a receiver (or write it with --out).
    Simulate(crate::simulate::SimulateArgs),
    /// Load a JSONL file of deliveries (simulate --out) or exported events into the database.
    Import(tools::ImportArgs),
    /// Thinkific's REST API: register enrollhook's webhooks, backfill enrollments.
    Thinkific(thinkific::ThinkificArgs),
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    let default_level = if serving {
        "enrollhook=info"
    } else {
        "enrollhook=warn"
    };
    // `serve` logs one line per delivery: a background thread writes them in
    // buffered chunks, so a request never waits for a write to stderr (measured
    // in BENCHMARKS.md). Lines are never dropped; the guard flushes them at exit.
    let (writer, _flush_logs_at_exit) = if serving {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ));
        (BoxMakeWriter::new(writer), Some(guard))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    // Traces (`serve` only): the exporter exists only when an endpoint is set.
    let otlp = match &cli.command {
        Command::Serve(flags) => crate::telemetry::OtlpSettings {
            endpoint: flags.otlp_endpoint.clone(),
            sample: flags.otlp_sample,
        },
        _ => Default::default(),
    };
    let provider = if otlp.enabled() {
        match crate::telemetry::provider(&otlp) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    // The log never shows the traced spans (they would prefix every line).
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(default_level))
                .and(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() != crate::telemetry::TARGET
                })),
        );
    tracing_subscriber::registry()
        .with(logs)
        .with(provider.as_ref().map(crate::telemetry::layer))
        .init();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(provider) = provider {
        crate::telemetry::shutdown(provider).await;
    }
    code
}

/// The config file's milestones: every command that opens the database
/// derives them as `serve` does, since on SQLite any process may be the one
/// that projects an event (a read catches the projection up), and one that
/// projected it without them would lose its milestones.
static MILESTONES: std::sync::OnceLock<crate::projection::milestones::MilestoneRules> =
    std::sync::OnceLock::new();

/// Opens a store (see [`store::open`]) deriving the config file's milestones.
pub(crate) async fn open_store(url: &str, migrate: bool) -> anyhow::Result<Arc<dyn Store>> {
    store::open_with_milestones(url, migrate, MILESTONES.get().cloned().unwrap_or_default()).await
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&cli.global)?;
    let _ = MILESTONES.set(settings.file.milestone_rules()?);
    match cli.command {
        Command::Serve(flags) => serve::serve(&settings, flags).await,
        Command::Send(args) => tools::send(&settings, args).await,
        Command::Sign => tools::sign(&settings),
        Command::Enrollments(args) => query::enrollments(&settings, args).await,
        Command::Courses(args) => query::courses(&settings, args).await,
        Command::Funnel(args) => learning::funnel(&settings, args).await,
        Command::Stalled(args) => learning::stalled(&settings, args).await,
        Command::Student(args) => learning::student(&settings, args).await,
        Command::Events(args) => query::events(&settings, args).await,
        Command::Reconciliations(args) => query::reconciliations(&settings, args).await,
        Command::Alerts(args) => alerts::alerts(&settings, args).await,
        Command::Milestones(args) => query::milestones(&settings, args),
        Command::Quarantine(cmd) => quarantine::quarantine(&settings, cmd).await,
        Command::Subscriptions(cmd) => subscriptions::subscriptions(&settings, cmd).await,
        Command::Replay(args) => subscriptions::replay(&settings, args).await,
        Command::Prune { older_than } => tools::prune(&settings, older_than).await,
        Command::Rebuild { check } => tools::rebuild(&settings, check).await,
        Command::Openapi => {
            println!("{}", crate::server::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Copy { from, to } => tools::copy(&from, &to).await,
        Command::Simulate(args) => {
            let secret = settings.secret();
            crate::simulate::command(args, secret.as_ref().map(|s| s.expose())).await
        }
        Command::Import(args) => tools::import(&settings, args).await,
        Command::Thinkific(args) => thinkific::thinkific(&settings, args).await,
        Command::Migrate => {
            open_store(&settings.database_url, true).await?;
            println!("database schema is up to date");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens a database that must already exist (reading commands never create one).
async fn open_existing(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
        && !path.contains(":memory:")
        && !std::path::Path::new(path).exists()
    {
        bail!(
            "no database at {path}: start `enrollhook serve` to create it, or pass --database / ENROLLHOOK_DATABASE_URL"
        );
    }
    open_store(url, false).await
}
