//! Shared fixtures: every test gets databases of its own on the backend it runs on.
//!
//! A test body is a generic function `fn name<C: Backend>()`; [`backend_tests!`] instantiates
//! it once per backend, as `sqlite::name`, `postgres::name` and `mysql::name` (the last two
//! with the crate features `postgres` / `mysql`). A test left out of the list is dead code,
//! which clippy refuses, so none is forgotten.
//!
//! - SQLite: two files in a temp directory.
//! - PostgreSQL (`PG_URL`): two schemas of their own, selected with libpq's `options`.
//! - MariaDB (`MYSQL_URL`): two databases of their own.
//!
//! Without the URL a server test prints `SKIPPED: <why>` and passes, except under `CI=true`,
//! where it fails: CI must never go green without the servers.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, R2D2Connection};
use diesel_atomic::{Database, Databases, DatabasesGuard, Error};
use tempfile::TempDir;

diesel::table! {
    reporters (id) {
        id -> Integer,
        first_name -> Text,
        last_name -> Text,
    }
}

diesel::table! {
    things (id) {
        id -> Integer,
        num -> Integer,
    }
}

/// Instantiates generic test bodies `fn name<C: Backend>()` once per backend, as modules
/// `sqlite`, `postgres` and `mysql`: `backend_tests!(a, b)` on all three, or
/// `backend_tests!(on [postgres, mysql]: a, b)` on the ones listed (for a test that needs what
/// only those backends have, such as a server session to kill).
#[macro_export]
macro_rules! backend_tests {
    (on [$($backend:ident),* $(,)?]: $($test:ident),* $(,)?) => {
        $crate::backend_tests!(@each [$($backend),*] [$($test),*]);
    };
    // One backend at a time: the test list is carried as one token tree, because it cannot
    // repeat inside the repetition over the backends.
    (@each [] $tests:tt) => {};
    (@each [$backend:ident $(, $rest:ident)*] $tests:tt) => {
        $crate::backend_tests!(@module $backend $tests);
        $crate::backend_tests!(@each [$($rest),*] $tests);
    };
    ($($test:ident),* $(,)?) => {
        $crate::backend_tests!(on [sqlite, postgres, mysql]: $($test),*);
    };
    (@module sqlite [$($test:ident),*]) => {
        $crate::backend_tests!(@tests sqlite, diesel::SqliteConnection, [$($test),*]);
    };
    (@module postgres [$($test:ident),*]) => {
        #[cfg(feature = "postgres")]
        $crate::backend_tests!(@tests postgres, diesel::PgConnection, [$($test),*]);
    };
    (@module mysql [$($test:ident),*]) => {
        #[cfg(feature = "mysql")]
        $crate::backend_tests!(@tests mysql, diesel::MysqlConnection, [$($test),*]);
    };
    (@tests $module:ident, $conn:ty, [$($test:ident),*]) => {
        mod $module {
            $(#[test]
            fn $test() {
                $crate::common::run::<$conn>(super::$test::<$conn>);
            })*
        }
    };
}

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

pub type Pooled<C> = Pool<ConnectionManager<C>>;

/// The test data operations, object-safe so that the ambient helpers can reach them on
/// whatever connection type the running test uses.
pub trait Ops {
    fn insert_reporter(&mut self, first: &str, last: &str) -> QueryResult<()>;
    fn reporter_names(&mut self) -> QueryResult<Vec<String>>;
    fn insert_thing(&mut self, num: i32) -> QueryResult<()>;
    fn thing_nums(&mut self) -> QueryResult<Vec<i32>>;
    /// `SELECT COUNT(*)` of a table.
    fn count_rows(&mut self, table: &str) -> QueryResult<i64>;
    /// Asks the server (never our bookkeeping) whether a transaction is open.
    fn in_transaction(&mut self) -> QueryResult<bool>;
}

