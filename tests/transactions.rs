//! Port of Django's tests/transactions/tests.py (Django 5.x), durable tests included.
//!
//! Every case runs on every backend (SQLite, PostgreSQL, MariaDB), as `...::sqlite::name`,
//! `...::postgres::name` and `...::mysql::name`; where a backend documents a different
//! behaviour, the test branches on `C::KIND` as Django's suite does on `connection.features`.
//! AtomicMySQLTests runs on MariaDB only, as in Django.
//!
//! Django's `Exception("Oops")` becomes a body that returns `Err(TestError::Oops)`; where a
//! panic is the natural Rust equivalent, an extra `..._on_panic` test checks that the block
//! rolls back and resumes the original panic (SEMANTICS X3).
//!
//! AtomicTests runs three times (see `atomic_tests!`, after its bodies): with nothing around it,
//! inside a `testing::TestTransaction` and inside an enclosing `transaction::atomic` block.
//! The last two are Django's AtomicInsideTransactionTests: the test's outermost blocks become
//! savepoints, so rows are read through the enclosing transaction's own connection.
//! DurableTestsBase runs twice, as Django's DurableTransactionTests (plain) and DurableTests
//! (inside `TestTransaction`, which the durable check ignores: SEMANTICS T1).
//!
//! Skipped Django tests, with the reason:
//! - AtomicWithoutAutocommitTests (re-run of AtomicTests after `set_autocommit(False)`): there
//!   is no `set_autocommit`; diesel has no manual-autocommit mode.
//! - AtomicErrorsTests.test_atomic_prevents_setting_autocommit: no `set_autocommit` API.
//! - AtomicErrorsTests.test_atomic_prevents_calling_transaction_methods: no `commit()` /
//!   `rollback()` API outside blocks.
//! - AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction_after_client_close:
//!   there is no `connection.close()` API (Django skips it on SQLite too:
//!   `test_db_allows_multiple_connections` is false).
//! - AtomicMiscTests.test_wrap_callable_instance: Python-only (decorating a callable object);
//!   Rust closures and methods are covered by the closure and attribute forms.
//! - NonAutocommitTests (test_orm_query_after_error_and_rollback,
//!   test_orm_query_without_autocommit): no `set_autocommit` / `rollback()`; diesel has no
//!   manual-autocommit mode.

mod common;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use common::*;
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use diesel_atomic::testing::TestTransaction;
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{Error, atomic};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Django's `"Oops, that's his last name"`, as a panic payload.
const EXPECTED_PANIC: &str = "Oops, that's his last name";

/// Django's message for queries in a transaction marked for rollback (SEMANTICS F3).
const BROKEN_TRANSACTION: &str = "An error occurred in the current transaction. \
     You can't execute queries until the end of the 'atomic' block.";

/// Django's message for a durable block that is not outermost (SEMANTICS E1).
const DURABLE_NESTED: &str = "A durable atomic block cannot be nested within another atomic block.";

/// What surrounds a test body (Django's AtomicTests vs AtomicInsideTransactionTests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Enclosing {
    Nothing,
    TestTransaction,
    AtomicBlock,
}

/// One test's databases and what encloses its body.
struct Ctx<C: Backend> {
    db: TestDb<C>,
    enclosing: Enclosing,
}

impl<C: Backend> Ctx<C> {
    /// The reporters after the test's own blocks ended: the committed rows (through a fresh
    /// connection) when nothing encloses the test, else what the enclosing transaction sees.
    fn reporters(&self) -> Vec<String> {
        match self.enclosing {
            Enclosing::Nothing => self.db.reporters("default"),
            Enclosing::TestTransaction | Enclosing::AtomicBlock => visible_reporters(),
        }
    }

    /// diesel's transaction depth around the test's blocks: diesel names the savepoint a block
    /// opens at depth `d` `diesel_savepoint_{d}`.
    fn enclosing_depth(&self) -> u32 {
        match self.enclosing {
            Enclosing::Nothing => 0,
            Enclosing::TestTransaction | Enclosing::AtomicBlock => 1,
        }
    }
}

/// Runs a body with nothing around it (Django's TransactionTestCase: real commits).
fn run_plain<C: Backend>(body: fn(&Ctx<C>)) {
    let ctx = Ctx {
        db: setup::<C>(),
        enclosing: Enclosing::Nothing,
    };
    body(&ctx);
    assert!(!transaction::in_atomic_block(), "every block was left");
}

/// Runs a body inside a `TestTransaction` (Django's TestCase); everything rolls back after.
fn run_in_test_transaction<C: Backend>(body: fn(&Ctx<C>)) {
    let ctx = Ctx {
        db: setup::<C>(),
        enclosing: Enclosing::TestTransaction,
    };
    let test = TestTransaction::begin().expect("begin the test transaction");
    body(&ctx);
    assert!(
        transaction::in_atomic_block(),
        "the test transaction is still open"
    );
    assert!(
        !transaction::get_rollback().unwrap(),
        "the test transaction is healthy"
    );
    drop(test);
    assert!(!transaction::in_atomic_block());
    assert!(
        ctx.db.reporters("default").is_empty(),
        "dropping the TestTransaction rolls everything back (T1)"
    );
}

