//! How SQLite stores our types: timestamps as fixed-width text, JSON as
//! text ([`Dialect`], [`Cols`]); the row mappers themselves are shared
//! (`crate::store::rows`, re-exported here).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::sqlite::{SqliteConnection, SqliteQueryResult, SqliteRow};
use sqlx::{Executor, QueryBuilder, Row, Sqlite};

use crate::store::dialect::plain_cols;
pub(super) use crate::store::dialect::{Cols, Dialect};
pub(super) use crate::store::rows::*;
use crate::store::{Result, StoreError, encode_cursor};

/// Timestamps are stored as fixed-width RFC 3339 text in UTC, so text order is time order.
pub(super) fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| fmt_ts(&t))
}

pub(super) fn fmt_ts(t: &DateTime<Utc>) -> String {
    // `%Y-%m-%dT%H:%M:%S%.6fZ` through chrono's RFC 3339 writer, which skips
    // parsing a format string on every call (3 % of the batch writer's time).
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(super) fn parse_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>> {
    s.map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| StoreError::Corrupt(format!("bad timestamp `{s}` in database")))
    })
    .transpose()
}

pub(super) fn req_ts(s: String) -> Result<DateTime<Utc>> {
    parse_ts(Some(s)).map(|t| t.expect("Some in, Some out"))
}

pub(super) const EVENT_COLUMNS: &str = "seq, source, event_id, topic, created_at, received_at, enrollment_id, body, body_zstd, body_dict, pruned_at, id_taken";

/// The columns an enrollment row is written with, in bind order.
pub(super) const ENROLLMENT_WRITE_COLUMNS: &str = enrollment_write_columns!();

/// Turns an insert of [`ENROLLMENT_WRITE_COLUMNS`] into an upsert.
pub(super) const ENROLLMENT_UPSERT_ON_CONFLICT: &str = enrollment_upsert_on_conflict!();

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

impl Dialect for Sqlite {
    type Time = String;
    type OptTime = Option<String>;
    type Json = String;
    type OptJson = Option<String>;
    fn time(t: DateTime<Utc>) -> String {
        fmt_ts(&t)
    }
    fn opt_time(t: Option<DateTime<Utc>>) -> Option<String> {
        ts(t)
    }
    fn json<T: serde::Serialize>(v: &T) -> String {
        to_json(v)
    }
    fn opt_json<T: serde::Serialize>(v: Option<&T>) -> Option<String> {
        v.map(to_json)
    }
    const SKIP_LOCKED: &'static str = "";
    const EVENT_IDS: &'static str = "events";
    const PRUNABLE_EVENTS: &'static str = "events";
    fn indexed_by(index: &str) -> String {
        format!(" INDEXED BY {index}")
    }
    fn push_now(q: &mut QueryBuilder<Sqlite>) {
        q.push_bind(fmt_ts(&Utc::now()));
    }
    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
    fn on(conn: &mut SqliteConnection) -> impl Executor<'_, Database = Sqlite> {
        conn
    }
}

impl Cols for SqliteRow {
    plain_cols!();
    fn int4(&self, col: &str) -> Result<i64> {
        self.int(col)
    }
    fn opt_int4(&self, col: &str) -> Result<Option<i64>> {
        self.opt_int(col)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        req_ts(self.try_get(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        parse_ts(self.try_get(col)?)
    }
    fn json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<T> {
        let text: String = self.try_get(col)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<Option<T>> {
        let text: Option<String> = self.try_get(col)?;
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    }
    fn event_position(&self, seq: i64) -> Result<String> {
        Ok(encode_cursor(&[&seq.to_string()]))
    }
}

/// A rusqlite error as the store reports it (the log writer's and the
/// projector's threads both use rusqlite): the database is unavailable.
pub(super) fn write_error(e: rusqlite::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_keep_their_fixed_width_format() {
        for (secs, nanos) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (253_402_300_799, 999_999_999),
        ] {
            let t = Utc.timestamp_opt(secs, nanos).unwrap();
            assert_eq!(fmt_ts(&t), t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
    }
}
