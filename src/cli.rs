//! The command line: `serve` and the tools around it. Commands that read data
//! open the database directly, so they work without a running server.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::{self, ByteSize, FileConfig, Secret, ServeConfig, Sources};
use crate::forward::{ForwardConfig, RetrySchedule, SubscriptionInput};
use crate::projection::Status;
use crate::receive::{self, Delivery};
use crate::store::ReplayScope;
use crate::store::{self, EnrollmentFilter, EventFilter, PageRequest, Store};
use crate::thinkific::{self, SIGNATURE_HEADER, TOPIC_HEADER};
use crate::views::{self, EnrollmentView};

#[derive(Parser)]
#[command(
    name = "enrollhook",
    version,
    about = "Receive, verify, keep and query Thinkific webhooks"
)]
pub struct Cli {
    /// Config file (default: ./enrollhook.toml when it exists).
    #[arg(long, global = true, env = "ENROLLHOOK_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://enrollhook.db].
    #[arg(long, global = true, env = "ENROLLHOOK_DATABASE_URL")]
    database: Option<String>,
    /// The school's Thinkific API key, which signs webhooks (for the default source).
    #[arg(long, global = true, env = "ENROLLHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook receiver and the query API.
    Serve(ServeArgs),
    /// Sign and POST a delivery: a built-in sample (created, progress, completed), a FILE, or - for stdin.
    Send(SendArgs),
    /// Print the X-Thinkific-Hmac-Sha256 signature of the body read from stdin.
    Sign,
    /// List enrollments.
    Enrollments(EnrollmentsArgs),
    /// Per-course statistics.
    Courses(CoursesArgs),
    /// List stored events (the event log).
    Events(EventsArgs),
    /// Inspect and re-admit rejected deliveries.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Manage forwarding subscriptions (where events are passed on).
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// Deliver events again: one event, a subscription's dead deliveries, or a time range.
    Replay(ReplayArgs),
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
    Import(ImportArgs),
    /// Thinkific's REST API: register enrollhook's webhooks, backfill enrollments.
    Thinkific(ThinkificArgs),
}

#[derive(Args)]
struct ThinkificArgs {
    /// The school's Thinkific subdomain (`acme` for acme.thinkific.com)
    /// [default: the source's `subdomain` in enrollhook.toml].
    #[arg(long, global = true, env = "ENROLLHOOK_THINKIFIC_SUBDOMAIN")]
    subdomain: Option<String>,
    /// The school's Thinkific API key [default: the source's secret, which is that key].
    #[arg(
        long,
        global = true,
        env = "ENROLLHOOK_THINKIFIC_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Where Thinkific's API is (tests, proxies).
    #[arg(long, global = true, hide = true, default_value = crate::thinkific::rest::DEFAULT_API_BASE)]
    api_base: String,
    /// The enrollhook source (school) whose credentials are used; the backfill
    /// files its events under it.
    #[arg(long, global = true, default_value = config::DEFAULT_SOURCE)]
    source: String,
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
        #[arg(long, default_value_t = crate::thinkific::rest::MAX_PAGE_SIZE, hide = true)]
        page_size: u32,
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
    /// Delete webhooks by id, or every webhook delivering to --url.
    Delete {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        url: Option<String>,
    },
}

