//! Rerunning durable async blocks after transient failures (rule R1), ported from
//! tests/retry.rs: genuine serialization conflicts (PostgreSQL, two concurrent SERIALIZABLE
//! transactions) and deadlocks (PostgreSQL 40P01, MariaDB 1213) between two tasks on the real servers, retried
//! with `#[atomic(durable = true, retry = n)] async fn` until both commit, with the final value
//! exact; without retry the error surfaces. Plus the rule that a retrying block inside another
//! is `DurableNested`, on every backend.
//!
//! The async `Atomic` builder has no `retry`, so the retrying blocks are attribute functions
//! (`#[atomic(durable = true, retry = n)] async fn`, with the default backoff; the sync suite's
//! blocks need not be durable, the async attribute requires it). Also ported: SQLite's
//! stale-snapshot BUSY, giving up after the policy with its log events, other errors and
//! panics not retried, a user error type read through `AsDieselError`, a COMMIT of unknown
//! outcome (PostgreSQL, MariaDB), and deadlocks on PostgreSQL as well as MariaDB.
#![cfg(feature = "async")]
#![cfg_attr(
    not(all(feature = "async-postgres", feature = "async-mysql")),
    allow(dead_code, unused_imports)
)]

mod common_aio;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common_aio::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::aio::transaction;
use diesel_atomic::{Error, atomic};
use tokio::sync::Barrier;

aio_tests!(deadpool:
    retry_gives_up_after_the_policy_and_returns_the_last_error,
    other_errors_and_panics_are_not_retried,
    a_users_error_type_is_read_through_as_diesel_error,
    a_retrying_block_inside_another_is_durable_nested,
);

/// What one of the two tasks shares with its attempts.
struct Attempt {
    index: i32,
    attempts: AtomicUsize,
    first: AtomicBool,
    barrier: Arc<Barrier>,
}

impl Attempt {
    fn new(index: i32, barrier: Arc<Barrier>) -> Arc<Attempt> {
        Arc::new(Attempt {
            index,
            attempts: AtomicUsize::new(0),
            first: AtomicBool::new(true),
            barrier,
        })
    }

    /// Counts the attempt; true for the first one.
    fn start(&self) -> bool {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.first.swap(false, Ordering::SeqCst)
    }
}

/// Runs `body(attempt)` on two tasks at once, each with the test's registry, and returns their
/// results with the attempts each made.
async fn two_tasks<F, Fut>(
    db_databases: diesel_atomic::Databases,
    body: F,
) -> Vec<(Result<(), Error>, usize)>
where
    F: Fn(Arc<Attempt>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(2));
    let mut handles = Vec::new();
    for index in 0..2 {
        let attempt = Attempt::new(index, Arc::clone(&barrier));
        let future = body(Arc::clone(&attempt));
        handles.push((
            attempt,
            tokio::spawn(with_registry(db_databases.clone(), future)),
        ));
    }
    let mut results = Vec::new();
    for (attempt, handle) in handles {
        let result = within(PATIENCE, "a task", handle).await.expect("task");
        results.push((result, attempt.attempts.load(Ordering::SeqCst)));
    }
    results
}

/// The write-skew body: counts the things, waits until both read (first attempt), inserts one
/// numbered after what it counted.
async fn write_skew_body<C: Backend>(attempt: &Attempt) -> Result<(), Error> {
    let first = attempt.start();
    let seen = visible_ambient::<C>().await?.len() as i32;
    if first {
        attempt.barrier.wait().await;
    }
    insert_ambient::<C>(100 * (attempt.index + 1) + seen).await
}

#[atomic(durable = true, isolation = "serializable", retry = 5)]
async fn write_skew_retrying<C: Backend>(attempt: Arc<Attempt>) -> Result<(), Error> {
    write_skew_body::<C>(&attempt).await
}

#[atomic(durable = true, isolation = "serializable")]
async fn write_skew_once<C: Backend>(attempt: Arc<Attempt>) -> Result<(), Error> {
    write_skew_body::<C>(&attempt).await
}

