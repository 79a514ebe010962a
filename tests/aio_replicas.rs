//! Reads on replicas from async code (rules P1 and P2, API.md §11 and §9): `aio::read` on an
//! async alias whose replica is a deadpool pool, against the servers `scripts/db-up --replica`
//! starts: a PostgreSQL hot standby (`PG_REPLICA_URL`) and a MariaDB GTID replica
//! (`MYSQL_REPLICA_URL`).
//!
//! What the async side adds to `tests/replicas.rs`: the commits a read must see are the
//! task's (or the request's), carried from one outermost call of the task to the next, also
//! across worker threads; another task's commit is not waited for.
//!
//! Without the URLs a test prints `SKIPPED: <why>` and passes, except under `CI=true`, where
//! it fails. The tests hold [`REPLICATION`] for their whole run (some pause the replica).
#![cfg(any(feature = "async-postgres", feature = "async-mysql"))]

mod captured_logs;
mod proxy;

use std::future::Future;
use std::time::{Duration, Instant};

use diesel::QueryResult;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Bool, Integer};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, PoolableConnection};
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_atomic::{Database, Databases, DatabasesGuard, Error, ReadYourWrites, aio};
use tokio::sync::{Mutex, MutexGuard};
use tracing::Level;

/// Serialises the tests that touch a replica, with `tests/replicas.rs`'s lock in the other
/// process doing the same there: tables are per process, pauses are short and resumed.
/// (tokio's: each test's runtime awaits it, and a failed test does not poison it.)
static REPLICATION: Mutex<()> = Mutex::const_new(());

/// What the tests need of a backend with a replica.
trait Replicated: AsyncConnection + PoolableConnection + Send + 'static {
    const NAME: &'static str;
    const PRIMARY_URL: &'static str;
    const REPLICA_URL: &'static str;
    /// A URL of the same server type on a port where nothing listens.
    const NOWHERE_URL: &'static str;
    const PAUSE: &'static str;
    const RESUME: &'static str;

    fn insert(
        conn: &mut Self,
        table: &str,
        id: i32,
    ) -> impl Future<Output = QueryResult<()>> + Send;
    /// Whether row `id` is in `table`, and whether the session is on the replica.
    fn look(
        conn: &mut Self,
        table: &str,
        id: i32,
    ) -> impl Future<Output = QueryResult<Seen>> + Send;
    /// An async alias on `url` (a deadpool pool of three connections).
    fn primary_only(url: &str) -> Database {
        Self::primary(url)
    }
    fn primary(url: &str) -> Database;
    /// `database` with a replica on `url` (a deadpool pool).
    fn add_replica(database: Database, url: &str) -> Database;
    /// Whether the replica's replay is paused now (PostgreSQL pauses at the next record).
    fn is_paused(replica: &mut Self) -> impl Future<Output = bool> + Send;
    /// Waits until the replica has applied everything the primary has committed.
    fn catch_up(primary: &mut Self, replica: &mut Self) -> impl Future<Output = ()> + Send;
    fn is_read_only_error(error: &DieselError) -> bool;
}

fn url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|url| !url.is_empty())
}

