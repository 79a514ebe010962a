//! Connection modes (API.md §1 "Connection source"), aliases and registries (§2), manual
//! savepoints (§4, rule M1), and the shapes of function `#[atomic]` accepts, on every backend
//! (each test runs as `sqlite::`, `postgres::` and `mysql::`, see tests/common/mod.rs).
//!
//! `Databases::install` is tested in tests/errors.rs, never here: it is process-wide and would
//! hide `Error::NotConfigured`, which this binary checks.

mod common;

use common::*;
use diesel::prelude::*;
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{Database, Databases, Error, atomic, connection};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Reporter names on `conn`, sorted.
fn names_on<C: Backend>(conn: &mut C) -> Vec<String> {
    conn.reporter_names().expect("read reporters")
}

/// Inserts a reporter through `alias`'s ambient connection, naming the connection type: unlike
/// `add_to`, it works on a thread that never called `setup` (which `add_to` needs to learn the
/// backend from).
fn add_to_typed<C: Backend>(alias: &str, name: &str) -> Result<(), Error> {
    diesel_atomic::db(alias)
        .connection(|conn: &mut C| conn.insert_reporter(name, "").map_err(Error::from))
}

/// Queues an on_commit callback on `alias` that records `n`.
fn queue_on(alias: &str, notified: &Notified, n: i32) -> Result<(), Error> {
    let notified = notified.clone();
    diesel_atomic::db(alias).on_commit(move || notified.push(n))
}

fn queue(notified: &Notified, n: i32) -> Result<(), Error> {
    queue_on("default", notified, n)
}

/// `result` is `Error::AliasBoundToExplicitConnection` naming `expected_alias`.
#[track_caller]
fn assert_alias_bound<T: std::fmt::Debug>(result: &Result<T, Error>, expected_alias: &str) {
    assert!(
        matches!(result, Err(Error::AliasBoundToExplicitConnection { alias }) if alias == expected_alias),
        "{result:?}"
    );
}

/// Explicit block: inserts `name`, queues `n`, then fails with `Oops` if asked to.
#[atomic]
fn explicit_add<C: Backend>(
    conn: &mut C,
    name: &str,
    notified: &Notified,
    n: i32,
    fail: bool,
) -> Result<(), TestError> {
    add_on(conn, name)?;
    queue(notified, n)?;
    if fail { Err(TestError::Oops) } else { Ok(()) }
}

