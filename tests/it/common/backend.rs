//! The one way to run a test on both storage backends.
//!
//! A case is an `async fn` taking what it needs to start from — a bare
//! [`Backend`], a fresh empty [`TestDatabase`], or any other type that
//! implements [`Setup`] (the store suite's `Fixture`, an open store) — and
//! `on_both_backends!` turns a list of such cases into two tests each:
//! `on_sqlite::NAME` on a fresh SQLite file and `on_postgres::NAME` on a fresh
//! database of the real PostgreSQL server.
//!
//! ```ignore
//! async fn appends_are_idempotent(db: TestDatabase) { … }
//! on_both_backends!(appends_are_idempotent);
//! // or, for cases that need two worker threads (real processes, bursts):
//! on_both_backends!(multi_thread: appends_are_idempotent);
//! ```
//!
//! One invocation per module (each makes the modules `on_sqlite` and `on_postgres`).

use std::future::Future;

use enrollhook::config::ServeConfig;

use super::pg::TestDb;
use super::{SECRET, TestApp, spawn_with};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database on one backend, deleted when dropped.
pub struct TestDatabase {
    pub backend: Backend,
    /// What `--database` takes: `sqlite://…` or `postgres://…`.
    pub url: String,
    keep: Keep,
}

/// What keeps the database alive: the SQLite file's directory or the
/// PostgreSQL database (dropped with `DROP DATABASE … WITH (FORCE)`).
enum Keep {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(TestDb),
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let (dir, url) = super::fresh_db();
                TestDatabase {
                    backend,
                    url,
                    keep: Keep::Sqlite(dir),
                }
            }
            Backend::Postgres => {
                let db = TestDb::create().await;
                TestDatabase {
                    backend,
                    url: db.url.clone(),
                    keep: Keep::Postgres(db),
                }
            }
        }
    }

    /// The PostgreSQL database, for cases that look behind the service's back.
    pub fn pg(&self) -> Option<&TestDb> {
        match &self.keep {
            Keep::Postgres(db) => Some(db),
            Keep::Sqlite(_) => None,
        }
    }

    /// The real server on port 0 on this database (which lives as long as the
    /// app), configured as `ServeConfig::new(url, SECRET)` then `adjust`ed.
    pub async fn serve(self, adjust: impl FnOnce(&mut ServeConfig)) -> TestApp {
        let mut config = ServeConfig::new(self.url.clone(), Some(SECRET));
        adjust(&mut config);
        let (dir, pg) = match self.keep {
            Keep::Sqlite(dir) => (dir, None),
            Keep::Postgres(db) => (tempfile::tempdir().unwrap(), Some(db)),
        };
        let mut app = spawn_with(dir, config).await;
        app.pg = pg;
        app
    }
}

/// What a case starts from, made fresh for one backend.
pub trait Setup: Sized {
    fn setup(backend: Backend) -> impl Future<Output = Self>;
}

impl Setup for Backend {
    async fn setup(backend: Backend) -> Backend {
        backend
    }
}

impl Setup for TestDatabase {
    async fn setup(backend: Backend) -> TestDatabase {
        TestDatabase::create(backend).await
    }
}

/// Runs one case on one backend (what `on_both_backends!` expands to). The
/// case's parameter type says what to set up.
pub async fn run_on<T: Setup, F: Future<Output = ()>>(backend: Backend, case: impl FnOnce(T) -> F) {
    case(T::setup(backend).await).await
}

/// See the module documentation.
macro_rules! on_both_backends {
    (multi_thread: $($name:ident),+ $(,)?) => {
        $crate::common::backend::on_both_backends!(
            @with #[tokio::test(flavor = "multi_thread", worker_threads = 2)] $($name),+
        );
    };
    (@with #[$test:meta] $($name:ident),+) => {
        mod on_sqlite {
            $(
                #[$test]
                async fn $name() {
                    $crate::common::backend::run_on(
                        $crate::common::backend::Backend::Sqlite,
                        super::$name,
                    )
                    .await
                }
            )+
        }
        mod on_postgres {
            $(
                #[$test]
                async fn $name() {
                    $crate::common::backend::run_on(
                        $crate::common::backend::Backend::Postgres,
                        super::$name,
                    )
                    .await
                }
            )+
        }
    };
    ($($name:ident),+ $(,)?) => {
        $crate::common::backend::on_both_backends!(@with #[tokio::test] $($name),+);
    };
}
pub(crate) use on_both_backends;
