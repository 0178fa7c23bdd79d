//! How PostgreSQL stores our types: `timestamptz` truncated to microseconds,
//! `jsonb`, 32-bit counters ([`Dialect`], [`Cols`]); the row mappers
//! themselves are shared (`crate::store::rows`, re-exported here).

use chrono::{DateTime, SubsecRound, Utc};
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgConnection, PgQueryResult, PgRow};
use sqlx::types::Json;
use sqlx::{Executor, Postgres, QueryBuilder, Row};

use crate::store::dialect::plain_cols;
pub(super) use crate::store::dialect::{Cols, Dialect};
pub(super) use crate::store::rows::*;
use crate::store::{Result, encode_cursor};

/// PostgreSQL keeps microseconds and rounds; we truncate, as the SQLite store does.
pub(super) fn us(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

pub(super) fn us_opt(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.map(us)
}

pub(super) const EVENT_COLUMNS: &str = "seq, source, event_id, topic, created_at, received_at, enrollment_id, body, body_zstd, body_dict, pruned_at, id_taken, \
     txid::text AS txid_text";

impl Dialect for Postgres {
    type Time = DateTime<Utc>;
    type OptTime = Option<DateTime<Utc>>;
    type Json = Json<serde_json::Value>;
    type OptJson = Option<Json<serde_json::Value>>;
    fn time(t: DateTime<Utc>) -> DateTime<Utc> {
        us(t)
    }
    fn opt_time(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        us_opt(t)
    }
    fn json<T: serde::Serialize>(v: &T) -> Self::Json {
        Json(serde_json::to_value(v).expect("plain data serializes"))
    }
    fn opt_json<T: serde::Serialize>(v: Option<&T>) -> Self::OptJson {
        v.map(Self::json)
    }
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const EVENT_IDS: &'static str = "event_ids";
    const PRUNABLE_EVENTS: &'static str = "events_prunable";
    fn indexed_by(_index: &str) -> String {
        String::new()
    }
    fn push_now(q: &mut QueryBuilder<Postgres>) {
        q.push("now()");
    }
    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }
    fn on(conn: &mut PgConnection) -> impl Executor<'_, Database = Postgres> {
        conn
    }
}

impl Cols for PgRow {
    plain_cols!();
    fn int4(&self, col: &str) -> Result<i64> {
        Ok(self.try_get::<i32, _>(col)?.into())
    }
    fn opt_int4(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get::<Option<i32>, _>(col)?.map(i64::from))
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        Ok(self.try_get(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.try_get(col)?)
    }
    fn json<T: DeserializeOwned>(&self, col: &str, _what: &str) -> Result<T> {
        Ok(self.try_get::<Json<T>, _>(col)?.0)
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str, _what: &str) -> Result<Option<T>> {
        Ok(self.try_get::<Option<Json<T>>, _>(col)?.map(|j| j.0))
    }
    /// Commit order, then seq (see migration 0004).
    fn event_position(&self, seq: i64) -> Result<String> {
        Ok(encode_cursor(&[&self.text("txid_text")?, &seq.to_string()]))
    }
}
