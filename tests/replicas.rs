//! Reads on replicas (rules P1 and P2, API.md §11) against real servers: a PostgreSQL hot
//! standby streaming from `PG_URL` (`PG_REPLICA_URL`) and a MariaDB GTID replica of
//! `MYSQL_URL` (`MYSQL_REPLICA_URL`), both started by `scripts/db-up --replica`.
//!
//! Without those URLs a server test prints `SKIPPED: <why>` and passes, except under
//! `CI=true`, where it fails: CI must never go green without the replicas.
//!
//! Every server test holds [`REPLICATION`] for its whole run: some pause the replica's replay,
//! and the others need it running, so they never overlap. Each test has tables of its own
//! (`replicas_<test>_<pid>`).
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod captured_logs;
mod proxy;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::{
    Database, Databases, DatabasesGuard, Error, ReadYourWrites, atomic, transaction,
};
use tracing::Level;

/// Serialises the tests that touch a replica (see the module's docs).
static REPLICATION: Mutex<()> = Mutex::new(());

fn replication_lock() -> MutexGuard<'static, ()> {
    REPLICATION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the tests need of a backend with a replica.
trait Replicated: Connection + R2D2Connection + Send + 'static {
    const NAME: &'static str;
    const PRIMARY_URL: &'static str;
    const REPLICA_URL: &'static str;
    /// A URL of the same server type on a port where nothing listens.
    const NOWHERE_URL: &'static str;

    fn create_table(conn: &mut Self, table: &str) -> QueryResult<()>;
    fn insert(conn: &mut Self, table: &str, id: i32) -> QueryResult<()>;
    fn has_row(conn: &mut Self, table: &str, id: i32) -> QueryResult<bool>;
    /// Whether the session is on the replica (PostgreSQL: in recovery; MariaDB: the
    /// read-only server).
    fn on_replica(conn: &mut Self) -> QueryResult<bool>;
    /// Waits until the replica has applied everything the primary has committed.
    fn catch_up(primary: &mut Self, replica: &mut Self);
    /// Stops the replica from applying the primary's changes until the guard drops (also
    /// when the test fails).
    fn pause_replay(replica: Self) -> ReplayPaused<Self>;
    fn resume_replay(replica: &mut Self) -> QueryResult<()>;
    /// Whether `error` is the database's refusal to write on a replica.
    fn is_read_only_error(error: &DieselError) -> bool;
}

/// Resumes the replica's replay when dropped.
struct ReplayPaused<C: Replicated> {
    replica: C,
}

impl<C: Replicated> Drop for ReplayPaused<C> {
    fn drop(&mut self) {
        if let Err(error) = C::resume_replay(&mut self.replica) {
            eprintln!("resuming the replica's replay failed: {error}");
        }
    }
}

fn url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|url| !url.is_empty())
}

