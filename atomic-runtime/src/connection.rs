//! Type erasure over diesel connections, and every diesel internal the runtime leans on.
//!
//! `TxConnection` is what the block engine needs from any connection (explicit `&mut C` or the
//! inner connection of a pooled one); `PooledConn` adds typed access for a pooled connection.
//! All transaction SQL goes through `C::TransactionManager` (on SQLite, BEGIN/SAVEPOINT and
//! COMMIT/RELEASE through `prepared`, which keeps the same books), so diesel's own depth stays
//! truthful: a user's `conn.transaction(..)` nests inside our blocks and r2d2's check on return
//! (`is_broken`: in error, or still inside a transaction → discarded) stays right.

use std::any::Any;

use diesel::connection::{
    Connection, TransactionDepthChange, TransactionManager, TransactionManagerStatus,
};
use diesel::r2d2::{ConnectionManager, PooledConnection, R2D2Connection};
use diesel::result::QueryResult;

use crate::begin::{self, BeginOptions};
use crate::error::Error;
use crate::prepared;

/// What the block engine does with a connection, object-safe.
pub(crate) trait TxConnection {
    /// diesel's transaction depth (0 = no transaction); `Err` when diesel's manager is broken.
    fn depth(&mut self) -> QueryResult<u32>;
    /// BEGIN at depth 0, SAVEPOINT otherwise.
    fn begin(&mut self) -> QueryResult<()>;
    /// BEGIN at depth 0 with an isolation level, read-only or SQLite lock mode.
    fn begin_with(&mut self, alias: &str, options: &BeginOptions) -> Result<(), Error>;
    /// COMMIT at depth 1, RELEASE SAVEPOINT otherwise.
    fn commit(&mut self) -> QueryResult<()>;
    /// ROLLBACK at depth 1, ROLLBACK TO SAVEPOINT otherwise.
    fn rollback(&mut self) -> QueryResult<()>;
    /// Runs SQL that returns no rows (manual savepoints).
    fn execute(&mut self, sql: &str) -> QueryResult<()>;
    /// Whether an open transaction the runtime did not begin is a test transaction
    /// (`begin_test_transaction`, r2d2's `TestCustomizer`).
    fn open_transaction_is_test(&mut self) -> bool;
    /// The connection's address: compared, never dereferenced.
    fn address(&self) -> usize;
}

impl<C: Connection> TxConnection for C {
    fn depth(&mut self) -> QueryResult<u32> {
        transaction_depth(self)
    }

    fn begin(&mut self) -> QueryResult<()> {
        if prepared::is_sqlite::<C>() {
            let depth = transaction_depth(self)?;
            if let Some(begun) = prepared::begin(self, depth) {
                return begun;
            }
        }
        C::TransactionManager::begin_transaction(self)
    }

    fn begin_with(&mut self, alias: &str, options: &BeginOptions) -> Result<(), Error> {
        begin::begin_with(self, alias, options)
    }

    fn commit(&mut self) -> QueryResult<()> {
        if prepared::is_sqlite::<C>() {
            let depth = transaction_depth(self)?;
            if let Some(committed) = prepared::commit(self, depth) {
                return committed;
            }
        }
        C::TransactionManager::commit_transaction(self)
    }

    fn rollback(&mut self) -> QueryResult<()> {
        C::TransactionManager::rollback_transaction(self)
    }

    fn execute(&mut self, sql: &str) -> QueryResult<()> {
        self.batch_execute(sql)
    }

    fn open_transaction_is_test(&mut self) -> bool {
        // diesel keeps the "test transaction" flag private; its pool check is public and
        // answers exactly this: an open transaction counts as broken unless it is a test one.
        !C::TransactionManager::is_broken_transaction_manager(self)
    }

    fn address(&self) -> usize {
        connection_address(self)
    }
}

/// The address that identifies a connection across explicit and ambient use.
pub(crate) fn connection_address<C>(conn: &C) -> usize {
    conn as *const C as usize
}

/// diesel's transaction depth through the one hidden-but-public path diesel's own tests use.
///
/// `transaction_manager_status_mut` is `#[doc(hidden)]` in diesel 2.3 (outside its semver
/// promise), so this is the one place a diesel upgrade has to look at.
pub(crate) fn transaction_depth<C: Connection>(conn: &mut C) -> QueryResult<u32> {
    let status: &mut TransactionManagerStatus =
        C::TransactionManager::transaction_manager_status_mut(conn);
    Ok(status.transaction_depth()?.map_or(0, |depth| depth.get()))
}

/// Moves diesel's transaction depth after SQL of ours began or ended a level, as
/// `AnsiTransactionManager` does after its own (`begin_transaction_sql`, `commit_transaction`).
///
/// `change_transaction_depth` is public but sits behind the hidden status accessor, like
/// [`transaction_depth`]: the second place a diesel upgrade has to look at.
pub(crate) fn change_depth<C: Connection>(
    conn: &mut C,
    change: TransactionDepthChange,
) -> QueryResult<()> {
    match C::TransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => status.change_transaction_depth(change),
        TransactionManagerStatus::InError => Err(diesel::result::Error::BrokenTransactionManager),
    }
}

/// The savepoint name diesel's `AnsiTransactionManager` uses for a savepoint begun at `depth`.
///
/// diesel's ROLLBACK TO keeps the savepoint alive, and it reuses the name for the next one, so a
/// loop of failing inner blocks would nest ever deeper savepoints (PostgreSQL subtransactions).
/// Django releases a savepoint after rolling back to it; we do the same with diesel's name.
/// Every connection diesel ships (and r2d2's and `MultiConnection`'s managers, which forward
/// to it) uses this naming.
pub(crate) fn release_rolled_back_savepoint(
    conn: &mut dyn TxConnection,
    depth_before: u32,
) -> QueryResult<()> {
    conn.execute(&format!(
        "RELEASE SAVEPOINT diesel_savepoint_{depth_before}"
    ))
}

/// A connection checked out of an alias's pool, with typed access to the inner connection.
pub(crate) trait PooledConn {
    fn inner(&mut self) -> &mut dyn TxConnection;
    fn inner_any(&mut self) -> &mut dyn Any;
    fn inner_address(&self) -> usize;
    /// The inner connection's type, for `Error::WrongConnectionType`.
    fn type_name(&self) -> &'static str;
}

impl<C: R2D2Connection + 'static> PooledConn for PooledConnection<ConnectionManager<C>> {
    fn inner(&mut self) -> &mut dyn TxConnection {
        let conn: &mut C = self;
        conn
    }

    fn inner_any(&mut self) -> &mut dyn Any {
        let conn: &mut C = self;
        conn
    }

    fn inner_address(&self) -> usize {
        let conn: &C = self;
        connection_address(conn)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<C>()
    }
}