#[derive(Args)]
struct ImportArgs {
    /// The JSONL file, or - for stdin.
    file: PathBuf,
    /// File every event under this source (default: each line's `source`, else `default`).
    #[arg(long)]
    source: Option<String>,
    /// Check each line's signature with --secret; lines that fail are not stored.
    #[arg(long)]
    verify_signatures: bool,
    /// Events per transaction.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ENROLLHOOK_LISTEN")]
    listen: Option<String>,
    /// Bearer token for the query API (required when listening beyond loopback).
    #[arg(long, env = "ENROLLHOOK_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Largest accepted delivery body, e.g. 1MiB [default: 1MiB].
    #[arg(long, env = "ENROLLHOOK_MAX_BODY")]
    max_body: Option<ByteSize>,
    /// Accept deliveries without verifying signatures. Local experiments only.
    #[arg(long)]
    insecure_skip_verification: bool,
    /// Do not create or upgrade the schema on start.
    #[arg(long)]
    no_migrate: bool,
    /// Most events stored per group-commit transaction.
    #[arg(long, default_value_t = 512, hide = true)]
    max_batch: usize,
    /// Delays between forwarding retries, e.g. 1s,2s,5s
    /// [default: 5s,5m,30m,2h,5h,10h,14h,20h,24h].
    #[arg(long, env = "ENROLLHOOK_RETRY_SCHEDULE")]
    retry_schedule: Option<RetrySchedule>,
    /// Allow forwarding to private, loopback and link-local addresses.
    #[arg(long)]
    allow_private_destinations: bool,
    /// Timeout of one forwarding attempt.
    #[arg(long, default_value = "15s", value_parser = crate::forward::policy::parse_duration)]
    forward_timeout: Duration,
    /// Forwarding deliveries in flight at once.
    #[arg(long, default_value_t = 256)]
    forward_concurrency: usize,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "ENROLLHOOK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ENROLLHOOK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long a client may take to send request headers, and a body.
    #[arg(long, default_value = "10s", value_parser = crate::forward::policy::parse_duration)]
    read_timeout: Duration,
    /// Most deliveries per second per source; more get 429 with Retry-After [default: unlimited].
    #[arg(long, env = "ENROLLHOOK_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Most deliveries per second overall [default: unlimited].
    #[arg(long, env = "ENROLLHOOK_GLOBAL_RATE_LIMIT")]
    global_rate_limit: Option<u32>,
    /// Rejected deliveries kept in the quarantine (the oldest beyond are deleted).
    #[arg(long, env = "ENROLLHOOK_MAX_QUARANTINE", default_value_t = config::DEFAULT_MAX_QUARANTINE)]
    max_quarantine: u64,
    /// Drop the raw bodies of events received longer ago than this, e.g. 90d,
    /// checked hourly (event ids, enrollment events and the projection are
    /// kept; see the README) [default: keep everything].
    #[arg(long, env = "ENROLLHOOK_RETAIN_EVENTS", value_parser = crate::forward::policy::parse_duration)]
    retain_events: Option<Duration>,
    /// Disable a subscription whose deliveries have all failed for this long.
    #[arg(long, default_value = "5d", value_parser = crate::forward::policy::parse_duration)]
    disable_failing_after: Duration,
    /// Group-commit writer tasks [default: 1 on SQLite, 2 on PostgreSQL].
    #[arg(long, env = "ENROLLHOOK_WRITERS", hide = true)]
    writers: Option<usize>,
    /// Without --api-token, also answer the API and dashboard for these Host
    /// names (comma-separated; localhost, loopback and the listen address always).
    #[arg(long, env = "ENROLLHOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Most client connections served at once; more wait in the kernel's backlog.
    #[arg(long, env = "ENROLLHOOK_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
}

#[derive(Args)]
struct SendArgs {
    /// created, progress, completed, a file path, or - for stdin.
    what: String,
    /// Where to POST.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/thinkific")]
    url: String,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Args)]
