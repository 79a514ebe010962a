//! Regression tests for the holes a review found (callbacks for rolled-back work, lost
//! callbacks, a request that left a transaction open, a connection wedged after a
//! `TestTransaction`), each named after the behaviour that failed before its fix, on every
//! backend.

mod common;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

use common::*;
use diesel::prelude::*;
use diesel_atomic::testing::TestTransaction;
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{Database, Databases, Error, connection, db, get_or_create, request};

const CALLBACK_PANIC: &str = "holes: the welcome mail failed";

fn both_aliases_with_atomic_requests<C: Backend>(
    test_db: &TestDb<C>,
) -> diesel_atomic::DatabasesGuard {
    Databases::new()
        .add(
            "default",
            Database::new(test_db.default.clone()).atomic_requests(true),
        )
        .add(
            "other",
            Database::new(test_db.other.clone()).atomic_requests(true),
        )
        .enter()
}

// --- request() with several aliases ----------------------------------------------------------

/// A plain callback of the first alias panics after its COMMIT: as in Django, where the
/// first-registered alias is the innermost wrapper, its work stands, the panic goes on through
/// the second alias's block, which rolls back, and no alias stays inside a block.
fn request_leaves_every_alias_when_a_callback_of_the_first_panics<C: Backend>() {
    quiet_expected_panics(CALLBACK_PANIC);
    let test_db = setup::<C>();
    let _registry = both_aliases_with_atomic_requests(&test_db);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        request(|| {
            add("Tintin")?;
            transaction::on_commit(|| panic!("{CALLBACK_PANIC}"))?;
            add_to("other", "Haddock")?;
            Ok::<_, TestError>(())
        })
    }));
    let payload = outcome.expect_err("the callback's panic goes on up");
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some(CALLBACK_PANIC)
    );
    assert!(!transaction::in_atomic_block());
    assert!(
        !db("other").in_atomic_block(),
        "the second alias left its block"
    );
    assert_eq!(test_db.reporters("default"), ["Tintin"]);
    assert!(
        test_db.reporters("other").is_empty(),
        "rolled back by the panic"
    );

    // The thread is clean: the next request commits on both aliases, and a durable block
    // runs outside it.
    request(|| {
        add("Milou")?;
        add_to("other", "Nestor")?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    Atomic::new()
        .using("other")
        .durable(true)
        .run(|| add_to("other", "Tournesol"))
        .unwrap();
    assert_eq!(test_db.reporters("default"), names(&["Milou", "Tintin"]));
    assert_eq!(test_db.reporters("other"), names(&["Nestor", "Tournesol"]));
    assert_pool_clean(&test_db.default);
    assert_pool_clean(&test_db.other);
}

// --- callbacks and the caller's own conn.transaction -----------------------------------------

/// An `#[atomic]` block inside the caller's `conn.transaction(..)` inside an outer block: the
/// caller's transaction rolls back, so the welcome mail must never go out. diesel-atomic
/// cannot see that rollback, so it refuses the callback instead of queueing it.
fn callback_inside_the_callers_transaction_never_runs_for_rolled_back_work<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let mut pooled = test_db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let welcome = |conn: &mut C, notified: &Notified| {
        let notify = notified.clone();
        Atomic::new().run_on(conn, |conn| {
            insert_reporter(conn, "Tintin", "")?;
            transaction::on_commit(move || notify.push(1))?;
            Ok::<_, Error>(())
        })
    };
    Atomic::new()
        .run_on(conn, |conn| {
            let users: Result<(), TestError> = conn.transaction(|conn| {
                let refused = welcome(conn, &notified);
                assert!(
                    matches!(refused, Err(Error::OnCommitRefused { .. })),
                    "{refused:?}"
                );
                Err(TestError::Oops)
            });
            assert_eq!(users, Err(TestError::Oops));
            insert_reporter(conn, "Haddock", "")?;
            Ok::<_, Error>(())
        })
        .unwrap();
    drop(pooled);
    assert_eq!(test_db.reporters("default"), ["Haddock"]);
    assert!(
        notified.get().is_empty(),
        "no mail for a user that does not exist"
    );
}

