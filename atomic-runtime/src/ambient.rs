//! The ambient connection: `connection()`, `db(alias)` and the `Db` handle.

use diesel::Connection;

use crate::atomic::{self, BlockOptions};
use crate::begin::BeginOptions;
use crate::connection::{PooledConn, TxConnection};
use crate::databases::{self, DEFAULT_DB_ALIAS};
use crate::error::Error;
use crate::hooks;
use crate::request;
use crate::savepoint::{self, SavepointId};
use crate::state::{self, Callback, Slot};

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
        let options = BlockOptions {
            using: self.alias,
            savepoint: true,
            durable: false,
            begin: BeginOptions::DEFAULT,
        };
        atomic::run_ambient(&options, f)
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
        hooks::on_commit(self.alias, f, false)
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
        hooks::on_commit(self.alias, f, true)
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
        state::with(self.alias, |st| {
            if !st.in_atomic_block() {
                return Err(self.not_in_atomic_block("set_rollback"));
            }
            st.needs_rollback = rollback;
            Ok(())
        })
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
        state::peek(self.alias, |st| match st {
            Some(st) if st.in_atomic_block() => Ok(st.needs_rollback),
            _ => Err(self.not_in_atomic_block("get_rollback")),
        })
    }

    /// Whether a block is open on this alias (a `TestTransaction` counts).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// assert!(!diesel_atomic::db("default").in_atomic_block());
    /// ```
    pub fn in_atomic_block(&self) -> bool {
        request::pending(self.alias)
            || state::peek(self.alias, |st| st.is_some_and(|st| st.in_atomic_block()))
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
        let mut lent = Lent::take(self.alias)?;
        lent.pooled().inner().execute(sql)?;
        tracing::trace!(alias = self.alias, sql, "manual savepoint");
        Ok(())
    }

    fn not_in_atomic_block(&self, operation: &'static str) -> Error {
        Error::NotInAtomicBlock {
            alias: self.alias.to_owned(),
            operation,
        }
    }
}

/// The alias's connection, taken out of the state while user code (or our SQL) uses it, and
/// put back (or returned to the pool) when dropped — also while unwinding.
struct Lent<'a> {
    alias: &'a str,
    pooled: Option<Box<dyn PooledConn>>,
    /// The connection belongs to an open block (put it back) rather than to this call.
    from_block: bool,
}

impl<'a> Lent<'a> {
    fn take(alias: &'a str) -> Result<Self, Error> {
        request::touch(alias)?;
        let taken = state::with(alias, |st| -> Result<Option<Box<dyn PooledConn>>, Error> {
            match &st.slot {
                Slot::Explicit { .. } => Err(Error::AliasBoundToExplicitConnection {
                    alias: alias.to_owned(),
                }),
                Slot::Lent { .. } => Err(Error::ConnectionInUse {
                    alias: alias.to_owned(),
                }),
                _ if st.needs_rollback && st.in_atomic_block() => {
                    Err(Error::broken_transaction(alias))
                }
                Slot::Held(pooled) => {
                    let address = pooled.inner_address();
                    match std::mem::replace(&mut st.slot, Slot::Lent { address }) {
                        Slot::Held(pooled) => Ok(Some(pooled)),
                        _ => unreachable!("matched Held above"),
                    }
                }
                Slot::Empty => Ok(None),
            }
        })?;
        if let Some(pooled) = taken {
            return Ok(Lent {
                alias,
                pooled: Some(pooled),
                from_block: true,
            });
        }
        let pooled = databases::lookup(alias)?.checkout(alias)?;
        let address = pooled.inner_address();
        state::with(alias, |st| st.slot = Slot::Lent { address });
        Ok(Lent {
            alias,
            pooled: Some(pooled),
            from_block: false,
        })
    }

    fn pooled(&mut self) -> &mut dyn PooledConn {
        self.pooled
            .as_deref_mut()
            .expect("the connection is present until drop")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let pooled = self.pooled.take();
        let from_block = self.from_block;
        let back = state::try_with(self.alias, |st| {
            let after_lend = std::mem::take(&mut st.after_lend);
            let orphaned_at_depth = st.orphaned_at_depth.take();
            match pooled {
                // The block that owned the connection is still open: it gets it back.
                Some(pooled) if from_block && orphaned_at_depth.is_none() => {
                    st.slot = Slot::Held(pooled);
                    Back {
                        pooled: None,
                        orphaned_at_depth,
                        after_lend,
                    }
                }
                pooled => {
                    st.slot = Slot::Empty;
                    Back {
                        pooled,
                        orphaned_at_depth,
                        after_lend,
                    }
                }
            }
        });
        // The rest runs outside the state's borrow.
        let Some(Back {
            mut pooled,
            orphaned_at_depth,
            after_lend,
        }) = back
        else {
            return;
        };
        if let (Some(pooled), Some(depth_before)) = (&mut pooled, orphaned_at_depth) {
            roll_back_to(self.alias, pooled.inner(), depth_before);
        }
        // Back to the pool (r2d2 discards it if it is still inside a transaction) before the
        // callbacks of the blocks that committed on it run (C3).
        drop(pooled);
        hooks::run_deferred(self.alias, after_lend);
    }
}

/// What a `Lent` finds when it gives the connection back.
struct Back {
    /// The connection, when it goes back to the pool rather than to a block.
    pooled: Option<Box<dyn PooledConn>>,
    orphaned_at_depth: Option<u32>,
    after_lend: Vec<Callback>,
}

/// Rolls a connection whose block ended while it was lent back to `depth_before`.
fn roll_back_to(alias: &str, conn: &mut dyn TxConnection, depth_before: u32) {
    while conn.depth().is_ok_and(|depth| depth > depth_before) {
        if let Err(error) = conn.rollback() {
            tracing::error!(alias, %error, "rolling back an abandoned block failed; the connection is discarded");
            return;
        }
    }
    tracing::debug!(
        alias,
        "ROLLBACK (the block ended while its connection was lent)"
    );
}
