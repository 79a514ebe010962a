//! Django's `CaptureOnCommitCallbacksTests` (tests/test_utils/tests.py) on the async runtime:
//! tests/capture_on_commit.rs test by test (same names, same assertions), with
//! `aio::testing::{TestTransaction, capture_on_commit_callbacks, capture_on_commit_callbacks_using}`.
//!
//! Django runs these in a `TestCase` on the databases "default" and "other"; here every test
//! opens an `aio::testing::TestTransaction` on both aliases of its own databases, on SQLite,
//! PostgreSQL and MariaDB (deadpool: nothing here depends on the pool), so on_commit callbacks
//! are queued (never run by a commit) and everything is rolled back.
//!
//! Differences from the sync file: the async `CapturedCallbacks` has no iterator; the callbacks
//! captured without `execute` are run with `run().await` (the sync suite pops them and calls
//! them), and after `execute` `run()` runs nothing. Callbacks are `Send`, so the flags are
//! atomics. A callback that writes to the database is an `on_commit_async` future (a plain
//! callback cannot await).
//!
//! Django tests not ported:
//! - `test_execute_robust_with_callback_as_partial`: Rust has no `functools.partial`; its point
//!   (a callable that is not a plain local function is still named in the log) is ported as
//!   `execute_logs_a_panicking_robust_named_fn_with_its_path`.
#![cfg(feature = "async")]

mod common_aio;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common_aio::*;
use diesel_atomic::aio::testing::{
    CapturedCallbacks, TestTransaction, capture_on_commit_callbacks,
    capture_on_commit_callbacks_using,
};
use diesel_atomic::aio::{self, transaction};

aio_tests!(deadpool:
    captures_default_alias_callbacks_without_running_them,
    captures_callbacks_of_the_given_alias,
    does_not_capture_callbacks_of_another_alias,
    execute_runs_the_captured_callbacks,
    execute_runs_callbacks_that_write_inside_the_test_transaction,
    does_not_capture_callbacks_registered_before,
    does_not_capture_callbacks_of_a_savepoint_rolled_back_by_an_integrity_error,
    does_not_capture_callbacks_of_a_savepoint_rolled_back_by_a_panic,
    execute_also_runs_callbacks_registered_by_callbacks,
    execute_visits_each_callback_of_a_tree_once_in_registration_order,
    execute_logs_a_panicking_robust_callback_and_continues,
    execute_logs_a_panicking_robust_named_fn_with_its_path,
);

const POOL: usize = 2;

/// Django's `setUp` for a `TestCase` with `databases = {"default", "other"}`.
async fn begin_test_case<C: Backend>(pool: PoolKind) -> (TestDb<C>, TestTransaction) {
    let db = TestDb::<C>::with_other(pool, POOL).await;
    let test = TestTransaction::begin_using(&["default", "other"])
        .await
        .expect("test transaction");
    (db, test)
}

/// Django's `tearDown`: rolls the test transaction back; nothing was committed and every
/// connection went back to its pool clean.
async fn end_test_case<C: Backend>(db: TestDb<C>, test: TestTransaction) {
    test.rollback().await;
    assert!(db.committed().await.is_empty(), "nothing was committed");
    assert_pool_clean(&db, POOL).await;
}

/// Django's `callback_called` flag.
#[derive(Clone, Default)]
struct Flag(Arc<AtomicBool>);

impl Flag {
    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Django's `enqueue_callback(using)`: registers a hook that sets the flag.
fn enqueue_callback(flag: &Flag, using: &str) {
    let flag = flag.clone();
    aio::db(using)
        .on_commit(move || flag.set())
        .expect("on_commit inside the test transaction");
}

/// Django's check after capturing one `enqueue_callback` with `execute = false`: exactly one
/// callback was captured, it has not run, and running it sets the flag.
async fn assert_one_pending_callback_sets(flag: &Flag, callbacks: CapturedCallbacks) {
    assert_eq!(callbacks.len(), 1);
    assert!(!flag.is_set(), "captured, not run");
    callbacks.run().await;
    assert!(flag.is_set());
}

/// Inserts `Thing(num = n)` through the default alias's ambient connection, handing a
/// database error back as `TestError::Db`.
async fn insert_thing_keeping_db_errors<C: Backend>(n: i32) -> Result<(), TestError> {
    aio::connection(async |conn: &mut C| insert(conn, n).await.map_err(TestError::from)).await
}

/// How each backend words a unique violation (Django's IntegrityError) on `things.num`.
fn unique_violation_message(kind: Kind) -> &'static str {
    match kind {
        // SQLite: "UNIQUE constraint failed: <table>.<column>".
        Kind::Sqlite => "UNIQUE constraint failed: things.num",
        // PostgreSQL, SQLSTATE 23505: "duplicate key value violates unique constraint <name>".
        Kind::Postgres => "duplicate key value violates unique constraint",
        // MariaDB, ER_DUP_ENTRY (1062): "Duplicate entry '<value>' for key '<name>'".
        Kind::Mysql => "Duplicate entry '1' for key",
    }
}