/// A backend the suite runs on.
pub trait Backend: Connection + R2D2Connection + Ops + Send + 'static {
    const KIND: Kind;
    /// Why the backend cannot run here, or `None` when it can.
    fn unavailable() -> Option<String>;
    /// What every pooled connection runs when it is opened.
    fn customizer() -> Option<Box<dyn CustomizeConnection<Self, diesel::r2d2::Error>>> {
        None
    }
    /// Creates an empty database (SQLite file, PostgreSQL schema, MariaDB database) with the
    /// test tables, and returns its connection URL.
    fn create_database(scratch: &Scratch, name: &str) -> String;
    /// Drops what `create_database` made; best effort, never blocks for long.
    fn drop_database(scratch: &Scratch, name: &str);
    /// The server's id for this connection's session, for killing it from another one.
    fn session_id(&mut self) -> QueryResult<i64>;
    /// Kills session `id` from this (other) connection.
    fn kill_session(&mut self, id: i64) -> QueryResult<()>;
}

macro_rules! data_ops {
    () => {
        fn insert_reporter(&mut self, first: &str, last: &str) -> QueryResult<()> {
            diesel::insert_into(reporters::table)
                .values((
                    reporters::first_name.eq(first),
                    reporters::last_name.eq(last),
                ))
                .execute(self)
                .map(drop)
        }

        fn reporter_names(&mut self) -> QueryResult<Vec<String>> {
            // Sorted here, not by SQL: the servers' collations order case differently.
            let mut names: Vec<(String, String)> = reporters::table
                .select((reporters::first_name, reporters::last_name))
                .load(self)?;
            names.sort();
            Ok(names.into_iter().map(|(first, _)| first).collect())
        }

        fn insert_thing(&mut self, num: i32) -> QueryResult<()> {
            diesel::insert_into(things::table)
                .values(things::num.eq(num))
                .execute(self)
                .map(drop)
        }

        fn thing_nums(&mut self) -> QueryResult<Vec<i32>> {
            things::table
                .select(things::num)
                .order(things::id)
                .load(self)
        }

        fn count_rows(&mut self, table: &str) -> QueryResult<i64> {
            diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!("SELECT COUNT(*) FROM {table}"))
                .get_result(self)
        }
    };
}

/// A place for one test's databases: a temp directory, and a name prefix unique on the server.
pub struct Scratch {
    pub dir: TempDir,
    pub prefix: String,
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
            prefix: format!(
                "t{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    pub fn database_name(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }
}

fn server_url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|url| !url.is_empty())
}

fn missing_server(var: &str, what: &str) -> Option<String> {
    match server_url(var) {
        Some(_) => None,
        None => Some(format!(
            "{var} is not set, so the {what} tests cannot run; start the servers with \
             `eval \"$(scripts/db-up)\"` or run `scripts/test`"
        )),
    }
}

// --- SQLite ---------------------------------------------------------------------------------

const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS reporters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        first_name TEXT NOT NULL,
        last_name TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE IF NOT EXISTS things (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        num INTEGER NOT NULL UNIQUE
    );
";

impl Ops for SqliteConnection {
    data_ops!();

