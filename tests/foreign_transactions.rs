//! Blocks on a connection that diesel already has inside a transaction diesel-atomic did not
//! open: the caller's own `conn.transaction(..)`, or diesel's `begin_test_transaction`.

mod common;

use common::*;
use diesel::prelude::*;
use diesel_atomic::transaction::Atomic;
use diesel_atomic::{Error, transaction};

#[test]
fn a_block_inside_the_callers_own_transaction_is_a_savepoint_of_it() {
    let db = setup();
    let mut conn = db.default.get().unwrap();
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
    drop(conn);
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

#[test]
fn durable_is_refused_inside_the_callers_own_transaction() {
    let db = setup();
    let mut conn = db.default.get().unwrap();
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

#[test]
fn callbacks_inside_the_callers_own_transaction_are_dropped_not_run_early() {
    let db = setup();
    let notified = Notified::default();
    let mut conn = db.default.get().unwrap();
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
    drop(conn);
    assert_eq!(db.reporters("default"), ["Tintin"]);
    assert!(notified.get().is_empty());
}

#[test]
fn diesel_test_transactions_allow_durable_and_never_run_callbacks() {
    let db = setup();
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
