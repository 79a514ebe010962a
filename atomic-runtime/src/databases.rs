//! Database aliases: the registry that maps an alias to its pool.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use diesel::r2d2::{ConnectionManager, Pool, PoolError, R2D2Connection};

use crate::adapter::{PooledConn, replication};
use crate::error::Error;
use crate::options::ReadYourWrites;

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
    /// Read-only copies of the primary (rules P1, P2); `None` without any, which is what
    /// nearly every alias costs.
    replicas: Option<Arc<Replicas>>,
    read_your_writes: ReadYourWrites,
}

/// An alias's replicas, shared by the clones of its `Database`.
struct Replicas {
    /// r2d2 pools for a sync alias, async pools for an async one.
    pools: Vec<Pools>,
    /// Why they cannot serve the alias, found when one was added; reported, naming the alias,
    /// when the registry is installed and at first use.
    problem: Option<String>,
    /// The next replica to read from, round robin.
    next: AtomicUsize,
}

/// Whether any `Database` of the process has replicas: until one does, a COMMIT does not look
/// its alias up to remember it for read-your-writes (rule P2), so replicas cost nothing to
/// programs without them.
static REPLICAS_CONFIGURED: AtomicBool = AtomicBool::new(false);

/// See [`REPLICAS_CONFIGURED`].
#[inline]
pub(crate) fn replicas_configured() -> bool {
    REPLICAS_CONFIGURED.load(Ordering::Relaxed)
}

/// A sync (r2d2) or an async (deadpool, bb8) pool.
#[derive(Clone)]
enum Pools {
    Sync(Arc<dyn ErasedPool>),
    #[cfg(feature = "async")]
    Async(Arc<dyn crate::api::aio::AsyncPool>),
}

impl Pools {
    fn connection_type(&self) -> &'static str {
        match self {
            Pools::Sync(pool) => pool.connection_type(),
            #[cfg(feature = "async")]
            Pools::Async(pool) => pool.connection_type(),
        }
    }

    fn is_async(&self) -> bool {
        match self {
            Pools::Sync(_) => false,
            #[cfg(feature = "async")]
            Pools::Async(_) => true,
        }
    }
}

/// A pool [`Database::replica`] takes: an r2d2 pool of diesel's `PgConnection` or
/// `MysqlConnection` for a sync alias; with the `async` feature, a deadpool or bb8 pool of
/// diesel-async's `AsyncPgConnection` or `AsyncMysqlConnection` for an async one. Implemented
/// by diesel-atomic only.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::SqliteConnection;
/// use diesel_atomic::{Database, ReplicaPool};
///
/// fn with_replica(database: Database, replica: impl ReplicaPool) -> Database {
///     database.replica(replica)
/// }
/// let pool = || {
///     Pool::builder()
///         .max_size(1)
///         .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
///         .unwrap()
/// };
/// // SQLite has no replicas: accepted here, `Error::ReplicaMisconfigured` at install or use.
/// let database = with_replica(Database::new(pool()), pool());
/// assert_eq!(database.replica_count(), 1);
/// ```
pub trait ReplicaPool {
    #[doc(hidden)]
    fn erase(self) -> ErasedReplica;
}

/// A replica's pool with its type erased, and whether replication queries know its
/// connection type.
#[doc(hidden)]
pub struct ErasedReplica {
    pool: Pools,
    supported: Result<(), String>,
}

impl<C: R2D2Connection + 'static> ReplicaPool for Pool<ConnectionManager<C>> {
    fn erase(self) -> ErasedReplica {
        ErasedReplica {
            pool: Pools::Sync(Arc::new(self)),
            supported: replication::supports::<C>(),
        }
    }
}

#[cfg(feature = "async")]
impl<P: crate::api::aio::AsyncPool> ReplicaPool for P {
    fn erase(self) -> ErasedReplica {
        ErasedReplica {
            supported: self.replica_support(),
            pool: Pools::Async(Arc::new(self)),
        }
    }
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
            replicas: None,
            read_your_writes: ReadYourWrites::default(),
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
            replicas: None,
            read_your_writes: ReadYourWrites::default(),
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

