//! The options of a block: what `#[atomic(...)]` and `transaction::Atomic` carry (rule S2),
//! including how an outermost block begins its transaction, and an alias's read-your-writes
//! policy (rule P2). Plain data, used by every layer.

use std::fmt;
use std::time::Duration;

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
    /// `replica = true`: the transaction begins (read-only) on a connection of one of the
    /// alias's replicas, not on the primary (rule P1). Like the rest of these options it only
    /// means something to the block that begins the transaction.
    pub replica: bool,
}

impl BeginOptions {
    /// Plain `BEGIN`.
    pub const DEFAULT: BeginOptions = BeginOptions {
        isolation: None,
        read_only: false,
        mode: None,
        replica: false,
    };

    /// Whether the block asks for anything but a plain `BEGIN`.
    #[inline]
    pub(crate) fn is_default(&self) -> bool {
        self.isolation.is_none() && !self.read_only && self.mode.is_none() && !self.replica
    }

    /// Whether the transaction begins `READ ONLY`: asked for, or on a replica.
    #[inline]
    pub(crate) fn begins_read_only(&self) -> bool {
        self.read_only || self.replica
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
        if self.replica {
            parts.push("replica".to_owned());
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

/// What a read outside any block does after this thread (inside [`request`](crate::request):
/// this request) committed on the alias, when the alias has replicas (rule P2, read your own
/// writes). Set per alias with [`Database::read_your_writes`](crate::Database::read_your_writes).
///
/// A commit is an outermost block's COMMIT on the primary (not a read-only one), or the end of
/// a `connection()` call outside every block of the alias, whose statements commit one by one.
///
/// A replica replays the primary's commits a little later. Without a policy, a user who saves
/// a form and is redirected to a page that reads from a replica may not see what they saved.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use std::time::Duration;
/// use diesel_atomic::ReadYourWrites;
///
/// assert_eq!(ReadYourWrites::default(), ReadYourWrites::Wait(Duration::from_secs(1)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadYourWrites {
    /// Every read after such a commit goes to the primary, for the rest of the request (or,
    /// outside `request()`, of the thread). No waiting, no extra query; the primary takes
    /// those reads.
    Primary,
    /// The read waits until the chosen replica has replayed the thread's last commit on the
    /// alias (PostgreSQL: its WAL position, MariaDB: its GTID), at most this long, then reads
    /// the primary instead (with one WARN event). The commit's position is read on its
    /// connection right after the COMMIT (one short query); once a replica is seen to have
    /// replayed it, reads there do not wait for it again.
    Wait(Duration),
    /// Reads go to a replica whatever was committed: they may not see the thread's own
    /// recent writes.
    Off,
}

impl Default for ReadYourWrites {
    /// `Wait(1 s)`.
    fn default() -> Self {
        ReadYourWrites::Wait(Duration::from_secs(1))
    }
}
