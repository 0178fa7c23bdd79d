//! The learning projection on the projector's rusqlite connection: the same
//! tables, columns, values and row mappers as `store::shared::learning`
//! (which `rebuild` and PostgreSQL use through sqlx), bound and read the
//! rusqlite way, one prepared statement per row as the enrollments are.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::de::DeserializeOwned;

use super::codec::{fmt_ts, parse_ts, write_error};
use crate::projection::learning::{EnrolledCounts, Learning, Needs, StallDeltas};
use crate::store::dialect::Cols;
use crate::store::shared::learning::{
    COMPLETIONS, COURSE_LESSONS, LEARNERS, QUIZZES, Table, Val, changed_rows, completion_from_row,
    course_lesson_from_row, learner_from_row, quiz_from_row,
};
use crate::store::{Result, StoreError};

/// A rusqlite row read by column name, as the shared mappers read rows.
struct Row<'a, 'b>(&'a rusqlite::Row<'b>);

fn read<T: rusqlite::types::FromSql>(row: &Row, col: &str) -> Result<T> {
    row.0.get(col).map_err(write_error)
}

impl Cols for Row<'_, '_> {
    fn text(&self, col: &str) -> Result<String> {
        read(self, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        read(self, col)
    }
    fn int(&self, col: &str) -> Result<i64> {
        read(self, col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        read(self, col)
    }
    fn int4(&self, col: &str) -> Result<i64> {
        read(self, col)
    }
    fn opt_int4(&self, col: &str) -> Result<Option<i64>> {
        read(self, col)
    }
    fn float(&self, col: &str) -> Result<f64> {
        read(self, col)
    }
    fn opt_float(&self, col: &str) -> Result<Option<f64>> {
        read(self, col)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        read(self, col)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        read(self, col)
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        read(self, col)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        self.opt_time(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        parse_ts(read(self, col)?)
    }
    fn json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<T> {
        serde_json::from_str(&self.text(col)?)
            .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<Option<T>> {
        self.opt_text(col)?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    }
    fn event_position(&self, seq: i64) -> Result<String> {
        Ok(seq.to_string())
    }
}

fn value(v: Val) -> Value {
    match v {
        Val::Int(i) => i.map_or(Value::Null, Value::Integer),
        Val::Text(t) => t.map_or(Value::Null, Value::Text),
        Val::Float(f) => f.map_or(Value::Null, Value::Real),
        Val::Time(t) => t.map_or(Value::Null, |t| Value::Text(fmt_ts(&t))),
        Val::Flag(b) => Value::Integer(b.into()),
    }
}

fn select_one<T>(
    conn: &Connection,
    table: &Table,
    key: Vec<Val>,
    map: impl Fn(&Row) -> Result<T>,
) -> Result<Option<T>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        table.columns(),
        table.name,
        table.cols[..table.keys]
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ")
    );
    let mut select = conn.prepare_cached(&sql).map_err(write_error)?;
    let row = select
        .query_row(params_from_iter(key.into_iter().map(value)), |r| {
            Ok(map(&Row(r)))
        })
        .optional()
        .map_err(write_error)?;
    row.transpose()
}

fn text(s: &str) -> Val {
    Val::Text(Some(s.to_owned()))
}

/// The rows `needs` names, as stored.
pub(super) fn load(conn: &Connection, needs: &Needs) -> Result<Learning> {
    let mut l = Learning::default();
    for k in &needs.completions {
        let key = vec![
            text(&k.0),
            Val::Int(Some(k.1)),
            Val::Int(Some(k.2)),
            Val::Int(Some(k.3)),
        ];
        if let Some(row) = select_one(conn, &COMPLETIONS, key, |r| completion_from_row(r))? {
            l.completions.insert(k.clone(), row);
        }
    }
    let key3 = |k: &(String, i64, i64)| vec![text(&k.0), Val::Int(Some(k.1)), Val::Int(Some(k.2))];
    for k in &needs.lessons {
        if let Some(row) = select_one(conn, &COURSE_LESSONS, key3(k), |r| {
            course_lesson_from_row(r)
        })? {
            l.lessons.insert(k.clone(), row);
        }
    }
    for k in &needs.learners {
        if let Some(row) = select_one(conn, &LEARNERS, key3(k), |r| learner_from_row(r))? {
            l.learners.insert(k.clone(), row);
        }
    }
    for k in &needs.quizzes {
        if let Some(row) = select_one(conn, &QUIZZES, key3(k), |r| quiz_from_row(r))? {
            l.quizzes.insert(k.clone(), row);
        }
    }
    Ok(l)
}

fn upsert(conn: &Connection, table: &Table, rows: impl Iterator<Item = Vec<Val>>) -> Result<()> {
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}){}",
        table.name,
        table.columns(),
        (1..=table.cols.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", "),
        table.on_conflict()
    );
    let mut insert = conn.prepare_cached(&sql).map_err(write_error)?;
    for row in rows {
        insert
            .execute(params_from_iter(row.into_iter().map(value)))
            .map_err(write_error)?;
    }
    Ok(())
}

/// Writes the rows `learning` changed.
pub(super) fn write(conn: &Connection, learning: &Learning) -> Result<()> {
    for (table, rows) in changed_rows(learning) {
        upsert(conn, table, rows.into_iter())?;
    }
    Ok(())
}

/// Moves learners between `stall_buckets` (see [`Learning::stall_deltas`]).
pub(super) fn write_stall_deltas(conn: &Connection, deltas: &StallDeltas) -> Result<()> {
    let mut add = conn
        .prepare_cached(
            "INSERT INTO stall_buckets (source, course_id, last_lesson_id, activity_day, learners)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (source, course_id, last_lesson_id, activity_day)
             DO UPDATE SET learners = stall_buckets.learners + excluded.learners",
        )
        .map_err(write_error)?;
    for ((source, course_id, lesson_id, day), n) in deltas {
        add.execute(rusqlite::params![source, course_id, lesson_id, day, n])
            .map_err(write_error)?;
    }
    Ok(())
}

/// Adds the learners given their first enrollment to `course_learners`.
pub(super) fn write_enrolled(conn: &Connection, enrolled: &EnrolledCounts) -> Result<()> {
    let mut add = conn
        .prepare_cached(
            "INSERT INTO course_learners (source, course_id, enrolled) VALUES (?1, ?2, ?3)
             ON CONFLICT (source, course_id) DO UPDATE SET enrolled = enrolled + excluded.enrolled",
        )
        .map_err(write_error)?;
    for ((source, course_id), n) in enrolled {
        add.execute(rusqlite::params![source, course_id, n])
            .map_err(write_error)?;
    }
    Ok(())
}

/// Indexes events by the student they name.
pub(super) fn index_users(
    conn: &Connection,
    rows: impl Iterator<Item = (i64, String, i64)>,
) -> Result<()> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO event_users (source, user_id, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )
        .map_err(write_error)?;
    for (seq, source, user) in rows {
        insert
            .execute(rusqlite::params![source, user, seq])
            .map_err(write_error)?;
    }
    Ok(())
}