    /// Adds a read-only replica of the primary: a pool of the primary's own connection type
    /// (PostgreSQL hot standbys, MariaDB replicas). Call it once per replica; reads take them
    /// in turn.
    ///
    /// Reads outside any block of the alias ([`Db::read`](crate::Db::read),
    /// [`read`](crate::read)) and `#[atomic(durable = true, read_only = true, replica =
    /// true)]` blocks go to a replica; everything else stays on the primary, and inside a
    /// block reads use the block's connection (rule P1: a transaction reads its own writes).
    /// After this thread committed on the alias, [`ReadYourWrites`] decides (rule P2). A
    /// replica that cannot be reached (its pool's `get` fails: bound it with the pool's
    /// `connection_timeout`, and build the pool with `build_unchecked` so that a replica down
    /// at start-up does not stop the application) or lags beyond the policy's bound makes that
    /// read go to the primary, with one WARN event. A write that reaches a replica fails with
    /// the database's read-only error.
    ///
    /// An async alias ([`Database::new_async`]) takes a deadpool or bb8 pool of its own
    /// connection type the same way, and its reads are [`aio::read`](crate::aio::read) and
    /// [`aio::Db::read`](crate::aio::Db::read) (after a commit made by the same task or
    /// request, rule P2).
    ///
    /// A replica of another connection type than the primary's, a sync pool for an async
    /// alias or the reverse, a SQLite alias (SQLite has no replicas), or a connection type
    /// other than diesel's `PgConnection` and `MysqlConnection` (diesel-async's
    /// `AsyncPgConnection` and `AsyncMysqlConnection`) is `Error::ReplicaMisconfigured`
    /// naming the alias, from [`Databases::install`] and at the alias's first read.
    ///
    /// ```no_run
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # #[cfg(feature = "postgres")] {
    /// use std::time::Duration;
    /// use diesel::PgConnection;
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel_atomic::{Database, Databases, ReadYourWrites};
    ///
    /// let pool = |url: &str| {
    ///     Pool::builder()
    ///         .connection_timeout(Duration::from_secs(2))
    ///         .build(ConnectionManager::<PgConnection>::new(url))
    ///         .unwrap()
    /// };
    /// Databases::new()
    ///     .add(
    ///         "default",
    ///         Database::new(pool("postgres://db-primary/app"))
    ///             .replica(pool("postgres://db-standby-1/app"))
    ///             .replica(pool("postgres://db-standby-2/app"))
    ///             .read_your_writes(ReadYourWrites::Wait(Duration::from_millis(500))),
    ///     )
    ///     .install()?;
    /// # }
    /// # Ok::<(), diesel_atomic::Error>(())
    /// ```
    pub fn replica<P: ReplicaPool>(mut self, pool: P) -> Database {
        REPLICAS_CONFIGURED.store(true, Ordering::Relaxed);
        let replica = pool.erase();
        let problem = self.replica_problem(&replica);
        let (mut pools, earlier_problem) = match self.replicas.take() {
            Some(replicas) => (replicas.pools.clone(), replicas.problem.clone()),
            None => (Vec::new(), None),
        };
        pools.push(replica.pool);
        self.replicas = Some(Arc::new(Replicas {
            pools,
            problem: earlier_problem.or(problem),
            next: AtomicUsize::new(0),
        }));
        self
    }

    /// Why `replica` cannot serve this alias, if it cannot.
    fn replica_problem(&self, replica: &ErasedReplica) -> Option<String> {
        let replica_type = replica.pool.connection_type();
        let primary_type = self.pool.connection_type();
        if replica.pool.is_async() != self.pool.is_async() {
            let (alias_kind, replica_kind) = if self.pool.is_async() {
                ("async (`Database::new_async`)", "an r2d2 pool")
            } else {
                ("sync (`Database::new`)", "an async pool")
            };
            return Some(format!(
                "the alias is {alias_kind}, and the replica {replica_kind} of `{replica_type}`: \
                 give it a pool of the same kind as the primary's"
            ));
        }
        if replica_type != primary_type {
            return Some(format!(
                "the replica's pool holds `{replica_type}` connections, the primary's \
                 `{primary_type}`"
            ));
        }
        replica.supported.clone().err()
    }

