//! Django's `CaptureOnCommitCallbacksTests` (tests/test_utils/tests.py), ported.
//!
//! Django runs these in a `TestCase` on the databases "default" and "other"; here every test
//! opens `testing::TestTransaction` on both aliases of its own databases, on every backend
//! (SQLite, PostgreSQL, MariaDB), so on_commit callbacks are queued (never run by a commit) and
//! everything is rolled back.
//!
//! Difference from Django: captured callbacks are taken out of the queue. With `execute` they
//! are run and the iterator yields nothing (`len()` still counts them); without it the
//! iterator yields them, not yet run.
//!
//! Django tests not ported:
//! - `test_execute_robust_with_callback_as_partial`: Rust has no `functools.partial`; its point
//!   (a callable that is not a plain local function is still named in the log) is ported as
//!   `execute_logs_a_panicking_robust_named_fn_with_its_path`.

mod captured_logs;
mod common;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use captured_logs::{callback, capture_error_logs, type_name_of};
use common::*;
use diesel_atomic::testing::{
    CapturedCallbacks, TestTransaction, capture_on_commit_callbacks,
    capture_on_commit_callbacks_using,
};
use diesel_atomic::{db, transaction};

/// Django's `setUp` for a `TestCase` with `databases = {"default", "other"}`.
fn begin_test_case<C: Backend>() -> (TestDb<C>, TestTransaction) {
    let db = setup::<C>();
    let test = TestTransaction::begin_using(&["default", "other"]).expect("test transaction");
    (db, test)
}

/// Django's `callback_called` flag.
#[derive(Clone, Default)]
struct Flag(Rc<Cell<bool>>);

impl Flag {
    fn set(&self) {
        self.0.set(true);
    }
    fn is_set(&self) -> bool {
        self.0.get()
    }
}

/// Django's `enqueue_callback(using)`: registers a hook that sets the flag.
fn enqueue_callback(flag: &Flag, using: &str) {
    let flag = flag.clone();
    db(using)
        .on_commit(move || flag.set())
        .expect("on_commit inside the test transaction");
}

/// The captured callbacks, which must not have run yet (`execute = false`).
fn pending(callbacks: CapturedCallbacks) -> Vec<Box<dyn FnOnce()>> {
    let count = callbacks.len();
    let pending: Vec<_> = callbacks.into_iter().collect();
    assert_eq!(
        pending.len(),
        count,
        "every captured callback is handed back"
    );
    pending
}

/// Django's check after capturing one `enqueue_callback` with `execute = false`: exactly one
/// callback was captured, it has not run, and running it sets the flag.
#[track_caller]
fn assert_one_pending_callback_sets(flag: &Flag, callbacks: CapturedCallbacks) {
    assert_eq!(callbacks.len(), 1);
    assert!(!flag.is_set(), "captured, not run");
    let mut pending = pending(callbacks);
    let hook = pending.pop().unwrap();
    hook();
    assert!(flag.is_set());
}

/// Inserts `Thing(num = n)` through the default alias's ambient connection, like the shared
/// `insert_thing`, but hands a database error back as `TestError::Db`, the way the SQLite-only
/// fixture did (the shared helper now wraps it in `diesel_atomic::Error::Database`, which
/// becomes `TestError::Atomic`).
fn insert_thing_keeping_db_errors<C: Backend>(n: i32) -> Result<(), TestError> {
    diesel_atomic::connection(|conn: &mut C| conn.insert_thing(n).map_err(TestError::from))
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
fn captures_default_alias_callbacks_without_running_them<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let flag = Flag::default();

    let ((), callbacks) = capture_on_commit_callbacks(false, || enqueue_callback(&flag, "default"));

    assert_one_pending_callback_sets(&flag, callbacks);
}

// Django: CaptureOnCommitCallbacksTests.test_using
fn captures_callbacks_of_the_given_alias<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let flag = Flag::default();

    let ((), callbacks) =
        capture_on_commit_callbacks_using("other", false, || enqueue_callback(&flag, "other"));

    assert_one_pending_callback_sets(&flag, callbacks);
}

