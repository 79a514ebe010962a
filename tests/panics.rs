//! Panics inside atomic blocks, in ambient and explicit mode (SEMANTICS: "A panic always rolls
//! back and then resumes unwinding unchanged", rules X2, X3, C2, C4), on every backend (each
//! test runs as `sqlite::`, `postgres::` and `mysql::`, see tests/common/mod.rs).
//!
//! Depth 1 is the outermost block. Every test checks, besides its own outcome, that the thread
//! is out of every block afterwards, that the next block on the thread commits, and that no
//! connection of the pool was left inside a transaction.

mod common;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use common::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{atomic, connection};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs `f`, catching a panic.
fn catch<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    panic::catch_unwind(AssertUnwindSafe(f))
}

/// The message of a `panic!` payload (`&'static str` or `String`).
fn payload_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&'static str>().copied())
}

/// Asserts that `outcome` is a panic whose payload is the message `expected`.
#[track_caller]
fn assert_panicked_with<R: std::fmt::Debug>(outcome: std::thread::Result<R>, expected: &str) {
    match outcome {
        Ok(value) => panic!("expected a panic with {expected:?}, the call returned {value:?}"),
        Err(payload) => assert_eq!(
            payload_text(payload.as_ref()),
            Some(expected),
            "the panic payload changed on its way out"
        ),
    }
}

/// Panics with a `String` payload (a message built at run time).
fn boom(message: &str) -> ! {
    panic!("{message}")
}

/// Queues an on_commit callback on "default" that records `n`.
fn queue(notified: &Notified, n: i32) -> Result<(), TestError> {
    let notified = notified.clone();
    transaction::on_commit(move || notified.push(n))?;
    Ok(())
}

/// The thread is out of every block, and the block that `next_block` opens commits its row
/// "Next" and runs its callback 100.
#[track_caller]
fn assert_next_block_commits<C: Backend>(
    db: &TestDb<C>,
    notified: &Notified,
    next_block: impl FnOnce() -> Result<(), TestError>,
) {
    assert!(!transaction::in_atomic_block(), "still inside a block");
    let before = notified.get();
    next_block().expect("the next block commits");
    assert!(
        db.reporters("default").contains(&"Next".to_owned()),
        "the next block's row is committed"
    );
    let mut expected = before;
    expected.push(100);
    assert_eq!(notified.get(), expected, "the next block's callback ran");
    assert!(!transaction::in_atomic_block());
}

/// The thread is out of every block, and the next ambient block commits and runs its callback.
#[track_caller]
fn assert_next_ambient_block_commits<C: Backend>(db: &TestDb<C>, notified: &Notified) {
    assert_next_block_commits(db, notified, || {
        transaction::atomic(|| {
            add("Next")?;
            queue(notified, 100)
        })
    });
}

/// The thread is out of every block, and the next explicit block on `conn` commits and runs its
/// callback.
#[track_caller]
fn assert_next_explicit_block_commits<C: Backend>(
    db: &TestDb<C>,
    conn: &mut C,
    notified: &Notified,
) {
    assert_next_block_commits(db, notified, || {
        Atomic::new().run_on(conn, |conn| {
            add_on(conn, "Next")?;
            queue(notified, 100)
        })
    });
}

/// The closing check of every ambient-mode test (see the module docs): the thread is out of
/// every block, the next ambient block commits, and no pooled connection is inside a transaction.
#[track_caller]
fn assert_recovered_ambient<C: Backend>(db: &TestDb<C>, notified: &Notified) {
    assert_next_ambient_block_commits(db, notified);
    assert_pool_clean(&db.default);
}

/// The closing check of every explicit-mode test on a pooled connection: `conn` is out of its
/// transaction, the next explicit block on it commits, and once `conn` is back in the pool no
/// pooled connection is inside a transaction.
#[track_caller]
fn assert_recovered_explicit<C: Backend>(
    db: &TestDb<C>,
    mut conn: PooledConnection<ConnectionManager<C>>,
    notified: &Notified,
) {
    assert_not_in_transaction(&mut *conn);
    assert_next_explicit_block_commits(db, &mut *conn, notified);
    drop(conn);
    assert_pool_clean(&db.default);
}

