//! The async API (feature `async`): the mirror of the crate root for diesel-async code, on the
//! same rules (docs/SEMANTICS.md), plus rules A1–A4 for tasks and cancellation.
//!
//! State is per alias and per tokio task: the outermost async block (or `aio::connection`
//! call) of a task creates it, and everything it awaits shares it. A task started with
//! `tokio::spawn` inside a block has its own, so its blocks are independent transactions on
//! other connections. A block whose future is dropped (a `timeout`, a `select!`, a client
//! that went away) never commits: see rule A2 in docs/SEMANTICS.md.
//!
//! SQLite runs through diesel-async's `SyncConnectionWrapper`, whose cancellation blocks in
//! place until the running statement ends (`tokio::task::block_in_place`): use it on a
//! multi-thread tokio runtime.
//!
//! ```
//! # extern crate atomic_runtime as diesel_atomic;
//! # #[cfg(feature = "sqlite")] {
//! use diesel::SqliteConnection;
//! use diesel_async::SimpleAsyncConnection;
//! use diesel_async::pooled_connection::AsyncDieselConnectionManager;
//! use diesel_async::pooled_connection::deadpool::Pool;
//! use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
//! use diesel_atomic::{aio, Database, Databases, Error};
//!
//! type Conn = SyncConnectionWrapper<SqliteConnection>;
//!
//! # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
//! let manager = AsyncDieselConnectionManager::<Conn>::new(":memory:");
//! let pool = Pool::builder(manager).max_size(1).build().unwrap();
//! let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
//! aio::transaction::atomic(async || {
//!     aio::connection(async |conn: &mut Conn| {
//!         conn.batch_execute("CREATE TABLE t (id INTEGER)").await
//!     })
//!     .await?;
//!     aio::transaction::on_commit(|| println!("committed"))?;
//!     Ok::<(), Error>(())
//! })
//! .await?;
//! # Ok::<(), Error>(())
//! # }).unwrap();
//! # }
//! ```

use std::future::Future;

use diesel_async::{AsyncConnection, TransactionManager};
use futures_util::future::BoxFuture;

use crate::adapter::async_connection::{AsyncPooledConn, AsyncTx};
use crate::adapter::async_replication;
use crate::databases::DEFAULT_DB_ALIAS;
use crate::engine::aio::block::{self, Outcome};
use crate::engine::aio::hooks;
use crate::engine::aio::lend::Lent;
use crate::engine::aio::replica;
use crate::engine::aio::state::{self, AsyncCallback, InBlock};
use crate::engine::aio::{ambient, explicit};
use crate::engine::rules;
use crate::error::Error;
use crate::options::BlockOptions;
use crate::scope::aio_request;

mod create;
mod retry;
pub mod testing;
pub mod transaction;

pub use create::{get_or_create, update_or_create};
#[doc(hidden)]
pub use retry::{run_ambient_retry, run_explicit_field_retry, run_explicit_retry};