fn servers<C: Replicated>() -> Option<(String, String)> {
    match (url(C::PRIMARY_URL), url(C::REPLICA_URL)) {
        (Some(primary), Some(replica)) => Some((primary, replica)),
        _ => {
            let why = format!(
                "{} and {} are not both set, so the async {} replica tests cannot run; start \
                 the servers with `eval \"$(scripts/db-up --replica)\"` or run `scripts/test`",
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

/// A current-thread runtime on the test's thread, so that `capture_logs` (a subscriber for
/// this thread) sees the runtime's events.
fn run<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

async fn connect<C: Replicated>(url: &str) -> C {
    C::establish(url)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

/// One test's table (on the primary, replayed by the replica) and the lock on replication.
struct Setup {
    table: String,
    primary_url: String,
    replica_url: String,
    _lock: MutexGuard<'static, ()>,
}

impl Setup {
    async fn new<C: Replicated>(test: &str) -> Option<Setup> {
        let (primary_url, replica_url) = servers::<C>()?;
        let lock = REPLICATION.lock().await;
        let table = format!("aio_replicas_{test}_{}", std::process::id());
        let mut primary = connect::<C>(&primary_url).await;
        primary
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INTEGER PRIMARY KEY)"
            ))
            .await
            .expect("create the test table");
        C::catch_up(&mut primary, &mut connect::<C>(&replica_url).await).await;
        Some(Setup {
            table,
            primary_url,
            replica_url,
            _lock: lock,
        })
    }

    /// The registry: `"default"`, async, on the primary with the replica.
    fn enter<C: Replicated>(&self, policy: ReadYourWrites) -> DatabasesGuard {
        Databases::new()
            .add("default", self.database::<C>(policy))
            .enter()
    }

    fn database<C: Replicated>(&self, policy: ReadYourWrites) -> Database {
        C::add_replica(C::primary(&self.primary_url), &self.replica_url).read_your_writes(policy)
    }

    /// Stops the replica from applying the primary's changes until the guard drops.
    async fn pause_replay<C: Replicated>(&self) -> Paused {
        let mut replica = connect::<C>(&self.replica_url).await;
        replica
            .batch_execute(C::PAUSE)
            .await
            .expect("pause the replica");
        let started = Instant::now();
        while !C::is_paused(&mut replica).await {
            assert!(started.elapsed() < Duration::from_secs(10), "not paused");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Paused {
            url: self.replica_url.clone(),
            resume: C::RESUME,
            establish: |url, resume| {
                run_blocking(async move {
                    let mut replica = connect::<C>(&url).await;
                    replica.batch_execute(resume).await
                })
            },
        }
    }

    async fn drop_table<C: Replicated>(&self) {
        let mut primary = connect::<C>(&self.primary_url).await;
        let _ = primary
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await;
    }
}

/// Resumes the replica's replay when dropped (also when the test fails).
struct Paused {
    url: String,
    resume: &'static str,
    establish: fn(String, &'static str) -> QueryResult<()>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Err(error) = (self.establish)(self.url.clone(), self.resume) {
            eprintln!("resuming the replica's replay failed: {error}");
        }
    }
}

/// Runs `future` to the end on a runtime of its own, on another thread (a destructor may run
/// inside a runtime, where `block_on` is refused).
fn run_blocking<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || run(future))
        .join()
        .expect("the resuming thread")
}

/// What a read saw: whether the row was there, and whether it ran on the replica.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    row: bool,
    on_replica: bool,
}

/// A read through the runtime, as an application makes it.
async fn read_row<C: Replicated>(table: &str, id: i32) -> QueryResult<Seen> {
    aio::read(async |conn: &mut C| C::look(conn, table, id).await).await
}

/// Inserts a row in an outermost block of its own: the commit the next read must see.
async fn insert_committed<C: Replicated>(table: &str, id: i32) -> Result<(), Error> {
    aio::transaction::atomic(async || {
        aio::connection(async |conn: &mut C| C::insert(conn, table, id).await.map_err(Error::from))
            .await
    })
    .await
}

/// The whole block on a replica; a nested block and `read` inside it share its connection.
#[diesel_atomic::atomic(durable = true, read_only = true, replica = true)]
async fn report<C: Replicated>(table: &str, id: i32) -> Result<(Seen, Seen, Seen), Error> {
    let outer = aio::connection(async |conn: &mut C| C::look(conn, table, id).await).await?;
    let nested = aio::transaction::atomic(async || {
        aio::connection(async |conn: &mut C| C::look(conn, table, id).await.map_err(Error::from))
            .await
    })
    .await?;
    let read = read_row::<C>(table, id).await?;
    Ok((outer, nested, read))
}

/// A write inside a replica block.
#[diesel_atomic::atomic(durable = true, read_only = true, replica = true)]
async fn write_on_replica<C: Replicated>(table: &str, id: i32) -> QueryResult<()> {
    aio::connection(async |conn: &mut C| C::insert(conn, table, id).await).await
}

const ON_PRIMARY_WITH_ROW: Seen = Seen {
    row: true,
    on_replica: false,
};

// --- The tests ---------------------------------------------------------------------------------

