//! Rerunning durable async blocks after transient failures (rule R1), ported from
//! tests/retry.rs: genuine serialization conflicts (PostgreSQL, two concurrent SERIALIZABLE
//! transactions) and deadlocks (MariaDB 1213) between two tasks on the real servers, retried
//! with `#[atomic(durable = true, retry = n)] async fn` until both commit, with the final value
//! exact; without retry the error surfaces. Plus the rule that a retrying block inside another
//! is `DurableNested`, on every backend.
//!
//! The async `Atomic` builder has no `retry`, so the retrying blocks are attribute functions
//! (with the default backoff). Not ported yet: SQLite's stale-snapshot BUSY, give-up after the
//! policy with its log events, panics and user error types, a COMMIT of unknown outcome.
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

aio_tests!(deadpool: a_retrying_block_inside_another_is_durable_nested);

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

// MariaDB's SERIALIZABLE is locking, not SSI: the same schedule deadlocks there instead.
#[cfg(feature = "async-postgres")]
server_tests!(
    postgres_only,
    diesel_async::AsyncPgConnection,
    [
        serialization_conflicts_are_retried_to_a_serial_outcome,
        without_retry_one_serialization_conflict_is_an_error
    ]
);

#[cfg(feature = "async-mysql")]
server_tests!(
    mysql_only,
    diesel_async::AsyncMysqlConnection,
    [
        deadlocks_are_retried,
        without_retry_the_deadlock_victim_gets_the_error
    ]
);
