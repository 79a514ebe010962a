//! The one error type of the runtime.

use std::fmt;

/// Everything the runtime can report, as values (Django raises most of these as exceptions).
///
/// Every variant names the database alias it is about and its message says what to do next.
/// Functions whose error type implements `From<Error>` can use the runtime with `?`; diesel's
/// own [`diesel::result::Error`] does, so `QueryResult<T>` functions work too.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel_atomic::{transaction, Error};
///
/// let err = transaction::set_rollback(true).unwrap_err();
/// assert!(matches!(err, Error::NotInAtomicBlock { .. }));
/// assert!(err.to_string().contains("doesn't work outside of an 'atomic' block"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Ambient access (no connection passed in) with no registry installed or entered.
    #[error(
        "no databases are configured: build a `Databases` registry and call `.install()` \
         (process-wide) or `.enter()` (this thread) before using the ambient connection, \
         or pass a connection to the block explicitly"
    )]
    NotConfigured,

    /// The alias is not in the registry in force.
    #[error(
        "database alias '{alias}' is not configured; configured aliases: {}; \
         add it with `Databases::add` or use one of those",
        KnownAliases(known)
    )]
    UnknownAlias {
        /// The alias that was asked for.
        alias: String,
        /// The aliases the registry has, in the order they were added.
        known: Vec<String>,
    },

    /// `connection::<C>` asked for another connection type than the alias's pool holds, or
    /// sync code used an async alias (`Database::new_async`), or async code a sync one.
    #[error(
        "database alias '{alias}' holds connections of type `{expected}`; \
         ask for that type in `connection::<{expected}, _, _>` (an alias of diesel-async \
         connections is used from async code through `diesel_atomic::aio`, an alias of \
         diesel's sync connections from sync code)"
    )]
    WrongConnectionType {
        /// The alias whose connection was asked for.
        alias: String,
        /// The connection type the alias's pool was configured with.
        expected: &'static str,
    },

    /// Ambient access while an explicit-mode block owns the alias.
    #[error(
        "database alias '{alias}' is bound to the connection passed to an explicit-mode atomic \
         block; use that connection (pass it on) instead of the ambient one"
    )]
    AliasBoundToExplicitConnection {
        /// The alias the explicit-mode block is registered under.
        alias: String,
    },

    /// `durable = true` inside another block of the same alias (rule E1).
    #[error(
        "A durable atomic block cannot be nested within another atomic block. \
         (alias '{alias}': run the durable block outside every atomic block on that alias)"
    )]
    DurableNested {
        /// The alias of the enclosing block.
        alias: String,
    },

    /// An explicit-mode block on a connection other than the one the alias's open block uses.
    #[error(
        "database alias '{alias}' already has an open atomic block on another connection; \
         run this block on that connection (pass it on), or give it another alias (inside \
         request(), the alias's open block is the request's transaction: use the ambient \
         connection, or exempt the view with #[non_atomic_requests])"
    )]
    AliasInUse {
        /// The alias that already has an open block.
        alias: String,
    },

    /// Ambient access to an alias whose connection is lent to an enclosing `connection()` call.
    #[error(
        "the connection of database alias '{alias}' is already lent to an enclosing \
         `connection()` call; pass that connection on (to an explicit-mode function) \
         instead of asking for it again"
    )]
    ConnectionInUse {
        /// The alias whose connection is lent out.
        alias: String,
    },

    /// An operation that only works inside an atomic block (rule F1).
    #[error(
        "The rollback flag doesn't work outside of an 'atomic' block. \
         (`{operation}` on alias '{alias}': call it inside an #[atomic] block)"
    )]
    NotInAtomicBlock {
        /// The alias the operation was called for.
        alias: String,
        /// The operation, e.g. `set_rollback`.
        operation: &'static str,
    },

    /// The alias's pool could not hand out a connection.
    #[error("could not check out a connection for database alias '{alias}': {source}")]
    Pool {
        /// The alias whose pool failed.
        alias: String,
        /// What r2d2 reported.
        source: diesel::r2d2::PoolError,
    },

    /// The alias's async pool could not hand out a connection.
    #[error("could not check out a connection for database alias '{alias}': {message}")]
    AsyncPool {
        /// The alias whose pool failed.
        alias: String,
        /// What the pool reported.
        message: String,
    },

    /// A block of the alias whose future was dropped before it finished (a `timeout`, a
    /// `select!`) ran inside this block, which therefore rolled back (rule A2).
    #[error(
        "a nested atomic block of database alias '{alias}' was cancelled (its future was \
         dropped before it finished), so the enclosing block rolled back: nothing of it was \
         committed"
    )]
    Cancelled {
        /// The alias.
        alias: String,
    },

    /// An explicit-mode async block was given a connection that is still inside the
    /// transaction of an earlier block whose future was dropped (rule A2).
    #[error(
        "the connection given to an atomic block of database alias '{alias}' is still inside the \
         transaction of an earlier block whose future was dropped before it finished; that work \
         never commits and the connection is marked broken: drop it (a pool discards it) and \
         use another one"
    )]
    StaleTransaction {
        /// The alias.
        alias: String,
    },

    /// Sync access to an alias while an async block of the current task holds it, or the
    /// sync `transaction::on_commit` inside an async block (§9 of the API).
    #[error("database alias '{alias}' is held by an async atomic block of this task; {advice}")]
    SyncInsideAsync {
        /// The alias.
        alias: String,
        /// What to use instead.
        advice: &'static str,
    },

    /// An error from the database, unchanged.
    #[error(transparent)]
    Database(#[from] diesel::result::Error),

    /// `on_commit` where diesel-atomic cannot see the commit that would make the callback's
    /// work durable, so it can promise neither to run the callback after that commit nor to
    /// drop it if the work rolls back (Django raises the same error in manual transaction
    /// management).
    #[error(
        "on_commit() cannot be used in manual transaction management (alias '{alias}': \
         {reason})"
    )]
    OnCommitRefused {
        /// The alias the callback was registered for.
        alias: String,
        /// Why the commit is out of sight, and what to do instead.
        reason: &'static str,
    },

    /// Isolation, read-only or a lock mode on a block that does not begin the transaction
    /// (it is nested in an open one).
    #[error(
        "alias '{alias}': {options} can only be set by the block that begins the transaction, \
         and this block is nested in an open transaction (another atomic block, request()'s \
         transaction or the caller's conn.transaction); make it the outermost block and mark \
         it `durable = true` so that is checked"
    )]
    BeginOptionsNested {
        /// The alias of the block.
        alias: String,
        /// The options the block set, as words (`isolation SERIALIZABLE, read_only`).
        options: String,
    },

    /// Isolation, read-only or a lock mode the alias's backend cannot honour (never silently
    /// downgraded).
    #[error(
        "alias '{alias}': {reason}; remove it from the block (a backend's isolation is never \
         silently downgraded)"
    )]
    BeginOptionsUnsupported {
        /// The alias of the block.
        alias: String,
        /// What the backend cannot do.
        reason: String,
    },

    /// `retry` on a block that is not durable (the transaction as a whole is rerun).
    #[error(
        "alias '{alias}': `retry` reruns the whole transaction, so the block must be \
         outermost: add `durable = true`"
    )]
    RetryNeedsDurable {
        /// The alias of the block.
        alias: String,
    },

    /// `request()` inside a running `request()` on the same thread (or `aio::request` and
    /// the tower layer in the same task).
    #[error(
        "request() is already running on this thread; a view cannot run another request \
         inside itself (call the inner view function directly, and apply \
         AtomicRequestsLayer once per service)"
    )]
    RequestNested,

    /// An `after_begin` hook of the tower layer on an alias that has no request transaction
    /// in the registry the request uses, so the hook could never run.
    #[error(
        "an after_begin hook is set for database alias '{alias}', which has no request \
         transaction in the registry in force: add it with `Database::atomic_requests(true)` \
         (to the registry the layer uses), or remove the hook"
    )]
    AfterBeginWithoutRequestTransaction {
        /// The hook's alias.
        alias: String,
    },

    /// An `after_begin` hook takes another connection type than the alias holds.
    #[error(
        "the after_begin hook of database alias '{alias}' takes `&mut {takes}`, but the alias \
         holds connections of type `{expected}`; declare the hook's connection parameter as \
         `&mut {expected}`"
    )]
    AfterBeginWrongConnectionType {
        /// The hook's alias.
        alias: String,
        /// The connection type the alias's pool holds.
        expected: &'static str,
        /// The connection type the hook was written for.
        takes: &'static str,
    },

    /// `TestTransaction::begin` inside an atomic block or `connection()` call of the alias.
    #[error(
        "a TestTransaction must begin outside every atomic block and `connection()` call on \
         alias '{alias}'"
    )]
    TestTransactionNested {
        /// The alias that was busy.
        alias: String,
    },

    /// The block was no longer the innermost one of its alias at its exit (a
    /// `TestTransaction` dropped inside it ended it); its work is rolled back.
    #[error(
        "the atomic block on alias '{alias}' was ended from inside (a TestTransaction dropped \
         inside it?); its work is rolled back"
    )]
    BlockEndedElsewhere {
        /// The block's alias.
        alias: String,
    },

    /// The alias's connection was not back in place when its block ended.
    #[error("the connection of alias '{alias}' was not back in place when its atomic block ended")]
    ConnectionMissing {
        /// The block's alias.
        alias: String,
    },

    /// A `replica = true` block inside another block of the same alias (rule P1): the replica
    /// cannot see the enclosing transaction's work, and the block cannot be part of it.
    #[error(
        "a `replica = true` block of alias '{alias}' must be the outermost block of its alias, \
         and this one is nested in an open transaction (another atomic block, or request()'s \
         transaction); call it outside every atomic block of '{alias}' (exempt a view with \
         #[non_atomic_requests(using = \"{alias}\")]), or drop `replica = true` to read inside \
         the open transaction, on the primary"
    )]
    ReplicaNested {
        /// The alias of the block.
        alias: String,
    },

    /// A `replica = true` block where it cannot run on a replica (the caller's own
    /// connection, or an executor that does not route such blocks yet).
    #[error("alias '{alias}': a `replica = true` block {reason}")]
    ReplicaUnsupported {
        /// The alias of the block.
        alias: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// A replica configured with [`Database::replica`](crate::Database::replica) that cannot
    /// serve the alias (another connection type than the primary's, SQLite, an async alias).
    #[error(
        "database alias '{alias}' has a replica that cannot be used: {problem}; fix the \
         alias's `Database` (every replica pool holds the primary's connection type, \
         PostgreSQL or MariaDB)"
    )]
    ReplicaMisconfigured {
        /// The alias.
        alias: String,
        /// What is wrong.
        problem: String,
    },

    /// `Databases::install` of a registry with no alias.
    #[error(
        "cannot install an empty Databases registry: add at least one alias (usually \
         \"default\") first"
    )]
    EmptyRegistry,

    /// Misuse that Django reports as `TransactionManagementError`.
    #[error("{0}")]
    TransactionManagement(String),
}

