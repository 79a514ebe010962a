//! How an outermost block begins its transaction, in each backend's SQL: isolation level,
//! read-only, SQLite lock mode.
//!
//! Each backend gets its own statement, sent where the backend honours it (PostgreSQL:
//! `BEGIN ISOLATION LEVEL … READ ONLY`; MySQL/MariaDB: `SET TRANSACTION …` right before
//! `START TRANSACTION`; SQLite: `BEGIN IMMEDIATE` / `BEGIN EXCLUSIVE`). A request a backend
//! cannot honour is an error, never a silent downgrade.

use diesel::connection::{Connection, TransactionDepthChange, TransactionManager};
use diesel::result::QueryResult;

use super::internals::{BackendKind, change_depth, transaction_depth};
use crate::error::Error;
use crate::options::{BeginOptions, Isolation};

/// The statements that begin a transaction with `options` on `backend`: what runs before
/// the transaction begins, and the statement that begins it (`None`: diesel's own).
pub(crate) fn statements(
    alias: &str,
    backend: BackendKind,
    options: &BeginOptions,
    type_name: &str,
) -> Result<(Option<String>, Option<String>), Error> {
    let refuse = |reason: String| {
        Err(Error::BeginOptionsUnsupported {
            alias: alias.to_owned(),
            reason,
        })
    };
    if options.replica && options.isolation == Some(Isolation::Serializable) {
        return refuse(
            "`replica = true` with isolation SERIALIZABLE: a PostgreSQL hot standby cannot run \
             serializable transactions; run the block on the primary (without `replica = true`)"
                .to_owned(),
        );
    }
    match backend {
        BackendKind::Postgres => {
            if options.mode.is_some() {
                return refuse(
                    "`begin` (deferred/immediate/exclusive) is SQLite's lock mode; PostgreSQL has \
                     none"
                        .to_owned(),
                );
            }
            let mut sql = String::from("BEGIN");
            if let Some(isolation) = options.isolation {
                sql.push_str(" ISOLATION LEVEL ");
                sql.push_str(isolation.sql());
            }
            if options.begins_read_only() {
                sql.push_str(" READ ONLY");
            }
            Ok((None, Some(sql)))
        }
        BackendKind::Mysql => {
            if options.mode.is_some() {
                return refuse(
                    "`begin` (deferred/immediate/exclusive) is SQLite's lock mode; MySQL and \
                     MariaDB have none"
                        .to_owned(),
                );
            }
            // `SET TRANSACTION` (no SESSION) applies to the next transaction only.
            let before = options
                .isolation
                .map(|isolation| format!("SET TRANSACTION ISOLATION LEVEL {}", isolation.sql()));
            let begin = options
                .begins_read_only()
                .then(|| "START TRANSACTION READ ONLY".to_owned());
            Ok((before, begin))
        }
        BackendKind::Sqlite => {
            match options.isolation {
                None | Some(Isolation::Serializable) => {}
                Some(other) => {
                    return refuse(format!(
                        "SQLite runs every transaction SERIALIZABLE and cannot honour isolation \
                         {other}; use `isolation = \"serializable\"` or none"
                    ));
                }
            }
            if options.begins_read_only() {
                return refuse(
                    "SQLite has no read-only transactions (open the database read-only \
                     instead)"
                        .to_owned(),
                );
            }
            Ok((None, options.mode.map(|mode| mode.sql().to_owned())))
        }
        BackendKind::Other => refuse(format!(
            "{} needs a PostgreSQL, MySQL/MariaDB or SQLite connection, and `{type_name}` is \
             none of them",
            options.describe()
        )),
    }
}

/// BEGIN with `options` on a connection at depth 0, keeping diesel's depth truthful.
pub(crate) fn begin_with<C: Connection>(
    conn: &mut C,
    alias: &str,
    options: &BeginOptions,
) -> Result<(), Error> {
    let (before, begin) = statements(
        alias,
        BackendKind::of::<C>(),
        options,
        std::any::type_name::<C>(),
    )?;
    if let Some(sql) = before {
        conn.batch_execute(&sql)?;
    }
    match begin {
        None => C::TransactionManager::begin_transaction(conn)?,
        Some(sql) => begin_transaction_sql(conn, &sql)?,
    }
    Ok(())
}

/// diesel's `AnsiTransactionManager::begin_transaction_sql`, for any connection type.
fn begin_transaction_sql<C: Connection>(conn: &mut C, sql: &str) -> QueryResult<()> {
    if transaction_depth(conn)? != 0 {
        return Err(diesel::result::Error::AlreadyInTransaction);
    }
    conn.batch_execute(sql)?;
    change_depth(conn, TransactionDepthChange::IncreaseDepth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::BeginMode;

    #[test]
    fn postgres_begins_in_one_statement() {
        let options = BeginOptions {
            isolation: Some(Isolation::Serializable),
            read_only: true,
            ..BeginOptions::DEFAULT
        };
        let (before, begin) = statements("default", BackendKind::Postgres, &options, "Pg").unwrap();
        assert_eq!(before, None);
        assert_eq!(
            begin.as_deref(),
            Some("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY")
        );
    }

    #[test]
    fn mysql_sets_the_next_transaction() {
        let options = BeginOptions {
            isolation: Some(Isolation::ReadCommitted),
            read_only: true,
            ..BeginOptions::DEFAULT
        };
        let (before, begin) = statements("default", BackendKind::Mysql, &options, "My").unwrap();
        assert_eq!(
            before.as_deref(),
            Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        );
        assert_eq!(begin.as_deref(), Some("START TRANSACTION READ ONLY"));
    }

    #[test]
    fn a_replica_block_begins_read_only_and_never_serializable() {
        let replica = BeginOptions {
            replica: true,
            ..BeginOptions::DEFAULT
        };
        let (_, begin) = statements("default", BackendKind::Postgres, &replica, "Pg").unwrap();
        assert_eq!(begin.as_deref(), Some("BEGIN READ ONLY"));
        let (_, begin) = statements("default", BackendKind::Mysql, &replica, "My").unwrap();
        assert_eq!(begin.as_deref(), Some("START TRANSACTION READ ONLY"));
        let serializable = BeginOptions {
            isolation: Some(Isolation::Serializable),
            ..replica
        };
        let message = statements("reports", BackendKind::Postgres, &serializable, "Pg")
            .unwrap_err()
            .to_string();
        assert!(message.contains("alias 'reports'"), "{message}");
        assert!(message.contains("hot standby"), "{message}");
    }

    #[test]
    fn sqlite_refuses_what_it_cannot_honour() {
        let weaker = BeginOptions {
            isolation: Some(Isolation::ReadCommitted),
            ..BeginOptions::DEFAULT
        };
        let message = statements("other", BackendKind::Sqlite, &weaker, "S")
            .unwrap_err()
            .to_string();
        assert!(message.contains("alias 'other'"), "{message}");
        assert!(message.contains("READ COMMITTED"), "{message}");
        let immediate = BeginOptions {
            mode: Some(BeginMode::Immediate),
            ..BeginOptions::DEFAULT
        };
        let (_, begin) = statements("default", BackendKind::Sqlite, &immediate, "S").unwrap();
        assert_eq!(begin.as_deref(), Some("BEGIN IMMEDIATE"));
    }
}
