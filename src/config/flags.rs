//! The flag and environment layers: every setting a flag can give, with its
//! `ENROLLHOOK_*` variable (clap reads both; a flag wins over its variable).
//! The CLI flattens these structs into its commands; [`super::resolve`] merges
//! them with the file and the defaults.
//!
//! Variables that may hold a secret (a key, a token, a database password) use
//! `hide_env_values`, so `--help` never prints their current values.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ByteSize, DEFAULT_MAX_QUARANTINE, DEFAULT_SOURCE};
use crate::forward::RetrySchedule;
use crate::forward::policy::parse_duration;

/// Flags every command accepts.
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalFlags {
    /// Config file (default: ./enrollhook.toml when it exists).
    #[arg(long, global = true, env = "ENROLLHOOK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://enrollhook.db].
    #[arg(
        long,
        global = true,
        env = "ENROLLHOOK_DATABASE_URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// The school's Thinkific API key, which signs webhooks (for the default source).
    #[arg(long, global = true, env = "ENROLLHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

/// `serve`'s flags.
#[derive(Args, Debug, Clone)]
pub struct ServeFlags {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ENROLLHOOK_LISTEN")]
    pub listen: Option<String>,
    /// Bearer token for the query API (required when listening beyond loopback).
    #[arg(long, env = "ENROLLHOOK_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Largest accepted delivery body, e.g. 1MiB [default: 1MiB].
    #[arg(long, env = "ENROLLHOOK_MAX_BODY")]
    pub max_body: Option<ByteSize>,
    /// Accept deliveries without verifying signatures. Local experiments only.
    #[arg(long)]
    pub insecure_skip_verification: bool,
    /// Do not create or upgrade the schema on start.
    #[arg(long)]
    pub no_migrate: bool,
    /// Most events stored per group-commit transaction.
    #[arg(long, default_value_t = 512, hide = true)]
    pub max_batch: usize,
    /// Delays between forwarding retries, e.g. 1s,2s,5s
    /// [default: 5s,5m,30m,2h,5h,10h,14h,20h,24h].
    #[arg(long, env = "ENROLLHOOK_RETRY_SCHEDULE")]
    pub retry_schedule: Option<RetrySchedule>,
    /// Allow forwarding to private, loopback and link-local addresses.
    #[arg(long)]
    pub allow_private_destinations: bool,
    /// Timeout of one forwarding attempt.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub forward_timeout: Duration,
    /// Forwarding deliveries in flight at once (per instance).
    #[arg(long, default_value_t = 1024)]
    pub forward_concurrency: usize,
    /// Deliveries of one subscription in flight at once (per instance; a
    /// broker subscription takes twice as many), so that a destination that
    /// hangs or one subscription's backlog leaves room for the others.
    #[arg(long, default_value_t = 256)]
    pub forward_concurrency_per_subscription: usize,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "ENROLLHOOK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ENROLLHOOK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How long a client may take to send request headers, and a body.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Most deliveries per second per source; more get 429 with Retry-After [default: unlimited].
    #[arg(long, env = "ENROLLHOOK_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Most deliveries per second overall [default: unlimited].
    #[arg(long, env = "ENROLLHOOK_GLOBAL_RATE_LIMIT")]
    pub global_rate_limit: Option<u32>,
    /// Rejected deliveries kept in the quarantine (the oldest beyond are deleted).
    #[arg(long, env = "ENROLLHOOK_MAX_QUARANTINE", default_value_t = DEFAULT_MAX_QUARANTINE)]
    pub max_quarantine: u64,
    /// Body bytes kept in the quarantine, e.g. 256MiB (the oldest beyond are
    /// deleted; a body over 64 KiB is kept as its first 64 KiB) [default: 256MiB].
    #[arg(long, env = "ENROLLHOOK_MAX_QUARANTINE_BYTES")]
    pub max_quarantine_bytes: Option<ByteSize>,
    /// Rejected deliveries written to the quarantine per second per source (five
    /// times this in total); beyond it they are answered and only counted.
    #[arg(long, env = "ENROLLHOOK_MAX_QUARANTINE_RATE", default_value_t = crate::server::limits::DEFAULT_QUARANTINE_RATE)]
    pub max_quarantine_rate: u32,
    /// Drop the raw bodies of events received longer ago than this, e.g. 90d,
    /// checked hourly (event ids, enrollment events and the projection are
    /// kept; see the README) [default: keep everything].
    #[arg(long, env = "ENROLLHOOK_RETAIN_EVENTS", value_parser = parse_duration)]
    pub retain_events: Option<Duration>,
    /// Reconcile with Thinkific's REST API this often, e.g. 24h: the backfill
    /// for every source with API credentials, resuming where the last run
    /// ended, each run's report kept (`GET /api/reconciliations`) [default:
    /// never; `reconcile_every` in enrollhook.toml].
    #[arg(long, env = "ENROLLHOOK_RECONCILE_EVERY", value_parser = parse_duration)]
    pub reconcile_every: Option<Duration>,
    /// This server's public base URL, e.g. https://hooks.example.com: a
    /// reconciliation also checks that Thinkific's webhooks deliver to
    /// `…/webhooks/thinkific/SOURCE` [default: `public_url` in enrollhook.toml].
    #[arg(long, env = "ENROLLHOOK_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where Thinkific's API is, for the reconciliation (tests, staging).
    #[arg(
        long,
        hide = true,
        env = "ENROLLHOOK_THINKIFIC_API_BASE",
        default_value = crate::thinkific::rest::DEFAULT_API_BASE
    )]
    pub thinkific_api_base: String,
    /// Disable a subscription whose deliveries have all failed for this long.
    #[arg(long, default_value = "5d", value_parser = parse_duration)]
    pub disable_failing_after: Duration,
    /// Group-commit writer tasks [default: 1 on SQLite, 2 on PostgreSQL].
    #[arg(long, env = "ENROLLHOOK_WRITERS", hide = true)]
    pub writers: Option<usize>,
    /// Without --api-token, also answer the API and dashboard for these Host
    /// names (comma-separated; localhost, loopback and the listen address always).
    #[arg(long, env = "ENROLLHOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Most client connections served at once; more wait in the kernel's backlog.
    #[arg(long, env = "ENROLLHOOK_MAX_CONNECTIONS", default_value_t = super::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most live dashboard streams (/api/stream) open at once; more are
    /// refused with 503 (each holds a connection; keep it below --max-connections).
    #[arg(long, env = "ENROLLHOOK_MAX_STREAMS", default_value_t = super::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Export traces (one per delivery, a span per forward attempt) over
    /// OTLP/HTTP to this collector, e.g. http://localhost:4318 [default: off,
    /// unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set].
    #[arg(long, env = "ENROLLHOOK_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of deliveries traced, e.g. 0.01; a forward attempt follows
    /// its delivery [default: OTEL_TRACES_SAMPLER/_ARG, else 1].
    #[arg(long, env = "ENROLLHOOK_OTLP_SAMPLE", value_parser = crate::telemetry::parse_ratio)]
    pub otlp_sample: Option<f64>,
}