/// Everything rolled back: no row was committed on "default" and no callback ran.
#[track_caller]
fn assert_nothing_committed<C: Backend>(db: &TestDb<C>, notified: &Notified) {
    assert!(db.reporters("default").is_empty(), "nothing was committed");
    assert!(
        notified.get().is_empty(),
        "no callback of a rolled-back block runs"
    );
}

/// Which block panics and which block catches the panic (depth 1 is the outermost block).
struct Plan<'a> {
    panic_at: u32,
    /// The block whose body calls its child under `catch_unwind`; `None`: nobody catches.
    catch_in: Option<u32>,
    notified: &'a Notified,
}

impl<'a> Plan<'a> {
    fn new(panic_at: u32, catch_in: Option<u32>, notified: &'a Notified) -> Self {
        Plan {
            panic_at,
            catch_in,
            notified,
        }
    }

    fn message(&self) -> String {
        format!("boom at depth {}", self.panic_at)
    }
}

/// Ambient `#[atomic]` block at `depth`: adds reporter `d<depth>`, queues callback `depth`, then
/// panics (at `panic_at`) or opens the next block. The catching block checks the payload, then
/// adds `d<depth>-after` and queues `depth * 10`.
#[atomic]
fn ambient_level(depth: u32, plan: &Plan<'_>) -> Result<(), TestError> {
    add(&format!("d{depth}"))?;
    queue(plan.notified, depth as i32)?;
    if depth == plan.panic_at {
        boom(&plan.message());
    }
    if plan.catch_in == Some(depth) {
        assert_panicked_with(catch(|| ambient_level(depth + 1, plan)), &plan.message());
        assert!(
            transaction::in_atomic_block(),
            "the catching block is still open"
        );
        assert!(!transaction::get_rollback().expect("inside a block"));
        add(&format!("d{depth}-after"))?;
        queue(plan.notified, depth as i32 * 10)?;
    } else {
        ambient_level(depth + 1, plan)?;
    }
    Ok(())
}

/// Explicit-mode twin of [`ambient_level`], on the connection passed in.
#[atomic]
fn explicit_level<C: Backend>(conn: &mut C, depth: u32, plan: &Plan<'_>) -> Result<(), TestError> {
    add_on(conn, &format!("d{depth}"))?;
    queue(plan.notified, depth as i32)?;
    if depth == plan.panic_at {
        boom(&plan.message());
    }
    if plan.catch_in == Some(depth) {
        assert_panicked_with(
            catch(|| explicit_level(conn, depth + 1, plan)),
            &plan.message(),
        );
        assert!(
            transaction::in_atomic_block(),
            "the catching block is still open"
        );
        add_on(conn, &format!("d{depth}-after"))?;
        queue(plan.notified, depth as i32 * 10)?;
    } else {
        explicit_level(conn, depth + 1, plan)?;
    }
    Ok(())
}

/// Runs an ambient plan from outside every block; returns what escaped the outermost block.
fn run_ambient_plan(
    panic_at: u32,
    catch_in: Option<u32>,
    notified: &Notified,
) -> std::thread::Result<Result<(), TestError>> {
    let plan = Plan::new(panic_at, catch_in, notified);
    catch(|| ambient_level(1, &plan))
}

/// Runs an explicit plan on `conn` from outside every block.
fn run_explicit_plan<C: Backend>(
    conn: &mut C,
    panic_at: u32,
    catch_in: Option<u32>,
    notified: &Notified,
) -> std::thread::Result<Result<(), TestError>> {
    let plan = Plan::new(panic_at, catch_in, notified);
    catch(|| explicit_level(conn, 1, &plan))
}

// ---------------------------------------------------------------------------------------------
// Ambient mode
// ---------------------------------------------------------------------------------------------

// Follows Django's AtomicTests.test_rollback (an exception in the outermost block).
fn ambient_panic_at_depth_1_rolls_back_and_resumes_the_payload<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            add("Tintin")?;
            queue(&notified, 1)?;
            boom("boom at depth 1")
        })
    });
    assert_panicked_with(outcome, "boom at depth 1");
    assert_nothing_committed(&db, &notified);
    assert_recovered_ambient(&db, &notified);
}

