//! Shared fixtures for the async tests: every test gets a database of its own, behind a
//! diesel-async pool of its own, on the backend and pool it runs on.
//!
//! A test body is a generic `async fn name<C: Backend>(pool: PoolKind)`; [`aio_tests!`]
//! instantiates it once per backend and pool, as `sqlite::deadpool::name`,
//! `postgres::bb8::name` and so on (PostgreSQL with the crate feature `async-postgres`,
//! MariaDB with `async-mysql`). Every test runs on a two-worker multi-thread tokio runtime
//! (SQLite's `SyncConnectionWrapper` needs one, and the others lose nothing) whose threads
//! have 8 MiB stacks: see [`block_on`].
//!
//! - SQLite: a file in a temp directory (WAL, as a server deployment runs it).
//! - PostgreSQL (`PG_URL`): a schema of its own, selected through tokio-postgres' `options`
//!   (`search_path`); the pool's sessions carry the schema's name as `application_name`, so
//!   the server can be asked about this test's sessions only.
//! - MariaDB (`MYSQL_URL`): a database of its own.
//!
//! Without the URL a server test prints `SKIPPED: <why>` and passes, except under `CI=true`,
//! where it fails: CI must never go green without the servers.
#![allow(dead_code)]

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use diesel::QueryResult;
use diesel::prelude::*;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolableConnection,
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection, TransactionManager};
use diesel_atomic::{Database, Databases, DatabasesGuard};
use tempfile::TempDir;

diesel::table! {
    things (id) {
        id -> Integer,
        num -> Integer,
    }
}

diesel::table! {
    reporters (id) {
        id -> Integer,
        first_name -> Text,
        last_name -> Text,
    }
}

