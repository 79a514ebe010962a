//! Django's `django.db.transaction`, for the default alias (and any alias through [`Atomic`]).
//!
//! ```
//! # extern crate atomic_runtime as diesel_atomic;
//! # use diesel::r2d2::{ConnectionManager, Pool};
//! use diesel::SqliteConnection;
//! use diesel_atomic::{transaction, Database, Databases, Error};
//!
//! # let pool = Pool::builder().max_size(1)
//! #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
//! let _registry = Databases::new().add("default", Database::new(pool)).enter();
//! transaction::atomic(|| {
//!     assert!(transaction::in_atomic_block());
//!     transaction::set_rollback(true)?; // leave without committing, and without an error
//!     Ok::<_, Error>(())
//! })?;
//! # Ok::<(), Error>(())
//! ```

use diesel::Connection;

pub use crate::api::savepoint::SavepointId;
pub use crate::options::{BeginMode, Isolation};

use crate::api::ambient::{self, db};
use crate::api::retry::{self, AsDieselError, RetryPolicy};
use crate::databases::DEFAULT_DB_ALIAS;
use crate::error::Error;
use crate::options::{BeginOptions, BlockOptions};

/// Runs `f` as an atomic block on the default alias: all of it commits, or none of it.
///
/// Nested blocks become savepoints; an `Err` or a panic rolls back and is returned or resumed
/// unchanged.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # use diesel::r2d2::{ConnectionManager, Pool};
/// # use diesel::SqliteConnection;
/// use diesel_atomic::{transaction, Database, Databases, Error};
///
/// # let pool = Pool::builder().max_size(1)
/// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
/// let _registry = Databases::new().add("default", Database::new(pool)).enter();
/// let answer = transaction::atomic(|| Ok::<_, Error>(42))?;
/// assert_eq!(answer, 42);
/// # Ok::<(), Error>(())
/// ```
pub fn atomic<T, E: From<Error>>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    db(DEFAULT_DB_ALIAS).atomic(f)
}

/// The builder form of `#[atomic(...)]`: holds the block's options only, so it can be reused
/// and nested (rule S2).
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::connection::SimpleConnection;
/// use diesel::{Connection, SqliteConnection};
/// use diesel_atomic::transaction::Atomic;
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// let block = Atomic::new().using("other").durable(true);
/// block.run_on(&mut conn, |conn| conn.batch_execute("CREATE TABLE t (id INTEGER)"))?;
/// # Ok::<(), diesel::result::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atomic {
    using: String,
    savepoint: bool,
    durable: bool,
    begin: BeginOptions,
}

impl Default for Atomic {
    fn default() -> Self {
        Atomic::new()
    }
}

impl Atomic {
    /// Default alias, savepoint on, not durable.
    pub fn new() -> Atomic {
        let defaults = BlockOptions::nested(DEFAULT_DB_ALIAS);
        Atomic {
            using: defaults.using.to_owned(),
            savepoint: defaults.savepoint,
            durable: defaults.durable,
            begin: defaults.begin,
        }
    }

    /// The database alias.
    pub fn using(mut self, alias: &str) -> Atomic {
        alias.clone_into(&mut self.using);
        self
    }

    /// Whether a nested block creates a savepoint (`false`: an error marks the enclosing
    /// transaction for rollback instead).
    pub fn savepoint(mut self, on: bool) -> Atomic {
        self.savepoint = on;
        self
    }

    /// Whether the block must be outermost (`Error::DurableNested` otherwise).
    pub fn durable(mut self, on: bool) -> Atomic {
        self.durable = on;
        self
    }

    /// The isolation level the block's transaction begins with (PostgreSQL and MySQL/MariaDB;
    /// SQLite only has `Serializable`). Only the block that begins the transaction may set it:
    /// on a nested block it is `Error::TransactionManagement`, so pair it with `durable(true)`.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use diesel_atomic::{transaction::Atomic, Isolation};
    /// let block = Atomic::new().durable(true).isolation(Isolation::RepeatableRead);
    /// # drop(block);
    /// ```
    pub fn isolation(mut self, level: Isolation) -> Atomic {
        self.begin.isolation = Some(level);
        self
    }

    /// Begins the transaction `READ ONLY` (PostgreSQL and MySQL/MariaDB): writes fail with
    /// diesel's `ReadOnlyTransaction` error. Outermost blocks only, as [`Atomic::isolation`].
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// let block = diesel_atomic::transaction::Atomic::new().durable(true).read_only(true);
    /// # drop(block);
    /// ```
    pub fn read_only(mut self, on: bool) -> Atomic {
        self.begin.read_only = on;
        self
    }

