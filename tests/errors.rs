//! Misuse reported as errors (API.md §3, §8; rules E1, F1, F3), and the process-wide registry.
//!
//! `Databases::install` is tested here, in its own test binary, because it is process-wide:
//! in tests/modes.rs it would hide the `Error::NotConfigured` checked there. No test in this
//! file depends on the absence of an installed registry.

mod common;

use common::*;
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

/// How many reporters the default alias's ambient connection sees (its open block included).
fn visible_reporters() -> Result<i64, Error> {
    connection(|conn: &mut SqliteConnection| {
        reporters::table
            .count()
            .get_result::<i64>(conn)
            .map_err(Error::from)
    })
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
#[test]
fn connection_inside_connection_is_connection_in_use() {
    let db = setup();
    let outcome = connection(|conn: &mut SqliteConnection| -> Result<(), TestError> {
        let nested = connection(|_: &mut SqliteConnection| Ok::<_, Error>(()));
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
#[test]
fn connection_inside_connection_in_a_block_is_connection_in_use() {
    let db = setup();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Before")?;
        connection(|conn: &mut SqliteConnection| -> Result<(), TestError> {
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
#[test]
fn ambient_block_inside_connection_is_connection_in_use() {
    let db = setup();
    // Outside any block, and inside one.
    let outside = connection(|_: &mut SqliteConnection| Ok::<_, Error>(ambient_block()));
    assert!(
        matches!(&outside, Ok(Err(Error::ConnectionInUse { alias })) if alias == "default"),
        "{outside:?}"
    );
    let inside = transaction::atomic(|| {
        connection(|_: &mut SqliteConnection| {
            Ok::<_, Error>(transaction::atomic(|| Ok::<_, Error>(())))
        })
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

type WrongType = PooledConnection<ConnectionManager<SqliteConnection>>;

// API.md §3: "A connection of the wrong type is `Error::WrongConnectionType`".
#[test]
fn connection_of_the_wrong_type_is_wrong_connection_type() {
    let db = setup();
    let wrong = connection(|_: &mut WrongType| Ok::<_, Error>(()));
    match &wrong {
        Err(Error::WrongConnectionType { alias, expected }) => {
            assert_eq!(alias, "default");
            assert_eq!(*expected, std::any::type_name::<SqliteConnection>());
        }
        other => panic!("expected WrongConnectionType, got {other:?}"),
    }
    let message = wrong.unwrap_err().to_string();
    assert!(message.contains("'default'"), "{message}");
    assert!(message.contains("SqliteConnection"), "{message}");
    // The connection went back: the right type works now.
    add("Right").expect("the alias is free");
    assert_eq!(db.reporters("default"), ["Right"]);
}

// API.md §3: WrongConnectionType gives the block's connection back unharmed.
#[test]
fn wrong_connection_type_inside_a_block_leaves_the_block_usable() {
    let db = setup();
    let outcome = transaction::atomic(|| -> Result<(), TestError> {
        add("Before")?;
        let wrong = diesel_atomic::db("default").connection(|_: &mut WrongType| Ok::<_, Error>(()));
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

#[derive(diesel::MultiConnection)]
enum AnyConnection {
    Sqlite(SqliteConnection),
}

// API.md §3: a MultiConnection enum is another type than the pool's SqliteConnection.
#[test]
fn multi_connection_enum_over_a_sqlite_pool_is_wrong_connection_type() {
    let _db = setup();
    let wrong = connection(|_: &mut AnyConnection| Ok::<_, Error>(()));
    assert!(
        matches!(&wrong, Err(Error::WrongConnectionType { alias, expected })
            if alias == "default" && expected.ends_with("SqliteConnection")),
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
#[test]
fn durable_block_directly_inside_a_test_transaction_is_allowed() {
    let db = setup();
    {
        let _test = TestTransaction::begin().expect("begin");
        durable_add("Durable").expect("allowed directly under a TestTransaction");
        Atomic::new()
            .durable(true)
            .run(|| add_to("default", "Builder"))
            .expect("the builder form too");
        assert_eq!(visible_reporters().unwrap(), 2);
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
#[test]
fn durable_block_under_a_user_block_in_a_test_transaction_is_durable_nested() {
    let _db = setup();
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
    assert_eq!(visible_reporters().unwrap(), 1, "only the user block's row");
}

// Follows Django's DurableTests.test_nested_inner_durable (rule E1: no SQL, no state change).
#[test]
fn durable_block_inside_another_block_is_durable_nested() {
    let db = setup();
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
#[test]
fn durable_block_nested_on_other_names_other() {
    let db = setup();
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
fn durable_explicit(conn: &mut SqliteConnection, name: &str) -> Result<(), Error> {
    insert_reporter(conn, name, "")?;
    Ok(())
}

// Rule E1 in explicit mode: nesting on the lent connection is nesting.
#[test]
fn durable_explicit_block_on_the_lent_connection_is_durable_nested() {
    let db = setup();
    let outcome = transaction::atomic(|| -> Result<(), Error> {
        add_to("default", "Outer")?;
        connection(|conn: &mut SqliteConnection| {
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
#[test]
fn queries_after_set_rollback_true_are_transaction_management_errors() {
    let db = setup();
    let outcome = transaction::atomic(|| -> Result<&'static str, Error> {
        add_to("default", "Doomed")?;
        transaction::set_rollback(true)?;
        assert_broken_transaction(add_to("default", "Refused"), "default");
        assert_broken_transaction(visible_reporters(), "default");
        Ok("silent")
    });
    assert!(matches!(outcome, Ok("silent")), "{outcome:?}");
    assert!(db.reporters("default").is_empty());
}

// Follows Django's AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction: a
// failed savepoint = false block marks the outer block (X2) and queries are refused.
#[test]
fn queries_after_a_failed_merged_block_are_transaction_management_errors() {
    let db = setup();
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
#[test]
fn set_rollback_false_then_savepoint_rollback_recovers_a_broken_transaction() {
    let db = setup();
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
#[test]
fn broken_transaction_error_names_the_alias_other() {
    let db = setup();
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
#[test]
fn set_rollback_outside_a_block_is_not_in_atomic_block() {
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
#[test]
fn get_rollback_outside_a_block_is_not_in_atomic_block() {
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
#[test]
fn rollback_flag_outside_a_block_of_its_alias_is_not_in_atomic_block() {
    let _db = setup();
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

// API.md §2: install is process-wide; enter is this thread's and takes precedence.
#[test]
fn installed_registry_serves_threads_without_one_and_enter_takes_precedence() {
    const ALIAS: &str = "installed_only_by_errors_rs";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("installed.sqlite3");
    Databases::new()
        .add(ALIAS, Database::new(pool_at(&path)))
        .install()
        .expect("install");

    // A thread that entered no registry uses the installed one.
    std::thread::spawn(|| {
        diesel_atomic::db(ALIAS).atomic(|| -> Result<(), Error> {
            assert!(diesel_atomic::db(ALIAS).in_atomic_block());
            add_to(ALIAS, "FromThread")
        })
    })
    .join()
    .expect("the thread passed")
    .expect("the installed registry served it");

    // enter() takes precedence on this thread.
    {
        let _db = setup();
        let hidden = add_to(ALIAS, "Hidden");
        assert!(
            matches!(&hidden, Err(Error::UnknownAlias { known, .. }) if known == &["default", "other"]),
            "{hidden:?}"
        );
    }
    // Once the guard is gone, the installed registry is back.
    add_to(ALIAS, "AfterGuard").expect("the installed registry is in force again");

    let mut raw = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let mut found: Vec<String> = reporters::table
        .select(reporters::first_name)
        .load(&mut raw)
        .unwrap();
    found.sort();
    assert_eq!(found, ["AfterGuard", "FromThread"]);
}
