//! `#[diesel_atomic::test]` on sync tests: Django's `TestCase` (rule T1), and with
//! `transaction = false` its `TransactionTestCase`.
//!
//! The attributed functions below are tests of their own (on a SQLite database each, when run
//! alone) and are also called by the backend tests at the bottom, which give them a registry
//! on SQLite, PostgreSQL or MariaDB and then look, from a connection of their own, at what the
//! test left committed.

mod common;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};

use common::{Backend, TestDb, TestError};
use diesel::SqliteConnection;
use diesel_atomic::testing::capture_on_commit_callbacks;
use diesel_atomic::{Databases, Error, atomic, db, request, transaction};

thread_local! {
    /// The registry the attributed tests run with, set by the backend test calling them.
    static UNDER_TEST: RefCell<Option<Databases>> = const { RefCell::new(None) };
    /// Run on their own, a SQLite database of the thread's.
    static ALONE: RefCell<Option<TestDb<SqliteConnection>>> = const { RefCell::new(None) };
    /// How many on_commit callbacks ran on this thread.
    static CALLBACKS_RUN: Cell<usize> = const { Cell::new(0) };
}

/// `setup` of the tests below: the caller's registry, else a SQLite one of the thread's.
fn under_test() -> Databases {
    if let Some(databases) = UNDER_TEST.with_borrow(Clone::clone) {
        return databases;
    }
    ALONE.with_borrow_mut(|alone| {
        alone
            .get_or_insert_with(common::setup::<SqliteConnection>)
            .databases
            .clone()
    })
}

/// `under_test()` with per-request transactions on "default" (Django's `ATOMIC_REQUESTS`).
fn under_test_with_requests() -> Databases {
    let databases = under_test();
    let default = databases.get("default").unwrap().clone();
    databases.add("default", default.atomic_requests(true))
}

/// Runs an attributed test with `db`'s registry as its `setup`.
fn with_registry<C: Backend, T>(db: &TestDb<C>, test: impl FnOnce() -> T) -> T {
    UNDER_TEST.with_borrow_mut(|slot| *slot = Some(db.databases.clone()));
    let result = panic::catch_unwind(AssertUnwindSafe(test));
    UNDER_TEST.with_borrow_mut(|slot| *slot = None);
    result.unwrap_or_else(|payload| panic::resume_unwind(payload))
}

#[atomic(durable = true)]
fn durable_signup(name: &str) -> Result<(), Error> {
    common::create_reporter(name, "")?;
    transaction::on_commit(|| CALLBACKS_RUN.set(CALLBACKS_RUN.get() + 1))
}

// --- The attributed tests ---------------------------------------------------------------------

#[diesel_atomic::test(setup = under_test)]
fn writes_on_every_alias() {
    assert!(transaction::in_atomic_block());
    assert!(db("other").in_atomic_block());
    common::create_reporter("ada", "").unwrap();
    common::add_to("other", "grace").unwrap();
    assert_eq!(common::visible_reporters(), ["ada"]);
}

const PANIC: &str = "the test failed after its insert";

#[diesel_atomic::test(setup = under_test)]
#[should_panic(expected = "the test failed after its insert")]
fn panics_after_writing() {
    common::create_reporter("ada", "").unwrap();
    panic!("{PANIC}");
}

#[diesel_atomic::test(setup = under_test)]
fn returns_a_result() -> Result<(), TestError> {
    common::add("ada")?;
    if common::visible_reporters() == ["ada"] {
        return Ok(());
    }
    Err(TestError::Oops)
}

#[diesel_atomic::test(setup = under_test)]
fn runs_durable_blocks_inside() -> Result<(), Error> {
    durable_signup("ada")?;
    assert!(transaction::in_atomic_block(), "still in the test's");
    assert_eq!(CALLBACKS_RUN.get(), 0, "nothing commits inside a test");
    Ok(())
}

#[diesel_atomic::test(setup = under_test)]
fn captures_callbacks() {
    let (signed_up, callbacks) = capture_on_commit_callbacks(false, || durable_signup("ada"));
    signed_up.unwrap();
    assert_eq!(callbacks.len(), 1);
    assert_eq!(CALLBACKS_RUN.get(), 0);
    let ((), executed) = capture_on_commit_callbacks(true, || durable_signup("grace").unwrap());
    assert_eq!(executed.len(), 1);
    assert_eq!(CALLBACKS_RUN.get(), 1, "`execute = true` ran it");
    for callback in callbacks {
        callback();
    }
    assert_eq!(CALLBACKS_RUN.get(), 2);
}