/// The primary's and the replica's URLs, or `None` (after printing why) when they are not
/// configured; under `CI=true` that is a failure.
fn servers<C: Replicated>() -> Option<(String, String)> {
    match (url(C::PRIMARY_URL), url(C::REPLICA_URL)) {
        (Some(primary), Some(replica)) => Some((primary, replica)),
        _ => {
            let why = format!(
                "{} and {} are not both set, so the {} replica tests cannot run; start the \
                 servers with `eval \"$(scripts/db-up --replica)\"` or run `scripts/test`",
                C::PRIMARY_URL,
                C::REPLICA_URL,
                C::NAME
            );
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why} (CI=true: a missing server is a failure, not a skip)"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

fn connect<C: Replicated>(url: &str) -> C {
    C::establish(url).unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

fn pool<C: Replicated>(url: &str) -> Pool<ConnectionManager<C>> {
    Pool::builder()
        .max_size(3)
        .connection_timeout(Duration::from_secs(10))
        .build(ConnectionManager::<C>::new(url))
        .expect("pool")
}

/// One test's servers: its table (created on the primary and replayed by the replica), the
/// lock on replication, and direct connections for setup.
struct Setup<C: Replicated> {
    table: String,
    primary_url: String,
    replica_url: String,
    primary: C,
    replica: C,
    _lock: MutexGuard<'static, ()>,
}

impl<C: Replicated> Setup<C> {
    fn new(test: &str) -> Option<Setup<C>> {
        let (primary_url, replica_url) = servers::<C>()?;
        let lock = replication_lock();
        let mut primary = connect::<C>(&primary_url);
        let mut replica = connect::<C>(&replica_url);
        let table = format!("replicas_{test}_{}", std::process::id());
        C::create_table(&mut primary, &table).expect("create the test table");
        C::catch_up(&mut primary, &mut replica);
        Some(Setup {
            table,
            primary_url,
            replica_url,
            primary,
            replica,
            _lock: lock,
        })
    }

    /// The registry for the test's thread: `"default"` on the primary, with the replica.
    fn enter(&self, policy: ReadYourWrites) -> DatabasesGuard {
        Databases::new()
            .add(
                "default",
                Database::new(pool::<C>(&self.primary_url))
                    .replica(pool::<C>(&self.replica_url))
                    .read_your_writes(policy),
            )
            .enter()
    }

    fn pause_replay(&self) -> ReplayPaused<C> {
        C::pause_replay(connect::<C>(&self.replica_url))
    }

    fn catch_up(&mut self) {
        C::catch_up(&mut self.primary, &mut self.replica);
    }
}

impl<C: Replicated> Drop for Setup<C> {
    fn drop(&mut self) {
        let drop_table = format!("DROP TABLE IF EXISTS {}", self.table);
        if let Err(error) = self.primary.batch_execute(&drop_table) {
            eprintln!("dropping {}: {error}", self.table);
        }
    }
}

/// What a read saw: whether the row was there, and whether it ran on the replica.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    row: bool,
    on_replica: bool,
}

fn look<C: Replicated>(conn: &mut C, table: &str, id: i32) -> QueryResult<Seen> {
    Ok(Seen {
        row: C::has_row(conn, table, id)?,
        on_replica: C::on_replica(conn)?,
    })
}

/// A read through the runtime, as an application makes it.
fn read_row<C: Replicated>(table: &str, id: i32) -> QueryResult<Seen> {
    diesel_atomic::read(|conn: &mut C| look(conn, table, id))
}

/// Inserts a row in an outermost block of its own: the commit the next read must see.
#[atomic]
fn insert_committed<C: Replicated>(table: &str, id: i32) -> QueryResult<()> {
    diesel_atomic::connection(|conn: &mut C| C::insert(conn, table, id))
}

/// The whole block on a replica; a nested block and `read` inside it share its connection.
#[atomic(durable = true, read_only = true, replica = true)]
fn report<C: Replicated>(table: &str, id: i32) -> QueryResult<(Seen, Seen, Seen)> {
    let outer = diesel_atomic::connection(|conn: &mut C| look(conn, table, id))?;
    let nested =
        transaction::atomic(|| diesel_atomic::connection(|conn: &mut C| look(conn, table, id)))?;
    let read = read_row::<C>(table, id)?;
    Ok((outer, nested, read))
}

/// A write inside a replica block.
#[atomic(durable = true, read_only = true, replica = true)]
fn write_on_replica<C: Replicated>(table: &str, id: i32) -> QueryResult<()> {
    diesel_atomic::connection(|conn: &mut C| C::insert(conn, table, id))
}

// --- The tests ---------------------------------------------------------------------------------

fn a_write_then_a_read_in_one_block_sees_the_write<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("same_block") else {
        return;
    };
    let _registry = setup.enter(ReadYourWrites::Off);
    let seen = transaction::atomic(|| {
        diesel_atomic::connection(|conn: &mut C| C::insert(conn, &setup.table, 1))?;
        read_row::<C>(&setup.table, 1)
    })
    .unwrap();
    assert_eq!(
        seen,
        Seen {
            row: true,
            on_replica: false
        },
        "inside a block, a read runs on the block's connection (the primary)"
    );
}

fn wait_waits_its_bound_then_reads_the_primary<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("wait_lagging") else {
        return;
    };
    let bound = Duration::from_millis(400);
    let _registry = setup.enter(ReadYourWrites::Wait(bound));
    let _paused = setup.pause_replay();
    insert_committed::<C>(&setup.table, 1).unwrap();
    let started = Instant::now();
    let (seen, warnings) =
        captured_logs::capture_logs(Level::WARN, || read_row::<C>(&setup.table, 1));
    let waited = started.elapsed();
    assert_eq!(
        seen.unwrap(),
        Seen {
            row: true,
            on_replica: false
        },
        "after the bound, the primary"
    );
    assert!(
        waited >= bound,
        "waited only {waited:?}, less than {bound:?}"
    );
    assert!(
        waited < bound * 5,
        "waited {waited:?}, far more than {bound:?}"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("alias 'default'") && warnings[0].contains("has not replayed"),
        "{warnings:?}"
    );
}

