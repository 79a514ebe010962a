//! Django's tests/transaction_hooks/tests.py (`TestConnectionOnCommit`), ported.
//!
//! Like Django's `TransactionTestCase`, every test really commits, to a database of its own on
//! every backend (SQLite, PostgreSQL, MariaDB), and checks that the callbacks that ran match the
//! rows that were committed.
//! Django's "raises" is a body returning `Err`; most tests also have a panic variant.
//!
//! Django tests not ported:
//! - `test_raises_exception_non_autocommit_mode`: diesel has no manual autocommit mode
//!   (`set_autocommit(False)`), so "on_commit() in manual transaction management" cannot occur.
//! - `test_raises_exception_non_callable`: `on_commit(None)` does not compile; the type system
//!   requires `impl FnOnce() + 'static`, so there is nothing to test at run time.
//! - `test_hooks_cleared_on_reconnect`: it closes the connection inside a block with
//!   `connection.close()`, which diesel-atomic has no counterpart for (Django also skips it on
//!   SQLite, which lacks `test_db_allows_multiple_connections`; PostgreSQL and MariaDB have it,
//!   but the missing `close()` is the reason here).
//! - `test_robust_if_no_transaction_with_callback_as_partial` and
//!   `test_robust_transaction_with_callback_as_partial`: Rust has no `functools.partial`; the
//!   point of those tests (a callable without a `__qualname__` is still named in the log) is
//!   ported as the `..._named_fn_...` tests, where the callback is a fn item, not a closure.

mod captured_logs;
mod common;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use captured_logs::{callback, capture_error_logs, type_name_of};
use common::*;
use diesel_atomic::transaction::{self, Atomic};

/// Django's `ForcedError`, raised by a callback or a body; used as a panic payload.
#[derive(Debug)]
struct ForcedError;

/// Django's `do(num)`: creates a Thing and registers an on_commit callback that notifies it.
fn do_(notified: &Notified, n: i32) -> Result<(), TestError> {
    insert_thing(n)?;
    let notified = notified.clone();
    transaction::on_commit(move || notified.push(n))?;
    Ok(())
}

/// Django's `assertDone(nums)`: the callbacks ran for exactly `nums`, in this order, and the
/// committed table holds exactly `nums`.
fn assert_done<C: Backend>(db: &TestDb<C>, notified: &Notified, nums: &[i32]) {
    assert_eq!(notified.get(), nums, "callbacks that ran");
    let mut committed = db.things("default");
    committed.sort_unstable();
    let mut expected = nums.to_vec();
    expected.sort_unstable();
    assert_eq!(committed, expected, "committed rows");
    assert!(!transaction::in_atomic_block(), "no block left open");
}

/// Django's `notify("error")`: a callback that raises `ForcedError`.
fn forced_error_callback() {
    panic::panic_any(ForcedError);
}

/// Runs `f`, which must panic with `ForcedError`, and returns nothing else.
fn assert_forced_panic<T: std::fmt::Debug>(f: impl FnOnce() -> T) {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => panic!("expected a ForcedError panic, got {value:?}"),
        Err(payload) => assert_forced_payload(payload.as_ref()),
    }
}

fn assert_forced_payload(payload: &(dyn Any + Send)) {
    assert!(
        payload.is::<ForcedError>(),
        "the panic kept its original ForcedError payload"
    );
}

/// Django's `with self.assertRaises(...): with transaction.atomic(): <body>; raise ...`, with the
/// raise as a returned `Err(Oops)`: the block runs `body`, then fails, and returns that error.
#[track_caller]
fn atomic_then_err(body: impl FnOnce() -> Result<(), TestError>) {
    let result = transaction::atomic(|| {
        body()?;
        Err::<(), _>(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
}

/// [`atomic_then_err`] with the raise as a `ForcedError` panic: the block runs `body`, then
/// panics, and resumes that panic.
#[track_caller]
fn atomic_then_panic(body: impl FnOnce() -> Result<(), TestError>) {
    assert_forced_panic(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            body()?;
            panic::panic_any(ForcedError)
        })
    });
}

