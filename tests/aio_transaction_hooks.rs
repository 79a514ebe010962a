//! Django's tests/transaction_hooks/tests.py (`TestConnectionOnCommit`) on the async runtime:
//! tests/transaction_hooks.rs test by test (same names, same assertions), with
//! `aio::transaction::{atomic, on_commit, on_commit_robust}` and async bodies.
//!
//! Like Django's `TransactionTestCase`, every test really commits, to a database of its own on
//! SQLite, PostgreSQL and MariaDB (deadpool), and checks that the callbacks that ran match the
//! rows that were committed. Django's "raises" is a body returning `Err`; most tests also have
//! a panic variant (a panic in the block's future).
//!
//! A plain callback cannot await, so the hooks that query or open a transaction
//! (test_db_query_in_hook, test_transaction_in_hook, test_hook_in_hook) are `on_commit_async`
//! futures, awaited after the COMMIT in registration order (A4).
//!
//! Django tests not ported, as in the sync file: `test_raises_exception_non_autocommit_mode`
//! (no manual autocommit mode), `test_raises_exception_non_callable` (a compile error),
//! `test_hooks_cleared_on_reconnect` (no `connection.close()`), the `..._as_partial` ones
//! (ported as the `..._named_fn_...` tests).
#![cfg(feature = "async")]

mod common_aio;

use std::any::Any;
use std::future::Future;
use std::panic;

use common_aio::*;
use diesel_atomic::aio::transaction::{self, Atomic};