    fn in_transaction(&mut self) -> QueryResult<bool> {
        // SQLite refuses a BEGIN inside a transaction and has no way to ask directly.
        match self.batch_execute("BEGIN; ROLLBACK;") {
            Ok(()) => Ok(false),
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("within a transaction") =>
            {
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }
}

impl Backend for SqliteConnection {
    const KIND: Kind = Kind::Sqlite;

    fn unavailable() -> Option<String> {
        None
    }

    fn customizer() -> Option<Box<dyn CustomizeConnection<Self, diesel::r2d2::Error>>> {
        Some(Box::new(SqlitePragmas))
    }

    fn create_database(scratch: &Scratch, name: &str) -> String {
        let path = scratch.dir.path().join(format!("{name}.sqlite3"));
        let url = path.to_str().expect("temp paths are UTF-8").to_owned();
        let mut conn = SqliteConnection::establish(&url).expect("create SQLite database");
        // WAL, as a server deployment runs SQLite: with the default rollback journal, two
        // DEFERRED writers can deadlock, and SQLite answers one of them "database is locked"
        // at once, busy timeout or not.
        conn.batch_execute("PRAGMA journal_mode = WAL;")
            .expect("WAL");
        conn.batch_execute(SQLITE_SCHEMA).expect("schema");
        url
    }

    fn drop_database(_: &Scratch, _: &str) {
        // The temp directory goes with the Scratch.
    }

    fn session_id(&mut self) -> QueryResult<i64> {
        unimplemented!("SQLite has no server session to kill")
    }

    fn kill_session(&mut self, _: i64) -> QueryResult<()> {
        unimplemented!("SQLite has no server session to kill")
    }
}

// --- PostgreSQL -----------------------------------------------------------------------------

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    const SCHEMA: &str = "
        CREATE TABLE reporters (
            id SERIAL PRIMARY KEY,
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE things (
            id SERIAL PRIMARY KEY,
            num INTEGER NOT NULL UNIQUE
        );
    ";

    fn admin() -> PgConnection {
        let url = server_url("PG_URL").expect("PG_URL");
        PgConnection::establish(&url).expect("connect to PG_URL")
    }

    impl Ops for PgConnection {
        data_ops!();

        fn in_transaction(&mut self) -> QueryResult<bool> {
            // Outside a transaction PostgreSQL refuses SAVEPOINT; inside one, it is harmless.
            match self.batch_execute("SAVEPOINT probe_in_transaction") {
                Ok(()) => {
                    self.batch_execute("RELEASE SAVEPOINT probe_in_transaction")?;
                    Ok(true)
                }
                Err(diesel::result::Error::DatabaseError(_, info))
                    if info
                        .message()
                        .contains("only be used in transaction blocks") =>
                {
                    Ok(false)
                }
                Err(error) => Err(error),
            }
        }
    }

    impl Backend for PgConnection {
        const KIND: Kind = Kind::Postgres;

        fn unavailable() -> Option<String> {
            missing_server("PG_URL", "PostgreSQL")
        }

        fn create_database(scratch: &Scratch, name: &str) -> String {
            let schema = scratch.database_name(name);
            admin()
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .expect("create schema");
            let base = server_url("PG_URL").expect("PG_URL");
            let separator = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{separator}options=-csearch_path%3D{schema}");
            PgConnection::establish(&url)
                .expect("connect to the test schema")
                .batch_execute(SCHEMA)
                .expect("schema");
            url
        }

        fn drop_database(scratch: &Scratch, name: &str) {
            let schema = scratch.database_name(name);
            let _ = admin().batch_execute(&format!(
                "SET lock_timeout = '2s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
            ));
        }

        fn session_id(&mut self) -> QueryResult<i64> {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "pg_backend_pid()",
            ))
            .get_result::<i32>(self)
            .map(i64::from)
        }

        fn kill_session(&mut self, id: i64) -> QueryResult<()> {
            // With a timeout, pg_terminate_backend waits until the session is gone.
            let gone: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                "pg_terminate_backend({id}, 10000)"
            )))
            .get_result(self)?;
            assert!(gone, "session {id} did not end within 10 s");
            Ok(())
        }
    }
}

// --- MariaDB / MySQL ------------------------------------------------------------------------

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;

    const SCHEMA: &str = "
        CREATE TABLE reporters (
            id INTEGER PRIMARY KEY AUTO_INCREMENT,
            first_name VARCHAR(255) NOT NULL,
            last_name VARCHAR(255) NOT NULL DEFAULT ''
        ) ENGINE = InnoDB;
        CREATE TABLE things (
            id INTEGER PRIMARY KEY AUTO_INCREMENT,
            num INTEGER NOT NULL UNIQUE
        ) ENGINE = InnoDB;
    ";

    fn admin() -> MysqlConnection {
        let url = server_url("MYSQL_URL").expect("MYSQL_URL");
        MysqlConnection::establish(&url).expect("connect to MYSQL_URL")
    }

    impl Ops for MysqlConnection {
        data_ops!();

        fn in_transaction(&mut self) -> QueryResult<bool> {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "@@in_transaction",
            ))
            .get_result::<i32>(self)
            .map(|open| open != 0)
        }
    }

    impl Backend for MysqlConnection {
        const KIND: Kind = Kind::Mysql;

        fn unavailable() -> Option<String> {
            missing_server("MYSQL_URL", "MariaDB")
        }

        fn create_database(scratch: &Scratch, name: &str) -> String {
            let database = scratch.database_name(name);
            admin()
                .batch_execute(&format!("CREATE DATABASE {database}"))
                .expect("create database");
            let base = server_url("MYSQL_URL").expect("MYSQL_URL");
            let server = base
                .rsplit_once('/')
                .map_or(base.as_str(), |(server, _)| server);
            let url = format!("{server}/{database}");
            MysqlConnection::establish(&url)
                .expect("connect to the test database")
                .batch_execute(SCHEMA)
                .expect("schema");
            url
        }

        fn drop_database(scratch: &Scratch, name: &str) {
            let database = scratch.database_name(name);
            let _ = admin().batch_execute(&format!(
                "SET SESSION lock_wait_timeout = 2; DROP DATABASE IF EXISTS {database}"
            ));
        }

        fn session_id(&mut self) -> QueryResult<i64> {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "CAST(CONNECTION_ID() AS SIGNED)",
            ))
            .get_result(self)
        }

        fn kill_session(&mut self, id: i64) -> QueryResult<()> {
            self.batch_execute(&format!("KILL {id}"))
        }
    }
}