async fn serialization_conflicts_are_retried_to_a_serial_outcome<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    let results = two_tasks(db.databases.clone(), |attempt| {
        write_skew_retrying::<C>(attempt)
    })
    .await;
    let attempts: Vec<usize> = results
        .into_iter()
        .map(|(result, attempts)| {
            result.unwrap();
            attempts
        })
        .collect();
    assert!(
        attempts.iter().sum::<usize>() >= 3,
        "one transaction was rerun: {attempts:?}"
    );
    let mut seen: Vec<i32> = db.committed().await.iter().map(|n| n % 100).collect();
    seen.sort();
    assert_eq!(
        seen,
        [0, 1],
        "a serial outcome: one saw nothing, the other saw one row"
    );
    assert_pool_clean(&db, 2).await;
}

async fn without_retry_one_serialization_conflict_is_an_error<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    let results = two_tasks(db.databases.clone(), |attempt| {
        write_skew_once::<C>(attempt)
    })
    .await;
    let failures: Vec<&Error> = results
        .iter()
        .filter_map(|(r, _)| r.as_ref().err())
        .collect();
    assert_eq!(failures.len(), 1, "{results:?}");
    assert!(
        matches!(
            failures[0],
            Error::Database(DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _
            ))
        ),
        "{failures:?}"
    );
    assert_eq!(db.committed().await.len(), 1);
    assert_pool_clean(&db, 2).await;
}

/// Adds 10 to thing `id`'s num on the ambient connection.
async fn bump<C: Backend>(id: i32) -> Result<(), Error> {
    diesel_atomic::aio::connection(async |conn: &mut C| {
        diesel_async::SimpleAsyncConnection::batch_execute(
            conn,
            &format!("UPDATE things SET num = num + 10 WHERE id = {id}"),
        )
        .await
        .map_err(Error::from)
    })
    .await
}

/// Two transactions update rows 1 and 2 in opposite orders: a deadlock.
async fn deadlock_body<C: Backend>(attempt: &Attempt) -> Result<(), Error> {
    let first_attempt = attempt.start();
    let (first, second) = if attempt.index == 0 { (1, 2) } else { (2, 1) };
    bump::<C>(first).await?;
    if first_attempt {
        attempt.barrier.wait().await;
    }
    bump::<C>(second).await
}

#[atomic(durable = true, retry = 5)]
async fn deadlock_retrying<C: Backend>(attempt: Arc<Attempt>) -> Result<(), Error> {
    deadlock_body::<C>(&attempt).await
}

#[atomic(durable = true)]
async fn deadlock_once<C: Backend>(attempt: Arc<Attempt>) -> Result<(), Error> {
    deadlock_body::<C>(&attempt).await
}

async fn seed_two_rows<C: Backend>(db: &TestDb<C>) {
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut db.raw().await,
        "INSERT INTO things (id, num) VALUES (1, 0), (2, 1000)",
    )
    .await
    .unwrap();
}

async fn deadlocks_are_retried<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    seed_two_rows(&db).await;
    let results = two_tasks(db.databases.clone(), |attempt| {
        deadlock_retrying::<C>(attempt)
    })
    .await;
    let attempts: Vec<usize> = results
        .into_iter()
        .map(|(result, attempts)| {
            result.unwrap();
            attempts
        })
        .collect();
    assert!(attempts.iter().sum::<usize>() >= 3, "{attempts:?}");
    assert_eq!(
        db.committed().await,
        [20, 1020],
        "both transactions' updates, once each"
    );
    assert_pool_clean(&db, 2).await;
}

async fn without_retry_the_deadlock_victim_gets_the_error<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    seed_two_rows(&db).await;
    let results = two_tasks(db.databases.clone(), |attempt| deadlock_once::<C>(attempt)).await;
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(r, _)| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert_eq!(failures.len(), 1, "{results:?}");
    assert!(
        failures[0].to_lowercase().contains("deadlock"),
        "{failures:?}"
    );
    assert_eq!(
        db.committed().await,
        [10, 1010],
        "only the survivor's updates"
    );
    assert_pool_clean(&db, 2).await;
}

/// A retried block is outermost by definition: nested, it is `DurableNested`.
async fn a_retrying_block_inside_another_is_durable_nested<C: Backend>(pool: PoolKind) {
    #[atomic(durable = true, retry = 3)]
    async fn retrying() -> Result<(), Error> {
        Ok(())
    }
    let _db = TestDb::<C>::new(pool, 1).await;
    let result = transaction::atomic(async || retrying().await).await;
    assert!(matches!(result, Err(Error::DurableNested { ref alias }) if alias == "default"));
}