aio_tests!(deadpool:
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

/// Django's `ForcedError`, raised by a callback or a body; used as a panic payload.
#[derive(Debug)]
struct ForcedError;

/// Inserts `Thing(num = n)` through the default alias's ambient connection.
async fn insert_thing<C: Backend>(n: i32) -> Result<(), TestError> {
    insert_ambient::<C>(n).await?;
    Ok(())
}

/// Django's `do(num)`: creates a Thing and registers an on_commit callback that notifies it.
async fn do_<C: Backend>(notified: &Notified, n: i32) -> Result<(), TestError> {
    insert_thing::<C>(n).await?;
    let notified = notified.clone();
    transaction::on_commit(move || notified.push(n))?;
    Ok(())
}

/// Django's `assertDone(nums)`: the callbacks ran for exactly `nums`, in this order, and the
/// committed table holds exactly `nums`.
async fn assert_done<C: Backend>(db: &TestDb<C>, notified: &Notified, nums: &[i32]) {
    assert_eq!(notified.get(), nums, "callbacks that ran");
    let mut committed = db.committed().await;
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

/// Awaits `future`, which must panic with `ForcedError`.
async fn assert_forced_panic<F: Future>(future: F)
where
    F::Output: std::fmt::Debug,
{
    match catch_unwind(future).await {
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

/// Django's `with self.assertRaises(...): with transaction.atomic(): <body>; raise ...`, with
/// the raise as a returned `Err(Oops)`.
async fn atomic_then_err<F: Future<Output = Result<(), TestError>>>(body: F) {
    let result = transaction::atomic(async || {
        body.await?;
        Err::<(), _>(TestError::Oops)
    })
    .await;
    assert_eq!(result, Err(TestError::Oops));
}

/// [`atomic_then_err`] with the raise as a `ForcedError` panic.
async fn atomic_then_panic<F: Future<Output = Result<(), TestError>>>(body: F) {
    assert_forced_panic(transaction::atomic(async || -> Result<(), TestError> {
        body.await?;
        panic::panic_any(ForcedError)
    }))
    .await;
}

/// Django's `on_commit(callback, robust=True)` followed by `do(1)`, outside any transaction;
/// returns the ERROR events logged meanwhile.
async fn robust_hook_then_do_1<C: Backend>(
    notified: &Notified,
    hook: impl FnOnce() + Send + 'static,
) -> Vec<String> {
    let ((), errors) = capture_error_logs(async {
        transaction::on_commit_robust(hook).unwrap();
        do_::<C>(notified, 1).await.unwrap();
    })
    .await;
    errors
}

/// [`robust_hook_then_do_1`] inside one transaction, which commits.
async fn robust_hook_then_do_1_in_a_transaction<C: Backend>(
    notified: &Notified,
    hook: impl FnOnce() + Send + 'static,
) -> Vec<String> {
    let ((), errors) = capture_error_logs(async {
        transaction::atomic(async || {
            transaction::on_commit_robust(hook)?;
            do_::<C>(notified, 1).await
        })
        .await
        .unwrap();
    })
    .await;
    errors
}

/// A robust callback given as a fn item rather than a closure.
fn failing_robust_callback() {
    panic!("robust callback");
}

// Django: TestConnectionOnCommit.test_executes_immediately_if_no_transaction
async fn hook_runs_immediately_outside_a_transaction<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    do_::<C>(&notified, 1).await.unwrap();
    assert_done(&db, &notified, &[1]).await;
}

// Django: TestConnectionOnCommit.test_robust_if_no_transaction
async fn robust_hook_panic_outside_a_transaction_is_logged_and_execution_continues<C: Backend>(
    pool: PoolKind,
) {
    quiet_expected_panics("robust callback");
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    let robust_callback = callback(|| panic!("robust callback"));
    let name = type_name_of(&robust_callback);
    assert!(
        name.contains("robust_hook_panic_outside_a_transaction_is_logged_and_execution_continues"),
        "the name locates the closure: {name}"
    );

    let errors = robust_hook_then_do_1::<C>(&notified, robust_callback).await;

    assert_done(&db, &notified, &[1]).await;
    assert_eq!(
        errors,
        [format!(
            "Error calling {name} in on_commit() (robust callback)."
        )]
    );
}

// Django: TestConnectionOnCommit.test_robust_if_no_transaction_with_callback_as_partial
async fn robust_named_fn_hook_panic_outside_a_transaction_is_logged_with_its_path<C: Backend>(
    pool: PoolKind,
) {
    quiet_expected_panics("robust callback");
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();

    let errors = robust_hook_then_do_1::<C>(&notified, failing_robust_callback).await;

    assert_done(&db, &notified, &[1]).await;
    assert_eq!(
        errors,
        [format!(
            "Error calling {}::failing_robust_callback in on_commit() (robust callback).",
            module_path!()
        )]
    );
}

// Django: TestConnectionOnCommit.test_robust_transaction
async fn robust_hook_panic_after_commit_is_logged_and_later_hooks_run<C: Backend>(pool: PoolKind) {
    quiet_expected_panics("robust callback");
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    let robust_callback = callback(|| panic!("robust callback"));
    let name = type_name_of(&robust_callback);

    let errors = robust_hook_then_do_1_in_a_transaction::<C>(&notified, robust_callback).await;

    assert_done(&db, &notified, &[1]).await;
    assert_eq!(
        errors,
        [format!(
            "Error calling {name} in on_commit() during transaction (robust callback)."
        )]
    );
}

// Django: TestConnectionOnCommit.test_robust_transaction_with_callback_as_partial
async fn robust_named_fn_hook_panic_after_commit_is_logged_with_its_path<C: Backend>(
    pool: PoolKind,
) {
    quiet_expected_panics("robust callback");
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();

    let errors =
        robust_hook_then_do_1_in_a_transaction::<C>(&notified, failing_robust_callback).await;

    assert_done(&db, &notified, &[1]).await;
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
async fn hook_waits_for_the_commit<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        do_::<C>(&notified, 1).await?;
        assert!(notified.get().is_empty(), "not run inside the transaction");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1]).await;
}

// Django: TestConnectionOnCommit.test_does_not_execute_if_transaction_rolled_back
async fn hook_is_dropped_when_the_transaction_returns_err<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    atomic_then_err(do_::<C>(&notified, 1)).await;
    assert_done(&db, &notified, &[]).await;
}

// Django: TestConnectionOnCommit.test_does_not_execute_if_transaction_rolled_back
async fn hook_is_dropped_when_the_transaction_body_panics<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    atomic_then_panic(do_::<C>(&notified, 1)).await;
    assert_done(&db, &notified, &[]).await;
}

// Django: TestConnectionOnCommit.test_executes_only_after_final_transaction_committed
async fn hook_waits_for_the_outermost_commit_not_the_savepoint_release<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        transaction::atomic(async || {
            do_::<C>(&notified, 1).await?;
            assert!(notified.get().is_empty());
            Ok::<_, TestError>(())
        })
        .await?;
        assert!(
            notified.get().is_empty(),
            "releasing the savepoint runs nothing"
        );
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1]).await;
}

