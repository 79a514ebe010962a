//! Rerunning durable blocks after transient failures (rule R1): genuine serialization
//! conflicts and deadlocks between two threads on the real servers, SQLite's stale-snapshot
//! BUSY, and what is never retried.

// Server-only tests are compiled only with the server features (scripts/test turns both on).
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports)
)]

mod captured_logs;
mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

use common::*;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{Databases, Error, Isolation, RetryPolicy};

/// Quick retries: the tests measure behaviour, not patience.
fn policy(retries: u32) -> RetryPolicy {
    RetryPolicy::new(retries).backoff(Duration::from_millis(1), Duration::from_millis(20))
}

fn serialization_failure() -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new("could not serialize access due to read/write dependencies".to_owned()),
    )
}

/// Runs `body(thread_index, first_attempt)` on two threads at once, each with the test's
/// registry entered, and returns their results.
fn two_threads<C: Backend, T: Send + 'static>(
    databases: &Databases,
    body: impl Fn(usize, &dyn Fn() -> bool) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let body = Arc::new(body);
    let handles: Vec<_> = (0..2)
        .map(|index| {
            let databases = databases.clone();
            let body = Arc::clone(&body);
            thread::spawn(move || {
                let _registry = TestDb::<C>::enter(&databases);
                let first = AtomicBool::new(true);
                body(index, &|| first.swap(false, Ordering::SeqCst))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().expect("thread"))
        .collect()
}

/// Write skew under SERIALIZABLE: both transactions count the things and insert one numbered
/// after what they counted. Run concurrently, one of them must fail with 40001; with `retry`
/// it reruns, sees the other's row, and the outcome is a serial one: counts 0 and 1.
fn write_skew<C: Backend>(retries: Option<u32>) -> (TestDb<C>, Vec<Result<usize, Error>>) {
    let db = setup::<C>();
    let barrier = Arc::new(Barrier::new(2));
    let results = two_threads::<C, _>(&db.databases, move |index, first_attempt| {
        let attempts = Cell::new(0);
        let committed = Arc::new(AtomicBool::new(false));
        let body = || {
            attempts.set(attempts.get() + 1);
            let seen = on_alias("default", |conn| {
                conn.count_rows("things").map_err(Error::from)
            })?;
            if first_attempt() {
                // Both have read before either writes.
                barrier.wait();
            }
            let committed = Arc::clone(&committed);
            transaction::on_commit(move || assert!(!committed.swap(true, Ordering::SeqCst)))?;
            insert_num(100 * (index as i32 + 1) + seen as i32)
        };
        let block = Atomic::new()
            .durable(true)
            .isolation(Isolation::Serializable);
        let result = match retries {
            Some(retries) => block.retry(policy(retries)).run(body),
            None => block.run(body),
        };
        assert_eq!(
            committed.load(Ordering::SeqCst),
            result.is_ok(),
            "on_commit ran once, for the attempt that committed, and only then"
        );
        result.map(|()| attempts.get())
    });
    (db, results)
}

fn insert_num(n: i32) -> Result<(), Error> {
    on_alias("default", |conn| conn.insert_thing(n).map_err(Error::from))
}

fn serialization_conflicts_are_retried_to_a_serial_outcome<C: Backend>() {
    let (db, results) = write_skew::<C>(Some(5));
    let attempts: Vec<usize> = results.into_iter().map(Result::unwrap).collect();
    assert!(
        attempts.iter().sum::<usize>() >= 3,
        "one transaction was rerun: {attempts:?}"
    );
    let mut seen: Vec<i32> = db.things("default").iter().map(|n| n % 100).collect();
    seen.sort();
    assert_eq!(
        seen,
        [0, 1],
        "a serial outcome: one saw nothing, the other saw one row"
    );
    assert_pool_clean(&db.default);
}

fn without_retry_one_serialization_conflict_is_an_error<C: Backend>() {
    let (db, results) = write_skew::<C>(None);
    let failures: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
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
    assert_eq!(db.things("default").len(), 1);
    assert_pool_clean(&db.default);
}

/// Two transactions update rows 1 and 2 in opposite orders: a deadlock (PostgreSQL 40P01,
/// MariaDB 1213). The server rolls the victim back; with `retry` it reruns and both commit.
fn deadlock<C: Backend>(retries: Option<u32>) -> (TestDb<C>, Vec<Result<usize, Error>>) {
    let db = setup::<C>();
    db.raw("default")
        .batch_execute("INSERT INTO things (id, num) VALUES (1, 0), (2, 1000)")
        .unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let results = two_threads::<C, _>(&db.databases, move |index, first_attempt| {
        let attempts = Cell::new(0);
        let (first, second) = if index == 0 { (1, 2) } else { (2, 1) };
        let body = || {
            attempts.set(attempts.get() + 1);
            bump::<C>(first)?;
            if first_attempt() {
                barrier.wait();
            }
            bump::<C>(second)
        };
        let block = Atomic::new().durable(true);
        let result = match retries {
            Some(retries) => block.retry(policy(retries)).run(body),
            None => block.run(body),
        };
        result.map(|()| attempts.get())
    });
    (db, results)
}

fn bump<C: Backend>(id: i32) -> Result<(), Error> {
    diesel_atomic::connection(|conn: &mut C| {
        conn.batch_execute(&format!("UPDATE things SET num = num + 10 WHERE id = {id}"))
            .map_err(Error::from)
    })
}

fn deadlocks_are_retried<C: Backend>() {
    let (db, results) = deadlock::<C>(Some(5));
    let attempts: Vec<usize> = results.into_iter().map(Result::unwrap).collect();
    assert!(attempts.iter().sum::<usize>() >= 3, "{attempts:?}");
    assert_eq!(
        db.things("default"),
        [20, 1020],
        "both transactions' updates, once each"
    );
    assert_pool_clean(&db.default);
}

fn without_retry_the_deadlock_victim_gets_the_error<C: Backend>() {
    let (db, results) = deadlock::<C>(None);
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert_eq!(failures.len(), 1, "{results:?}");
    assert!(
        failures[0].to_lowercase().contains("deadlock"),
        "{failures:?}"
    );
    assert_eq!(
        db.things("default"),
        [10, 1010],
        "only the survivor's updates"
    );
    assert_pool_clean(&db.default);
}

/// SQLite in WAL mode: a deferred transaction that read, then lost the write lock race to a
/// writer that committed after its read, fails with SQLITE_BUSY at its first write, busy
/// timeout or not (its snapshot is stale). Rerun, it succeeds.
fn sqlite_stale_snapshot_busy_is_retried<C: Backend>() {
    let db = setup::<C>();
    let url = db.url("default").to_owned();
    let (go, wait) = (mpsc::channel::<()>(), mpsc::channel::<()>());
    let writer = thread::spawn(move || {
        let mut conn = SqliteConnection::establish(&url).unwrap();
        go.1.recv().unwrap();
        conn.insert_thing(1).unwrap();
        wait.0.send(()).unwrap();
    });
    let attempts = Cell::new(0);
    let (_, warnings) = captured_logs::capture_logs(tracing::Level::WARN, || {
        Atomic::new()
            .retry(policy(3))
            .run(|| {
                attempts.set(attempts.get() + 1);
                let seen = on_alias("default", |conn| {
                    conn.count_rows("things").map_err(Error::from)
                })?;
                if attempts.get() == 1 {
                    go.0.send(()).unwrap();
                    wait.1.recv().unwrap();
                }
                insert_num(100 + seen as i32)
            })
            .unwrap()
    });
    writer.join().unwrap();
    assert_eq!(attempts.get(), 2);
    assert_eq!(db.things("default"), [1, 101]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("retrying atomic block"),
        "{warnings:?}"
    );
    assert_pool_clean(&db.default);
}

fn retry_gives_up_after_the_policy_and_returns_the_last_error<C: Backend>() {
    let db = setup::<C>();
    let attempts = Cell::new(0);
    let (result, warnings) = captured_logs::capture_logs(tracing::Level::WARN, || {
        Atomic::new().retry(policy(3)).run(|| {
            attempts.set(attempts.get() + 1);
            add("Tintin").map_err(|_| serialization_failure())?;
            Err::<(), _>(serialization_failure())
        })
    });
    assert!(matches!(
        result,
        Err(DieselError::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            _
        ))
    ));
    assert_eq!(attempts.get(), 4, "the first attempt and 3 retries");
    assert!(
        db.reporters("default").is_empty(),
        "every attempt rolled back"
    );
    // One event per retry, then one when giving up.
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[..3].iter().all(|w| w.contains("retrying")),
        "{warnings:?}"
    );
    assert!(warnings[3].contains("no retries left"), "{warnings:?}");
    assert_pool_clean(&db.default);
}