async fn a_write_then_a_read_in_one_block_sees_the_write<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("same_block").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Off);
    let table = setup.table.clone();
    let seen = aio::transaction::atomic(async || {
        aio::connection(async |conn: &mut C| C::insert(conn, &table, 1).await.map_err(Error::from))
            .await?;
        read_row::<C>(&table, 1).await.map_err(Error::from)
    })
    .await
    .unwrap();
    assert_eq!(
        seen, ON_PRIMARY_WITH_ROW,
        "inside a block, a read runs on the block's connection (the primary)"
    );
    setup.drop_table::<C>().await;
}

async fn wait_waits_its_bound_then_reads_the_primary<C: Replicated>() -> Option<Vec<String>> {
    let setup = Setup::new::<C>("wait_lagging").await?;
    let bound = Duration::from_millis(400);
    let _registry = setup.enter::<C>(ReadYourWrites::Wait(bound));
    let paused = setup.pause_replay::<C>().await;
    insert_committed::<C>(&setup.table, 1).await.unwrap();
    let started = Instant::now();
    let seen = read_row::<C>(&setup.table, 1).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(seen, ON_PRIMARY_WITH_ROW, "after the bound, the primary");
    assert!(
        waited >= bound,
        "waited only {waited:?}, less than {bound:?}"
    );
    assert!(
        waited < bound * 5,
        "waited {waited:?}, far more than {bound:?}"
    );
    drop(paused);
    setup.drop_table::<C>().await;
    Some(Vec::new())
}

async fn wait_reads_the_replica_once_it_replayed_the_tasks_commit<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("wait_replayed").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Wait(Duration::from_secs(10)));
    insert_committed::<C>(&setup.table, 1).await.unwrap();
    let seen = read_row::<C>(&setup.table, 1).await.unwrap();
    assert_eq!(
        seen,
        Seen {
            row: true,
            on_replica: true
        },
        "the replica, once it replayed the commit"
    );
    setup.drop_table::<C>().await;
}

/// The commit and the read are two outermost calls of one spawned task on a multi-thread
/// runtime, which may run them on different threads: the read still waits for the commit.
/// Another task's commit is not this task's to wait for.
async fn a_tasks_commit_is_waited_for_by_its_later_calls_only<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("per_task").await else {
        return;
    };
    let database = setup.database::<C>(ReadYourWrites::Wait(Duration::from_millis(300)));
    let table = setup.table.clone();
    let paused = setup.pause_replay::<C>().await;
    let (own, others) = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                Databases::new().add("default", database).install().unwrap();
                let writer_table = table.clone();
                let own = tokio::spawn(async move {
                    insert_committed::<C>(&writer_table, 1).await.unwrap();
                    // Yields to the scheduler between the calls: the task may move.
                    tokio::task::yield_now().await;
                    read_row::<C>(&writer_table, 1).await.unwrap()
                })
                .await
                .unwrap();
                insert_committed::<C>(&table, 2).await.unwrap();
                let others = tokio::spawn(async move { read_row::<C>(&table, 2).await.unwrap() })
                    .await
                    .unwrap();
                (own, others)
            })
    })
    .join()
    .unwrap();
    drop(paused);
    assert_eq!(
        own, ON_PRIMARY_WITH_ROW,
        "the task's own commit, from the primary"
    );
    assert_eq!(
        others,
        Seen {
            row: false,
            on_replica: true
        },
        "another task's commit is not waited for: the (paused) replica"
    );
    setup.drop_table::<C>().await;
}

/// A read dropped while it waits for the (paused) replica (rule A2): the task's commit is
/// still remembered (the next read waits for it too; before the fix it was lost with the cut
/// call's table, and the next read returned the replica's stale answer), and the replica's
/// only pooled connection, which had the wait's answer still to read, serves the reads after.
async fn a_read_dropped_while_it_waits_leaves_the_replica_usable<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("dropped_wait").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Wait(Duration::from_secs(5)));
    let paused = setup.pause_replay::<C>().await;
    insert_committed::<C>(&setup.table, 1).await.unwrap();
    let cut =
        tokio::time::timeout(Duration::from_millis(300), read_row::<C>(&setup.table, 1)).await;
    assert!(cut.is_err(), "the read was still waiting: {cut:?}");
    let again =
        tokio::time::timeout(Duration::from_millis(300), read_row::<C>(&setup.table, 1)).await;
    assert!(
        again.is_err(),
        "the next read waits for the task's commit too, not a stale replica answer: {again:?}"
    );
    drop(paused);
    for _ in 0..3 {
        let seen = read_row::<C>(&setup.table, 1).await.unwrap();
        assert_eq!(
            seen,
            Seen {
                row: true,
                on_replica: true
            },
            "the replica, through a clean connection"
        );
    }
    setup.drop_table::<C>().await;
}

