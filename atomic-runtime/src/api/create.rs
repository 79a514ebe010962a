//! Race-safe creation: [`get_or_create`] and [`update_or_create`] (rules G1–G3), and their
//! typed forms [`get_or_insert`] and [`update_or_insert`].
//!
//! **Race-safe only with a unique constraint on the lookup columns.** Without one, two callers
//! that miss at the same moment both insert, and nothing in the database stops them
//! (`cargo run --example race` shows it).
//!
//! The one mechanism: the insert runs in an atomic block of its own (a savepoint inside an
//! open transaction); a failure rolls that block back and looks the row up once more. Where a
//! snapshot hides the winner's row from every statement of the caller's transaction
//! (REPEATABLE READ, SERIALIZABLE), no second look can find it; the transaction is marked as
//! having lost a race its snapshot hides, and a surrounding retrying block
//! ([`Atomic::retry`](crate::transaction::Atomic::retry)) reruns it with a new snapshot.

use diesel::Connection;
use diesel::query_dsl::LoadQuery;
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::result::{Error as DieselError, OptionalExtension, QueryResult};

use crate::adapter::classify::server_isolation;
use crate::adapter::{BackendKind, ConnectionId, TxConnection};
use crate::api::ambient::run_explicit;
use crate::api::retry;
use crate::databases::DEFAULT_DB_ALIAS;
use crate::engine::state::{self, Slot};
use crate::error::Error;
use crate::options::{BeginMode, BlockOptions, Isolation};
use crate::scope::request;

/// The alias a block on a connection that belongs to no alias is registered under. It only
/// scopes the block's bookkeeping: nothing ambient can reach it, and its name says where it
/// comes from in `tracing` output.
const UNALIASED: &str = "diesel_atomic::get_or_create (connection of no alias)";