/// Explicit block whose error type is the runtime's own, to see its variants.
#[atomic]
fn explicit_insert<C: Backend>(conn: &mut C, name: &str) -> Result<(), Error> {
    insert_reporter(conn, name, "")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Explicit mode
// ---------------------------------------------------------------------------------------------

#[atomic]
fn insert_or_fail<C: Backend>(conn: &mut C, name: &str, fail: bool) -> QueryResult<()> {
    insert_reporter(conn, name, "")?;
    if fail {
        Err(diesel::result::Error::RollbackTransaction)
    } else {
        Ok(())
    }
}

// No Django counterpart (Django always has settings.DATABASES): API.md §1, last paragraph.
fn explicit_mode_needs_no_registry<C: Backend>() {
    // The test's databases, for their URL only: the registry `setup` enters stays on this
    // thread.
    let db = setup::<C>();
    let url = db.url("default").to_owned();
    // A fresh thread surely has no entered registry, and this binary never installs one.
    std::thread::spawn(move || {
        assert!(
            matches!(
                transaction::atomic(|| Ok::<_, Error>(())),
                Err(Error::NotConfigured)
            ),
            "precondition: no registry on this thread"
        );
        let mut conn = C::establish(&url).expect("connect");
        assert_eq!(
            insert_or_fail(&mut conn, "RolledBack", true),
            Err(diesel::result::Error::RollbackTransaction)
        );
        insert_or_fail(&mut conn, "Committed", false).expect("no registry needed");
        assert_eq!(names_on(&mut conn), ["Committed"]);
        assert!(!transaction::in_atomic_block());
    })
    .join()
    .expect("the test thread passed");
}

#[atomic(conn = c)]
fn block_on_c<C: Backend>(conn: &mut C, c: &mut C) -> Result<(), TestError> {
    assert!(transaction::in_atomic_block());
    add_on(conn, "OnConn")?;
    add_on(c, "OnC")?;
    Err(TestError::Oops)
}

// No Django counterpart: `#[atomic(conn = c)]` picks the connection parameter by name.
fn conn_argument_names_the_connection_parameter<C: Backend>() {
    let db = setup::<C>();
    // Two databases, so that `conn`'s autocommitted insert never waits for `c`'s open
    // transaction (SQLite locks the whole file).
    let mut conn = db.raw("default");
    let mut c = db.raw("other");
    assert_eq!(block_on_c(&mut conn, &mut c), Err(TestError::Oops));
    assert!(
        names_on(&mut c).is_empty(),
        "the block ran on `c` and rolled back"
    );
    assert_eq!(
        names_on(&mut conn),
        ["OnConn"],
        "`conn` was not the block's connection: its insert autocommitted"
    );
}

#[atomic(conn = database)]
fn block_on_database<C: Backend>(name: &str, database: &mut C) -> Result<bool, TestError> {
    add_on(database, name)?;
    Ok(transaction::in_atomic_block())
}

// No Django counterpart: `conn = database` with no parameter called `conn`.
fn conn_argument_works_without_a_parameter_named_conn<C: Backend>() {
    let db = setup::<C>();
    let url = db.url("default").to_owned();
    std::thread::spawn(move || {
        let mut database = C::establish(&url).expect("connect");
        assert_eq!(block_on_database("Named", &mut database), Ok(true));
        assert_eq!(names_on(&mut database), ["Named"]);
        assert!(!transaction::in_atomic_block());
    })
    .join()
    .expect("no registry is needed either");
}

#[atomic]
fn explicit_observes_its_block<C: Backend>(
    conn: &mut C,
    notified: &Notified,
) -> Result<(bool, bool), TestError> {
    add_on(conn, "Explicit")?;
    queue(notified, 1)?;
    assert!(
        notified.get().is_empty(),
        "the callback waits for the commit"
    );
    Ok((transaction::in_atomic_block(), transaction::get_rollback()?))
}

// No Django counterpart: API.md §1 "In explicit mode the transaction is registered under the
// alias".
fn explicit_block_is_seen_by_in_atomic_block_and_on_commit<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.raw("default");
    assert!(!transaction::in_atomic_block());
    assert_eq!(
        explicit_observes_its_block(&mut conn, &notified),
        Ok((true, false))
    );
    assert!(!transaction::in_atomic_block());
    assert_eq!(
        notified.get(),
        [1],
        "on_commit ran at the explicit block's commit"
    );
    assert_eq!(db.reporters("default"), ["Explicit"]);
}

#[atomic]
fn explicit_sets_rollback<C: Backend>(conn: &mut C, notified: &Notified) -> Result<i32, TestError> {
    add_on(conn, "Doomed")?;
    queue(notified, 1)?;
    transaction::set_rollback(true)?;
    assert!(transaction::get_rollback()?);
    Ok(7)
}

// Follows Django's AtomicMiscTests.test_mark_for_rollback_on_error_in_transaction, in explicit
// mode: set_rollback sees the explicit block and rolls it back silently (rules F2, X3).
fn set_rollback_in_an_explicit_block_rolls_it_back_silently<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.raw("default");
    assert_eq!(explicit_sets_rollback(&mut conn, &notified), Ok(7));
    assert!(db.reporters("default").is_empty());
    assert!(notified.get().is_empty());
    assert!(!transaction::in_atomic_block());
    assert_not_in_transaction(&mut conn);
}

#[atomic(using = "other")]
fn explicit_on_other<C: Backend>(conn: &mut C, notified: &Notified) -> Result<(), TestError> {
    assert!(diesel_atomic::db("other").in_atomic_block());
    assert!(!transaction::in_atomic_block(), "\"default\" has no block");
    add_on(conn, "OtherExplicit")?;
    queue_on("other", notified, 1)?;
    // "default" has no block: its on_commit runs at once (rule C5).
    queue(notified, 2)?;
    assert_eq!(notified.get(), [2]);
    Ok(())
}

// API.md §1: explicit mode registers under `using`; on_commit is per alias (C5).
fn explicit_block_with_using_is_registered_under_that_alias<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let mut conn = db.raw("other");
    assert_eq!(explicit_on_other(&mut conn, &notified), Ok(()));
    assert_eq!(notified.get(), [2, 1]);
    assert_eq!(db.reporters("other"), ["OtherExplicit"]);
    assert!(!diesel_atomic::db("other").in_atomic_block());
}

