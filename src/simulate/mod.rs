//! The Thinkific traffic simulator: realistic, correctly signed webhook
//! traffic for any receiver, with the faults of the real thing, and a check
//! of the receiver's final state against what the traffic implies.
//!
//! [`model`] is the seeded school (lifecycles), [`traffic`] turns it into
//! deliveries with faults and folds the expected state, [`run`] sends and
//! measures, [`verify`] compares a receiver's API with the expectation.
//! [`command`] is the thin CLI shell over them.

pub mod model;
pub mod run;
pub mod traffic;
pub mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;

pub use model::{School, SchoolConfig};
pub use run::{SendOptions, SendReport, send};
pub use traffic::{Delivery, Expected, Faults, Kind, Traffic, TrafficConfig};
pub use verify::{expected_courses, verify};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The receiver's webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/thinkific")]
    pub url: String,
    /// Students in the school (each signs up and takes 1 to 3 courses).
    #[arg(long, default_value_t = 200)]
    pub students: u64,
    #[arg(long, default_value_t = 10)]
    pub courses: u32,
    /// Stop after this many events (faults come on top). Default: until every student is done.
    #[arg(long)]
    pub events: Option<u64>,
    /// Stop generating new events after this long, e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Deliveries per second at most (default: as fast as the receiver answers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Deliveries in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Same seed, same traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of events delivered twice (half of them back to back, racing).
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Fraction of events delivered late, after events that happened after them.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Fraction of events preceded by a forged copy with a bad signature.
    #[arg(long, default_value_t = 0.0)]
    pub bad_signatures: f64,
    /// Students sign up over this many simulated days.
    #[arg(long, default_value_t = 30.0)]
    pub arrival_days: f64,
    /// When the first student signs up (simulated time, RFC 3339), e.g. a few
    /// weeks ago to fill the dashboard's recent charts [default: 2025-01-06T09:00:00Z].
    #[arg(long, value_parser = parse_start)]
    pub start: Option<DateTime<Utc>>,
    /// Source name the receiver files these deliveries under (for --verify and --out).
    #[arg(long, default_value = "default")]
    pub source: crate::ids::SourceName,
    /// Sent as X-Thinkific-Subdomain.
    #[arg(long, default_value = "simulated-school")]
    pub subdomain: String,
    /// Retries of a delivery answered 5xx or lost, like Thinkific's.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// After sending, compare this enrollhook API base URL (e.g. http://127.0.0.1:8080)
    /// with the expected state; exit 1 on any mismatch.
    #[arg(long)]
    pub verify: Option<String>,
    /// Bearer token for --verify.
    #[arg(long, env = "ENROLLHOOK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Write the deliveries to this JSONL file instead of sending them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_start(s: &str) -> Result<DateTime<Utc>, String> {
    crate::thinkific::envelope::parse_timestamp(s)
        .ok_or_else(|| format!("`{s}` is not an RFC 3339 timestamp like 2026-10-01T09:00:00Z"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 30s, 5m or 1h"))?;
    let factor = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}`: use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs_f64(n * factor))
}

impl SimulateArgs {
    pub fn traffic_config(&self, secret: &str) -> anyhow::Result<TrafficConfig> {
        let faults = Faults {
            duplicates: self.duplicates,
            reorder: self.reorder,
            bad_signatures: self.bad_signatures,
        };
        faults.validate()?;
        anyhow::ensure!(self.students >= 1, "--students must be at least 1");
        anyhow::ensure!(self.courses >= 1, "--courses must be at least 1");
        anyhow::ensure!(
            self.arrival_days > 0.0 && self.arrival_days.is_finite(),
            "--arrival-days must be a positive number of days"
        );
        Ok(TrafficConfig {
            school: SchoolConfig {
                seed: self.seed,
                students: self.students,
                courses: self.courses,
                arrival_days: self.arrival_days,
                start: self.start.unwrap_or(SchoolConfig::default().start),
                ..Default::default()
            },
            events: self.events,
            faults,
            secret: secret.to_owned(),
            source: self.source.to_string(),
            subdomain: self.subdomain.clone(),
        })
    }
}

/// Writes every delivery as one JSON line; returns the expected state and the
/// number of lines per kind.
pub fn write_jsonl(
    traffic: Traffic,
    out: impl Write,
) -> anyhow::Result<(Expected, std::collections::BTreeMap<&'static str, u64>)> {
    let mut out = std::io::BufWriter::new(out);
    let mut traffic = traffic;
    let mut counts = std::collections::BTreeMap::new();
    for d in traffic.by_ref() {
        let kind = match d.kind {
            Some(Kind::Late) => "late",
            Some(Kind::Duplicate) => "duplicate",
            Some(Kind::Forged) => "forged",
            _ => "original",
        };
        *counts.entry(kind).or_default() += 1;
        serde_json::to_writer(&mut out, &d)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok((traffic.into_expected(), counts))
}

/// `enrollhook simulate`.
pub async fn command(args: SimulateArgs, secret: Option<&str>) -> anyhow::Result<ExitCode> {
    let secret = secret.ok_or_else(|| {
        anyhow::anyhow!(
            "--secret (or ENROLLHOOK_SECRET) is required: the key the receiver verifies signatures with"
        )
    })?;
    let traffic = Traffic::new(args.traffic_config(secret)?);
    let mut ok = true;
    let expected = match &args.out {
        Some(path) => {
            anyhow::ensure!(
                args.duration.is_none() && args.rate.is_none(),
                "--out writes the traffic without sending it: --duration and --rate do not apply"
            );
            let file = std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            let started = std::time::Instant::now();
            let (expected, counts) = write_jsonl(traffic, file)?;
            let total: u64 = counts.values().sum();
            println!(
                "wrote {total} deliveries to {} in {:.1} s ({})",
                path.display(),
                started.elapsed().as_secs_f64(),
                kinds(&counts)
            );
            expected
        }
        None => {
            let opts = SendOptions {
                url: args.url.clone(),
                concurrency: args.concurrency,
                rate: args.rate,
                duration: args.duration,
                retries: args.retries,
                progress: !args.quiet,
                ..Default::default()
            };
            let (report, expected) = send(traffic, &opts).await?;
            print_send_report(&report);
            ok &= report.unexpected == 0;
            expected
        }
    };
    print_expected(&expected);
    if let Some(api) = &args.verify {
        let client = crate::client::http_client(Duration::from_secs(60))?;
        let mismatches = verify(&client, api, args.api_token.as_deref(), &expected).await?;
        if mismatches.is_empty() {
            println!(
                "verify: {api} matches the expected state ({} enrollments)",
                expected.enrollments.len()
            );
        } else {
            println!("verify: {} mismatches with {api}:", mismatches.len());
            for m in &mismatches {
                println!("  {m}");
            }
            ok = false;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn kinds(counts: &std::collections::BTreeMap<&'static str, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_send_report(r: &SendReport) {
    println!(
        "sent {} deliveries ({}) in {:.2} s: {:.0} deliveries/s",
        r.deliveries,
        kinds(&r.by_kind),
        r.elapsed.as_secs_f64(),
        r.throughput()
    );
    println!(
        "answers: 2xx {} (stored {}, duplicate {}), 4xx {}, 5xx {}, other {}, network errors {}; retries {}, gave up {}",
        r.status_2xx,
        r.stored,
        r.duplicate,
        r.status_4xx,
        r.status_5xx,
        r.status_other,
        r.network_errors,
        r.retries,
        r.gave_up
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        r.latency_ms(0.50),
        r.latency_ms(0.90),
        r.latency_ms(0.99),
        r.latency_ms(1.0)
    );
    if r.unexpected > 0 {
        println!(
            "UNEXPECTED answers: {} (genuine deliveries refused or forged ones accepted), e.g.:",
            r.unexpected
        );
        for e in &r.unexpected_examples {
            println!("  {e}");
        }
    } else {
        println!("every genuine delivery was accepted and every forged one refused");
    }
}

fn print_expected(expected: &Expected) {
    let courses = expected_courses(expected, Utc::now());
    let completed: i64 = courses.iter().map(|c| c.completed).sum();
    println!(
        "expected final state (source `{}`): {} events, {} enrollments, {} completed, in {} courses",
        expected.source,
        expected.events,
        expected.enrollments.len(),
        completed,
        courses.len()
    );
    println!(
        "  {:>9}  {:>11}  {:>7}  {:>6}  {:>9}  {:>7}",
        "course_id", "enrollments", "active", "trial", "completed", "expired"
    );
    const SHOWN: usize = 30;
    for c in courses.iter().take(SHOWN) {
        println!(
            "  {:>9}  {:>11}  {:>7}  {:>6}  {:>9}  {:>7}",
            c.course_id, c.enrollments, c.active, c.trial, c.completed, c.expired
        );
    }
    if courses.len() > SHOWN {
        println!("  … and {} more courses", courses.len() - SHOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 days").is_err());
    }
}
