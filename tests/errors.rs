//! Misuse reported as errors (API.md §3, §8; rules E1, F1, F3), and the process-wide registry,
//! on every backend (each test runs as `sqlite::`, `postgres::` and `mysql::`, see
//! tests/common/mod.rs).
//!
//! `Databases::install` is tested here, in its own test binary, because it is process-wide:
//! in tests/modes.rs it would hide the `Error::NotConfigured` checked there. No test in this
//! file depends on the absence of an installed registry.

mod common;

use common::*;
use std::sync::{Mutex, PoisonError};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel_atomic::testing::TestTransaction;
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{Database, Databases, Error, atomic, connection};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const DURABLE_MESSAGE: &str =
    "A durable atomic block cannot be nested within another atomic block.";
const BROKEN_MESSAGE: &str = "You can't execute queries until the end of the 'atomic' block.";
const ROLLBACK_FLAG_MESSAGE: &str = "The rollback flag doesn't work outside of an 'atomic' block.";

/// How many reporters the default alias's ambient connection sees (its open block included);
/// unlike common's `visible_reporters`, it returns the runtime's refusal instead of panicking.
fn visible_reporter_count() -> Result<i64, Error> {
    on_alias("default", |conn| {
        conn.count_rows("reporters").map_err(Error::from)
    })
}

/// Inserts a reporter through `alias`'s ambient connection, naming the connection type: unlike
/// `add_to`, it works on a thread that never called `setup` (which `add_to` needs to learn the
/// backend from).
fn add_to_typed<C: Backend>(alias: &str, name: &str) -> Result<(), Error> {
    diesel_atomic::db(alias)
        .connection(|conn: &mut C| conn.insert_reporter(name, "").map_err(Error::from))
}

#[track_caller]
fn assert_durable_nested<T: std::fmt::Debug>(outcome: Result<T, Error>, expected_alias: &str) {
    match outcome {
        Err(error @ Error::DurableNested { .. }) => {
            let Error::DurableNested { alias } = &error else {
                unreachable!()
            };
            assert_eq!(alias, expected_alias);
            let message = error.to_string();
            assert!(message.contains(DURABLE_MESSAGE), "{message}");
            assert!(
                message.contains(&format!("'{expected_alias}'")),
                "{message}"
            );
        }
        other => panic!("expected DurableNested on '{expected_alias}', got {other:?}"),
    }
}