fn primary_reads_the_primary_at_once_for_the_rest_of_the_scope<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("primary_policy") else {
        return;
    };
    let _registry = setup.enter(ReadYourWrites::Primary);
    let _paused = setup.pause_replay();
    assert!(
        read_row::<C>(&setup.table, 1).unwrap().on_replica,
        "before any commit, a replica"
    );
    insert_committed::<C>(&setup.table, 1).unwrap();
    let started = Instant::now();
    let (seen, warnings) =
        captured_logs::capture_logs(Level::WARN, || read_row::<C>(&setup.table, 1));
    assert_eq!(
        seen.unwrap(),
        Seen {
            row: true,
            on_replica: false
        }
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "no waiting: {:?}",
        started.elapsed()
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(
        !read_row::<C>(&setup.table, 1).unwrap().on_replica,
        "and so every later read of the thread"
    );
    // A request is a scope of its own: the thread's earlier commit does not count there, its
    // own commit does.
    let (before, after) = diesel_atomic::request(|| {
        let before = read_row::<C>(&setup.table, 1)?;
        insert_committed::<C>(&setup.table, 2)?;
        let after = read_row::<C>(&setup.table, 2)?;
        Ok::<_, DieselError>((before, after))
    })
    .unwrap();
    assert_eq!(
        before,
        Seen {
            row: false,
            on_replica: true
        },
        "a new request reads the (paused) replica"
    );
    assert_eq!(
        after,
        Seen {
            row: true,
            on_replica: false
        },
        "after the request's own commit, the primary"
    );
}

fn off_reads_the_replica_even_when_it_lags<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("off_policy") else {
        return;
    };
    let _registry = setup.enter(ReadYourWrites::Off);
    let _paused = setup.pause_replay();
    insert_committed::<C>(&setup.table, 1).unwrap();
    assert_eq!(
        read_row::<C>(&setup.table, 1).unwrap(),
        Seen {
            row: false,
            on_replica: true
        },
        "stale: the replica has not replayed the commit"
    );
}