// No Django counterpart: API.md §1 "An explicit-mode block on the very connection that the
// alias's open block already uses ... nests as a savepoint of it".
fn explicit_block_on_the_connection_lent_by_an_ambient_block_nests_as_a_savepoint<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Outer")?;
        queue(&notified, 1)?;
        connection(|conn: &mut C| -> Result<(), TestError> {
            assert_eq!(
                explicit_add(conn, "Failed", &notified, 2, true),
                Err(TestError::Oops)
            );
            explicit_add(conn, "Nested", &notified, 3, false)?;
            assert!(
                transaction::in_atomic_block(),
                "the outer block is still open"
            );
            assert!(
                notified.get().is_empty(),
                "the nested block did not commit anything"
            );
            Ok(())
        })?;
        add("After")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(
        db.reporters("default"),
        names(&["Outer", "Nested", "After"])
    );
    assert_eq!(
        notified.get(),
        [1, 3],
        "the failed nested block's callback was dropped"
    );
}

// API.md §1: the nested explicit block is a savepoint, so the outer rollback undoes it.
fn explicit_block_nested_in_an_ambient_block_rolls_back_with_it<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Outer")?;
        connection(|conn: &mut C| explicit_add(conn, "Nested", &notified, 1, false))?;
        Err(TestError::Oops)
    });
    assert_eq!(outcome, Err(TestError::Oops));
    assert!(
        db.reporters("default").is_empty(),
        "the nested explicit block was a savepoint, not a transaction of its own"
    );
    assert!(notified.get().is_empty());
}

// API.md §3: outside a block `connection()` lends an autocommit connection; an explicit block on
// it is the outermost block and commits at its own exit.
fn explicit_block_on_a_connection_lent_outside_any_block_is_outermost<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = connection(|conn: &mut C| -> Result<(), TestError> {
        explicit_add(conn, "First", &notified, 1, false)?;
        assert_eq!(
            db.reporters("default"),
            ["First"],
            "committed at the block's exit"
        );
        assert!(
            notified.get().is_empty(),
            "the callback waits until connection() gives the connection back (C3)"
        );
        assert_eq!(
            explicit_add(conn, "Failed", &notified, 2, true),
            Err(TestError::Oops)
        );
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), ["First"]);
    assert_eq!(notified.get(), [1]);
    // The lent connection was given back: ambient access works again.
    add("Later").expect("the alias is free again");
    assert_eq!(db.reporters("default"), names(&["First", "Later"]));
}

// API.md §1: "on a *different* connection while the alias has an open block it is
// `Error::AliasInUse`".
fn explicit_block_on_another_connection_inside_an_ambient_block_is_alias_in_use<C: Backend>() {
    let db = setup::<C>();
    let mut stranger = db.raw("default");
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Outer")?;
        match explicit_insert(&mut stranger, "Sneaky") {
            Err(Error::AliasInUse { alias }) => assert_eq!(alias, "default"),
            other => panic!("expected AliasInUse, got {other:?}"),
        }
        assert!(
            !transaction::get_rollback()?,
            "the refusal does not doom the outer block"
        );
        add("After")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Outer", "After"]));
}

// API.md §1: AliasInUse also between two explicit blocks; another alias is independent (S1).
fn explicit_block_on_another_connection_inside_an_explicit_block_is_alias_in_use<C: Backend>() {
    let db = setup::<C>();
    let mut first = db.default.get().unwrap();
    let mut second = db.default.get().unwrap();
    let outcome = Atomic::new().run_on(&mut *first, |conn| -> Result<(), TestError> {
        add_on(conn, "First")?;
        let refused = explicit_insert(&mut *second, "Second");
        assert!(
            matches!(&refused, Err(Error::AliasInUse { alias }) if alias == "default"),
            "{refused:?}"
        );
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("'default'"), "{message}");
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), ["First"]);
    // Under another alias the second connection is accepted (aliases are independent).
    Atomic::new()
        .run_on(&mut *first, |_| {
            Atomic::new()
                .using("other")
                .run_on(&mut *second, |conn| explicit_insert_plain(conn, "Second"))
        })
        .expect("another alias is not in use");
    assert_eq!(db.reporters("default"), names(&["First", "Second"]));
}