macro_rules! server_tests {
    ($module:ident, $conn:ty, [$($name:ident),*]) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    $crate::common_aio::block_on(|| {
                        $crate::common_aio::run::<$conn, _>(
                            $crate::common_aio::PoolKind::Deadpool,
                            $crate::$name::<$conn>,
                        )
                    });
                }
            )*
        }
    };
}

// MariaDB's SERIALIZABLE is locking, not SSI: the same schedule deadlocks there instead
// (covered by the deadlock tests).
#[cfg(feature = "async-postgres")]
server_tests!(
    postgres_only,
    diesel_async::AsyncPgConnection,
    [
        serialization_conflicts_are_retried_to_a_serial_outcome,
        without_retry_one_serialization_conflict_is_an_error,
        deadlocks_are_retried,
        without_retry_the_deadlock_victim_gets_the_error,
        a_commit_with_unknown_outcome_is_not_retried
    ]
);

#[cfg(feature = "async-mysql")]
server_tests!(
    mysql_only,
    diesel_async::AsyncMysqlConnection,
    [
        deadlocks_are_retried,
        without_retry_the_deadlock_victim_gets_the_error,
        a_commit_with_unknown_outcome_is_not_retried
    ]
);

server_tests!(
    sqlite_only,
    crate::common_aio::Sqlite,
    [sqlite_stale_snapshot_busy_is_retried]
);

fn serialization_failure() -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new("could not serialize access due to read/write dependencies".to_owned()),
    )
}

/// The attempts a block made so far.
fn attempts_of(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

#[atomic(durable = true, retry = 3)]
async fn stale_snapshot_block<C: Backend>(url: &str, attempts: &AtomicUsize) -> Result<(), Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let seen = visible_ambient::<C>().await?.len() as i32;
    if attempt == 1 {
        // Another connection writes and commits after this transaction's read.
        let mut writer = C::establish(url).await.expect("writer connection");
        insert(&mut writer, 1).await.expect("the writer's insert");
    }
    insert_ambient::<C>(100 + seen).await
}

/// SQLite in WAL mode: a deferred transaction that read, then lost the write lock race to a
/// writer that committed after its read, fails with SQLITE_BUSY at its first write, busy
/// timeout or not (its snapshot is stale). Rerun, it succeeds.
async fn sqlite_stale_snapshot_busy_is_retried<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    let attempts = AtomicUsize::new(0);
    let (result, warnings) = capture_logs(
        tracing::Level::WARN,
        stale_snapshot_block::<C>(&db.url, &attempts),
    )
    .await;
    result.unwrap();
    assert_eq!(attempts_of(&attempts), 2);
    assert_eq!(db.committed().await, [1, 101]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("retrying atomic block"),
        "{warnings:?}"
    );
    assert_pool_clean(&db, 2).await;
}

#[atomic(durable = true, retry = 3)]
async fn always_serialization_failure<C: Backend>(
    attempts: &AtomicUsize,
) -> Result<(), DieselError> {
    attempts.fetch_add(1, Ordering::SeqCst);
    create_reporter::<C>("Tintin", "")
        .await
        .map_err(|_| serialization_failure())?;
    Err(serialization_failure())
}

async fn retry_gives_up_after_the_policy_and_returns_the_last_error<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    let attempts = AtomicUsize::new(0);
    let (result, warnings) = capture_logs(
        tracing::Level::WARN,
        always_serialization_failure::<C>(&attempts),
    )
    .await;
    assert!(matches!(
        result,
        Err(DieselError::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            _
        ))
    ));
    assert_eq!(attempts_of(&attempts), 4, "the first attempt and 3 retries");
    assert!(db.reporters().await.is_empty(), "every attempt rolled back");
    // One event per retry, then one when giving up.
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[..3].iter().all(|w| w.contains("retrying")),
        "{warnings:?}"
    );
    assert!(warnings[3].contains("no retries left"), "{warnings:?}");
    assert_pool_clean(&db, 2).await;
}

#[atomic(durable = true, retry = 3)]
async fn unique_violation_block<C: Backend>(attempts: &AtomicUsize) -> Result<(), Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    insert_ambient::<C>(7).await?;
    insert_ambient::<C>(7).await
}