/// An async closure taking `Arg` whose future is nameable, so bounds (`Send`) can be put on it.
///
/// `AsyncFnOnce`'s future type is not nameable on stable Rust; diesel-async works around this
/// with a private trait of the same shape (`AsyncFunc`, diesel-async PR #284), which a
/// library cannot reuse. Every async closure implements it; you never implement it yourself.
pub trait AsyncFunc<Arg, R>:
    AsyncFnOnce(Arg) -> R + FnOnce(Arg) -> <Self as AsyncFunc<Arg, R>>::Fut
{
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, Arg, Fut, R> AsyncFunc<Arg, R> for F
where
    F: AsyncFnOnce(Arg) -> R + FnOnce(Arg) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// [`AsyncFunc`] for closures taking nothing.
pub trait AsyncFunc0<R>: AsyncFnOnce() -> R + FnOnce() -> <Self as AsyncFunc0<R>>::Fut {
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, Fut, R> AsyncFunc0<R> for F
where
    F: AsyncFnOnce() -> R + FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// [`AsyncFunc`] for closures called more than once (retrying blocks).
pub trait AsyncFuncMut<Arg, R>:
    AsyncFnMut(Arg) -> R + FnMut(Arg) -> <Self as AsyncFuncMut<Arg, R>>::Fut
{
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, Arg, Fut, R> AsyncFuncMut<Arg, R> for F
where
    F: AsyncFnMut(Arg) -> R + FnMut(Arg) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// [`AsyncFuncMut`] for closures taking nothing.
pub trait AsyncFuncMut0<R>: AsyncFnMut() -> R + FnMut() -> <Self as AsyncFuncMut0<R>>::Fut {
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, Fut, R> AsyncFuncMut0<R> for F
where
    F: AsyncFnMut() -> R + FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// A pool of diesel-async connections that an alias can use: deadpool's and bb8's pools of
/// `AsyncDieselConnectionManager<C>` (see [`Database::new_async`](crate::Database::new_async)).
/// Implemented by diesel-atomic only.
pub trait AsyncPool: Send + Sync + 'static {
    #[doc(hidden)]
    fn checkout<'a>(
        &'a self,
        alias: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn AsyncPooledConn>, Error>>;
    /// A connection checked out for an outermost block and, when `plan` (which looks at it
    /// first) answers `true`, its plain BEGIN sent: one future for both, so the common path
    /// sets up one boxed future less (a PostgreSQL BEGIN's is over a kilobyte).
    #[doc(hidden)]
    fn checkout_begun<'a>(
        &'a self,
        alias: &'a str,
        plan: &'a mut (dyn FnMut(&mut dyn AsyncTx) -> Result<bool, Error> + Send),
    ) -> BoxFuture<'a, Result<Box<dyn AsyncPooledConn>, Error>> {
        Box::pin(async move {
            let mut pooled = self.checkout(alias).await?;
            if plan(pooled.inner())? {
                pooled.inner().begin().await?;
            }
            Ok(pooled)
        })
    }
    #[doc(hidden)]
    fn connection_type(&self) -> &'static str;
    /// Whether replicas of this pool's connection type can be read from (see
    /// [`Database::replica`](crate::Database::replica)): `Err` says why not.
    #[doc(hidden)]
    fn replica_support(&self) -> Result<(), String>;
}

impl<M> AsyncPool for deadpool::managed::Pool<M>
where
    M: deadpool::managed::Manager + 'static,
    M::Type: AsyncConnection + 'static,
    M::Error: std::fmt::Display,
{
    fn checkout<'a>(
        &'a self,
        alias: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn AsyncPooledConn>, Error>> {
        Box::pin(async move {
            let object = deadpool_get(self, alias).await?;
            Ok(Box::new(object) as Box<dyn AsyncPooledConn>)
        })
    }

    fn checkout_begun<'a>(
        &'a self,
        alias: &'a str,
        plan: &'a mut (dyn FnMut(&mut dyn AsyncTx) -> Result<bool, Error> + Send),
    ) -> BoxFuture<'a, Result<Box<dyn AsyncPooledConn>, Error>> {
        Box::pin(async move {
            let mut object = Box::new(deadpool_get(self, alias).await?);
            let conn: &mut M::Type = &mut object;
            // Dropped during the BEGIN, the object goes back to the pool marked broken by
            // diesel-async: discarded (rule A2).
            if plan(conn)? {
                <M::Type as AsyncConnection>::TransactionManager::begin_transaction(conn).await?;
            }
            Ok(object as Box<dyn AsyncPooledConn>)
        })
    }

    fn connection_type(&self) -> &'static str {
        std::any::type_name::<M::Type>()
    }

    fn replica_support(&self) -> Result<(), String> {
        async_replication::supports::<M::Type>()
    }
}

/// A connection from a deadpool pool, its failure as the alias's error.
async fn deadpool_get<M>(
    pool: &deadpool::managed::Pool<M>,
    alias: &str,
) -> Result<deadpool::managed::Object<M>, Error>
where
    M: deadpool::managed::Manager,
    M::Error: std::fmt::Display,
{
    pool.get().await.map_err(|error| Error::AsyncPool {
        alias: alias.to_owned(),
        message: error.to_string(),
    })
}