async fn primary_reads_the_primary_for_the_rest_of_the_scope<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("primary_policy").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Primary);
    let paused = setup.pause_replay::<C>().await;
    assert!(
        read_row::<C>(&setup.table, 1).await.unwrap().on_replica,
        "before any commit, a replica"
    );
    insert_committed::<C>(&setup.table, 1).await.unwrap();
    let started = Instant::now();
    let seen = read_row::<C>(&setup.table, 1).await.unwrap();
    assert_eq!(seen, ON_PRIMARY_WITH_ROW);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "no waiting: {:?}",
        started.elapsed()
    );
    // A request is a scope of its own: the earlier commit does not count there, its own does.
    let table = setup.table.clone();
    let (before, after) = aio::request(async {
        let before = read_row::<C>(&table, 1).await?;
        insert_committed::<C>(&table, 2).await?;
        let after = read_row::<C>(&table, 2).await?;
        Ok::<_, Error>((before, after))
    })
    .await
    .unwrap();
    drop(paused);
    assert_eq!(
        before,
        Seen {
            row: false,
            on_replica: true
        },
        "a new request reads the (paused) replica"
    );
    assert_eq!(after, ON_PRIMARY_WITH_ROW, "after the request's own commit");
    setup.drop_table::<C>().await;
}

async fn off_reads_the_replica_even_when_it_lags<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("off_policy").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Off);
    let paused = setup.pause_replay::<C>().await;
    insert_committed::<C>(&setup.table, 1).await.unwrap();
    let seen = read_row::<C>(&setup.table, 1).await.unwrap();
    drop(paused);
    assert_eq!(
        seen,
        Seen {
            row: false,
            on_replica: true
        },
        "Off: the replica, stale"
    );
    setup.drop_table::<C>().await;
}

async fn a_write_through_connection_outside_blocks_is_waited_for_too<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("autocommit").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Wait(Duration::from_millis(300)));
    let paused = setup.pause_replay::<C>().await;
    let table = setup.table.clone();
    aio::connection(async |conn: &mut C| C::insert(conn, &table, 1).await)
        .await
        .unwrap();
    let seen = read_row::<C>(&setup.table, 1).await.unwrap();
    drop(paused);
    assert_eq!(seen, ON_PRIMARY_WITH_ROW);
    setup.drop_table::<C>().await;
}

async fn a_write_through_read_fails_with_the_read_only_error<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("write_on_replica").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Off);
    let table = setup.table.clone();
    let error = aio::read(async |conn: &mut C| C::insert(conn, &table, 1).await)
        .await
        .unwrap_err();
    assert!(C::is_read_only_error(&error), "{error:?}");
    let seen = read_row::<C>(&setup.table, 1).await.unwrap();
    assert!(!seen.row, "nothing was written");
    setup.drop_table::<C>().await;
}

async fn replica_blocks_run_on_the_replica_and_wait_for_the_tasks_commit<C: Replicated>() {
    let Some(setup) = Setup::new::<C>("replica_block").await else {
        return;
    };
    let _registry = setup.enter::<C>(ReadYourWrites::Wait(Duration::from_secs(10)));
    insert_committed::<C>(&setup.table, 1).await.unwrap();
    let on_replica = Seen {
        row: true,
        on_replica: true,
    };
    let (outer, nested, read) = report::<C>(&setup.table, 1).await.unwrap();
    assert_eq!(
        outer, on_replica,
        "the block, on the replica, after the task's commit"
    );
    assert_eq!(
        nested, on_replica,
        "a nested block shares the replica's connection"
    );
    assert_eq!(read, on_replica, "so does a read inside the block");
    let error = write_on_replica::<C>(&setup.table, 2).await.unwrap_err();
    assert!(C::is_read_only_error(&error), "{error:?}");
    // Nested in a block of its alias, a replica block is an error naming the alias.
    let table = setup.table.clone();
    let nested = aio::transaction::atomic(async || {
        let error = report::<C>(&table, 1).await.unwrap_err();
        Ok::<_, Error>(error)
    })
    .await
    .unwrap();
    assert!(
        matches!(&nested, Error::ReplicaNested { alias } if alias == "default"),
        "{nested:?}"
    );
    setup.drop_table::<C>().await;
}

