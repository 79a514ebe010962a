//! The default alias from async code, as [`crate::transaction`] is from sync code.

use std::future::Future;

use diesel_async::AsyncConnection;

use super::{AsyncFunc, AsyncFunc0, db, run_ambient, run_explicit};
use crate::databases::DEFAULT_DB_ALIAS;
use crate::error::Error;
use crate::options::{BeginMode, BeginOptions, BlockOptions, Isolation};

/// Runs `f` as an atomic block on the default alias (`#[atomic] async fn` in ambient mode).
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// # use diesel_atomic::{Database, Databases, Error};
/// # type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// # let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// use diesel_atomic::aio::transaction;
/// let answer = transaction::atomic(async || {
///     assert!(transaction::in_atomic_block());
///     Ok::<_, Error>(42)
/// })
/// .await?;
/// assert_eq!(answer, 42);
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// # }
/// ```
pub async fn atomic<T, E, F>(f: F) -> Result<T, E>
where
    E: From<Error>,
    F: AsyncFunc0<Result<T, E>>,
{
    run_ambient(&BlockOptions::nested(DEFAULT_DB_ALIAS), f).await
}

/// A block with options, for async code: the builder twin of `#[atomic(...)] async fn`.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel_atomic::aio::transaction::Atomic;
/// let block = Atomic::new().using("other").durable(true);
/// # drop(block);
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
    /// A block on the default alias with Django's defaults.
    pub fn new() -> Atomic {
        let defaults = BlockOptions::nested(DEFAULT_DB_ALIAS);
        Atomic {
            using: defaults.using.to_owned(),
            savepoint: defaults.savepoint,
            durable: defaults.durable,
            begin: defaults.begin,
        }
    }

    /// The alias the block runs on.
    pub fn using(mut self, alias: &str) -> Atomic {
        alias.clone_into(&mut self.using);
        self
    }

    /// Whether a nested block gets a savepoint (default true).
    pub fn savepoint(mut self, on: bool) -> Atomic {
        self.savepoint = on;
        self
    }

    /// Whether the block must be outermost (default false).
    pub fn durable(mut self, on: bool) -> Atomic {
        self.durable = on;
        self
    }

    /// The isolation level of the block's BEGIN (outermost only).
    pub fn isolation(mut self, level: Isolation) -> Atomic {
        self.begin.isolation = Some(level);
        self
    }

    /// A read-only transaction (outermost only).
    pub fn read_only(mut self, on: bool) -> Atomic {
        self.begin.read_only = on;
        self
    }

    /// Runs the whole block, read-only, on one of the alias's replicas (rule P1), as
    /// `#[atomic(durable = true, read_only = true, replica = true)]` on an `async fn` does:
    /// outermost only (nested, `Error::ReplicaNested`); `true` also sets
    /// [`Atomic::read_only`]. See the sync
    /// [`Atomic::replica`](crate::transaction::Atomic::replica).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// let block = diesel_atomic::aio::transaction::Atomic::new().durable(true).replica(true);
    /// # drop(block);
    /// ```
    pub fn replica(mut self, on: bool) -> Atomic {
        self.begin.replica = on;
        if on {
            self.begin.read_only = true;
        }
        self
    }

    /// SQLite's lock mode at BEGIN (outermost only).
    pub fn begin(mut self, mode: BeginMode) -> Atomic {
        self.begin.mode = Some(mode);
        self
    }

    fn options(&self) -> BlockOptions<'_> {
        BlockOptions {
            using: &self.using,
            savepoint: self.savepoint,
            durable: self.durable,
            begin: self.begin,
        }
    }

    /// Runs `f` as an ambient block with these options.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # #[cfg(feature = "sqlite")] {
    /// # use diesel::SqliteConnection;
    /// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
    /// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// # use diesel_atomic::{Database, Databases, Error};
    /// # type Conn = SyncConnectionWrapper<SqliteConnection>;
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
    /// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
    /// # let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
    /// use diesel_atomic::aio::transaction::Atomic;
    /// Atomic::new().durable(true).run(async || Ok::<_, Error>(())).await?;
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// # }
    /// ```
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<Error>,
        F: AsyncFunc0<Result<T, E>>,
    {
        run_ambient(&self.options(), f).await
    }

    /// Runs `f` as a block on `conn` with these options (explicit mode).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # #[cfg(feature = "sqlite")] {
    /// # use diesel::SqliteConnection;
    /// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
    /// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// # use diesel_atomic::{Database, Databases, Error};
    /// # type Conn = SyncConnectionWrapper<SqliteConnection>;
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
    /// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
    /// # let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
    /// use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    /// use diesel_atomic::aio::transaction::Atomic;
    /// let mut conn = Conn::establish(":memory:").await.unwrap();
    /// Atomic::new()
    ///     .run_on(&mut conn, async |conn: &mut Conn| {
    ///         conn.batch_execute("CREATE TABLE t (id INTEGER)").await?;
    ///         Ok::<_, Error>(())
    ///     })
    ///     .await?;
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// # }
    /// ```
    pub async fn run_on<C, T, E, F>(&self, conn: &mut C, f: F) -> Result<T, E>
    where
        C: AsyncConnection + 'static,
        E: From<Error>,
        for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
    {
        run_explicit(&self.options(), conn, f).await
    }
}

