//! Per-request transactions (SEMANTICS Q1–Q3): `request()` and `#[non_atomic_requests]`, on
//! every backend. Starts with Django's `TransactionsPerRequestTests` (tests/handlers/tests.py);
//! its async-view test has no counterpart (`async fn` views are a compile error here).

mod common;

use std::panic::{self, AssertUnwindSafe};

use common::*;
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{
    Database, Databases, DatabasesGuard, Error, atomic, non_atomic_requests, request,
};

/// Enters a registry over the test's databases with `atomic_requests` as given per alias.
fn with_atomic_requests<C: Backend>(db: &TestDb<C>, default: bool, other: bool) -> DatabasesGuard {
    Databases::new()
        .add(
            "default",
            Database::new(db.default.clone()).atomic_requests(default),
        )
        .add(
            "other",
            Database::new(db.other.clone()).atomic_requests(other),
        )
        .enter()
}

// --- Django's views (tests/handlers/views.py) ------------------------------------------------

fn in_transaction() -> Result<bool, TestError> {
    Ok(transaction::in_atomic_block())
}

#[non_atomic_requests]
fn not_in_transaction() -> Result<bool, TestError> {
    Ok(transaction::in_atomic_block())
}

#[non_atomic_requests(using = "default")]
fn not_in_transaction_using_default() -> Result<bool, TestError> {
    Ok(transaction::in_atomic_block())
}

#[non_atomic_requests(using = "incorrect")]
fn not_in_transaction_using_text() -> Result<bool, TestError> {
    Ok(transaction::in_atomic_block())
}

// --- TransactionsPerRequestTests ---------------------------------------------------------------

fn test_no_transaction<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, false, false);
    assert_eq!(request(in_transaction), Ok(false));
}

fn test_auto_transaction<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    assert_eq!(request(in_transaction), Ok(true));
    assert!(!transaction::in_atomic_block(), "only the view is wrapped");
}

fn test_no_auto_transaction<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    assert_eq!(request(not_in_transaction), Ok(false));
    // Django's `using=None`: the default alias, named.
    assert_eq!(request(not_in_transaction_using_default), Ok(false));
    // An alias that is not the default one does not exempt the default one.
    assert_eq!(request(not_in_transaction_using_text), Ok(true));
}

// --- Commit, rollback, panic ------------------------------------------------------------------

fn a_view_that_returns_ok_commits_and_then_runs_its_callbacks<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    let notified = Notified::default();
    let notify = notified.clone();
    let result = request(|| {
        add("Tintin")?;
        add("Haddock")?;
        transaction::on_commit(move || notify.push(1))?;
        assert!(transaction::in_atomic_block());
        Ok::<_, TestError>("created")
    });
    assert_eq!(result, Ok("created"));
    assert_eq!(notified.get(), [1]);
    assert_eq!(db.reporters("default"), ["Haddock", "Tintin"]);
    assert_pool_clean(&db.default);
}

fn a_view_that_returns_err_rolls_back_all_of_its_work<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    let notified = Notified::default();
    let notify = notified.clone();
    let result = request(|| {
        add("Tintin")?;
        transaction::on_commit(move || notify.push(1))?;
        // A nested block that committed its savepoint is rolled back with the request.
        transaction::atomic(|| add("Haddock"))?;
        Err::<(), _>(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert!(notified.get().is_empty());
    assert!(db.reporters("default").is_empty());
    assert!(!transaction::in_atomic_block());
    assert_pool_clean(&db.default);
}

fn a_view_that_panics_rolls_back_and_the_next_request_works<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        request(|| -> Result<(), TestError> {
            add("Tintin")?;
            panic!("view failed")
        })
    }));
    let payload = outcome.expect_err("the panic resumes after the rollback");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"view failed"));
    assert!(db.reporters("default").is_empty());
    assert!(!transaction::in_atomic_block());

    request(|| add("Calculus")).unwrap();
    assert_eq!(db.reporters("default"), ["Calculus"]);
    assert_pool_clean(&db.default);
}

/// Django's advice for views that turn an error into a response: `set_rollback(True)`.
fn set_rollback_in_a_view_that_returns_ok_rolls_back_without_an_error<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    let result = request(|| {
        add("Tintin")?;
        transaction::set_rollback(true)?;
        Ok::<_, TestError>("error page")
    });
    assert_eq!(result, Ok("error page"));
    assert!(db.reporters("default").is_empty());
}