// Django: TestConnectionOnCommit.test_discards_hooks_from_rolled_back_savepoint
async fn hooks_from_a_savepoint_that_returned_err_are_dropped<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        // one successful savepoint
        transaction::atomic(async || do_::<C>(&notified, 1).await).await?;
        // one failed savepoint
        atomic_then_err(do_::<C>(&notified, 2)).await;
        // another successful savepoint
        transaction::atomic(async || do_::<C>(&notified, 3).await).await
    })
    .await
    .unwrap();
    // only hooks registered during successful savepoints execute
    assert_done(&db, &notified, &[1, 3]).await;
}

// Django: TestConnectionOnCommit.test_discards_hooks_from_rolled_back_savepoint
async fn hooks_from_a_savepoint_that_panicked_are_dropped<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        transaction::atomic(async || do_::<C>(&notified, 1).await).await?;
        atomic_then_panic(do_::<C>(&notified, 2)).await;
        transaction::atomic(async || do_::<C>(&notified, 3).await).await
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1, 3]).await;
}

// Django: TestConnectionOnCommit.test_no_hooks_run_from_failed_transaction
async fn hooks_from_a_released_savepoint_are_dropped_when_the_outer_block_returns_err<
    C: Backend,
>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    atomic_then_err(transaction::atomic(async || do_::<C>(&notified, 1).await)).await;
    assert_done(&db, &notified, &[]).await;
}

// Django: TestConnectionOnCommit.test_no_hooks_run_from_failed_transaction
async fn hooks_from_a_released_savepoint_are_dropped_when_the_outer_block_panics<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    atomic_then_panic(transaction::atomic(async || do_::<C>(&notified, 1).await)).await;
    assert_done(&db, &notified, &[]).await;
}

// Django: TestConnectionOnCommit.test_inner_savepoint_rolled_back_with_outer
async fn hooks_of_an_inner_savepoint_are_dropped_with_its_rolled_back_parent_savepoint<
    C: Backend,
>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        atomic_then_err(transaction::atomic(async || do_::<C>(&notified, 1).await)).await;
        do_::<C>(&notified, 2).await
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[2]).await;
}

// Django: TestConnectionOnCommit.test_no_savepoints_atomic_merged_with_outer
async fn failed_block_without_savepoint_drops_the_hooks_of_the_enclosing_savepoint<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        transaction::atomic(async || {
            do_::<C>(&notified, 1).await?;
            let merged = Atomic::new()
                .savepoint(false)
                .run(async || Err::<(), _>(TestError::Oops))
                .await;
            assert_eq!(merged, Err(TestError::Oops));
            // The middle block now exits with Ok but rolls back to its savepoint silently.
            Ok::<_, TestError>(())
        })
        .await
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[]).await;
}

// Django: TestConnectionOnCommit.test_no_savepoints_atomic_merged_with_outer
async fn panicking_block_without_savepoint_drops_the_hooks_of_the_enclosing_savepoint<
    C: Backend,
>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        transaction::atomic(async || {
            do_::<C>(&notified, 1).await?;
            assert_forced_panic(
                Atomic::new()
                    .savepoint(false)
                    .run(async || -> Result<(), TestError> { panic::panic_any(ForcedError) }),
            )
            .await;
            Ok::<_, TestError>(())
        })
        .await
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[]).await;
}

// Django: TestConnectionOnCommit.test_inner_savepoint_does_not_affect_outer
async fn failed_inner_savepoint_keeps_the_hooks_of_its_parent<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        transaction::atomic(async || {
            do_::<C>(&notified, 1).await?;
            let inner = transaction::atomic(async || Err::<(), _>(TestError::Oops)).await;
            assert_eq!(inner, Err(TestError::Oops));
            Ok::<_, TestError>(())
        })
        .await
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1]).await;
}

// Django: TestConnectionOnCommit.test_runs_hooks_in_order_registered
async fn hooks_run_in_registration_order_across_levels<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        do_::<C>(&notified, 1).await?;
        transaction::atomic(async || do_::<C>(&notified, 2).await).await?;
        do_::<C>(&notified, 3).await
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1, 2, 3]).await;
}

// Django: TestConnectionOnCommit.test_hooks_cleared_after_successful_commit
async fn hooks_run_once_and_are_cleared_after_commit<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || do_::<C>(&notified, 1).await)
        .await
        .unwrap();
    transaction::atomic(async || do_::<C>(&notified, 2).await)
        .await
        .unwrap();
    assert_done(&db, &notified, &[1, 2]).await; // not [1, 1, 2]
}