// Django: CaptureOnCommitCallbacksTests.test_different_using
fn does_not_capture_callbacks_of_another_alias<C: Backend>() {
    let (db, test) = begin_test_case::<C>();
    let flag = Flag::default();

    let ((), callbacks) = capture_on_commit_callbacks(false, || enqueue_callback(&flag, "other"));

    assert!(callbacks.is_empty());
    assert_eq!(callbacks.len(), 0);
    assert_eq!(callbacks.into_iter().count(), 0);
    drop(test);
    assert!(
        !flag.is_set(),
        "the other alias's callback is rolled back with the test transaction"
    );
    drop(db);
}

// Django: CaptureOnCommitCallbacksTests.test_execute
fn execute_runs_the_captured_callbacks<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let flag = Flag::default();

    let ((), callbacks) = capture_on_commit_callbacks(true, || enqueue_callback(&flag, "default"));

    assert_eq!(callbacks.len(), 1);
    assert!(flag.is_set());
    assert_eq!(
        callbacks.into_iter().count(),
        0,
        "already run, so none handed back"
    );
}

// Django: CaptureOnCommitCallbacksTests.test_execute
// (with a database write: the captured callback runs inside the test transaction, so its row
// is visible there and never committed)
fn execute_runs_callbacks_that_write_inside_the_test_transaction<C: Backend>() {
    let (db, test) = begin_test_case::<C>();

    let ((), callbacks) = capture_on_commit_callbacks(true, || {
        transaction::on_commit(|| insert_thing(7).expect("insert in the callback")).unwrap();
    });

    assert_eq!(callbacks.len(), 1);
    let visible =
        diesel_atomic::connection(|conn: &mut C| conn.thing_nums().map_err(TestError::from))
            .unwrap();
    assert_eq!(visible, [7]);
    drop(test);
    assert!(db.things("default").is_empty(), "rolled back with the test");
}

// Django: CaptureOnCommitCallbacksTests.test_pre_callback
fn does_not_capture_callbacks_registered_before<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let pre_hook_called = Flag::default();
    let flag = Flag::default();
    {
        let pre_hook_called = pre_hook_called.clone();
        transaction::on_commit(move || pre_hook_called.set()).unwrap();
    }

    let ((), callbacks) = capture_on_commit_callbacks(false, || enqueue_callback(&flag, "default"));

    assert_eq!(callbacks.len(), 1);
    for hook in pending(callbacks) {
        hook();
    }
    assert!(
        flag.is_set(),
        "the captured callback is the one enqueued inside"
    );
    assert!(
        !pre_hook_called.is_set(),
        "the earlier callback was not captured"
    );
}

// Django: CaptureOnCommitCallbacksTests.test_with_rolled_back_savepoint
fn does_not_capture_callbacks_of_a_savepoint_rolled_back_by_an_integrity_error<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let flag = Flag::default();

    let (result, callbacks) = capture_on_commit_callbacks(false, || {
        transaction::atomic(|| {
            enqueue_callback(&flag, "default");
            insert_thing_keeping_db_errors::<C>(1)?;
            insert_thing_keeping_db_errors::<C>(1) // UNIQUE(num): a real IntegrityError
        })
    });

    match result {
        Err(TestError::Db(message)) => assert!(
            message.contains(unique_violation_message(C::KIND)),
            "{message}"
        ),
        other => panic!("expected the unique violation, got {other:?}"),
    }
    assert!(callbacks.is_empty());
    assert_eq!(callbacks.into_iter().count(), 0);
    assert!(!flag.is_set());
}

// Django: CaptureOnCommitCallbacksTests.test_with_rolled_back_savepoint
fn does_not_capture_callbacks_of_a_savepoint_rolled_back_by_a_panic<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let flag = Flag::default();

    let (unwound, callbacks) = capture_on_commit_callbacks(false, || {
        panic::catch_unwind(AssertUnwindSafe(|| {
            transaction::atomic(|| -> Result<(), TestError> {
                enqueue_callback(&flag, "default");
                panic!("integrity error")
            })
        }))
    });

    assert!(unwound.is_err(), "the panic went through the block");
    assert!(callbacks.is_empty());
    assert!(!flag.is_set());
    assert!(
        transaction::in_atomic_block(),
        "the test transaction is still open"
    );
}

