//! Sending the traffic: a generator thread paces deliveries (`--rate`), a pool
//! of `--concurrency` workers POSTs them, retrying 5xx and network errors like
//! Thinkific does, and every answer is tallied for the final report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::traffic::{Delivery, Expected, Kind, Traffic};

#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The receiver's webhook URL.
    pub url: String,
    pub concurrency: usize,
    /// Deliveries per second at most (None: as fast as the receiver answers).
    pub rate: Option<f64>,
    /// Stop generating new events after this long (held-back deliveries still go out).
    pub duration: Option<Duration>,
    /// Retries of a delivery answered 5xx or lost to a network error.
    pub retries: u32,
    /// Print progress to stderr.
    pub progress: bool,
    pub timeout: Duration,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            url: "http://127.0.0.1:8080/webhooks/thinkific".into(),
            concurrency: 16,
            rate: None,
            duration: None,
            retries: 5,
            progress: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// The pacing's resolution: at `--rate` above 1,000/s deliveries go out in
/// bursts of what is due each millisecond.
const PACING_TICK: Duration = Duration::from_millis(1);

/// What happened on the wire.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    pub deliveries: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub status_other: u64,
    pub network_errors: u64,
    pub retries: u64,
    /// Deliveries still failing after every retry.
    pub gave_up: u64,
    /// From enrollhook's answer body (`status`), when the receiver says it.
    pub stored: u64,
    pub duplicate: u64,
    /// Genuine deliveries refused and forged ones accepted (with examples).
    pub unexpected: u64,
    pub unexpected_examples: Vec<String>,
    pub elapsed: Duration,
    /// Every request's latency, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl SendReport {
    pub fn throughput(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0–1) in milliseconds (nearest rank).
    pub fn latency_ms(&self, q: f64) -> f64 {
        let v = &self.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        f64::from(v[rank - 1]) / 1000.0
    }

    fn merge(&mut self, w: WorkerTally) {
        self.deliveries += w.deliveries;
        for (k, n) in w.by_kind {
            *self.by_kind.entry(k).or_default() += n;
        }
        self.status_2xx += w.status_2xx;
        self.status_4xx += w.status_4xx;
        self.status_5xx += w.status_5xx;
        self.status_other += w.status_other;
        self.network_errors += w.network_errors;
        self.retries += w.retries;
        self.gave_up += w.gave_up;
        self.stored += w.stored;
        self.duplicate += w.duplicate;
        self.unexpected += w.unexpected;
        let room = 20usize.saturating_sub(self.unexpected_examples.len());
        self.unexpected_examples
            .extend(w.unexpected_examples.into_iter().take(room));
        self.latencies_us.extend(w.latencies_us);
    }
}

#[derive(Default)]
struct WorkerTally {
    deliveries: u64,
    by_kind: BTreeMap<&'static str, u64>,
    status_2xx: u64,
    status_4xx: u64,
    status_5xx: u64,
    status_other: u64,
    network_errors: u64,
    retries: u64,
    gave_up: u64,
    stored: u64,
    duplicate: u64,
    unexpected: u64,
    unexpected_examples: Vec<String>,
    latencies_us: Vec<u32>,
}

fn kind_name(k: Option<Kind>) -> &'static str {
    match k {
        Some(Kind::Original) | None => "original",
        Some(Kind::Late) => "late",
        Some(Kind::Duplicate) => "duplicate",
        Some(Kind::Forged) => "forged",
    }
}