/// Django's `on_commit(callback, robust=True)` followed by `do(1)`, outside any transaction;
/// returns the ERROR events logged meanwhile.
fn robust_hook_then_do_1(notified: &Notified, hook: impl FnOnce() + 'static) -> Vec<String> {
    let ((), errors) = capture_error_logs(|| {
        transaction::on_commit_robust(hook).unwrap();
        do_(notified, 1).unwrap();
    });
    errors
}

/// [`robust_hook_then_do_1`] inside one transaction, which commits.
fn robust_hook_then_do_1_in_a_transaction(
    notified: &Notified,
    hook: impl FnOnce() + 'static,
) -> Vec<String> {
    let ((), errors) = capture_error_logs(|| {
        transaction::atomic(|| {
            transaction::on_commit_robust(hook)?;
            do_(notified, 1)
        })
        .unwrap();
    });
    errors
}

/// A robust callback given as a fn item rather than a closure (the Rust stand-in for Django's
/// `functools.partial` variants: a callable whose name comes from somewhere else).
fn failing_robust_callback() {
    panic!("robust callback");
}

// Django: TestConnectionOnCommit.test_executes_immediately_if_no_transaction
fn hook_runs_immediately_outside_a_transaction<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    do_(&notified, 1).unwrap();
    assert_done(&db, &notified, &[1]);
}

// Django: TestConnectionOnCommit.test_robust_if_no_transaction
fn robust_hook_panic_outside_a_transaction_is_logged_and_execution_continues<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let robust_callback = callback(|| panic!("robust callback"));
    let name = type_name_of(&robust_callback);
    assert!(
        name.contains("robust_hook_panic_outside_a_transaction_is_logged_and_execution_continues"),
        "the name locates the closure: {name}"
    );

    let errors = robust_hook_then_do_1(&notified, robust_callback);

    assert_done(&db, &notified, &[1]);
    assert_eq!(
        errors,
        [format!(
            "Error calling {name} in on_commit() (robust callback)."
        )]
    );
}

// Django: TestConnectionOnCommit.test_robust_if_no_transaction_with_callback_as_partial
fn robust_named_fn_hook_panic_outside_a_transaction_is_logged_with_its_path<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();

    let errors = robust_hook_then_do_1(&notified, failing_robust_callback);

    assert_done(&db, &notified, &[1]);
    assert_eq!(
        errors,
        [format!(
            "Error calling {}::failing_robust_callback in on_commit() (robust callback).",
            module_path!()
        )]
    );
}

// Django: TestConnectionOnCommit.test_robust_transaction
fn robust_hook_panic_after_commit_is_logged_and_later_hooks_run<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let robust_callback = callback(|| panic!("robust callback"));
    let name = type_name_of(&robust_callback);

    let errors = robust_hook_then_do_1_in_a_transaction(&notified, robust_callback);

    assert_done(&db, &notified, &[1]);
    assert_eq!(
        errors,
        [format!(
            "Error calling {name} in on_commit() during transaction (robust callback)."
        )]
    );
}

// Django: TestConnectionOnCommit.test_robust_transaction_with_callback_as_partial
fn robust_named_fn_hook_panic_after_commit_is_logged_with_its_path<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();

    let errors = robust_hook_then_do_1_in_a_transaction(&notified, failing_robust_callback);

    assert_done(&db, &notified, &[1]);
    assert_eq!(
        errors,
        [format!(
            "Error calling {}::failing_robust_callback in on_commit() during transaction \
             (robust callback).",
            module_path!()
        )]
    );
}

// Django: TestConnectionOnCommit.test_delays_execution_until_after_transaction_commit
fn hook_waits_for_the_commit<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        do_(&notified, 1)?;
        assert!(notified.get().is_empty(), "not run inside the transaction");
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_done(&db, &notified, &[1]);
}

