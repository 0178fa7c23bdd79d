//! The Thinkific wire contract: what a delivery looks like and how it is
//! signed, and the REST API client (`rest`) for webhook registration and backfill.

pub mod envelope;
pub mod rest;
pub mod samples;
pub mod signature;

pub use envelope::{
    BACKFILL_TOPIC, EnrollmentPayload, EnrollmentTopic, Envelope, ParseError, Topic, parse,
};
pub use signature::{SIGNATURE_HEADER, SignatureError, sign, verify};

/// Optional headers Thinkific adds; used when present, never required.
pub const TOPIC_HEADER: &str = "x-thinkific-topic";
pub const SUBDOMAIN_HEADER: &str = "x-thinkific-subdomain";
