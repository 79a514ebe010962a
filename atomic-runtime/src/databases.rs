//! Database aliases: the registry that maps an alias to its pool.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use diesel::r2d2::{ConnectionManager, Pool, PoolError, R2D2Connection};

use crate::adapter::PooledConn;
use crate::error::Error;

/// The alias used when none is given, as in Django.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// assert_eq!(diesel_atomic::DEFAULT_DB_ALIAS, "default");
/// ```
pub const DEFAULT_DB_ALIAS: &str = "default";

/// A pool with its connection type erased: the one place that knows `C` is `Database::new`.
trait ErasedPool: Send + Sync {
    fn checkout(&self) -> Result<Box<dyn PooledConn>, PoolError>;
    fn connection_type(&self) -> &'static str;
}

impl<C: R2D2Connection + 'static> ErasedPool for Pool<ConnectionManager<C>> {
    fn checkout(&self) -> Result<Box<dyn PooledConn>, PoolError> {
        Ok(Box::new(self.get()?))
    }

    fn connection_type(&self) -> &'static str {
        std::any::type_name::<C>()
    }
}

/// One configured database: an r2d2 pool of any diesel connection type, plus its settings.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::SqliteConnection;
/// use diesel_atomic::Database;
///
/// let pool = Pool::builder()
///     .max_size(1)
///     .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
///     .unwrap();
/// let db = Database::new(pool).atomic_requests(true);
/// # let _ = db;
/// ```
#[derive(Clone)]
pub struct Database {
    pool: Pools,
    atomic_requests: bool,
}

/// A sync (r2d2) or an async (deadpool, bb8) pool.
#[derive(Clone)]
enum Pools {
    Sync(Arc<dyn ErasedPool>),
    #[cfg(feature = "async")]
    Async(Arc<dyn crate::api::aio::AsyncPool>),
}

impl Database {
    /// Wraps a pool; the alias's connections are of type `C`.
    pub fn new<C>(pool: Pool<ConnectionManager<C>>) -> Database
    where
        C: R2D2Connection + 'static,
    {
        Database {
            pool: Pools::Sync(Arc::new(pool)),
            atomic_requests: false,
        }
    }

    /// Wraps a diesel-async pool (deadpool or bb8, of `AsyncDieselConnectionManager<C>`): the
    /// alias is for async code (`diesel_atomic::aio`, `#[atomic] async fn`).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # #[cfg(feature = "sqlite")] {
    /// use diesel::SqliteConnection;
    /// use diesel_async::pooled_connection::AsyncDieselConnectionManager;
    /// use diesel_async::pooled_connection::deadpool::Pool;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_atomic::Database;
    ///
    /// type Conn = SyncConnectionWrapper<SqliteConnection>;
    /// let manager = AsyncDieselConnectionManager::<Conn>::new(":memory:");
    /// let pool = Pool::builder(manager).max_size(1).build().unwrap();
    /// let database = Database::new_async(pool);
    /// # let _ = database;
    /// # }
    /// ```
    #[cfg(feature = "async")]
    pub fn new_async<P: crate::api::aio::AsyncPool>(pool: P) -> Database {
        Database {
            pool: Pools::Async(Arc::new(pool)),
            atomic_requests: false,
        }
    }

    /// Django's `ATOMIC_REQUESTS` for this alias (default off): inside
    /// [`request`](crate::request), a view's work on this alias is one transaction.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// # use diesel::SqliteConnection;
    /// use diesel_atomic::Database;
    ///
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// let database = Database::new(pool).atomic_requests(true);
    /// assert!(database.has_atomic_requests());
    /// ```
    pub fn atomic_requests(mut self, on: bool) -> Database {
        self.atomic_requests = on;
        self
    }

    /// Whether per-request transactions are on for this alias.
    pub fn has_atomic_requests(&self) -> bool {
        self.atomic_requests
    }

    pub(crate) fn checkout(&self, alias: &str) -> Result<Box<dyn PooledConn>, Error> {
        match &self.pool {
            Pools::Sync(pool) => pool.checkout().map_err(|source| Error::Pool {
                alias: alias.to_owned(),
                source,
            }),
            #[cfg(feature = "async")]
            Pools::Async(pool) => Err(Error::WrongConnectionType {
                alias: alias.to_owned(),
                expected: pool.connection_type(),
            }),
        }
    }

    /// The async pool of an async alias; a sync alias is `Error::WrongConnectionType`.
    #[cfg(feature = "async")]
    pub(crate) fn async_pool(
        &self,
        alias: &str,
    ) -> Result<&Arc<dyn crate::api::aio::AsyncPool>, Error> {
        match &self.pool {
            Pools::Async(pool) => Ok(pool),
            Pools::Sync(pool) => Err(Error::WrongConnectionType {
                alias: alias.to_owned(),
                expected: pool.connection_type(),
            }),
        }
    }