// Django: TestConnectionOnCommit.test_does_not_execute_if_transaction_rolled_back
fn hook_is_dropped_when_the_transaction_returns_err<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    atomic_then_err(|| do_(&notified, 1));
    assert_done(&db, &notified, &[]);
}

// Django: TestConnectionOnCommit.test_does_not_execute_if_transaction_rolled_back
fn hook_is_dropped_when_the_transaction_body_panics<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    atomic_then_panic(|| do_(&notified, 1));
    assert_done(&db, &notified, &[]);
}

// Django: TestConnectionOnCommit.test_executes_only_after_final_transaction_committed
fn hook_waits_for_the_outermost_commit_not_the_savepoint_release<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        transaction::atomic(|| {
            do_(&notified, 1)?;
            assert!(notified.get().is_empty());
            Ok::<_, TestError>(())
        })?;
        assert!(
            notified.get().is_empty(),
            "releasing the savepoint runs nothing"
        );
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_done(&db, &notified, &[1]);
}

// Django: TestConnectionOnCommit.test_discards_hooks_from_rolled_back_savepoint
fn hooks_from_a_savepoint_that_returned_err_are_dropped<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        // one successful savepoint
        transaction::atomic(|| do_(&notified, 1))?;
        // one failed savepoint
        atomic_then_err(|| do_(&notified, 2));
        // another successful savepoint
        transaction::atomic(|| do_(&notified, 3))
    })
    .unwrap();
    // only hooks registered during successful savepoints execute
    assert_done(&db, &notified, &[1, 3]);
}

// Django: TestConnectionOnCommit.test_discards_hooks_from_rolled_back_savepoint
fn hooks_from_a_savepoint_that_panicked_are_dropped<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        transaction::atomic(|| do_(&notified, 1))?;
        atomic_then_panic(|| do_(&notified, 2));
        transaction::atomic(|| do_(&notified, 3))
    })
    .unwrap();
    assert_done(&db, &notified, &[1, 3]);
}

// Django: TestConnectionOnCommit.test_no_hooks_run_from_failed_transaction
fn hooks_from_a_released_savepoint_are_dropped_when_the_outer_block_returns_err<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    atomic_then_err(|| transaction::atomic(|| do_(&notified, 1)));
    assert_done(&db, &notified, &[]);
}

// Django: TestConnectionOnCommit.test_no_hooks_run_from_failed_transaction
fn hooks_from_a_released_savepoint_are_dropped_when_the_outer_block_panics<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    atomic_then_panic(|| transaction::atomic(|| do_(&notified, 1)));
    assert_done(&db, &notified, &[]);
}

// Django: TestConnectionOnCommit.test_inner_savepoint_rolled_back_with_outer
fn hooks_of_an_inner_savepoint_are_dropped_with_its_rolled_back_parent_savepoint<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        atomic_then_err(|| transaction::atomic(|| do_(&notified, 1)));
        do_(&notified, 2)
    })
    .unwrap();
    assert_done(&db, &notified, &[2]);
}

// Django: TestConnectionOnCommit.test_no_savepoints_atomic_merged_with_outer
fn failed_block_without_savepoint_drops_the_hooks_of_the_enclosing_savepoint<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        transaction::atomic(|| {
            do_(&notified, 1)?;
            let merged = Atomic::new()
                .savepoint(false)
                .run(|| Err::<(), _>(TestError::Oops));
            assert_eq!(merged, Err(TestError::Oops));
            // The middle block now exits with Ok but rolls back to its savepoint silently.
            Ok::<_, TestError>(())
        })
    })
    .unwrap();
    assert_done(&db, &notified, &[]);
}

