//! The receiving half of the data path, after the wire contract ([`crate::thinkific`])
//! and before the store: decide about one delivery ([`receive`]: source → signature →
//! parse, HTTP-free), commit it with others ([`group_commit`]: one writer, one
//! transaction per batch, answer after commit), and re-admit a rejected one
//! ([`quarantine`]: the retry shared by the API and the CLI).

pub mod group_commit;
pub mod quarantine;
pub mod receive;

pub use group_commit::{IngestError, Ingestor};
