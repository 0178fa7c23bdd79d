//! Everything that speaks Thinkific: the wire contract of a delivery (what it
//! looks like and how it is signed), and the REST API ([`rest`]) with the two
//! commands built on it: registering our webhooks ([`registration`]) and loading
//! enrollments that predate them ([`backfill`]).

pub mod backfill;
pub mod envelope;
pub mod learning;
pub mod reconcile;
pub mod registration;
pub mod rest;
pub mod samples;
pub mod signature;

pub use envelope::{
    BACKFILL_TOPIC, EnrollmentPayload, EnrollmentTopic, Envelope, ParseError, PercentageReading,
    Topic, canonical_action, canonical_topic, parse, parse_delivery,
};
pub use signature::{SIGNATURE_HEADER, SignatureError, sign, verify};

/// Optional headers Thinkific adds. Neither is signed: the topic header is only
/// compared with the signed body's topic (a mismatch is logged), never used.
pub const TOPIC_HEADER: &str = "x-thinkific-topic";
pub const SUBDOMAIN_HEADER: &str = "x-thinkific-subdomain";