fn wait_reads_the_replica_once_it_replayed_the_commit<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("wait_replayed") else {
        return;
    };
    let _registry = setup.enter(ReadYourWrites::Wait(Duration::from_secs(10)));
    for id in 1..=3 {
        insert_committed::<C>(&setup.table, id).unwrap();
        let (seen, warnings) =
            captured_logs::capture_logs(Level::WARN, || read_row::<C>(&setup.table, id));
        assert_eq!(
            seen.unwrap(),
            Seen {
                row: true,
                on_replica: true
            },
            "row {id}: the replica, after it replayed the commit"
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

fn an_explicit_mode_commit_is_waited_for_too<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("explicit_commit") else {
        return;
    };
    let bound = Duration::from_millis(300);
    let _registry = setup.enter(ReadYourWrites::Wait(bound));
    let _paused = setup.pause_replay();
    let mut own = connect::<C>(&setup.primary_url);
    transaction::Atomic::new()
        .run_on(&mut own, |conn| C::insert(conn, &setup.table, 1))
        .unwrap();
    let started = Instant::now();
    let (seen, warnings) =
        captured_logs::capture_logs(Level::WARN, || read_row::<C>(&setup.table, 1));
    assert_eq!(
        seen.unwrap(),
        Seen {
            row: true,
            on_replica: false
        }
    );
    assert!(started.elapsed() >= bound, "{:?}", started.elapsed());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

fn a_write_through_connection_outside_blocks_is_waited_for_too<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("autocommit_write") else {
        return;
    };
    let bound = Duration::from_millis(300);
    let _registry = setup.enter(ReadYourWrites::Wait(bound));
    let _paused = setup.pause_replay();
    // Autocommit mode: the INSERT commits on its own, inside no block.
    diesel_atomic::connection(|conn: &mut C| C::insert(conn, &setup.table, 1)).unwrap();
    let started = Instant::now();
    let (seen, warnings) =
        captured_logs::capture_logs(Level::WARN, || read_row::<C>(&setup.table, 1));
    assert_eq!(
        seen.unwrap(),
        Seen {
            row: true,
            on_replica: false
        }
    );
    assert!(started.elapsed() >= bound, "{:?}", started.elapsed());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

fn replica_blocks_run_on_the_replica<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("replica_block") else {
        return;
    };
    let _registry = setup.enter(ReadYourWrites::Off);
    C::insert(&mut connect::<C>(&setup.primary_url), &setup.table, 1).unwrap();
    let mut setup = setup;
    setup.catch_up();
    let (outer, nested, read) = report::<C>(&setup.table, 1).unwrap();
    let on_replica = Seen {
        row: true,
        on_replica: true,
    };
    assert_eq!(outer, on_replica, "the block");
    assert_eq!(nested, on_replica, "a block nested in it");
    assert_eq!(read, on_replica, "a read inside it");
}

fn a_replica_block_waits_for_the_threads_commit<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("replica_block_wait") else {
        return;
    };
    let bound = Duration::from_millis(300);
    let _registry = setup.enter(ReadYourWrites::Wait(bound));
    {
        let _paused = setup.pause_replay();
        insert_committed::<C>(&setup.table, 1).unwrap();
        let started = Instant::now();
        let ((outer, _, _), warnings) =
            captured_logs::capture_logs(Level::WARN, || report::<C>(&setup.table, 1).unwrap());
        assert!(started.elapsed() >= bound, "{:?}", started.elapsed());
        assert_eq!(
            outer,
            Seen {
                row: true,
                on_replica: false
            },
            "the replica lags: the block runs on the primary"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
    let (outer, _, _) = report::<C>(&setup.table, 1).unwrap();
    assert_eq!(
        outer,
        Seen {
            row: true,
            on_replica: true
        },
        "replay resumed: the replica"
    );
}

fn a_write_in_a_replica_block_fails_with_the_read_only_error<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("replica_write") else {
        return;
    };
    let _registry = setup.enter(ReadYourWrites::Off);
    let error = write_on_replica::<C>(&setup.table, 1).unwrap_err();
    assert!(C::is_read_only_error(&error), "{error:?}");
    let error = diesel_atomic::read(|conn: &mut C| C::insert(conn, &setup.table, 2)).unwrap_err();
    assert!(
        C::is_read_only_error(&error),
        "a write in a read: {error:?}"
    );
    assert!(
        !C::has_row(&mut connect::<C>(&setup.primary_url), &setup.table, 1).unwrap()
            && !C::has_row(&mut connect::<C>(&setup.primary_url), &setup.table, 2).unwrap(),
        "nothing reached the primary"
    );
}

/// The standby goes away mid-run (its connections cut, new ones refused: a proxy in front of
/// it is stopped): reads that went to it fall back to the primary, nothing fails.
fn a_replica_stopped_mid_run_sends_reads_to_the_primary<C: Replicated>() {
    let Some(mut setup) = Setup::<C>::new("stopped") else {
        return;
    };
    C::insert(&mut connect::<C>(&setup.primary_url), &setup.table, 1).unwrap();
    setup.catch_up();
    let proxy = proxy::Proxy::to(&setup.replica_url);
    let replica = Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_millis(500))
        .build(ConnectionManager::<C>::new(proxy.url(&setup.replica_url)))
        .expect("a pool through the proxy");
    let _registry = Databases::new()
        .add(
            "default",
            Database::new(pool::<C>(&setup.primary_url))
                .replica(replica)
                .read_your_writes(ReadYourWrites::Off),
        )
        .enter();
    for _ in 0..2 {
        assert_eq!(
            read_row::<C>(&setup.table, 1).unwrap(),
            Seen {
                row: true,
                on_replica: true
            },
            "while it runs, the replica"
        );
    }
    proxy.stop();
    let (seen, warnings) = captured_logs::capture_logs(Level::WARN, || {
        (0..3)
            .map(|_| read_row::<C>(&setup.table, 1))
            .collect::<Vec<_>>()
    });
    for seen in seen {
        assert_eq!(
            seen.expect("no read fails"),
            Seen {
                row: true,
                on_replica: false
            },
            "once it is gone, the primary"
        );
    }
    let fallbacks = warnings
        .iter()
        .filter(|warning| warning.contains("reading from the primary"))
        .count();
    assert_eq!(fallbacks, 3, "one per read: {warnings:?}");
}