impl<M> AsyncPool for bb8::Pool<M>
where
    M: bb8::ManageConnection,
    M::Connection: AsyncConnection + 'static,
    M::Error: std::error::Error + 'static,
{
    fn checkout<'a>(
        &'a self,
        alias: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn AsyncPooledConn>, Error>> {
        // In a task of its own: bb8's `get` validates an idle connection (`test_on_check_out`,
        // a ping) while holding it in a guard that, if `get` is dropped mid-ping, hands it back
        // to the pool; `has_broken` sees nothing wrong with it, yet on MariaDB (mysql_async)
        // the next user reads the ping's leftovers ("can't parse: buf doesn't have enough
        // data"). A block's future may be dropped anywhere, its checkout included (rule A2),
        // so the checkout must not be: a spawned one runs to the end, and a connection nobody
        // waits for any more goes back to the pool whole. (deadpool discards an object whose
        // recycling was dropped, so it needs none of this.)
        let pool = self.clone();
        let checkout =
            tokio::spawn(async move { pool.get_owned().await.map_err(|error| error.to_string()) });
        Box::pin(async move {
            match checkout.await {
                Ok(Ok(conn)) => Ok(Box::new(conn) as Box<dyn AsyncPooledConn>),
                Ok(Err(message)) => Err(Error::AsyncPool {
                    alias: alias.to_owned(),
                    message,
                }),
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(join) => Err(Error::AsyncPool {
                    alias: alias.to_owned(),
                    message: join.to_string(),
                }),
            }
        })
    }

    fn connection_type(&self) -> &'static str {
        std::any::type_name::<M::Connection>()
    }

    fn replica_support(&self) -> Result<(), String> {
        async_replication::supports::<M::Connection>()
    }
}

/// Runs `f` with the default alias's connection: the open block's, or a pooled one in
/// autocommit mode for the call. The async twin of [`connection`](crate::connection): inside
/// `f`, ambient access to the alias is `Error::ConnectionInUse` (never a deadlock).
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// use diesel_async::SimpleAsyncConnection;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel_atomic::{aio, Database, Databases};
/// type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// aio::connection(async |conn: &mut Conn| conn.batch_execute("SELECT 1").await).await?;
/// # Ok::<(), diesel_atomic::Error>(())
/// # }).unwrap();
/// # }
/// ```
pub async fn connection<C, T, E, F>(f: F) -> Result<T, E>
where
    C: AsyncConnection + 'static,
    E: From<Error>,
    for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
{
    db(DEFAULT_DB_ALIAS).connection(f).await
}

/// Runs `f`, which only reads, on the default alias's connection for reads: the async twin
/// of [`read`](crate::read). See [`Db::read`].
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// use diesel::sql_types::Integer;
/// use diesel_async::RunQueryDsl;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel_atomic::{aio, Database, Databases};
/// type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// // No replica configured: the read runs on the primary.
/// let answer = aio::read(async |conn: &mut Conn| {
///     diesel::select(diesel::dsl::sql::<Integer>("42")).get_result::<i32>(conn).await
/// })
/// .await?;
/// assert_eq!(answer, 42);
/// # Ok::<(), diesel::result::Error>(())
/// # }).unwrap();
/// # }
/// ```
pub async fn read<C, T, E, F>(f: F) -> Result<T, E>
where
    C: AsyncConnection + 'static,
    E: From<Error>,
    for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
{
    db(DEFAULT_DB_ALIAS).read(f).await
}

/// The async handle for one alias; `db(DEFAULT_DB_ALIAS)` is what the free functions use.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// assert!(!diesel_atomic::aio::db("other").in_atomic_block());
/// ```
pub fn db(alias: &str) -> Db<'_> {
    Db { alias }
}

/// One alias, from async code: its connection, blocks, rollback flag and on_commit queue.
#[derive(Clone, Copy, Debug)]
pub struct Db<'a> {
    alias: &'a str,
}