/// The standby goes away mid-run (a proxy in front of it is stopped): reads that went to it
/// fall back to the primary, nothing fails.
fn a_replica_stopped_mid_run_sends_reads_to_the_primary<C: Replicated>() {
    let (seen, warnings) = captured_logs::capture_logs(Level::WARN, || {
        run(async {
            let setup = Setup::new::<C>("stopped").await?;
            C::insert(&mut connect::<C>(&setup.primary_url).await, &setup.table, 1)
                .await
                .unwrap();
            C::catch_up(
                &mut connect::<C>(&setup.primary_url).await,
                &mut connect::<C>(&setup.replica_url).await,
            )
            .await;
            let proxy = proxy::Proxy::to(&setup.replica_url);
            let _registry = Databases::new()
                .add(
                    "default",
                    C::add_replica(
                        C::primary_only(&setup.primary_url),
                        &proxy.url(&setup.replica_url),
                    )
                    .read_your_writes(ReadYourWrites::Off),
                )
                .enter();
            let mut before = Vec::new();
            for _ in 0..2 {
                before.push(read_row::<C>(&setup.table, 1).await.unwrap());
            }
            proxy.stop();
            let mut after = Vec::new();
            for _ in 0..3 {
                after.push(read_row::<C>(&setup.table, 1).await);
            }
            setup.drop_table::<C>().await;
            Some((before, after))
        })
    });
    let Some((before, after)) = seen else { return };
    for seen in before {
        assert_eq!(
            seen,
            Seen {
                row: true,
                on_replica: true
            },
            "while it runs, the replica"
        );
    }
    for seen in after {
        assert_eq!(
            seen.expect("no read fails"),
            ON_PRIMARY_WITH_ROW,
            "once it is gone"
        );
    }
    let fallbacks = warnings
        .iter()
        .filter(|warning| warning.contains("reading from the primary"))
        .count();
    assert_eq!(fallbacks, 3, "one per read: {warnings:?}");
}

fn an_unreachable_replica_sends_each_read_to_the_primary_with_one_warning<C: Replicated>() {
    let (seen, warnings) = captured_logs::capture_logs(Level::WARN, || {
        run(async {
            let setup = Setup::new::<C>("unreachable").await?;
            C::insert(&mut connect::<C>(&setup.primary_url).await, &setup.table, 1)
                .await
                .unwrap();
            let _registry = Databases::new()
                .add(
                    "default",
                    C::add_replica(C::primary(&setup.primary_url), C::NOWHERE_URL),
                )
                .enter();
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(read_row::<C>(&setup.table, 1).await.unwrap());
            }
            setup.drop_table::<C>().await;
            Some(seen)
        })
    });
    let Some(seen) = seen else { return };
    for seen in seen {
        assert_eq!(seen, ON_PRIMARY_WITH_ROW);
    }
    let warnings: Vec<_> = warnings
        .into_iter()
        .filter(|warning| warning.contains("reading from the primary"))
        .collect();
    assert_eq!(warnings.len(), 3, "one per read: {warnings:?}");
    for warning in &warnings {
        assert!(
            warning.contains("alias 'default'") && warning.contains("cannot be reached"),
            "{warning}"
        );
    }
}

fn a_lagging_replica_gives_one_warning_per_read<C: Replicated>() {
    let (outcome, warnings) = captured_logs::capture_logs(Level::WARN, || {
        run(wait_waits_its_bound_then_reads_the_primary::<C>())
    });
    if outcome.is_none() {
        return;
    }
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("alias 'default'") && warnings[0].contains("has not replayed"),
        "{warnings:?}"
    );
}

