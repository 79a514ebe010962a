//! The ambient connection: `connection()`, `db(alias)` and the `Db` handle.

use diesel::Connection;

use crate::api::savepoint::{self, SavepointId};
use crate::databases::DEFAULT_DB_ALIAS;
use crate::engine::lend::Lent;
use crate::engine::state::{self, Callback};
use crate::engine::{block, hooks, replica, rules};
use crate::error::Error;
use crate::options::BlockOptions;
use crate::scope::request;

/// Runs `f` with the default alias's connection: the open block's, or a pooled one in
/// autocommit mode for the duration of the call.
///
/// While `f` runs the connection is lent: ambient access to the alias inside `f` (another
/// `connection()`, an ambient block) is `Error::ConnectionInUse`; pass `conn` on instead, to
/// explicit-mode code, whose blocks nest in the open block (or, outside any block, are
/// transactions of their own whose `on_commit` callbacks run when `connection()` returns, so
/// they can use the alias). Outside any block, `on_commit` on this alias inside `f` is
/// `Error::OnCommitRefused`: `f` may have opened a transaction of diesel's own on `conn`
/// (`conn.transaction(..)`) whose outcome diesel-atomic cannot see.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::connection::SimpleConnection;
/// use diesel::SqliteConnection;
/// use diesel_atomic::{connection, transaction, Database, Databases};
///
/// # let pool = Pool::builder().max_size(1)
/// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
/// let _registry = Databases::new().add("default", Database::new(pool)).enter();
/// transaction::atomic(|| {
///     connection(|conn: &mut SqliteConnection| conn.batch_execute("CREATE TABLE t (id INTEGER)"))
/// })?;
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
pub fn connection<C, T, E>(f: impl FnOnce(&mut C) -> Result<T, E>) -> Result<T, E>
where
    C: Connection + 'static,
    E: From<Error>,
{
    db(DEFAULT_DB_ALIAS).connection(f)
}

/// Runs `f`, which only reads, on the default alias's connection for reads: inside a block
/// the block's (a transaction reads its own writes), outside one a replica's, or the
/// primary's when the alias has none. See [`Db::read`].
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::prelude::*;
/// use diesel::sql_types::Integer;
/// use diesel_atomic::{Database, Databases};
///
/// # let pool = Pool::builder().max_size(1)
/// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
/// let _registry = Databases::new().add("default", Database::new(pool)).enter();
/// // No replica configured: the read runs on the primary.
/// let answer = diesel_atomic::read(|conn: &mut SqliteConnection| {
///     diesel::select(diesel::dsl::sql::<Integer>("42")).get_result::<i32>(conn)
/// })?;
/// assert_eq!(answer, 42);
/// # Ok::<(), diesel::result::Error>(())
/// ```
pub fn read<C, T, E>(f: impl FnOnce(&mut C) -> Result<T, E>) -> Result<T, E>
where
    C: Connection + 'static,
    E: From<Error>,
{
    db(DEFAULT_DB_ALIAS).read(f)
}

/// The handle for one alias; `db(DEFAULT_DB_ALIAS)` is what the free functions use.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel_atomic::db;
///
/// assert!(!db("other").in_atomic_block());
/// ```
pub fn db(alias: &str) -> Db<'_> {
    Db { alias }
}

/// One database alias: its connection, blocks, rollback flag, savepoints and on_commit queue.
///
/// Borrows the alias name and nothing else; see [`db`].
#[derive(Clone, Copy, Debug)]
pub struct Db<'a> {
    alias: &'a str,
}