// Django: TestConnectionOnCommit.test_no_savepoints_atomic_merged_with_outer
fn panicking_block_without_savepoint_drops_the_hooks_of_the_enclosing_savepoint<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        transaction::atomic(|| {
            do_(&notified, 1)?;
            assert_forced_panic(|| {
                Atomic::new()
                    .savepoint(false)
                    .run(|| -> Result<(), TestError> { panic::panic_any(ForcedError) })
            });
            Ok::<_, TestError>(())
        })
    })
    .unwrap();
    assert_done(&db, &notified, &[]);
}

// Django: TestConnectionOnCommit.test_inner_savepoint_does_not_affect_outer
fn failed_inner_savepoint_keeps_the_hooks_of_its_parent<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        transaction::atomic(|| {
            do_(&notified, 1)?;
            let inner = transaction::atomic(|| Err::<(), _>(TestError::Oops));
            assert_eq!(inner, Err(TestError::Oops));
            Ok::<_, TestError>(())
        })
    })
    .unwrap();
    assert_done(&db, &notified, &[1]);
}

// Django: TestConnectionOnCommit.test_runs_hooks_in_order_registered
fn hooks_run_in_registration_order_across_levels<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        do_(&notified, 1)?;
        transaction::atomic(|| do_(&notified, 2))?;
        do_(&notified, 3)
    })
    .unwrap();
    assert_done(&db, &notified, &[1, 2, 3]);
}

// Django: TestConnectionOnCommit.test_hooks_cleared_after_successful_commit
fn hooks_run_once_and_are_cleared_after_commit<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| do_(&notified, 1)).unwrap();
    transaction::atomic(|| do_(&notified, 2)).unwrap();
    assert_done(&db, &notified, &[1, 2]); // not [1, 1, 2]
}

// Django: TestConnectionOnCommit.test_hooks_cleared_after_rollback
fn hooks_are_cleared_after_an_err_rollback<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    atomic_then_err(|| do_(&notified, 1));
    transaction::atomic(|| do_(&notified, 2)).unwrap();
    assert_done(&db, &notified, &[2]);
}

// Django: TestConnectionOnCommit.test_hooks_cleared_after_rollback
fn hooks_are_cleared_after_a_panic_rollback<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    atomic_then_panic(|| do_(&notified, 1));
    transaction::atomic(|| do_(&notified, 2)).unwrap();
    assert_done(&db, &notified, &[2]);
}

// Django: TestConnectionOnCommit.test_error_in_hook_doesnt_prevent_clearing_hooks
fn panicking_hook_does_not_leave_hooks_for_the_next_transaction<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    assert_forced_panic(|| {
        transaction::atomic(|| {
            transaction::on_commit(forced_error_callback)?;
            Ok::<_, TestError>(())
        })
    });
    assert!(!transaction::in_atomic_block());
    transaction::atomic(|| do_(&notified, 1)).unwrap();
    assert_done(&db, &notified, &[1]);
}

// Django: TestConnectionOnCommit.test_error_in_hook_doesnt_prevent_clearing_hooks
// (with rule C4 / R35 made visible: the data stays committed, the hooks queued after the
// panicking one never run, not even with the next transaction)
fn panicking_hook_propagates_after_the_commit_and_drops_the_later_hooks<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    assert_forced_panic(|| {
        transaction::atomic(|| {
            do_(&notified, 1)?;
            transaction::on_commit(forced_error_callback)?;
            do_(&notified, 2)
        })
    });
    assert_eq!(notified.get(), [1], "hooks before the panicking one ran");
    assert_eq!(db.things("default"), [1, 2], "the data was committed");
    assert!(!transaction::in_atomic_block());

    transaction::atomic(|| do_(&notified, 3)).unwrap();
    assert_eq!(notified.get(), [1, 3], "the dropped hook never runs later");
    assert_eq!(db.things("default"), [1, 2, 3]);
}

// Django: TestConnectionOnCommit.test_db_query_in_hook
fn hook_can_query_the_committed_data<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        insert_thing(1)?;
        let notified = notified.clone();
        transaction::on_commit(move || {
            let nums = diesel_atomic::connection(|conn: &mut C| {
                conn.thing_nums().map_err(TestError::from)
            })
            .expect("query in the hook");
            for num in nums {
                notified.push(num);
            }
        })?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_done(&db, &notified, &[1]);
}