macro_rules! replica_tests {
    ($module:ident, $feature:literal, $conn:ty) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::run;

            #[test]
            fn a_write_then_a_read_in_one_block_sees_the_write() {
                run(super::a_write_then_a_read_in_one_block_sees_the_write::<
                    $conn,
                >());
            }

            #[test]
            fn wait_waits_its_bound_then_reads_the_primary_with_one_warning() {
                super::a_lagging_replica_gives_one_warning_per_read::<$conn>();
            }

            #[test]
            fn wait_reads_the_replica_once_it_replayed_the_tasks_commit() {
                run(super::wait_reads_the_replica_once_it_replayed_the_tasks_commit::<$conn>());
            }

            #[test]
            fn a_tasks_commit_is_waited_for_by_its_later_calls_only() {
                run(super::a_tasks_commit_is_waited_for_by_its_later_calls_only::<$conn>());
            }

            #[test]
            fn a_read_dropped_while_it_waits_leaves_the_replica_usable() {
                run(super::a_read_dropped_while_it_waits_leaves_the_replica_usable::<$conn>());
            }

            #[test]
            fn primary_reads_the_primary_for_the_rest_of_the_scope() {
                run(super::primary_reads_the_primary_for_the_rest_of_the_scope::<$conn>());
            }

            #[test]
            fn off_reads_the_replica_even_when_it_lags() {
                run(super::off_reads_the_replica_even_when_it_lags::<$conn>());
            }

            #[test]
            fn a_write_through_connection_outside_blocks_is_waited_for_too() {
                run(super::a_write_through_connection_outside_blocks_is_waited_for_too::<$conn>());
            }

            #[test]
            fn a_write_through_read_fails_with_the_read_only_error() {
                run(super::a_write_through_read_fails_with_the_read_only_error::<$conn>());
            }

            #[test]
            fn replica_blocks_run_on_the_replica_and_wait_for_the_tasks_commit() {
                run(
                    super::replica_blocks_run_on_the_replica_and_wait_for_the_tasks_commit::<$conn>(
                    ),
                );
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
        }
    };
}

replica_tests!(postgres, "async-postgres", diesel_async::AsyncPgConnection);
replica_tests!(mysql, "async-mysql", diesel_async::AsyncMysqlConnection);

// --- The backends ------------------------------------------------------------------------------

/// `look`, `primary` and `add_replica` for a backend: `on_replica` is the SQL of whether the
/// session is on the replica.
macro_rules! common {
    ($on_replica:literal) => {
        fn primary(url: &str) -> Database {
            Database::new_async(
                Pool::builder(AsyncDieselConnectionManager::<Self>::new(url))
                    .max_size(3)
                    .build()
                    .expect("pool"),
            )
        }

        fn add_replica(database: Database, url: &str) -> Database {
            database.replica(
                Pool::builder(AsyncDieselConnectionManager::<Self>::new(url))
                    .max_size(1)
                    .build()
                    .expect("pool"),
            )
        }

        async fn look(conn: &mut Self, table: &str, id: i32) -> QueryResult<Seen> {
            let row = diesel::select(
                diesel::dsl::sql::<Bool>(&format!("EXISTS (SELECT 1 FROM {table} WHERE id = "))
                    .bind::<Integer, _>(id)
                    .sql(")"),
            )
            .get_result(conn)
            .await?;
            let on_replica = diesel::select(diesel::dsl::sql::<Bool>($on_replica))
                .get_result(conn)
                .await?;
            Ok(Seen { row, on_replica })
        }
    };
}

#[cfg(feature = "async-postgres")]
impl Replicated for diesel_async::AsyncPgConnection {
    const NAME: &'static str = "PostgreSQL";
    const PRIMARY_URL: &'static str = "PG_URL";
    const REPLICA_URL: &'static str = "PG_REPLICA_URL";
    const NOWHERE_URL: &'static str = "postgres://atomic:atomic@127.0.0.1:1/atomic_test";
    const PAUSE: &'static str = "SELECT pg_wal_replay_pause()";
    const RESUME: &'static str = "SELECT pg_wal_replay_resume()";

    common!("pg_is_in_recovery()");

    async fn is_paused(replica: &mut Self) -> bool {
        diesel::select(diesel::dsl::sql::<Bool>(
            "pg_get_wal_replay_pause_state() = 'paused'",
        ))
        .get_result(replica)
        .await
        .expect("the standby's pause state")
    }