impl Db<'_> {
    /// The alias.
    pub fn alias(&self) -> &str {
        self.alias
    }

    /// Runs `f`, which only reads, on a connection chosen for reading (rules P1 and P2), as
    /// the sync [`Db::read`](crate::Db::read) does, for the current task:
    ///
    /// - inside a block of the alias (or a request's transaction), the block's connection: a
    ///   transaction reads its own writes;
    /// - outside blocks, a connection of one of the alias's replicas
    ///   ([`Database::replica`](crate::Database::replica) with a deadpool or bb8 pool), in
    ///   turn; after this task (or, inside [`request`], this request) committed on the alias,
    ///   its [`ReadYourWrites`](crate::ReadYourWrites) policy decides: wait (bounded, without
    ///   blocking the executor) until that replica has replayed the commit, read the primary,
    ///   or neither;
    /// - without replicas, a pooled connection of the primary, as [`Db::connection`].
    ///
    /// A replica that cannot be reached or lags beyond the policy's bound makes the read go
    /// to the primary, with one WARN event naming the alias and the reason. A write in `f`
    /// that reaches a replica fails with the database's read-only error.
    ///
    /// A task's commits are remembered from one call to the next (an `#[atomic]` handler
    /// that returns, then a read in the same task); for the last 65,536 tasks that committed
    /// on an alias with replicas, a task that has ended being indistinguishable from one that
    /// has not.
    ///
    /// ```no_run
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # #[cfg(feature = "async-postgres")] {
    /// use diesel::sql_types::Bool;
    /// use diesel_async::{AsyncPgConnection, RunQueryDsl};
    /// use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
    /// use diesel_atomic::{aio, Database, Databases};
    ///
    /// # async fn run() -> Result<(), diesel_atomic::Error> {
    /// let pool = |url: &str| {
    ///     Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
    ///         .build()
    ///         .unwrap()
    /// };
    /// let _registry = Databases::new()
    ///     .add(
    ///         "reports",
    ///         Database::new_async(pool("postgres://primary/app"))
    ///             .replica(pool("postgres://standby/app")),
    ///     )
    ///     .enter();
    /// let on_standby = aio::db("reports")
    ///     .read(async |conn: &mut AsyncPgConnection| {
    ///         diesel::select(diesel::dsl::sql::<Bool>("pg_is_in_recovery()"))
    ///             .get_result::<bool>(conn)
    ///             .await
    ///     })
    ///     .await?;
    /// assert!(on_standby);
    /// # Ok(())
    /// # }
    /// # }
    /// ```
    pub async fn read<C, T, E, F>(&self, f: F) -> Result<T, E>
    where
        C: AsyncConnection + 'static,
        E: From<Error>,
        for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
    {
        let alias = self.alias;
        state::scoped(Box::pin(async move {
            aio_request::touch(alias).await?;
            let lent = replica::lend_for_read(alias).await?;
            run_lent(alias, lent, f).await
        }))
        .await
    }

    /// [`connection`] on this alias.
    pub async fn connection<C, T, E, F>(&self, f: F) -> Result<T, E>
    where
        C: AsyncConnection + 'static,
        E: From<Error>,
        for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
    {
        let alias = self.alias;
        state::scoped(Box::pin(async move {
            aio_request::touch(alias).await?;
            let lent = Lent::take(alias).await?;
            run_lent(alias, lent, f).await
        }))
        .await
    }

    /// An ambient block on this alias: `transaction::Atomic::new().using(alias).run(f)`.
    pub async fn atomic<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<Error>,
        F: AsyncFunc0<Result<T, E>>,
    {
        run_ambient(&BlockOptions::nested(self.alias), f).await
    }

    /// Registers `f` to run after the outermost COMMIT of this task's open block on the alias
    /// (rule C1), or now outside any block.
    pub fn on_commit(&self, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        hooks::on_commit(self.alias, AsyncCallback::plain(f, false))
    }

    /// Like [`Db::on_commit`]; a panic of `f` is caught and logged, and the callbacks after it
    /// still run (rule C4).
    pub fn on_commit_robust(&self, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        hooks::on_commit(self.alias, AsyncCallback::plain(f, true))
    }

    /// Registers a future to be awaited after the outermost COMMIT, in order with the plain
    /// callbacks, before the block's future resolves (rule A4). Outside any block it is
    /// spawned on the current tokio runtime.
    pub fn on_commit_async(
        &self,
        f: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        hooks::on_commit(self.alias, AsyncCallback::future(f, false))
    }

    /// Marks the innermost block with a savepoint to roll back (rule F2).
    pub fn set_rollback(&self, rollback: bool) -> Result<(), Error> {
        if aio_request::rollback_flag(self.alias, Some(rollback)).is_some() {
            return Ok(());
        }
        if !state::has_table() {
            return rules::set_rollback(
                &mut crate::engine::state::AliasState::<state::AsyncFlavor>::new(self.alias, 0),
                rollback,
            );
        }
        state::with(self.alias, |state| rules::set_rollback(state, rollback))
    }

    /// Whether the innermost block will roll back (rule F1).
    pub fn get_rollback(&self) -> Result<bool, Error> {
        if let Some(flag) = aio_request::rollback_flag(self.alias, None) {
            return Ok(flag);
        }
        state::peek(self.alias, |state| rules::get_rollback(state, self.alias))
    }

    /// Whether this task is inside a block of the alias.
    pub fn in_atomic_block(&self) -> bool {
        if aio_request::pending(self.alias) {
            return true;
        }
        state::peek(self.alias, |state| {
            state.is_some_and(|state| state.in_atomic_block())
        })
    }
}