struct KnownAliases<'a>(&'a [String]);

impl fmt::Display for KnownAliases<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, alias) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "'{alias}'")?;
        }
        Ok(())
    }
}

/// Lets `QueryResult<T>` functions be `#[atomic]` and use `?` on runtime calls.
///
/// A database error comes back unchanged; every other runtime error is carried as the boxed
/// source of a [`diesel::result::Error::QueryBuilderError`].
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// let err: diesel::result::Error = diesel_atomic::Error::NotConfigured.into();
/// assert!(err.to_string().contains("no databases are configured"));
/// ```
impl From<Error> for diesel::result::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Database(inner) => inner,
            other => diesel::result::Error::QueryBuilderError(Box::new(other)),
        }
    }
}

/// Django's message for queries in a transaction marked for rollback (rule F3).
pub(crate) const BROKEN_TRANSACTION_MESSAGE: &str = "An error occurred in the current transaction. \
     You can't execute queries until the end of the 'atomic' block.";

impl Error {
    pub(crate) fn broken_transaction(alias: &str) -> Self {
        Error::TransactionManagement(format!(
            "{BROKEN_TRANSACTION_MESSAGE} (alias '{alias}': the block is marked for rollback; \
             call set_rollback(false) first if you restored a known-good state)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_alias_lists_the_known_ones() {
        let err = Error::UnknownAlias {
            alias: "replica".into(),
            known: vec!["default".into(), "other".into()],
        };
        let message = err.to_string();
        assert!(message.contains("'replica'"), "{message}");
        assert!(message.contains("'default', 'other'"), "{message}");
    }

    #[test]
    fn database_errors_round_trip_unchanged() {
        let err: diesel::result::Error = Error::Database(diesel::result::Error::NotFound).into();
        assert_eq!(err, diesel::result::Error::NotFound);
    }

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static>() {}
        assert_bounds::<Error>();
    }
}
