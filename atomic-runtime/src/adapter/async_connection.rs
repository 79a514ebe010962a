//! diesel-async's connections and pools as the async executor sees them: type erasure
//! (`AsyncTx`, `AsyncPooledConn`) over any `AsyncConnection`, and the deadpool and bb8 pools.
//!
//! BEGIN / SAVEPOINT / COMMIT / ROLLBACK go through diesel-async's own transaction manager,
//! which keeps its depth and marks the connection broken when one of those awaits is dropped
//! (its `critical_transaction_block`, diesel-async PR #201). A BEGIN with options is SQL of
//! ours: it marks diesel's status in error while it is awaited, for the same reason (see
//! [`begin_with`]).

use std::any::Any;

use diesel::connection::{TransactionDepthChange, TransactionManagerStatus};
use diesel::result::QueryResult;
use diesel_async::{AsyncConnection, TransactionManager};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::begin_sql::statements;
use super::connection::ConnectionId;
use super::internals::{BackendKind, release_rolled_back_savepoint_sql, savepoint_name};
use crate::error::Error;
use crate::options::BeginOptions;

/// What the async block engine does with a connection, object-safe.
pub trait AsyncTx: Send {
    /// diesel's transaction depth (0 = no transaction); `Err` when the manager is broken.
    fn depth(&mut self) -> QueryResult<u32>;
    /// BEGIN at depth 0, SAVEPOINT otherwise.
    fn begin(&mut self) -> BoxFuture<'_, QueryResult<()>>;
    /// BEGIN at depth 0 with an isolation level, read-only or SQLite lock mode.
    fn begin_with<'a>(
        &'a mut self,
        alias: &'a str,
        options: &'a BeginOptions,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// COMMIT at depth 1, RELEASE SAVEPOINT otherwise.
    fn commit(&mut self) -> BoxFuture<'_, QueryResult<()>>;
    /// ROLLBACK at depth 1, ROLLBACK TO SAVEPOINT otherwise.
    fn rollback(&mut self) -> BoxFuture<'_, QueryResult<()>>;
    /// RELEASE of the savepoint diesel rolled back to at `depth_before` (diesel keeps it).
    fn release_rolled_back(&mut self, depth_before: u32) -> BoxFuture<'_, QueryResult<()>>;
    /// ROLLBACK TO and RELEASE of the savepoint begun at `depth_before`, in SQL of ours:
    /// after a failed RELEASE, diesel-async lowers its depth without rolling the savepoint
    /// back (unlike diesel), so the savepoint is still there, in an aborted transaction on
    /// PostgreSQL (rule X4).
    fn rollback_released(&mut self, depth_before: u32) -> BoxFuture<'_, QueryResult<()>>;
    /// Whether an open transaction the runtime did not begin is a test transaction.
    fn open_transaction_is_test(&mut self) -> bool;
    /// Marks diesel's transaction manager broken: every later transaction call fails with
    /// `BrokenTransactionManager`, and the pools discard the connection (rule A2).
    fn mark_broken(&mut self);
    /// Undoes [`AsyncTx::mark_broken`] on a connection outside any transaction (depth 0), for
    /// SQL of ours that marks it broken while it is awaited (see [`begin_with`]).
    fn clear_broken(&mut self);
    /// Whether a pool must not get this connection back: diesel's status is in error, a
    /// transaction is open, or diesel-async saw a transaction statement's future dropped.
    fn is_broken(&mut self) -> bool;
    /// Which connection this is.
    fn id(&self) -> ConnectionId;
    /// The connection, for typed access (`aio::connection`).
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<C: AsyncConnection + 'static> AsyncTx for C {
    fn depth(&mut self) -> QueryResult<u32> {
        let status = C::TransactionManager::transaction_manager_status_mut(self);
        let depth = status.transaction_depth()?.map_or(0, |depth| depth.get());
        // A BEGIN whose future was dropped (rule A2) leaves diesel's status valid at depth 0
        // but sets diesel-async's own `is_broken` flag: the server may or may not be inside
        // a transaction. Any further transaction SQL on it trips diesel-async's
        // `debug_assert!` ("previously cancled") in debug builds and runs blind in release,
        // so report the connection broken here, before the engine plans a block on it. At
        // depth 0 `is_broken_transaction_manager` is true only for that flag (an open
        // transaction, which also makes it true, is depth > 0, where `stale` decides).
        if depth == 0 && C::TransactionManager::is_broken_transaction_manager(self) {
            return Err(diesel::result::Error::BrokenTransactionManager);
        }
        Ok(depth)
    }