/// Instantiates generic async test bodies `async fn name<C: Backend>(pool: PoolKind)` once
/// per backend and pool, as modules `sqlite::deadpool`, `sqlite::bb8`, `postgres::…`:
/// `aio_tests!(a, b)` on both pools, `aio_tests!(deadpool: a, b)` on deadpool only (for
/// behaviour that does not depend on the pool). A test left out of the list is dead code,
/// which clippy refuses, so none is forgotten.
#[macro_export]
macro_rules! aio_tests {
    (deadpool: $($test:ident),* $(,)?) => {
        $crate::aio_tests!(@backends [] [deadpool] [$($test),*]);
    };
    // Tests kept but not run by default (`cargo test -- --ignored` runs them): a runtime bug
    // the test exposes, named in the reason. The caller wraps this in a module of its own
    // (`mod runtime_bugs { use super::*; aio_tests!(ignore = "...", deadpool: a); }`), since
    // the expansion's `sqlite`/`postgres`/`mysql` modules would collide with the main list's.
    (ignore = $reason:literal, deadpool: $($test:ident),* $(,)?) => {
        $crate::aio_tests!(@backends [#[ignore = $reason]] [deadpool] [$($test),*]);
    };
    (ignore = $reason:literal, $($test:ident),* $(,)?) => {
        $crate::aio_tests!(@backends [#[ignore = $reason]] [deadpool, bb8] [$($test),*]);
    };
    ($($test:ident),* $(,)?) => {
        $crate::aio_tests!(@backends [] [deadpool, bb8] [$($test),*]);
    };
    (@backends $attrs:tt $pools:tt $tests:tt) => {
        mod sqlite {
            $crate::aio_tests!(@pools $crate::common_aio::Sqlite, $attrs $pools $tests);
        }
        #[cfg(feature = "async-postgres")]
        mod postgres {
            $crate::aio_tests!(@pools diesel_async::AsyncPgConnection, $attrs $pools $tests);
        }
        #[cfg(feature = "async-mysql")]
        mod mysql {
            $crate::aio_tests!(@pools diesel_async::AsyncMysqlConnection, $attrs $pools $tests);
        }
    };
    (@pools $conn:ty, $attrs:tt [$($pool:ident),*] $tests:tt) => {
        $($crate::aio_tests!(@module $conn, $attrs $pool, $tests);)*
    };
    (@module $conn:ty, $attrs:tt deadpool, [$($test:ident),*]) => {
        mod deadpool {
            $($crate::aio_tests!(@test $conn, $attrs Deadpool $test);)*
        }
    };
    (@module $conn:ty, $attrs:tt bb8, [$($test:ident),*]) => {
        mod bb8 {
            $($crate::aio_tests!(@test $conn, $attrs Bb8 $test);)*
        }
    };
    (@test $conn:ty, [$(#[$attr:meta])*] $kind:ident $test:ident) => {
        #[test]
        $(#[$attr])*
        fn $test() {
            $crate::common_aio::block_on(|| {
                $crate::common_aio::run::<$conn, _>(
                    $crate::common_aio::PoolKind::$kind,
                    super::super::$test::<$conn>,
                )
            });
        }
    };
}

/// SQLite through diesel-async.
pub type Sqlite = diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection>;

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

/// Which pool the alias uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Deadpool,
    Bb8,
}

/// How long a test waits for anything that should be quick (a checkout, the server noticing
/// a closed session) before it fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A backend the async suite runs on: its connection type, how to make a test database, and
/// the questions the tests ask the server.
pub trait Backend: AsyncConnection + PoolableConnection + Send + 'static {
    const KIND: Kind;
    /// Why the backend cannot run here, or `None` when it can.
    fn unavailable() -> Option<String>;
    /// SQL every pooled connection runs when it is opened.
    const SETUP: &'static str = "";
    /// Creates an empty database with the test table and returns its connection URL.
    fn create_database(scratch: &Scratch) -> impl Future<Output = String> + Send;
    /// Drops what `create_database` made; best effort.
    fn drop_database(name: String) -> impl Future<Output = ()> + Send;
    /// The committed (or, inside a transaction, visible) thing numbers, in insertion order.
    fn nums(&mut self) -> impl Future<Output = QueryResult<Vec<i32>>> + Send;
    /// Every `(id, first_name, last_name)` reporter (visible on this connection), by id.
    fn reporter_rows(
        &mut self,
    ) -> impl Future<Output = QueryResult<Vec<(i32, String, String)>>> + Send;
    /// Whether this connection is inside a transaction, by the server's own account.
    fn in_transaction(&mut self) -> impl Future<Output = QueryResult<bool>> + Send;
    /// How many other sessions of this test's database have a transaction open (SQLite: 1
    /// when some connection holds the write lock).
    fn open_transactions_elsewhere(&mut self) -> impl Future<Output = QueryResult<i64>> + Send;
    /// The server's id for this session (`None` on SQLite).
    fn session_id(&mut self) -> impl Future<Output = QueryResult<Option<i64>>> + Send;
    /// A pool of `size` connections to `url` (diesel-async's managers implement the pool
    /// traits per backend, so this is `pool_impl!` in each backend's impl).
    fn build_pool(kind: PoolKind, url: &str, size: usize) -> impl Future<Output = TestPool<Self>>;
}

macro_rules! pool_impl {
    () => {
        async fn build_pool(kind: PoolKind, url: &str, size: usize) -> TestPool<Self> {
            match kind {
                PoolKind::Deadpool => {
                    let pool =
                        diesel_async::pooled_connection::deadpool::Pool::builder(manager::<Self>(
                            url,
                        ))
                        .max_size(size)
                        .build()
                        .expect("deadpool");
                    TestPool {
                        database: Database::new_async(pool.clone()),
                        checkout: Box::new(move || {
                            let pool = pool.clone();
                            Box::pin(async move {
                                pool.get()
                                    .await
                                    .map(|conn| Pooled(Box::new(conn)))
                                    .map_err(|error| error.to_string())
                            })
                        }),
                    }
                }
                PoolKind::Bb8 => {
                    let pool = diesel_async::pooled_connection::bb8::Pool::builder()
                        .max_size(u32::try_from(size).expect("small pool"))
                        .connection_timeout(PATIENCE)
                        .build(manager::<Self>(url))
                        .await
                        .expect("bb8");
                    TestPool {
                        database: Database::new_async(pool.clone()),
                        checkout: Box::new(move || {
                            let pool = pool.clone();
                            Box::pin(async move {
                                pool.get_owned()
                                    .await
                                    .map(|conn| Pooled(Box::new(conn)))
                                    .map_err(|error| error.to_string())
                            })
                        }),
                    }
                }
            }
        }
    };
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count<C>(conn: &mut C, sql: &str) -> QueryResult<i64>
where
    C: AsyncConnection,
    diesel::query_builder::SqlQuery: diesel_async::methods::LoadQuery<'static, C, Count>,
{
    Ok(diesel::sql_query(sql.to_owned())
        .load::<Count>(conn)
        .await?
        .pop()
        .map_or(0, |row| row.n))
}

macro_rules! nums_impl {
    () => {
        async fn nums(&mut self) -> QueryResult<Vec<i32>> {
            things::table
                .select(things::num)
                .order(things::id)
                .load(self)
                .await
        }

        async fn reporter_rows(&mut self) -> QueryResult<Vec<(i32, String, String)>> {
            reporters::table.order(reporters::id).load(self).await
        }
    };
}

/// A place for one test's database: a temp directory, and a name unique on the server.
pub struct Scratch {
    pub dir: TempDir,
    pub name: String,
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
            name: format!(
                "aio{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

fn server_url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|url| !url.is_empty())
}

fn missing_server(var: &str, what: &str) -> Option<String> {
    match server_url(var) {
        Some(_) => None,
        None => Some(format!(
            "{var} is not set, so the async {what} tests cannot run; start the servers with \
             `eval \"$(scripts/db-up)\"` or run `scripts/test`"
        )),
    }
}

// --- SQLite ---------------------------------------------------------------------------------

impl Backend for Sqlite {
    const KIND: Kind = Kind::Sqlite;
    const SETUP: &'static str = "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

    fn unavailable() -> Option<String> {
        None
    }

    async fn create_database(scratch: &Scratch) -> String {
        let path = scratch.dir.path().join(format!("{}.sqlite3", scratch.name));
        let url = path.to_str().expect("temp paths are UTF-8").to_owned();
        let mut conn = Sqlite::establish(&url)
            .await
            .expect("create SQLite database");
        conn.batch_execute(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE things (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 num INTEGER NOT NULL UNIQUE
             );
             CREATE TABLE reporters (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 first_name TEXT NOT NULL,
                 last_name TEXT NOT NULL DEFAULT ''
             );",
        )
        .await
        .expect("schema");
        url
    }

    async fn drop_database(_: String) {
        // The temp directory goes with the Scratch.
    }

    nums_impl!();
    pool_impl!();

    async fn in_transaction(&mut self) -> QueryResult<bool> {
        // SQLite refuses a BEGIN inside a transaction and has no way to ask directly.
        match self.batch_execute("BEGIN; ROLLBACK;").await {
            Ok(()) => Ok(false),
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("within a transaction") =>
            {
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    async fn open_transactions_elsewhere(&mut self) -> QueryResult<i64> {
        // A write transaction left open anywhere holds the database's write lock.
        self.batch_execute("PRAGMA busy_timeout = 100;").await?;
        let probe = self.batch_execute("BEGIN IMMEDIATE; ROLLBACK;").await;
        self.batch_execute(Self::SETUP).await?;
        match probe {
            Ok(()) => Ok(0),
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("locked") =>
            {
                Ok(1)
            }
            Err(error) => Err(error),
        }
    }

    async fn session_id(&mut self) -> QueryResult<Option<i64>> {
        Ok(None)
    }
}

// --- PostgreSQL -----------------------------------------------------------------------------

#[cfg(feature = "async-postgres")]
impl Backend for diesel_async::AsyncPgConnection {
    const KIND: Kind = Kind::Postgres;

    fn unavailable() -> Option<String> {
        missing_server("PG_URL", "PostgreSQL")
    }

    async fn create_database(scratch: &Scratch) -> String {
        let base = server_url("PG_URL").expect("PG_URL");
        let schema = &scratch.name;
        let mut admin = Self::establish(&base).await.expect("connect to PG_URL");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        let url =
            format!("{base}{separator}options=-csearch_path%3D{schema}&application_name={schema}");
        Self::establish(&url)
            .await
            .expect("connect to the test schema")
            .batch_execute(
                "CREATE TABLE things (id SERIAL PRIMARY KEY, num INTEGER NOT NULL UNIQUE);
                 CREATE TABLE reporters (
                     id SERIAL PRIMARY KEY,
                     first_name TEXT NOT NULL,
                     last_name TEXT NOT NULL DEFAULT ''
                 )",
            )
            .await
            .expect("schema");
        url
    }

    async fn drop_database(schema: String) {
        let base = server_url("PG_URL").expect("PG_URL");
        if let Ok(mut admin) = Self::establish(&base).await {
            let _ = admin
                .batch_execute(&format!(
                    "SET lock_timeout = '2s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                ))
                .await;
        }
    }

    nums_impl!();
    pool_impl!();

    async fn in_transaction(&mut self) -> QueryResult<bool> {
        // Outside a transaction PostgreSQL refuses SAVEPOINT; inside one, it is harmless (and
        // in a failed one it is refused as such).
        match self.batch_execute("SAVEPOINT probe_in_transaction").await {
            Ok(()) => {
                self.batch_execute("RELEASE SAVEPOINT probe_in_transaction")
                    .await?;
                Ok(true)
            }
            Err(diesel::result::Error::DatabaseError(_, info))
                if info
                    .message()
                    .contains("only be used in transaction blocks") =>
            {
                Ok(false)
            }
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("current transaction is aborted") =>
            {
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    async fn open_transactions_elsewhere(&mut self) -> QueryResult<i64> {
        count(
            self,
            "SELECT COUNT(*) AS n FROM pg_stat_activity
             WHERE application_name = current_setting('application_name')
               AND pid <> pg_backend_pid() AND xact_start IS NOT NULL",
        )
        .await
    }

    async fn session_id(&mut self) -> QueryResult<Option<i64>> {
        count(self, "SELECT pg_backend_pid()::bigint AS n")
            .await
            .map(Some)
    }
}

// --- MariaDB / MySQL ------------------------------------------------------------------------

#[cfg(feature = "async-mysql")]
impl Backend for diesel_async::AsyncMysqlConnection {
    const KIND: Kind = Kind::Mysql;

    fn unavailable() -> Option<String> {
        missing_server("MYSQL_URL", "MariaDB")
    }

    async fn create_database(scratch: &Scratch) -> String {
        let base = server_url("MYSQL_URL").expect("MYSQL_URL");
        let database = &scratch.name;
        Self::establish(&base)
            .await
            .expect("connect to MYSQL_URL")
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create database");
        let server = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(server, _)| server);
        let url = format!("{server}/{database}");
        let mut conn = Self::establish(&url)
            .await
            .expect("connect to the test database");
        conn.batch_execute(
            "CREATE TABLE things (
                 id INTEGER PRIMARY KEY AUTO_INCREMENT,
                 num INTEGER NOT NULL UNIQUE
             ) ENGINE = InnoDB",
        )
        .await
        .expect("schema");
        conn.batch_execute(
            "CREATE TABLE reporters (
                 id INTEGER PRIMARY KEY AUTO_INCREMENT,
                 first_name VARCHAR(255) NOT NULL,
                 last_name VARCHAR(255) NOT NULL DEFAULT ''
             ) ENGINE = InnoDB",
        )
        .await
        .expect("schema");
        url
    }

    async fn drop_database(database: String) {
        let base = server_url("MYSQL_URL").expect("MYSQL_URL");
        if let Ok(mut admin) = Self::establish(&base).await {
            let _ = admin
                .batch_execute(&format!(
                    "SET SESSION lock_wait_timeout = 2; DROP DATABASE IF EXISTS {database}"
                ))
                .await;
        }
    }

    nums_impl!();
    pool_impl!();

    async fn in_transaction(&mut self) -> QueryResult<bool> {
        count(self, "SELECT CAST(@@in_transaction AS SIGNED) AS n")
            .await
            .map(|open| open != 0)
    }

    async fn open_transactions_elsewhere(&mut self) -> QueryResult<i64> {
        count(
            self,
            "SELECT COUNT(*) AS n FROM information_schema.innodb_trx t
             JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id
             WHERE p.DB = DATABASE() AND p.ID <> CONNECTION_ID()",
        )
        .await
    }

    async fn session_id(&mut self) -> QueryResult<Option<i64>> {
        count(self, "SELECT CAST(CONNECTION_ID() AS SIGNED) AS n")
            .await
            .map(Some)
    }
}

// --- Pools ----------------------------------------------------------------------------------

/// The test's pool, of either kind: [`TestPool::database`] registers it, [`TestPool::get`]
/// checks a connection out for the test itself.
pub struct TestPool<C> {
    database: Database,
    #[allow(clippy::type_complexity)]
    checkout: Box<
        dyn Fn() -> Pin<Box<dyn Future<Output = Result<Pooled<C>, String>> + Send>> + Send + Sync,
    >,
}

/// A connection checked out of a [`TestPool`] by the test itself; back to the pool on drop.
pub struct Pooled<C>(Box<dyn DerefMut<Target = C> + Send>);

impl<C> Deref for Pooled<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.0
    }
}

impl<C> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.0
    }
}

fn manager<C: Backend>(url: &str) -> AsyncDieselConnectionManager<C> {
    let mut config = ManagerConfig::<C>::default();
    config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn = C::establish(&url).await?;
            if !C::SETUP.is_empty() {
                conn.batch_execute(C::SETUP)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            Ok(conn)
        })
    });
    AsyncDieselConnectionManager::new_with_config(url, config)
}

impl<C: Backend> TestPool<C> {
    pub async fn new(kind: PoolKind, url: &str, size: usize) -> TestPool<C> {
        C::build_pool(kind, url, size).await
    }

    /// The pool as an alias's database.
    pub fn database(&self) -> Database {
        self.database.clone()
    }

    /// A connection of the pool, for the test itself; fails rather than waits forever when
    /// every connection is held (one was never given back).
    pub async fn get(&self) -> Pooled<C> {
        let checkout = (self.checkout)();
        match tokio::time::timeout(PATIENCE, checkout).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => panic!("checking out a connection failed: {error}"),
            Err(_) => panic!("no connection came back to the pool within {PATIENCE:?}"),
        }
    }
}

// --- The test's database --------------------------------------------------------------------

/// The stack of the thread that polls a test and of the runtime's workers.
const STACK: usize = 8 << 20;

/// Runs the future `make` returns to completion on a multi-thread runtime of two workers, as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would, but with [`STACK`]
/// bytes of stack on the polling thread and the workers instead of 2 MiB.
///
/// In debug builds the poll functions of the runtime's block futures have large frames
/// (measured: about 110 KB for `run_ambient`'s scope and 70 KB for `attempt_ambient` around
/// a small body), so a block inside `aio::connection` inside a block already needs about
/// 1.4 MB, and the default 2 MiB test thread overflows. (Release builds are far smaller.)
pub fn block_on<F: Future<Output = ()>>(make: impl FnOnce() -> F + Send + 'static) {
    let thread = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_stack_size(STACK)
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(make());
        })
        .expect("test thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `body` if backend `C` is available; else prints `SKIPPED: <why>`, or fails under CI.
pub async fn run<C: Backend, F: Future<Output = ()>>(pool: PoolKind, body: fn(PoolKind) -> F) {
    if let Some(why) = C::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why} (CI=true: a missing server is a failure, not a skip)"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    // On the heap: `block_on` keeps the test's future on the test thread's stack, and debug
    // builds of nested async blocks are large.
    Box::pin(body(pool)).await;
}

/// One test's database and pool, registered as the alias "default" on this thread for as
/// long as the value lives.
pub struct TestDb<C: Backend> {
    pub pool: TestPool<C>,
    pub url: String,
    /// The alias "other" (see [`TestDb::with_other`]): its pool and URL.
    pub other: Option<(TestPool<C>, String)>,
    pub databases: Databases,
    _registry: DatabasesGuard,
    // Last: the pool's connections are closed before the database is dropped.
    scratch: ScratchGuard<C>,
    other_scratch: Option<ScratchGuard<C>>,
}

struct ScratchGuard<C: Backend> {
    scratch: Scratch,
    _backend: std::marker::PhantomData<fn() -> C>,
}

impl<C: Backend> Drop for ScratchGuard<C> {
    fn drop(&mut self) {
        // A destructor cannot await: drop the database from a thread with a runtime of its own.
        let name = self.scratch.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(C::drop_database(name));
        })
        .join();
    }
}