impl Db<'_> {
    /// The alias this handle is for.
    pub fn alias(&self) -> &str {
        self.alias
    }

    /// Runs `f` with this alias's connection (see [`connection`]).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel::connection::SimpleConnection;
    /// use diesel::SqliteConnection;
    /// use diesel_atomic::{db, Database, Databases, Error};
    ///
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// let _registry = Databases::new().add("other", Database::new(pool)).enter();
    /// db("other").connection(|conn: &mut SqliteConnection| conn.batch_execute("SELECT 1"))?;
    /// # Ok::<(), Error>(())
    /// ```
    pub fn connection<C, T, E>(&self, f: impl FnOnce(&mut C) -> Result<T, E>) -> Result<T, E>
    where
        C: Connection + 'static,
        E: From<Error>,
    {
        request::touch(self.alias)?;
        let mut lent = Lent::take(self.alias)?;
        let expected = lent.pooled().type_name();
        let Some(conn) = lent.pooled().inner_any().downcast_mut::<C>() else {
            return Err(Error::WrongConnectionType {
                alias: self.alias.to_owned(),
                expected,
            }
            .into());
        };
        f(conn)
    }

    /// Runs `f`, which only reads, on a connection chosen for reading (rules P1 and P2):
    ///
    /// - inside a block of the alias, the block's connection, as [`Db::connection`] gives it:
    ///   a transaction reads its own writes (also inside a `replica = true` block, whose
    ///   connection is a replica's; and inside `request()` on an alias with per-request
    ///   transactions, whose transaction is open);
    /// - outside blocks, a connection of one of the alias's replicas
    ///   ([`Database::replica`](crate::Database::replica)), in turn, lent for the call; after
    ///   this thread committed on the alias, its
    ///   [`ReadYourWrites`](crate::ReadYourWrites) policy decides: wait (bounded) until that
    ///   replica has replayed the commit, read the primary, or neither;
    /// - without replicas, a pooled connection of the primary, as [`Db::connection`].
    ///
    /// A replica that cannot be reached or lags beyond the policy's bound makes the read go
    /// to the primary, with one WARN event that names the alias and the reason. A write in
    /// `f` that reaches a replica fails with the database's read-only error. As with
    /// `connection()`, ambient access to the alias inside `f` is `Error::ConnectionInUse`,
    /// and a `read` inside a `connection()` call of the alias is too.
    ///
    /// ```no_run
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # #[cfg(feature = "postgres")] {
    /// use diesel::prelude::*;
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel::sql_types::Bool;
    /// use diesel_atomic::{db, Database, Databases};
    ///
    /// let pool = |url: &str| Pool::new(ConnectionManager::<PgConnection>::new(url)).unwrap();
    /// let _registry = Databases::new()
    ///     .add("reports", Database::new(pool("postgres://primary/app")).replica(pool("postgres://standby/app")))
    ///     .enter();
    /// let on_standby = db("reports").read(|conn: &mut PgConnection| {
    ///     diesel::select(diesel::dsl::sql::<Bool>("pg_is_in_recovery()")).get_result::<bool>(conn)
    /// })?;
    /// assert!(on_standby);
    /// # }
    /// # Ok::<(), diesel::result::Error>(())
    /// ```
    pub fn read<C, T, E>(&self, f: impl FnOnce(&mut C) -> Result<T, E>) -> Result<T, E>
    where
        C: Connection + 'static,
        E: From<Error>,
    {
        request::touch(self.alias)?;
        replica::read(self.alias, f)
    }

    /// Runs `f` as an atomic block on this alias (ambient mode, savepoint when nested).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel::SqliteConnection;
    /// use diesel_atomic::{db, Database, Databases, Error};
    ///
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// let _registry = Databases::new().add("other", Database::new(pool)).enter();
    /// let inside = db("other").atomic(|| Ok::<_, Error>(db("other").in_atomic_block()))?;
    /// assert!(inside);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn atomic<T, E: From<Error>>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        run_ambient(&BlockOptions::nested(self.alias), f)
    }

    /// Runs `f` after the alias's outermost transaction commits, or at once outside a block.
    ///
    /// A panic in `f` propagates from the outermost block's exit (the data stays committed)
    /// and the callbacks after it are dropped. `f` never runs for work that rolled back:
    ///
    /// - a savepoint rolled back drops the callbacks registered inside it, a rollback all;
    /// - a block on the connection of another alias's open block hands its callbacks to that
    ///   block, whose COMMIT makes the work durable;
    /// - an explicit-mode block on a connection `connection()` lent out runs them when that
    ///   call gives the connection back;
    /// - where diesel-atomic cannot see the commit it is `Error::OnCommitRefused`: inside a
    ///   block that runs within the caller's own `conn.transaction(..)`, and inside a
    ///   `connection()` call outside any block.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    ///
    /// let ran = Rc::new(Cell::new(false));
    /// let flag = Rc::clone(&ran);
    /// diesel_atomic::db("default").on_commit(move || flag.set(true))?;
    /// assert!(ran.get(), "outside a block the callback runs at once");
    /// # Ok::<(), diesel_atomic::Error>(())
    /// ```
    pub fn on_commit(&self, f: impl FnOnce() + 'static) -> Result<(), Error> {
        request::touch(self.alias)?;
        hooks::on_commit(self.alias, Callback::new(f, false))
    }

    /// Like [`Db::on_commit`], but a panic in `f` is caught and logged at ERROR through
    /// `tracing`, and the next callback runs.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// diesel_atomic::db("default").on_commit_robust(|| panic!("mail server down"))?;
    /// // still here: the panic was caught and logged
    /// # Ok::<(), diesel_atomic::Error>(())
    /// ```
    pub fn on_commit_robust(&self, f: impl FnOnce() + 'static) -> Result<(), Error> {
        request::touch(self.alias)?;
        hooks::on_commit(self.alias, Callback::new(f, true))
    }

    /// Marks the innermost block with a savepoint (or the outermost) to roll back on exit
    /// without an error (`true`), or cancels that (`false`).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use diesel_atomic::{db, Error};
    ///
    /// assert!(matches!(db("default").set_rollback(true), Err(Error::NotInAtomicBlock { .. })));
    /// ```
    pub fn set_rollback(&self, rollback: bool) -> Result<(), Error> {
        request::touch(self.alias)?;
        state::with(self.alias, |state| rules::set_rollback(state, rollback))
    }

    /// Whether the alias's transaction is marked for rollback.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// assert!(diesel_atomic::db("default").get_rollback().is_err(), "only inside a block");
    /// ```
    pub fn get_rollback(&self) -> Result<bool, Error> {
        if request::pending(self.alias) {
            // The request's transaction is due but not begun: fresh, so not marked.
            return Ok(false);
        }
        state::peek(self.alias, |state| rules::get_rollback(state, self.alias))
    }

    /// Whether a block is open on this alias (a `TestTransaction` counts).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// assert!(!diesel_atomic::db("default").in_atomic_block());
    /// ```
    pub fn in_atomic_block(&self) -> bool {
        request::pending(self.alias)
            || state::peek(self.alias, |state| {
                state.is_some_and(|state| state.in_atomic_block())
            })
    }

    /// Creates a manual savepoint inside a block; outside one the id is a no-op.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use diesel_atomic::db;
    ///
    /// let id = db("default").savepoint()?; // outside a block: nothing happens
    /// db("default").savepoint_rollback(id)?;
    /// # Ok::<(), diesel_atomic::Error>(())
    /// ```
    pub fn savepoint(&self) -> Result<SavepointId, Error> {
        request::touch(self.alias)?;
        if !self.in_atomic_block() {
            return Ok(SavepointId::NONE);
        }
        let id = savepoint::next_id();
        self.execute(&savepoint::create_sql(id))?;
        Ok(id)
    }

    /// Releases a manual savepoint (no-op for an id made outside a block).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// let id = diesel_atomic::db("default").savepoint()?;
    /// diesel_atomic::db("default").savepoint_commit(id)?;
    /// # Ok::<(), diesel_atomic::Error>(())
    /// ```
    pub fn savepoint_commit(&self, id: SavepointId) -> Result<(), Error> {
        match savepoint::release_sql(id) {
            Some(sql) if self.in_atomic_block() => self.execute(&sql),
            _ => Ok(()),
        }
    }

    /// Rolls back to a manual savepoint (no-op for an id made outside a block).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// let id = diesel_atomic::db("default").savepoint()?;
    /// diesel_atomic::db("default").savepoint_rollback(id)?;
    /// # Ok::<(), diesel_atomic::Error>(())
    /// ```
    pub fn savepoint_rollback(&self, id: SavepointId) -> Result<(), Error> {
        match savepoint::rollback_sql(id) {
            Some(sql) if self.in_atomic_block() => self.execute(&sql),
            _ => Ok(()),
        }
    }

    fn execute(&self, sql: &str) -> Result<(), Error> {
        request::touch(self.alias)?;
        let mut lent = Lent::take(self.alias)?;
        lent.pooled().inner().execute(sql)?;
        tracing::trace!(alias = self.alias, sql, "manual savepoint");
        Ok(())
    }
}