fn explicit_insert_plain<C: Backend>(conn: &mut C, name: &str) -> Result<(), Error> {
    insert_reporter(conn, name, "")?;
    Ok(())
}

// API.md §3: "While an alias is bound to an explicit-mode connection, ambient access to that
// alias is `Error::AliasBoundToExplicitConnection`".
fn ambient_access_inside_an_explicit_block_is_alias_bound_to_explicit_connection<C: Backend>() {
    let db = setup::<C>();
    let mut conn = db.raw("default");
    let outcome = Atomic::new().run_on(&mut conn, |conn| -> Result<(), TestError> {
        add_on(conn, "Explicit")?;
        let lent = connection(|_: &mut C| Ok::<_, Error>(()));
        assert_alias_bound(&lent, "default");
        let block = transaction::atomic(|| Ok::<_, Error>(()));
        assert_alias_bound(&block, "default");
        let message = block.unwrap_err().to_string();
        assert!(message.contains("'default'"), "{message}");
        assert!(
            !transaction::get_rollback()?,
            "the refusals do not doom the block"
        );
        add_on(conn, "After")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Explicit", "After"]));
    // Once the explicit block is over, ambient access works again.
    add("Ambient").expect("the alias is no longer bound");
}

// API.md §3: AliasBoundToExplicitConnection is per alias (rule S1).
fn explicit_block_binds_only_its_own_alias<C: Backend>() {
    let db = setup::<C>();
    let mut conn = db.raw("other");
    let outcome = Atomic::new()
        .using("other")
        .run_on(&mut conn, |conn| -> Result<(), TestError> {
            add_on(conn, "OtherExplicit")?;
            let bound = add_to("other", "Refused");
            assert_alias_bound(&bound, "other");
            add("DefaultAmbient")?;
            Ok(())
        });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("other"), ["OtherExplicit"]);
    assert_eq!(db.reporters("default"), ["DefaultAmbient"]);
}

// ---------------------------------------------------------------------------------------------
// Function shapes
// ---------------------------------------------------------------------------------------------

#[atomic]
fn query_result_block<C: Backend>(conn: &mut C, fail: bool) -> QueryResult<usize> {
    insert_reporter(conn, "QueryResult", "")?;
    let notified = Notified::default();
    // `?` on a runtime call inside a QueryResult function.
    transaction::on_commit(move || notified.push(1))?;
    if fail {
        // A unique violation: "things.num" is UNIQUE.
        conn.insert_thing(1)?;
        conn.insert_thing(1)?;
    }
    Ok(1)
}

#[atomic(using = "nowhere")]
fn query_result_on_unknown_alias() -> QueryResult<()> {
    Ok(())
}

// API.md §8: diesel::result::Error implements From<diesel_atomic::Error>, so QueryResult
// functions can be #[atomic].
fn query_result_functions_can_be_atomic<C: Backend>() {
    let db = setup::<C>();
    let mut conn = db.raw("default");
    assert_eq!(query_result_block(&mut conn, false), Ok(1));
    assert!(matches!(
        query_result_block(&mut conn, true),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _
        ))
    ));
    assert_eq!(db.reporters("default"), ["QueryResult"]);
    assert!(db.things("default").is_empty());
}

// API.md §8: a runtime error is the boxed source of a QueryBuilderError.
fn runtime_errors_convert_to_diesel_errors_in_query_result_functions<C: Backend>() {
    let _db = setup::<C>();
    match query_result_on_unknown_alias() {
        Err(diesel::result::Error::QueryBuilderError(source)) => {
            let inner = source
                .downcast_ref::<Error>()
                .expect("the runtime error is the boxed source");
            assert!(
                matches!(inner, Error::UnknownAlias { alias, .. } if alias == "nowhere"),
                "{inner:?}"
            );
        }
        other => panic!("expected QueryBuilderError, got {other:?}"),
    }
}

struct Desk {
    prefix: &'static str,
    calls: u32,
}

impl Desk {
    #[atomic]
    fn hire<C: Backend>(&self, conn: &mut C, name: &str, fail: bool) -> Result<(), TestError> {
        add_on(conn, &format!("{}{}", self.prefix, name))?;
        if fail { Err(TestError::Oops) } else { Ok(()) }
    }