/// Gets a row, or creates it: Django's `QuerySet.get_or_create`, correct under concurrency.
///
/// Returns `(row, created)`.
///
/// # Race-safe only with a unique constraint
///
/// **The database must have a unique constraint (or primary key) on exactly the columns `get`
/// looks up.** It is what makes the loser of a race fail instead of inserting a duplicate;
/// without it, concurrent callers that all miss all insert, and a later lookup finds several
/// rows. Add it in the migration that creates the table (`UNIQUE (email)` below).
///
/// # What it does
///
/// 1. `get(conn)`. Found: `(row, false)`, and `create` never runs (rule G1).
/// 2. Not found: `create(conn)` runs inside an atomic block on `conn`: a savepoint when a
///    transaction is open on `conn` (an `#[atomic]` block, `request()`, a
///    `testing::TestTransaction`, diesel's `conn.transaction`), else a transaction of its own.
///    `Ok(row)`: `(row, true)`.
/// 3. `create` returned `Err`. The error type is yours, so a unique violation cannot be told
///    from any other failure, and every failure takes this path: the block rolls back (only
///    the savepoint: the enclosing transaction stays usable, on PostgreSQL too), dropping the
///    `on_commit` callbacks `create` registered, and `get` runs once more on `conn`.
///    Found: `(row, false)` (another writer won the race). Not found: `create`'s error,
///    returned unchanged. If that second `get` fails, `create`'s error is returned as well
///    and the second one is logged at WARN.
/// 4. A panic in `create` rolls the block back the same way and resumes unwinding unchanged.
///
/// `get` runs on `conn` as it is: outside the block, in the caller's transaction if there is
/// one, in autocommit mode otherwise. An `Err` from `get` is returned at once.
///
/// # Isolation levels: which ones see the winner's row, which need `retry`
///
/// | where `conn` is | the second `get` sees the winner's row | a lost race returns |
/// | --- | --- | --- |
/// | in no transaction (autocommit) | yes, on every backend | the winner's row |
/// | in READ COMMITTED (PostgreSQL's default; MariaDB/MySQL when so set) | yes | the winner's row |
/// | in REPEATABLE READ (MariaDB's and MySQL's default; PostgreSQL) | **no** | an error: needs `retry` |
/// | in PostgreSQL SERIALIZABLE | **no** | an error: needs `retry` |
/// | in an SQLite deferred transaction | **no** | "database is locked": needs `retry` |
///
/// Under a snapshot no statement of the transaction can see a row committed after the snapshot
/// was taken: PostgreSQL shows it to no statement, locking reads included (`INSERT ... ON
/// CONFLICT` fails with `40001` rather than see it); InnoDB's plain reads use the transaction's
/// read view; SQLite in WAL mode refuses the first write of a transaction whose snapshot is
/// stale (`SQLITE_BUSY`). The only recovery is to rerun the whole transaction with a new
/// snapshot, whose first `get` finds the row. So when the second `get` misses inside a
/// REPEATABLE READ or SERIALIZABLE transaction, `get_or_create` records on the transaction's
/// alias that it lost a race its snapshot hides, then returns `create`'s error unchanged (the
/// unique violation; PostgreSQL may report a serialization failure, `40001`, instead). A
/// surrounding retrying block sees the record and reruns the transaction:
///
/// ```text
/// #[atomic(durable = true, isolation = "repeatable_read", retry = 5)]
/// fn tag_post(..) -> Result<.., AppError> { .. connection(|conn| get_or_create(conn, ..)) .. }
///
/// // or, without the attribute:
/// transaction::Atomic::new().isolation(Isolation::RepeatableRead).retry(RetryPolicy::new(5))
///     .run(|| connection(|conn| get_or_create(conn, get, create)))
/// ```
///
/// SQLite's "database is locked" and `40001` are retried by such a block anyway. Without a
/// retrying block the error reaches the caller, as Django's `IntegrityError` does.
///
/// Limits:
/// - The winner's row cannot be seen *inside* the snapshot: the rerun repeats everything the
///   transaction did before the call, so keep such transactions short.
/// - A SERIALIZABLE transaction may have to retry for reasons of its own (a serialization
///   failure at any statement or at COMMIT), `get_or_create` or not.
/// - The retrying block reruns for a hidden race only when it fails with a unique violation
///   (read through [`AsDieselError`](crate::AsDieselError)): keep the diesel error reachable
///   from your error type. A genuine failure of another kind (a NOT NULL violation) is
///   returned at once; a genuine unique violation whose second `get` misses is rerun until the
///   policy's retries run out, then returned.
/// - The level is the one an outermost block of this crate began the transaction with
///   (`Atomic::isolation`); otherwise it is read from the server, on this rare path only
///   (PostgreSQL: `transaction_isolation`; MariaDB/MySQL: `@@tx_isolation`, else
///   `@@transaction_isolation`). MariaDB's variable shows the *session's* level, so a
///   transaction begun after a one-shot `SET TRANSACTION ISOLATION LEVEL` of the caller's own
///   is judged by the session's level: set the level on the block instead.
/// - Only `PgConnection` and `MysqlConnection` are asked (features `postgres` / `mysql`); on
///   other connection types (a `MultiConnection` enum, say) a race hidden by a transaction that
///   no block of this crate began with an explicit level is not recorded.
///
/// # The block's alias
///
/// The block is registered under the alias whose open block runs on `conn`, or whose
/// `connection()` call lent `conn`; a connection that belongs to no alias gets a private
/// alias that no `on_commit` of yours can name, so callbacks registered in `create` then
/// belong to their own aliases as usual.
///
/// # Example
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
///
/// diesel::table! {
///     users (id) {
///         id -> Integer,
///         email -> Text,
///         name -> Text,
///     }
/// }
///
/// #[derive(Queryable, Debug)]
/// struct User {
///     id: i32,
///     email: String,
///     name: String,
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// // The migration: the unique constraint on the lookup column is what makes it race-safe.
/// conn.batch_execute(
///     "CREATE TABLE users (
///          id INTEGER PRIMARY KEY,
///          email TEXT NOT NULL,
///          name TEXT NOT NULL,
///          UNIQUE (email)
///      )",
/// )?;
///
/// let by_email = |conn: &mut SqliteConnection| {
///     users::table
///         .filter(users::email.eq("ada@example.com"))
///         .first::<User>(conn)
///         .optional()
/// };
/// let create = |conn: &mut SqliteConnection| {
///     diesel::insert_into(users::table)
///         .values((users::email.eq("ada@example.com"), users::name.eq("Ada")))
///         .execute(conn)?;
///     users::table.filter(users::email.eq("ada@example.com")).first::<User>(conn)
/// };
///
/// let (ada, created) = diesel_atomic::get_or_create(&mut conn, by_email, create)?;
/// assert!(created);
/// assert_eq!(ada.name, "Ada");
///
/// // Found: `create` does not run.
/// let (again, created) = diesel_atomic::get_or_create(&mut conn, by_email, |_| {
///     unreachable!("the row exists")
/// })?;
/// assert!(!created);
/// assert_eq!(again.id, ada.id);
/// # Ok::<(), diesel::result::Error>(())
/// ```
///
/// A failed `create` leaves the caller's transaction usable, and its error comes back as it
/// was:
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
/// use diesel::result::{DatabaseErrorKind, Error};
/// use diesel_atomic::transaction::Atomic;
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// conn.batch_execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)")?;
/// conn.batch_execute("INSERT INTO tags (id, text) VALUES (1, 'foo')")?;
///
/// Atomic::new().run_on(&mut conn, |conn| {
///     let by_id = |conn: &mut SqliteConnection| {
///         diesel::dsl::sql::<diesel::sql_types::Text>("SELECT text FROM tags WHERE id = 2")
///             .get_result::<String>(conn)
///             .optional()
///     };
///     // Tag 2 is missing, and inserting it violates the constraint on `text`.
///     let create = |conn: &mut SqliteConnection| {
///         conn.batch_execute("INSERT INTO tags (id, text) VALUES (2, 'foo')")?;
///         Ok("foo".to_owned())
///     };
///     let error = diesel_atomic::get_or_create(conn, by_id, create).unwrap_err();
///     assert!(matches!(error, Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)));
///     // The transaction goes on.
///     conn.batch_execute("INSERT INTO tags (id, text) VALUES (3, 'bar')")
/// })?;
/// # Ok::<(), Error>(())
/// ```
pub fn get_or_create<C, T, E>(
    conn: &mut C,
    mut get: impl FnMut(&mut C) -> Result<Option<T>, E>,
    create: impl FnOnce(&mut C) -> Result<T, E>,
) -> Result<(T, bool), E>
where
    C: Connection + 'static,
    E: From<Error> + From<DieselError>,
{
    if let Some(row) = get(conn)? {
        return Ok((row, false));
    }
    let alias = block_alias(conn);
    let create_error = match run_explicit(&BlockOptions::nested(&alias), conn, create) {
        Ok(row) => return Ok((row, true)),
        Err(error) => error,
    };
    match get(conn) {
        Ok(Some(row)) => Ok((row, false)),
        Ok(None) => {
            if snapshot_hides_commits(conn, &alias) {
                tracing::debug!(
                    alias = %alias,
                    "get_or_create: create failed and the row is not visible in this \
                     transaction's snapshot; a retrying block reruns the transaction"
                );
                retry::note_hidden_conflict(&alias);
            }
            Err(create_error)
        }
        Err(_) => {
            tracing::warn!(
                alias = %alias,
                "get_or_create: the lookup after a failed create failed too; returning \
                 create's error"
            );
            Err(create_error)
        }
    }
}