fn an_unreachable_replica_sends_each_read_to_the_primary_with_one_warning<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("unreachable") else {
        return;
    };
    C::insert(&mut connect::<C>(&setup.primary_url), &setup.table, 1).unwrap();
    let nowhere = Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_millis(200))
        .build_unchecked(ConnectionManager::<C>::new(C::NOWHERE_URL));
    let _registry = Databases::new()
        .add(
            "default",
            Database::new(pool::<C>(&setup.primary_url)).replica(nowhere),
        )
        .enter();
    let (seen, warnings) = captured_logs::capture_logs(Level::WARN, || {
        (0..3)
            .map(|_| read_row::<C>(&setup.table, 1).unwrap())
            .collect::<Vec<_>>()
    });
    for seen in seen {
        assert_eq!(
            seen,
            Seen {
                row: true,
                on_replica: false
            }
        );
    }
    assert_eq!(warnings.len(), 3, "one per read: {warnings:?}");
    for warning in &warnings {
        assert!(
            warning.contains("alias 'default'") && warning.contains("cannot be reached"),
            "{warning}"
        );
    }
}

fn a_replica_block_nested_in_a_block_of_its_alias_is_an_error<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("nested") else {
        return;
    };
    let _registry = setup.enter(ReadYourWrites::Off);
    let outcome = transaction::atomic(|| {
        let inner = report::<C>(&setup.table, 1);
        let error = inner.expect_err("a nested replica block");
        let message = error.to_string();
        assert!(
            message.contains("`replica = true` block of alias 'default' must be the outermost"),
            "{message}"
        );
        assert!(message.contains("#[non_atomic_requests"), "{message}");
        diesel_atomic::connection(|conn: &mut C| C::insert(conn, &setup.table, 1))
    });
    outcome.expect("the outer block is unharmed and commits");
    let replica_block = transaction::Atomic::new().durable(true).replica(true);
    let error = transaction::atomic(|| replica_block.run(|| Ok::<_, Error>(()))).unwrap_err();
    assert!(
        matches!(error, Error::ReplicaNested { ref alias } if alias == "default"),
        "{error:?}"
    );
}

fn a_replica_block_on_an_alias_without_replicas_runs_on_the_primary<C: Replicated>() {
    let Some(setup) = Setup::<C>::new("no_replica") else {
        return;
    };
    let _registry = Databases::new()
        .add("default", Database::new(pool::<C>(&setup.primary_url)))
        .enter();
    let (outer, _, read) = report::<C>(&setup.table, 1).unwrap();
    assert!(!outer.on_replica && !read.on_replica);
    let error = write_on_replica::<C>(&setup.table, 1).unwrap_err();
    assert!(
        matches!(
            error,
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)
        ),
        "still read-only: {error:?}"
    );
}