impl<C: Backend> TestDb<C> {
    /// A database of the test's own, behind a pool of `size` connections of kind `pool`.
    pub async fn new(pool: PoolKind, size: usize) -> TestDb<C> {
        TestDb::create(pool, size, false).await
    }

    /// [`TestDb::new`] with a second database of its own, as the alias "other" (Django's
    /// `databases = {"default", "other"}`), behind a pool of the same kind and size.
    pub async fn with_other(pool: PoolKind, size: usize) -> TestDb<C> {
        TestDb::create(pool, size, true).await
    }

    async fn create(kind: PoolKind, size: usize, other: bool) -> TestDb<C> {
        let scratch = Scratch::new();
        let url = C::create_database(&scratch).await;
        let pool = TestPool::new(kind, &url, size).await;
        let mut databases = Databases::new().add("default", pool.database());
        let (other, other_scratch) = if other {
            let scratch = Scratch::new();
            let url = C::create_database(&scratch).await;
            let pool = TestPool::new(kind, &url, size).await;
            databases = databases.add("other", pool.database());
            let guard = ScratchGuard {
                scratch,
                _backend: std::marker::PhantomData,
            };
            (Some((pool, url)), Some(guard))
        } else {
            (None, None)
        };
        let registry = databases.enter();
        TestDb {
            pool,
            url,
            other,
            databases,
            _registry: registry,
            scratch: ScratchGuard {
                scratch,
                _backend: std::marker::PhantomData,
            },
            other_scratch,
        }
    }