// Django: TestConnectionOnCommit.test_hooks_cleared_after_rollback
async fn hooks_are_cleared_after_an_err_rollback<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    atomic_then_err(do_::<C>(&notified, 1)).await;
    transaction::atomic(async || do_::<C>(&notified, 2).await)
        .await
        .unwrap();
    assert_done(&db, &notified, &[2]).await;
}

// Django: TestConnectionOnCommit.test_hooks_cleared_after_rollback
async fn hooks_are_cleared_after_a_panic_rollback<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    atomic_then_panic(do_::<C>(&notified, 1)).await;
    transaction::atomic(async || do_::<C>(&notified, 2).await)
        .await
        .unwrap();
    assert_done(&db, &notified, &[2]).await;
}

// Django: TestConnectionOnCommit.test_error_in_hook_doesnt_prevent_clearing_hooks
async fn panicking_hook_does_not_leave_hooks_for_the_next_transaction<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    assert_forced_panic(transaction::atomic(async || {
        transaction::on_commit(forced_error_callback)?;
        Ok::<_, TestError>(())
    }))
    .await;
    assert!(!transaction::in_atomic_block());
    transaction::atomic(async || do_::<C>(&notified, 1).await)
        .await
        .unwrap();
    assert_done(&db, &notified, &[1]).await;
}

// Django: TestConnectionOnCommit.test_error_in_hook_doesnt_prevent_clearing_hooks
// (with rule C4 made visible: the data stays committed, the hooks queued after the panicking
// one never run, not even with the next transaction)
async fn panicking_hook_propagates_after_the_commit_and_drops_the_later_hooks<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    assert_forced_panic(transaction::atomic(async || {
        do_::<C>(&notified, 1).await?;
        transaction::on_commit(forced_error_callback)?;
        do_::<C>(&notified, 2).await
    }))
    .await;
    assert_eq!(notified.get(), [1], "hooks before the panicking one ran");
    assert_eq!(db.committed().await, [1, 2], "the data was committed");
    assert!(!transaction::in_atomic_block());

    transaction::atomic(async || do_::<C>(&notified, 3).await)
        .await
        .unwrap();
    assert_eq!(notified.get(), [1, 3], "the dropped hook never runs later");
    assert_eq!(db.committed().await, [1, 2, 3]);
}

// Django: TestConnectionOnCommit.test_db_query_in_hook
//
// A plain callback cannot await: the query runs in an `on_commit_async` callback, which the
// block awaits after its COMMIT in order with the plain ones (A4).
async fn hook_can_query_the_committed_data<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        insert_thing::<C>(1).await?;
        let notified = notified.clone();
        transaction::on_commit_async(async move {
            let nums = visible_ambient::<C>().await.expect("query in the hook");
            for num in nums {
                notified.push(num);
            }
        })?;
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1]).await;
}

// Django: TestConnectionOnCommit.test_transaction_in_hook
async fn hook_can_run_its_own_transaction<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    let hook = {
        let notified = notified.clone();
        async move {
            assert!(
                !transaction::in_atomic_block(),
                "the hook runs after the block"
            );
            transaction::atomic(async || {
                insert_thing::<C>(1).await?;
                notified.push(1);
                Ok::<_, TestError>(())
            })
            .await
            .expect("transaction in the hook");
        }
    };
    transaction::atomic(async || {
        transaction::on_commit_async(hook)?;
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1]).await;
}

/// Django's `on_commit(i, add_hook)` from `test_hook_in_hook`: opens a transaction that
/// (optionally) registers a further hook for `i + 10` and creates Thing `i`.
fn hook_opening_a_transaction<C: Backend>(
    notified: Notified,
    i: i32,
    add_hook: bool,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        transaction::atomic(async || {
            if add_hook {
                let notified = notified.clone();
                transaction::on_commit_async(hook_opening_a_transaction::<C>(
                    notified,
                    i + 10,
                    false,
                ))?;
            }
            insert_thing::<C>(i).await?;
            notified.push(i);
            Ok::<_, TestError>(())
        })
        .await
        .expect("transaction in the hook");
    })
}

// Django: TestConnectionOnCommit.test_hook_in_hook
async fn hook_registered_by_a_hook_runs_at_the_commit_of_the_hooks_own_transaction<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        transaction::on_commit_async(hook_opening_a_transaction::<C>(notified.clone(), 1, true))?;
        transaction::on_commit_async(hook_opening_a_transaction::<C>(notified.clone(), 2, true))?;
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_done(&db, &notified, &[1, 11, 2, 12]).await;
}
