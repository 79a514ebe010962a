//! Port of Django's tests/transactions/tests.py to the async runtime: tests/transactions.rs
//! test by test (same names, same assertions), with `aio::transaction::atomic`, the async
//! `Atomic` builder and `#[atomic] async fn` in place of their sync twins.
//!
//! Every case runs on SQLite, PostgreSQL and MariaDB (deadpool; pool behaviour is not the
//! subject here), as `module::backend::name`. AtomicTests runs three times, as in the sync
//! suite: with nothing around it, inside an `aio::testing::TestTransaction`, and inside an
//! enclosing `aio::transaction::atomic` block (Django's AtomicInsideTransactionTests);
//! DurableTestsBase runs plain and inside a `TestTransaction`. AtomicMySQLTests runs on
//! MariaDB only.
//!
//! Django's `Exception("Oops")` is a body returning `Err(TestError::Oops)`; the `..._on_panic`
//! tests check that a panic in a block's future rolls back and resumes the original payload.
//!
//! Differences from the sync port:
//! - `set_rollback_false_and_savepoint_rollback_recover_the_block` (Django's
//!   test_prevent_rollback): the async API has no `savepoint()` / `savepoint_rollback()`, so
//!   the manual savepoint is SQL (`SAVEPOINT` / `ROLLBACK TO SAVEPOINT`) on the block's
//!   connection; the test is otherwise the same.
//! - The sync file's skipped Django tests (AtomicWithoutAutocommitTests, set_autocommit,
//!   commit()/rollback() outside blocks, connection.close(), callable instances,
//!   NonAutocommitTests) are skipped here for the same reasons.
#![cfg(feature = "async")]

mod common_aio;

use std::any::Any;
use std::future::Future;
use std::rc::Rc;

use common_aio::*;
use diesel::result::DatabaseErrorKind;
use diesel_atomic::aio::testing::TestTransaction;
use diesel_atomic::aio::transaction::{self, Atomic};
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

/// One test's database and what encloses its body.
struct Ctx<C: Backend> {
    db: Rc<TestDb<C>>,
    enclosing: Enclosing,
}

impl<C: Backend> Clone for Ctx<C> {
    fn clone(&self) -> Self {
        Ctx {
            db: Rc::clone(&self.db),
            enclosing: self.enclosing,
        }
    }
}