    /// The URL of `alias`'s database ("default", or "other" with [`TestDb::with_other`]).
    pub fn url_of(&self, alias: &str) -> &str {
        match (alias, &self.other) {
            ("default", _) => &self.url,
            ("other", Some((_, url))) => url,
            _ => panic!("no test database for alias {alias:?}"),
        }
    }

    /// First names of the committed reporters on `alias`, sorted by (first, last) name.
    pub async fn reporters_on(&self, alias: &str) -> Vec<String> {
        let mut conn = C::establish(self.url_of(alias))
            .await
            .expect("raw connection");
        reporter_names(conn.reporter_rows().await.expect("read reporters"))
    }

    /// First names of the committed reporters on "default".
    pub async fn reporters(&self) -> Vec<String> {
        self.reporters_on("default").await
    }

    /// Committed `(id, first_name, last_name)` reporter rows on "default", by id.
    pub async fn reporter_rows(&self) -> Vec<(i32, String, String)> {
        self.raw()
            .await
            .reporter_rows()
            .await
            .expect("read reporters")
    }

    /// A fresh connection outside the pool, to look at what was committed.
    pub async fn raw(&self) -> C {
        C::establish(&self.url).await.expect("raw connection")
    }

    /// The committed thing numbers, in insertion order.
    pub async fn committed(&self) -> Vec<i32> {
        self.raw().await.nums().await.expect("read things")
    }