// --- Running a test on a backend -------------------------------------------------------------

thread_local! {
    static KIND: Cell<Option<Kind>> = const { Cell::new(None) };
}

/// Runs `body` if backend `C` is available; else prints `SKIPPED: <why>`, or fails under CI.
pub fn run<C: Backend>(body: fn()) {
    if let Some(why) = C::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why} (CI=true: a missing server is a failure, not a skip)"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    body();
}

/// The backend of the test running on this thread.
pub fn kind() -> Kind {
    KIND.with(Cell::get)
        .expect("no test database on this thread: call setup::<C>() or TestDb::enter first")
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// A pool of 4 connections to `url`, the size every test assumes.
pub fn pool<C: Backend>(url: &str) -> Pooled<C> {
    let builder = Pool::builder()
        .max_size(4)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(10));
    let builder = match C::customizer() {
        Some(customizer) => builder.connection_customizer(customizer),
        None => builder,
    };
    builder
        .build(ConnectionManager::<C>::new(url))
        .expect("pool")
}

/// Databases of their own for the aliases "default" and "other", entered as this thread's
/// registry for as long as the value lives.
pub struct TestDb<C: Backend> {
    pub default: Pooled<C>,
    pub other: Pooled<C>,
    pub databases: Databases,
    pub default_url: String,
    pub other_url: String,
    _guard: DatabasesGuard,
    // Last, so that the pools are gone (their connections closed) before it drops the
    // databases.
    scratch: ScratchGuard<C>,
}

struct ScratchGuard<C: Backend> {
    scratch: Scratch,
    names: Vec<String>,
    _backend: std::marker::PhantomData<fn() -> C>,
}

impl<C: Backend> Drop for ScratchGuard<C> {
    fn drop(&mut self) {
        for name in &self.names {
            C::drop_database(&self.scratch, name);
        }
    }
}

/// The test's databases on backend `C`.
pub fn setup<C: Backend>() -> TestDb<C> {
    KIND.with(|kind| kind.set(Some(C::KIND)));
    let scratch = Scratch::new();
    let default_url = C::create_database(&scratch, "default");
    let other_url = C::create_database(&scratch, "other");
    let default = pool::<C>(&default_url);
    let other = pool::<C>(&other_url);
    let databases = Databases::new()
        .add("default", Database::new(default.clone()))
        .add("other", Database::new(other.clone()));
    let guard = databases.enter();
    TestDb {
        default,
        other,
        databases,
        default_url,
        other_url,
        _guard: guard,
        scratch: ScratchGuard {
            scratch,
            names: vec!["default".into(), "other".into()],
            _backend: std::marker::PhantomData,
        },
    }
}

impl<C: Backend> TestDb<C> {
    /// A fresh connection outside the pool, to look at what was committed.
    pub fn raw(&self, alias: &str) -> C {
        C::establish(self.url(alias)).expect("raw connection")
    }

    pub fn url(&self, alias: &str) -> &str {
        match alias {
            "default" => &self.default_url,
            "other" => &self.other_url,
            _ => panic!("no test database for alias {alias:?}"),
        }
    }

    /// A pool of 4 more connections to `alias`'s database, for registries of a test's own.
    pub fn new_pool(&self, alias: &str) -> Pooled<C> {
        pool::<C>(self.url(alias))
    }

    /// Enters this test's registry on another thread (and tells the helpers its backend).
    pub fn enter(databases: &Databases) -> DatabasesGuard {
        KIND.with(|kind| kind.set(Some(C::KIND)));
        databases.enter()
    }

