//! The migration rules, written once for both backends: schema versions are
//! applied in order, each recorded in `enrollhook_migrations` (version, name,
//! applied_at), the table every existing database already has.
//!
//! Why not sqlx's migrator: it keeps its own table (`_sqlx_migrations`, with
//! checksums), so a database migrated by it would look unmigrated to every
//! earlier enrollhook, which would re-run migration 1 on it; seeding and
//! keeping both tables in step costs more than these rules. Each backend only
//! runs the SQL (see `sqlite::migrate`, `postgres::migrate`).

use super::{Result, StoreError};

/// One schema version: its number, its name, its SQL.
pub(crate) type Migration = (i64, &'static str, &'static str);

/// What to apply to a database at schema `current`: the migrations after it,
/// or an error saying how to get there (`apply` false: the operator runs
/// `enrollhook migrate`; a newer schema: upgrade enrollhook).
pub(crate) fn pending(
    migrations: &'static [Migration],
    current: i64,
    apply: bool,
) -> Result<&'static [Migration]> {
    let latest = migrations.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(StoreError::Migrate(format!(
            "the database schema is at version {current}, newer than this enrollhook knows \
             ({latest}): upgrade enrollhook"
        )));
    }
    let start = migrations.partition_point(|m| m.0 <= current);
    if start < migrations.len() && !apply {
        return Err(StoreError::Migrate(format!(
            "the database schema is at version {current}, this enrollhook needs {latest}: run \
             `enrollhook migrate` (or start without --no-migrate)"
        )));
    }
    Ok(&migrations[start..])
}

/// The error of a migration's SQL, naming it.
pub(crate) fn failed(m: &Migration, e: impl std::fmt::Display) -> StoreError {
    StoreError::Migrate(format!("migration {} ({}): {e}", m.0, m.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[Migration] = &[(1, "a", ""), (2, "b", ""), (3, "c", "")];

    #[test]
    fn pending_is_what_follows_the_current_version() {
        assert_eq!(pending(M, 0, true).unwrap().len(), 3);
        assert_eq!(pending(M, 2, true).unwrap()[0].0, 3);
        assert!(pending(M, 3, false).unwrap().is_empty());
        assert!(pending(M, 1, false).is_err(), "needs `enrollhook migrate`");
        assert!(pending(M, 4, true).is_err(), "newer than this enrollhook");
    }
}