/// Runs a body inside an enclosing atomic block (Django's AtomicInsideTransactionTests), which
/// then commits what the body left.
fn run_in_atomic_block<C: Backend>(body: fn(&Ctx<C>)) {
    let ctx = Ctx {
        db: setup::<C>(),
        enclosing: Enclosing::AtomicBlock,
    };
    let seen = transaction::atomic(|| {
        body(&ctx);
        assert!(
            !transaction::get_rollback()?,
            "the enclosing block is healthy"
        );
        Ok::<_, Error>(visible_reporters())
    })
    .expect("the enclosing block commits");
    assert!(!transaction::in_atomic_block());
    assert_eq!(
        ctx.db.reporters("default"),
        seen,
        "the enclosing block committed its rows"
    );
}

/// The reporters the default alias's current connection sees (inside the open transaction),
/// or the error the runtime refuses the query with.
fn try_visible_reporters() -> Result<Vec<String>, Error> {
    on_alias("default", |conn| conn.reporter_names().map_err(Error::from))
}

/// Row operations by primary key, which [`Ops`] does not offer; implemented for each backend's
/// connection type so that the SQL is diesel's DSL on every backend.
trait RowOps {
    /// Inserts a reporter with a given primary key (Django's `save(force_insert=True)`).
    fn insert_reporter_with_id(&mut self, id: i32, first: &str, last: &str) -> QueryResult<()>;
    /// Overwrites the names of reporter `id` (Django's `save(force_update=True)`).
    fn update_reporter(&mut self, id: i32, first: &str, last: &str) -> QueryResult<usize>;
    /// Every `(id, first_name, last_name)` row, by id.
    fn reporter_rows(&mut self) -> QueryResult<Vec<(i32, String, String)>>;
}

macro_rules! row_ops {
    ($conn:ty) => {
        impl RowOps for $conn {
            fn insert_reporter_with_id(
                &mut self,
                id: i32,
                first: &str,
                last: &str,
            ) -> QueryResult<()> {
                diesel::insert_into(reporters::table)
                    .values((
                        reporters::id.eq(id),
                        reporters::first_name.eq(first),
                        reporters::last_name.eq(last),
                    ))
                    .execute(self)
                    .map(drop)
            }

            fn update_reporter(&mut self, id: i32, first: &str, last: &str) -> QueryResult<usize> {
                diesel::update(reporters::table.find(id))
                    .set((
                        reporters::first_name.eq(first),
                        reporters::last_name.eq(last),
                    ))
                    .execute(self)
            }

            fn reporter_rows(&mut self) -> QueryResult<Vec<(i32, String, String)>> {
                reporters::table.order(reporters::id).load(self)
            }
        }
    };
}

row_ops!(diesel::SqliteConnection);
#[cfg(feature = "postgres")]
row_ops!(diesel::PgConnection);
#[cfg(feature = "mysql")]
row_ops!(diesel::MysqlConnection);

/// `conn` as its backend's [`RowOps`].
fn row_ops<C: Backend>(conn: &mut C) -> &mut dyn RowOps {
    let conn: &mut dyn Any = conn;
    if conn.is::<diesel::SqliteConnection>() {
        return conn.downcast_mut::<diesel::SqliteConnection>().unwrap();
    }
    #[cfg(feature = "postgres")]
    if conn.is::<diesel::PgConnection>() {
        return conn.downcast_mut::<diesel::PgConnection>().unwrap();
    }
    #[cfg(feature = "mysql")]
    if conn.is::<diesel::MysqlConnection>() {
        return conn.downcast_mut::<diesel::MysqlConnection>().unwrap();
    }
    unreachable!("every Backend implements RowOps")
}

/// Runs SQL through the default alias's ambient connection.
fn execute_ambient<C: Backend>(sql: &str) -> Result<(), Error> {
    diesel_atomic::connection(|conn: &mut C| conn.batch_execute(sql).map_err(Error::from))
}

/// Committed `(id, first_name, last_name)` rows on "default".
fn committed_rows<C: Backend>(db: &TestDb<C>) -> Vec<(i32, String, String)> {
    row_ops(&mut db.raw("default"))
        .reporter_rows()
        .expect("read reporters")
}

/// Django's failing body: creates the reporter `first_name`, then raises `Exception("Oops")`.
fn create_then_raise(first_name: &str) -> Result<(), TestError> {
    create_reporter(first_name, "")?;
    Err(TestError::Oops)
}

/// [`create_then_raise`] with the exception as a panic whose payload is `EXPECTED_PANIC`.
fn create_then_panic(first_name: &str) -> Result<(), TestError> {
    create_reporter(first_name, "")?;
    panic!("Oops, that's his last name")
}

/// Runs `f`, which must panic with `EXPECTED_PANIC` out of the blocks it opens: the blocks
/// resume the original payload unchanged (SEMANTICS X3).
fn assert_resumes_expected_panic<T>(f: impl FnOnce() -> T) {
    quiet_expected_panics(EXPECTED_PANIC);
    let payload = match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("the panic must propagate out of the atomic block"),
        Err(payload) => payload,
    };
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&EXPECTED_PANIC),
        "the block resumes the original panic payload"
    );
}