macro_rules! replica_tests {
    ($module:ident, $feature:literal, $conn:ty) => {
        #[cfg(feature = $feature)]
        mod $module {

            #[test]
            fn a_write_then_a_read_in_one_block_sees_the_write() {
                super::a_write_then_a_read_in_one_block_sees_the_write::<$conn>();
            }

            #[test]
            fn wait_waits_its_bound_then_reads_the_primary() {
                super::wait_waits_its_bound_then_reads_the_primary::<$conn>();
            }

            #[test]
            fn primary_reads_the_primary_at_once_for_the_rest_of_the_scope() {
                super::primary_reads_the_primary_at_once_for_the_rest_of_the_scope::<$conn>();
            }

            #[test]
            fn off_reads_the_replica_even_when_it_lags() {
                super::off_reads_the_replica_even_when_it_lags::<$conn>();
            }

            #[test]
            fn wait_reads_the_replica_once_it_replayed_the_commit() {
                super::wait_reads_the_replica_once_it_replayed_the_commit::<$conn>();
            }

            #[test]
            fn an_explicit_mode_commit_is_waited_for_too() {
                super::an_explicit_mode_commit_is_waited_for_too::<$conn>();
            }

            #[test]
            fn a_write_through_connection_outside_blocks_is_waited_for_too() {
                super::a_write_through_connection_outside_blocks_is_waited_for_too::<$conn>();
            }

            #[test]
            fn replica_blocks_run_on_the_replica() {
                super::replica_blocks_run_on_the_replica::<$conn>();
            }

            #[test]
            fn a_replica_block_waits_for_the_threads_commit() {
                super::a_replica_block_waits_for_the_threads_commit::<$conn>();
            }

            #[test]
            fn a_write_in_a_replica_block_fails_with_the_read_only_error() {
                super::a_write_in_a_replica_block_fails_with_the_read_only_error::<$conn>();
            }

            #[test]
            fn a_replica_stopped_mid_run_sends_reads_to_the_primary() {
                super::a_replica_stopped_mid_run_sends_reads_to_the_primary::<$conn>();
            }

            #[test]
            fn an_unreachable_replica_sends_each_read_to_the_primary_with_one_warning() {
                super::an_unreachable_replica_sends_each_read_to_the_primary_with_one_warning::<
                    $conn,
                >();
            }

            #[test]
            fn a_replica_block_nested_in_a_block_of_its_alias_is_an_error() {
                super::a_replica_block_nested_in_a_block_of_its_alias_is_an_error::<$conn>();
            }

            #[test]
            fn a_replica_block_on_an_alias_without_replicas_runs_on_the_primary() {
                super::a_replica_block_on_an_alias_without_replicas_runs_on_the_primary::<$conn>();
            }
        }
    };
}

replica_tests!(postgres, "postgres", diesel::PgConnection);
replica_tests!(mysql, "mysql", diesel::MysqlConnection);

// --- The backends ------------------------------------------------------------------------------

#[cfg(feature = "postgres")]
impl Replicated for diesel::PgConnection {
    const NAME: &'static str = "PostgreSQL";
    const PRIMARY_URL: &'static str = "PG_URL";
    const REPLICA_URL: &'static str = "PG_REPLICA_URL";
    const NOWHERE_URL: &'static str = "postgres://atomic:atomic@127.0.0.1:1/atomic_test";