    pub(crate) fn connection_type(&self) -> &'static str {
        match &self.pool {
            Pools::Sync(pool) => pool.connection_type(),
            #[cfg(feature = "async")]
            Pools::Async(pool) => pool.connection_type(),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("connection_type", &self.connection_type())
            .field("atomic_requests", &self.atomic_requests)
            .finish()
    }
}

/// The registry: alias → [`Database`], in the order the aliases were added.
///
/// Cheap to clone (one `Arc`). Make it the process-wide registry with [`Databases::install`],
/// or this thread's with [`Databases::enter`] (which wins over `install`, handy in tests).
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::SqliteConnection;
/// use diesel_atomic::{Database, Databases};
///
/// let pool = |url: &str| {
///     Pool::builder()
///         .max_size(1)
///         .build(ConnectionManager::<SqliteConnection>::new(url))
///         .unwrap()
/// };
/// let databases = Databases::new()
///     .add("default", Database::new(pool(":memory:")))
///     .add("other", Database::new(pool(":memory:")));
/// let _guard = databases.enter();
/// assert_eq!(databases.aliases().collect::<Vec<_>>(), ["default", "other"]);
/// ```
#[derive(Clone, Default)]
pub struct Databases {
    entries: Arc<Vec<(String, Database)>>,
}

impl Databases {
    /// An empty registry.
    pub fn new() -> Databases {
        Databases::default()
    }

    /// Adds `alias`; adding an alias again replaces its database and keeps its position.
    pub fn add(mut self, alias: &str, db: Database) -> Databases {
        let entries = Arc::make_mut(&mut self.entries);
        match entries.iter_mut().find(|(name, _)| name == alias) {
            Some((_, existing)) => *existing = db,
            None => entries.push((alias.to_owned(), db)),
        }
        self
    }

    /// Makes this the process-wide registry, replacing any previous one.
    ///
    /// Fails with `Error::EmptyRegistry` when the registry is empty (surely a mistake).
    pub fn install(self) -> Result<(), Error> {
        if self.entries.is_empty() {
            return Err(Error::EmptyRegistry);
        }
        *GLOBAL
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(self);
        Ok(())
    }

    /// Makes this the registry of the current thread until the guard drops.
    ///
    /// Takes precedence over [`Databases::install`]; guards nest and restore the previous one.
    pub fn enter(&self) -> DatabasesGuard {
        let previous = THREAD.with(|slot| slot.borrow_mut().replace(self.clone()));
        DatabasesGuard {
            previous,
            _not_send: PhantomData,
        }
    }

    /// The aliases, in the order they were added.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(alias, _)| alias.as_str())
    }

    /// The database configured under `alias`.
    pub fn get(&self, alias: &str) -> Result<&Database, Error> {
        self.entries
            .iter()
            .find(|(name, _)| name == alias)
            .map(|(_, db)| db)
            .ok_or_else(|| Error::UnknownAlias {
                alias: alias.to_owned(),
                known: self.aliases().map(str::to_owned).collect(),
            })
    }
}

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(alias, db)| (alias, db)))
            .finish()
    }
}

/// Restores the thread's previous registry when dropped. Not `Send`: it belongs to the thread
/// that called [`Databases::enter`].
#[must_use = "the registry is active only while the guard lives"]
pub struct DatabasesGuard {
    previous: Option<Databases>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for DatabasesGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        // The thread-local may already be gone if the guard lives in another thread-local.
        let _ = THREAD.try_with(|slot| *slot.borrow_mut() = previous);
    }
}

static GLOBAL: RwLock<Option<Databases>> = RwLock::new(None);

thread_local! {
    static THREAD: RefCell<Option<Databases>> = const { RefCell::new(None) };
}

/// The registry in force on this thread: the entered one, else the installed one.
pub(crate) fn current() -> Result<Databases, Error> {
    if let Some(databases) = THREAD.with(|slot| slot.borrow().clone()) {
        return Ok(databases);
    }
    GLOBAL
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
        .ok_or(Error::NotConfigured)
}

/// The database configured under `alias` in the registry in force.
pub(crate) fn lookup(alias: &str) -> Result<Database, Error> {
    current()?.get(alias).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Database>();
        assert_send_sync::<Databases>();
    }

    #[test]
    fn adding_an_alias_again_replaces_it_in_place() {
        let pool = || {
            Pool::builder()
                .max_size(1)
                .build(ConnectionManager::<diesel::SqliteConnection>::new(
                    ":memory:",
                ))
                .unwrap()
        };
        let databases = Databases::new()
            .add("default", Database::new(pool()))
            .add("other", Database::new(pool()))
            .add("default", Database::new(pool()).atomic_requests(true));
        assert_eq!(
            databases.aliases().collect::<Vec<_>>(),
            ["default", "other"]
        );
        assert!(databases.get("default").unwrap().has_atomic_requests());
    }

    #[test]
    fn installing_an_empty_registry_is_refused() {
        let error = Databases::new().install().unwrap_err();
        assert!(
            error.to_string().contains("empty Databases registry"),
            "{error}"
        );
    }
}