/// Callbacks of blocks directly inside an outer block of ours on the same connection still
/// run after the outer COMMIT: the refusal is only for work inside the caller's transaction.
fn callback_of_a_block_nested_on_the_same_connection_still_runs<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let mut pooled = test_db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let notify = notified.clone();
    Atomic::new()
        .run_on(conn, |conn| {
            let _ = conn.transaction(|conn| {
                insert_reporter(conn, "Rolled", "back")?;
                Err::<(), _>(diesel::result::Error::RollbackTransaction)
            });
            Atomic::new().run_on(conn, |conn| {
                insert_reporter(conn, "Tintin", "")?;
                transaction::on_commit(move || notify.push(1))?;
                Ok::<_, Error>(())
            })
        })
        .unwrap();
    assert_eq!(notified.get(), [1]);
    drop(pooled);
    assert_eq!(test_db.reporters("default"), ["Tintin"]);
}

/// diesel's `conn.transaction` on a connection that `connection()` lent outside any block:
/// diesel-atomic cannot see that transaction, and refuses to run a callback before it commits.
fn on_commit_inside_a_transaction_on_a_lent_connection_is_refused<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let notify = notified.clone();
    let refused: Result<(), Error> = connection(|conn: &mut C| {
        conn.transaction(|conn| {
            insert_reporter(conn, "Tintin", "")?;
            transaction::on_commit(move || notify.push(1))?;
            Ok(())
        })
    });
    assert!(
        matches!(refused, Err(Error::OnCommitRefused { ref alias, .. }) if alias == "default"),
        "{refused:?}"
    );
    assert!(notified.get().is_empty());
    assert!(
        test_db.reporters("default").is_empty(),
        "the caller's transaction rolled back"
    );
}

/// `get_or_create` on a connection of no alias: a callback registered by `create` runs after
/// get_or_create's own COMMIT, not at once (and never when `create` then fails).
fn get_or_create_on_a_connection_of_no_alias_runs_callbacks_after_its_commit<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let mut raw = test_db.raw("default");
    let notify = notified.clone();
    let observed = notified.clone();
    let (name, created) = get_or_create(
        &mut raw,
        |_| Ok::<_, TestError>(None),
        |conn| {
            insert_reporter(conn, "Tintin", "")?;
            transaction::on_commit(move || notify.push(1))?;
            assert!(observed.get().is_empty(), "not before the COMMIT");
            Ok("Tintin")
        },
    )
    .unwrap();
    assert_eq!((name, created), ("Tintin", true));
    assert_eq!(notified.get(), [1]);

    let notify = notified.clone();
    let failed = get_or_create(
        &mut raw,
        |_| Ok::<Option<&str>, TestError>(None),
        |_| {
            transaction::on_commit(move || notify.push(2))?;
            Err(TestError::Oops)
        },
    );
    assert_eq!(failed, Err(TestError::Oops));
    assert_eq!(
        notified.get(),
        [1],
        "create failed: its callback never runs"
    );
}

// --- one connection under two aliases ----------------------------------------------------------

fn audit(conn: &mut impl Backend, notified: &Notified, n: i32) -> Result<(), Error> {
    let notify = notified.clone();
    Atomic::new().using("other").run_on(conn, |conn| {
        insert_reporter(conn, "Audit", "")?;
        db("other").on_commit(move || notify.push(n))?;
        Ok(())
    })
}