/// Updates a row, or creates it: Django's `QuerySet.update_or_create`, correct under
/// concurrency.
///
/// Returns `(row, created)`. Everything runs inside one atomic block on `conn` (a savepoint
/// inside an open transaction, else a transaction of its own), as in Django:
///
/// 1. `get_for_update(conn)` looks the row up **and locks it**: write it with
///    `.for_update()` (`SELECT ... FOR UPDATE`) on PostgreSQL and MariaDB/MySQL. The lock is
///    held until the outermost transaction ends, so a concurrent `UPDATE` of the row waits
///    instead of being overwritten with what `update` computed from a stale read.
/// 2. Missing: creation follows [`get_or_create`]'s rules (a savepoint around `create`; after
///    a failure `get_for_update` runs again, and a winner's row found then is locked and
///    updated). Created: `(row, true)`, and `update` does not run.
/// 3. Found: `update(conn, row)` returns the updated row: `(row, false)`.
///
/// Any `Err` or panic rolls the whole block back and is returned (or resumes) unchanged.
///
/// **Race-safe only with a unique constraint on the lookup columns**, as [`get_or_create`].
///
/// SQLite has no `FOR UPDATE`; it has one writer at a time. When `update_or_create` begins
/// the transaction itself, it begins it `IMMEDIATE`, taking the write lock before the lookup,
/// so concurrent writers wait (`busy_timeout`) from the lookup on. Inside a transaction of
/// yours, begin that one IMMEDIATE (`#[atomic(begin = "immediate")]`,
/// `Atomic::begin(BeginMode::Immediate)`): a deferred
/// transaction whose snapshot went stale fails its first write with "database is locked",
/// which a retrying block reruns.
///
/// On MariaDB/MySQL at REPEATABLE READ, `FOR UPDATE` on a missing row locks the gap where it
/// would be; two callers creating the same row can then deadlock (error 1213, one of them
/// rolled back), which a retrying block reruns. A locking read sees the latest committed row
/// there, so the winner's row itself is found without a retry.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
///
/// diesel::table! {
///     counters (id) {
///         id -> Integer,
///         name -> Text,
///         hits -> Integer,
///     }
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// conn.batch_execute(
///     "CREATE TABLE counters (
///          id INTEGER PRIMARY KEY,
///          name TEXT NOT NULL UNIQUE,
///          hits INTEGER NOT NULL
///      )",
/// )?;
///
/// let hit = |conn: &mut SqliteConnection| {
///     diesel_atomic::update_or_create(
///         conn,
///         // On PostgreSQL and MariaDB: `.for_update()` before `.first(..)`.
///         |conn: &mut SqliteConnection| {
///             counters::table
///                 .filter(counters::name.eq("home"))
///                 .select((counters::id, counters::hits))
///                 .first::<(i32, i32)>(conn)
///                 .optional()
///         },
///         |conn| {
///             diesel::insert_into(counters::table)
///                 .values((counters::name.eq("home"), counters::hits.eq(1)))
///                 .execute(conn)?;
///             counters::table
///                 .filter(counters::name.eq("home"))
///                 .select((counters::id, counters::hits))
///                 .first(conn)
///         },
///         |conn, (id, hits)| {
///             diesel::update(counters::table.find(id))
///                 .set(counters::hits.eq(hits + 1))
///                 .execute(conn)?;
///             Ok((id, hits + 1))
///         },
///     )
/// };
///
/// assert_eq!(hit(&mut conn)?, ((1, 1), true));
/// assert_eq!(hit(&mut conn)?, ((1, 2), false));
/// # Ok::<(), diesel::result::Error>(())
/// ```
pub fn update_or_create<C, T, E>(
    conn: &mut C,
    mut get_for_update: impl FnMut(&mut C) -> Result<Option<T>, E>,
    create: impl FnOnce(&mut C) -> Result<T, E>,
    update: impl FnOnce(&mut C, T) -> Result<T, E>,
) -> Result<(T, bool), E>
where
    C: Connection + 'static,
    E: From<Error> + From<DieselError>,
{
    let alias = block_alias(conn);
    let mut options = BlockOptions::nested(&alias);
    if BackendKind::of::<C>() == BackendKind::Sqlite && conn.depth()? == 0 {
        // SQLite's stand-in for FOR UPDATE: the one write lock, from the lookup on.
        options.begin.mode = Some(BeginMode::Immediate);
    }
    run_explicit(&options, conn, |conn| {
        match get_or_create(conn, &mut get_for_update, create)? {
            (row, true) => Ok((row, true)),
            (row, false) => update(conn, row).map(|row| (row, false)),
        }
    })
}