    /// Ambient mode from a `&mut self` method: `self` holds no connection, which the
    /// attribute says with `ambient = true`.
    #[atomic(ambient = true)]
    fn hire_ambient(&mut self, name: &str, fail: bool) -> Result<u32, TestError> {
        self.calls += 1;
        add(&format!("{}{}", self.prefix, name))?;
        if fail {
            Err(TestError::Oops)
        } else {
            Ok(self.calls)
        }
    }

    #[atomic]
    fn close<C: Backend>(self, conn: &mut C) -> QueryResult<&'static str> {
        insert_reporter(conn, &format!("{}closed", self.prefix), "")?;
        Ok(self.prefix)
    }
}

// API.md §1: `#[atomic]` applies to methods (`self`, `&self`, `&mut self`).
fn atomic_methods_with_self_receivers<C: Backend>() {
    let db = setup::<C>();
    let mut conn = db.raw("default");
    let mut desk = Desk {
        prefix: "desk-",
        calls: 0,
    };
    desk.hire(&mut conn, "a", false).unwrap();
    assert_eq!(desk.hire(&mut conn, "b", true), Err(TestError::Oops));
    assert_eq!(desk.hire_ambient("c", false), Ok(1));
    assert_eq!(desk.hire_ambient("d", true), Err(TestError::Oops));
    assert_eq!(desk.calls, 2);
    assert_eq!(desk.close(&mut conn), Ok("desk-"));
    assert_eq!(
        db.reporters("default"),
        names(&["desk-a", "desk-c", "desk-closed"])
    );
}

#[atomic]
fn generic_insert<C>(conn: &mut C, name: &str, fail: bool) -> QueryResult<bool>
where
    C: diesel::Connection,
{
    conn.batch_execute(&format!(
        "INSERT INTO reporters (first_name) VALUES ('{name}')"
    ))?;
    if fail {
        return Err(diesel::result::Error::RollbackTransaction);
    }
    Ok(transaction::in_atomic_block())
}

#[atomic]
fn insert_all<C: Backend>(
    conn: &mut C,
    all: impl IntoIterator<Item = &'static str>,
) -> QueryResult<()> {
    for name in all {
        insert_reporter(conn, name, "")?;
    }
    Ok(())
}

// API.md §1: generics, `where` clauses and `impl Trait` arguments are kept.
fn generic_functions_and_impl_trait_arguments_can_be_atomic<C: Backend>() {
    let db = setup::<C>();
    let mut conn = db.raw("default");
    assert_eq!(generic_insert(&mut conn, "Generic", false), Ok(true));
    assert_eq!(
        generic_insert(&mut conn, "Failed", true),
        Err(diesel::result::Error::RollbackTransaction)
    );
    // A pooled connection is a `diesel::Connection` too.
    let mut pooled = db.default.get().unwrap();
    assert_eq!(generic_insert(&mut pooled, "Pooled", false), Ok(true));
    insert_all(&mut conn, ["x", "y"]).unwrap();
    assert_eq!(
        db.reporters("default"),
        names(&["Generic", "Pooled", "x", "y"])
    );
}

// ---------------------------------------------------------------------------------------------
// Aliases
// ---------------------------------------------------------------------------------------------

#[atomic(using = "other", durable = true)]
fn durable_on_other(name: &str, notified: &Notified) -> Result<(), TestError> {
    add_to("other", name)?;
    queue_on("other", notified, 2)?;
    Ok(())
}

#[atomic(using = "other")]
fn failing_on_other(name: &str) -> Result<(), TestError> {
    add_to("other", name)?;
    Err(TestError::Oops)
}

// Follows Django's AtomicTests with multi_db (tests/transactions: MultiDatabaseAtomicTests) and
// rule S1: a block on "other" inside one on "default" is outermost for "other".
fn other_block_inside_a_default_block_is_outermost_for_other<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Default")?;
        queue(&notified, 1)?;
        assert!(!diesel_atomic::db("other").in_atomic_block());
        durable_on_other("Other", &notified)?;
        assert_eq!(
            db.reporters("other"),
            ["Other"],
            "committed at its own exit, while \"default\" is still open"
        );
        assert_eq!(
            notified.get(),
            [2],
            "other's callback ran at other's commit"
        );
        assert!(transaction::in_atomic_block());
        Err(TestError::Oops)
    });
    assert_eq!(outcome, Err(TestError::Oops));
    assert!(db.reporters("default").is_empty());
    assert_eq!(
        db.reporters("other"),
        ["Other"],
        "default's rollback left other alone"
    );
    assert_eq!(notified.get(), [2]);
}

