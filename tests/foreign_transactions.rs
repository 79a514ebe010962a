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

fn callbacks_inside_the_callers_own_transaction_are_dropped_not_run_early<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut pooled = db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    let result: Result<(), TestError> = conn.transaction(|conn| {
        let notify = notified.clone();
        Atomic::new().run_on(conn, |conn| {
            add_on(conn, "Tintin")?;
            transaction::on_commit(move || notify.push(1))?;
            Ok::<_, TestError>(())
        })?;
        assert!(
            notified.get().is_empty(),
            "the caller's transaction has not committed yet"
        );
        Ok(())
    });
    result.unwrap();
    drop(pooled);
    assert_eq!(db.reporters("default"), ["Tintin"]);
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
    callbacks_inside_the_callers_own_transaction_are_dropped_not_run_early,
    diesel_test_transactions_allow_durable_and_never_run_callbacks,
);
