//! Race-safe creation for async code: [`get_or_create`] and [`update_or_create`] (rules
//! G1–G3), the same mechanism as the sync ones ([`crate::create`]): the insert runs in an
//! atomic block of its own (a savepoint inside an open transaction); a failure rolls that
//! block back and looks the row up once more.
//!
//! **Race-safe only with a unique constraint on the lookup columns.**

use diesel::result::Error as DieselError;
use diesel_async::AsyncConnection;

use super::{AsyncFunc, AsyncFuncMut, run_explicit};
use crate::adapter::BackendKind;
use crate::adapter::ConnectionId;
use crate::adapter::async_connection::AsyncTx;
use crate::databases::DEFAULT_DB_ALIAS;
use crate::engine::aio::state;
use crate::engine::state::Slot;
use crate::error::Error;
use crate::options::{BeginMode, BlockOptions, Isolation};

/// The alias a block on a connection of no alias is registered under (as for sync code).
const UNALIASED: &str = "diesel_atomic::aio::get_or_create (connection of no alias)";

/// Looks a row up with `get`; if it is missing, runs `create` in an atomic block of its own
/// (a savepoint inside an open transaction) and, when that fails (another caller inserted the
/// row first: a unique violation), looks it up again. Returns the row and whether `create`
/// made it. The async twin of [`crate::get_or_create`].
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// use diesel::SqliteConnection;
/// use diesel::prelude::*;
/// use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let mut conn = Conn::establish(":memory:").await.unwrap();
/// conn.batch_execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)")
///     .await?;
/// let get = async |conn: &mut Conn| {
///     diesel::dsl::sql::<diesel::sql_types::Integer>("SELECT id FROM tags WHERE text = 'a'")
///         .get_result::<i32>(conn)
///         .await
///         .optional()
/// };
/// let create = async |conn: &mut Conn| {
///     conn.batch_execute("INSERT INTO tags (id, text) VALUES (1, 'a')").await?;
///     Ok(1)
/// };
/// let (id, created) = diesel_atomic::aio::get_or_create(&mut conn, get, create).await?;
/// assert_eq!((id, created), (1, true));
/// let (id, created) =
///     diesel_atomic::aio::get_or_create(&mut conn, get, async |_: &mut Conn| Ok(2)).await?;
/// assert_eq!((id, created), (1, false));
/// # Ok::<(), diesel::result::Error>(())
/// # }).unwrap();
/// # }
/// ```
pub async fn get_or_create<C, T, E, G, F>(
    conn: &mut C,
    mut get: G,
    create: F,
) -> Result<(T, bool), E>
where
    C: AsyncConnection + 'static,
    E: From<Error> + From<DieselError>,
    for<'r> G: AsyncFuncMut<&'r mut C, Result<Option<T>, E>>,
    for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
{
    if let Some(row) = get(conn).await? {
        return Ok((row, false));
    }
    let alias = block_alias(conn);
    let create_error = match run_explicit(&BlockOptions::nested(&alias), conn, create).await {
        Ok(row) => return Ok((row, true)),
        Err(error) => error,
    };
    match get(conn).await {
        Ok(Some(row)) => Ok((row, false)),
        Ok(None) => {
            if snapshot_hides_commits::<C>(conn, &alias) {
                tracing::debug!(
                    alias = %alias,
                    "get_or_create: create failed and the row is not visible in this \
                     transaction's snapshot; a retrying block reruns the transaction"
                );
                if state::has_table() {
                    state::with(&alias, |state| state.hidden_conflict = true);
                }
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

/// Looks a row up with `get_for_update` (a locking read: `.for_update()`), then updates it
/// with `update`, or creates it with `create` as [`get_or_create`] does, all in one atomic
/// block. The async twin of [`crate::update_or_create`].
pub async fn update_or_create<C, T, E, G, F, U>(
    conn: &mut C,
    mut get_for_update: G,
    create: F,
    update: U,
) -> Result<(T, bool), E>
where
    C: AsyncConnection + 'static,
    E: From<Error> + From<DieselError>,
    for<'r> G: AsyncFuncMut<&'r mut C, Result<Option<T>, E>>,
    for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
    for<'r> U: AsyncFnOnce(&'r mut C, T) -> Result<T, E>,
{
    let alias = block_alias(conn);
    let mut options = BlockOptions::nested(&alias);
    let conn_tx: &mut dyn AsyncTx = conn;
    if BackendKind::of_backend::<C::Backend>() == BackendKind::Sqlite && conn_tx.depth()? == 0 {
        // SQLite's stand-in for FOR UPDATE: the one write lock, from the lookup on.
        options.begin.mode = Some(BeginMode::Immediate);
    }
    run_explicit(&options, conn, async |conn: &mut C| {
        match get_or_create(conn, &mut get_for_update, create).await? {
            (row, true) => Ok((row, true)),
            (row, false) => update(conn, row).await.map(|row| (row, false)),
        }
    })
    .await
}

/// The alias whose block runs on `conn` in this task, else "default" when it is idle (so
/// `create`'s callbacks wait for its COMMIT), else a name of no alias.
fn block_alias<C: 'static>(conn: &C) -> String {
    let id = ConnectionId::of(conn);
    if !state::has_table() {
        return DEFAULT_DB_ALIAS.to_owned();
    }
    let owner = state::with_task(|task| {
        task.states
            .iter()
            .find(|state| {
                (state.in_atomic_block() && state.block_connection == Some(id))
                    || state.slot.connection() == Some(id)
            })
            .map(|state| state.alias().to_owned())
    });
    if let Some(alias) = owner {
        return alias;
    }
    let default_idle = state::peek(DEFAULT_DB_ALIAS, |state| {
        state.is_none_or(|state| !state.in_atomic_block() && state.slot == Slot::Empty)
    });
    if default_idle {
        DEFAULT_DB_ALIAS.to_owned()
    } else {
        UNALIASED.to_owned()
    }
}

/// Whether the transaction on `conn` reads from a snapshot that may hide a row another
/// transaction committed (REPEATABLE READ, SERIALIZABLE). The level is the one the block
/// began with, else the backend's default (PostgreSQL READ COMMITTED, MySQL/MariaDB
/// REPEATABLE READ): unlike the sync twin, this does not ask the server about a session
/// default changed with `SET SESSION`.
fn snapshot_hides_commits<C: AsyncConnection + 'static>(conn: &mut C, alias: &str) -> bool {
    let backend = BackendKind::of_backend::<C::Backend>();
    if backend == BackendKind::Sqlite {
        return false;
    }
    let conn: &mut dyn AsyncTx = conn;
    if !conn.depth().is_ok_and(|depth| depth > 0) {
        return false;
    }
    let begun = state::peek(alias, |state| {
        state
            .filter(|state| state.in_atomic_block())
            .and_then(|state| state.begun_isolation)
    });
    let level = begun.unwrap_or(match backend {
        BackendKind::Mysql => Isolation::RepeatableRead,
        _ => Isolation::ReadCommitted,
    });
    matches!(level, Isolation::RepeatableRead | Isolation::Serializable)
}