    fn create_table(conn: &mut Self, table: &str) -> QueryResult<()> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INTEGER PRIMARY KEY)"
        ))
    }

    fn insert(conn: &mut Self, table: &str, id: i32) -> QueryResult<()> {
        diesel::sql_query(format!("INSERT INTO {table} (id) VALUES ($1)"))
            .bind::<diesel::sql_types::Integer, _>(id)
            .execute(conn)
            .map(drop)
    }

    fn has_row(conn: &mut Self, table: &str, id: i32) -> QueryResult<bool> {
        diesel::select(
            diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                "EXISTS (SELECT 1 FROM {table} WHERE id = "
            ))
            .bind::<diesel::sql_types::Integer, _>(id)
            .sql(")"),
        )
        .get_result(conn)
    }

    fn on_replica(conn: &mut Self) -> QueryResult<bool> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "pg_is_in_recovery()",
        ))
        .get_result(conn)
    }

    fn catch_up(primary: &mut Self, replica: &mut Self) {
        let lsn: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            // The insert position: with `synchronous_commit = off` (scripts/db-up) the write
            // position may be short of the last commit.
            "pg_current_wal_insert_lsn()::text",
        ))
        .get_result(primary)
        .expect("the primary's position");
        let started = Instant::now();
        loop {
            let replayed: bool = diesel::select(
                diesel::dsl::sql::<diesel::sql_types::Bool>("pg_last_wal_replay_lsn() >= ")
                    .bind::<diesel::sql_types::Text, _>(&lsn)
                    .sql("::pg_lsn"),
            )
            .get_result(replica)
            .expect("the standby's position");
            if replayed {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the standby did not catch up with {lsn} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pause_replay(mut replica: Self) -> ReplayPaused<Self> {
        use diesel::connection::SimpleConnection;
        replica
            .batch_execute("SELECT pg_wal_replay_pause()")
            .expect("pause the standby's replay");
        let paused = ReplayPaused { replica };
        let started = Instant::now();
        let mut paused = paused;
        // Pausing is requested; it takes effect at the next record.
        loop {
            let state: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "pg_get_wal_replay_pause_state()",
            ))
            .get_result(&mut paused.replica)
            .expect("the standby's pause state");
            if state == "paused" {
                return paused;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not paused: {state}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn resume_replay(replica: &mut Self) -> QueryResult<()> {
        use diesel::connection::SimpleConnection;
        replica.batch_execute("SELECT pg_wal_replay_resume()")
    }

    fn is_read_only_error(error: &DieselError) -> bool {
        matches!(
            error,
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, info)
                if info.message().contains("read-only transaction")
        )
    }
}

#[cfg(feature = "mysql")]
impl Replicated for diesel::MysqlConnection {
    const NAME: &'static str = "MariaDB";
    const PRIMARY_URL: &'static str = "MYSQL_URL";
    const REPLICA_URL: &'static str = "MYSQL_REPLICA_URL";
    const NOWHERE_URL: &'static str = "mysql://atomic:atomic@127.0.0.1:1/atomic_test";

    fn create_table(conn: &mut Self, table: &str) -> QueryResult<()> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id INTEGER PRIMARY KEY) ENGINE=InnoDB"
        ))
    }

    fn insert(conn: &mut Self, table: &str, id: i32) -> QueryResult<()> {
        diesel::sql_query(format!("INSERT INTO {table} (id) VALUES (?)"))
            .bind::<diesel::sql_types::Integer, _>(id)
            .execute(conn)
            .map(drop)
    }

    fn has_row(conn: &mut Self, table: &str, id: i32) -> QueryResult<bool> {
        let count: i64 = diesel::select(
            diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
                "(SELECT COUNT(*) FROM {table} WHERE id = "
            ))
            .bind::<diesel::sql_types::Integer, _>(id)
            .sql(")"),
        )
        .get_result(conn)?;
        Ok(count > 0)
    }

    fn on_replica(conn: &mut Self) -> QueryResult<bool> {
        let read_only: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "CAST(@@read_only AS SIGNED)",
        ))
        .get_result(conn)?;
        Ok(read_only == 1)
    }

    fn catch_up(primary: &mut Self, replica: &mut Self) {
        let position: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "@@gtid_binlog_pos",
        ))
        .get_result(primary)
        .expect("the primary's position");
        let reached: i64 = diesel::select(
            diesel::dsl::sql::<diesel::sql_types::BigInt>("MASTER_GTID_WAIT(")
                .bind::<diesel::sql_types::Text, _>(&position)
                .sql(", 30)"),
        )
        .get_result(replica)
        .expect("wait for the replica");
        assert_eq!(
            reached, 0,
            "the replica did not reach {position} within 30 s"
        );
    }

    fn pause_replay(mut replica: Self) -> ReplayPaused<Self> {
        use diesel::connection::SimpleConnection;
        replica
            .batch_execute("STOP SLAVE SQL_THREAD")
            .expect("stop the replica's SQL thread");
        ReplayPaused { replica }
    }

    fn resume_replay(replica: &mut Self) -> QueryResult<()> {
        use diesel::connection::SimpleConnection;
        replica.batch_execute("START SLAVE SQL_THREAD")
    }

    fn is_read_only_error(error: &DieselError) -> bool {
        match error {
            // In a READ ONLY transaction (1792), or outside one on the read-only server (1290).
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => true,
            DieselError::DatabaseError(_, info) => info.message().contains("--read-only"),
            _ => false,
        }
    }
}