#[diesel_atomic::test(setup = under_test, transaction = false)]
fn commits_without_a_transaction() -> Result<(), Error> {
    assert!(!transaction::in_atomic_block());
    CALLBACKS_RUN.set(0);
    durable_signup("ada")?;
    assert_eq!(CALLBACKS_RUN.get(), 1, "committed, so its callback ran");
    Ok(())
}

#[diesel_atomic::test(setup = under_test_with_requests)]
fn sends_requests_inside() -> Result<(), Error> {
    common::create_reporter("ada", "")?;
    request(|| {
        assert_eq!(common::visible_reporters(), ["ada"], "the test's row");
        durable_signup("grace").expect_err("a request's transaction is not the outermost");
        common::create_reporter("grace", "")?;
        transaction::on_commit(|| CALLBACKS_RUN.set(CALLBACKS_RUN.get() + 1))?;
        Ok::<_, Error>(())
    })?;
    assert_eq!(
        CALLBACKS_RUN.get(),
        0,
        "the request's COMMIT was a savepoint's RELEASE"
    );
    let failed = request(|| {
        common::create_reporter("bob", "")?;
        Err::<(), _>(TestError::Oops)
    });
    assert_eq!(failed, Err(TestError::Oops));
    assert_eq!(
        common::visible_reporters(),
        ["ada", "grace"],
        "the failed request rolled back to its savepoint, and only that"
    );
    assert!(transaction::in_atomic_block());
    Ok(())
}

#[diesel_atomic::test]
#[ignore = "run by `uses_the_registry_in_force`, which enters its registry"]
fn without_setup() {
    common::create_reporter("ada", "").unwrap();
}

#[diesel_atomic::test]
#[ignore = "run by `fails_without_a_registry`"]
fn without_any_registry() {
    unreachable!("the test transaction cannot begin");
}

// --- What they left committed, per backend -----------------------------------------------------

fn rolls_back_every_alias<C: Backend>() {
    let db = common::setup::<C>();
    with_registry(&db, writes_on_every_alias);
    assert!(db.reporters("default").is_empty());
    assert!(db.reporters("other").is_empty());
    common::assert_pool_clean(&db.default);
    common::assert_pool_clean(&db.other);
}

fn rolls_back_after_a_panic<C: Backend>() {
    common::quiet_expected_panics(PANIC);
    let db = common::setup::<C>();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        with_registry(&db, panics_after_writing)
    }));
    let payload = outcome.expect_err("the test panicked");
    assert_eq!(payload.downcast_ref::<String>().unwrap(), PANIC);
    assert!(db.reporters("default").is_empty());
    common::assert_pool_clean(&db.default);
}

fn rolls_back_a_test_that_returns_a_result<C: Backend>() {
    let db = common::setup::<C>();
    assert_eq!(with_registry(&db, returns_a_result), Ok(()));
    assert!(db.reporters("default").is_empty());
}

fn rolls_back_durable_blocks<C: Backend>() {
    let db = common::setup::<C>();
    with_registry(&db, runs_durable_blocks_inside).unwrap();
    assert!(db.reporters("default").is_empty());
}

fn rolls_back_captured_work<C: Backend>() {
    let db = common::setup::<C>();
    CALLBACKS_RUN.set(0);
    with_registry(&db, captures_callbacks);
    assert!(db.reporters("default").is_empty());
}

fn commits_with_transaction_false<C: Backend>() {
    let db = common::setup::<C>();
    with_registry(&db, commits_without_a_transaction).unwrap();
    assert_eq!(db.reporters("default"), ["ada"]);
    common::assert_pool_clean(&db.default);
}

fn rolls_back_requests<C: Backend>() {
    let db = common::setup::<C>();
    CALLBACKS_RUN.set(0);
    with_registry(&db, sends_requests_inside).unwrap();
    assert!(db.reporters("default").is_empty());
    common::assert_pool_clean(&db.default);
}

fn uses_the_registry_in_force<C: Backend>() {
    let db = common::setup::<C>(); // entered on this thread
    without_setup();
    assert!(db.reporters("default").is_empty());
}

backend_tests!(
    rolls_back_every_alias,
    rolls_back_after_a_panic,
    rolls_back_a_test_that_returns_a_result,
    rolls_back_durable_blocks,
    rolls_back_captured_work,
    commits_with_transaction_false,
    rolls_back_requests,
    uses_the_registry_in_force,
);

#[test]
fn fails_without_a_registry() {
    let payload = panic::catch_unwind(without_any_registry).expect_err("no registry");
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap();
    assert!(
        message.starts_with("#[diesel_atomic::test] found no databases"),
        "{message}"
    );
}