    /// First names of the committed reporters on `alias`, sorted by (first, last) name.
    pub fn reporters(&self, alias: &str) -> Vec<String> {
        self.raw(alias).reporter_names().expect("read reporters")
    }

    /// Committed thing numbers on `alias`, in insertion order.
    pub fn things(&self, alias: &str) -> Vec<i32> {
        self.raw(alias).thing_nums().expect("read things")
    }
}

// --- Data helpers -----------------------------------------------------------------------------

pub fn insert_reporter<C: Backend>(conn: &mut C, first: &str, last: &str) -> QueryResult<()> {
    conn.insert_reporter(first, last)
}

/// Runs `f` on `alias`'s ambient connection, whatever the running test's connection type.
pub fn on_alias<R, E: From<Error>>(
    alias: &str,
    f: impl FnOnce(&mut dyn Ops) -> Result<R, E>,
) -> Result<R, E> {
    let db = diesel_atomic::db(alias);
    match kind() {
        Kind::Sqlite => db.connection(|conn: &mut SqliteConnection| f(conn)),
        #[cfg(feature = "postgres")]
        Kind::Postgres => db.connection(|conn: &mut PgConnection| f(conn)),
        #[cfg(feature = "mysql")]
        Kind::Mysql => db.connection(|conn: &mut MysqlConnection| f(conn)),
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?} is not compiled in"),
    }
}

/// Inserts a reporter through the default alias's ambient connection.
pub fn create_reporter(first: &str, last: &str) -> Result<(), Error> {
    on_alias("default", |conn| {
        conn.insert_reporter(first, last).map_err(Error::from)
    })
}

/// Inserts a reporter with an empty last name through the default alias's ambient connection.
pub fn add(name: &str) -> Result<(), TestError> {
    create_reporter(name, "")?;
    Ok(())
}

/// Inserts a reporter with an empty last name on the given connection.
pub fn add_on<C: Backend>(conn: &mut C, name: &str) -> Result<(), TestError> {
    conn.insert_reporter(name, "")?;
    Ok(())
}

/// Inserts a reporter with an empty last name through `alias`'s ambient connection.
pub fn add_to(alias: &str, name: &str) -> Result<(), Error> {
    on_alias(alias, |conn| {
        conn.insert_reporter(name, "").map_err(Error::from)
    })
}

/// Inserts `Thing(num = n)` through the default alias's ambient connection.
pub fn insert_thing(n: i32) -> Result<(), TestError> {
    // A database error stays `TestError::Db`, as when the test runs the INSERT itself.
    on_alias("default", |conn| {
        conn.insert_thing(n).map_err(TestError::from)
    })
}

/// The reporters the default alias's ambient connection sees (inside its open transaction).
pub fn visible_reporters() -> Vec<String> {
    on_alias("default", |conn| conn.reporter_names().map_err(Error::from)).expect("read reporters")
}

/// Sorted, owned names, for comparing with [`TestDb::reporters`].
pub fn names(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    names.sort();
    names
}

/// `conn` is not inside a transaction, by the server's own account.
#[track_caller]
pub fn assert_not_in_transaction<C: Backend>(conn: &mut C) {
    assert!(
        !conn
            .in_transaction()
            .expect("ask the server about its transaction"),
        "the connection was left inside a transaction"
    );
}

/// Checks out every connection of the pool at once and makes sure each is usable and outside
/// any transaction.
#[track_caller]
pub fn assert_pool_clean<C: Backend>(pool: &Pooled<C>) {
    let mut all: Vec<_> = (0..pool.max_size())
        .map(|_| {
            pool.get_timeout(Duration::from_secs(5))
                .expect("every pooled connection can be checked out (none is held by a block)")
        })
        .collect();
    for conn in &mut all {
        assert_not_in_transaction(&mut **conn);
    }
}

/// Silences the default panic message for the panics a test binary causes on purpose: those
/// whose message starts with `prefix`. The hook is installed once per test binary; every other
/// panic is still reported as usual.
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

/// Records callback runs, like Django's `notified` list.
#[derive(Clone, Default)]
pub struct Notified(pub Rc<RefCell<Vec<i32>>>);

impl Notified {
    pub fn push(&self, n: i32) {
        self.0.borrow_mut().push(n);
    }
    pub fn get(&self) -> Vec<i32> {
        self.0.borrow().clone()
    }
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
