//! Every integration test, in one binary: one link step instead of one per
//! file (CI has two cores), and one process whose tests run in parallel
//! threads. So a test must not change process-wide state (environment
//! variables, the current directory, a global tracing subscriber): pass
//! settings explicitly, or to a child process with `Command::env`.
//!
//! Cases that must hold on both storage backends are written once and run by
//! `common::backend::on_both_backends!`; the store's own contract is in `store`.
//! Tests marked `#[ignore]` need root (`.ci/run` runs them with `--ignored`).

mod common;

mod alerts;
mod browser;
mod cli;
mod config;
mod course_stats;
mod crash;
mod dashboard;
mod event_identity;
mod faults;
mod forward;
mod hardening;
mod ingest;
mod learning;
mod live;
mod milestones;
mod openapi;
mod otlp;
mod postgres;
mod progress_reading;
mod properties;
mod security;
mod simulate;
mod store;
mod thinkific_rest;
mod unavailable;