// Rule S1: aliases are independent transactions.
fn other_block_rolls_back_while_the_default_block_commits<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Default")?;
        queue(&notified, 1)?;
        assert_eq!(failing_on_other("Other"), Err(TestError::Oops));
        assert!(
            !transaction::get_rollback()?,
            "default is not marked for rollback"
        );
        add("DefaultAfter")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Default", "DefaultAfter"]));
    assert!(db.reporters("other").is_empty());
    assert_eq!(notified.get(), [1]);
}

// Rules C3, C5: each alias runs its callbacks at its own outermost commit.
fn on_commit_on_other_runs_at_others_commit_and_default_at_defaults<C: Backend>() {
    let _db = setup::<C>();
    let notified = Notified::default();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        queue(&notified, 1)?;
        diesel_atomic::db("other").atomic(|| -> Result<(), TestError> {
            queue_on("other", &notified, 2)?;
            // Nested on other: a savepoint; its callback waits for other's outermost commit.
            diesel_atomic::db("other").atomic(|| -> Result<(), TestError> {
                queue_on("other", &notified, 3)?;
                Ok(())
            })?;
            assert!(notified.get().is_empty());
            Ok(())
        })?;
        assert_eq!(notified.get(), [2, 3]);
        queue(&notified, 4)?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(notified.get(), [2, 3, 1, 4]);
}

// API.md §2: "Looking up an alias that is not configured is `Error::UnknownAlias { alias, known }`
// (the message lists the known aliases)".
fn unknown_alias_lists_the_known_aliases<C: Backend>() {
    let _db = setup::<C>();
    let block = diesel_atomic::db("replica").atomic(|| Ok::<_, Error>(()));
    match &block {
        Err(Error::UnknownAlias { alias, known }) => {
            assert_eq!(alias, "replica");
            assert_eq!(known, &["default", "other"]);
        }
        other => panic!("expected UnknownAlias, got {other:?}"),
    }
    let message = block.unwrap_err().to_string();
    assert!(message.contains("'replica'"), "{message}");
    assert!(message.contains("'default', 'other'"), "{message}");

    let lent = diesel_atomic::db("replica").connection(|_: &mut C| Ok::<_, Error>(()));
    assert!(
        matches!(&lent, Err(Error::UnknownAlias { alias, .. }) if alias == "replica"),
        "{lent:?}"
    );
    assert!(!diesel_atomic::db("replica").in_atomic_block());
}

// API.md §2: "Using no registry at all is `Error::NotConfigured`".
fn ambient_access_without_a_registry_is_not_configured<C: Backend>() {
    std::thread::spawn(|| {
        let block = transaction::atomic(|| Ok::<_, Error>(()));
        assert!(matches!(block, Err(Error::NotConfigured)), "{block:?}");
        let lent = connection(|_: &mut C| Ok::<_, Error>(()));
        assert!(matches!(lent, Err(Error::NotConfigured)), "{lent:?}");
        let other = diesel_atomic::db("other").atomic(|| Ok::<_, Error>(()));
        assert!(matches!(other, Err(Error::NotConfigured)), "{other:?}");
        let message = Error::NotConfigured.to_string();
        assert!(message.contains("install"), "{message}");
        assert!(!transaction::in_atomic_block());
    })
    .join()
    .expect("the test thread passed");
}

// API.md §2: `enter()` is for this thread only.
fn registry_is_per_thread_when_entered<C: Backend>() {
    let db = setup::<C>();
    add("Main").unwrap();
    std::thread::spawn(|| {
        assert!(matches!(
            add_to_typed::<C>("default", "Elsewhere"),
            Err(Error::NotConfigured)
        ));
    })
    .join()
    .expect("the other thread passed");
    assert_eq!(db.reporters("default"), ["Main"]);
}

// API.md §2: enter() "guards nest and restore the previous one".
fn nested_enter_guards_restore_the_previous_registry<C: Backend>() {
    let db = setup::<C>();
    // "inner" is another pool on the database of "other", which no step here touches through
    // the alias "other".
    let inner = Databases::new().add("inner", Database::new(db.new_pool("other")));
    {
        let _guard = inner.enter();
        let hidden = add_to("default", "Hidden");
        assert!(
            matches!(&hidden, Err(Error::UnknownAlias { known, .. }) if known == &["inner"]),
            "{hidden:?}"
        );
        add_to("inner", "Inner").expect("the inner registry is in force");
    }
    add_to("default", "Outer").expect("the outer registry is back");
    let gone = add_to("inner", "Gone");
    assert!(
        matches!(&gone, Err(Error::UnknownAlias { known, .. }) if known == &["default", "other"]),
        "{gone:?}"
    );
    assert_eq!(db.reporters("default"), ["Outer"]);
    assert_eq!(db.reporters("other"), ["Inner"]);
}