    /// Waits until no session of the test's database has a transaction open (the server
    /// takes a moment to notice a closed connection), failing after [`PATIENCE`].
    pub async fn assert_no_open_transaction_elsewhere(&self, conn: &mut C) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let open = conn
                .open_transactions_elsewhere()
                .await
                .expect("ask the server about open transactions");
            if open == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} session(s) of the test database still inside a transaction after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// --- Helpers for test bodies ----------------------------------------------------------------

/// `INSERT INTO things (num) VALUES (num)` on `conn`.
pub async fn insert<C: Backend>(conn: &mut C, num: i32) -> QueryResult<()> {
    conn.batch_execute(&format!("INSERT INTO things (num) VALUES ({num})"))
        .await
}

/// Inserts `num` through the default alias's ambient connection (the open block's).
pub async fn insert_ambient<C: Backend>(num: i32) -> Result<(), diesel_atomic::Error> {
    diesel_atomic::aio::connection(async |conn: &mut C| {
        insert(conn, num).await.map_err(diesel_atomic::Error::from)
    })
    .await
}

/// The thing numbers the default alias's ambient connection sees (inside its transaction).
pub async fn visible_ambient<C: Backend>() -> Result<Vec<i32>, diesel_atomic::Error> {
    diesel_atomic::aio::connection(async |conn: &mut C| {
        conn.nums().await.map_err(diesel_atomic::Error::from)
    })
    .await
}