    /// Begins the block's transaction on one of the alias's replicas
    /// ([`Database::replica`](crate::Database::replica)), read-only (rule P1): `replica(true)`
    /// sets [`Atomic::read_only`] too. The block must be the outermost block of its alias
    /// (`Error::ReplicaNested` otherwise) and check its connection out: with
    /// [`Atomic::run_on`] it is `Error::ReplicaUnsupported`. Nested blocks, `connection()`
    /// and `read` inside it use the replica's connection. Before it begins, the alias's
    /// [`ReadYourWrites`](crate::ReadYourWrites) policy applies as for a read. On an alias
    /// without replicas it runs on the primary, still read-only, rather than failing: its
    /// answer is one a replica could have given (the primary is at least as fresh), and the
    /// same code then runs where no replica is configured (development, tests); a replica
    /// that is configured but unusable is `Error::ReplicaMisconfigured`.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// let block = diesel_atomic::transaction::Atomic::new().durable(true).replica(true);
    /// # drop(block);
    /// ```
    pub fn replica(mut self, on: bool) -> Atomic {
        self.begin.replica = on;
        if on {
            self.begin.read_only = true;
        }
        self
    }

    /// SQLite's lock mode at BEGIN (an error on other backends). Outermost blocks only, as
    /// [`Atomic::isolation`].
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use diesel_atomic::{transaction::Atomic, BeginMode};
    /// let block = Atomic::new().begin(BeginMode::Immediate);
    /// # drop(block);
    /// ```
    pub fn begin(mut self, mode: BeginMode) -> Atomic {
        self.begin.mode = Some(mode);
        self
    }

    /// Reruns the whole block after a serialization failure, deadlock or `SQLITE_BUSY`, per
    /// `policy`. A retried block is outermost by definition, so this also sets `durable`.
    /// The closure runs once per attempt: side effects outside the database belong in
    /// `on_commit`, which runs once, after the attempt that committed.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use diesel::{Connection, SqliteConnection};
    /// use diesel::connection::SimpleConnection;
    /// use diesel_atomic::{transaction::Atomic, RetryPolicy};
    ///
    /// let mut conn = SqliteConnection::establish(":memory:").unwrap();
    /// let block = Atomic::new().retry(RetryPolicy::new(5));
    /// block.run_on(&mut conn, |conn| conn.batch_execute("CREATE TABLE t (id INTEGER)"))?;
    /// # Ok::<(), diesel::result::Error>(())
    /// ```
    pub fn retry(self, policy: RetryPolicy) -> Retrying {
        Retrying {
            block: self.durable(true),
            policy,
        }
    }

    fn options(&self) -> BlockOptions<'_> {
        BlockOptions {
            using: &self.using,
            savepoint: self.savepoint,
            durable: self.durable,
            begin: self.begin,
        }
    }

    /// Runs `f` as a block on the alias's ambient connection.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// # use diesel::SqliteConnection;
    /// use diesel_atomic::{transaction::Atomic, Database, Databases, Error};
    ///
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// let _registry = Databases::new().add("other", Database::new(pool)).enter();
    /// let inside = Atomic::new()
    ///     .using("other")
    ///     .run(|| Ok::<_, Error>(diesel_atomic::db("other").in_atomic_block()))?;
    /// assert!(inside);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn run<T, E: From<Error>>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        ambient::run_ambient(&self.options(), f)
    }

    /// Runs `f` as a block on `conn` (explicit mode; no registry needed).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use diesel::connection::SimpleConnection;
    /// use diesel::{Connection, SqliteConnection};
    /// use diesel_atomic::transaction::Atomic;
    ///
    /// let mut conn = SqliteConnection::establish(":memory:").unwrap();
    /// conn.batch_execute("CREATE TABLE t (id INTEGER)")?;
    /// let failed = Atomic::new().run_on(&mut conn, |conn| {
    ///     conn.batch_execute("INSERT INTO t VALUES (1)")?;
    ///     Err::<(), _>(diesel::result::Error::RollbackTransaction)
    /// });
    /// assert!(failed.is_err(), "the INSERT was rolled back");
    /// # Ok::<(), diesel::result::Error>(())
    /// ```
    pub fn run_on<C, T, E>(
        &self,
        conn: &mut C,
        f: impl FnOnce(&mut C) -> Result<T, E>,
    ) -> Result<T, E>
    where
        C: Connection,
        E: From<Error>,
    {
        ambient::run_explicit(&self.options(), conn, f)
    }
}