#[track_caller]
fn assert_broken_transaction<T: std::fmt::Debug>(outcome: Result<T, Error>, expected_alias: &str) {
    match outcome {
        Err(Error::TransactionManagement(message)) => {
            assert!(
                message.contains("An error occurred in the current transaction."),
                "{message}"
            );
            assert!(message.contains(BROKEN_MESSAGE), "{message}");
            assert!(
                message.contains(&format!("'{expected_alias}'")),
                "{message}"
            );
        }
        other => panic!("expected TransactionManagement on '{expected_alias}', got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// ConnectionInUse
// ---------------------------------------------------------------------------------------------

// API.md §3: "`connection()` calls do not nest on one alias".
fn connection_inside_connection_is_connection_in_use<C: Backend>() {
    let db = setup::<C>();
    let outcome = connection(|conn: &mut C| -> Result<(), TestError> {
        let nested = connection(|_: &mut C| Ok::<_, Error>(()));
        match &nested {
            Err(Error::ConnectionInUse { alias }) => assert_eq!(alias, "default"),
            other => panic!("expected ConnectionInUse, got {other:?}"),
        }
        let message = nested.unwrap_err().to_string();
        assert!(message.contains("'default'"), "{message}");
        // The outer call still has its connection.
        insert_reporter(conn, "Outer", "")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), ["Outer"]);
    add("Later").expect("the connection was given back");
}

// API.md §3: ConnectionInUse inside a block too; the refusal does not mark the block.
fn connection_inside_connection_in_a_block_is_connection_in_use<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Before")?;
        connection(|conn: &mut C| -> Result<(), TestError> {
            let nested = add_to("default", "Nested");
            assert!(
                matches!(&nested, Err(Error::ConnectionInUse { alias }) if alias == "default"),
                "{nested:?}"
            );
            insert_reporter(conn, "Lent", "")?;
            Ok(())
        })?;
        assert!(
            !transaction::get_rollback()?,
            "the refusal does not doom the block"
        );
        add("After")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Before", "Lent", "After"]));
}

#[atomic]
fn ambient_block() -> Result<(), Error> {
    add_to("default", "Ambient")
}

// API.md §3: an ambient #[atomic] block inside `connection()` is ConnectionInUse.
fn ambient_block_inside_connection_is_connection_in_use<C: Backend>() {
    let db = setup::<C>();
    // Outside any block, and inside one.
    let outside = connection(|_: &mut C| Ok::<_, Error>(ambient_block()));
    assert!(
        matches!(&outside, Ok(Err(Error::ConnectionInUse { alias })) if alias == "default"),
        "{outside:?}"
    );
    let inside = transaction::atomic(|| {
        connection(|_: &mut C| Ok::<_, Error>(transaction::atomic(|| Ok::<_, Error>(()))))
    });
    assert!(
        matches!(&inside, Ok(Err(Error::ConnectionInUse { alias })) if alias == "default"),
        "{inside:?}"
    );
    assert!(db.reporters("default").is_empty());
    assert!(!transaction::in_atomic_block());
    ambient_block().expect("nothing is lent any more");
    assert_eq!(db.reporters("default"), ["Ambient"]);
}

// ---------------------------------------------------------------------------------------------
// WrongConnectionType
// ---------------------------------------------------------------------------------------------

/// The pooled wrapper around the backend's connection: another type than the one the pool
/// lends.
type WrongType<C> = PooledConnection<ConnectionManager<C>>;

// API.md §3: "A connection of the wrong type is `Error::WrongConnectionType`".
fn connection_of_the_wrong_type_is_wrong_connection_type<C: Backend>() {
    let db = setup::<C>();
    let wrong = connection(|_: &mut WrongType<C>| Ok::<_, Error>(()));
    match &wrong {
        Err(Error::WrongConnectionType { alias, expected }) => {
            assert_eq!(alias, "default");
            assert_eq!(*expected, std::any::type_name::<C>());
        }
        other => panic!("expected WrongConnectionType, got {other:?}"),
    }
    let message = wrong.unwrap_err().to_string();
    assert!(message.contains("'default'"), "{message}");
    // e.g. "SqliteConnection", "PgConnection", "MysqlConnection".
    assert!(message.contains(short_type_name::<C>()), "{message}");
    // The connection went back: the right type works now.
    add("Right").expect("the alias is free");
    assert_eq!(db.reporters("default"), ["Right"]);
}

// API.md §3: WrongConnectionType gives the block's connection back unharmed.
fn wrong_connection_type_inside_a_block_leaves_the_block_usable<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Before")?;
        let wrong =
            diesel_atomic::db("default").connection(|_: &mut WrongType<C>| Ok::<_, Error>(()));
        assert!(
            matches!(&wrong, Err(Error::WrongConnectionType { alias, .. }) if alias == "default"),
            "{wrong:?}"
        );
        assert!(!transaction::get_rollback()?);
        add("After")?;
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert_eq!(db.reporters("default"), names(&["Before", "After"]));
}

/// The last path segment of `C`'s type name, e.g. "SqliteConnection".
fn short_type_name<C>() -> &'static str {
    let full = std::any::type_name::<C>();
    full.rsplit("::").next().unwrap_or(full)
}

/// A `#[derive(diesel::MultiConnection)]` enum whose one variant is the backend's connection.
trait WithMultiConnection {
    type Multi: diesel::Connection + 'static;
}

// One module per enum: the derive defines a module of helpers (`multi_connection_impl`) next to
// the enum it derives for.
mod any_sqlite {
    #[derive(diesel::MultiConnection)]
    pub enum AnySqlite {
        Sqlite(diesel::SqliteConnection),
    }
}

impl WithMultiConnection for SqliteConnection {
    type Multi = any_sqlite::AnySqlite;
}

#[cfg(feature = "postgres")]
mod any_pg {
    #[derive(diesel::MultiConnection)]
    pub enum AnyPg {
        Pg(diesel::PgConnection),
    }
}

#[cfg(feature = "postgres")]
impl WithMultiConnection for PgConnection {
    type Multi = any_pg::AnyPg;
}

#[cfg(feature = "mysql")]
mod any_mysql {
    #[derive(diesel::MultiConnection)]
    pub enum AnyMysql {
        Mysql(diesel::MysqlConnection),
    }
}

#[cfg(feature = "mysql")]
impl WithMultiConnection for MysqlConnection {
    type Multi = any_mysql::AnyMysql;
}