fn assert_broken_transaction<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::TransactionManagement(message)) => assert!(
            message.contains(BROKEN_TRANSACTION),
            "unexpected message: {message}"
        ),
        other => panic!("expected Error::TransactionManagement, got {other:?}"),
    }
}

fn assert_durable_nested<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(error @ Error::DurableNested { .. }) => {
            assert!(
                matches!(&error, Error::DurableNested { alias } if alias == "default"),
                "{error:?}"
            );
            assert!(error.to_string().contains(DURABLE_NESTED), "{error}");
        }
        other => panic!("expected Error::DurableNested, got {other:?}"),
    }
}

fn assert_database_error<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(
        matches!(result, Err(Error::Database(_))),
        "expected Error::Database, got {result:?}"
    );
}

/// Instantiates `#[test]` functions `module::backend::name` that run `name` under `runner` on
/// every backend (`sqlite`, and `postgres` / `mysql` with their crate features), each through
/// `common::run`, so that a server test without its server is skipped as `backend_tests!` does.
macro_rules! instantiate {
    ($module:ident, $runner:ident, [$($name:ident),* $(,)?]) => {
        mod $module {
            instantiate!(@backend sqlite, diesel::SqliteConnection, $runner, [$($name),*]);
            #[cfg(feature = "postgres")]
            instantiate!(@backend postgres, diesel::PgConnection, $runner, [$($name),*]);
            #[cfg(feature = "mysql")]
            instantiate!(@backend mysql, diesel::MysqlConnection, $runner, [$($name),*]);
        }
    };
    (@backend $backend:ident, $conn:ty, $runner:ident, [$($name:ident),*]) => {
        mod $backend {
            $(
                #[test]
                fn $name() {
                    crate::common::run::<$conn>(|| {
                        crate::$runner::<$conn>(crate::$name::<$conn>)
                    });
                }
            )*
        }
    };
}

/// Instantiates every AtomicTests body three times: AtomicTests itself, and Django's
/// AtomicInsideTransactionTests (row 22) both inside a `TestTransaction` and inside an
/// enclosing atomic block.
macro_rules! atomic_tests {
    ($($name:ident),* $(,)?) => {
        // Django: AtomicTests
        instantiate!(atomic_plain, run_plain, [$($name),*]);
        // Django: AtomicInsideTransactionTests (enclosing TestCase-style transaction)
        instantiate!(atomic_inside_test_transaction, run_in_test_transaction, [$($name),*]);
        // Django: AtomicInsideTransactionTests (enclosing atomic block, then committed)
        instantiate!(atomic_inside_atomic_block, run_in_atomic_block, [$($name),*]);
    };
}

// ---------------------------------------------------------------------------------------------
// AtomicTests (rows 1-21) and AtomicInsideTransactionTests (row 22)
// ---------------------------------------------------------------------------------------------

// Django: AtomicTests.test_decorator_syntax_commit
fn decorator_commit_keeps_row<C: Backend>(ctx: &Ctx<C>) {
    #[atomic]
    fn make_reporter() -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        Ok(())
    }
    make_reporter().unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: AtomicTests.test_decorator_syntax_rollback