// --- What the view's own blocks become ---------------------------------------------------------

fn the_views_blocks_are_savepoints_of_the_request<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    request(|| {
        add("Tintin")?;
        let failed = transaction::atomic(|| {
            add("Haddock")?;
            Err::<(), _>(TestError::Oops)
        });
        assert_eq!(failed, Err(TestError::Oops));
        let durable = Atomic::new().durable(true).run(|| Ok::<_, TestError>(()));
        assert!(
            matches!(&durable, Err(TestError::Atomic(message)) if message.contains("durable")),
            "a durable block inside an atomic request is nested (Django raises too): {durable:?}"
        );
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

#[atomic(durable = true)]
fn durable_add(name: &str) -> Result<(), TestError> {
    add(name)
}

/// An exempt view's blocks are outermost transactions: each commits at its own end, even when
/// the view fails afterwards, and `durable = true` is allowed.
#[non_atomic_requests]
fn bulk_import(names: &[&str]) -> Result<(), TestError> {
    assert!(!transaction::in_atomic_block());
    for name in names {
        durable_add(name)?;
        assert!(!transaction::in_atomic_block());
    }
    add("autocommitted")?;
    Err(TestError::Oops)
}

fn an_exempt_view_runs_in_autocommit_mode<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    let result = request(|| bulk_import(&["Tintin", "Haddock"]));
    assert_eq!(result, Err(TestError::Oops));
    assert_eq!(
        db.reporters("default"),
        ["Haddock", "Tintin", "autocommitted"]
    );
    assert_pool_clean(&db.default);
}

/// The exemption lasts while the exempt function runs, and covers only its alias.
fn an_exemption_covers_its_alias_only<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, true);

    #[non_atomic_requests(using = "other")]
    fn view() -> Result<(bool, bool), TestError> {
        add_to("other", "autocommitted")?;
        add("Tintin")?;
        Ok((
            transaction::in_atomic_block(),
            diesel_atomic::db("other").in_atomic_block(),
        ))
    }

    let result = request(|| {
        let seen = view()?;
        Err::<(bool, bool), _>(TestError::Atomic(format!("{seen:?}")))
    });
    assert_eq!(result, Err(TestError::Atomic("(true, false)".into())));
    assert!(db.reporters("default").is_empty(), "default rolled back");
    assert_eq!(db.reporters("other"), ["autocommitted"]);
}

/// Stacked attributes exempt several aliases.
fn stacked_exemptions_cover_each_alias<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, true);

    #[non_atomic_requests]
    #[non_atomic_requests(using = "other")]
    fn view() -> Result<(), TestError> {
        add("Tintin")?;
        add_to("other", "Haddock")?;
        assert!(!transaction::in_atomic_block());
        assert!(!diesel_atomic::db("other").in_atomic_block());
        Err(TestError::Oops)
    }

    assert_eq!(request(view), Err(TestError::Oops));
    assert_eq!(db.reporters("default"), ["Tintin"]);
    assert_eq!(db.reporters("other"), ["Haddock"]);
}

// --- Several aliases (Q3) ---------------------------------------------------------------------

