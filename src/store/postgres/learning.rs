//! The learning projection's statements in a batch, PostgreSQL's way: one
//! fixed statement per table, each column bound as one array (`unnest`),
//! whatever the number of rows.
//!
//! Why not the shared `VALUES (…), (…)` lists (`store::shared::learning`,
//! still used by `rebuild`): their text changes with the row count, so most
//! batches sent a statement the connection had not prepared (one more round
//! trip, a parse and a plan), and a key list `(a, b, c) IN ((…), (…))` plans as
//! an OR of ANDs. Those statements took 3.8 ms of a 9.5 ms batch at 64
//! connections (BENCHMARKS.md, "PostgreSQL: where a batch's time goes").

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgRow};

use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::Row as _;
use sqlx::types::Json;

use super::codec::{Cols, us_opt};
use crate::projection::learning::{Learning, Needs};
use crate::store::shared::learning::{
    COMPLETIONS, COURSE_LESSONS, LEARNERS, QUIZZES, Table, Val, completion_from_row,
    completion_values, course_lesson_from_row, course_lesson_values, learner_from_row,
    learner_values, quiz_from_row, quiz_values,
};
use crate::store::{Result, StoreError};

/// Rows turned into columns, each bound as one array.
enum Column {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Float(Vec<Option<f64>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Flag(Vec<bool>),
}

impl Column {
    fn array_type(&self) -> &'static str {
        match self {
            Column::Int(_) => "int8[]",
            Column::Text(_) => "text[]",
            Column::Float(_) => "float8[]",
            Column::Time(_) => "timestamptz[]",
            Column::Flag(_) => "bool[]",
        }
    }

    fn push(&mut self, v: Val) {
        match (self, v) {
            (Column::Int(c), Val::Int(v)) => c.push(v),
            (Column::Text(c), Val::Text(v)) => c.push(v),
            (Column::Float(c), Val::Float(v)) => c.push(v),
            (Column::Time(c), Val::Time(v)) => c.push(us_opt(v)),
            (Column::Flag(c), Val::Flag(v)) => c.push(v),
            (_, v) => unreachable!("a column's values are of one kind; got {v:?}"),
        }
    }
}

/// Transposes rows (each with the same kinds of values, column by column).
fn columns(rows: Vec<Vec<Val>>) -> Vec<Column> {
    let mut columns: Vec<Column> = match rows.first() {
        None => return Vec::new(),
        Some(first) => first
            .iter()
            .map(|v| match v {
                Val::Int(_) => Column::Int(Vec::with_capacity(rows.len())),
                Val::Text(_) => Column::Text(Vec::with_capacity(rows.len())),
                Val::Float(_) => Column::Float(Vec::with_capacity(rows.len())),
                Val::Time(_) => Column::Time(Vec::with_capacity(rows.len())),
                Val::Flag(_) => Column::Flag(Vec::with_capacity(rows.len())),
            })
            .collect(),
    };
    for row in rows {
        for (column, v) in columns.iter_mut().zip(row) {
            column.push(v);
        }
    }
    columns
}

/// `unnest($n::text[], $n+1::int8[], …)` from parameter `first` on: the same
/// text for the same table.
fn unnest(columns: &[Column], first: usize) -> String {
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", first + i, c.array_type()))
        .collect();
    format!("unnest({})", arrays.join(", "))
}

/// Runs `sql` with one array bound per column; returns the rows it gives.
async fn run(conn: &mut PgConnection, sql: String, columns: Vec<Column>) -> Result<Vec<PgRow>> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for c in columns {
        q = match c {
            Column::Int(v) => q.bind(v),
            Column::Text(v) => q.bind(v),
            Column::Float(v) => q.bind(v),
            Column::Time(v) => q.bind(v),
            Column::Flag(v) => q.bind(v),
        };
    }
    Ok(q.fetch_all(conn).await?)
}

