//! The parts of [`crate::store::Store`] and [`crate::store::ForwardStore`]
//! written once for both backends, generic over [`Dialect`]: a backend's
//! method calls these where only binding and reading differ, and keeps its
//! own SQL where the dialects differ (claims, batch inserts, the feed).

pub(crate) mod alerts;
pub(crate) mod courses;
pub(crate) mod dictionaries;
pub(crate) mod forward;
pub(crate) mod learning;
pub(crate) mod learning_reads;
pub(crate) mod log;
pub(crate) mod rebuild;
pub(crate) mod retention;

use sqlx::{Pool, QueryBuilder};

use super::Result;
use super::dialect::Dialect;

/// Runs `q` on a connection of `pool` and maps its rows.
pub(crate) async fn fetch_mapped<DB: Dialect, T>(
    pool: &Pool<DB>,
    mut q: QueryBuilder<DB>,
    map: impl Fn(&DB::Row) -> Result<T>,
) -> Result<Vec<T>> {
    let mut conn = pool.acquire().await?;
    let rows = q.build().fetch_all(DB::on(&mut conn)).await?;
    rows.iter().map(map).collect()
}