    async fn insert(conn: &mut Self, table: &str, id: i32) -> QueryResult<()> {
        diesel::sql_query(format!("INSERT INTO {table} (id) VALUES ($1)"))
            .bind::<Integer, _>(id)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn catch_up(primary: &mut Self, replica: &mut Self) {
        use diesel::sql_types::Text;
        let lsn: String = diesel::select(diesel::dsl::sql::<Text>(
            "pg_current_wal_insert_lsn()::text",
        ))
        .get_result(primary)
        .await
        .expect("the primary's position");
        let started = Instant::now();
        loop {
            let replayed: bool = diesel::select(
                diesel::dsl::sql::<Bool>("pg_last_wal_replay_lsn() >= ")
                    .bind::<Text, _>(&lsn)
                    .sql("::pg_lsn"),
            )
            .get_result(replica)
            .await
            .expect("the standby's position");
            if replayed {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the standby did not catch up with {lsn} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn is_read_only_error(error: &DieselError) -> bool {
        matches!(
            error,
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)
        )
    }
}

#[cfg(feature = "async-mysql")]
impl Replicated for diesel_async::AsyncMysqlConnection {
    const NAME: &'static str = "MariaDB";
    const PRIMARY_URL: &'static str = "MYSQL_URL";
    const REPLICA_URL: &'static str = "MYSQL_REPLICA_URL";
    const NOWHERE_URL: &'static str = "mysql://atomic:atomic@127.0.0.1:1/atomic_test";
    const PAUSE: &'static str = "STOP SLAVE SQL_THREAD";
    const RESUME: &'static str = "START SLAVE SQL_THREAD";

    common!("@@read_only = 1");

    async fn is_paused(_: &mut Self) -> bool {
        // STOP SLAVE SQL_THREAD returns once the thread stopped.
        true
    }

    async fn insert(conn: &mut Self, table: &str, id: i32) -> QueryResult<()> {
        diesel::sql_query(format!("INSERT INTO {table} (id) VALUES (?)"))
            .bind::<Integer, _>(id)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn catch_up(primary: &mut Self, replica: &mut Self) {
        use diesel::sql_types::{BigInt, Text};
        let position: String = diesel::select(diesel::dsl::sql::<Text>("@@gtid_binlog_pos"))
            .get_result(primary)
            .await
            .expect("the primary's position");
        let reached: i64 = diesel::select(
            diesel::dsl::sql::<BigInt>("MASTER_GTID_WAIT(")
                .bind::<Text, _>(&position)
                .sql(", 30)"),
        )
        .get_result(replica)
        .await
        .expect("wait for the replica");
        assert_eq!(
            reached, 0,
            "the replica did not reach {position} within 30 s"
        );
    }

    fn is_read_only_error(error: &DieselError) -> bool {
        match error {
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => true,
            DieselError::DatabaseError(_, info) => info.message().contains("--read-only"),
            _ => false,
        }
    }
}

// --- Without servers ---------------------------------------------------------------------------

/// An r2d2 (sync) replica of an async alias is refused, naming the alias, at the first read.
#[cfg(all(feature = "async-postgres", feature = "postgres"))]
#[test]
fn a_sync_replica_of_an_async_alias_is_an_error_naming_the_alias() {
    use diesel::r2d2::ConnectionManager;
    let primary = Pool::builder(AsyncDieselConnectionManager::<
        diesel_async::AsyncPgConnection,
    >::new("postgres://atomic:atomic@127.0.0.1:1/nowhere"))
    .build()
    .unwrap();
    let replica = diesel::r2d2::Pool::builder()
        .max_size(1)
        .build_unchecked(ConnectionManager::<diesel::PgConnection>::new(
            "postgres://atomic:atomic@127.0.0.1:1/nowhere",
        ));
    let databases = Databases::new().add("reports", Database::new_async(primary).replica(replica));
    let error = databases.clone().install().unwrap_err();
    assert!(
        matches!(&error, Error::ReplicaMisconfigured { alias, problem }
            if alias == "reports" && problem.contains("the alias is async")),
        "{error:?}"
    );
    let _registry = databases.enter();
    let error = run(
        aio::db("reports").read(async |conn: &mut diesel_async::AsyncPgConnection| {
            diesel::select(diesel::dsl::sql::<Bool>("true"))
                .get_result::<bool>(conn)
                .await
                .map_err(Error::from)
        }),
    )
    .unwrap_err();
    assert!(
        matches!(&error, Error::ReplicaMisconfigured { alias, .. } if alias == "reports"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("reports"), "{message}");
}