// Django: CaptureOnCommitCallbacksTests.test_no_arguments
async fn captures_default_alias_callbacks_without_running_them<C: Backend>(pool: PoolKind) {
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();

    let ((), callbacks) =
        capture_on_commit_callbacks(false, async { enqueue_callback(&flag, "default") }).await;

    assert_one_pending_callback_sets(&flag, callbacks).await;
    end_test_case(db, test).await;
}

// Django: CaptureOnCommitCallbacksTests.test_using
async fn captures_callbacks_of_the_given_alias<C: Backend>(pool: PoolKind) {
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();

    let ((), callbacks) = capture_on_commit_callbacks_using("other", false, async {
        enqueue_callback(&flag, "other")
    })
    .await;

    assert_one_pending_callback_sets(&flag, callbacks).await;
    end_test_case(db, test).await;
}

// Django: CaptureOnCommitCallbacksTests.test_different_using
async fn does_not_capture_callbacks_of_another_alias<C: Backend>(pool: PoolKind) {
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();

    let ((), callbacks) =
        capture_on_commit_callbacks(false, async { enqueue_callback(&flag, "other") }).await;

    assert!(callbacks.is_empty());
    assert_eq!(callbacks.len(), 0);
    callbacks.run().await;
    assert!(!flag.is_set(), "nothing was captured, so nothing ran");
    end_test_case(db, test).await;
    assert!(
        !flag.is_set(),
        "the other alias's callback is rolled back with the test transaction"
    );
}

// Django: CaptureOnCommitCallbacksTests.test_execute
async fn execute_runs_the_captured_callbacks<C: Backend>(pool: PoolKind) {
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();

    let ((), callbacks) =
        capture_on_commit_callbacks(true, async { enqueue_callback(&flag, "default") }).await;

    assert_eq!(callbacks.len(), 1);
    assert!(flag.is_set());
    // Already run, so none handed back: running what is left runs nothing.
    flag.clear();
    callbacks.run().await;
    assert!(!flag.is_set(), "already run, so none handed back");
    end_test_case(db, test).await;
}

// Django: CaptureOnCommitCallbacksTests.test_execute
// (with a database write: the captured callback runs inside the test transaction, so its row
// is visible there and never committed)
async fn execute_runs_callbacks_that_write_inside_the_test_transaction<C: Backend>(pool: PoolKind) {
    let (db, test) = begin_test_case::<C>(pool).await;

    let ((), callbacks) = capture_on_commit_callbacks(true, async {
        transaction::on_commit_async(async {
            insert_ambient::<C>(7)
                .await
                .expect("insert in the callback")
        })
        .unwrap();
    })
    .await;

    assert_eq!(callbacks.len(), 1);
    assert_eq!(visible_ambient::<C>().await.unwrap(), [7]);
    end_test_case(db, test).await; // asserts nothing was committed: rolled back with the test
}

// Django: CaptureOnCommitCallbacksTests.test_pre_callback
async fn does_not_capture_callbacks_registered_before<C: Backend>(pool: PoolKind) {
    let (db, test) = begin_test_case::<C>(pool).await;
    let pre_hook_called = Flag::default();
    let flag = Flag::default();
    {
        let pre_hook_called = pre_hook_called.clone();
        transaction::on_commit(move || pre_hook_called.set()).unwrap();
    }

    let ((), callbacks) =
        capture_on_commit_callbacks(false, async { enqueue_callback(&flag, "default") }).await;

    assert_eq!(callbacks.len(), 1);
    callbacks.run().await;
    assert!(
        flag.is_set(),
        "the captured callback is the one enqueued inside"
    );
    assert!(
        !pre_hook_called.is_set(),
        "the earlier callback was not captured"
    );
    end_test_case(db, test).await;
    assert!(!pre_hook_called.is_set(), "rolled back with the test");
}

// Django: CaptureOnCommitCallbacksTests.test_with_rolled_back_savepoint
async fn does_not_capture_callbacks_of_a_savepoint_rolled_back_by_an_integrity_error<C: Backend>(
    pool: PoolKind,
) {
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();

    let (result, callbacks) = capture_on_commit_callbacks(false, async {
        transaction::atomic(async || {
            enqueue_callback(&flag, "default");
            insert_thing_keeping_db_errors::<C>(1).await?;
            insert_thing_keeping_db_errors::<C>(1).await // UNIQUE(num): a real IntegrityError
        })
        .await
    })
    .await;

    match result {
        Err(TestError::Db(message)) => assert!(
            message.contains(unique_violation_message(C::KIND)),
            "{message}"
        ),
        other => panic!("expected the unique violation, got {other:?}"),
    }
    assert!(callbacks.is_empty());
    callbacks.run().await;
    assert!(!flag.is_set());
    end_test_case(db, test).await;
}

