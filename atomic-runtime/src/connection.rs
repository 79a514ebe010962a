//! Type erasure over diesel connections, and every diesel internal the runtime leans on.
//!
//! `TxConnection` is what the block engine needs from any connection (explicit `&mut C` or the
//! inner connection of a pooled one); `PooledConn` adds typed access for a pooled connection.
//! All transaction SQL goes through `C::TransactionManager`, so diesel's own depth stays
//! truthful: a user's `conn.transaction(..)` nests inside our blocks and r2d2's check on return
//! (`is_broken`: in error, or still inside a transaction → discarded) stays right.

use std::any::Any;

use diesel::RunQueryDsl;
use diesel::backend::Backend;
use diesel::connection::{
    Connection, TransactionDepthChange, TransactionManager, TransactionManagerStatus,
};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::r2d2::{ConnectionManager, PooledConnection, R2D2Connection};
use diesel::result::QueryResult;

use crate::begin::{self, BeginOptions};
use crate::error::Error;

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
        if is_sqlite::<C>() && transaction_depth(self)? == 0 {
            return begin_prepared(self);
        }
        C::TransactionManager::begin_transaction(self)
    }

    fn begin_with(&mut self, alias: &str, options: &BeginOptions) -> Result<(), Error> {
        begin::begin_with(self, alias, options)
    }

    fn commit(&mut self) -> QueryResult<()> {
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

/// Whether `C` is diesel's `SqliteConnection` (whose manager is `AnsiTransactionManager`).
///
/// `C` may be generic and not `'static`, so `TypeId` is not available; its type name is, and a
/// unit test pins it.
#[inline]
fn is_sqlite<C>() -> bool {
    std::any::type_name::<C>() == "diesel::sqlite::connection::SqliteConnection"
}

/// `BEGIN` as a query with a static id, so diesel prepares it once per connection and keeps it
/// in the connection's statement cache.
#[derive(Debug, Clone, Copy, QueryId)]
struct BeginStatement;

impl<DB: Backend> QueryFragment<DB> for BeginStatement {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("BEGIN");
        Ok(())
    }
}

impl<C> RunQueryDsl<C> for BeginStatement {}

/// SQLite's outermost BEGIN through a cached prepared statement, then diesel's depth, as
/// `AnsiTransactionManager::begin_transaction` does after its `batch_execute("BEGIN")`.
///
/// diesel parses and compiles "BEGIN" anew for every transaction (`sqlite3_exec`); the cached
/// statement skips that, about 1,200 instructions a block (BENCHMARKS.md). Instrumentation
/// sees the BEGIN as a query rather than as a `BeginTransaction` event, which diesel only lets
/// itself construct.
fn begin_prepared<C: Connection>(conn: &mut C) -> QueryResult<()> {
    RunQueryDsl::execute(BeginStatement, conn)?;
    match C::TransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => {
            status.change_transaction_depth(TransactionDepthChange::IncreaseDepth)
        }
        TransactionManagerStatus::InError => Err(diesel::result::Error::BrokenTransactionManager),
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
fn transaction_depth<C: Connection>(conn: &mut C) -> QueryResult<u32> {
    let status: &mut TransactionManagerStatus =
        C::TransactionManager::transaction_manager_status_mut(conn);
    Ok(status.transaction_depth()?.map_or(0, |depth| depth.get()))
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

#[cfg(test)]
mod tests {
    #[cfg(feature = "sqlite")]
    #[test]
    fn knows_sqlite_by_name() {
        assert!(super::is_sqlite::<diesel::SqliteConnection>());
        assert!(!super::is_sqlite::<String>());
    }
}
