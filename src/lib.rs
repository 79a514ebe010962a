#![warn(missing_docs)]
//! Django's transaction model for diesel.
//!
//! `#[atomic]` makes a function all-or-nothing: its database work commits when it returns
//! `Ok`, and rolls back on `Err` or a panic. Nested blocks become savepoints, `on_commit` runs
//! work after the outermost commit, and several database aliases are independent.
//!
//! ```
//! use diesel::connection::SimpleConnection;
//! use diesel::prelude::*;
//! use diesel_atomic::atomic;
//!
//! #[atomic]
//! fn setup(conn: &mut SqliteConnection) -> QueryResult<()> {
//!     conn.batch_execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")?;
//!     conn.batch_execute("INSERT INTO users (name) VALUES ('ada')")
//! }
//!
//! let mut conn = SqliteConnection::establish(":memory:").unwrap();
//! setup(&mut conn)?;
//! # Ok::<(), diesel::result::Error>(())
//! ```
//!
//! See the README for ambient mode (a pooled connection per alias), `on_commit`, `using`,
//! the `transaction` module (Django's `django.db.transaction`) and `testing`.

/// # Examples
///
/// Explicit mode: the `conn` parameter is the connection the block runs on.
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel_atomic::atomic;
///
/// #[atomic]
/// fn create(conn: &mut SqliteConnection) -> QueryResult<()> {
///     conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
/// }
///
/// #[atomic]
/// fn insert_then_fail(conn: &mut SqliteConnection) -> QueryResult<()> {
///     conn.batch_execute("INSERT INTO t (id) VALUES (1)")?;
///     Err(diesel::result::Error::RollbackTransaction)
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// create(&mut conn)?;
/// assert!(insert_then_fail(&mut conn).is_err());
/// let rows: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM t")
///     .get_result(&mut conn)?;
/// assert_eq!(rows, 0, "the failed block was rolled back");
/// # Ok::<(), diesel::result::Error>(())
/// ```
///
/// Ambient mode: the block checks out the alias's connection; the body reaches it with
/// [`connection`] (default alias) or [`db`]`(alias).connection`.
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel_atomic::{atomic, db, Database, Databases, Error};
///
/// #[atomic(using = "other")]
/// fn touch() -> Result<(), Error> {
///     // `connection(..)` is the default alias's; `db(alias).connection(..)` any alias's.
///     db("other").connection(|conn: &mut SqliteConnection| Ok::<_, Error>(conn.batch_execute("SELECT 1")?))?;
///     assert!(db("other").in_atomic_block());
///     Ok(())
/// }
///
/// let pool = Pool::builder()
///     .max_size(1)
///     .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
///     .unwrap();
/// let _registry = Databases::new().add("other", Database::new(pool)).enter();
/// touch()?;
/// # Ok::<(), Error>(())
/// ```
///
/// A method whose receiver holds the connection (the repository pattern) names the field
/// with `conn = self.field`; the body uses `self` as usual. A `&mut self` method that says
/// nothing is a compile error, since the macro cannot tell whether `self` holds the connection
/// the body writes to; `ambient = true` says the block checks out the alias's connection on
/// purpose.
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel_atomic::atomic;
///
/// struct Accounts {
///     conn: SqliteConnection,
/// }
///
/// impl Accounts {
///     #[atomic(conn = self.conn)]
///     fn transfer(&mut self, from: i32, to: i32, amount: i64) -> QueryResult<()> {
///         self.conn.batch_execute(&format!(
///             "UPDATE accounts SET balance = balance - {amount} WHERE id = {from};
///              UPDATE accounts SET balance = balance + {amount} WHERE id = {to};"
///         ))?;
///         let overdrawn: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
///             "SELECT COUNT(*) FROM accounts WHERE balance < 0",
///         )
///         .get_result(&mut self.conn)?;
///         if overdrawn > 0 {
///             return Err(diesel::result::Error::RollbackTransaction);
///         }
///         Ok(())
///     }
/// }
///
/// let mut accounts = Accounts { conn: SqliteConnection::establish(":memory:").unwrap() };
/// accounts.conn.batch_execute(
///     "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
///      INSERT INTO accounts VALUES (1, 100), (2, 0);",
/// )?;
/// accounts.transfer(1, 2, 30)?;
/// assert!(accounts.transfer(1, 2, 500).is_err(), "rolled back: it would overdraw");
/// let balance: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
///     "SELECT balance FROM accounts WHERE id = 1",
/// )
/// .get_result(&mut accounts.conn)?;
/// assert_eq!(balance, 70);
/// # Ok::<(), diesel::result::Error>(())
/// ```
///
/// Stacked attributes nest in reading order, the first-written outermost (as Python's
/// decorators): here the block on `"b"` commits inside the block on `"a"`.
///
/// ```
/// use diesel::prelude::*;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel_atomic::{atomic, db, Database, Databases, Error};
///
/// #[atomic(using = "a")]
/// #[atomic(using = "b")]
/// fn both() -> Result<(), Error> {
///     db("b").on_commit(|| assert!(db("a").in_atomic_block(), "\"a\" commits last"))
/// }
///
/// let pool = || {
///     Pool::builder()
///         .max_size(1)
///         .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
///         .unwrap()
/// };
/// let _registry = Databases::new()
///     .add("a", Database::new(pool()))
///     .add("b", Database::new(pool()))
///     .enter();
/// both()?;
/// # Ok::<(), Error>(())
/// ```
///
/// # How the transaction begins: `isolation`, `read_only`, `begin`
///
/// They set up the `BEGIN` of the outermost block, so pair them with `durable = true`: on a
/// block nested in another they are an [`Error::BeginOptionsNested`] at run time, and
/// `durable = true` turns that into the clearer [`Error::DurableNested`]. A backend that cannot
/// honour a request refuses it at run time rather than silently running something weaker.
///
/// - `isolation = "serializable"`, `"repeatable_read"`, `"read_committed"` or
///   `"read_uncommitted"`: the isolation level (PostgreSQL: `BEGIN ISOLATION LEVEL ...`;
///   MySQL/MariaDB: `SET TRANSACTION ISOLATION LEVEL ...` before `START TRANSACTION`). SQLite
///   runs every transaction serializable and accepts only `"serializable"`.
/// - `read_only = true`: PostgreSQL's `BEGIN READ ONLY`, MySQL/MariaDB's `START TRANSACTION
///   READ ONLY`; writes then fail. SQLite has no read-only transactions and refuses it.
/// - `begin = "deferred"`, `"immediate"` or `"exclusive"`: SQLite's lock mode (`BEGIN
///   IMMEDIATE` takes the write lock at once, so a transaction that reads and then writes waits
///   for other writers instead of failing with `SQLITE_BUSY` midway); other backends refuse it.
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel::sql_types::{BigInt, Integer};
/// use diesel_atomic::atomic;
///
/// #[atomic(durable = true, isolation = "serializable", begin = "immediate")]
/// fn next_invoice_number(conn: &mut SqliteConnection) -> QueryResult<i32> {
///     let last: i32 = diesel::dsl::sql::<Integer>("SELECT MAX(n) FROM invoices").get_result(conn)?;
///     conn.batch_execute(&format!("INSERT INTO invoices (n) VALUES ({})", last + 1))?;
///     Ok(last + 1)
/// }
///
/// #[atomic(durable = true, read_only = true)]
/// fn count_invoices(conn: &mut SqliteConnection) -> QueryResult<i64> {
///     diesel::dsl::sql::<BigInt>("SELECT COUNT(*) FROM invoices").get_result(conn)
/// }
///
/// #[atomic]
/// fn nested(conn: &mut SqliteConnection) -> QueryResult<i32> {
///     next_invoice_number(conn)
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// conn.batch_execute("CREATE TABLE invoices (n INTEGER NOT NULL); INSERT INTO invoices VALUES (7)")?;
/// assert_eq!(next_invoice_number(&mut conn)?, 8);
///
/// // On PostgreSQL and MySQL/MariaDB this would be a READ ONLY transaction.
/// let refused = count_invoices(&mut conn).unwrap_err().to_string();
/// assert!(refused.contains("SQLite has no read-only transactions"), "{refused}");
///
/// // Only the outermost block begins the transaction.
/// let refused = nested(&mut conn).unwrap_err().to_string();
/// assert!(refused.contains("cannot be nested"), "{refused}");
/// # Ok::<(), diesel::result::Error>(())
/// ```
///
/// # Reading from a replica: `replica`
///
/// `#[atomic(durable = true, read_only = true, replica = true)]` runs the whole block on one of
/// the alias's replicas ([`Database::replica`]), read-only, after the alias's
/// [`ReadYourWrites`] check; nested blocks, [`connection`] and [`read`] inside it use the
/// replica's connection. It must be the outermost block of its alias ([`Error::ReplicaNested`]
/// otherwise); on an alias without replicas it runs on the primary. It needs `read_only =
/// true`, ambient mode and a sync `fn`, and cannot be `isolation = "serializable"`:
///
/// ```compile_fail
/// #[diesel_atomic::atomic(durable = true, replica = true)] // needs `read_only = true`
/// fn report() -> Result<(), diesel_atomic::Error> { Ok(()) }
/// ```
///
/// ```compile_fail
/// #[diesel_atomic::atomic(durable = true, read_only = true, replica = true)]
/// fn report(conn: &mut diesel::SqliteConnection) -> diesel::QueryResult<()> { Ok(()) }
/// ```
///
/// ```no_run
/// # #[cfg(feature = "postgres")] {
/// use diesel::prelude::*;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::sql_types::Bool;
/// use diesel_atomic::{atomic, Database, Databases};
///
/// #[atomic(durable = true, read_only = true, replica = true)]
/// fn on_standby() -> QueryResult<bool> {
///     diesel_atomic::connection(|conn: &mut PgConnection| {
///         diesel::select(diesel::dsl::sql::<Bool>("pg_is_in_recovery()")).get_result(conn)
///     })
/// }
///
/// let pool = |url: &str| Pool::new(ConnectionManager::<PgConnection>::new(url)).unwrap();
/// let _registry = Databases::new()
///     .add("default", Database::new(pool("postgres://primary/app")).replica(pool("postgres://standby/app")))
///     .enter();
/// assert!(on_standby()?);
/// # }
/// # Ok::<(), diesel::result::Error>(())
/// ```
///
/// # Rerunning after a transient failure: `retry`
///
/// `retry = n` (with `durable = true`) reruns the whole block, up to `n` more times with a
/// short randomised backoff ([`RetryPolicy::new`]`(n)`), when an attempt fails with a
/// serialization failure (SQLSTATE 40001), a deadlock (PostgreSQL 40P01, MySQL/MariaDB 1213)
/// or `SQLITE_BUSY`, from the body or from the `COMMIT`. Each failed attempt is rolled back
/// first. A `COMMIT` whose outcome is unknown (the connection broke during it) is never
/// retried, since it may have committed; panics and other errors are returned at once.
///
/// The body runs once per attempt: work outside the database belongs in
/// [`transaction::on_commit`], which runs once, after the attempt that committed. The error
/// type must implement [`AsDieselError`] (as `diesel::result::Error` and [`Error`] do) so
/// that the block can find the database error inside it.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel_atomic::{atomic, transaction};
///
/// static RECEIPTS_SENT: AtomicU32 = AtomicU32::new(0);
///
/// #[atomic(durable = true, retry = 5)]
/// fn transfer(conn: &mut SqliteConnection, from: i32, to: i32, amount: i64) -> QueryResult<()> {
///     conn.batch_execute(&format!(
///         "UPDATE accounts SET balance = balance - {amount} WHERE id = {from};
///          UPDATE accounts SET balance = balance + {amount} WHERE id = {to};"
///     ))?;
///     // Not sent by an attempt that is rolled back and rerun.
///     transaction::on_commit(|| {
///         RECEIPTS_SENT.fetch_add(1, Ordering::SeqCst);
///     })?;
///     Ok(())
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// conn.batch_execute(
///     "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
///      INSERT INTO accounts VALUES (1, 100), (2, 0);",
/// )?;
/// transfer(&mut conn, 1, 2, 30)?;
/// assert_eq!(RECEIPTS_SENT.load(Ordering::SeqCst), 1);
/// # Ok::<(), diesel::result::Error>(())
/// ```
///
/// # Compile errors
///
/// Misuse is a compile error on the tokens at fault; the function is kept as written, so
/// nothing else fails because of it. Some of them:
///
/// A misspelt argument (``unknown argument `usin`; did you mean `using`?``):
///
/// ```compile_fail
/// #[diesel_atomic::atomic(usin = "other")]
/// fn signup() -> Result<(), diesel_atomic::Error> { Ok(()) }
/// ```
///
/// A return type that is not a `Result`:
///
/// ```compile_fail
/// #[diesel_atomic::atomic]
/// fn count_users() -> i32 { 0 }
/// ```
///
/// A connection parameter that is not `&mut`:
///
/// ```compile_fail
/// use diesel::prelude::*;
///
/// #[diesel_atomic::atomic]
/// fn count_users(conn: &SqliteConnection) -> QueryResult<i64> { Ok(0) }
/// ```
///
/// A `&mut` parameter the macro cannot recognise as a connection or not, such as a type alias
/// (``#[atomic] cannot tell whether `db` is a connection: write `#[atomic(conn = db)]` ...``):
///
/// ```compile_fail
/// use diesel::prelude::*;
///
/// type DbConn = SqliteConnection;
///
/// #[diesel_atomic::atomic]
/// fn count_users(db: &mut DbConn) -> QueryResult<i64> { Ok(0) }
/// ```
///
/// diesel's synchronous connection in an `async fn` (it needs a diesel-async one, feature
/// `async`):
///
/// ```compile_fail
/// #[diesel_atomic::atomic]
/// async fn signup(conn: &mut diesel::SqliteConnection) -> Result<(), diesel_atomic::Error> {
///     let _ = conn;
///     Ok(())
/// }
/// ```
///
/// `durable = true` with `savepoint = false`, which could have no effect:
///
/// ```compile_fail
/// #[diesel_atomic::atomic(durable = true, savepoint = false)]
/// fn signup() -> Result<(), diesel_atomic::Error> { Ok(()) }
/// ```
///
/// `retry` without `durable = true`: only the outermost block can be rerun, since a transient
/// failure loses the whole transaction:
///
/// ```compile_fail
/// #[diesel_atomic::atomic(retry = 3)]
/// fn transfer() -> Result<(), diesel_atomic::Error> { Ok(()) }
/// ```
///
/// An error type the block cannot report its own errors in (no
/// `From<diesel_atomic::Error>`), reported by the compiler at the return type:
///
/// ```compile_fail,E0277
/// struct SignupError;
///
/// #[diesel_atomic::atomic]
/// fn signup() -> Result<(), SignupError> { Ok(()) }
/// ```
///
/// # A renamed dependency
///
/// `crate = "path"` says where `diesel_atomic` is:
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel_atomic as transactions;
///
/// #[transactions::atomic(crate = "transactions")]
/// fn ping(conn: &mut SqliteConnection) -> QueryResult<()> {
///     conn.batch_execute("SELECT 1")
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// ping(&mut conn)?;
/// # Ok::<(), diesel::result::Error>(())
/// ```
pub use atomic_macros::atomic;