/// Runs `f` after the default alias's transaction commits, or at once outside a block.
///
/// Never for work that rolled back; refused (`Error::OnCommitRefused`) where diesel-atomic
/// cannot see the commit. See [`Db::on_commit`](crate::Db::on_commit) for the exact rules.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// diesel_atomic::transaction::on_commit(|| println!("committed"))?;
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
pub fn on_commit(f: impl FnOnce() + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit(f)
}

/// [`on_commit`] whose panic is caught and logged, so later callbacks still run.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// diesel_atomic::transaction::on_commit_robust(|| println!("committed"))?;
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
pub fn on_commit_robust(f: impl FnOnce() + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit_robust(f)
}

/// Marks the default alias's transaction for rollback (`true`) or cancels that (`false`).
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// assert!(diesel_atomic::transaction::set_rollback(true).is_err(), "only inside a block");
/// ```
pub fn set_rollback(rollback: bool) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).set_rollback(rollback)
}

/// Whether the default alias's transaction is marked for rollback.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// assert!(diesel_atomic::transaction::get_rollback().is_err(), "only inside a block");
/// ```
pub fn get_rollback() -> Result<bool, Error> {
    db(DEFAULT_DB_ALIAS).get_rollback()
}

/// Whether a block is open on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// assert!(!diesel_atomic::transaction::in_atomic_block());
/// ```
pub fn in_atomic_block() -> bool {
    db(DEFAULT_DB_ALIAS).in_atomic_block()
}

/// Creates a manual savepoint on the default alias (a no-op id outside a block).
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// let id = diesel_atomic::transaction::savepoint()?;
/// diesel_atomic::transaction::savepoint_commit(id)?;
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
pub fn savepoint() -> Result<SavepointId, Error> {
    db(DEFAULT_DB_ALIAS).savepoint()
}

/// Releases a manual savepoint on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// let id = diesel_atomic::transaction::savepoint()?;
/// diesel_atomic::transaction::savepoint_commit(id)?;
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
pub fn savepoint_commit(id: SavepointId) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).savepoint_commit(id)
}

/// Rolls back to a manual savepoint on the default alias. While the transaction is marked for
/// rollback this is refused: call `set_rollback(false)` first (rule F3).
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// let id = diesel_atomic::transaction::savepoint()?;
/// diesel_atomic::transaction::savepoint_rollback(id)?;
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
pub fn savepoint_rollback(id: SavepointId) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).savepoint_rollback(id)
}

/// A durable [`Atomic`] block that is rerun after transient failures: see [`Atomic::retry`].
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # use diesel::r2d2::{ConnectionManager, Pool};
/// # use diesel::SqliteConnection;
/// use diesel_atomic::{transaction::Atomic, Database, Databases, Error, RetryPolicy};
///
/// # let pool = Pool::builder().max_size(1)
/// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
/// let _registry = Databases::new().add("default", Database::new(pool)).enter();
/// let mut attempts = 0;
/// Atomic::new().retry(RetryPolicy::new(3)).run(|| {
///     attempts += 1;
///     Ok::<_, Error>(())
/// })?;
/// assert_eq!(attempts, 1);
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retrying {
    block: Atomic,
    policy: RetryPolicy,
}

impl Retrying {
    /// Runs `f` as a block on the alias's ambient connection, once per attempt.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// # use diesel::SqliteConnection;
    /// use diesel_atomic::{transaction::Atomic, Database, Databases, Error, RetryPolicy};
    ///
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// let _registry = Databases::new().add("default", Database::new(pool)).enter();
    /// let answer = Atomic::new().retry(RetryPolicy::new(2)).run(|| Ok::<_, Error>(42))?;
    /// assert_eq!(answer, 42);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn run<T, E>(&self, f: impl FnMut() -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error> + AsDieselError,
    {
        retry::run_ambient_retry(&self.block.options(), self.policy, f)
    }

    /// Runs `f` as a block on `conn` (explicit mode), once per attempt.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use diesel::connection::SimpleConnection;
    /// use diesel::{Connection, SqliteConnection};
    /// use diesel_atomic::{transaction::Atomic, RetryPolicy};
    ///
    /// let mut conn = SqliteConnection::establish(":memory:").unwrap();
    /// Atomic::new()
    ///     .retry(RetryPolicy::new(2))
    ///     .run_on(&mut conn, |conn| conn.batch_execute("CREATE TABLE t (id INTEGER)"))?;
    /// # Ok::<(), diesel::result::Error>(())
    /// ```
    pub fn run_on<C, T, E>(
        &self,
        conn: &mut C,
        f: impl FnMut(&mut C) -> Result<T, E>,
    ) -> Result<T, E>
    where
        C: Connection,
        E: From<Error> + AsDieselError,
    {
        retry::run_explicit_retry(&self.block.options(), self.policy, conn, f)
    }
}