    /// What reads outside blocks do after this thread committed on the alias (rule P2);
    /// the default is `ReadYourWrites::Wait(1 s)`. Without replicas it changes nothing.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// # use diesel::SqliteConnection;
    /// use diesel_atomic::{Database, ReadYourWrites};
    ///
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// let database = Database::new(pool).read_your_writes(ReadYourWrites::Primary);
    /// assert_eq!(database.read_your_writes_policy(), ReadYourWrites::Primary);
    /// ```
    pub fn read_your_writes(mut self, policy: ReadYourWrites) -> Database {
        self.read_your_writes = policy;
        self
    }

    /// The alias's read-your-writes policy (see [`Database::read_your_writes`]).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// # use diesel::SqliteConnection;
    /// use diesel_atomic::{Database, ReadYourWrites};
    ///
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// assert_eq!(Database::new(pool).read_your_writes_policy(), ReadYourWrites::default());
    /// ```
    pub fn read_your_writes_policy(&self) -> ReadYourWrites {
        self.read_your_writes
    }

    /// How many replicas the alias has.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// # use diesel::SqliteConnection;
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
    /// assert_eq!(diesel_atomic::Database::new(pool).replica_count(), 0);
    /// ```
    pub fn replica_count(&self) -> usize {
        self.replicas
            .as_ref()
            .map_or(0, |replicas| replicas.pools.len())
    }

    /// The alias's replicas, to route a read or a replica block (rules P1, P2): `None`
    /// without any; a misconfigured replica is an error naming the alias.
    pub(crate) fn replicas(&self, alias: &str) -> Result<Option<ReplicaSet<'_>>, Error> {
        let Some(replicas) = &self.replicas else {
            return Ok(None);
        };
        if let Some(problem) = &replicas.problem {
            return Err(Error::ReplicaMisconfigured {
                alias: alias.to_owned(),
                problem: problem.clone(),
            });
        }
        Ok(Some(ReplicaSet {
            replicas,
            policy: self.read_your_writes,
        }))
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
        self.pool.connection_type()
    }

    /// Whether the alias is for async code ([`Database::new_async`]).
    pub(crate) fn is_async(&self) -> bool {
        self.pool.is_async()
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("connection_type", &self.connection_type())
            .field("atomic_requests", &self.atomic_requests)
            .field("replicas", &self.replica_count())
            .field("read_your_writes", &self.read_your_writes)
            .finish()
    }
}

/// An alias's usable replicas and its read-your-writes policy, as routing sees them.
pub(crate) struct ReplicaSet<'a> {
    replicas: &'a Replicas,
    pub(crate) policy: ReadYourWrites,
}