#[atomic(durable = true, retry = 3)]
async fn panicking_block<C: Backend>(attempts: &AtomicUsize) -> Result<(), TestErrorWithDiesel> {
    attempts.fetch_add(1, Ordering::SeqCst);
    create_reporter::<C>("Tintin", "").await?;
    panic!("not retried");
}

async fn other_errors_and_panics_are_not_retried<C: Backend>(pool: PoolKind) {
    quiet_expected_panics("not retried");
    let db = TestDb::<C>::new(pool, 2).await;
    let attempts = AtomicUsize::new(0);
    let result = unique_violation_block::<C>(&attempts).await;
    assert!(
        matches!(
            result,
            Err(Error::Database(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _
            )))
        ),
        "{result:?}"
    );
    assert_eq!(attempts_of(&attempts), 1);

    let attempts = AtomicUsize::new(0);
    let panicked = catch_unwind(panicking_block::<C>(&attempts)).await;
    assert!(panicked.is_err());
    assert_eq!(attempts_of(&attempts), 1);
    assert!(db.reporters().await.is_empty());
    assert!(db.committed().await.is_empty());
    assert_pool_clean(&db, 2).await;
}

/// A user error type for `retry`: wraps both error types and hands out the diesel one.
#[derive(Debug)]
enum TestErrorWithDiesel {
    Db(DieselError),
    Runtime(Error),
}

impl From<Error> for TestErrorWithDiesel {
    fn from(error: Error) -> Self {
        TestErrorWithDiesel::Runtime(error)
    }
}

impl diesel_atomic::AsDieselError for TestErrorWithDiesel {
    fn as_diesel_error(&self) -> Option<&DieselError> {
        match self {
            TestErrorWithDiesel::Db(error) => Some(error),
            TestErrorWithDiesel::Runtime(error) => error.as_diesel_error(),
        }
    }
}

#[atomic(durable = true, retry = 2)]
async fn fails_twice(attempts: &AtomicUsize) -> Result<usize, TestErrorWithDiesel> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt < 3 {
        return Err(TestErrorWithDiesel::Db(serialization_failure()));
    }
    Ok(attempt)
}

async fn a_users_error_type_is_read_through_as_diesel_error<C: Backend>(pool: PoolKind) {
    let _db = TestDb::<C>::new(pool, 1).await;
    let attempts = AtomicUsize::new(0);
    assert_eq!(fails_twice(&attempts).await.unwrap(), 3);
}

/// Ends the server session `session` from `admin` (PostgreSQL: `pg_terminate_backend`;
/// MariaDB: `KILL`).
async fn kill_session<C: Backend>(admin: &mut C, session: i64) -> Result<(), DieselError> {
    let sql = match C::KIND {
        Kind::Postgres => format!("SELECT pg_terminate_backend({session})"),
        Kind::Mysql => format!("KILL {session}"),
        Kind::Sqlite => unreachable!("SQLite has no sessions to kill"),
    };
    diesel_async::SimpleAsyncConnection::batch_execute(admin, &sql).await?;
    // pg_terminate_backend signals the backend: give it a moment to exit.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(())
}

#[atomic(durable = true, retry = 3)]
async fn killed_before_commit<C: Backend>(
    admin: &tokio::sync::Mutex<C>,
    attempts: &AtomicUsize,
) -> Result<(), Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    create_reporter::<C>("Tintin", "").await?;
    let session = diesel_atomic::aio::connection(async |conn: &mut C| {
        conn.session_id().await.map_err(Error::from)
    })
    .await?
    .expect("a server session");
    kill_session(&mut *admin.lock().await, session).await?;
    Ok(())
}

/// The connection dies after the body's last statement, so the COMMIT's outcome is unknown
/// to the client: it is never retried (it might have committed).
async fn a_commit_with_unknown_outcome_is_not_retried<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    let admin = tokio::sync::Mutex::new(db.raw().await);
    let attempts = AtomicUsize::new(0);
    let result = within(
        PATIENCE,
        "the killed block",
        killed_before_commit::<C>(&admin, &attempts),
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(attempts_of(&attempts), 1);
    assert!(db.reporters().await.is_empty());
    assert_pool_clean(&db, 2).await;
}