/// [`get_or_create`] with diesel statements instead of closures: `lookup` loads the row,
/// `insert` creates it (then `lookup` runs again to load it, so no `RETURNING` is needed).
///
/// Same rules, same warning: **race-safe only with a unique constraint on the columns
/// `lookup` filters on.**
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
///
/// diesel::table! {
///     tags (id) {
///         id -> Integer,
///         text -> Text,
///     }
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// conn.batch_execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)")?;
///
/// let tag = |conn: &mut SqliteConnection, text: &str| -> QueryResult<((i32, String), bool)> {
///     diesel_atomic::get_or_insert(
///         conn,
///         tags::table.filter(tags::text.eq(text)),
///         diesel::insert_into(tags::table).values(tags::text.eq(text)),
///     )
/// };
///
/// assert_eq!(tag(&mut conn, "rust")?, ((1, "rust".to_owned()), true));
/// assert_eq!(tag(&mut conn, "rust")?, ((1, "rust".to_owned()), false));
/// # Ok::<(), diesel::result::Error>(())
/// ```
pub fn get_or_insert<'query, C, Q, I, T>(
    conn: &mut C,
    lookup: Q,
    insert: I,
) -> QueryResult<(T, bool)>
where
    C: Connection + 'static,
    Q: LoadQuery<'query, C, T> + Clone,
    I: ExecuteDsl<C>,
{
    get_or_create(
        conn,
        |conn| lookup.clone().get_result(conn).optional(),
        |conn| {
            ExecuteDsl::execute(insert, conn)?;
            lookup.clone().get_result(conn)
        },
    )
}