/// diesel's transaction depth on `conn` (`Err` when its transaction manager is broken).
pub fn diesel_depth<C: Backend>(conn: &mut C) -> QueryResult<u32> {
    let status = C::TransactionManager::transaction_manager_status_mut(conn);
    Ok(status.transaction_depth()?.map_or(0, |depth| depth.get()))
}

/// `conn` is usable, outside any transaction by the server's account and by diesel's.
pub async fn assert_clean<C: Backend>(conn: &mut C) {
    assert_eq!(
        diesel_depth(conn).expect("diesel's transaction manager is not broken"),
        0,
        "diesel thinks the connection is inside a transaction"
    );
    assert!(
        !conn
            .in_transaction()
            .await
            .expect("ask the server about its transaction"),
        "the connection was left inside a transaction"
    );
}

/// Runs `future` with `databases` entered as the thread's registry around every poll: a
/// future that moves to another thread (`tokio::spawn`) begins its first block there and
/// takes its registry from the thread.
pub fn with_registry<F: Future>(databases: Databases, future: F) -> WithRegistry<F> {
    WithRegistry {
        databases,
        future: Box::pin(future),
    }
}

pub struct WithRegistry<F> {
    databases: Databases,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for WithRegistry<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _registry = this.databases.enter();
        this.future.as_mut().poll(cx)
    }
}

