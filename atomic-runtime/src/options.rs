//! The options of a block: what `#[atomic(...)]` and `transaction::Atomic` carry (rule S2),
//! including how an outermost block begins its transaction. Plain data, used by every layer.

use std::fmt;

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
    pub(crate) const fn sql(self) -> &'static str {
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

/// The options of one block.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct BlockOptions<'a> {
    /// The database alias.
    pub using: &'a str,
    /// Nested blocks create a savepoint (else they merge into their parent).
    pub savepoint: bool,
    /// The block must be outermost.
    pub durable: bool,
    /// Isolation, read-only and lock mode for the BEGIN of an outermost block.
    pub begin: BeginOptions,
}

impl<'a> BlockOptions<'a> {
    /// `#[atomic]` with no arguments but the alias: a savepoint when nested, not durable, a
    /// plain BEGIN.
    pub const fn nested(using: &'a str) -> Self {
        BlockOptions {
            using,
            savepoint: true,
            durable: false,
            begin: BeginOptions::DEFAULT,
        }
    }
}