// Follows Django's AtomicTests.test_nested_rollback_rollback, with a panic caught outside.
fn ambient_panic_at_depth_2_caught_outside_rolls_back_inner_and_outer<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            add("Outer")?;
            queue(&notified, 1)?;
            transaction::atomic(|| -> Result<(), TestError> {
                add("Inner")?;
                queue(&notified, 2)?;
                boom("boom at depth 2")
            })
        })
    });
    assert_panicked_with(outcome, "boom at depth 2");
    assert_nothing_committed(&db, &notified);
    assert_recovered_ambient(&db, &notified);
}

// Follows Django's AtomicTests.test_nested_commit_rollback: the outer block goes on and commits.
fn ambient_panic_at_depth_2_caught_inside_outer_rolls_back_only_inner<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = run_ambient_plan(2, Some(1), &notified);
    assert!(matches!(outcome, Ok(Ok(()))), "the outer block commits");
    assert_eq!(db.reporters("default"), names(&["d1", "d1-after"]));
    assert_eq!(
        notified.get(),
        [1, 10],
        "the inner block's callback was dropped"
    );
    assert_recovered_ambient(&db, &notified);
}

// No Django counterpart (three levels): rules X2, X3, C2.
fn ambient_panic_at_depth_3_caught_outside_rolls_back_every_level<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    assert_panicked_with(run_ambient_plan(3, None, &notified), "boom at depth 3");
    assert_nothing_committed(&db, &notified);
    assert_recovered_ambient(&db, &notified);
}

// No Django counterpart (three levels): X2 at depth 2 drops depth 3's work with it (C2).
fn ambient_panic_at_depth_3_caught_at_depth_1_rolls_back_depths_2_and_3<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    assert!(matches!(
        run_ambient_plan(3, Some(1), &notified),
        Ok(Ok(()))
    ));
    assert_eq!(db.reporters("default"), names(&["d1", "d1-after"]));
    assert_eq!(notified.get(), [1, 10]);
    assert_recovered_ambient(&db, &notified);
}

// No Django counterpart (three levels): only the panicking savepoint rolls back.
fn ambient_panic_at_depth_3_caught_at_depth_2_rolls_back_only_depth_3<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    assert!(matches!(
        run_ambient_plan(3, Some(2), &notified),
        Ok(Ok(()))
    ));
    assert_eq!(db.reporters("default"), names(&["d1", "d2", "d2-after"]));
    assert_eq!(notified.get(), [1, 2, 20]);
    assert_recovered_ambient(&db, &notified);
}

// SEMANTICS: "A panic always rolls back and then resumes unwinding unchanged" (rule X3).
fn ambient_panic_with_a_custom_payload_resumes_that_very_payload<C: Backend>() {
    #[derive(Debug, PartialEq)]
    struct Payload {
        code: u32,
    }
    let db = setup::<C>();
    let outcome = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            add("Outer")?;
            transaction::atomic(|| -> Result<(), TestError> {
                add("Inner")?;
                panic::panic_any(Payload { code: 42 })
            })
        })
    });
    let payload = outcome.expect_err("the panic propagates");
    assert_eq!(
        payload.downcast_ref::<Payload>(),
        Some(&Payload { code: 42 })
    );
    assert!(db.reporters("default").is_empty());
    assert_recovered_ambient(&db, &Notified::default());
}

// API.md §3: a panic while the block's connection is lent still rolls the block back.
fn panic_inside_connection_closure_in_a_block_rolls_back_the_block<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            add("Outer")?;
            queue(&notified, 1)?;
            connection(|conn: &mut C| -> Result<(), TestError> {
                add_on(conn, "Lent")?;
                boom("boom in connection()")
            })
        })
    });
    assert_panicked_with(outcome, "boom in connection()");
    assert_nothing_committed(&db, &notified);
    assert_recovered_ambient(&db, &notified);
}

// API.md §3: outside a block `connection()` is autocommit; a panic gives the connection back.
fn panic_inside_connection_closure_outside_a_block_keeps_autocommitted_work<C: Backend>() {
    let db = setup::<C>();
    let outcome = catch(|| {
        connection(|conn: &mut C| -> Result<(), TestError> {
            add_on(conn, "Autocommitted")?;
            boom("boom in connection()")
        })
    });
    assert_panicked_with(outcome, "boom in connection()");
    assert_eq!(db.reporters("default"), ["Autocommitted"]);
    // The connection went back: a new `connection()` call is not ConnectionInUse.
    add("Again").expect("the connection was given back after the panic");
    assert_recovered_ambient(&db, &Notified::default());
}

