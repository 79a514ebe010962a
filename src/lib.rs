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
pub use atomic_macros::{atomic, non_atomic_requests};
pub use atomic_runtime::*;