/// [`Db::on_commit`](super::Db::on_commit) on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// # use diesel_atomic::{Database, Databases, Error};
/// # type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// # let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use diesel_atomic::aio::transaction;
/// let sent = Arc::new(AtomicBool::new(false));
/// let flag = sent.clone();
/// transaction::atomic(async || {
///     transaction::on_commit(move || flag.store(true, Ordering::SeqCst))?;
///     Ok::<_, Error>(())
/// })
/// .await?;
/// assert!(sent.load(Ordering::SeqCst));
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// # }
/// ```
pub fn on_commit(f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit(f)
}

/// [`Db::on_commit_robust`](super::Db::on_commit_robust) on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// # use diesel_atomic::{Database, Databases, Error};
/// # type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// # let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// use diesel_atomic::aio::transaction;
/// transaction::atomic(async || {
///     transaction::on_commit_robust(|| panic!("logged, not propagated"))?;
///     Ok::<_, Error>(())
/// })
/// .await?;
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// # }
/// ```
pub fn on_commit_robust(f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit_robust(f)
}

/// [`Db::on_commit_async`](super::Db::on_commit_async) on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// # use diesel_atomic::{Database, Databases, Error};
/// # type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// # let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// use diesel_atomic::aio::transaction;
/// transaction::atomic(async || {
///     transaction::on_commit_async(async { tokio::task::yield_now().await })?;
///     Ok::<_, Error>(())
/// })
/// .await?;
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// # }
/// ```
pub fn on_commit_async(f: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit_async(f)
}

/// [`Db::set_rollback`](super::Db::set_rollback) on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// # use diesel_atomic::{Database, Databases, Error};
/// # type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// # let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// use diesel_atomic::aio::transaction;
/// transaction::atomic(async || {
///     transaction::set_rollback(true)?;
///     assert!(transaction::get_rollback()?);
///     Ok::<_, Error>(())
/// })
/// .await?;
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// # }
/// ```
pub fn set_rollback(rollback: bool) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).set_rollback(rollback)
}

/// [`Db::get_rollback`](super::Db::get_rollback) on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// // Outside any block there is no flag to read (rule F1).
/// assert!(diesel_atomic::aio::transaction::get_rollback().is_err());
/// ```
pub fn get_rollback() -> Result<bool, Error> {
    db(DEFAULT_DB_ALIAS).get_rollback()
}

/// [`Db::in_atomic_block`](super::Db::in_atomic_block) on the default alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// assert!(!diesel_atomic::aio::transaction::in_atomic_block());
/// ```
pub fn in_atomic_block() -> bool {
    db(DEFAULT_DB_ALIAS).in_atomic_block()
}