impl<C: Backend> Ctx<C> {
    /// The reporters after the test's own blocks ended: the committed rows (through a fresh
    /// connection) when nothing encloses the test, else what the enclosing transaction sees.
    async fn reporters(&self) -> Vec<String> {
        match self.enclosing {
            Enclosing::Nothing => self.db.reporters().await,
            Enclosing::TestTransaction | Enclosing::AtomicBlock => visible_reporters::<C>().await,
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

/// The pool's size in this file's tests.
const POOL: usize = 2;

async fn new_ctx<C: Backend>(pool: PoolKind, enclosing: Enclosing) -> Ctx<C> {
    Ctx {
        db: Rc::new(TestDb::<C>::new(pool, POOL).await),
        enclosing,
    }
}

/// Runs a body with nothing around it (Django's TransactionTestCase: real commits).
async fn run_plain<C: Backend, F: Future<Output = ()>>(pool: PoolKind, body: fn(Ctx<C>) -> F) {
    let ctx = new_ctx::<C>(pool, Enclosing::Nothing).await;
    body(ctx.clone()).await;
    assert!(!transaction::in_atomic_block(), "every block was left");
    assert_pool_clean(&ctx.db, POOL).await;
}

/// Runs a body inside a `TestTransaction` (Django's TestCase); everything rolls back after.
async fn run_in_test_transaction<C: Backend, F: Future<Output = ()>>(
    pool: PoolKind,
    body: fn(Ctx<C>) -> F,
) {
    let ctx = new_ctx::<C>(pool, Enclosing::TestTransaction).await;
    let test = TestTransaction::begin()
        .await
        .expect("begin the test transaction");
    body(ctx.clone()).await;
    // Asked from inside the task's scope: from the test body itself the runtime does not see
    // the test transaction (see `test_transaction_is_visible_from_the_test_body`).
    let (in_block, rollback) = test_transaction_state::<C>().await;
    assert!(in_block, "the test transaction is still open");
    assert!(!rollback.unwrap(), "the test transaction is healthy");
    test.rollback().await;
    assert!(!transaction::in_atomic_block());
    assert!(
        ctx.db.reporters().await.is_empty(),
        "rolling the TestTransaction back rolls everything back (T1)"
    );
    assert_pool_clean(&ctx.db, POOL).await;
}

/// `(in_atomic_block(), get_rollback())` on the default alias, asked inside an
/// `aio::connection` call, which enters the test transaction's table.
async fn test_transaction_state<C: Backend>() -> (bool, Result<bool, Error>) {
    diesel_atomic::aio::connection(async |_: &mut C| {
        Ok::<_, Error>((transaction::in_atomic_block(), transaction::get_rollback()))
    })
    .await
    .expect("the alias's connection")
}

/// Django's TestCase: inside the test transaction, `in_atomic_block` is true, the flag is
/// readable and `on_commit` queues (T1), when asked directly from the test body, as the sync
/// `run_in_test_transaction` asserts.
async fn test_transaction_is_visible_from_the_test_body<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    let test = TestTransaction::begin()
        .await
        .expect("begin the test transaction");
    let (in_block, rollback) = test_transaction_state::<C>().await;
    assert!(in_block && !rollback.unwrap(), "seen from inside a scope");
    let notified = Notified::default();
    let queued = notified.clone();
    let registered = transaction::on_commit(move || queued.push(1));
    let seen = (
        transaction::in_atomic_block(),
        transaction::get_rollback(),
        registered,
        notified.get(),
    );
    test.rollback().await;
    assert_pool_clean(&db, POOL).await;
    assert!(seen.0, "in_atomic_block() from the test body: {seen:?}");
    assert!(
        matches!(seen.1, Ok(false)),
        "get_rollback() from the test body: {seen:?}"
    );
    assert!(seen.2.is_ok(), "on_commit() from the test body: {seen:?}");
    assert!(
        seen.3.is_empty(),
        "on_commit() ran at once inside the test transaction: {seen:?}"
    );
}

mod test_body {
    macro_rules! visible {
        ($backend:ident, $conn:ty) => {
            mod $backend {
                #[test]
                fn test_transaction_is_visible_from_the_test_body() {
                    crate::common_aio::block_on(|| {
                        crate::common_aio::run::<$conn, _>(
                            crate::common_aio::PoolKind::Deadpool,
                            crate::test_transaction_is_visible_from_the_test_body::<$conn>,
                        )
                    });
                }
            }
        };
    }
    visible!(sqlite, crate::common_aio::Sqlite);
    #[cfg(feature = "async-postgres")]
    visible!(postgres, diesel_async::AsyncPgConnection);
    #[cfg(feature = "async-mysql")]
    visible!(mysql, diesel_async::AsyncMysqlConnection);
}

/// Runs a body inside an enclosing atomic block (Django's AtomicInsideTransactionTests), which
/// then commits what the body left.
async fn run_in_atomic_block<C: Backend, F: Future<Output = ()>>(
    pool: PoolKind,
    body: fn(Ctx<C>) -> F,
) {
    let ctx = new_ctx::<C>(pool, Enclosing::AtomicBlock).await;
    let inner = ctx.clone();
    let seen = transaction::atomic(async move || {
        body(inner).await;
        assert!(
            !transaction::get_rollback()?,
            "the enclosing block is healthy"
        );
        Ok::<_, Error>(visible_reporters::<C>().await)
    })
    .await
    .expect("the enclosing block commits");
    assert!(!transaction::in_atomic_block());
    assert_eq!(
        ctx.db.reporters().await,
        seen,
        "the enclosing block committed its rows"
    );
    assert_pool_clean(&ctx.db, POOL).await;
}

/// Inserts a reporter with a given primary key (Django's `save(force_insert=True)`) on the
/// default alias's ambient connection.
async fn insert_reporter_with_id<C: Backend>(
    id: i32,
    first: &str,
    last: &str,
) -> Result<(), Error> {
    execute_ambient::<C>(&format!(
        "INSERT INTO reporters (id, first_name, last_name) VALUES ({id}, '{first}', '{last}')"
    ))
    .await
}

/// Django's `create_reporter(first_name)` then `raise Exception("Oops")`.
async fn create_then_raise<C: Backend>(first_name: &str) -> Result<(), TestError> {
    create_reporter::<C>(first_name, "").await?;
    Err(TestError::Oops)
}

/// [`create_then_raise`] with the exception as a panic whose payload is `EXPECTED_PANIC`.
async fn create_then_panic<C: Backend>(first_name: &str) -> Result<(), TestError> {
    create_reporter::<C>(first_name, "").await?;
    panic!("Oops, that's his last name")
}

/// Awaits `future`, which must panic with `EXPECTED_PANIC` out of the blocks it opens: the
/// blocks resume the original payload unchanged (SEMANTICS X3).
async fn assert_resumes_expected_panic<F: Future>(future: F) {
    quiet_expected_panics(EXPECTED_PANIC);
    let payload: Box<dyn Any + Send> = match catch_unwind(future).await {
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

/// Instantiates `#[test]` functions `module::backend::name` that run `name` under `runner`
/// on every backend (deadpool), through `common_aio::run`.
macro_rules! instantiate {
    ($module:ident, $runner:ident, [$($name:ident),* $(,)?]) => {
        mod $module {
            instantiate!(@backend sqlite, $crate::common_aio::Sqlite, $runner, [$($name),*]);
            #[cfg(feature = "async-postgres")]
            instantiate!(@backend postgres, diesel_async::AsyncPgConnection, $runner, [$($name),*]);
            #[cfg(feature = "async-mysql")]
            instantiate!(@backend mysql, diesel_async::AsyncMysqlConnection, $runner, [$($name),*]);
        }
    };
    (@backend $backend:ident, $conn:ty, $runner:ident, [$($name:ident),*]) => {
        mod $backend {
            $(
                #[test]
                fn $name() {
                    $crate::common_aio::block_on(|| {
                        $crate::common_aio::run::<$conn, _>(
                            $crate::common_aio::PoolKind::Deadpool,
                            |pool| $crate::$runner::<$conn, _>(pool, $crate::$name::<$conn>),
                        )
                    });
                }
            )*
        }
    };
}

/// Instantiates every AtomicTests body three times: AtomicTests itself, and Django's
/// AtomicInsideTransactionTests both inside a `TestTransaction` and inside an enclosing block.
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
async fn decorator_commit_keeps_row<C: Backend>(ctx: Ctx<C>) {
    #[atomic]
    async fn make_reporter<C: Backend>() -> Result<(), TestError> {
        create_reporter::<C>("Tintin", "").await?;
        Ok(())
    }
    make_reporter::<C>().await.unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: AtomicTests.test_decorator_syntax_rollback
async fn decorator_rollback_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    #[atomic]
    async fn make_reporter<C: Backend>() -> Result<(), TestError> {
        create_then_raise::<C>("Haddock").await
    }
    assert_eq!(make_reporter::<C>().await, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_decorator_syntax_rollback
async fn decorator_rollback_on_panic<C: Backend>(ctx: Ctx<C>) {
    #[atomic]
    async fn make_reporter<C: Backend>() -> Result<(), TestError> {
        create_then_panic::<C>("Haddock").await
    }
    assert_resumes_expected_panic(make_reporter::<C>()).await;
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_alternate_decorator_syntax_commit
async fn called_decorator_commit_keeps_row<C: Backend>(ctx: Ctx<C>) {
    #[atomic()]
    async fn make_reporter<C: Backend>() -> Result<(), TestError> {
        create_reporter::<C>("Tintin", "").await?;
        Ok(())
    }
    make_reporter::<C>().await.unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: AtomicTests.test_alternate_decorator_syntax_rollback
async fn called_decorator_rollback_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    #[atomic()]
    async fn make_reporter<C: Backend>() -> Result<(), TestError> {
        create_then_raise::<C>("Haddock").await
    }
    assert_eq!(make_reporter::<C>().await, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_commit
async fn commit_keeps_row<C: Backend>(ctx: Ctx<C>) {
    transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: AtomicTests.test_rollback
async fn rollback_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || create_then_raise::<C>("Haddock").await).await;
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_rollback
async fn rollback_on_panic<C: Backend>(ctx: Ctx<C>) {
    assert_resumes_expected_panic(transaction::atomic(async || {
        create_then_panic::<C>("Haddock").await
    }))
    .await;
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_nested_commit_commit
async fn nested_commit_commit_keeps_both_rows<C: Backend>(ctx: Ctx<C>) {
    transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        transaction::atomic(async || create_reporter::<C>("Archibald", "Haddock").await).await?;
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_eq!(ctx.reporters().await, ["Archibald", "Tintin"]);
}

// Django: AtomicTests.test_nested_commit_rollback
async fn nested_commit_rollback_keeps_outer_row<C: Backend>(ctx: Ctx<C>) {
    transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        let inner = transaction::atomic(async || create_then_raise::<C>("Haddock").await).await;
        assert_eq!(inner, Err(TestError::Oops));
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: AtomicTests.test_nested_commit_rollback
async fn nested_commit_rollback_on_panic_keeps_outer_row<C: Backend>(ctx: Ctx<C>) {
    transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        assert_resumes_expected_panic(transaction::atomic(async || {
            create_then_panic::<C>("Haddock").await
        }))
        .await;
        assert!(
            !transaction::get_rollback()?,
            "the savepoint absorbed the panic"
        );
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: AtomicTests.test_nested_rollback_commit
async fn nested_rollback_commit_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || -> Result<(), TestError> {
        create_reporter::<C>("Tintin", "").await?;
        transaction::atomic(async || create_reporter::<C>("Haddock", "").await).await?;
        Err(TestError::Oops)
    })
    .await;
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_nested_rollback_commit
async fn nested_rollback_commit_on_panic_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    assert_resumes_expected_panic(transaction::atomic(async || -> Result<(), TestError> {
        create_reporter::<C>("Tintin", "").await?;
        transaction::atomic(async || create_reporter::<C>("Haddock", "").await).await?;
        panic!("Oops, that's his last name")
    }))
    .await;
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_nested_rollback_rollback
async fn nested_rollback_rollback_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || -> Result<(), TestError> {
        create_reporter::<C>("Tintin", "").await?;
        let inner = transaction::atomic(async || create_then_raise::<C>("Haddock").await).await;
        assert_eq!(inner, Err(TestError::Oops));
        Err(TestError::Oops)
    })
    .await;
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

/// `Atomic::new().savepoint(false)`: Django's `atomic(savepoint=False)`.
fn merged() -> Atomic {
    Atomic::new().savepoint(false)
}

// Django: AtomicTests.test_merged_commit_commit
async fn merged_commit_commit_keeps_both_rows<C: Backend>(ctx: Ctx<C>) {
    transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        merged()
            .run(async || create_reporter::<C>("Archibald", "Haddock").await)
            .await?;
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_eq!(ctx.reporters().await, ["Archibald", "Tintin"]);
}

// Django: AtomicTests.test_merged_commit_rollback
async fn merged_commit_rollback_silently_undoes_outer_row<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        let inner = merged()
            .run(async || create_then_raise::<C>("Haddock").await)
            .await;
        assert_eq!(inner, Err(TestError::Oops));
        // X2: the merged block marked the outer one for rollback.
        assert!(transaction::get_rollback()?);
        Ok::<_, TestError>("outer body finished")
    })
    .await;
    // Writes in the outer block are rolled back too, silently (X2, X3).
    assert_eq!(result, Ok("outer body finished"));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_merged_commit_rollback
async fn merged_commit_rollback_on_panic_silently_undoes_outer_row<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        assert_resumes_expected_panic(
            merged().run(async || create_then_panic::<C>("Haddock").await),
        )
        .await;
        assert!(transaction::get_rollback()?);
        Ok::<_, TestError>(())
    })
    .await;
    assert_eq!(result, Ok(()));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_merged_rollback_commit
async fn merged_rollback_commit_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || -> Result<(), TestError> {
        create_reporter::<C>("Tintin", "").await?;
        merged()
            .run(async || create_reporter::<C>("Haddock", "").await)
            .await?;
        Err(TestError::Oops)
    })
    .await;
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_merged_rollback_rollback
async fn merged_rollback_rollback_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || -> Result<(), TestError> {
        create_reporter::<C>("Tintin", "").await?;
        let inner = merged()
            .run(async || create_then_raise::<C>("Haddock").await)
            .await;
        assert_eq!(inner, Err(TestError::Oops));
        Err(TestError::Oops)
    })
    .await;
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_reuse_commit_commit
async fn reused_atomic_commit_commit_keeps_both_rows<C: Backend>(ctx: Ctx<C>) {
    let block = Atomic::new();
    block
        .run(async || {
            create_reporter::<C>("Tintin", "").await?;
            block
                .run(async || create_reporter::<C>("Archibald", "Haddock").await)
                .await?;
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
    assert_eq!(ctx.reporters().await, ["Archibald", "Tintin"]);
}

// Django: AtomicTests.test_reuse_commit_rollback
async fn reused_atomic_commit_rollback_keeps_outer_row<C: Backend>(ctx: Ctx<C>) {
    let block = Atomic::new();
    block
        .run(async || {
            create_reporter::<C>("Tintin", "").await?;
            let inner = block
                .run(async || create_then_raise::<C>("Haddock").await)
                .await;
            assert_eq!(inner, Err(TestError::Oops));
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: AtomicTests.test_reuse_rollback_commit
async fn reused_atomic_rollback_commit_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    let block = Atomic::new();
    let result = block
        .run(async || -> Result<(), TestError> {
            create_reporter::<C>("Tintin", "").await?;
            block
                .run(async || create_reporter::<C>("Haddock", "").await)
                .await?;
            Err(TestError::Oops)
        })
        .await;
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_reuse_rollback_rollback
async fn reused_atomic_rollback_rollback_leaves_table_empty<C: Backend>(ctx: Ctx<C>) {
    let block = Atomic::new();
    let result = block
        .run(async || -> Result<(), TestError> {
            create_reporter::<C>("Tintin", "").await?;
            let inner = block
                .run(async || create_then_raise::<C>("Haddock").await)
                .await;
            assert_eq!(inner, Err(TestError::Oops));
            Err(TestError::Oops)
        })
        .await;
    assert_eq!(result, Err(TestError::Oops));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_force_rollback
async fn set_rollback_true_rolls_back_without_error<C: Backend>(ctx: Ctx<C>) {
    let result = transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        // The block is healthy until the flag is set (F2).
        assert!(!transaction::get_rollback()?);
        transaction::set_rollback(true)?;
        Ok::<_, TestError>("no error")
    })
    .await;
    assert_eq!(result, Ok("no error"));
    assert!(ctx.reporters().await.is_empty());
}

// Django: AtomicTests.test_prevent_rollback
//
// The async API has no `savepoint()` / `savepoint_rollback()`: the manual savepoint is SQL on
// the block's connection.
async fn set_rollback_false_and_savepoint_rollback_recover_the_block<C: Backend>(ctx: Ctx<C>) {
    transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        execute_ambient::<C>("SAVEPOINT manual_savepoint").await?;
        // A database error inside an inner block without a savepoint marks the block (X2).
        let inner = merged()
            .run(async || execute_ambient::<C>("SELECT no_such_col FROM reporters").await)
            .await;
        assert_database_error(inner);
        assert!(transaction::get_rollback()?);
        // Recover manually, in the order F3 prescribes.
        transaction::set_rollback(false)?;
        execute_ambient::<C>("ROLLBACK TO SAVEPOINT manual_savepoint").await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: AtomicTests.test_failure_on_exit_transaction
async fn failed_savepoint_release_marks_outer_block_for_rollback<C: Backend>(ctx: Ctx<C>) {
    // The inner block's savepoint is the one diesel opens at depth (enclosing + outer block).
    let inner_savepoint = format!("diesel_savepoint_{}", ctx.enclosing_depth() + 1);
    let outer = transaction::atomic(async || {
        let inner = transaction::atomic(async || {
            create_reporter::<C>("Tintin", "").await?;
            assert_eq!(try_visible_reporters::<C>().await?.len(), 1);
            // Release the block's savepoint behind its back, so that the block's own RELEASE
            // fails on exit although its body succeeded (X4).
            execute_ambient::<C>(&format!("RELEASE SAVEPOINT {inner_savepoint}"))
                .await
                .expect("the inner block's savepoint exists");
            Ok::<_, Error>(())
        })
        .await;
        assert_database_error(inner);
        assert_broken_transaction(try_visible_reporters::<C>().await);
        assert!(transaction::get_rollback()?);
        Ok::<_, Error>(())
    })
    .await;
    // The outer block rolls back silently on exit.
    assert!(matches!(outer, Ok(())), "{outer:?}");
    assert!(ctx.reporters().await.is_empty());
}

atomic_tests! {
    decorator_commit_keeps_row,
    decorator_rollback_leaves_table_empty,
    called_decorator_commit_keeps_row,
    called_decorator_rollback_leaves_table_empty,
    commit_keeps_row,
    rollback_leaves_table_empty,
    nested_commit_commit_keeps_both_rows,
    nested_commit_rollback_keeps_outer_row,
    nested_commit_rollback_on_panic_keeps_outer_row,
    nested_rollback_commit_leaves_table_empty,
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

// The outermost block panics: AtomicTests and the enclosing-block variant as usual; inside a
// TestTransaction, the runtime loses the test transaction (reported as a runtime bug).
instantiate!(
    atomic_panics_plain,
    run_plain,
    [
        decorator_rollback_on_panic,
        rollback_on_panic,
        nested_rollback_commit_on_panic_leaves_table_empty,
    ]
);
instantiate!(
    atomic_panics_inside_atomic_block,
    run_in_atomic_block,
    [
        decorator_rollback_on_panic,
        rollback_on_panic,
        nested_rollback_commit_on_panic_leaves_table_empty,
    ]
);
instantiate!(
    atomic_panics_inside_test_transaction,
    run_in_test_transaction,
    [
        decorator_rollback_on_panic,
        rollback_on_panic,
        nested_rollback_commit_on_panic_leaves_table_empty,
    ]
);

// ---------------------------------------------------------------------------------------------
// AtomicMergeTests (rows 24, 25)
// ---------------------------------------------------------------------------------------------

/// Django's "Temporarily mark the connection as not needing rollback to check it": the block is
/// marked for rollback, yet with the flag cleared its connection still sees `count` reporters;
/// the flag is set again afterwards.
async fn assert_marked_for_rollback_with_reporters_still_there<C: Backend>(
    count: usize,
) -> Result<(), TestError> {
    assert!(transaction::get_rollback()?);
    transaction::set_rollback(false)?;
    assert_eq!(try_visible_reporters::<C>().await?.len(), count);
    transaction::set_rollback(true)?;
    Ok(())
}

/// The middle block's body in both AtomicMergeTests: creates Archibald, then a block without a
/// savepoint creates Calculus and raises.
async fn create_archibald_then_a_failing_merged_calculus<C: Backend>() -> Result<(), TestError> {
    create_reporter::<C>("Archibald", "Haddock").await?;
    let inner = merged()
        .run(async || create_then_raise::<C>("Calculus").await)
        .await;
    assert_eq!(inner, Err(TestError::Oops));
    // The third insert couldn't be rolled back: look at it with the flag cleared.
    assert_marked_for_rollback_with_reporters_still_there::<C>(3).await
}

// Django: AtomicMergeTests.test_merged_outer_rollback
async fn merged_blocks_roll_back_up_to_the_outermost_savepoint<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    let outer = transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        merged()
            .run(async || create_archibald_then_a_failing_merged_calculus::<C>().await)
            .await?;
        // Neither could the second: the merged block passed the flag on to its parent.
        assert_marked_for_rollback_with_reporters_still_there::<C>(3).await
    })
    .await;
    // The first block has a savepoint (it is the transaction) and rolls back.
    assert_eq!(outer, Ok(()));
    assert!(db.reporters().await.is_empty());
}

// Django: AtomicMergeTests.test_merged_inner_savepoint_rollback
async fn merged_block_failure_rolls_back_to_the_nearest_savepoint<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    transaction::atomic(async || {
        create_reporter::<C>("Tintin", "").await?;
        let middle = transaction::atomic(async || {
            create_archibald_then_a_failing_merged_calculus::<C>().await
        })
        .await;
        // The middle block has a savepoint: it rolls back to it silently.
        assert_eq!(middle, Ok(()));
        assert!(!transaction::get_rollback()?);
        assert_eq!(try_visible_reporters::<C>().await?, ["Tintin"]);
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    assert_eq!(db.reporters().await, ["Tintin"]);
}

// ---------------------------------------------------------------------------------------------
// AtomicErrorsTests (rows 28, 29)
// ---------------------------------------------------------------------------------------------

/// Inserts a reporter with `id` inside a block without a savepoint: a failure marks the
/// enclosing block for rollback, as Django's `mark_for_rollback_on_error` around `save()` does.
async fn force_insert_marking_for_rollback<C: Backend>(id: i32) -> Result<(), Error> {
    merged()
        .run(async || insert_reporter_with_id::<C>(id, "Cuthbert", "Calculus").await)
        .await
}

/// Django's `r2.save(force_update=True)`: overwrites the row `id` through the ambient connection.
async fn force_update<C: Backend>(id: i32) -> Result<(), Error> {
    execute_ambient::<C>(&format!(
        "UPDATE reporters SET first_name = 'Cuthbert', last_name = 'Calculus' WHERE id = {id}"
    ))
    .await
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
async fn create_committed_haddock<C: Backend>(db: &TestDb<C>) -> i32 {
    create_reporter::<C>("Archibald", "Haddock").await.unwrap();
    let rows = db.reporter_rows().await;
    assert_eq!(rows.len(), 1);
    rows[0].0
}

// Django: AtomicErrorsTests.test_atomic_prevents_queries_in_broken_transaction
async fn queries_are_refused_in_a_broken_transaction<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    let r1 = create_committed_haddock(&db).await;
    let result = transaction::atomic(async || {
        assert_unique_violation(force_insert_marking_for_rollback::<C>(r1).await);
        // The transaction is marked as needing rollback (F3).
        assert_broken_transaction(force_update::<C>(r1).await);
        Ok::<_, Error>(())
    })
    .await;
    assert!(matches!(result, Ok(())), "{result:?}");
    assert_eq!(
        db.reporter_rows().await,
        [(r1, "Archibald".to_owned(), "Haddock".to_owned())]
    );
}

// Django: AtomicErrorsTests.test_atomic_allows_queries_after_fixing_transaction
//
// Django runs it only on SQLite, MySQL and Oracle. PostgreSQL aborts the whole transaction on
// any error (SQLSTATE 25P02): there the update is refused by the server, and the block, whose
// body returns that error, rolls back and leaves r1 as it was.
async fn clearing_the_rollback_flag_allows_queries_again<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    let r1 = create_committed_haddock(&db).await;
    let result = transaction::atomic(async || {
        assert_unique_violation(force_insert_marking_for_rollback::<C>(r1).await);
        // SQLite and MariaDB do not abort the transaction on an integrity error (R19):
        // clearing the flag makes the connection usable again.
        transaction::set_rollback(false)?;
        force_update::<C>(r1).await?;
        Ok::<_, Error>(())
    })
    .await;
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
            db.reporter_rows().await,
            [(r1, "Archibald".to_owned(), "Haddock".to_owned())]
        );
        // The block ended the aborted transaction: every connection is usable again.
        assert_pool_clean(&db, POOL).await;
        return;
    }
    result.unwrap();
    assert_eq!(
        db.reporter_rows().await,
        [(r1, "Cuthbert".to_owned(), "Calculus".to_owned())]
    );
}

// ---------------------------------------------------------------------------------------------
// AtomicMiscTests (rows 33-35, adapted)
// ---------------------------------------------------------------------------------------------

// Django: AtomicMiscTests.test_atomic_does_not_leak_savepoints_on_failure
async fn rolled_back_block_savepoint_is_released<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    // Django reads the block's savepoint id off the connection; here it is the name diesel
    // gives the first savepoint inside a transaction.
    let outer = transaction::atomic(async || {
        let inner = transaction::atomic(async || -> Result<(), TestError> {
            create_reporter::<C>("Tintin", "").await?;
            // The name is right: while the block is open, its savepoint exists.
            execute_ambient::<C>("ROLLBACK TO SAVEPOINT diesel_savepoint_1").await?;
            create_reporter::<C>("Tintin", "").await?;
            Err(TestError::Oops)
        })
        .await;
        assert_eq!(inner, Err(TestError::Oops));
        // Rolling back to the savepoint fails: the block released it after rolling back (M1).
        execute_ambient::<C>("ROLLBACK TO SAVEPOINT diesel_savepoint_1").await?;
        Ok::<_, Error>(())
    })
    .await;
    assert_database_error(outer);
    assert!(!transaction::in_atomic_block());
    // The connection recovered: the next block commits.
    transaction::atomic(async || create_reporter::<C>("Archibald", "Haddock").await)
        .await
        .unwrap();
    assert_eq!(db.reporters().await, ["Archibald"]);
}

// Django: AtomicMiscTests.test_mark_for_rollback_on_error_in_transaction
async fn failing_merged_block_breaks_the_transaction_until_its_end<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    // `mark_for_rollback_on_error()` is emulated by a block without a savepoint.
    let outer = merged()
        .run(async || {
            let inner = merged()
                .run(async || -> Result<(), TestError> {
                    // Still in a good state.
                    assert!(!transaction::get_rollback()?);
                    Err(TestError::Oops)
                })
                .await;
            assert_eq!(inner, Err(TestError::Oops));
            // The transaction is marked broken ...
            assert!(transaction::get_rollback()?);
            // ... and further queries fail.
            assert_broken_transaction(create_reporter::<C>("Tintin", "").await);
            Ok::<_, TestError>(())
        })
        .await;
    assert_eq!(outer, Ok(()));
    // The flag is reset at the end of the transaction, so this just works.
    create_reporter::<C>("Haddock", "").await.unwrap();
    assert_eq!(db.reporters().await, ["Haddock"]);
}

// Django: AtomicMiscTests.test_mark_for_rollback_on_error_in_autocommit
async fn failing_block_in_autocommit_leaves_no_rollback_flag<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, POOL).await;
    assert!(!transaction::in_atomic_block());
    // Outside any block, the emulating block is an outermost transaction of its own.
    let result = merged()
        .run(async || -> Result<(), TestError> {
            assert!(!transaction::get_rollback()?);
            create_reporter::<C>("Tintin", "").await?;
            Err(TestError::Oops)
        })
        .await;
    assert_eq!(result, Err(TestError::Oops));
    // Nothing is left marked: outside a block the flag does not exist (F1) ...
    assert!(!transaction::in_atomic_block());
    assert!(matches!(
        transaction::get_rollback(),
        Err(Error::NotInAtomicBlock { .. })
    ));
    // ... and further queries work nicely.
    create_reporter::<C>("Haddock", "").await.unwrap();
    assert_eq!(db.reporters().await, ["Haddock"]);
}

aio_tests!(deadpool:
    merged_blocks_roll_back_up_to_the_outermost_savepoint,
    merged_block_failure_rolls_back_to_the_nearest_savepoint,
    queries_are_refused_in_a_broken_transaction,
    clearing_the_rollback_flag_allows_queries_again,
    rolled_back_block_savepoint_is_released,
    failing_merged_block_breaks_the_transaction_until_its_end,
    failing_block_in_autocommit_leaves_no_rollback_flag,
);

// ---------------------------------------------------------------------------------------------
// AtomicMySQLTests (MariaDB only)
// ---------------------------------------------------------------------------------------------

// Django: AtomicMySQLTests.test_implicit_savepoint_rollback (#22291)
//
// MariaDB/MySQL only, as in Django: on a deadlock InnoDB rolls back the victim's whole
// transaction, savepoints included, so the inner block's ROLLBACK TO SAVEPOINT fails. Both
// blocks must still end and surface the deadlock error.
#[cfg(feature = "async-mysql")]
async fn deadlock_rolls_back_the_savepoints_implicitly(pool: PoolKind) {
    use diesel::prelude::*;
    use diesel_async::{AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
    use std::time::Duration;

    let db = TestDb::<AsyncMysqlConnection>::new(pool, POOL).await;
    db.raw()
        .await
        .batch_execute(
            "INSERT INTO reporters (id, first_name, last_name) VALUES (1, '', ''), (2, '', '')",
        )
        .await
        .unwrap();

    let (ready, main_task_ready) = tokio::sync::oneshot::channel::<()>();
    let mut other = db.raw().await;
    let other_task = tokio::spawn(async move {
        other.batch_execute("BEGIN").await?;
        reporters::table
            .find(1)
            .select(reporters::id)
            .for_update()
            .first::<i32>(&mut other)
            .await?;
        main_task_ready.await.expect("the main task is ready");
        // 1) This statement waits for the main task's lock on row 2 ...
        diesel::update(reporters::table.filter(reporters::id.ne(1)))
            .set(reporters::id.eq(2))
            .execute(&mut other)
            .await?;
        other.batch_execute("COMMIT").await
    });

    // Two blocks, to enter a transaction and create a savepoint.
    let result = transaction::atomic(async || {
        let inner = transaction::atomic(async || {
            diesel_atomic::aio::connection(async |conn: &mut AsyncMysqlConnection| {
                reporters::table
                    .find(2)
                    .select(reporters::id)
                    .for_update()
                    .first::<i32>(conn)
                    .await?;
                ready.send(()).expect("the other task waits");
                // Nothing tells when the other task's statement waits for the lock: sleep for
                // a little while, as Django does.
                tokio::time::sleep(Duration::from_secs(1)).await;
                // 2) ... and this one closes the cycle: InnoDB rolls this transaction back.
                diesel::update(reporters::table.filter(reporters::id.ne(2)))
                    .set(reporters::id.eq(1))
                    .execute(conn)
                    .await
                    .map_err(Error::from)
            })
            .await
        })
        .await;
        // The savepoint went with the transaction, so the inner block could not roll back
        // to it: the outer block is marked for rollback instead (#22291).
        assert!(transaction::get_rollback()?);
        inner
    })
    .await;
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
    assert_pool_clean(&db, POOL).await;
    other_task
        .await
        .expect("the other task does not panic")
        .expect("the other task's update runs once the main transaction is gone");
}

#[cfg(feature = "async-mysql")]
mod mysql_only {
    #[test]
    fn deadlock_rolls_back_the_savepoints_implicitly() {
        crate::common_aio::block_on(|| {
            crate::common_aio::run::<diesel_async::AsyncMysqlConnection, _>(
                crate::common_aio::PoolKind::Deadpool,
                super::deadlock_rolls_back_the_savepoints_implicitly,
            )
        });
    }
}

// ---------------------------------------------------------------------------------------------
// DurableTestsBase (rows 38-42), as DurableTransactionTests and DurableTests
// ---------------------------------------------------------------------------------------------

fn durable() -> Atomic {
    Atomic::new().durable(true)
}

// Django: DurableTestsBase.test_commit
async fn durable_block_commits<C: Backend>(ctx: Ctx<C>) {
    durable()
        .run(async || create_reporter::<C>("Tintin", "").await)
        .await
        .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: DurableTestsBase.test_nested_outer_durable
async fn durable_outer_block_allows_nested_blocks<C: Backend>(ctx: Ctx<C>) {
    #[atomic(durable = true)]
    async fn durable_outer<C: Backend>() -> Result<(), Error> {
        create_reporter::<C>("Tintin", "").await?;
        transaction::atomic(async || create_reporter::<C>("Archibald", "Haddock").await).await
    }
    durable_outer::<C>().await.unwrap();
    assert_eq!(ctx.reporters().await, ["Archibald", "Tintin"]);
}

// Django: DurableTestsBase.test_nested_both_durable
async fn durable_block_inside_durable_block_is_refused<C: Backend>(ctx: Ctx<C>) {
    let durable = durable();
    durable
        .run(async || {
            create_reporter::<C>("Tintin", "").await?;
            let mut inner_body_ran = false;
            let inner = durable
                .run(async || {
                    inner_body_ran = true;
                    Ok::<_, Error>(())
                })
                .await;
            assert_durable_nested(inner);
            assert!(!inner_body_ran);
            // E1: the outer block is not marked for rollback and still commits.
            assert!(!transaction::get_rollback()?);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin"]);
}

// Django: DurableTestsBase.test_nested_inner_durable
async fn durable_block_inside_plain_block_is_refused<C: Backend>(ctx: Ctx<C>) {
    #[atomic(durable = true)]
    async fn durable_create<C: Backend>() -> Result<(), Error> {
        create_reporter::<C>("Tintin", "").await
    }
    transaction::atomic(async || {
        create_reporter::<C>("Archibald", "Haddock").await?;
        assert_durable_nested(durable_create::<C>().await);
        assert!(!transaction::get_rollback()?);
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(ctx.reporters().await, ["Archibald"]);
}

// Django: DurableTestsBase.test_sequence_of_durables
async fn sequence_of_durable_blocks_commits_each<C: Backend>(ctx: Ctx<C>) {
    let durable = durable();
    durable
        .run(async || create_reporter::<C>("Tintin 1", "").await)
        .await
        .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin 1"]);
    durable
        .run(async || create_reporter::<C>("Tintin 2", "").await)
        .await
        .unwrap();
    assert_eq!(ctx.reporters().await, ["Tintin 1", "Tintin 2"]);
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