    fn begin(&mut self) -> BoxFuture<'_, QueryResult<()>> {
        C::TransactionManager::begin_transaction(self).boxed()
    }

    fn begin_with<'a>(
        &'a mut self,
        alias: &'a str,
        options: &'a BeginOptions,
    ) -> BoxFuture<'a, Result<(), Error>> {
        begin_with(self, alias, options).boxed()
    }

    fn commit(&mut self) -> BoxFuture<'_, QueryResult<()>> {
        C::TransactionManager::commit_transaction(self).boxed()
    }

    fn rollback(&mut self) -> BoxFuture<'_, QueryResult<()>> {
        C::TransactionManager::rollback_transaction(self).boxed()
    }

    fn release_rolled_back(&mut self, depth_before: u32) -> BoxFuture<'_, QueryResult<()>> {
        async move {
            let sql = release_rolled_back_savepoint_sql(depth_before);
            self.batch_execute(&sql).await
        }
        .boxed()
    }

    fn rollback_released(&mut self, depth_before: u32) -> BoxFuture<'_, QueryResult<()>> {
        async move {
            let sql = format!("ROLLBACK TO SAVEPOINT {}", savepoint_name(depth_before));
            self.batch_execute(&sql).await?;
            let sql = release_rolled_back_savepoint_sql(depth_before);
            self.batch_execute(&sql).await
        }
        .boxed()
    }

    fn open_transaction_is_test(&mut self) -> bool {
        !C::TransactionManager::is_broken_transaction_manager(self)
    }

    fn mark_broken(&mut self) {
        C::TransactionManager::transaction_manager_status_mut(self).set_in_error();
    }

    fn clear_broken(&mut self) {
        *C::TransactionManager::transaction_manager_status_mut(self) =
            TransactionManagerStatus::default();
    }

    fn is_broken(&mut self) -> bool {
        C::TransactionManager::is_broken_transaction_manager(self)
    }

    fn id(&self) -> ConnectionId {
        ConnectionId::of(self)
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// BEGIN with `options` at depth 0, keeping diesel-async's depth truthful.
///
/// diesel-async's `begin_transaction_sql` needs its `AnsiTransactionManager` by type, which a
/// pooled connection's manager is not, so the SQL is ours. While it is awaited diesel's status
/// reads "in error": if the future is dropped there, the connection counts as broken (pools
/// discard it, transaction calls fail) instead of as idle with a transaction open on the
/// server — the hole diesel-async closed for its own BEGIN with its `is_broken` flag.
async fn begin_with<C: AsyncConnection>(
    conn: &mut C,
    alias: &str,
    options: &BeginOptions,
) -> Result<(), Error> {
    let (before, begin) = statements(
        alias,
        BackendKind::of_backend::<C::Backend>(),
        options,
        std::any::type_name::<C>(),
    )?;
    let status = C::TransactionManager::transaction_manager_status_mut(conn);
    if status.transaction_depth()?.is_some() {
        return Err(diesel::result::Error::AlreadyInTransaction.into());
    }
    status.set_in_error();
    let ran = async {
        if let Some(sql) = before {
            conn.batch_execute(&sql).await?;
        }
        conn.batch_execute(begin.as_deref().unwrap_or("BEGIN"))
            .await
    }
    .await;
    let status = C::TransactionManager::transaction_manager_status_mut(conn);
    *status = TransactionManagerStatus::default();
    ran?;
    match status {
        TransactionManagerStatus::Valid(valid) => {
            valid.change_transaction_depth(TransactionDepthChange::IncreaseDepth)?
        }
        TransactionManagerStatus::InError => unreachable!("reset to valid above"),
    }
    Ok(())
}

/// A connection checked out of an async alias's pool.
pub trait AsyncPooledConn: Send {
    fn inner(&mut self) -> &mut dyn AsyncTx;
    /// Takes the connection out of its pool and closes it (the server rolls back whatever it
    /// had open). deadpool would otherwise keep a broken connection idle in the pool, its
    /// transaction and locks open, until its next checkout recycles it.
    fn discard(self: Box<Self>);
    fn id(&self) -> ConnectionId;
    /// The inner connection's type, for `Error::WrongConnectionType`.
    fn type_name(&self) -> &'static str;
}

/// deadpool's pooled object (returned to the pool on drop, checked by `recycle` on the next
/// checkout: diesel-async's manager discards a broken or in-transaction connection).
impl<M> AsyncPooledConn for deadpool::managed::Object<M>
where
    M: deadpool::managed::Manager,
    M::Type: AsyncConnection + 'static,
{
    fn inner(&mut self) -> &mut dyn AsyncTx {
        let conn: &mut M::Type = self;
        conn
    }

    fn discard(self: Box<Self>) {
        drop(deadpool::managed::Object::take(*self));
    }

    fn id(&self) -> ConnectionId {
        let conn: &M::Type = self;
        ConnectionId::of(conn)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<M::Type>()
    }
}

/// bb8's owned pooled connection (its `has_broken` check on return: diesel-async's manager
/// discards a broken or in-transaction connection).
impl<M> AsyncPooledConn for bb8::PooledConnection<'static, M>
where
    M: bb8::ManageConnection,
    M::Connection: AsyncConnection + 'static,
{
    fn inner(&mut self) -> &mut dyn AsyncTx {
        let conn: &mut M::Connection = self;
        conn
    }

    fn discard(self: Box<Self>) {
        // bb8 checks a returned connection (`has_broken`, diesel-async's broken check) and
        // closes a broken one at once.
        drop(self);
    }

    fn id(&self) -> ConnectionId {
        let conn: &M::Connection = self;
        ConnectionId::of(conn)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<M::Connection>()
    }
}

/// Gives a pooled connection back: to its pool when it is clean, else closed (see
/// [`AsyncPooledConn::discard`]), so no pool ever keeps a connection inside a transaction.
pub(crate) fn release(mut pooled: Box<dyn AsyncPooledConn>) {
    if pooled.inner().is_broken() {
        pooled.discard();
    } else {
        drop(pooled);
    }
}
