//! enrollhook: receive, verify, keep, understand and forward Thinkific webhooks.
//!
//! Modules are listed in the order a delivery flows through them (see
//! ARCHITECTURE.md):
//!
//! 1. [`thinkific`]: the wire contract (envelope, signature) and the REST API;
//! 2. [`ingest`]: verify and parse one delivery, group-commit it, quarantine retry;
//! 3. [`store`]: the event log (truth), the quarantine and the forwarding outbox;
//! 4. [`projection`]: the pure rules that fold events into enrollments;
//! 5. [`views`]: how stored things are shown, to the API and the CLI alike;
//! 6. [`server`]: the HTTP shell (webhooks in, query API out, dashboard);
//! 7. [`forward`]: passing events on to subscriptions, with retries.
//!
//! Around the path: [`config`] (flags > environment > file > defaults, merged
//! once), [`ids`] (names checked once, when built), [`redact`] (what may be shown of a URL), [`client`] (the outgoing
//! HTTP client), [`alerts`] (enrollhook's own `enrollhook.*` events when forwarding or a source breaks), [`metrics`], [`log_budget`] (a log line per delivery in and out, within a budget), [`background`] (background threads yield the cores), [`telemetry`] (OpenTelemetry traces over OTLP, off unless configured), [`maintenance`] (import, copy, retention),
//! [`simulate`] (realistic Thinkific traffic), and [`cli`], which only parses,
//! calls one of the above and prints.

pub mod thinkific;

pub mod ingest;

pub mod store;

pub mod projection;

pub mod views;

pub mod server;

pub mod forward;

pub mod alerts;
pub mod background;
pub mod cli;
pub mod client;
pub mod config;
pub mod ids;
pub mod log_budget;
pub mod maintenance;
pub mod metrics;
pub mod redact;
pub mod simulate;
pub mod telemetry;
