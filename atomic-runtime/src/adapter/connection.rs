//! Type erasure over diesel connections: what the engine does with any connection.
//!
//! `TxConnection` is what the block engine needs from a connection (explicit `&mut C` or the
//! inner connection of a pooled one); `PooledConn` adds typed access for a pooled connection.
//! All transaction SQL goes through `C::TransactionManager` (on SQLite, BEGIN/SAVEPOINT and
//! COMMIT/RELEASE through `prepared`, which keeps the same books), so diesel's own depth stays
//! truthful: a user's `conn.transaction(..)` nests inside our blocks and r2d2's check on return
//! (`is_broken`: in error, or still inside a transaction → discarded) stays right.

use std::any::Any;
use std::num::NonZeroUsize;

use diesel::connection::{Connection, TransactionManager};
use diesel::r2d2::{ConnectionManager, PooledConnection, R2D2Connection};
use diesel::result::QueryResult;

use super::internals::{self, BackendKind};
use super::{begin_sql, prepared};
use crate::error::Error;
use crate::options::BeginOptions;

/// Which connection a block runs on: the connection's address, compared and never
/// dereferenced, the same whether the connection is reached explicitly (`&mut C`) or through
/// the pool's wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionId(NonZeroUsize);

impl ConnectionId {
    /// The id of `conn`.
    #[inline]
    pub(crate) fn of<C: ?Sized>(conn: &C) -> ConnectionId {
        let address = conn as *const C as *const () as usize;
        // A reference is never null; the fallback only keeps this free of `unsafe`.
        ConnectionId(NonZeroUsize::new(address).unwrap_or(NonZeroUsize::MAX))
    }
}

/// What the block engine does with a connection, object-safe.
pub(crate) trait TxConnection {
    /// diesel's transaction depth (0 = no transaction); `Err` when diesel's manager is broken.
    fn depth(&mut self) -> QueryResult<u32>;
    /// BEGIN when diesel's depth, `depth`, is 0; SAVEPOINT otherwise. The caller has just read
    /// the depth (so the hot path reads it once).
    fn begin_at(&mut self, depth: u32) -> QueryResult<()>;
    /// BEGIN at depth 0 with an isolation level, read-only or SQLite lock mode.
    fn begin_with(&mut self, alias: &str, options: &BeginOptions) -> Result<(), Error>;
    /// COMMIT at depth 1, RELEASE SAVEPOINT otherwise.
    fn commit(&mut self) -> QueryResult<()>;
    /// [`TxConnection::commit`] when the caller knows diesel's depth is `depth` (it just read
    /// it): saves reading it again on the hot path.
    fn commit_at(&mut self, depth: u32) -> QueryResult<()>;
    /// ROLLBACK at depth 1, ROLLBACK TO SAVEPOINT otherwise.
    fn rollback(&mut self) -> QueryResult<()>;
    /// Runs SQL that returns no rows (manual savepoints, diesel's savepoint RELEASE).
    fn execute(&mut self, sql: &str) -> QueryResult<()>;
    /// Whether an open transaction the runtime did not begin is a test transaction.
    fn open_transaction_is_test(&mut self) -> bool;
    /// Which connection this is.
    fn id(&self) -> ConnectionId;
    /// This connection as a trait object, for a `&mut C` whose type the caller cannot name
    /// with a lifetime of its own (a connection in a field of `self`).
    fn as_tx(&mut self) -> &mut dyn TxConnection;
}

impl<C: Connection> TxConnection for C {
    fn depth(&mut self) -> QueryResult<u32> {
        internals::transaction_depth(self)
    }

    fn begin_at(&mut self, depth: u32) -> QueryResult<()> {
        if BackendKind::of::<C>() == BackendKind::Sqlite
            && let Some(begun) = prepared::begin(self, depth)
        {
            return begun;
        }
        C::TransactionManager::begin_transaction(self)
    }

    fn begin_with(&mut self, alias: &str, options: &BeginOptions) -> Result<(), Error> {
        begin_sql::begin_with(self, alias, options)
    }

    fn commit(&mut self) -> QueryResult<()> {
        if BackendKind::of::<C>() == BackendKind::Sqlite {
            let depth = internals::transaction_depth(self)?;
            if let Some(committed) = prepared::commit(self, depth) {
                return committed;
            }
        }
        C::TransactionManager::commit_transaction(self)
    }

    fn commit_at(&mut self, depth: u32) -> QueryResult<()> {
        if BackendKind::of::<C>() == BackendKind::Sqlite
            && let Some(committed) = prepared::commit(self, depth)
        {
            return committed;
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
        internals::open_transaction_is_test(self)
    }

    fn id(&self) -> ConnectionId {
        ConnectionId::of(self)
    }

    fn as_tx(&mut self) -> &mut dyn TxConnection {
        self
    }
}

/// RELEASE of the savepoint diesel rolled back to at `depth_before` (see
/// [`internals::release_rolled_back_savepoint_sql`]).
pub(crate) fn release_rolled_back_savepoint(
    conn: &mut dyn TxConnection,
    depth_before: u32,
) -> QueryResult<()> {
    conn.execute(&internals::release_rolled_back_savepoint_sql(depth_before))
}

/// A connection checked out of an alias's pool, with typed access to the inner connection.
pub(crate) trait PooledConn {
    fn inner(&mut self) -> &mut dyn TxConnection;
    fn inner_any(&mut self) -> &mut dyn Any;
    fn id(&self) -> ConnectionId;
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

    fn id(&self) -> ConnectionId {
        let conn: &C = self;
        ConnectionId::of(conn)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<C>()
    }
}
