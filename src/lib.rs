//! enrollhook: receive, verify, keep, understand and forward Thinkific webhooks.
//!
//! The layout follows the path of a delivery (see DESIGN.md):
//! [`thinkific`] (the wire contract) → [`receive`] (verify and parse) →
//! [`ingest`] (group commit) → [`store`] (event log + [`projection`]) →
//! [`server`] / [`cli`] (thin shells that only translate).

pub mod backfill;
pub mod cli;
pub mod client;
pub mod config;
pub mod copy;
pub mod forward;
pub mod import;
pub mod ingest;
pub mod metrics;
pub mod projection;
pub mod receive;
pub mod registration;
pub mod retention;
pub mod server;
pub mod simulate;
pub mod store;
pub mod thinkific;
pub mod views;