// Follows Django's AtomicMergeTests.test_merged_outer_rollback, with a panic: the merged block
// cannot roll back alone, so the outer block is marked and rolls back silently.
fn ambient_panic_in_savepoint_false_block_caught_inside_outer_marks_outer_for_rollback<
    C: Backend,
>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = transaction::atomic(|| -> Result<&'static str, TestError> {
        add("Outer")?;
        queue(&notified, 1)?;
        let inner = catch(|| {
            Atomic::new()
                .savepoint(false)
                .run(|| -> Result<(), TestError> {
                    add("Merged")?;
                    queue(&notified, 2)?;
                    boom("boom in a merged block")
                })
        });
        assert_panicked_with(inner, "boom in a merged block");
        assert!(
            transaction::get_rollback().expect("inside a block"),
            "the outer block is marked for rollback"
        );
        Ok("outer value")
    });
    assert_eq!(
        outcome,
        Ok("outer value"),
        "the silent rollback returns the Ok value"
    );
    assert_nothing_committed(&db, &notified);
    assert_recovered_ambient(&db, &notified);
}

// Follows Django's transaction_hooks TestConnectionOnCommit.
// test_error_in_hook_doesnt_prevent_clearing_hooks (rule C4).
fn ambient_panicking_on_commit_callback_propagates_after_the_commit<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            add("Committed")?;
            queue(&notified, 1)?;
            transaction::on_commit(|| boom("callback boom"))?;
            queue(&notified, 3)
        })
    });
    assert_panicked_with(outcome, "callback boom");
    assert_eq!(
        db.reporters("default"),
        ["Committed"],
        "the data stays committed"
    );
    assert_eq!(
        notified.get(),
        [1],
        "the callbacks after the panicking one did not run"
    );
    assert!(!transaction::in_atomic_block());
    // The next transaction starts with an empty queue: callback 3 never runs.
    assert_recovered_ambient(&db, &notified);
    assert_eq!(notified.get(), [1, 100]);
}

// Rule C4: the panic comes out of the outermost block's exit, not the inner one's.
fn panicking_on_commit_callback_from_an_inner_block_propagates_from_the_outermost_exit<
    C: Backend,
>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            add("Outer")?;
            transaction::atomic(|| -> Result<(), TestError> {
                add("Inner")?;
                transaction::on_commit(|| boom("callback boom"))?;
                Ok(())
            })?;
            // The inner block's exit does not run the callback.
            add("AfterInner")?;
            queue(&notified, 2)
        })
    });
    assert_panicked_with(outcome, "callback boom");
    assert_eq!(
        db.reporters("default"),
        names(&["Outer", "Inner", "AfterInner"])
    );
    assert!(notified.get().is_empty(), "the later callback was dropped");
    assert_recovered_ambient(&db, &notified);
    assert_eq!(notified.get(), [100]);
}

// ---------------------------------------------------------------------------------------------
// Explicit mode (`conn: &mut C` / `Atomic::run_on`)
// ---------------------------------------------------------------------------------------------

// Follows Django's AtomicTests.test_rollback, in explicit mode.
fn explicit_panic_at_depth_1_rolls_back_and_resumes_the_payload<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    let outcome = catch(|| {
        Atomic::new().run_on(&mut *conn, |conn| -> Result<(), TestError> {
            add_on(conn, "Tintin")?;
            queue(&notified, 1)?;
            boom("boom at depth 1")
        })
    });
    assert_panicked_with(outcome, "boom at depth 1");
    assert_nothing_committed(&db, &notified);
    assert_recovered_explicit(&db, conn, &notified);
}

