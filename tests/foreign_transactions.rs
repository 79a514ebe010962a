//! Blocks on a connection that diesel already has inside a transaction diesel-atomic did not
//! open: the caller's own `conn.transaction(..)`, or diesel's `begin_test_transaction`.
//!
//! Every test runs on each backend (SQLite, PostgreSQL, MariaDB), on databases of its own.

mod common;

use common::*;
use diesel::prelude::*;
use diesel_atomic::transaction::Atomic;
use diesel_atomic::{Error, transaction};

fn a_block_inside_the_callers_own_transaction_is_a_savepoint_of_it<C: Backend>() {
    let db = setup::<C>();
    let mut pooled = db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let result = conn.transaction(|conn| {
        Atomic::new().run_on(conn, |conn| add_on(conn, "Tintin"))?;
        let failed = Atomic::new().run_on(conn, |conn| {
            add_on(conn, "Haddock")?;
            Err::<(), _>(TestError::Oops)
        });
        assert_eq!(failed, Err(TestError::Oops));
        Ok::<_, TestError>(())
    });
    result.unwrap();
    drop(pooled);
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

fn durable_is_refused_inside_the_callers_own_transaction<C: Backend>() {
    let db = setup::<C>();
    let mut pooled = db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let ran = std::cell::Cell::new(false);
    let result: Result<(), TestError> = conn.transaction(|conn| {
        let refused = Atomic::new().durable(true).run_on(conn, |_| {
            ran.set(true);
            Ok::<_, Error>(())
        });
        assert!(
            matches!(refused, Err(Error::DurableNested { ref alias }) if alias == "default"),
            "{refused:?}"
        );
        Ok(())
    });
    result.unwrap();
    assert!(!ran.get(), "the refused block's body never ran");
}

fn on_commit_inside_the_callers_own_transaction_is_refused<C: Backend>() {
    // diesel-atomic cannot see whether the caller's transaction commits, so it can neither run
    // the callback after that COMMIT nor drop it on a rollback: it refuses, as Django refuses
    // on_commit() in manual transaction management.
    let db = setup::<C>();
    let notified = Notified::default();
    let mut pooled = db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let result: Result<(), TestError> = conn.transaction(|conn| {
        let notify = notified.clone();
        let refused = Atomic::new().run_on(conn, |conn| {
            insert_reporter(conn, "Tintin", "")?;
            transaction::on_commit(move || notify.push(1))?;
            Ok::<_, Error>(())
        });
        assert!(
            matches!(refused, Err(Error::OnCommitRefused { ref alias, .. }) if alias == "default"),
            "{refused:?}"
        );
        Atomic::new().run_on(conn, |conn| add_on(conn, "Haddock"))?;
        Ok(())
    });
    result.unwrap();
    drop(pooled);
    assert_eq!(db.reporters("default"), ["Haddock"]);
    assert!(notified.get().is_empty());
}

fn diesel_test_transactions_allow_durable_and_never_run_callbacks<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
    conn.begin_test_transaction().unwrap();
    let notify = notified.clone();
    Atomic::new()
        .durable(true)
        .run_on(&mut *conn, |conn| {
            add_on(conn, "Tintin")?;
            transaction::on_commit(move || notify.push(1))?;
            Ok::<_, TestError>(())
        })
        .unwrap();
    assert!(
        notified.get().is_empty(),
        "a test transaction never commits"
    );
    drop(conn);
    assert!(
        db.reporters("default").is_empty(),
        "the test transaction rolled back"
    );
}

backend_tests!(
    a_block_inside_the_callers_own_transaction_is_a_savepoint_of_it,
    durable_is_refused_inside_the_callers_own_transaction,
    on_commit_inside_the_callers_own_transaction_is_refused,
    diesel_test_transactions_allow_durable_and_never_run_callbacks,
);