impl ReplicaSet<'_> {
    /// How many replicas there are (at least one).
    pub(crate) fn len(&self) -> usize {
        self.replicas.pools.len()
    }

    /// A number that goes up by one with each call, across threads: the round robin's turn.
    pub(crate) fn turn(&self) -> usize {
        self.replicas.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A connection of replica `index` of a sync alias.
    pub(crate) fn checkout(&self, index: usize) -> Result<Box<dyn PooledConn>, String> {
        match &self.replicas.pools[index] {
            Pools::Sync(pool) => pool.checkout().map_err(|error| error.to_string()),
            #[cfg(feature = "async")]
            Pools::Async(pool) => Err(format!(
                "replica {index} is an async pool of `{}` (the alias is sync)",
                pool.connection_type()
            )),
        }
    }

    /// A connection of replica `index` of an async alias.
    #[cfg(feature = "async")]
    pub(crate) async fn checkout_async(
        &self,
        alias: &str,
        index: usize,
    ) -> Result<Box<dyn crate::adapter::async_connection::AsyncPooledConn>, String> {
        match &self.replicas.pools[index] {
            Pools::Async(pool) => pool
                .checkout(alias)
                .await
                .map_err(|error| error.to_string()),
            Pools::Sync(pool) => Err(format!(
                "replica {index} is an r2d2 pool of `{}` (the alias is async)",
                pool.connection_type()
            )),
        }
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

    /// The aliases with `atomic_requests(true)`, in the order they were added (rule Q3).
    pub(crate) fn atomic_request_aliases(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, database)| database.has_atomic_requests())
            .map(|(alias, _)| alias.as_str())
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
    ///
    /// A misconfigured replica ([`Database::replica`]) is `Error::ReplicaMisconfigured`.
    pub fn install(self) -> Result<(), Error> {
        if self.entries.is_empty() {
            return Err(Error::EmptyRegistry);
        }
        for (alias, db) in self.entries.iter() {
            db.replicas(alias)?;
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

/// A registry entered on the thread by moving it in, and moved back to `home` when dropped:
/// [`Databases::enter`] without its reference count. A server polls each request several
/// times on any worker thread; a clone per poll is a count every worker writes, one cache
/// line passed between the cores on each poll (perf: the hottest instruction of the tower
/// layer's own code). Not `Send`, as [`DatabasesGuard`].
#[cfg(feature = "async")]
#[must_use = "the registry is active only while the guard lives"]
pub(crate) struct MovedIn<'a> {
    home: &'a mut Option<Databases>,
    /// The thread's registry before, when `home` had one to enter.
    previous: Option<Option<Databases>>,
    _not_send: PhantomData<*const ()>,
}

#[cfg(feature = "async")]
impl<'a> MovedIn<'a> {
    /// Enters the registry in `home`, if there is one, until the guard drops.
    pub(crate) fn enter(home: &'a mut Option<Databases>) -> MovedIn<'a> {
        let previous = home
            .take()
            .map(|databases| THREAD.with(|slot| slot.borrow_mut().replace(databases)));
        MovedIn {
            home,
            previous,
            _not_send: PhantomData,
        }
    }
}

#[cfg(feature = "async")]
impl Drop for MovedIn<'_> {
    fn drop(&mut self) {
        let Some(previous) = self.previous.take() else {
            return;
        };
        // What was entered comes back: guards entered meanwhile are scoped and restored it.
        let entered = THREAD.try_with(|slot| std::mem::replace(&mut *slot.borrow_mut(), previous));
        if let Ok(entered) = entered {
            *self.home = entered;
        }
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

    fn pool() -> Pool<ConnectionManager<diesel::SqliteConnection>> {
        Pool::builder()
            .max_size(1)
            .build(ConnectionManager::<diesel::SqliteConnection>::new(
                ":memory:",
            ))
            .unwrap()
    }

    #[test]
    fn adding_an_alias_again_replaces_it_in_place() {
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

    /// `MovedIn` enters its registry without a clone and hands the same one back, restoring
    /// whatever the thread had before; a guard entered meanwhile is scoped inside it.
    #[cfg(feature = "async")]
    #[test]
    fn a_moved_in_registry_is_entered_and_comes_back_home() {
        let outer = Databases::new().add("outer", Database::new(pool()));
        let mine = Databases::new().add("mine", Database::new(pool()));
        let inner = Databases::new().add("inner", Database::new(pool()));
        let aliases = || {
            current()
                .map(|databases| databases.aliases().collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        let _outer = outer.enter();
        let mut home = Some(mine.clone());
        {
            let _moved = MovedIn::enter(&mut home);
            assert_eq!(aliases(), "mine");
            {
                let _inner = inner.enter();
                assert_eq!(aliases(), "inner");
            }
            assert_eq!(aliases(), "mine");
        }
        assert_eq!(aliases(), "outer", "the thread's registry before is back");
        let home = home.expect("the registry came back");
        assert!(
            Arc::ptr_eq(&home.entries, &mine.entries),
            "the same one, not a copy"
        );
        let mut none = None;
        {
            let _moved = MovedIn::enter(&mut none);
            assert_eq!(aliases(), "outer", "nothing to enter: the thread's stays");
        }
        assert!(none.is_none());
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
