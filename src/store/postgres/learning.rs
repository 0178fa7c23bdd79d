//! The learning projection's statements in a batch, PostgreSQL's way: fixed
//! statements (a read per table, one upsert for all the tables written), each
//! column bound as one array (`unnest`), whatever the number of rows.
//!
//! Why not the shared `VALUES (…), (…)` lists (`store::shared::learning`,
//! still used by `rebuild`): their text changes with the row count, so most
//! batches sent a statement the connection had not prepared (one more round
//! trip, a parse and a plan), and a key list `(a, b, c) IN ((…), (…))` plans as
//! an OR of ANDs. Those statements took 3.8 ms of a 9.5 ms batch at 64
//! connections (BENCHMARKS.md, "PostgreSQL: where a batch's time goes").

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgRow};

use super::codec::us_opt;
use crate::projection::learning::{Learning, Needs};
use crate::store::Result;
use crate::store::shared::learning::{
    COMPLETIONS, COURSE_LESSONS, LEARNERS, QUIZZES, Table, Val, changed_rows, completion_from_row,
    course_lesson_from_row, learner_from_row, quiz_from_row,
};

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

/// The rows of `table` whose keys are `keys` (each the key columns' values).
async fn select_keys<T>(
    conn: &mut PgConnection,
    table: &Table,
    keys: Vec<Vec<Val>>,
    map: impl Fn(&PgRow) -> Result<T>,
) -> Result<Vec<T>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let columns = columns(keys);
    let sql = format!(
        "SELECT {} FROM {} WHERE ({}) IN (SELECT * FROM {})",
        table.columns(),
        table.name,
        table.cols[..table.keys].join(", "),
        unnest(&columns, 1)
    );
    run(conn, sql, columns).await?.iter().map(map).collect()
}

fn key3((source, a, b): &(String, i64, i64)) -> Vec<Val> {
    vec![
        Val::Text(Some(source.clone())),
        Val::Int(Some(*a)),
        Val::Int(Some(*b)),
    ]
}

/// The rows `needs` names, as stored (absent ones are new); like
/// `shared::learning::load`.
pub(super) async fn load(conn: &mut PgConnection, needs: &Needs) -> Result<Learning> {
    let mut learning = Learning::default();
    let completion_keys = needs
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
    for c in select_keys(conn, &COMPLETIONS, completion_keys, completion_from_row).await? {
        learning
            .completions
            .insert((c.source.clone(), c.course_id, c.user_id, c.lesson_id), c);
    }
    let lesson_keys = needs.lessons.iter().map(key3).collect();
    for l in select_keys(conn, &COURSE_LESSONS, lesson_keys, course_lesson_from_row).await? {
        learning
            .lessons
            .insert((l.source.clone(), l.course_id, l.info.lesson_id), l);
    }
    let learner_keys = needs.learners.iter().map(key3).collect();
    for l in select_keys(conn, &LEARNERS, learner_keys, learner_from_row).await? {
        learning
            .learners
            .insert((l.source.clone(), l.course_id, l.user_id), l);
    }
    let quiz_keys = needs.quizzes.iter().map(key3).collect();
    for q in select_keys(conn, &QUIZZES, quiz_keys, quiz_from_row).await? {
        learning
            .quizzes
            .insert((q.source.clone(), q.quiz_id, q.user_id), q);
    }
    Ok(learning)
}

/// Writes the rows `learning` changed, in key order, in one statement.
pub(super) async fn write(conn: &mut PgConnection, learning: &Learning) -> Result<()> {
    upsert(conn, changed_rows(learning).into()).await
}
