//! Every diesel internal the runtime leans on, each in one function that says why, so a
//! diesel upgrade has one file to read: the transaction depth and its bookkeeping after SQL
//! of ours, diesel's savepoint names, its test-transaction flag, and which backend a
//! connection type speaks.

use diesel::connection::{
    Connection, TransactionDepthChange, TransactionManager, TransactionManagerStatus,
};
use diesel::result::QueryResult;

/// diesel's transaction depth through the one hidden-but-public path diesel's own tests use.
///
/// `transaction_manager_status_mut` is `#[doc(hidden)]` in diesel 2.3 (outside its semver
/// promise): the first place a diesel upgrade has to look at.
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

/// Whether the transaction open on `conn` (at depth > 0) is a test transaction
/// (`begin_test_transaction`, r2d2's `TestCustomizer`).
///
/// diesel keeps the "test transaction" flag private; its pool check is public and answers
/// exactly this: an open transaction counts as broken unless it is a test one.
pub(crate) fn open_transaction_is_test<C: Connection>(conn: &mut C) -> bool {
    !C::TransactionManager::is_broken_transaction_manager(conn)
}

/// The savepoint name diesel's `AnsiTransactionManager` uses for a savepoint begun at `depth`
/// (the connection's depth before the SAVEPOINT). Every connection diesel ships, and r2d2's
/// and `MultiConnection`'s managers, which forward to it, use this naming.
pub(crate) fn savepoint_name(depth: u32) -> String {
    format!("diesel_savepoint_{depth}")
}

/// The statement that releases the savepoint diesel rolled back to at `depth`.
///
/// diesel's ROLLBACK TO keeps the savepoint alive, and it reuses the name for the next one, so a
/// loop of failing inner blocks would nest ever deeper savepoints (PostgreSQL subtransactions).
/// Django releases a savepoint after rolling back to it; we do the same with diesel's name.
pub(crate) fn release_rolled_back_savepoint_sql(depth: u32) -> String {
    format!("RELEASE SAVEPOINT {}", savepoint_name(depth))
}

/// The database behind a connection type, as far as transaction syntax goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackendKind {
    Postgres,
    Mysql,
    Sqlite,
    Other,
}

impl BackendKind {
    /// The backend of `C`: the one place the runtime asks.
    ///
    /// `C` may be a generic, non-`'static` connection type, so `TypeId` is not available;
    /// the backend's type name is, and the unit tests below pin it for every diesel backend.
    #[inline]
    pub(crate) fn of<C: Connection>() -> BackendKind {
        BackendKind::of_backend::<C::Backend>()
    }

    /// The kind of the diesel backend `B` (for diesel-async's connections too).
    #[inline]
    pub(crate) fn of_backend<B>() -> BackendKind {
        match std::any::type_name::<B>() {
            "diesel::pg::backend::Pg" => BackendKind::Postgres,
            "diesel::mysql::backend::Mysql" => BackendKind::Mysql,
            "diesel::sqlite::backend::Sqlite" => BackendKind::Sqlite,
            _ => BackendKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqlite")]
    #[test]
    fn knows_sqlite() {
        assert_eq!(
            BackendKind::of::<diesel::SqliteConnection>(),
            BackendKind::Sqlite
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn knows_postgres() {
        assert_eq!(
            BackendKind::of::<diesel::PgConnection>(),
            BackendKind::Postgres
        );
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn knows_mysql() {
        assert_eq!(
            BackendKind::of::<diesel::MysqlConnection>(),
            BackendKind::Mysql
        );
    }

    #[test]
    fn savepoint_names_are_diesels() {
        assert_eq!(savepoint_name(3), "diesel_savepoint_3");
        assert_eq!(
            release_rolled_back_savepoint_sql(1),
            "RELEASE SAVEPOINT diesel_savepoint_1"
        );
    }
}