// Follows Django's AtomicTests.test_nested_rollback_rollback, in explicit mode.
fn explicit_panic_at_depth_2_caught_outside_rolls_back_inner_and_outer<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    let outcome = catch(|| {
        Atomic::new().run_on(&mut *conn, |conn| -> Result<(), TestError> {
            add_on(conn, "Outer")?;
            queue(&notified, 1)?;
            Atomic::new().run_on(conn, |conn| -> Result<(), TestError> {
                add_on(conn, "Inner")?;
                queue(&notified, 2)?;
                boom("boom at depth 2")
            })
        })
    });
    assert_panicked_with(outcome, "boom at depth 2");
    assert_nothing_committed(&db, &notified);
    assert_recovered_explicit(&db, conn, &notified);
}

// Follows Django's AtomicTests.test_nested_commit_rollback, in explicit mode.
fn explicit_panic_at_depth_2_caught_inside_outer_rolls_back_only_inner<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    let outcome = run_explicit_plan(&mut *conn, 2, Some(1), &notified);
    assert!(matches!(outcome, Ok(Ok(()))), "the outer block commits");
    assert_eq!(db.reporters("default"), names(&["d1", "d1-after"]));
    assert_eq!(notified.get(), [1, 10]);
    assert_recovered_explicit(&db, conn, &notified);
}

// No Django counterpart (three levels), explicit mode: rules X2, X3, C2.
fn explicit_panic_at_depth_3_caught_outside_rolls_back_every_level<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    assert_panicked_with(
        run_explicit_plan(&mut *conn, 3, None, &notified),
        "boom at depth 3",
    );
    assert_nothing_committed(&db, &notified);
    assert_recovered_explicit(&db, conn, &notified);
}

// No Django counterpart (three levels), explicit mode.
fn explicit_panic_at_depth_3_caught_at_depth_1_rolls_back_depths_2_and_3<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    assert!(matches!(
        run_explicit_plan(&mut *conn, 3, Some(1), &notified),
        Ok(Ok(()))
    ));
    assert_eq!(db.reporters("default"), names(&["d1", "d1-after"]));
    assert_eq!(notified.get(), [1, 10]);
    assert_recovered_explicit(&db, conn, &notified);
}

// No Django counterpart (three levels), explicit mode.
fn explicit_panic_at_depth_3_caught_at_depth_2_rolls_back_only_depth_3<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    assert!(matches!(
        run_explicit_plan(&mut *conn, 3, Some(2), &notified),
        Ok(Ok(()))
    ));
    assert_eq!(db.reporters("default"), names(&["d1", "d2", "d2-after"]));
    assert_eq!(notified.get(), [1, 2, 20]);
    assert_recovered_explicit(&db, conn, &notified);
}

// API.md §1: explicit mode on a connection that never was in a pool.
fn explicit_panic_on_a_private_connection_needs_no_pool<C: Backend>() {
    // Explicit mode on a connection that never was in any pool.
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.raw("default");
    assert_panicked_with(
        run_explicit_plan(&mut conn, 2, None, &notified),
        "boom at depth 2",
    );
    assert_nothing_committed(&db, &notified);
    assert_not_in_transaction(&mut conn);
    assert_next_explicit_block_commits(&db, &mut conn, &notified);
}

#[atomic(savepoint = false)]
fn merged_block_that_panics<C: Backend>(
    conn: &mut C,
    notified: &Notified,
) -> Result<(), TestError> {
    add_on(conn, "Merged")?;
    queue(notified, 2)?;
    boom("boom in a merged block")
}

// Follows Django's AtomicMergeTests.test_merged_outer_rollback, in explicit mode (rule X2).
fn explicit_panic_in_savepoint_false_block_caught_inside_outer_marks_outer_for_rollback<
    C: Backend,
>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    let outcome = Atomic::new().run_on(&mut *conn, |conn| -> Result<&'static str, TestError> {
        add_on(conn, "Outer")?;
        queue(&notified, 1)?;
        assert_panicked_with(
            catch(|| merged_block_that_panics(conn, &notified)),
            "boom in a merged block",
        );
        assert!(transaction::get_rollback().expect("inside a block"));
        Ok("outer value")
    });
    assert_eq!(outcome, Ok("outer value"));
    assert_nothing_committed(&db, &notified);
    assert_recovered_explicit(&db, conn, &notified);
}