// Django: CaptureOnCommitCallbacksTests.test_execute_recursive
fn execute_also_runs_callbacks_registered_by_callbacks<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let flag = Flag::default();

    let ((), callbacks) = capture_on_commit_callbacks(true, || {
        let flag = flag.clone();
        transaction::on_commit(move || enqueue_callback(&flag, "default")).unwrap();
    });

    assert_eq!(callbacks.len(), 2);
    assert!(flag.is_set());
}

/// Records which callback of `execute_tree` ran, in order.
#[derive(Clone, Default)]
struct Calls(Rc<RefCell<Vec<&'static str>>>);

impl Calls {
    /// A callback that only records its name (a leaf of the tree).
    fn leaf(&self, name: &'static str) -> impl FnOnce() + 'static {
        let calls = self.clone();
        move || calls.0.borrow_mut().push(name)
    }

    fn count(&self, name: &str) -> usize {
        self.0.borrow().iter().filter(|call| **call == name).count()
    }
}

// Django: CaptureOnCommitCallbacksTests.test_execute_tree
fn execute_visits_each_callback_of_a_tree_once_in_registration_order<C: Backend>() {
    // └─branch_1
    //   ├─branch_2
    //   │ ├─leaf_1
    //   │ └─leaf_2
    //   └─leaf_3
    let (_db, _test) = begin_test_case::<C>();
    let calls = Calls::default();
    let branch_2 = {
        let calls = calls.clone();
        move || {
            calls.0.borrow_mut().push("branch_2");
            transaction::on_commit(calls.leaf("leaf_1")).unwrap();
            transaction::on_commit(calls.leaf("leaf_2")).unwrap();
        }
    };
    let branch_1 = {
        let calls = calls.clone();
        move || {
            calls.0.borrow_mut().push("branch_1");
            transaction::on_commit(branch_2).unwrap();
            transaction::on_commit(calls.leaf("leaf_3")).unwrap();
        }
    };

    let ((), callbacks) = capture_on_commit_callbacks(true, || {
        transaction::on_commit(branch_1).unwrap();
    });

    for name in ["branch_1", "branch_2", "leaf_1", "leaf_2", "leaf_3"] {
        assert_eq!(calls.count(name), 1, "{name} ran exactly once");
    }
    assert_eq!(callbacks.len(), 5);
    assert_eq!(
        *calls.0.borrow(),
        ["branch_1", "branch_2", "leaf_3", "leaf_1", "leaf_2"]
    );
}

// Django: CaptureOnCommitCallbacksTests.test_execute_robust
fn execute_logs_a_panicking_robust_callback_and_continues<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();
    let flag = Flag::default();
    let hook = {
        let flag = flag.clone();
        callback(move || {
            flag.set();
            panic!("robust callback");
        })
    };
    let name = type_name_of(&hook);

    let (((), callbacks), errors) = capture_error_logs(|| {
        capture_on_commit_callbacks(true, || {
            transaction::on_commit_robust(hook).unwrap();
        })
    });

    assert_eq!(callbacks.len(), 1);
    assert!(flag.is_set());
    assert_eq!(
        errors,
        [format!(
            "Error calling {name} in on_commit() (robust callback)."
        )]
    );
}

fn failing_robust_callback() {
    panic!("robust callback");
}

// Django: CaptureOnCommitCallbacksTests.test_execute_robust_with_callback_as_partial
fn execute_logs_a_panicking_robust_named_fn_with_its_path<C: Backend>() {
    let (_db, _test) = begin_test_case::<C>();

    let (((), callbacks), errors) = capture_error_logs(|| {
        capture_on_commit_callbacks(true, || {
            transaction::on_commit_robust(failing_robust_callback).unwrap();
        })
    });

    assert_eq!(callbacks.len(), 1);
    assert_eq!(
        errors,
        [format!(
            "Error calling {}::failing_robust_callback in on_commit() (robust callback).",
            module_path!()
        )]
    );
}

backend_tests!(
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