/// Sends all of `traffic` and returns the report and the expected state.
pub async fn send(traffic: Traffic, opts: &SendOptions) -> anyhow::Result<(SendReport, Expected)> {
    anyhow::ensure!(opts.concurrency >= 1, "--concurrency must be at least 1");
    if let Some(rate) = opts.rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number of deliveries per second"
        );
    }
    let client = crate::client::http_client(opts.timeout)?;
    // Many workers take from one queue: an MPMC channel wakes one worker per
    // delivery (a shared mpsc receiver behind a lock woke two).
    let (tx, rx) = flume::bounded::<Delivery>(opts.concurrency * 4);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));

    // Generating and signing is CPU work: keep it off the async workers.
    let (rate, duration) = (opts.rate, opts.duration);
    let producer = tokio::task::spawn_blocking(move || {
        let mut traffic = traffic;
        let mut n: u64 = 0;
        let mut stopping = false;
        while let Some(d) = traffic.next() {
            if !stopping && duration.is_some_and(|limit| started.elapsed() >= limit) {
                traffic.stop_generating();
                stopping = true;
            }
            if let Some(rate) = rate {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                let now = Instant::now();
                if due > now {
                    // Ahead of time: sleep at least a tick, then send all that
                    // is due at once (a sleep per delivery cost the load
                    // generator a context switch each, CPU the receiver lacks).
                    std::thread::sleep((due - now).max(PACING_TICK));
                }
            }
            if tx.send(d).is_err() {
                break;
            }
            n += 1;
        }
        traffic.into_expected()
    });

    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency {
        let (rx, client, url, sent) = (rx.clone(), client.clone(), opts.url.clone(), sent.clone());
        let retries = opts.retries;
        workers.spawn(async move {
            let mut tally = WorkerTally::default();
            loop {
                let Ok(d) = rx.recv_async().await else { break };
                deliver(&client, &url, &d, retries, &mut tally).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            tally
        });
    }

    let ticker = opts.progress.then(|| {
        let sent = sent.clone();
        tokio::spawn(async move {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let every = Duration::from_millis(if tty { 250 } else { 2000 });
            loop {
                tokio::time::sleep(every).await;
                let n = sent.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let line = format!(
                    "sent {n} deliveries in {secs:.1} s ({:.0}/s)",
                    n as f64 / secs.max(1e-9)
                );
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        })
    });

    let mut report = SendReport::default();
    while let Some(tally) = workers.join_next().await {
        report.merge(tally?);
    }
    report.elapsed = started.elapsed();
    if let Some(t) = ticker {
        t.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
    }
    let expected = producer.await?;
    report.latencies_us.sort_unstable();
    Ok((report, expected))
}

/// The one field of a delivery's answer the tally needs (parsed without
/// building the whole document: the load generator shares the machine).
#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    status: Option<std::borrow::Cow<'a, str>>,
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    d: &Delivery,
    retries: u32,
    tally: &mut WorkerTally,
) {
    tally.deliveries += 1;
    *tally.by_kind.entry(kind_name(d.kind)).or_default() += 1;
    let mut attempt = 0;
    loop {
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .body(d.body.clone());
        for (k, v) in &d.headers {
            request = request.header(k, v);
        }
        let started = Instant::now();
        let result = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        tally
            .latencies_us
            .push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        let retryable = match &result {
            Ok((status, body)) => {
                match status {
                    200..=299 => tally.status_2xx += 1,
                    400..=499 => tally.status_4xx += 1,
                    500..=599 => tally.status_5xx += 1,
                    _ => tally.status_other += 1,
                }
                if (200..300).contains(status) {
                    match serde_json::from_str::<Answer>(body)
                        .ok()
                        .and_then(|a| a.status)
                        .as_deref()
                    {
                        Some("stored") => tally.stored += 1,
                        Some("duplicate") => tally.duplicate += 1,
                        _ => {}
                    }
                }
                *status >= 500
            }
            Err(_) => {
                tally.network_errors += 1;
                true
            }
        };
        if retryable && attempt < retries {
            attempt += 1;
            tally.retries += 1;
            tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            continue;
        }
        if retryable {
            tally.gave_up += 1;
        }
        let accepted = matches!(&result, Ok((s, _)) if (200..300).contains(s));
        let kind = d.kind.unwrap_or(Kind::Original);
        if accepted != kind.should_be_accepted() {
            tally.unexpected += 1;
            if tally.unexpected_examples.len() < 20 {
                let answer = match &result {
                    Ok((s, b)) => format!("{s} {}", b.chars().take(200).collect::<String>()),
                    Err(e) => format!("network error: {e}"),
                };
                let id = serde_json::from_str::<serde_json::Value>(&d.body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                tally.unexpected_examples.push(format!(
                    "{} delivery of event {id} was answered {answer}",
                    kind_name(d.kind)
                ));
            }
        }
        return;
    }
}