struct EnrollmentsArgs {
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
struct CoursesArgs {
    #[arg(long)]
    source: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
struct EventsArgs {
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

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Rejected deliveries, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One rejected delivery with its headers and body.
    Show { id: i64 },
    /// Re-verify with the current secret and store it if it now passes.
    Retry { id: i64 },
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Globals {
    file: FileConfig,
    database_url: String,
    secret: Option<Secret>,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (file, _path) = FileConfig::load(cli.config.as_deref())?;
    let globals = Globals {
        database_url: cli
            .database
            .clone()
            .or_else(|| file.database.clone())
            .unwrap_or_else(|| config::DEFAULT_DATABASE.to_owned()),
        secret: cli.secret.clone().map(Secret::new),
        file,
    };
    match cli.command {
        Command::Serve(args) => serve(globals, args).await,
        Command::Send(args) => send(globals, args).await,
        Command::Sign => {
            let secret = require_secret(&globals)?;
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body)?;
            println!("{}", thinkific::sign(secret.expose().as_bytes(), &body));
            Ok(ExitCode::SUCCESS)
        }
        Command::Enrollments(args) => enrollments(globals, args).await,
        Command::Courses(args) => courses(globals, args).await,
        Command::Events(args) => events(globals, args).await,
        Command::Quarantine(cmd) => quarantine(globals, cmd).await,
        Command::Subscriptions(cmd) => subscriptions(globals, cmd).await,
        Command::Replay(args) => replay(globals, args).await,
        Command::Prune { older_than } => {
            let store = open_existing(&globals.database_url).await?;
            let r = crate::retention::prune(store.as_ref(), older_than).await?;
            println!(
                "pruned {} event bodies, {} delivery attempts, {} finished deliveries",
                r.events, r.delivery_attempts, r.deliveries
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild { check } => {
            let store = open_existing(&globals.database_url).await?;
            let report = store.rebuild_projection(check).await?;
            println!(
                "{} events, {} enrollments; {} {} differ from the stored projection, {} without events",
                report.events,
                report.enrollments,
                report.changed,
                if report.changed == 1 { "row" } else { "rows" },
                report.removed
            );
            if report.index_rows > 0 {
                println!(
                    "{} rows of the topic index differ from the log",
                    report.index_rows
                );
            }
            if check && (report.changed > 0 || report.removed > 0 || report.index_rows > 0) {
                return Ok(ExitCode::FAILURE);
            }
            if !check {
                println!("projection rebuilt");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!("{}", crate::server::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Copy { from, to } => {
            let source = open_existing(&from).await?;
            let target = store::open(&to, true)
                .await
                .with_context(|| format!("cannot open the target {}", redact_url(&to)))?;
            let report = crate::copy::copy(source.as_ref(), target.as_ref()).await?;
            println!(
                "{} events read, {} added ({} already there); {} quarantined deliveries read, {} added",
                report.events,
                report.events_added,
                report.events - report.events_added,
                report.quarantine,
                report.quarantine_added
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            let secret = require_secret(&globals).ok();
            crate::simulate::command(args, secret.as_ref().map(Secret::expose)).await
        }
        Command::Import(args) => import(globals, args).await,
        Command::Thinkific(args) => thinkific(globals, args).await,
        Command::Migrate => {
            store::open(&globals.database_url, true).await?;
            println!("database schema is up to date");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The REST client for `--source`: flags and environment first, then the
/// source's `subdomain` and `secret` (the school's API key) from the config.
fn thinkific_client(
    g: &Globals,
    a: &ThinkificArgs,
) -> anyhow::Result<crate::thinkific::rest::RestClient> {
    config::validate_source_name(&a.source)?;
    let configured = g.file.sources.iter().find(|s| s.name == a.source);
    let is_default = a.source == config::DEFAULT_SOURCE;
    let api_key = a
        .api_key
        .clone()
        .map(Secret::new)
        .or_else(|| configured.and_then(|s| s.secret.clone()))
        .or_else(|| {
            is_default
                .then(|| g.secret.clone().or_else(|| g.file.secret.clone()))
                .flatten()
        })
        .with_context(|| {
            format!(
                "no Thinkific API key for source `{}`: pass --api-key or ENROLLHOOK_THINKIFIC_API_KEY \
                 (Settings → Code & analytics → API in your Thinkific admin)",
                a.source
            )
        })?;
    let subdomain = a
        .subdomain
        .clone()
        .or_else(|| configured.and_then(|s| s.subdomain.clone()))
        .or_else(|| is_default.then(|| g.file.subdomain.clone()).flatten())
        .with_context(|| {
            format!(
                "no Thinkific subdomain for source `{}`: pass --subdomain (acme for acme.thinkific.com) \
                 or ENROLLHOOK_THINKIFIC_SUBDOMAIN, or set `subdomain` in enrollhook.toml",
                a.source
            )
        })?;
    Ok(crate::thinkific::rest::RestClient::new(
        &a.api_base,
        &subdomain,
        api_key,
        crate::thinkific::rest::RetryPolicy::default(),
    )?)
}

async fn thinkific(g: Globals, a: ThinkificArgs) -> anyhow::Result<ExitCode> {
    let client = thinkific_client(&g, &a)?;
    match a.command {
        ThinkificCommand::Webhooks(cmd) => webhooks(&client, cmd).await,
        ThinkificCommand::Backfill {
            updated_after,
            page_size,
        } => {
            let updated_after = updated_after
                .map(|t| {
                    thinkific::envelope::parse_timestamp(&t).with_context(|| {
                        format!("--updated-after `{t}` is not an RFC 3339 timestamp like 2024-05-01T00:00:00Z")
                    })
                })
                .transpose()?;
            let store = store::open(&g.database_url, true).await?;
            let options = crate::backfill::BackfillOptions {
                source: a.source,
                updated_after,
                page_size,
            };
            let report = crate::backfill::backfill(&client, store.as_ref(), &options, |r| {
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
            println!(
                "backfill done: {} enrollments in {} pages in {:.1} s: {} stored, {} already known, {} unusable{resume}",
                report.read,
                report.pages,
                report.elapsed.as_secs_f64(),
                report.stored,
                report.known,
                report.unusable
            );
            Ok(if report.unusable > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn webhooks(
    client: &crate::thinkific::rest::RestClient,
    cmd: WebhooksCommand,
) -> anyhow::Result<ExitCode> {
    use crate::registration;
    let show = |hooks: &[crate::thinkific::rest::Webhook], format: Format| {
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

fn require_secret(g: &Globals) -> anyhow::Result<Secret> {
    g.secret
        .clone()
        .or_else(|| g.file.secret.clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--secret (or ENROLLHOOK_SECRET) is required: the school's Thinkific API key"
            )
        })
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
    store::open(url, false).await
}

async fn serve(g: Globals, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let listen = args
        .listen
        .or_else(|| g.file.listen.clone())
        .unwrap_or_else(|| config::DEFAULT_LISTEN.to_owned());
    let listen = tokio::net::lookup_host(&listen)
        .await
        .with_context(|| format!("--listen `{listen}` is not an address like 127.0.0.1:8080"))?
        .next()
        .with_context(|| format!("--listen `{listen}` resolves to no address"))?;
    let mut sources = Sources::resolve(g.secret.clone(), &g.file);
    if args.insecure_skip_verification && sources.is_empty() {
        sources = Sources::insecure_default();
    }
    let config = ServeConfig {
        listen,
        database_url: g.database_url.clone(),
        sources,
        insecure_skip_verification: args.insecure_skip_verification,
        api_token: args
            .api_token
            .map(Secret::new)
            .or_else(|| g.file.api_token.clone()),
        max_body: args
            .max_body
            .or(g.file.max_body)
            .map_or(config::DEFAULT_MAX_BODY, |b| b.0),
        migrate: !args.no_migrate,
        max_batch: args.max_batch.max(1),
        forward: ForwardConfig {
            schedule: args.retry_schedule.unwrap_or_default(),
            allow_private_destinations: args.allow_private_destinations,
            concurrency: args.forward_concurrency.max(1),
            timeout: args.forward_timeout,
            disable_after: args.disable_failing_after,
            ..ForwardConfig::default()
        },
        tls: args.tls_cert.zip(args.tls_key),
        read_timeout: args.read_timeout,
        rate_limit: args.rate_limit,
        global_rate_limit: args.global_rate_limit,
        writers: args.writers,
        max_quarantine: args.max_quarantine,
        retain_events: args.retain_events,
        allowed_hosts: args.allowed_hosts,
        max_connections: args.max_connections.max(1),
    };
    config.validate()?;
    if config.insecure_skip_verification {
        tracing::warn!(
            "--insecure-skip-verification: signatures are NOT checked; anyone who can reach this port can write events"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let running = crate::server::start(config.clone(), listener, true).await?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let sources: Vec<String> = config
        .sources
        .names()
        .map(|n| {
            if n == config::DEFAULT_SOURCE {
                format!("{scheme}://{}/webhooks/thinkific", running.addr)
            } else {
                format!("{scheme}://{}/webhooks/thinkific/{n}", running.addr)
            }
        })
        .collect();
    tracing::info!(
        database = %redact_url(&config.database_url),
        api = %format!("{scheme}://{}/api/enrollments", running.addr),
        "enrollhook listening on {}; webhook URLs: {}; dashboard: {scheme}://{}/dashboard",
        running.addr,
        sources.join(", "),
        running.addr
    );
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}

/// Database URLs may carry a password: never log it.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn import(g: Globals, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let verify_with = if a.verify_signatures {
        Some(require_secret(&g)?.expose().to_owned())
    } else {
        None
    };
    let input: Box<dyn std::io::BufRead> = if a.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&a.file)
            .with_context(|| format!("cannot open {}", a.file.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, file))
    };
    let store = store::open(&g.database_url, true).await?;
    let options = crate::import::ImportOptions {
        source: a.source,
        verify_with,
        batch: a.batch,
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last = std::time::Instant::now();
    let report = crate::import::import(store.as_ref(), input, &options, |r| {
        if tty && last.elapsed() > Duration::from_millis(250) {
            last = std::time::Instant::now();
            eprint!("\r\x1b[2K{} lines, {} stored", r.lines, r.stored);
        }
    })
    .await?;
    if tty {
        eprintln!();
    }
    println!(
        "imported {} lines in {:.1} s ({:.0} lines/s): {} stored, {} duplicates skipped, {} rejected",
        report.lines,
        report.elapsed.as_secs_f64(),
        report.lines as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.stored,
        report.duplicates,
        report.rejected_total()
    );
    for (code, n) in &report.rejected {
        println!("  rejected {n}: {code}");
    }
    for e in &report.examples {
        println!("  {e}");
    }
    Ok(if report.rejected_total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn send(g: Globals, args: SendArgs) -> anyhow::Result<ExitCode> {
    let secret = require_secret(&g)?;
    let body: Vec<u8> = match thinkific::samples::by_name(&args.what) {
        Some(sample) => sample.as_bytes().to_vec(),
        None if args.what == "-" => {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b)?;
            b
        }
        None => std::fs::read(&args.what).with_context(|| {
            format!(
                "`{}` is neither a sample (created, progress, completed) nor a readable file",
                args.what
            )
        })?,
    };
    let client = crate::client::http_client(Duration::from_secs(30))?;
    let result = crate::client::send_signed(&client, &args.url, secret.expose().as_bytes(), &body)
        .await
        .with_context(|| format!("could not POST to {}", args.url))?;
    println!("{} {}", result.status, result.body);
    Ok(if (200..300).contains(&result.status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn enrollments(g: Globals, a: EnrollmentsArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&g.database_url).await?;
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

async fn courses(g: Globals, a: CoursesArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&g.database_url).await?;
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

async fn events(g: Globals, a: EventsArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&g.database_url).await?;
    let filter = EventFilter {
        source: a.source,
        topic: a.topic,
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

async fn quarantine(g: Globals, cmd: QuarantineCommand) -> anyhow::Result<ExitCode> {
    let store = open_existing(&g.database_url).await?;
    match cmd {
        QuarantineCommand::List { limit, format } => {
            let page = store
                .list_quarantine(
                    None,
                    &PageRequest {
                        limit: limit.clamp(1, store::MAX_PAGE),
                        cursor: None,
                    },
                )
                .await?;
            if format == Format::Json {
                let values: Vec<_> = page
                    .items
                    .iter()
                    .map(|r| views::quarantine_view(r, false))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
                return Ok(ExitCode::SUCCESS);
            }
            let header = [
                "id",
                "received_at",
                "source",
                "reason_code",
                "body_size",
                "resolution",
                "reason",
            ];
            output(format, &header, &page.items, |r| {
                vec![
                    r.id.to_string(),
                    views::rfc3339(&r.received_at),
                    r.source.clone(),
                    r.reason_code.clone(),
                    r.body_size.to_string(),
                    r.resolution.clone().unwrap_or_else(|| "-".into()),
                    r.reason.clone(),
                ]
            })?;
        }
        QuarantineCommand::Show { id } => {
            let record = store
                .get_quarantine(id)
                .await?
                .with_context(|| format!("no quarantined delivery #{id}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&views::quarantine_view(&record, true))?
            );
        }
        QuarantineCommand::Retry { id } => {
            let record = store
                .get_quarantine(id)
                .await?
                .with_context(|| format!("no quarantined delivery #{id}"))?;
            let sources = Sources::resolve(g.secret.clone(), &g.file);
            let delivery = Delivery {
                source: &record.source,
                signature: record.header(SIGNATURE_HEADER).map(str::as_bytes),
                topic_header: record.header(TOPIC_HEADER),
                body: &record.body,
                received_at: record.received_at,
            };
            let event = match receive::check(&sources, true, &delivery) {
                Ok(event) => event,
                Err(r) => {
                    eprintln!("#{id} is still rejected: {r}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let outcome = store.append_batch(std::slice::from_ref(&event)).await?[0];
            let resolution = views::admitted_resolution(&event.event_id, outcome);
            store.resolve_quarantine(id, &resolution).await?;
            println!("#{id}: {resolution}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum SubscriptionsCommand {
    /// Forward matching events to a URL.
    Add {
        #[arg(long)]
        url: String,
        #[command(flatten)]
        fields: SubscriptionFields,
        /// Accept a private, loopback or link-local URL (the server must also allow it).
        #[arg(long)]
        allow_private: bool,
    },
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One subscription, with its secret.
    Show {
        id: String,
    },
    /// Change a subscription; options not given are left as they are.
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        fields: SubscriptionFields,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(long)]
        allow_private: bool,
    },
    Remove {
        id: String,
    },
    /// New signing secret; the old one keeps signing too during the grace period.
    RotateSecret {
        id: String,
        #[arg(long, default_value = "24h", value_parser = crate::forward::policy::parse_duration)]
        grace: Duration,
    },
    /// Delivery attempts of a subscription, oldest first (`--newest-first`: the latest).
    Attempts {
        id: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The most recent attempts, newest first.
        #[arg(long)]
        newest_first: bool,
    },
}

#[derive(Args)]
struct SubscriptionFields {
    /// Topic pattern: `*`, `enrollment.*` or an exact topic (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Only events of this course (repeatable).
    #[arg(long = "course")]
    course_ids: Vec<i64>,
    /// Only events of this source (repeatable).
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Signing secret (`whsec_…`); generated when not given.
    #[arg(long = "signing-secret")]
    signing_secret: Option<String>,
    /// Extra header sent with every delivery, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Deliver the events of one enrollment in order, one at a time.
    #[arg(long)]
    ordered: Option<bool>,
    #[arg(long)]
    description: Option<String>,
}

impl SubscriptionFields {
    fn into_input(self, url: Option<String>) -> anyhow::Result<SubscriptionInput> {
        let headers = if self.headers.is_empty() {
            None
        } else {
            let mut map = std::collections::BTreeMap::new();
            for h in &self.headers {
                let (name, value) = h
                    .split_once(':')
                    .with_context(|| format!("--header `{h}` must look like `Name: value`"))?;
                map.insert(name.trim().to_owned(), value.trim().to_owned());
            }
            Some(map)
        };
        Ok(SubscriptionInput {
            url,
            topics: (!self.topics.is_empty()).then_some(self.topics),
            course_ids: (!self.course_ids.is_empty()).then_some(Some(self.course_ids)),
            sources: (!self.sources.is_empty()).then_some(Some(self.sources)),
            secret: self.signing_secret,
            enabled: None,
            ordered: self.ordered,
            headers,
            description: self.description.map(Some),
        })
    }
}

#[derive(Args)]
struct ReplayArgs {
    /// One event: SOURCE/EVENT_ID (to every matching subscription, or to --subscription).
    #[arg(long, conflicts_with_all = ["dead", "since"])]
    event: Option<String>,
    #[arg(long)]
    subscription: Option<String>,
    /// Every dead delivery of --subscription.
    #[arg(long, requires = "subscription")]
    dead: bool,
    /// Every matching event received since this time (RFC 3339), to --subscription.
    #[arg(long, requires = "subscription")]
    since: Option<String>,
    /// End of the time range [default: now].
    #[arg(long, requires = "since")]
    until: Option<String>,
}

async fn subscriptions(g: Globals, cmd: SubscriptionsCommand) -> anyhow::Result<ExitCode> {
    let store = open_existing(&g.database_url).await?;
    let now = Utc::now();
    let print = |s: &crate::forward::Subscription| -> anyhow::Result<()> {
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::server::subscription_view(s, true))?
        );
        Ok(())
    };
    match cmd {
        SubscriptionsCommand::Add {
            url,
            fields,
            allow_private,
        } => {
            let s = fields.into_input(Some(url))?.create(
                crate::server::new_subscription_id(),
                now,
                allow_private,
            )?;
            store.insert_subscription(&s).await?;
            print(&s)?;
        }
        SubscriptionsCommand::List { format } => {
            let subs = store.list_subscriptions().await?;
            if format == Format::Json {
                let values: Vec<_> = subs
                    .iter()
                    .map(|s| crate::server::subscription_view(s, false))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
                return Ok(ExitCode::SUCCESS);
            }
            let header = [
                "id",
                "enabled",
                "url",
                "topics",
                "courses",
                "ordered",
                "disabled_reason",
            ];
            output(format, &header, &subs, |s| {
                vec![
                    s.id.clone(),
                    s.enabled.to_string(),
                    s.url.clone(),
                    s.topics.join(","),
                    s.course_ids
                        .as_ref()
                        .map(|c| c.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
                        .unwrap_or_else(|| "*".into()),
                    s.ordered.to_string(),
                    s.disabled_reason.clone().unwrap_or_default(),
                ]
            })?;
        }
        SubscriptionsCommand::Show { id } => {
            let s = store
                .get_subscription(&id)
                .await?
                .with_context(|| format!("no subscription `{id}`"))?;
            print(&s)?;
        }
        SubscriptionsCommand::Update {
            id,
            url,
            fields,
            enable,
            disable,
            allow_private,
        } => {
            let existing = store
                .get_subscription(&id)
                .await?
                .with_context(|| format!("no subscription `{id}`"))?;
            let mut input = fields.into_input(url)?;
            input.enabled = if enable {
                Some(true)
            } else if disable {
                Some(false)
            } else {
                None
            };
            let s = input.apply(existing, now, allow_private)?;
            store.update_subscription(&s).await?;
            print(&s)?;
        }
        SubscriptionsCommand::Remove { id } => {
            if !store.delete_subscription(&id).await? {
                bail!("no subscription `{id}`");
            }
            println!("removed {id}");
        }
        SubscriptionsCommand::RotateSecret { id, grace } => {
            let mut s = store
                .get_subscription(&id)
                .await?
                .with_context(|| format!("no subscription `{id}`"))?;
            s.rotate_secret(None, grace, now)?;
            store.update_subscription(&s).await?;
            print(&s)?;
        }
        SubscriptionsCommand::Attempts {
            id,
            limit,
            newest_first,
        } => {
            let page = store
                .list_attempts(
                    Some(&id),
                    None,
                    &PageRequest {
                        limit: limit.clamp(1, store::MAX_PAGE),
                        cursor: None,
                    },
                    newest_first,
                )
                .await?;
            let header = [
                "attempted_at",
                "event_seq",
                "attempt",
                "status",
                "latency_ms",
                "error",
            ];
            output(Format::Table, &header, &page.items, |a| {
                vec![
                    views::rfc3339(&a.attempted_at),
                    a.event_seq.to_string(),
                    a.attempt.to_string(),
                    opt(a.status),
                    format!("{:.1}", a.latency_ms),
                    a.error.clone().unwrap_or_default(),
                ]
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(g: Globals, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&g.database_url).await?;
    let scope = match (a.event, a.subscription) {
        (Some(event), subscription_id) => {
            let (source, event_id) = event
                .split_once('/')
                .with_context(|| format!("--event `{event}` must be SOURCE/EVENT_ID, e.g. default/20190131192004041953291"))?;
            ReplayScope::Event {
                source: source.into(),
                event_id: event_id.into(),
                subscription_id,
            }
        }
        (None, Some(subscription_id)) if a.dead => ReplayScope::Dead { subscription_id },
        (None, Some(subscription_id)) if a.since.is_some() => {
            let parse = |name: &str, v: &str| {
                thinkific::envelope::parse_timestamp(v).with_context(|| {
                    format!("--{name} `{v}` is not an RFC 3339 timestamp like 2024-05-01T00:00:00Z")
                })
            };
            ReplayScope::Range {
                subscription_id,
                since: parse("since", a.since.as_deref().expect("checked"))?,
                until: match a.until.as_deref() {
                    Some(u) => parse("until", u)?,
                    None => Utc::now(),
                },
            }
        }
        _ => bail!(
            "say what to replay: --event SOURCE/EVENT_ID, or --subscription ID with --dead or --since TIME"
        ),
    };
    let count = store.replay(&scope, Utc::now()).await?;
    println!("{count} deliveries queued; a running `enrollhook serve` sends them");
    Ok(ExitCode::SUCCESS)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Prints rows as an aligned table, CSV, or (for serializable rows) JSON.
fn output<T: serde::Serialize>(
    format: Format,
    header: &[&str],
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?,
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(header)?;
            for row in rows {
                w.write_record(cells(row))?;
            }
            w.flush()?;
        }
        Format::Table => {
            let table: Vec<Vec<String>> = rows.iter().map(&cells).collect();
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in &table {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cells: Vec<&str>| -> String {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            writeln!(out, "{}", line(header.to_vec()))?;
            for row in &table {
                writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
            }
            if table.is_empty() {
                writeln!(out, "(none)")?;
            }
        }
    }
    Ok(())
}