/// A block on "other" on the connection of an open block on "default": its work commits with
/// default's transaction, so its callbacks run after that COMMIT (and not before).
fn callbacks_of_a_second_alias_on_the_same_connection_run_after_the_commit<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let mut pooled = test_db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    Atomic::new()
        .run_on(conn, |conn| {
            audit(conn, &notified, 1)?;
            assert!(notified.get().is_empty(), "default has not committed yet");
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(notified.get(), [1]);

    // Through the ambient block's lent connection, the same.
    let notify_outer = notified.clone();
    transaction::atomic(|| {
        connection(|conn: &mut C| audit(conn, &notified, 2))?;
        transaction::on_commit(move || notify_outer.push(3))?;
        assert_eq!(notified.get(), [1]);
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(notified.get(), [1, 2, 3], "in registration order");
    drop(pooled);
    assert_eq!(test_db.reporters("default"), ["Audit", "Audit"]);
}

/// The same, when default's transaction rolls back: the audit row is gone, and so is its
/// callback.
fn callbacks_of_a_second_alias_on_the_same_connection_drop_with_its_rollback<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let mut pooled = test_db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let outcome = Atomic::new().run_on(conn, |conn| {
        audit(conn, &notified, 1)?;
        Err::<(), _>(TestError::Oops)
    });
    assert_eq!(outcome, Err(TestError::Oops));
    drop(pooled);
    assert!(notified.get().is_empty());
    assert!(test_db.reporters("default").is_empty());
}

// --- callbacks on a lent connection ----------------------------------------------------------

/// `connection(|conn| create_user(conn))` where `create_user` is an explicit block whose
/// callback opens a block of its own: the callback runs once the connection is back, in
/// autocommit mode, and may use the alias (C3).
fn callback_of_an_explicit_block_on_a_lent_connection_may_use_the_alias<C: Backend>() {
    let test_db = setup::<C>();
    let welcomed: Rc<RefCell<Option<Result<(), TestError>>>> = Rc::default();
    let result = Rc::clone(&welcomed);
    connection(|conn: &mut C| {
        Atomic::new().run_on(conn, |conn| {
            insert_reporter(conn, "Tintin", "")?;
            transaction::on_commit(move || {
                *result.borrow_mut() = Some(transaction::atomic(|| add("Mail")));
            })?;
            Ok::<_, Error>(())
        })
    })
    .unwrap();
    assert_eq!(*welcomed.borrow(), Some(Ok(())));
    assert_eq!(test_db.reporters("default"), names(&["Mail", "Tintin"]));
    assert_pool_clean(&test_db.default);
}

/// If the `connection()` closure panics after such a block committed, the committed block's
/// callbacks still run (the data is there), while the panic goes on.
fn callback_of_a_committed_block_runs_when_the_lending_closure_panics<C: Backend>() {
    const CLOSURE_PANIC: &str = "holes: the closure failed after the commit";
    quiet_expected_panics(CLOSURE_PANIC);
    let test_db = setup::<C>();
    let notified = Notified::default();
    let notify = notified.clone();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        connection(|conn: &mut C| -> Result<(), Error> {
            Atomic::new().run_on(conn, |conn| {
                insert_reporter(conn, "Tintin", "")?;
                transaction::on_commit(move || notify.push(1))?;
                Ok::<_, Error>(())
            })?;
            panic!("{CLOSURE_PANIC}");
        })
    }));
    assert!(outcome.is_err());
    assert_eq!(notified.get(), [1]);
    assert_eq!(test_db.reporters("default"), ["Tintin"]);
    assert_pool_clean(&test_db.default);
}

// --- user Drop impls that call the runtime ---------------------------------------------------

/// A value captured by a callback that asks the runtime something when it is dropped.
struct AsksTheRuntime(Rc<RefCell<Vec<bool>>>);

impl Drop for AsksTheRuntime {
    fn drop(&mut self) {
        self.0.borrow_mut().push(transaction::in_atomic_block());
    }
}

fn queue_asking(asked: &Rc<RefCell<Vec<bool>>>) -> Result<(), Error> {
    let captured = AsksTheRuntime(Rc::clone(asked));
    transaction::on_commit(move || drop(captured))
}

/// Callbacks of rolled-back work are dropped outside the runtime's borrow, so their captures'
/// `Drop` may call it: a savepoint rolled back, an outermost block rolled back, a
/// TestTransaction dropped. Afterwards blocks still commit (diesel's depth is right).
fn dropping_a_discarded_callback_may_call_the_runtime<C: Backend>() {
    let test_db = setup::<C>();
    let asked: Rc<RefCell<Vec<bool>>> = Rc::default();

    transaction::atomic(|| {
        let inner = transaction::atomic(|| {
            queue_asking(&asked)?;
            Err::<(), _>(TestError::Oops)
        });
        assert_eq!(inner, Err(TestError::Oops));
        assert_eq!(
            *asked.borrow(),
            [true],
            "dropped at the savepoint's rollback"
        );
        add("Tintin")
    })
    .unwrap();

    let outer = transaction::atomic(|| {
        queue_asking(&asked)?;
        Err::<(), _>(TestError::Oops)
    });
    assert_eq!(outer, Err(TestError::Oops));
    assert_eq!(
        *asked.borrow(),
        [true, false],
        "dropped after the rollback, state reset"
    );

    let test = TestTransaction::begin().unwrap();
    queue_asking(&asked).unwrap();
    drop(test);
    assert_eq!(asked.borrow().len(), 3);

    transaction::atomic(|| add("Haddock")).unwrap();
    assert_eq!(test_db.reporters("default"), names(&["Haddock", "Tintin"]));
    assert_pool_clean(&test_db.default);
}

