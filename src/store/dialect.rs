//! What differs between the two backends in binding and reading our types,
//! said once per backend, so that queries and row mappers can be written once
//! for both (`sql`, `rows`, `shared`): SQLite keeps timestamps as fixed-width
//! text and JSON as text, PostgreSQL as `timestamptz` and `jsonb`; PostgreSQL
//! has 32-bit counters where SQLite has one integer type.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{Database, Encode, Executor, IntoArguments, QueryBuilder, Type};

use super::Result;

/// A value that binds to a query of `DB` (shorthand for sqlx's two bounds).
pub(crate) trait Binds<DB: Database>: for<'t> Encode<'t, DB> + Type<DB> + Send {}
impl<DB: Database, T: for<'t> Encode<'t, DB> + Type<DB> + Send> Binds<DB> for T {}

/// A database as our queries use it (implemented in each backend's codec).
/// Generic functions over it still name the plain types they bind
/// (`i64: Binds<DB>`, …): Rust implies bounds on `Self` and its associated
/// types, not on other types.
pub(crate) trait Dialect: Database<Arguments: IntoArguments<Self>, Row: Cols> {
    /// A timestamp as bound, and an optional one (sqlx implements `Option`
    /// per database, so a generic function could not bind `Option<Time>`).
    type Time: Binds<Self>;
    type OptTime: Binds<Self>;
    /// A JSON value as bound, and an optional one.
    type Json: Binds<Self>;
    type OptJson: Binds<Self>;
    fn time(t: DateTime<Utc>) -> Self::Time;
    fn opt_time(t: Option<DateTime<Utc>>) -> Self::OptTime;
    fn json<T: Serialize>(v: &T) -> Self::Json;
    fn opt_json<T: Serialize>(v: Option<&T>) -> Self::OptJson;
    /// Appended to a subquery that picks rows to change, so that rows another
    /// writer is changing are skipped rather than waited for (PostgreSQL's
    /// instances prune at once; SQLite has one writer).
    const SKIP_LOCKED: &'static str;
    /// The table that holds every stored event's identity (source, event
    /// id, topic, seq) under a unique key: SQLite's `events` itself;
    /// PostgreSQL's `event_ids`, because its partitioned log cannot carry a
    /// unique key without the partition key (migration 23).
    const EVENT_IDS: &'static str;
    /// The events retention may prune (see `shared::retention::prune`):
    /// SQLite's whole log, found through a partial index; PostgreSQL's
    /// `events_prunable` partitions, which hold nothing else.
    const PRUNABLE_EVENTS: &'static str;
    /// Names the index a table is read through, after `FROM table AS alias`
    /// (SQLite: `INDEXED BY`, where its planner, without statistics, would
    /// take the primary key; PostgreSQL plans from its statistics: nothing).
    fn indexed_by(index: &str) -> String;
    /// The current time as a statement writes it (PostgreSQL: the
    /// transaction's `now()`; SQLite: bound from this process's clock).
    fn push_now(q: &mut QueryBuilder<Self>);
    /// Rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// `conn` as an executor of one statement (reborrowed, so a function can
    /// run several on one connection or transaction).
    fn on(conn: &mut Self::Connection) -> impl Executor<'_, Database = Self>;
}

/// How a backend reads each kind of column, by name.
pub(crate) trait Cols {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    /// A counter or status column: `integer` (32 bits) on PostgreSQL.
    fn int4(&self, col: &str) -> Result<i64>;
    fn opt_int4(&self, col: &str) -> Result<Option<i64>>;
    fn float(&self, col: &str) -> Result<f64>;
    fn opt_float(&self, col: &str) -> Result<Option<f64>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    /// A JSON column; `what` names it in the error when it cannot be read.
    fn json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<T>;
    fn opt_json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<Option<T>>;
    /// An event row's position in the feed (the cursor after it).
    fn event_position(&self, seq: i64) -> Result<String>;
}

/// The [`Cols`] getters that are a plain `try_get` on both backends (a macro:
/// the two row types share no trait that would let one generic impl hold them
/// without a bound per decoded type).
macro_rules! plain_cols {
    () => {
        fn text(&self, col: &str) -> Result<String> {
            Ok(self.try_get(col)?)
        }
        fn opt_text(&self, col: &str) -> Result<Option<String>> {
            Ok(self.try_get(col)?)
        }
        fn int(&self, col: &str) -> Result<i64> {
            Ok(self.try_get(col)?)
        }
        fn opt_int(&self, col: &str) -> Result<Option<i64>> {
            Ok(self.try_get(col)?)
        }
        fn float(&self, col: &str) -> Result<f64> {
            Ok(self.try_get(col)?)
        }
        fn opt_float(&self, col: &str) -> Result<Option<f64>> {
            Ok(self.try_get(col)?)
        }
        fn flag(&self, col: &str) -> Result<bool> {
            Ok(self.try_get(col)?)
        }
        fn bytes(&self, col: &str) -> Result<Vec<u8>> {
            Ok(self.try_get(col)?)
        }
        fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
            Ok(self.try_get(col)?)
        }
    };
}
pub(crate) use plain_cols;