/// Django's `@transaction.non_atomic_requests`: the view runs outside the per-request
/// transaction of one alias (`"default"` unless `using = "alias"`). Stack the attribute to
/// opt out on several aliases. The function may return anything.
///
/// While the function runs inside [`request()`], the exempt alias is in autocommit mode:
/// `in_atomic_block()` is false there, and the function's own `#[atomic]` blocks are outermost
/// transactions that commit at their own end (`durable = true` is allowed). The request's
/// transaction begins at the view's first use of an alias, so put the attribute on the function
/// `request()` runs (or call it before anything else touches the alias); outside `request()`
/// it does nothing.
///
/// An atomic block inside a non-atomic view is a separate `#[atomic]` function the view
/// calls; both attributes on one function for the same alias are a compile error.
///
/// ```
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel_atomic::{atomic, non_atomic_requests};
///
/// #[atomic]
/// fn save(conn: &mut SqliteConnection) -> QueryResult<()> {
///     conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
/// }
///
/// /// Exempt on the default alias and on "replica".
/// #[non_atomic_requests]
/// #[non_atomic_requests(using = "replica")]
/// fn import_view(conn: &mut SqliteConnection) -> String {
///     match save(conn) {
///         Ok(()) => "imported".to_owned(),
///         Err(error) => error.to_string(),
///     }
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// assert_eq!(import_view(&mut conn), "imported");
/// ```
///
/// ```compile_fail
/// #[diesel_atomic::atomic]
/// #[diesel_atomic::non_atomic_requests]
/// fn view() -> Result<(), diesel_atomic::Error> { Ok(()) }
/// ```
pub use atomic_macros::non_atomic_requests;