/// [`update_or_create`] with diesel statements: `lookup` loads and locks the row (add
/// `.for_update()` on PostgreSQL and MariaDB/MySQL), `insert` creates it, `update` changes
/// it; after either, `lookup` loads the row again.
///
/// **Race-safe only with a unique constraint on the columns `lookup` filters on.**
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::connection::SimpleConnection;
/// use diesel::prelude::*;
///
/// diesel::table! {
///     settings (id) {
///         id -> Integer,
///         key -> Text,
///         value -> Text,
///     }
/// }
///
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// conn.batch_execute(
///     "CREATE TABLE settings (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, value TEXT NOT NULL)",
/// )?;
///
/// let mut set = |value: &str| -> QueryResult<((i32, String, String), bool)> {
///     let lookup = settings::table.filter(settings::key.eq("theme"));
///     diesel_atomic::update_or_insert(
///         &mut conn,
///         lookup, // `.for_update()` on PostgreSQL and MariaDB
///         diesel::insert_into(settings::table)
///             .values((settings::key.eq("theme"), settings::value.eq(value))),
///         diesel::update(lookup).set(settings::value.eq(value)),
///     )
/// };
///
/// assert!(set("dark")?.1, "created");
/// let (row, created) = set("light")?;
/// assert_eq!((row.2.as_str(), created), ("light", false));
/// # Ok::<(), diesel::result::Error>(())
/// ```
pub fn update_or_insert<'query, C, Q, I, U, T>(
    conn: &mut C,
    lookup: Q,
    insert: I,
    update: U,
) -> QueryResult<(T, bool)>
where
    C: Connection + 'static,
    Q: LoadQuery<'query, C, T> + Clone,
    I: ExecuteDsl<C>,
    U: ExecuteDsl<C>,
{
    update_or_create(
        conn,
        |conn| lookup.clone().get_result(conn).optional(),
        |conn| {
            ExecuteDsl::execute(insert, conn)?;
            lookup.clone().get_result(conn)
        },
        |conn, _stale| {
            ExecuteDsl::execute(update, conn)?;
            lookup.clone().get_result(conn)
        },
    )
}

/// The alias whose open block runs on `conn` (or whose `connection()` call lent it), so that
/// our block nests in it. For a connection of no alias: the default alias when it is idle, as
/// an explicit-mode `#[atomic]` block would use, so that `on_commit` in `create` waits for
/// this block's COMMIT; else a private alias (the default one is busy with another connection).
fn block_alias<C>(conn: &C) -> String {
    let id = ConnectionId::of(conn);
    let owner = state::find_map(|state| {
        let runs_on_it = state.in_atomic_block() && state.block_connection == Some(id);
        (runs_on_it || state.slot.connection() == Some(id)).then(|| state.alias().to_owned())
    });
    if let Some(alias) = owner {
        return alias;
    }
    let default_idle = !request::pending(DEFAULT_DB_ALIAS)
        && state::peek(DEFAULT_DB_ALIAS, |state| {
            state.is_none_or(|state| !state.in_atomic_block() && state.slot == Slot::Empty)
        });
    if default_idle {
        DEFAULT_DB_ALIAS.to_owned()
    } else {
        UNALIASED.to_owned()
    }
}

/// Whether `conn` is inside a transaction whose snapshot hides rows committed after it was
/// taken: REPEATABLE READ or SERIALIZABLE on PostgreSQL or MariaDB/MySQL. Asked only after a
/// failed create whose second lookup missed; a failure to ask counts as "no".
fn snapshot_hides_commits<C: Connection + 'static>(conn: &mut C, alias: &str) -> bool {
    if BackendKind::of::<C>() == BackendKind::Sqlite {
        // SQLite refuses the write of a stale snapshot ("database is locked", retried anyway)
        // before it checks a constraint: its unique violations are never hidden races.
        return false;
    }
    if !conn.depth().is_ok_and(|depth| depth > 0) {
        // Autocommit: each statement sees everything committed before it.
        return false;
    }
    let begun = state::peek(alias, |state| {
        state
            .filter(|state| state.in_atomic_block())
            .and_then(|state| state.begun_isolation)
    });
    let level = match begun {
        Some(level) => level,
        None => match server_isolation(conn) {
            Some(level) => level,
            None => return false,
        },
    };
    matches!(level, Isolation::RepeatableRead | Isolation::Serializable)
}