/// Upserts the rows of several learning tables (each in key order) in one
/// statement: each table's insert is a data-modifying `WITH` of the last.
/// Only tables with rows take part, so there are few distinct texts.
async fn upsert(conn: &mut PgConnection, tables: Vec<(&Table, Vec<Vec<Val>>)>) -> Result<()> {
    let mut inserts = Vec::new();
    let mut bound = Vec::new();
    for (table, rows) in tables {
        if rows.is_empty() {
            continue;
        }
        let columns = columns(rows);
        inserts.push(format!(
            "INSERT INTO {} ({}) SELECT * FROM {} {}",
            table.name,
            table.columns(),
            unnest(&columns, bound.len() + 1),
            table.on_conflict()
        ));
        bound.extend(columns);
    }
    let Some(last) = inserts.pop() else {
        return Ok(());
    };
    let with: Vec<String> = inserts
        .iter()
        .enumerate()
        .map(|(i, insert)| format!("w{i} AS ({insert})"))
        .collect();
    let sql = if with.is_empty() {
        last
    } else {
        format!("WITH {} {last}", with.join(", "))
    };
    run(conn, sql, bound).await?;
    Ok(())
}

fn key3((source, a, b): &(String, i64, i64)) -> Vec<Val> {
    vec![
        Val::Text(Some(source.clone())),
        Val::Int(Some(*a)),
        Val::Int(Some(*b)),
    ]
}

/// The rows `needs` names, as stored (absent ones are new), in one statement:
/// each table's rows come back as one JSON array (`json_agg`), read by the
/// same row mappers as any row ([`JsonRow`]).
pub(super) async fn load(conn: &mut PgConnection, needs: &Needs) -> Result<Learning> {
    let completion_keys: Vec<Vec<Val>> = needs
        .completions
        .iter()
        .map(|(source, course, user, lesson)| {
            vec![
                Val::Text(Some(source.clone())),
                Val::Int(Some(*course)),
                Val::Int(Some(*user)),
                Val::Int(Some(*lesson)),
            ]
        })
        .collect();
    let reads = [
        (&COMPLETIONS, completion_keys),
        (&COURSE_LESSONS, needs.lessons.iter().map(key3).collect()),
        (&LEARNERS, needs.learners.iter().map(key3).collect()),
        (&QUIZZES, needs.quizzes.iter().map(key3).collect()),
    ];
    // Only the tables with keys take part, so there are few distinct texts.
    let mut selects = Vec::new();
    let mut asked = Vec::new();
    let mut bound = Vec::new();
    for (table, keys) in reads {
        if keys.is_empty() {
            continue;
        }
        asked.push(table.name);
        let columns = columns(keys);
        selects.push(format!(
            "(SELECT coalesce(json_agg(t), '[]') FROM (SELECT {} FROM {} WHERE ({}) IN
                 (SELECT * FROM {})) AS t) AS {}",
            table.columns(),
            table.name,
            table.cols[..table.keys].join(", "),
            unnest(&columns, bound.len() + 1),
            table.name
        ));
        bound.extend(columns);
    }
    let mut learning = Learning::default();
    if selects.is_empty() {
        return Ok(learning);
    }
    let rows = run(conn, format!("SELECT {}", selects.join(", ")), bound).await?;
    let row = rows.first().expect("a SELECT without FROM gives one row");
    let read = |table: &Table| -> Result<Vec<serde_json::Map<String, Value>>> {
        if !asked.contains(&table.name) {
            return Ok(Vec::new());
        }
        let rows: Json<Vec<serde_json::Map<String, Value>>> = row.try_get(table.name)?;
        Ok(rows.0)
    };
    for r in read(&COMPLETIONS)? {
        let c = completion_from_row(&JsonRow(&r))?;
        learning
            .completions
            .insert((c.source.clone(), c.course_id, c.user_id, c.lesson_id), c);
    }
    for r in read(&COURSE_LESSONS)? {
        let l = course_lesson_from_row(&JsonRow(&r))?;
        learning
            .lessons
            .insert((l.source.clone(), l.course_id, l.info.lesson_id), l);
    }
    for r in read(&LEARNERS)? {
        let l = learner_from_row(&JsonRow(&r))?;
        learning
            .learners
            .insert((l.source.clone(), l.course_id, l.user_id), l);
    }
    for r in read(&QUIZZES)? {
        let q = quiz_from_row(&JsonRow(&r))?;
        learning
            .quizzes
            .insert((q.source.clone(), q.quiz_id, q.user_id), q);
    }
    Ok(learning)
}

