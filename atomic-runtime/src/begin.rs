//! How an outermost block begins its transaction: isolation level, read-only, SQLite lock mode.
//!
//! Each backend gets its own statement, sent where the backend honours it (PostgreSQL:
//! `BEGIN ISOLATION LEVEL … READ ONLY`; MySQL/MariaDB: `SET TRANSACTION …` right before
//! `START TRANSACTION`; SQLite: `BEGIN IMMEDIATE` / `BEGIN EXCLUSIVE`). A request a backend
//! cannot honour is an error, never a silent downgrade.

use std::fmt;

use diesel::connection::{Connection, TransactionDepthChange, TransactionManager};
use diesel::result::QueryResult;

use crate::connection::{change_depth, transaction_depth};
use crate::error::Error;

/// A transaction isolation level, as SQL names them.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel_atomic::{transaction::Atomic, Isolation};
///
/// let block = Atomic::new().durable(true).isolation(Isolation::Serializable);
/// assert_eq!(Isolation::Serializable.to_string(), "SERIALIZABLE");
/// # drop(block);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// `READ UNCOMMITTED`: PostgreSQL runs it as `READ COMMITTED`; MySQL/MariaDB honour it.
    ReadUncommitted,
    /// `READ COMMITTED`: each statement sees what was committed before it began.
    ReadCommitted,
    /// `REPEATABLE READ`: one snapshot for the whole transaction (MariaDB's default).
    RepeatableRead,
    /// `SERIALIZABLE`: the outcome of some serial order, or a serialization failure.
    Serializable,
}

impl Isolation {
    /// The level's SQL spelling.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// assert_eq!(diesel_atomic::Isolation::RepeatableRead.sql(), "REPEATABLE READ");
    /// ```
    pub const fn sql(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "READ UNCOMMITTED",
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::RepeatableRead => "REPEATABLE READ",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql())
    }
}

/// SQLite's lock mode at `BEGIN` (SQLite only).
///
/// `Immediate` takes the write lock at `BEGIN`, so a transaction that reads and then writes
/// waits for other writers (`busy_timeout`) instead of failing with `SQLITE_BUSY` midway.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::{Connection, SqliteConnection};
/// use diesel::connection::SimpleConnection;
/// use diesel_atomic::{transaction::Atomic, BeginMode};
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// Atomic::new().begin(BeginMode::Immediate).run_on(&mut conn, |conn| {
///     conn.batch_execute("CREATE TABLE t (id INTEGER)")
/// })?;
/// # Ok::<(), diesel::result::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BeginMode {
    /// `BEGIN` (SQLite's default): locks are taken at first read and first write.
    Deferred,
    /// `BEGIN IMMEDIATE`: the write lock is taken at once.
    Immediate,
    /// `BEGIN EXCLUSIVE`: no other connection reads or writes until the end.
    Exclusive,
}

impl BeginMode {
    const fn sql(self) -> &'static str {
        match self {
            BeginMode::Deferred => "BEGIN",
            BeginMode::Immediate => "BEGIN IMMEDIATE",
            BeginMode::Exclusive => "BEGIN EXCLUSIVE",
        }
    }
}

/// What an outermost block asks of its `BEGIN`. Not public API: the macros' expansions and
/// `transaction::Atomic` fill it in.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BeginOptions {
    /// The isolation level, or the connection's default.
    pub isolation: Option<Isolation>,
    /// `READ ONLY`: writes fail.
    pub read_only: bool,
    /// SQLite's lock mode.
    pub mode: Option<BeginMode>,
}

impl BeginOptions {
    /// Plain `BEGIN`.
    pub const DEFAULT: BeginOptions = BeginOptions {
        isolation: None,
        read_only: false,
        mode: None,
    };

    /// Whether the block asks for anything but a plain `BEGIN`.
    #[inline]
    pub(crate) fn is_default(&self) -> bool {
        self.isolation.is_none() && !self.read_only && self.mode.is_none()
    }

    /// Names the options a block set, for messages.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(isolation) = self.isolation {
            parts.push(format!("isolation {isolation}"));
        }
        if self.read_only {
            parts.push("read_only".to_owned());
        }
        if let Some(mode) = self.mode {
            parts.push(format!("begin {mode:?}"));
        }
        parts.join(", ")
    }
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
    /// The backend of `C`.
    ///
    /// `C` may be a generic, non-`'static` connection type, so `TypeId` is not available;
    /// the backend's type name is, and the unit tests below pin it for every diesel backend.
    pub(crate) fn of<C: Connection>() -> BackendKind {
        match std::any::type_name::<C::Backend>() {
            "diesel::pg::backend::Pg" => BackendKind::Postgres,
            "diesel::mysql::backend::Mysql" => BackendKind::Mysql,
            "diesel::sqlite::backend::Sqlite" => BackendKind::Sqlite,
            _ => BackendKind::Other,
        }
    }
}

/// The statements that begin a transaction with `options` on `backend`: what runs before
/// the transaction begins, and the statement that begins it (`None`: diesel's own).
fn statements(
    alias: &str,
    backend: BackendKind,
    options: &BeginOptions,
    type_name: &str,
) -> Result<(Option<String>, Option<String>), Error> {
    let refuse = |why: String| {
        Err(Error::TransactionManagement(format!(
            "alias '{alias}': {why}; remove it from the block (a backend's isolation is never \
             silently downgraded)"
        )))
    };
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
            if options.read_only {
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
                .read_only
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
            if options.read_only {
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
    fn postgres_begins_in_one_statement() {
        let options = BeginOptions {
            isolation: Some(Isolation::Serializable),
            read_only: true,
            mode: None,
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
            mode: None,
        };
        let (before, begin) = statements("default", BackendKind::Mysql, &options, "My").unwrap();
        assert_eq!(
            before.as_deref(),
            Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        );
        assert_eq!(begin.as_deref(), Some("START TRANSACTION READ ONLY"));
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