/// Runs `view` as one request: Django's `ATOMIC_REQUESTS` for async code (rules Q1–Q3). On
/// every alias added with `atomic_requests(true)`, the view's work is one transaction, begun
/// at the view's first use of the alias (a request that never uses it sends no BEGIN),
/// committed when the view returns `Ok`, rolled back on `Err` or a panic, and never committed
/// when the request's future is dropped (a client that went away: rule A2).
/// `#[non_atomic_requests]` on an `async fn` view exempts its aliases.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel_atomic::{aio, Database, Databases, Error};
/// type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// let _registry = Databases::new()
///     .add("default", Database::new_async(pool).atomic_requests(true))
///     .enter();
/// let answer = aio::request(async {
///     assert!(aio::transaction::in_atomic_block());
///     Ok::<_, Error>(42)
/// })
/// .await?;
/// assert_eq!(answer, 42);
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// # }
/// ```
pub async fn request<T, E: From<Error>>(view: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    aio_request::request(view).await
}

// --- What the attribute's expansions call (re-exported by `__private::aio`) ------------------

/// Runs `f` on a lent connection and gives it back.
async fn run_lent<C, T, E, F>(alias: &str, mut lent: Lent<'_>, f: F) -> Result<T, E>
where
    C: AsyncConnection + 'static,
    E: From<Error>,
    for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
{
    let expected = lent.type_name();
    let token = lent.token;
    let Some(conn) = lent.conn().as_any().downcast_mut::<C>() else {
        lent.give_back().await;
        return Err(Error::WrongConnectionType {
            alias: alias.to_owned(),
            expected,
        }
        .into());
    };
    // Polled under the call's token: a block or `connection()` inside the closure is refused
    // at once, a sibling's waits (A3).
    let result = InBlock {
        token,
        body: f(conn),
    }
    .await;
    lent.give_back().await;
    result
}

/// An ambient async block.
///
/// The block's future is boxed (as are the others here): unoptimised, a block's future state
/// and poll frames take tens of KB, and blocks nested in `aio::connection` in blocks
/// overflowed the 2 MiB stacks of tokio's worker threads in debug builds. On the heap each
/// level costs the parent one pointer. Optimised builds need it too: inline, each level's
/// future is moved into its parent's state on the way in, and four nested explicit blocks
/// cost ten times their SQL in copies (callgrind: 262,000 instructions a block, against
/// 33,600 boxed).
pub async fn run_ambient<T, E, F>(options: &BlockOptions<'_>, body: F) -> Result<T, E>
where
    E: From<Error>,
    F: AsyncFunc0<Result<T, E>>,
{
    state::scoped(Box::pin(async move {
        let (outcome, exit) = ambient::attempt(options, body()).await?;
        block::finish(options.using, outcome, exit).await
    }))
    .await
}

/// An explicit-mode async block on the caller's connection.
pub async fn run_explicit<C, T, E, F>(
    options: &BlockOptions<'_>,
    conn: &mut C,
    body: F,
) -> Result<T, E>
where
    C: AsyncConnection + 'static,
    E: From<Error>,
    for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
{
    state::scoped(Box::pin(async move {
        let (outcome, exit) = explicit::attempt(options, conn, same, body).await?;
        block::finish(options.using, outcome, exit).await
    }))
    .await
}

/// An explicit-mode async block on a connection held by `owner` (`conn = self.conn`).
pub async fn run_explicit_field<S, C, T, E, F>(
    options: &BlockOptions<'_>,
    owner: &mut S,
    field: impl Fn(&mut S) -> &mut C + Send,
    body: F,
) -> Result<T, E>
where
    S: ?Sized + Send,
    C: AsyncConnection + 'static,
    E: From<Error>,
    for<'r> F: AsyncFnOnce(&'r mut S) -> Result<T, E> + AsyncFunc<&'r mut S, Result<T, E>>,
{
    state::scoped(Box::pin(async move {
        let (outcome, exit) = explicit::attempt(options, owner, field, body).await?;
        block::finish(options.using, outcome, exit).await
    }))
    .await
}

/// The caller's connection itself, as `explicit::attempt` finds it in its owner.
pub(crate) fn same<C>(conn: &mut C) -> &mut C {
    conn
}

/// The body's outcome, for the retry loop.
#[allow(dead_code)]
pub(crate) type AttemptOutcome<T, E> = Outcome<T, E>;