/// `thinkific …`'s flags: whose REST API, with which credentials.
#[derive(Args, Debug, Clone)]
pub struct ThinkificFlags {
    /// The school's Thinkific subdomain (`acme` for acme.thinkific.com)
    /// [default: the source's `subdomain` in enrollhook.toml].
    #[arg(long, global = true, env = "ENROLLHOOK_THINKIFIC_SUBDOMAIN")]
    pub subdomain: Option<String>,
    /// The school's Thinkific API key [default: the source's secret, which is that key].
    #[arg(
        long,
        global = true,
        env = "ENROLLHOOK_THINKIFIC_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// A Thinkific "API Access Token" (Settings → Code & analytics → API Access
    /// Tokens) or an OAuth access token, sent as `Authorization: Bearer`
    /// [default: the source's `access_token` in enrollhook.toml].
    #[arg(
        long,
        global = true,
        env = "ENROLLHOOK_THINKIFIC_ACCESS_TOKEN",
        hide_env_values = true
    )]
    pub access_token: Option<String>,
    /// Where Thinkific's API is: the one way to point every command that calls
    /// Thinkific at a stand-in (tests, staging, proxies).
    #[arg(
        long,
        global = true,
        hide = true,
        env = "ENROLLHOOK_THINKIFIC_API_BASE",
        default_value = crate::thinkific::rest::DEFAULT_API_BASE
    )]
    pub api_base: String,
    /// The enrollhook source (school) whose credentials are used; the backfill
    /// files its events under it.
    #[arg(long, global = true, default_value = DEFAULT_SOURCE)]
    pub source: crate::ids::SourceName,
}