/// An ambient block (`#[atomic]` without a connection, `transaction::atomic`): the API entry
/// point begins a due request transaction first (rule Q1), then the engine runs the block.
#[inline]
pub fn run_ambient<T, E: From<Error>>(
    options: &BlockOptions<'_>,
    body: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    request::touch(options.using)?;
    block::run(options, &mut (), block::ambient, |_| body())
}

/// An explicit-mode block on the caller's connection.
#[inline]
pub fn run_explicit<C, T, E>(
    options: &BlockOptions<'_>,
    conn: &mut C,
    body: impl FnOnce(&mut C) -> Result<T, E>,
) -> Result<T, E>
where
    C: Connection,
    E: From<Error>,
{
    request::touch(options.using)?;
    block::run(options, conn, |conn| Some(conn), body)
}

/// An explicit-mode block on a connection held by `owner` (`#[atomic(conn = self.conn)]`):
/// `field` reaches the connection each time the block needs it, so `body` can have all of
/// `owner`, the connection included, in between.
#[inline]
pub fn run_explicit_field<S, C, T, E>(
    options: &BlockOptions<'_>,
    owner: &mut S,
    field: impl Fn(&mut S) -> &mut C,
    body: impl FnOnce(&mut S) -> Result<T, E>,
) -> Result<T, E>
where
    S: ?Sized,
    C: Connection,
    E: From<Error>,
{
    request::touch(options.using)?;
    block::run(options, owner, |owner| Some(field(owner)), body)
}