fn other_errors_and_panics_are_not_retried<C: Backend>() {
    let db = setup::<C>();
    let attempts = Cell::new(0);
    let result = Atomic::new().retry(policy(3)).run(|| {
        attempts.set(attempts.get() + 1);
        insert_num(7)?;
        insert_num(7)
    });
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
    assert_eq!(attempts.get(), 1);

    attempts.set(0);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Atomic::new().retry(policy(3)).run(|| {
            attempts.set(attempts.get() + 1);
            add("Tintin")?;
            panic!("not retried");
            #[allow(unreachable_code)]
            Ok::<(), TestErrorWithDiesel>(())
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(attempts.get(), 1);
    assert!(db.reporters("default").is_empty());
    assert!(db.things("default").is_empty());
    assert_pool_clean(&db.default);
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

impl From<TestError> for TestErrorWithDiesel {
    fn from(error: TestError) -> Self {
        TestErrorWithDiesel::Runtime(Error::TransactionManagement(format!("{error:?}")))
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

fn a_users_error_type_is_read_through_as_diesel_error<C: Backend>() {
    let _db = setup::<C>();
    let attempts = Cell::new(0);
    let result = Atomic::new().retry(policy(2)).run(|| {
        attempts.set(attempts.get() + 1);
        if attempts.get() < 3 {
            return Err(TestErrorWithDiesel::Db(serialization_failure()));
        }
        Ok(attempts.get())
    });
    assert_eq!(result.unwrap(), 3);
}

/// A retried block is outermost by definition: nested, it is `DurableNested`.
fn a_retrying_block_inside_another_is_durable_nested<C: Backend>() {
    let _db = setup::<C>();
    let result = transaction::atomic(|| Atomic::new().retry(policy(3)).run(|| Ok::<_, Error>(())));
    assert!(matches!(result, Err(Error::DurableNested { ref alias }) if alias == "default"));
}

/// The connection dies after the body's last statement, so the COMMIT's outcome is unknown
/// to the client: it is never retried (it might have committed).
fn a_commit_with_unknown_outcome_is_not_retried<C: Backend>() {
    let db = setup::<C>();
    let mut admin = db.raw("default");
    let attempts = Cell::new(0);
    let result = Atomic::new().retry(policy(3)).run(|| {
        attempts.set(attempts.get() + 1);
        create_reporter("Tintin", "")?;
        let session =
            diesel_atomic::connection(|conn: &mut C| conn.session_id().map_err(Error::from))?;
        admin.kill_session(session).map_err(Error::from)?;
        Ok::<_, Error>(())
    });
    assert!(result.is_err(), "{result:?}");
    assert_eq!(attempts.get(), 1);
    assert!(db.reporters("default").is_empty());
    assert_pool_clean(&db.default);
}

backend_tests!(
    retry_gives_up_after_the_policy_and_returns_the_last_error,
    other_errors_and_panics_are_not_retried,
    a_users_error_type_is_read_through_as_diesel_error,
    a_retrying_block_inside_another_is_durable_nested,
);

mod sqlite_only {
    use super::*;
    backend_tests!(on [sqlite]: sqlite_stale_snapshot_busy_is_retried);
}

mod servers {
    use super::*;
    backend_tests!(on [postgres, mysql]:
        deadlocks_are_retried,
        without_retry_the_deadlock_victim_gets_the_error,
        a_commit_with_unknown_outcome_is_not_retried,
    );
}

mod postgres_only {
    use super::*;
    // MariaDB's SERIALIZABLE is locking, not SSI: the same schedule deadlocks there instead
    // (covered by the deadlock tests).
    backend_tests!(on [postgres]:
        serialization_conflicts_are_retried_to_a_serial_outcome,
        without_retry_one_serialization_conflict_is_an_error,
    );
}