fn two_aliases_are_two_transactions_committed_in_registration_order<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, true);
    let other_url = db.url("other").to_owned();
    let seen_from_default_callback = Notified::default();
    let seen = seen_from_default_callback.clone();
    request(|| {
        add("Tintin")?;
        add_to("other", "Haddock")?;
        transaction::on_commit(move || {
            // "default" committed first; "other" has not committed yet.
            let mut raw = C::establish(&other_url).expect("connect");
            seen.push(raw.reporter_names().expect("read").len() as i32);
        })?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(seen_from_default_callback.get(), [0]);
    assert_eq!(db.reporters("default"), ["Tintin"]);
    assert_eq!(db.reporters("other"), ["Haddock"]);

    let failed = request(|| {
        add("Calculus")?;
        add_to("other", "Nestor")?;
        Err::<(), _>(TestError::Oops)
    });
    assert_eq!(failed, Err(TestError::Oops));
    assert_eq!(db.reporters("default"), ["Tintin"]);
    assert_eq!(db.reporters("other"), ["Haddock"]);
    assert_pool_clean(&db.default);
    assert_pool_clean(&db.other);
}

/// Q3: no two-phase commit. "default" commits first; when its COMMIT fails (a deferred foreign
/// key: SQLite and PostgreSQL), "other" is rolled back and the COMMIT's error is returned.
fn a_failed_commit_rolls_back_the_aliases_after_it<C: Backend>() {
    let db = setup::<C>();
    db.raw("default")
        .batch_execute(
            "CREATE TABLE parents (id INTEGER PRIMARY KEY);
             CREATE TABLE children (
                 id INTEGER PRIMARY KEY,
                 parent_id INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
             );",
        )
        .unwrap();
    let _registry = with_atomic_requests(&db, true, true);
    let notified = Notified::default();
    let notify = notified.clone();
    let result = request(|| {
        add_to("other", "Haddock")?;
        diesel_atomic::connection(|conn: &mut C| {
            conn.batch_execute("INSERT INTO children (id, parent_id) VALUES (1, 42)")
                .map_err(Error::from)
        })?;
        diesel_atomic::db("other").on_commit(move || notify.push(1))?;
        Ok::<_, Error>(())
    });
    assert!(
        matches!(
            &result,
            Err(Error::Database(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                _
            )))
        ),
        "{result:?}"
    );
    assert!(db.reporters("other").is_empty(), "other rolled back");
    assert!(notified.get().is_empty());
    assert!(!transaction::in_atomic_block());
    assert_pool_clean(&db.default);
    assert_pool_clean(&db.other);
}

mod deferred_constraints {
    use super::*;

    backend_tests!(on [sqlite, postgres]: a_failed_commit_rolls_back_the_aliases_after_it);
}

/// The request's transaction runs on the alias's pooled connection; a block on a connection
/// of the view's own cannot join it, so it is refused rather than committed on its own.
/// An exempt view may use one.
fn an_explicit_connection_is_refused_in_an_atomic_request_and_fine_in_an_exempt_view<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, true);
    let mut own = db.raw("other");
    request(|| {
        add("Tintin")?;
        let refused = Atomic::new()
            .using("other")
            .run_on(&mut own, |conn| add_on(conn, "Haddock"));
        assert!(
            matches!(&refused, Err(TestError::Atomic(message)) if message.contains("'other'")),
            "{refused:?}"
        );
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(db.reporters("default"), ["Tintin"]);
    assert!(db.reporters("other").is_empty());

    #[non_atomic_requests(using = "other")]
    fn exempt<C: Backend>(own: &mut C) -> Result<(), TestError> {
        Atomic::new()
            .using("other")
            .run_on(own, |conn| add_on(conn, "Haddock"))
    }
    request(|| exempt(&mut own)).unwrap();
    assert_eq!(db.reporters("other"), ["Haddock"]);
    assert_pool_clean(&db.other);
}

// --- Misuse -----------------------------------------------------------------------------------

fn request_inside_a_request_is_an_error<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, true, false);
    let result = request(|| {
        add("Tintin")?;
        let inner = request(|| Ok::<_, Error>(()));
        assert!(matches!(&inner, Err(Error::RequestNested)), "{inner:?}");
        Ok::<_, TestError>(())
    });
    assert_eq!(result, Ok(()));
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

fn without_atomic_requests_the_view_runs_in_autocommit_mode<C: Backend>() {
    let db = setup::<C>();
    let _registry = with_atomic_requests(&db, false, false);
    let result = request(|| {
        add("Tintin")?;
        Err::<(), _>(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

backend_tests!(
    test_no_transaction,
    test_auto_transaction,
    test_no_auto_transaction,
    a_view_that_returns_ok_commits_and_then_runs_its_callbacks,
    a_view_that_returns_err_rolls_back_all_of_its_work,
    a_view_that_panics_rolls_back_and_the_next_request_works,
    set_rollback_in_a_view_that_returns_ok_rolls_back_without_an_error,
    the_views_blocks_are_savepoints_of_the_request,
    an_exempt_view_runs_in_autocommit_mode,
    an_exemption_covers_its_alias_only,
    stacked_exemptions_cover_each_alias,
    two_aliases_are_two_transactions_committed_in_registration_order,
    an_explicit_connection_is_refused_in_an_atomic_request_and_fine_in_an_exempt_view,
    request_inside_a_request_is_an_error,
    without_atomic_requests_the_view_runs_in_autocommit_mode,
);
