//! The tools around the data: `send`, `sign`, `import`, `copy`, `rebuild`,
//! `prune`, `migrate`, `openapi`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::open_existing;
use crate::config::Settings;
use crate::maintenance::{copy, import, retention};
use crate::redact;
use crate::thinkific;

#[derive(Args)]
pub struct ImportArgs {
    /// The JSONL file, or - for stdin.
    file: PathBuf,
    /// File every event under this source (default: each line's `source`, else `default`).
    #[arg(long)]
    source: Option<crate::ids::SourceName>,
    /// Check each line's signature with --secret; lines that fail are not stored.
    #[arg(long)]
    verify_signatures: bool,
    /// Events per transaction.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
}

#[derive(Args)]
pub struct SendArgs {
    /// created, progress, completed, a file path, or - for stdin.
    what: String,
    /// Where to POST.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/thinkific")]
    url: String,
}

pub async fn import(settings: &Settings, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let verify_with = if a.verify_signatures {
        Some(settings.require_secret()?.expose().to_owned())
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
    let store = super::open_store(&settings.database_url, true).await?;
    let options = import::ImportOptions {
        source: a.source,
        verify_with,
        batch: a.batch,
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last = std::time::Instant::now();
    let report = import::import(store.as_ref(), input, &options, |r| {
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

pub async fn send(settings: &Settings, args: SendArgs) -> anyhow::Result<ExitCode> {
    let secret = settings.require_secret()?;
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
        .with_context(|| format!("could not POST to {}", redact::url(&args.url)))?;
    println!("{} {}", result.status, result.body);
    Ok(if (200..300).contains(&result.status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn sign(settings: &Settings) -> anyhow::Result<ExitCode> {
    let secret = settings.require_secret()?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    println!("{}", thinkific::sign(secret.expose().as_bytes(), &body));
    Ok(ExitCode::SUCCESS)
}

pub async fn prune(settings: &Settings, older_than: Duration) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
    let r = retention::prune(store.as_ref(), older_than).await?;
    println!(
        "pruned {} event bodies, {} delivery attempts, {} finished deliveries",
        r.events, r.delivery_attempts, r.deliveries
    );
    if r.partitions_dropped > 0 {
        // PostgreSQL: months of prunable events dropped whole (their ids stay).
        println!(
            "of those events, the ones of {} whole month(s) were dropped with their partitions",
            r.partitions_dropped
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(settings: &Settings, check: bool) -> anyhow::Result<ExitCode> {
    let store = open_existing(&settings.database_url).await?;
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
            "{} rows of the topic and student indexes differ from the log",
            report.index_rows
        );
    }
    if report.learning > 0 {
        println!(
            "{} rows of lessons, learners and quiz results differ from the log",
            report.learning
        );
    }
    if report.courses > 0 {
        println!(
            "{} rows of the course totals and activity days differ from the enrollments",
            report.courses
        );
    }
    if check
        && (report.changed > 0
            || report.removed > 0
            || report.index_rows > 0
            || report.learning > 0
            || report.courses > 0)
    {
        return Ok(ExitCode::FAILURE);
    }
    if !check {
        println!("projection rebuilt");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn copy(from: &str, to: &str) -> anyhow::Result<ExitCode> {
    let source = open_existing(from).await?;
    let target = super::open_store(to, true)
        .await
        .with_context(|| format!("cannot open the target {}", redact::url(to)))?;
    let report = copy::copy(source.as_ref(), target.as_ref()).await?;
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