fn decorator_rollback_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    #[atomic]
    fn make_reporter() -> Result<(), TestError> {
        create_then_raise("Haddock")
    }
    assert_eq!(make_reporter(), Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_decorator_syntax_rollback
fn decorator_rollback_on_panic<C: Backend>(ctx: &Ctx<C>) {
    #[atomic]
    fn make_reporter() -> Result<(), TestError> {
        create_then_panic("Haddock")
    }
    assert_resumes_expected_panic(make_reporter);
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_alternate_decorator_syntax_commit
fn called_decorator_commit_keeps_row<C: Backend>(ctx: &Ctx<C>) {
    #[atomic()]
    fn make_reporter() -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        Ok(())
    }
    make_reporter().unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: AtomicTests.test_alternate_decorator_syntax_rollback
fn called_decorator_rollback_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    #[atomic()]
    fn make_reporter() -> Result<(), TestError> {
        create_then_raise("Haddock")
    }
    assert_eq!(make_reporter(), Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_commit
fn commit_keeps_row<C: Backend>(ctx: &Ctx<C>) {
    transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: AtomicTests.test_rollback
fn rollback_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| create_then_raise("Haddock"));
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_rollback
fn rollback_on_panic<C: Backend>(ctx: &Ctx<C>) {
    assert_resumes_expected_panic(|| transaction::atomic(|| create_then_panic("Haddock")));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_nested_commit_commit
fn nested_commit_commit_keeps_both_rows<C: Backend>(ctx: &Ctx<C>) {
    transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        transaction::atomic(|| create_reporter("Archibald", "Haddock"))?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(ctx.reporters(), ["Archibald", "Tintin"]);
}

// Django: AtomicTests.test_nested_commit_rollback
fn nested_commit_rollback_keeps_outer_row<C: Backend>(ctx: &Ctx<C>) {
    transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        let inner = transaction::atomic(|| create_then_raise("Haddock"));
        assert_eq!(inner, Err(TestError::Oops));
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: AtomicTests.test_nested_commit_rollback
fn nested_commit_rollback_on_panic_keeps_outer_row<C: Backend>(ctx: &Ctx<C>) {
    transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        assert_resumes_expected_panic(|| transaction::atomic(|| create_then_panic("Haddock")));
        assert!(
            !transaction::get_rollback()?,
            "the savepoint absorbed the panic"
        );
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: AtomicTests.test_nested_rollback_commit
fn nested_rollback_commit_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        transaction::atomic(|| create_reporter("Haddock", ""))?;
        Err(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_nested_rollback_commit
fn nested_rollback_commit_on_panic_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    assert_resumes_expected_panic(|| {
        transaction::atomic(|| -> Result<(), TestError> {
            create_reporter("Tintin", "")?;
            transaction::atomic(|| create_reporter("Haddock", ""))?;
            panic!("Oops, that's his last name")
        })
    });
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_nested_rollback_rollback
fn nested_rollback_rollback_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        let inner = transaction::atomic(|| create_then_raise("Haddock"));
        assert_eq!(inner, Err(TestError::Oops));
        Err(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_merged_commit_commit
fn merged_commit_commit_keeps_both_rows<C: Backend>(ctx: &Ctx<C>) {
    transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        Atomic::new()
            .savepoint(false)
            .run(|| create_reporter("Archibald", "Haddock"))?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(ctx.reporters(), ["Archibald", "Tintin"]);
}

// Django: AtomicTests.test_merged_commit_rollback
fn merged_commit_rollback_silently_undoes_outer_row<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        let inner = Atomic::new()
            .savepoint(false)
            .run(|| create_then_raise("Haddock"));
        assert_eq!(inner, Err(TestError::Oops));
        // X2: the merged block marked the outer one for rollback.
        assert!(transaction::get_rollback()?);
        Ok::<_, TestError>("outer body finished")
    });
    // Writes in the outer block are rolled back too, silently (X2, X3).
    assert_eq!(result, Ok("outer body finished"));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_merged_commit_rollback
fn merged_commit_rollback_on_panic_silently_undoes_outer_row<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        assert_resumes_expected_panic(|| {
            Atomic::new()
                .savepoint(false)
                .run(|| create_then_panic("Haddock"))
        });
        assert!(transaction::get_rollback()?);
        Ok::<_, TestError>(())
    });
    assert_eq!(result, Ok(()));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_merged_rollback_commit
fn merged_rollback_commit_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        Atomic::new()
            .savepoint(false)
            .run(|| create_reporter("Haddock", ""))?;
        Err(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_merged_rollback_rollback
fn merged_rollback_rollback_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        let inner = Atomic::new()
            .savepoint(false)
            .run(|| create_then_raise("Haddock"));
        assert_eq!(inner, Err(TestError::Oops));
        Err(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_reuse_commit_commit
fn reused_atomic_commit_commit_keeps_both_rows<C: Backend>(ctx: &Ctx<C>) {
    let block = Atomic::new();
    block
        .run(|| {
            create_reporter("Tintin", "")?;
            block.run(|| create_reporter("Archibald", "Haddock"))?;
            Ok::<_, TestError>(())
        })
        .unwrap();
    assert_eq!(ctx.reporters(), ["Archibald", "Tintin"]);
}

// Django: AtomicTests.test_reuse_commit_rollback
fn reused_atomic_commit_rollback_keeps_outer_row<C: Backend>(ctx: &Ctx<C>) {
    let block = Atomic::new();
    block
        .run(|| {
            create_reporter("Tintin", "")?;
            let inner = block.run(|| create_then_raise("Haddock"));
            assert_eq!(inner, Err(TestError::Oops));
            Ok::<_, TestError>(())
        })
        .unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: AtomicTests.test_reuse_rollback_commit
fn reused_atomic_rollback_commit_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    let block = Atomic::new();
    let result = block.run(|| -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        block.run(|| create_reporter("Haddock", ""))?;
        Err(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_reuse_rollback_rollback
fn reused_atomic_rollback_rollback_leaves_table_empty<C: Backend>(ctx: &Ctx<C>) {
    let block = Atomic::new();
    let result = block.run(|| -> Result<(), TestError> {
        create_reporter("Tintin", "")?;
        let inner = block.run(|| create_then_raise("Haddock"));
        assert_eq!(inner, Err(TestError::Oops));
        Err(TestError::Oops)
    });
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_force_rollback
fn set_rollback_true_rolls_back_without_error<C: Backend>(ctx: &Ctx<C>) {
    let result = transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        // The block is healthy until the flag is set (F2).
        assert!(!transaction::get_rollback()?);
        transaction::set_rollback(true)?;
        Ok::<_, TestError>("no error")
    });
    assert_eq!(result, Ok("no error"));
    assert!(ctx.reporters().is_empty());
}

// Django: AtomicTests.test_prevent_rollback
fn set_rollback_false_and_savepoint_rollback_recover_the_block<C: Backend>(ctx: &Ctx<C>) {
    transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        let savepoint = transaction::savepoint()?;
        // A database error inside an inner block without a savepoint marks the block (X2).
        let inner = Atomic::new()
            .savepoint(false)
            .run(|| execute_ambient::<C>("SELECT no_such_col FROM reporters"));
        assert_database_error(inner);
        assert!(transaction::get_rollback()?);
        // Recover manually, in the order F3 prescribes.
        transaction::set_rollback(false)?;
        transaction::savepoint_rollback(savepoint)?;
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: AtomicTests.test_failure_on_exit_transaction
fn failed_savepoint_release_marks_outer_block_for_rollback<C: Backend>(ctx: &Ctx<C>) {
    // The inner block's savepoint is the one diesel opens at depth (enclosing + outer block).
    let inner_savepoint = format!("diesel_savepoint_{}", ctx.enclosing_depth() + 1);
    let outer = transaction::atomic(|| {
        let inner = transaction::atomic(|| {
            create_reporter("Tintin", "")?;
            assert_eq!(try_visible_reporters()?.len(), 1);
            // Release the block's savepoint behind its back, so that the block's own RELEASE
            // fails on exit although its body succeeded (X4).
            execute_ambient::<C>(&format!("RELEASE SAVEPOINT {inner_savepoint}"))
                .expect("the inner block's savepoint exists");
            Ok::<_, Error>(())
        });
        assert_database_error(inner);
        assert_broken_transaction(try_visible_reporters());
        assert!(transaction::get_rollback()?);
        Ok::<_, Error>(())
    });
    // The outer block rolls back silently on exit.
    assert!(matches!(outer, Ok(())), "{outer:?}");
    assert!(ctx.reporters().is_empty());
}

atomic_tests! {
    decorator_commit_keeps_row,
    decorator_rollback_leaves_table_empty,
    decorator_rollback_on_panic,
    called_decorator_commit_keeps_row,
    called_decorator_rollback_leaves_table_empty,
    commit_keeps_row,
    rollback_leaves_table_empty,
    rollback_on_panic,
    nested_commit_commit_keeps_both_rows,
    nested_commit_rollback_keeps_outer_row,
    nested_commit_rollback_on_panic_keeps_outer_row,
    nested_rollback_commit_leaves_table_empty,
    nested_rollback_commit_on_panic_leaves_table_empty,
    nested_rollback_rollback_leaves_table_empty,
    merged_commit_commit_keeps_both_rows,
    merged_commit_rollback_silently_undoes_outer_row,
    merged_commit_rollback_on_panic_silently_undoes_outer_row,
    merged_rollback_commit_leaves_table_empty,
    merged_rollback_rollback_leaves_table_empty,
    reused_atomic_commit_commit_keeps_both_rows,
    reused_atomic_commit_rollback_keeps_outer_row,
    reused_atomic_rollback_commit_leaves_table_empty,
    reused_atomic_rollback_rollback_leaves_table_empty,
    set_rollback_true_rolls_back_without_error,
    set_rollback_false_and_savepoint_rollback_recover_the_block,
    failed_savepoint_release_marks_outer_block_for_rollback,
}

// ---------------------------------------------------------------------------------------------
// AtomicMergeTests (rows 24, 25)
// ---------------------------------------------------------------------------------------------

/// Django's "Temporarily mark the connection as not needing rollback to check it": the block is
/// marked for rollback, yet with the flag cleared its connection still sees `count` reporters;
/// the flag is set again afterwards.
fn assert_marked_for_rollback_with_reporters_still_there(count: usize) -> Result<(), TestError> {
    assert!(transaction::get_rollback()?);
    transaction::set_rollback(false)?;
    assert_eq!(try_visible_reporters()?.len(), count);
    transaction::set_rollback(true)?;
    Ok(())
}

/// The middle block's body in both AtomicMergeTests: creates Archibald, then a block without a
/// savepoint creates Calculus and raises.
fn create_archibald_then_a_failing_merged_calculus() -> Result<(), TestError> {
    create_reporter("Archibald", "Haddock")?;
    let inner = Atomic::new()
        .savepoint(false)
        .run(|| create_then_raise("Calculus"));
    assert_eq!(inner, Err(TestError::Oops));
    // The third insert couldn't be rolled back: look at it with the flag cleared.
    assert_marked_for_rollback_with_reporters_still_there(3)
}

// Django: AtomicMergeTests.test_merged_outer_rollback
fn merged_blocks_roll_back_up_to_the_outermost_savepoint<C: Backend>() {
    let db = setup::<C>();
    let outer = transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        Atomic::new()
            .savepoint(false)
            .run(create_archibald_then_a_failing_merged_calculus)?;
        // Neither could the second: the merged block passed the flag on to its parent.
        assert_marked_for_rollback_with_reporters_still_there(3)
    });
    // The first block has a savepoint (it is the transaction) and rolls back.
    assert_eq!(outer, Ok(()));
    assert!(db.reporters("default").is_empty());
}

// Django: AtomicMergeTests.test_merged_inner_savepoint_rollback
fn merged_block_failure_rolls_back_to_the_nearest_savepoint<C: Backend>() {
    let db = setup::<C>();
    transaction::atomic(|| {
        create_reporter("Tintin", "")?;
        let middle = transaction::atomic(create_archibald_then_a_failing_merged_calculus);
        // The middle block has a savepoint: it rolls back to it silently.
        assert_eq!(middle, Ok(()));
        assert!(!transaction::get_rollback()?);
        assert_eq!(try_visible_reporters()?, ["Tintin"]);
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

// ---------------------------------------------------------------------------------------------
// AtomicErrorsTests (rows 28, 29)
// ---------------------------------------------------------------------------------------------

/// Inserts a reporter with `id` inside a block without a savepoint: a failure marks the
/// enclosing block for rollback, as Django's `mark_for_rollback_on_error` around `save()` does.
fn force_insert_marking_for_rollback<C: Backend>(id: i32) -> Result<(), Error> {
    Atomic::new().savepoint(false).run(|| {
        diesel_atomic::connection(|conn: &mut C| {
            row_ops(conn)
                .insert_reporter_with_id(id, "Cuthbert", "Calculus")
                .map_err(Error::from)
        })
    })
}

/// Django's `r2.save(force_update=True)`: overwrites the row `id` through the ambient connection.
fn force_update<C: Backend>(id: i32) -> Result<usize, Error> {
    diesel_atomic::connection(|conn: &mut C| {
        row_ops(conn)
            .update_reporter(id, "Cuthbert", "Calculus")
            .map_err(Error::from)
    })
}

fn assert_unique_violation(result: Result<(), Error>) {
    assert!(
        matches!(
            result,
            Err(Error::Database(diesel::result::Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _
            )))
        ),
        "expected a unique violation, got {result:?}"
    );
}

/// Creates the committed row r1 and returns its id.
fn create_committed_haddock<C: Backend>(db: &TestDb<C>) -> i32 {
    create_reporter("Archibald", "Haddock").unwrap();
    let rows = committed_rows(db);
    assert_eq!(rows.len(), 1);
    rows[0].0
}

// Django: AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction
fn queries_are_refused_in_a_broken_transaction<C: Backend>() {
    let db = setup::<C>();
    let r1 = create_committed_haddock(&db);
    let result = transaction::atomic(|| {
        assert_unique_violation(force_insert_marking_for_rollback::<C>(r1));
        // The transaction is marked as needing rollback (F3). Django also checks that the
        // error's cause is the IntegrityError; `Error::TransactionManagement(String)` carries
        // no cause in the API, and Django's own Atomic exit records none either (R15).
        assert_broken_transaction(force_update::<C>(r1));
        Ok::<_, Error>(())
    });
    assert!(matches!(result, Ok(())), "{result:?}");
    assert_eq!(
        committed_rows(&db),
        [(r1, "Archibald".to_owned(), "Haddock".to_owned())]
    );
}

// Django: AtomicErrorsTests.test_atomic_allows_queries_after_fixing_transaction
//
// Django runs it only `@skipIfDBFeature("atomic_transactions")`, i.e. on SQLite, MySQL and
// Oracle. PostgreSQL aborts the whole transaction on any error and refuses every further
// statement until ROLLBACK (SQLSTATE 25P02, "current transaction is aborted"): clearing the
// flag cannot repair it. There the test checks that instead: the update is refused by the
// server, and the block, whose body returns that error, rolls back and leaves r1 as it was.
fn clearing_the_rollback_flag_allows_queries_again<C: Backend>() {
    let db = setup::<C>();
    let r1 = create_committed_haddock(&db);
    let result = transaction::atomic(|| {
        assert_unique_violation(force_insert_marking_for_rollback::<C>(r1));
        // SQLite and MariaDB do not abort the transaction on an integrity error (R19):
        // clearing the flag makes the connection usable again.
        transaction::set_rollback(false)?;
        assert_eq!(force_update::<C>(r1)?, 1);
        Ok::<_, Error>(())
    });
    if C::KIND == Kind::Postgres {
        match &result {
            Err(Error::Database(diesel::result::Error::DatabaseError(_, info))) => assert!(
                info.message().contains("current transaction is aborted"),
                "unexpected message: {}",
                info.message()
            ),
            other => panic!("expected PostgreSQL to refuse the update, got {other:?}"),
        }
        assert_eq!(
            committed_rows(&db),
            [(r1, "Archibald".to_owned(), "Haddock".to_owned())]
        );
        // The block ended the aborted transaction: every connection is usable again.
        assert_pool_clean(&db.default);
        return;
    }
    result.unwrap();
    assert_eq!(
        committed_rows(&db),
        [(r1, "Cuthbert".to_owned(), "Calculus".to_owned())]
    );
}

// ---------------------------------------------------------------------------------------------
// AtomicMiscTests (rows 33-35, adapted)
// ---------------------------------------------------------------------------------------------

// Django: AtomicMiscTests.test_atomic_does_not_leak_savepoints_on_failure
fn rolled_back_block_savepoint_is_released<C: Backend>() {
    let db = setup::<C>();
    // Django reads the block's savepoint id off the connection; here it is the name diesel
    // gives the first savepoint inside a transaction.
    let outer = transaction::atomic(|| {
        let inner = transaction::atomic(|| -> Result<(), TestError> {
            create_reporter("Tintin", "")?;
            // The name is right: while the block is open, its savepoint exists.
            execute_ambient::<C>("ROLLBACK TO SAVEPOINT diesel_savepoint_1")?;
            create_reporter("Tintin", "")?;
            Err(TestError::Oops)
        });
        assert_eq!(inner, Err(TestError::Oops));
        // Rolling back to the savepoint fails: the block released it after rolling back (M1).
        execute_ambient::<C>("ROLLBACK TO SAVEPOINT diesel_savepoint_1")?;
        Ok::<_, Error>(())
    });
    assert_database_error(outer);
    assert!(!transaction::in_atomic_block());
    // The connection recovered: the next block commits.
    transaction::atomic(|| create_reporter("Archibald", "Haddock")).unwrap();
    assert_eq!(db.reporters("default"), ["Archibald"]);
}

// Django: AtomicMiscTests.test_mark_for_rollback_on_error_in_transaction
fn failing_merged_block_breaks_the_transaction_until_its_end<C: Backend>() {
    let db = setup::<C>();
    // `mark_for_rollback_on_error()` is emulated by a block without a savepoint.
    let outer = Atomic::new().savepoint(false).run(|| {
        let inner = Atomic::new()
            .savepoint(false)
            .run(|| -> Result<(), TestError> {
                // Still in a good state.
                assert!(!transaction::get_rollback()?);
                Err(TestError::Oops)
            });
        assert_eq!(inner, Err(TestError::Oops));
        // The transaction is marked broken ...
        assert!(transaction::get_rollback()?);
        // ... and further queries fail.
        assert_broken_transaction(create_reporter("Tintin", ""));
        Ok::<_, TestError>(())
    });
    assert_eq!(outer, Ok(()));
    // The flag is reset at the end of the transaction, so this just works.
    create_reporter("Haddock", "").unwrap();
    assert_eq!(db.reporters("default"), ["Haddock"]);
}

// Django: AtomicMiscTests.test_mark_for_rollback_on_error_in_autocommit
fn failing_block_in_autocommit_leaves_no_rollback_flag<C: Backend>() {
    let db = setup::<C>();
    assert!(!transaction::in_atomic_block());
    // Outside any block, the emulating block is an outermost transaction of its own.
    let result = Atomic::new()
        .savepoint(false)
        .run(|| -> Result<(), TestError> {
            assert!(!transaction::get_rollback()?);
            create_reporter("Tintin", "")?;
            Err(TestError::Oops)
        });
    assert_eq!(result, Err(TestError::Oops));
    // Nothing is left marked: outside a block the flag does not exist (F1) ...
    assert!(!transaction::in_atomic_block());
    assert!(matches!(
        transaction::get_rollback(),
        Err(Error::NotInAtomicBlock { .. })
    ));
    // ... and further queries work nicely.
    create_reporter("Haddock", "").unwrap();
    assert_eq!(db.reporters("default"), ["Haddock"]);
}

// ---------------------------------------------------------------------------------------------
// AtomicMySQLTests (MariaDB only)
// ---------------------------------------------------------------------------------------------

// Django: AtomicMySQLTests.test_implicit_savepoint_rollback (#22291)
//
// MariaDB/MySQL only, as in Django (`connection.vendor == "mysql"`): on a deadlock InnoDB
// rolls back the victim's whole transaction, savepoints included, so the inner block's
// ROLLBACK TO SAVEPOINT fails. Both blocks must still end and surface the deadlock error.
// SQLite has no row locks, and PostgreSQL aborts only the transaction (its savepoints stay), so
// the test has no counterpart there.
#[cfg(feature = "mysql")]
fn deadlock_rolls_back_the_savepoints_implicitly() {
    use diesel::MysqlConnection;
    use std::sync::mpsc;
    use std::time::Duration;

    let db = setup::<MysqlConnection>();
    let mut conn = db.raw("default");
    row_ops(&mut conn)
        .insert_reporter_with_id(1, "", "")
        .unwrap();
    row_ops(&mut conn)
        .insert_reporter_with_id(2, "", "")
        .unwrap();
    drop(conn);

    let (ready, main_thread_ready) = mpsc::channel::<()>();
    let mut other = db.raw("default");
    let other_thread = std::thread::spawn(move || {
        other.transaction(|conn| {
            reporters::table
                .find(1)
                .select(reporters::id)
                .for_update()
                .first::<i32>(conn)?;
            main_thread_ready.recv().expect("the main thread is ready");
            // 1) This statement waits for the main thread's lock on row 2 ...
            diesel::update(reporters::table.filter(reporters::id.ne(1)))
                .set(reporters::id.eq(2))
                .execute(conn)
        })
    });

    // Two blocks, to enter a transaction and create a savepoint.
    let result = transaction::atomic(|| {
        let inner = transaction::atomic(|| {
            diesel_atomic::connection(|conn: &mut MysqlConnection| {
                reporters::table
                    .find(2)
                    .select(reporters::id)
                    .for_update()
                    .first::<i32>(conn)?;
                ready.send(()).expect("the other thread waits");
                // Nothing tells when the other thread's statement waits for the lock: sleep
                // for a little while, as Django does.
                std::thread::sleep(Duration::from_secs(1));
                // 2) ... and this one closes the cycle. InnoDB rolls back one of the two
                // transactions; of two equally small ones, the one whose request closed the
                // cycle: this one (Django's test relies on that too).
                diesel::update(reporters::table.filter(reporters::id.ne(2)))
                    .set(reporters::id.eq(1))
                    .execute(conn)
                    .map_err(Error::from)
            })
        });
        // The savepoint went with the transaction, so the inner block could not roll back
        // to it: the outer block is marked for rollback instead (#22291).
        assert!(transaction::get_rollback()?);
        inner
    });
    match &result {
        Err(Error::Database(diesel::result::Error::DatabaseError(_, info))) => assert!(
            info.message().contains("Deadlock found"),
            "unexpected message: {}",
            info.message()
        ),
        other => panic!("expected the deadlock error, got {other:?}"),
    }
    assert!(!transaction::in_atomic_block());
    // The blocks ended the transaction the server had already rolled back: every connection
    // is usable and outside any transaction.
    assert_pool_clean(&db.default);
    other_thread
        .join()
        .expect("the other thread does not panic")
        .expect("the other thread's update runs once the main transaction is gone");
}

// Only MariaDB runs it (see above); `backend_tests!` already owns the module name `mysql`.
#[cfg(feature = "mysql")]
mod mysql_only {
    #[test]
    fn deadlock_rolls_back_the_savepoints_implicitly() {
        crate::common::run::<diesel::MysqlConnection>(
            super::deadlock_rolls_back_the_savepoints_implicitly,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// DurableTestsBase (rows 38-42), as DurableTransactionTests and DurableTests
// ---------------------------------------------------------------------------------------------

// Django: DurableTestsBase.test_commit
fn durable_block_commits<C: Backend>(ctx: &Ctx<C>) {
    Atomic::new()
        .durable(true)
        .run(|| create_reporter("Tintin", ""))
        .unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: DurableTestsBase.test_nested_outer_durable
fn durable_outer_block_allows_nested_blocks<C: Backend>(ctx: &Ctx<C>) {
    #[atomic(durable = true)]
    fn durable_outer() -> Result<(), Error> {
        create_reporter("Tintin", "")?;
        transaction::atomic(|| create_reporter("Archibald", "Haddock"))
    }
    durable_outer().unwrap();
    assert_eq!(ctx.reporters(), ["Archibald", "Tintin"]);
}

// Django: DurableTestsBase.test_nested_both_durable
fn durable_block_inside_durable_block_is_refused<C: Backend>(ctx: &Ctx<C>) {
    let durable = Atomic::new().durable(true);
    durable
        .run(|| {
            create_reporter("Tintin", "")?;
            let mut inner_body_ran = false;
            let inner = durable.run(|| {
                inner_body_ran = true;
                Ok::<_, Error>(())
            });
            assert_durable_nested(inner);
            assert!(!inner_body_ran);
            // E1: the outer block is not marked for rollback and still commits.
            assert!(!transaction::get_rollback()?);
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(ctx.reporters(), ["Tintin"]);
}

// Django: DurableTestsBase.test_nested_inner_durable
fn durable_block_inside_plain_block_is_refused<C: Backend>(ctx: &Ctx<C>) {
    #[atomic(durable = true)]
    fn durable_create() -> Result<(), Error> {
        create_reporter("Tintin", "")
    }
    transaction::atomic(|| {
        create_reporter("Archibald", "Haddock")?;
        assert_durable_nested(durable_create());
        assert!(!transaction::get_rollback()?);
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(ctx.reporters(), ["Archibald"]);
}

// Django: DurableTestsBase.test_sequence_of_durables
fn sequence_of_durable_blocks_commits_each<C: Backend>(ctx: &Ctx<C>) {
    let durable = Atomic::new().durable(true);
    durable.run(|| create_reporter("Tintin 1", "")).unwrap();
    assert_eq!(ctx.reporters(), ["Tintin 1"]);
    durable.run(|| create_reporter("Tintin 2", "")).unwrap();
    assert_eq!(ctx.reporters(), ["Tintin 1", "Tintin 2"]);
}

// Django: DurableTransactionTests (DurableTestsBase with real commits)
instantiate!(
    durable_plain,
    run_plain,
    [
        durable_block_commits,
        durable_outer_block_allows_nested_blocks,
        durable_block_inside_durable_block_is_refused,
        durable_block_inside_plain_block_is_refused,
        sequence_of_durable_blocks_commits_each,
    ]
);

// Django: DurableTests (DurableTestsBase inside TestCase's transaction)
instantiate!(
    durable_inside_test_transaction,
    run_in_test_transaction,
    [
        durable_block_commits,
        durable_outer_block_allows_nested_blocks,
        durable_block_inside_durable_block_is_refused,
        durable_block_inside_plain_block_is_refused,
        sequence_of_durable_blocks_commits_each,
    ]
);

backend_tests!(
    merged_blocks_roll_back_up_to_the_outermost_savepoint,
    merged_block_failure_rolls_back_to_the_nearest_savepoint,
    queries_are_refused_in_a_broken_transaction,
    clearing_the_rollback_flag_allows_queries_again,
    rolled_back_block_savepoint_is_released,
    failing_merged_block_breaks_the_transaction_until_its_end,
    failing_block_in_autocommit_leaves_no_rollback_flag,
);