// Django: TestConnectionOnCommit.test_transaction_in_hook
fn hook_can_run_its_own_transaction<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let hook = {
        let notified = notified.clone();
        move || {
            assert!(
                !transaction::in_atomic_block(),
                "the hook runs after the block"
            );
            transaction::atomic(|| {
                insert_thing(1)?;
                notified.push(1);
                Ok::<_, TestError>(())
            })
            .expect("transaction in the hook");
        }
    };
    transaction::atomic(|| {
        transaction::on_commit(hook)?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_done(&db, &notified, &[1]);
}

/// Django's `on_commit(i, add_hook)` from `test_hook_in_hook`: opens a transaction that
/// (optionally) registers a further hook for `i + 10` and creates Thing `i`.
fn hook_opening_a_transaction(notified: Notified, i: i32, add_hook: bool) {
    transaction::atomic(|| {
        if add_hook {
            let notified = notified.clone();
            transaction::on_commit(move || hook_opening_a_transaction(notified, i + 10, false))?;
        }
        insert_thing(i)?;
        notified.push(i);
        Ok::<_, TestError>(())
    })
    .expect("transaction in the hook");
}

// Django: TestConnectionOnCommit.test_hook_in_hook
fn hook_registered_by_a_hook_runs_at_the_commit_of_the_hooks_own_transaction<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        let first = notified.clone();
        transaction::on_commit(move || hook_opening_a_transaction(first, 1, true))?;
        let second = notified.clone();
        transaction::on_commit(move || hook_opening_a_transaction(second, 2, true))?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_done(&db, &notified, &[1, 11, 2, 12]);
}

// Django: TestConnectionOnCommit.test_raises_exception_non_callable
// Not a test: `transaction::on_commit(None)` is rejected by the compiler, because the
// callback must be `impl FnOnce() + 'static`.

backend_tests!(
    hook_runs_immediately_outside_a_transaction,
    robust_hook_panic_outside_a_transaction_is_logged_and_execution_continues,
    robust_named_fn_hook_panic_outside_a_transaction_is_logged_with_its_path,
    robust_hook_panic_after_commit_is_logged_and_later_hooks_run,
    robust_named_fn_hook_panic_after_commit_is_logged_with_its_path,
    hook_waits_for_the_commit,
    hook_is_dropped_when_the_transaction_returns_err,
    hook_is_dropped_when_the_transaction_body_panics,
    hook_waits_for_the_outermost_commit_not_the_savepoint_release,
    hooks_from_a_savepoint_that_returned_err_are_dropped,
    hooks_from_a_savepoint_that_panicked_are_dropped,
    hooks_from_a_released_savepoint_are_dropped_when_the_outer_block_returns_err,
    hooks_from_a_released_savepoint_are_dropped_when_the_outer_block_panics,
    hooks_of_an_inner_savepoint_are_dropped_with_its_rolled_back_parent_savepoint,
    failed_block_without_savepoint_drops_the_hooks_of_the_enclosing_savepoint,
    panicking_block_without_savepoint_drops_the_hooks_of_the_enclosing_savepoint,
    failed_inner_savepoint_keeps_the_hooks_of_its_parent,
    hooks_run_in_registration_order_across_levels,
    hooks_run_once_and_are_cleared_after_commit,
    hooks_are_cleared_after_an_err_rollback,
    hooks_are_cleared_after_a_panic_rollback,
    panicking_hook_does_not_leave_hooks_for_the_next_transaction,
    panicking_hook_propagates_after_the_commit_and_drops_the_later_hooks,
    hook_can_query_the_committed_data,
    hook_can_run_its_own_transaction,
    hook_registered_by_a_hook_runs_at_the_commit_of_the_hooks_own_transaction,
);