/// A row read as a JSON object (PostgreSQL's `json_agg` of a row: numbers,
/// strings, booleans, timestamps as ISO 8601 text with an offset).
struct JsonRow<'a>(&'a serde_json::Map<String, Value>);

impl JsonRow<'_> {
    fn get(&self, col: &str) -> Result<Option<&Value>> {
        match self.0.get(col) {
            None => Err(corrupt(col, "is missing")),
            Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(v)),
        }
    }

    fn required<T>(&self, col: &str, value: Result<Option<T>>) -> Result<T> {
        value?.ok_or_else(|| corrupt(col, "is null"))
    }
}

fn corrupt(col: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("a learning row's column `{col}` {what}"))
}

impl Cols for JsonRow<'_> {
    fn text(&self, col: &str) -> Result<String> {
        self.required(col, self.opt_text(col))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.get(col)?
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| corrupt(col, "is not text"))
            })
            .transpose()
    }
    fn int(&self, col: &str) -> Result<i64> {
        self.required(col, self.opt_int(col))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.get(col)?
            .map(|v| v.as_i64().ok_or_else(|| corrupt(col, "is not an integer")))
            .transpose()
    }
    fn int4(&self, col: &str) -> Result<i64> {
        self.int(col)
    }
    fn opt_int4(&self, col: &str) -> Result<Option<i64>> {
        self.opt_int(col)
    }
    fn float(&self, col: &str) -> Result<f64> {
        self.required(col, self.opt_float(col))
    }
    fn opt_float(&self, col: &str) -> Result<Option<f64>> {
        self.get(col)?
            .map(|v| v.as_f64().ok_or_else(|| corrupt(col, "is not a number")))
            .transpose()
    }
    fn flag(&self, col: &str) -> Result<bool> {
        self.get(col)?
            .and_then(Value::as_bool)
            .ok_or_else(|| corrupt(col, "is not a boolean"))
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        Err(corrupt(col, "is bytes, which learning rows do not have"))
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        self.bytes(col).map(Some)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        self.required(col, self.opt_time(col))
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.get(col)?
            .map(|v| {
                v.as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .ok_or_else(|| corrupt(col, "is not a timestamp"))
            })
            .transpose()
    }
    fn json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<T> {
        self.required(col, self.opt_json(col, what))
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str, what: &str) -> Result<Option<T>> {
        self.get(col)?
            .map(|v| {
                serde_json::from_value(v.clone())
                    .map_err(|e| corrupt(col, &format!("is not {what}: {e}")))
            })
            .transpose()
    }
    fn event_position(&self, _seq: i64) -> Result<String> {
        Err(corrupt("txid", "is not read from learning rows"))
    }
}

/// Writes the rows `learning` changed, in key order; like
/// `shared::learning::write`.
pub(super) async fn write(conn: &mut PgConnection, learning: &Learning) -> Result<()> {
    let c = &learning.changed;
    let completions = c
        .completions
        .iter()
        .filter_map(|k| learning.completions.get(k).map(completion_values))
        .collect();
    let lessons = c
        .lessons
        .iter()
        .filter_map(|k| learning.lessons.get(k).map(course_lesson_values))
        .collect();
    let learners = c
        .learners
        .iter()
        .filter_map(|k| learning.learners.get(k).map(learner_values))
        .collect();
    let quizzes = c
        .quizzes
        .iter()
        .filter_map(|k| learning.quizzes.get(k).map(quiz_values))
        .collect();
    upsert(
        conn,
        vec![
            (&COMPLETIONS, completions),
            (&COURSE_LESSONS, lessons),
            (&LEARNERS, learners),
            (&QUIZZES, quizzes),
        ],
    )
    .await
}