/// Fails the test instead of hanging when `future` takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

// --- Django-port helpers (reporters, failing bodies, panics, logs) ---------------------------

/// First names sorted by (first, last) name, as the sync suite's `reporter_names` (sorted
/// here, not by SQL: the servers' collations order case differently).
pub fn reporter_names(rows: Vec<(i32, String, String)>) -> Vec<String> {
    let mut names: Vec<(String, String)> = rows
        .into_iter()
        .map(|(_, first, last)| (first, last))
        .collect();
    names.sort();
    names.into_iter().map(|(first, _)| first).collect()
}

/// `INSERT INTO reporters (first_name, last_name)` on `conn`.
pub async fn insert_reporter<C: Backend>(conn: &mut C, first: &str, last: &str) -> QueryResult<()> {
    let quote = |text: &str| text.replace('\'', "''");
    conn.batch_execute(&format!(
        "INSERT INTO reporters (first_name, last_name) VALUES ('{}', '{}')",
        quote(first),
        quote(last)
    ))
    .await
}

/// Inserts a reporter through `alias`'s ambient connection (the open block's).
pub async fn create_reporter_on<C: Backend>(
    alias: &str,
    first: &str,
    last: &str,
) -> Result<(), diesel_atomic::Error> {
    diesel_atomic::aio::db(alias)
        .connection(async |conn: &mut C| {
            insert_reporter(conn, first, last)
                .await
                .map_err(diesel_atomic::Error::from)
        })
        .await
}

/// Inserts a reporter through the default alias's ambient connection.
pub async fn create_reporter<C: Backend>(
    first: &str,
    last: &str,
) -> Result<(), diesel_atomic::Error> {
    create_reporter_on::<C>("default", first, last).await
}

/// The reporters the default alias's ambient connection sees, or the error it is refused with.
pub async fn try_visible_reporters<C: Backend>() -> Result<Vec<String>, diesel_atomic::Error> {
    diesel_atomic::aio::connection(async |conn: &mut C| {
        conn.reporter_rows()
            .await
            .map(reporter_names)
            .map_err(diesel_atomic::Error::from)
    })
    .await
}