// API.md §3: a MultiConnection enum is another type than the pool's connection type, even when
// it wraps that very type (on SQLite a `SqliteConnection` pool, and so on).
fn multi_connection_enum_over_the_pools_connection_type_is_wrong_connection_type<
    C: Backend + WithMultiConnection,
>() {
    let _db = setup::<C>();
    let wrong = connection(|_: &mut C::Multi| Ok::<_, Error>(()));
    assert!(
        matches!(&wrong, Err(Error::WrongConnectionType { alias, expected })
            if alias == "default" && expected.ends_with(short_type_name::<C>())),
        "{wrong:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// DurableNested (rule E1, T1)
// ---------------------------------------------------------------------------------------------

#[atomic(durable = true)]
fn durable_add(name: &str) -> Result<(), Error> {
    add_to("default", name)
}

// Follows Django's DurableTests.test_commit and test_sequence_of_durables (under TestCase,
// whose blocks the durable check ignores).
fn durable_block_directly_inside_a_test_transaction_is_allowed<C: Backend>() {
    let db = setup::<C>();
    {
        let _test = TestTransaction::begin().expect("begin");
        durable_add("Durable").expect("allowed directly under a TestTransaction");
        Atomic::new()
            .durable(true)
            .run(|| add_to("default", "Builder"))
            .expect("the builder form too");
        assert_eq!(visible_reporter_count().unwrap(), 2);
        assert!(
            transaction::in_atomic_block(),
            "the TestTransaction is still open"
        );
    }
    assert!(!transaction::in_atomic_block());
    assert!(
        db.reporters("default").is_empty(),
        "the TestTransaction rolled back"
    );
}

// Follows Django's DurableTests.test_nested_outer_durable / test_nested_inner_durable.
fn durable_block_under_a_user_block_in_a_test_transaction_is_durable_nested<C: Backend>() {
    let _db = setup::<C>();
    let _test = TestTransaction::begin().expect("begin");
    let outcome = transaction::atomic(|| -> Result<(), Error> {
        add_to("default", "User")?;
        assert_durable_nested(durable_add("Durable"), "default");
        assert!(
            !transaction::get_rollback()?,
            "E1: the outer block is not marked"
        );
        Ok(())
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        visible_reporter_count().unwrap(),
        1,
        "only the user block's row"
    );
}

// Follows Django's DurableTests.test_nested_inner_durable (rule E1: no SQL, no state change).
fn durable_block_inside_another_block_is_durable_nested<C: Backend>() {
    let db = setup::<C>();
    let notified = Notified::default();
    let outcome = transaction::atomic(|| -> Result<(), Error> {
        add_to("default", "Outer")?;
        let seen = notified.clone();
        transaction::on_commit(move || seen.push(1))?;
        assert_durable_nested(durable_add("Durable"), "default");
        assert_durable_nested(
            Atomic::new()
                .durable(true)
                .run(|| add_to("default", "Builder")),
            "default",
        );
        assert!(
            !transaction::get_rollback()?,
            "E1: the outer block is not marked"
        );
        add_to("default", "After")
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(db.reporters("default"), names(&["Outer", "After"]));
    assert_eq!(notified.get(), [1]);
}

// Rule E1 on another alias: the error names that alias.
fn durable_block_nested_on_other_names_other<C: Backend>() {
    let db = setup::<C>();
    let outcome = diesel_atomic::db("other").atomic(|| -> Result<(), Error> {
        add_to("other", "Outer")?;
        assert_durable_nested(
            Atomic::new()
                .using("other")
                .durable(true)
                .run(|| add_to("other", "Durable")),
            "other",
        );
        Ok(())
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(db.reporters("other"), ["Outer"]);
}

#[atomic(durable = true)]
fn durable_explicit<C: Backend>(conn: &mut C, name: &str) -> Result<(), Error> {
    insert_reporter(conn, name, "")?;
    Ok(())
}

// Rule E1 in explicit mode: nesting on the lent connection is nesting.
fn durable_explicit_block_on_the_lent_connection_is_durable_nested<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<(), Error> {
        add_to("default", "Outer")?;
        connection(|conn: &mut C| {
            assert_durable_nested(durable_explicit(conn, "Durable"), "default");
            Ok::<_, Error>(())
        })?;
        assert!(!transaction::get_rollback()?);
        Ok(())
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(db.reporters("default"), ["Outer"]);
    // Outermost, the same function is fine.
    let mut conn = db.raw("default");
    durable_explicit(&mut conn, "Durable").expect("outermost durable block");
    assert_eq!(db.reporters("default"), names(&["Outer", "Durable"]));
}

// ---------------------------------------------------------------------------------------------
// Broken transactions (rule F3)
// ---------------------------------------------------------------------------------------------

// Follows Django's AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction, with
// the transaction marked by set_rollback(true).
fn queries_after_set_rollback_true_are_transaction_management_errors<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<&'static str, Error> {
        add_to("default", "Doomed")?;
        transaction::set_rollback(true)?;
        assert_broken_transaction(add_to("default", "Refused"), "default");
        assert_broken_transaction(visible_reporter_count(), "default");
        Ok("silent")
    });
    assert!(matches!(outcome, Ok("silent")), "{outcome:?}");
    assert!(db.reporters("default").is_empty());
}

// Follows Django's AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction: a
// failed savepoint = false block marks the outer block (X2) and queries are refused.
fn queries_after_a_failed_merged_block_are_transaction_management_errors<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Outer")?;
        let merged = Atomic::new()
            .savepoint(false)
            .run(|| -> Result<(), TestError> {
                add("Merged")?;
                Err(TestError::Oops)
            });
        assert_eq!(merged, Err(TestError::Oops));
        assert!(transaction::get_rollback()?);
        assert_broken_transaction(add_to("default", "Refused"), "default");
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
    assert!(db.reporters("default").is_empty());
}

// Follows Django's AtomicMiscTests.test_mark_for_rollback_on_error_in_transaction recovery and
// the documented recovery order: set_rollback(false), then savepoint_rollback(id).
fn set_rollback_false_then_savepoint_rollback_recovers_a_broken_transaction<C: Backend>() {
    let db = setup::<C>();
    let outcome = transaction::atomic(|| -> Result<(), Error> {
        add_to("default", "Before")?;
        let id = transaction::savepoint()?;
        add_to("default", "Undone")?;
        transaction::set_rollback(true)?;
        assert_broken_transaction(add_to("default", "Refused"), "default");
        transaction::set_rollback(false)?;
        transaction::savepoint_rollback(id)?;
        add_to("default", "After")
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(db.reporters("default"), names(&["Before", "After"]));
}

// Rule F3 is per alias (S1): the error names 'other' and 'default' is unaffected.
fn broken_transaction_error_names_the_alias_other<C: Backend>() {
    let db = setup::<C>();
    let outcome = diesel_atomic::db("other").atomic(|| -> Result<(), Error> {
        add_to("other", "Doomed")?;
        diesel_atomic::db("other").set_rollback(true)?;
        assert_broken_transaction(add_to("other", "Refused"), "other");
        // "default" is not affected.
        add_to("default", "Default")?;
        Ok(())
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(db.reporters("other").is_empty());
    assert_eq!(db.reporters("default"), ["Default"]);
}

// ---------------------------------------------------------------------------------------------
// NotInAtomicBlock (rule F1)
// ---------------------------------------------------------------------------------------------

// Rule F1: Django raises TransactionManagementError with this message from get_rollback() and
// set_rollback() outside a block.
fn set_rollback_outside_a_block_is_not_in_atomic_block<C: Backend>() {
    // No registry and no database: the same check on every backend.
    let error = transaction::set_rollback(true).unwrap_err();
    match &error {
        Error::NotInAtomicBlock { alias, operation } => {
            assert_eq!(alias, "default");
            assert_eq!(*operation, "set_rollback");
        }
        other => panic!("expected NotInAtomicBlock, got {other:?}"),
    }
    assert!(error.to_string().contains(ROLLBACK_FLAG_MESSAGE), "{error}");
    assert!(matches!(
        transaction::set_rollback(false),
        Err(Error::NotInAtomicBlock { .. })
    ));
}

// Rule F1, get_rollback().
fn get_rollback_outside_a_block_is_not_in_atomic_block<C: Backend>() {
    // No registry and no database: the same check on every backend.
    let error = transaction::get_rollback().unwrap_err();
    match &error {
        Error::NotInAtomicBlock { alias, operation } => {
            assert_eq!(alias, "default");
            assert_eq!(*operation, "get_rollback");
        }
        other => panic!("expected NotInAtomicBlock, got {other:?}"),
    }
    assert!(error.to_string().contains(ROLLBACK_FLAG_MESSAGE), "{error}");
}

// Rule F1 is per alias: a "default" block does not give "other" a rollback flag.
fn rollback_flag_outside_a_block_of_its_alias_is_not_in_atomic_block<C: Backend>() {
    let _db = setup::<C>();
    // Inside a "default" block, "other" has no block.
    let outcome = transaction::atomic(|| -> Result<(), Error> {
        let error = diesel_atomic::db("other").set_rollback(true).unwrap_err();
        assert!(
            matches!(&error, Error::NotInAtomicBlock { alias, .. } if alias == "other"),
            "{error:?}"
        );
        assert!(error.to_string().contains("'other'"), "{error}");
        assert!(diesel_atomic::db("other").get_rollback().is_err());
        Ok(())
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    // And after a block ended, the flag is out of reach again.
    assert!(matches!(
        transaction::get_rollback(),
        Err(Error::NotInAtomicBlock { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The process-wide registry (the one test of this binary that calls install)
// ---------------------------------------------------------------------------------------------

/// `install` replaces the process-wide registry: the backends' runs of the install test take
/// turns under this lock, so that no run sees the registry of another.
static INSTALL_TURN: Mutex<()> = Mutex::new(());

// API.md §2: install is process-wide; enter is this thread's and takes precedence.
fn installed_registry_serves_threads_without_one_and_enter_takes_precedence<C: Backend>() {
    // The backends' runs of this test run in parallel threads and install() replaces the
    // registry, so they take turns; each also has an alias of its own, so that a registry a
    // previous run left installed can never pass for this run's.
    let _turn = INSTALL_TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let alias: &'static str = match C::KIND {
        Kind::Sqlite => "installed_only_by_errors_rs_sqlite",
        Kind::Postgres => "installed_only_by_errors_rs_postgres",
        Kind::Mysql => "installed_only_by_errors_rs_mysql",
    };
    // The installed alias is another pool on the database of "other". `setup` enters its
    // registry on this thread, so the steps that need a thread without a registry of its own
    // run on fresh threads.
    let db = setup::<C>();
    Databases::new()
        .add(alias, Database::new(db.new_pool("other")))
        .install()
        .expect("install");

    // A thread that entered no registry uses the installed one.
    std::thread::spawn(move || {
        diesel_atomic::db(alias).atomic(|| -> Result<(), Error> {
            assert!(diesel_atomic::db(alias).in_atomic_block());
            add_to_typed::<C>(alias, "FromThread")
        })
    })
    .join()
    .expect("the thread passed")
    .expect("the installed registry served it");

    let databases = db.databases.clone();
    std::thread::spawn(move || {
        // enter() takes precedence on this thread.
        {
            let _guard = TestDb::<C>::enter(&databases);
            let hidden = add_to(alias, "Hidden");
            assert!(
                matches!(&hidden, Err(Error::UnknownAlias { known, .. }) if known == &["default", "other"]),
                "{hidden:?}"
            );
        }
        // Once the guard is gone, the installed registry is back.
        add_to_typed::<C>(alias, "AfterGuard").expect("the installed registry is in force again");
    })
    .join()
    .expect("the thread passed");

    assert_eq!(db.reporters("other"), ["AfterGuard", "FromThread"]);
}

backend_tests!(
    connection_inside_connection_is_connection_in_use,
    connection_inside_connection_in_a_block_is_connection_in_use,
    ambient_block_inside_connection_is_connection_in_use,
    connection_of_the_wrong_type_is_wrong_connection_type,
    wrong_connection_type_inside_a_block_leaves_the_block_usable,
    multi_connection_enum_over_the_pools_connection_type_is_wrong_connection_type,
    durable_block_directly_inside_a_test_transaction_is_allowed,
    durable_block_under_a_user_block_in_a_test_transaction_is_durable_nested,
    durable_block_inside_another_block_is_durable_nested,
    durable_block_nested_on_other_names_other,
    durable_explicit_block_on_the_lent_connection_is_durable_nested,
    queries_after_set_rollback_true_are_transaction_management_errors,
    queries_after_a_failed_merged_block_are_transaction_management_errors,
    set_rollback_false_then_savepoint_rollback_recovers_a_broken_transaction,
    broken_transaction_error_names_the_alias_other,
    set_rollback_outside_a_block_is_not_in_atomic_block,
    get_rollback_outside_a_block_is_not_in_atomic_block,
    rollback_flag_outside_a_block_of_its_alias_is_not_in_atomic_block,
    installed_registry_serves_threads_without_one_and_enter_takes_precedence,
);