/// Django's `TestCase` as a test attribute: the test's database work runs inside a transaction
/// that is rolled back when the test ends, whether it passed, failed or panicked, so tests
/// never see each other's rows.
///
/// `#[diesel_atomic::test]` makes the function a `#[test]` (do not add one). It enters the
/// test's registry (`setup = path`, a `fn() -> Databases`; without it, the registry entered
/// on the thread, else the installed one), begins a [`testing::TestTransaction`] on every
/// alias of it, runs the body and rolls back. Inside, as under Django's `TestCase`:
/// `#[atomic]` blocks are savepoints, `durable = true` blocks are allowed directly inside,
/// `on_commit` callbacks never run ([`testing::capture_on_commit_callbacks`] shows them), and
/// [`request()`] (and `aio::request`) shares the test's transaction, its commits becoming
/// savepoint releases. A test that cannot begin its transaction (no registry, a server down)
/// fails.
///
/// ```
/// use diesel::prelude::*;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel_atomic::{atomic, connection, transaction, Database, Databases, Error};
///
/// fn test_databases() -> Databases {
///     let pool = Pool::builder()
///         .max_size(1)
///         .build(ConnectionManager::<SqliteConnection>::new("file:app-tests?mode=memory&cache=shared"))
///         .unwrap();
///     Databases::new().add("default", Database::new(pool))
/// }
///
/// #[atomic(durable = true)]
/// fn signup() -> Result<(), Error> {
///     connection(|conn: &mut SqliteConnection| {
///         diesel::sql_query("CREATE TABLE IF NOT EXISTS users (name TEXT)").execute(conn)?;
///         diesel::sql_query("INSERT INTO users VALUES ('ada')").execute(conn)
///     })?;
///     transaction::on_commit(|| println!("welcome mail"))?;
///     Ok(())
/// }
///
/// #[diesel_atomic::test(setup = test_databases)]
/// fn signup_creates_a_user() -> Result<(), Error> {
///     let ((), callbacks) = diesel_atomic::testing::capture_on_commit_callbacks(false, || {
///         signup().unwrap();
///     });
///     assert_eq!(callbacks.len(), 1, "the mail waits for a COMMIT that never comes");
///     Ok(()) // rolled back here: the next test finds no user
/// }
/// # fn main() {}
/// ```
///
/// `transaction = false` runs the test without the wrapping transaction (Django's
/// `TransactionTestCase`): its blocks commit for real and their callbacks run, so it must
/// clean up after itself.
///
/// An `async fn` test (feature `async`) runs on a multi-thread tokio runtime of its own,
/// polled on the test's thread (as `#[tokio::test(flavor = "multi_thread")]` does), whose
/// threads enter the test's registry too: the async aliases get `aio::testing::TestTransaction`,
/// rolled back with `.rollback().await`, the sync ones the sync transaction. A plain `fn` test begins on the
/// sync aliases only. Build an async test's pools in `setup`: a pooled PostgreSQL or MySQL
/// connection belongs to the runtime that opened it. Work the test spawns on other tasks or
/// threads runs outside the test's transaction (on connections of its own), as it does in
/// Django.
///
/// The test function takes no parameters:
///
/// ```compile_fail
/// #[diesel_atomic::test]
/// fn signup(conn: &mut diesel::SqliteConnection) {}
/// # fn main() {}
/// ```
pub use atomic_macros::test;
pub use atomic_runtime::{
    AsDieselError, BeginMode, DEFAULT_DB_ALIAS, Database, Databases, DatabasesGuard, Db, Error,
    Isolation, ReadYourWrites, ReplicaPool, RetryPolicy, SavepointId, connection, create, db,
    get_or_create, get_or_insert, read, request, testing, transaction, update_or_create,
    update_or_insert,
};

#[cfg(feature = "async")]
pub use atomic_runtime::aio;

#[doc(hidden)]
pub use atomic_runtime::__private;

#[cfg(feature = "axum")]
pub mod axum;

#[cfg(feature = "tower")]
pub mod tower;