/// The reporters the default alias's ambient connection sees (inside its transaction).
pub async fn visible_reporters<C: Backend>() -> Vec<String> {
    try_visible_reporters::<C>().await.expect("read reporters")
}

/// Runs SQL through the default alias's ambient connection.
pub async fn execute_ambient<C: Backend>(sql: &str) -> Result<(), diesel_atomic::Error> {
    diesel_atomic::aio::connection(async |conn: &mut C| {
        conn.batch_execute(sql)
            .await
            .map_err(diesel_atomic::Error::from)
    })
    .await
}

/// The error used by test bodies that must fail, like Django's `Exception("Oops")`.
#[derive(Debug, PartialEq)]
pub enum TestError {
    Oops,
    Atomic(String),
    Db(String),
}

impl From<diesel_atomic::Error> for TestError {
    fn from(error: diesel_atomic::Error) -> Self {
        TestError::Atomic(error.to_string())
    }
}

impl From<diesel::result::Error> for TestError {
    fn from(error: diesel::result::Error) -> Self {
        TestError::Db(error.to_string())
    }
}

/// Records callback runs, like Django's `notified` list (callbacks are `Send`).
#[derive(Clone, Default)]
pub struct Notified(pub std::sync::Arc<std::sync::Mutex<Vec<i32>>>);

impl Notified {
    pub fn push(&self, n: i32) {
        self.0.lock().unwrap().push(n);
    }
    pub fn get(&self) -> Vec<i32> {
        self.0.lock().unwrap().clone()
    }
}

/// Awaits `future`, catching a panic of any of its polls (the async `catch_unwind`).
pub async fn catch_unwind<F: Future>(
    future: F,
) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await
}

/// Silences the default panic message for panics whose message starts with `prefix` (those a
/// test causes on purpose); installed once per test binary.
pub fn quiet_expected_panics(prefix: &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !message.is_some_and(|message| message.starts_with(prefix)) {
                default_hook(info);
            }
        }));
    });
}

/// Events collected by [`capture_logs`]: level and rendered message.
#[derive(Clone, Default)]
struct Collected(std::sync::Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);

struct CollectLayer(Collected);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CollectLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), message.0));
    }
}

/// Awaits `future` with a collecting subscriber as the default around each of its polls (a
/// future moved to another task is not followed) and returns its output with the messages of
/// the events at `level` it emitted, in order. Django's `assertLogs`.
pub async fn capture_logs<F: Future>(level: tracing::Level, future: F) -> (F::Output, Vec<String>) {
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::layer::SubscriberExt;
    let collected = Collected::default();
    let subscriber = tracing_subscriber::registry().with(CollectLayer(collected.clone()));
    let value = future.with_subscriber(subscriber).await;
    let messages = collected
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at == level)
        .map(|(_, message)| message.clone())
        .collect();
    (value, messages)
}

/// [`capture_logs`] at ERROR level.
pub async fn capture_error_logs<F: Future>(future: F) -> (F::Output, Vec<String>) {
    capture_logs(tracing::Level::ERROR, future).await
}

/// The name the runtime reports for a callback: `std::any::type_name` of its type.
pub fn type_name_of<F>(_: &F) -> &'static str {
    std::any::type_name::<F>()
}

/// Fixes a closure's signature to `FnOnce() + Send` (a closure whose body only panics would
/// otherwise infer `!` as its return type).
pub fn callback<F: FnOnce() + Send + 'static>(f: F) -> F {
    f
}

/// Checks out `size` connections of the pool at once (every one the pool has) and makes sure
/// each is usable and outside any transaction: none was left held by a block.
pub async fn assert_pool_clean<C: Backend>(db: &TestDb<C>, size: usize) {
    let mut all = Vec::with_capacity(size);
    for _ in 0..size {
        all.push(db.pool.get().await);
    }
    for conn in &mut all {
        assert_clean(&mut **conn).await;
    }
}