// --- a TestTransaction dropped inside connection() ---------------------------------------------

/// The test transaction's connection is lent when it is dropped: it is rolled back when the
/// closure gives it back, and the alias is free again (before the fix it stayed held, inside
/// the test's transaction, for the rest of the thread).
fn test_transaction_dropped_inside_connection_leaves_the_alias_usable<C: Backend>() {
    let test_db = setup::<C>();
    let mut test = Some(TestTransaction::begin_using(&["default"]).unwrap());
    connection(|conn: &mut C| {
        insert_reporter(conn, "Rolled", "back")?;
        drop(test.take());
        Ok::<_, Error>(())
    })
    .unwrap();
    assert!(!transaction::in_atomic_block());
    add("Tintin").unwrap();
    assert_eq!(test_db.reporters("default"), ["Tintin"]);
    assert_pool_clean(&test_db.default);
}

// --- found by the model test -------------------------------------------------------------------

/// A block of "other" on the connection of a "default" block that itself runs inside the
/// caller's own `conn.transaction(..)`: "default" cannot carry "other"'s callbacks (its own
/// commit is out of sight), so `on_commit` is refused there too, and no callback runs after the
/// caller's transaction rolled back.
fn callbacks_beside_a_block_inside_the_callers_transaction_are_refused<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let notify = notified.clone();
    connection(|conn: &mut C| {
        let caller: Result<(), TestError> = conn.transaction(|conn| {
            Atomic::new().savepoint(false).run_on(conn, |conn| {
                Atomic::new()
                    .using("other")
                    .savepoint(false)
                    .run_on(conn, |conn| {
                        insert_reporter(conn, "Tintin", "")?;
                        let refused = db("other").on_commit(move || notify.push(1));
                        assert!(
                            matches!(refused, Err(Error::OnCommitRefused { .. })),
                            "{refused:?}"
                        );
                        Ok::<_, Error>(())
                    })
            })?;
            Err(TestError::Oops)
        });
        assert_eq!(caller, Err(TestError::Oops));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert!(notified.get().is_empty());
    assert!(test_db.reporters("default").is_empty());
}

/// Django nests the request's wrappers, "default" innermost: its callbacks run inside
/// "other"'s request transaction, even when the view never used "other" — so what they write
/// there rolls back when a later callback panics.
fn request_callbacks_of_the_first_alias_run_in_the_second_aliass_transaction<C: Backend>() {
    quiet_expected_panics(CALLBACK_PANIC);
    let test_db = setup::<C>();
    let _registry = both_aliases_with_atomic_requests(&test_db);
    let seen = Rc::new(RefCell::new(None));
    let saw = Rc::clone(&seen);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        request(|| {
            add("Tintin")?;
            transaction::on_commit(move || {
                *saw.borrow_mut() = Some(db("other").in_atomic_block());
                add_to("other", "Haddock").unwrap();
            })?;
            transaction::on_commit(|| panic!("{CALLBACK_PANIC}"))?;
            Ok::<_, TestError>(())
        })
    }));
    assert!(outcome.is_err());
    assert_eq!(
        *seen.borrow(),
        Some(true),
        "inside other's request transaction"
    );
    assert_eq!(test_db.reporters("default"), ["Tintin"]);
    assert!(
        test_db.reporters("other").is_empty(),
        "rolled back with other's request transaction"
    );
    assert!(!db("other").in_atomic_block());
    assert_pool_clean(&test_db.other);
}

const DIESEL_PANIC: &str = "holes: panic inside diesel's transaction";