// Django: CaptureOnCommitCallbacksTests.test_with_rolled_back_savepoint
async fn does_not_capture_callbacks_of_a_savepoint_rolled_back_by_a_panic<C: Backend>(
    pool: PoolKind,
) {
    quiet_expected_panics("integrity error");
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();

    let (unwound, callbacks) = capture_on_commit_callbacks(false, async {
        catch_unwind(transaction::atomic(async || -> Result<(), TestError> {
            enqueue_callback(&flag, "default");
            panic!("integrity error")
        }))
        .await
    })
    .await;

    assert!(unwound.is_err(), "the panic went through the block");
    assert!(callbacks.is_empty());
    assert!(!flag.is_set());
    assert!(
        transaction::in_atomic_block(),
        "the test transaction is still open"
    );
    end_test_case(db, test).await;
}

// Django: CaptureOnCommitCallbacksTests.test_execute_recursive
async fn execute_also_runs_callbacks_registered_by_callbacks<C: Backend>(pool: PoolKind) {
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();

    let ((), callbacks) = capture_on_commit_callbacks(true, async {
        let flag = flag.clone();
        transaction::on_commit(move || enqueue_callback(&flag, "default")).unwrap();
    })
    .await;

    assert_eq!(callbacks.len(), 2);
    assert!(flag.is_set());
    end_test_case(db, test).await;
}

/// Records which callback of `execute_tree` ran, in order.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<&'static str>>>);

impl Calls {
    fn push(&self, name: &'static str) {
        self.0.lock().unwrap().push(name);
    }

    /// A callback that only records its name (a leaf of the tree).
    fn leaf(&self, name: &'static str) -> impl FnOnce() + Send + 'static {
        let calls = self.clone();
        move || calls.push(name)
    }

    fn count(&self, name: &str) -> usize {
        self.get().iter().filter(|call| **call == name).count()
    }

    fn get(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().clone()
    }
}

// Django: CaptureOnCommitCallbacksTests.test_execute_tree
async fn execute_visits_each_callback_of_a_tree_once_in_registration_order<C: Backend>(
    pool: PoolKind,
) {
    // └─branch_1
    //   ├─branch_2
    //   │ ├─leaf_1
    //   │ └─leaf_2
    //   └─leaf_3
    let (db, test) = begin_test_case::<C>(pool).await;
    let calls = Calls::default();
    let branch_2 = {
        let calls = calls.clone();
        move || {
            calls.push("branch_2");
            transaction::on_commit(calls.leaf("leaf_1")).unwrap();
            transaction::on_commit(calls.leaf("leaf_2")).unwrap();
        }
    };
    let branch_1 = {
        let calls = calls.clone();
        move || {
            calls.push("branch_1");
            transaction::on_commit(branch_2).unwrap();
            transaction::on_commit(calls.leaf("leaf_3")).unwrap();
        }
    };

    let ((), callbacks) = capture_on_commit_callbacks(true, async {
        transaction::on_commit(branch_1).unwrap();
    })
    .await;

    for name in ["branch_1", "branch_2", "leaf_1", "leaf_2", "leaf_3"] {
        assert_eq!(calls.count(name), 1, "{name} ran exactly once");
    }
    assert_eq!(callbacks.len(), 5);
    assert_eq!(
        calls.get(),
        ["branch_1", "branch_2", "leaf_3", "leaf_1", "leaf_2"]
    );
    end_test_case(db, test).await;
}

// Django: CaptureOnCommitCallbacksTests.test_execute_robust
async fn execute_logs_a_panicking_robust_callback_and_continues<C: Backend>(pool: PoolKind) {
    quiet_expected_panics("robust callback");
    let (db, test) = begin_test_case::<C>(pool).await;
    let flag = Flag::default();
    let hook = {
        let flag = flag.clone();
        callback(move || {
            flag.set();
            panic!("robust callback");
        })
    };
    let name = type_name_of(&hook);

    let (((), callbacks), errors) = capture_error_logs(capture_on_commit_callbacks(true, async {
        transaction::on_commit_robust(hook).unwrap();
    }))
    .await;

    assert_eq!(callbacks.len(), 1);
    assert!(flag.is_set());
    assert_eq!(
        errors,
        [format!(
            "Error calling {name} in on_commit() (robust callback)."
        )]
    );
    end_test_case(db, test).await;
}

fn failing_robust_callback() {
    panic!("robust callback");
}

// Django: CaptureOnCommitCallbacksTests.test_execute_robust_with_callback_as_partial
async fn execute_logs_a_panicking_robust_named_fn_with_its_path<C: Backend>(pool: PoolKind) {
    quiet_expected_panics("robust callback");
    let (db, test) = begin_test_case::<C>(pool).await;

    let (((), callbacks), errors) = capture_error_logs(capture_on_commit_callbacks(true, async {
        transaction::on_commit_robust(failing_robust_callback).unwrap();
    }))
    .await;

    assert_eq!(callbacks.len(), 1);
    assert_eq!(
        errors,
        [format!(
            "Error calling {}::failing_robust_callback in on_commit() (robust callback).",
            module_path!()
        )]
    );
    end_test_case(db, test).await;
}
