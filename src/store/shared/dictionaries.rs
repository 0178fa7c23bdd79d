//! The compression dictionaries of a database (`body_dictionaries`, see
//! [`crate::store::bodies`]), written once for both backends.

use std::sync::Arc;

use chrono::Utc;
use sqlx::QueryBuilder;

use crate::store::Result;
use crate::store::bodies::{self, BUILTIN_DICTIONARY, Encoder};
use crate::store::dialect::{Binds, Cols, Dialect};

/// Adds `dictionary` (made current if `make_current`, or if the database has
/// none yet); returns its id. Adding one that is there already only makes it
/// current when asked.
pub(crate) async fn add<DB: Dialect>(
    conn: &mut DB::Connection,
    dictionary: &[u8],
    make_current: bool,
) -> Result<i64>
where
    i64: Binds<DB>,
    Vec<u8>: Binds<DB>,
{
    let id = bodies::dictionary_id(dictionary)?;
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO body_dictionaries (id, dictionary, created_at, made_current_at) SELECT ",
    );
    q.push_bind(id)
        .push(", ")
        .push_bind(dictionary.to_vec())
        .push(", ")
        .push_bind(DB::time(Utc::now()))
        .push(", CASE WHEN EXISTS (SELECT 1 FROM body_dictionaries) THEN NULL ELSE ")
        .push_bind(DB::time(Utc::now()))
        // `WHERE true`: SQLite's parser needs it before ON CONFLICT here.
        .push(" END WHERE true ON CONFLICT (id) DO NOTHING");
    q.build().execute(DB::on(conn)).await?;
    if make_current {
        let mut q = QueryBuilder::<DB>::new("UPDATE body_dictionaries SET made_current_at = ");
        q.push_bind(DB::time(Utc::now()))
            .push(" WHERE id = ")
            .push_bind(id);
        q.build().execute(DB::on(conn)).await?;
    }
    bodies::remember(id, dictionary);
    Ok(id)
}

/// Run when a database is opened: adds the built-in dictionary, makes every
/// stored dictionary readable in this process, and returns the current one's
/// encoder for the writers.
pub(crate) async fn open<DB: Dialect>(conn: &mut DB::Connection) -> Result<Arc<Encoder>>
where
    i64: Binds<DB>,
    Vec<u8>: Binds<DB>,
{
    add::<DB>(conn, BUILTIN_DICTIONARY, false).await?;
    let rows =
        QueryBuilder::<DB>::new("SELECT id, dictionary, made_current_at FROM body_dictionaries")
            .build()
            .fetch_all(DB::on(conn))
            .await?;
    let mut current = None;
    for row in &rows {
        let (id, dictionary) = (row.int("id")?, row.bytes("dictionary")?);
        bodies::remember(id, &dictionary);
        if let Some(made) = row.opt_time("made_current_at")?
            && current
                .as_ref()
                .is_none_or(|(at, cur_id, _)| (made, id) > (*at, *cur_id))
        {
            current = Some((made, id, dictionary));
        }
    }
    let dictionary = current.map_or_else(|| BUILTIN_DICTIONARY.to_vec(), |(_, _, d)| d);
    Ok(Arc::new(Encoder::new(&dictionary)?))
}
