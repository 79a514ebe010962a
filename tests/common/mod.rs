//! Shared fixtures: each test gets its own SQLite file databases in a temp directory.
#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
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

pub type Pooled = Pool<ConnectionManager<SqliteConnection>>;

const SCHEMA: &str = "
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

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Temp SQLite databases for the aliases "default" and "other", entered as this thread's
/// registry for as long as the value lives.
pub struct TestDb {
    pub dir: TempDir,
    pub default: Pooled,
    pub other: Pooled,
    pub databases: Databases,
    _guard: DatabasesGuard,
}

pub fn pool_at(path: &std::path::Path) -> Pooled {
    let pool = Pool::builder()
        .max_size(4)
        .connection_customizer(Box::new(Pragmas))
        .build(ConnectionManager::<SqliteConnection>::new(
            path.to_str().expect("temp paths are UTF-8"),
        ))
        .expect("pool");
    pool.get()
        .expect("connection")
        .batch_execute(SCHEMA)
        .expect("schema");
    pool
}

pub fn setup() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let default = pool_at(&dir.path().join("default.sqlite3"));
    let other = pool_at(&dir.path().join("other.sqlite3"));
    let databases = Databases::new()
        .add("default", Database::new(default.clone()))
        .add("other", Database::new(other.clone()));
    let guard = databases.enter();
    TestDb {
        dir,
        default,
        other,
        databases,
        _guard: guard,
    }
}

impl TestDb {
    /// A fresh connection outside the pool, to look at what was committed.
    pub fn raw(&self, alias: &str) -> SqliteConnection {
        let path = self.dir.path().join(format!("{alias}.sqlite3"));
        SqliteConnection::establish(path.to_str().unwrap()).expect("raw connection")
    }

    /// First names of the committed reporters on `alias`, ordered like Django's model.
    pub fn reporters(&self, alias: &str) -> Vec<String> {
        reporters::table
            .select(reporters::first_name)
            .order((reporters::first_name, reporters::last_name))
            .load(&mut self.raw(alias))
            .expect("read reporters")
    }

    /// Committed thing numbers on `alias`, in insertion order.
    pub fn things(&self, alias: &str) -> Vec<i32> {
        things::table
            .select(things::num)
            .order(things::id)
            .load(&mut self.raw(alias))
            .expect("read things")
    }
}

pub fn insert_reporter(conn: &mut SqliteConnection, first: &str, last: &str) -> QueryResult<()> {
    diesel::insert_into(reporters::table)
        .values((
            reporters::first_name.eq(first),
            reporters::last_name.eq(last),
        ))
        .execute(conn)
        .map(drop)
}

/// Inserts a reporter through the default alias's ambient connection.
pub fn create_reporter(first: &str, last: &str) -> Result<(), diesel_atomic::Error> {
    diesel_atomic::connection(|conn: &mut SqliteConnection| {
        insert_reporter(conn, first, last).map_err(diesel_atomic::Error::from)
    })
}

/// Inserts a reporter with an empty last name through the default alias's ambient connection.
pub fn add(name: &str) -> Result<(), TestError> {
    create_reporter(name, "")?;
    Ok(())
}

/// Inserts a reporter with an empty last name on the given connection.
pub fn add_on(conn: &mut SqliteConnection, name: &str) -> Result<(), TestError> {
    insert_reporter(conn, name, "")?;
    Ok(())
}

/// Inserts a reporter with an empty last name through `alias`'s ambient connection.
pub fn add_to(alias: &str, name: &str) -> Result<(), Error> {
    diesel_atomic::db(alias).connection(|conn: &mut SqliteConnection| {
        insert_reporter(conn, name, "").map_err(Error::from)
    })
}

/// Inserts `Thing(num = n)` through the default alias's ambient connection.
pub fn insert_thing(n: i32) -> Result<(), TestError> {
    diesel_atomic::connection(|conn: &mut SqliteConnection| {
        diesel::insert_into(things::table)
            .values(things::num.eq(n))
            .execute(conn)
            .map(drop)
            .map_err(TestError::from)
    })
}

/// Sorted, owned names, for comparing with [`TestDb::reporters`].
pub fn names(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    names.sort();
    names
}

/// `conn` is not inside a transaction: SQLite refuses a BEGIN within a transaction.
#[track_caller]
pub fn assert_not_in_transaction(conn: &mut SqliteConnection) {
    conn.batch_execute("BEGIN; ROLLBACK;")
        .expect("the connection was left inside a transaction");
}

/// Checks out every connection of the pool at once and makes sure none is inside a transaction.
#[track_caller]
pub fn assert_pool_clean(pool: &Pooled) {
    let mut all: Vec<_> = (0..pool.max_size())
        .map(|_| {
            pool.get_timeout(Duration::from_secs(5))
                .expect("every pooled connection can be checked out (none is held by a block)")
        })
        .collect();
    for conn in &mut all {
        assert_not_in_transaction(conn);
    }
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