// ---------------------------------------------------------------------------------------------
// Manual savepoints (rule M1)
// ---------------------------------------------------------------------------------------------

// Follows Django's AtomicMiscTests / transactions tests of savepoint()/savepoint_rollback().
fn savepoint_rollback_undoes_only_the_work_after_the_savepoint<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Before")?;
        let id = transaction::savepoint()?;
        add("Undone")?;
        transaction::savepoint_rollback(id)?;
        add("After")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Before", "After"]));
}

// Rule M1: savepoint_commit releases the savepoint and keeps its work.
fn savepoint_commit_keeps_the_work<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Before")?;
        let id = transaction::savepoint()?;
        add("Kept")?;
        transaction::savepoint_commit(id)?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Before", "Kept"]));
}

// Rule M1 / API.md §4: `savepoint()` outside a block returns a no-op id.
fn savepoints_outside_a_block_are_no_ops<C: Backend>() {
    let db = setup::<C>();
    let id = transaction::savepoint().expect("a no-op id");
    add("Autocommitted").unwrap();
    transaction::savepoint_rollback(id).expect("rolling back a no-op id does nothing");
    transaction::savepoint_commit(id).expect("committing a no-op id does nothing");
    assert_eq!(db.reporters("default"), ["Autocommitted"]);
    // The id stays a no-op even inside a later block.
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Inside")?;
        transaction::savepoint_rollback(id)?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Autocommitted", "Inside"]));
}

// API.md §1: "Manual savepoints (`savepoint()` etc.) are ambient-mode only".
fn savepoint_inside_an_explicit_block_is_alias_bound_to_explicit_connection<C: Backend>() {
    let db = setup::<C>();
    let mut conn = db.raw("default");
    let outcome = Atomic::new().run_on(&mut conn, |conn| -> Result<(), TestError> {
        add_on(conn, "Explicit")?;
        let savepoint = transaction::savepoint();
        assert_alias_bound(&savepoint, "default");
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), ["Explicit"]);
}

backend_tests!(
    explicit_mode_needs_no_registry,
    conn_argument_names_the_connection_parameter,
    conn_argument_works_without_a_parameter_named_conn,
    explicit_block_is_seen_by_in_atomic_block_and_on_commit,
    set_rollback_in_an_explicit_block_rolls_it_back_silently,
    explicit_block_with_using_is_registered_under_that_alias,
    explicit_block_on_the_connection_lent_by_an_ambient_block_nests_as_a_savepoint,
    explicit_block_nested_in_an_ambient_block_rolls_back_with_it,
    explicit_block_on_a_connection_lent_outside_any_block_is_outermost,
    explicit_block_on_another_connection_inside_an_ambient_block_is_alias_in_use,
    explicit_block_on_another_connection_inside_an_explicit_block_is_alias_in_use,
    ambient_access_inside_an_explicit_block_is_alias_bound_to_explicit_connection,
    explicit_block_binds_only_its_own_alias,
    query_result_functions_can_be_atomic,
    runtime_errors_convert_to_diesel_errors_in_query_result_functions,
    atomic_methods_with_self_receivers,
    generic_functions_and_impl_trait_arguments_can_be_atomic,
    other_block_inside_a_default_block_is_outermost_for_other,
    other_block_rolls_back_while_the_default_block_commits,
    on_commit_on_other_runs_at_others_commit_and_default_at_defaults,
    unknown_alias_lists_the_known_aliases,
    ambient_access_without_a_registry_is_not_configured,
    registry_is_per_thread_when_entered,
    nested_enter_guards_restore_the_previous_registry,
    savepoint_rollback_undoes_only_the_work_after_the_savepoint,
    savepoint_commit_keeps_the_work,
    savepoints_outside_a_block_are_no_ops,
    savepoint_inside_an_explicit_block_is_alias_bound_to_explicit_connection,
);
