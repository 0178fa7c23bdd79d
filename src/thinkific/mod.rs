//! The Thinkific wire contract: what a delivery looks like and how it is
//! signed, and the REST API client (`rest`) for webhook registration and backfill.

pub mod envelope;
pub mod rest;
pub mod samples;
pub mod signature;

pub use envelope::{
    BACKFILL_TOPIC, EnrollmentPayload, EnrollmentTopic, Envelope, ParseError, Topic, parse,
    parse_delivery,
};
pub use signature::{SIGNATURE_HEADER, SignatureError, sign, verify};

/// Optional headers Thinkific adds. Neither is signed: the topic header is only
/// compared with the signed body's topic (a mismatch is logged), never used.
pub const TOPIC_HEADER: &str = "x-thinkific-topic";
pub const SUBDOMAIN_HEADER: &str = "x-thinkific-subdomain";