// --- Without servers ---------------------------------------------------------------------------

#[cfg(feature = "postgres")]
#[test]
fn a_replica_of_another_connection_type_is_an_error_naming_the_alias() {
    let primary =
        Pool::builder().max_size(1).build_unchecked(
            ConnectionManager::<diesel::PgConnection>::new("postgres://127.0.0.1:1/nowhere"),
        );
    let replica = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<diesel::SqliteConnection>::new(
            ":memory:",
        ))
        .unwrap();
    let databases = Databases::new().add("reports", Database::new(primary).replica(replica));
    let error = databases.clone().install().unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Error::ReplicaMisconfigured { .. }),
        "{error:?}"
    );
    assert!(message.contains("alias 'reports'"), "{message}");
    assert!(message.contains("SqliteConnection"), "{message}");
    let _registry = databases.enter();
    let error = diesel_atomic::db("reports")
        .read(|_: &mut diesel::PgConnection| Ok::<_, Error>(()))
        .unwrap_err();
    assert!(matches!(error, Error::ReplicaMisconfigured { ref alias, .. } if alias == "reports"));
}

#[test]
fn a_sqlite_alias_has_no_replica() {
    let pool = || {
        Pool::builder()
            .max_size(1)
            .build(ConnectionManager::<diesel::SqliteConnection>::new(
                ":memory:",
            ))
            .unwrap()
    };
    let databases = Databases::new().add("local", Database::new(pool()).replica(pool()));
    let error = databases.clone().install().unwrap_err();
    let message = error.to_string();
    assert!(message.contains("alias 'local'"), "{message}");
    assert!(message.contains("SQLite has no replicas"), "{message}");
    let _registry = databases.enter();
    let error = diesel_atomic::db("local")
        .read(|_: &mut diesel::SqliteConnection| Ok::<_, Error>(()))
        .unwrap_err();
    assert!(matches!(error, Error::ReplicaMisconfigured { ref alias, .. } if alias == "local"));
}

#[test]
fn without_replicas_a_read_runs_on_the_primary() {
    use diesel::connection::SimpleConnection;
    let pool = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<diesel::SqliteConnection>::new(
            ":memory:",
        ))
        .unwrap();
    let _registry = Databases::new().add("default", Database::new(pool)).enter();
    diesel_atomic::connection(|conn: &mut diesel::SqliteConnection| {
        conn.batch_execute("CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (7)")
    })
    .unwrap();
    let id: i32 = diesel_atomic::read(|conn: &mut diesel::SqliteConnection| {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "(SELECT id FROM t)",
        ))
        .get_result(conn)
    })
    .unwrap();
    assert_eq!(id, 7);
    // Inside `connection()`, the alias's connection is lent: a read is refused as a second
    // `connection()` is.
    let error = diesel_atomic::connection(|_: &mut diesel::SqliteConnection| {
        diesel_atomic::read(|_: &mut diesel::SqliteConnection| Ok::<_, Error>(()))
    })
    .unwrap_err();
    assert!(matches!(error, Error::ConnectionInUse { .. }), "{error:?}");
}