// Follows Django's TestConnectionOnCommit.test_error_in_hook_doesnt_prevent_clearing_hooks,
// in explicit mode (rule C4).
fn explicit_panicking_on_commit_callback_propagates_after_the_commit<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    let outcome = catch(|| {
        Atomic::new().run_on(&mut *conn, |conn| -> Result<(), TestError> {
            add_on(conn, "Committed")?;
            queue(&notified, 1)?;
            transaction::on_commit(|| boom("callback boom"))?;
            queue(&notified, 3)
        })
    });
    assert_panicked_with(outcome, "callback boom");
    assert_eq!(db.reporters("default"), ["Committed"]);
    assert_eq!(notified.get(), [1]);
    assert_recovered_explicit(&db, conn, &notified);
    assert_eq!(notified.get(), [1, 100], "callback 3 never runs");
}

// ---------------------------------------------------------------------------------------------
// The pool after all of the above
// ---------------------------------------------------------------------------------------------

// Rules X2, X5: after every kind of panic the pool holds only clean connections.
fn panics_leave_no_pooled_connection_inside_a_transaction<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();

    assert!(run_ambient_plan(3, None, &notified).is_err());
    assert!(matches!(
        run_ambient_plan(3, Some(2), &notified),
        Ok(Ok(()))
    ));
    {
        let mut conn = db.default.get().unwrap();
        assert!(run_explicit_plan(&mut *conn, 2, None, &notified).is_err());
        assert!(matches!(
            run_explicit_plan(&mut *conn, 3, Some(1), &notified),
            Ok(Ok(()))
        ));
    }
    let merged = transaction::atomic(|| -> Result<(), TestError> {
        add("Doomed")?;
        let _ = catch(|| {
            Atomic::new()
                .savepoint(false)
                .run(|| -> Result<(), TestError> { boom("merged") })
        });
        Ok(())
    });
    assert_eq!(merged, Ok(()));
    let callback = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            add("Kept")?;
            transaction::on_commit(|| boom("callback boom"))?;
            Ok(())
        })
    });
    assert!(callback.is_err());
    let lent = catch(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            connection(|_: &mut C| -> Result<(), TestError> { boom("lent") })
        })
    });
    assert!(lent.is_err());

    assert!(!transaction::in_atomic_block());
    assert_eq!(
        db.reporters("default"),
        names(&["d1", "d2", "d2-after", "d1", "d1-after", "Kept"])
    );
    assert_pool_clean(&db.default);
}

backend_tests!(
    ambient_panic_at_depth_1_rolls_back_and_resumes_the_payload,
    ambient_panic_at_depth_2_caught_outside_rolls_back_inner_and_outer,
    ambient_panic_at_depth_2_caught_inside_outer_rolls_back_only_inner,
    ambient_panic_at_depth_3_caught_outside_rolls_back_every_level,
    ambient_panic_at_depth_3_caught_at_depth_1_rolls_back_depths_2_and_3,
    ambient_panic_at_depth_3_caught_at_depth_2_rolls_back_only_depth_3,
    ambient_panic_with_a_custom_payload_resumes_that_very_payload,
    panic_inside_connection_closure_in_a_block_rolls_back_the_block,
    panic_inside_connection_closure_outside_a_block_keeps_autocommitted_work,
    ambient_panic_in_savepoint_false_block_caught_inside_outer_marks_outer_for_rollback,
    ambient_panicking_on_commit_callback_propagates_after_the_commit,
    panicking_on_commit_callback_from_an_inner_block_propagates_from_the_outermost_exit,
    explicit_panic_at_depth_1_rolls_back_and_resumes_the_payload,
    explicit_panic_at_depth_2_caught_outside_rolls_back_inner_and_outer,
    explicit_panic_at_depth_2_caught_inside_outer_rolls_back_only_inner,
    explicit_panic_at_depth_3_caught_outside_rolls_back_every_level,
    explicit_panic_at_depth_3_caught_at_depth_1_rolls_back_depths_2_and_3,
    explicit_panic_at_depth_3_caught_at_depth_2_rolls_back_only_depth_3,
    explicit_panic_on_a_private_connection_needs_no_pool,
    explicit_panic_in_savepoint_false_block_caught_inside_outer_marks_outer_for_rollback,
    explicit_panicking_on_commit_callback_propagates_after_the_commit,
    panics_leave_no_pooled_connection_inside_a_transaction,
);