/// diesel's `conn.transaction` does not roll back when its closure panics: a block around it
/// rolls that level back with its own, so the block's COMMIT or ROLLBACK applies to the
/// block's level and the connection never stays inside a transaction.
fn a_panic_out_of_diesels_transaction_is_rolled_back_by_the_block_around_it<C: Backend>() {
    quiet_expected_panics(DIESEL_PANIC);
    let test_db = setup::<C>();
    let mut pooled = test_db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let panic_in_diesels_transaction = |conn: &mut C| {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            let _: QueryResult<()> = conn.transaction(|conn| {
                insert_reporter(conn, "Lost", "")?;
                panic!("{DIESEL_PANIC}");
            });
        }));
        assert!(caught.is_err());
    };
    // Caught inside the block, which goes on and commits its own work only.
    Atomic::new()
        .run_on(conn, |conn| {
            insert_reporter(conn, "Tintin", "")?;
            panic_in_diesels_transaction(conn);
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_not_in_transaction(conn);
    // In a nested block that fails: it rolls back to its savepoint, the outer block commits.
    Atomic::new()
        .run_on(conn, |conn| {
            insert_reporter(conn, "Haddock", "")?;
            let inner = Atomic::new().run_on(conn, |conn| {
                insert_reporter(conn, "Rolled", "back")?;
                panic_in_diesels_transaction(conn);
                Err::<(), _>(TestError::Oops)
            });
            assert_eq!(inner, Err(TestError::Oops));
            Ok::<_, TestError>(())
        })
        .unwrap();
    assert_not_in_transaction(conn);
    insert_reporter(conn, "Autocommit", "").unwrap();
    drop(pooled);
    assert_eq!(
        test_db.reporters("default"),
        names(&["Autocommit", "Haddock", "Tintin"])
    );
}

/// A callback of "default" registered while a block of "other" runs on default's connection
/// follows the work done there: when that block rolls back, the callback goes with it.
fn callback_registered_inside_another_aliass_block_goes_with_its_rollback<C: Backend>() {
    let test_db = setup::<C>();
    let notified = Notified::default();
    let mut pooled = test_db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let (kept, dropped) = (notified.clone(), notified.clone());
    Atomic::new()
        .run_on(conn, |conn| {
            let audit = Atomic::new().using("other").run_on(conn, |conn| {
                insert_reporter(conn, "Rolled", "back")?;
                transaction::on_commit(move || dropped.push(1))?;
                Err::<(), _>(TestError::Oops)
            });
            assert_eq!(audit, Err(TestError::Oops));
            Atomic::new().using("other").run_on(conn, |conn| {
                insert_reporter(conn, "Tintin", "")?;
                transaction::on_commit(move || kept.push(2))?;
                Ok::<_, TestError>(())
            })?;
            assert!(notified.get().is_empty(), "not before default's COMMIT");
            Ok::<_, TestError>(())
        })
        .unwrap();
    assert_eq!(notified.get(), [2]);
    drop(pooled);
    assert_eq!(test_db.reporters("default"), ["Tintin"]);
}

backend_tests!(
    callback_registered_inside_another_aliass_block_goes_with_its_rollback,
    callbacks_beside_a_block_inside_the_callers_transaction_are_refused,
    request_callbacks_of_the_first_alias_run_in_the_second_aliass_transaction,
    a_panic_out_of_diesels_transaction_is_rolled_back_by_the_block_around_it,
    request_leaves_every_alias_when_a_callback_of_the_first_panics,
    callback_inside_the_callers_transaction_never_runs_for_rolled_back_work,
    callback_of_a_block_nested_on_the_same_connection_still_runs,
    on_commit_inside_a_transaction_on_a_lent_connection_is_refused,
    get_or_create_on_a_connection_of_no_alias_runs_callbacks_after_its_commit,
    callbacks_of_a_second_alias_on_the_same_connection_run_after_the_commit,
    callbacks_of_a_second_alias_on_the_same_connection_drop_with_its_rollback,
    callback_of_an_explicit_block_on_a_lent_connection_may_use_the_alias,
    callback_of_a_committed_block_runs_when_the_lending_closure_panics,
    dropping_a_discarded_callback_may_call_the_runtime,
    test_transaction_dropped_inside_connection_leaves_the_alias_usable,
);
