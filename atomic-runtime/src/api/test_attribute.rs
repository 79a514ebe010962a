//! What `#[diesel_atomic::test]` runs around a test function: Django's `TestCase` (rule T1),
//! or with `transaction = false` its `TransactionTestCase`.
//!
//! The test enters its registry (from `setup`, else the one in force), begins a test
//! transaction on every alias of it, runs the body, and rolls everything back, whether the
//! body returned or panicked: a failing test's rows never reach the next test. An `async fn`
//! test runs on a multi-thread tokio runtime of its own, polled on the test's thread (as
//! `#[tokio::test(flavor = "multi_thread")]` polls it), so the test transaction, which stays
//! with that thread, holds everything the body awaits.

use std::panic::{self, AssertUnwindSafe};

use crate::databases::{self, Databases};
use crate::scope::testing::TestTransaction;

/// The attribute's arguments, as the expansion passes them.
pub struct TestOptions {
    /// `setup = path`: the registry the test enters; `None` for the one in force (entered on
    /// the thread, else installed).
    pub setup: Option<fn() -> Databases>,
    /// `false` with `transaction = false`: no test transaction, real COMMITs.
    pub transaction: bool,
}

/// `#[diesel_atomic::test] fn`: runs `body` inside a test transaction on every sync alias
/// of the test's registry (the async ones need an `async fn` test), then rolls it back.
pub fn run<T>(options: TestOptions, body: impl FnOnce() -> T) -> T {
    let databases = registry(&options);
    let _registry = databases.as_ref().map(Databases::enter);
    let test = options.transaction.then(|| begin_sync(databases.as_ref()));
    let outcome = panic::catch_unwind(AssertUnwindSafe(body));
    // The one exit: rolled back after a return and after a panic alike.
    drop(test);
    match outcome {
        Ok(value) => value,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// The registry the test runs with: `setup`'s, else the one in force, if any.
fn registry(options: &TestOptions) -> Option<Databases> {
    match options.setup {
        Some(setup) => Some(setup()),
        None => databases::current().ok(),
    }
}

/// The registry's aliases of one kind (sync or async), in registration order.
fn aliases_of(databases: &Databases, want_async: bool) -> Vec<&str> {
    databases
        .aliases()
        .filter(|alias| {
            databases
                .get(alias)
                .is_ok_and(|database| database.is_async() == want_async)
        })
        .collect()
}

/// The test transaction on the registry's sync aliases. A test cannot run without its
/// transaction (its writes would be committed), so failing to begin one fails the test.
fn begin_sync(databases: Option<&Databases>) -> TestTransaction {
    let databases = databases.unwrap_or_else(|| no_registry());
    TestTransaction::begin_using(&aliases_of(databases, false))
        .unwrap_or_else(|error| could_not_begin(&error))
}

fn no_registry() -> ! {
    panic!(
        "#[diesel_atomic::test] found no databases to begin the test transaction on: give the \
         attribute `setup = path::to::function` (a `fn() -> Databases`), enter a registry \
         (`Databases::enter`) before calling the test, or install one (`Databases::install`); \
         `transaction = false` runs the test without one"
    )
}

fn could_not_begin(error: &crate::Error) -> ! {
    panic!("#[diesel_atomic::test] could not begin the test transaction: {error}")
}

/// `#[diesel_atomic::test] async fn`.
#[cfg(feature = "async")]
pub(crate) mod aio {
    use std::cell::RefCell;
    use std::future::Future;
    use std::panic::{self, AssertUnwindSafe};

    use futures_util::FutureExt;

    use super::{TestOptions, aliases_of, begin_sync, could_not_begin, registry};
    use crate::api::aio::testing::TestTransaction;
    use crate::databases::{Databases, DatabasesGuard};

    thread_local! {
        /// The test's registry on each thread of its runtime, so that a task it spawns (and
        /// `spawn_blocking` work) finds the same databases as the test's own body.
        static WORKER_REGISTRY: RefCell<Option<DatabasesGuard>> = const { RefCell::new(None) };
    }

    /// Runs `body` on a multi-thread tokio runtime of its own, inside a test transaction on
    /// every alias of the test's registry (the async test transaction on async aliases, the
    /// sync one on sync aliases), then rolls it back with `.rollback().await`.
    pub fn run<T>(options: TestOptions, body: impl Future<Output = T>) -> T {
        let databases = registry(&options);
        let _registry = databases.as_ref().map(Databases::enter);
        let runtime = runtime(databases.clone());
        // Sync code the body calls runs on this thread, which polls the body.
        let sync_test = options.transaction.then(|| begin_sync(databases.as_ref()));
        let async_aliases: Vec<&str> = match (&databases, options.transaction) {
            (Some(databases), true) => aliases_of(databases, true),
            _ => Vec::new(),
        };
        let outcome = runtime.block_on(async {
            let test = if async_aliases.is_empty() {
                None
            } else {
                let begun = TestTransaction::begin_using(&async_aliases).await;
                Some(begun.unwrap_or_else(|error| could_not_begin(&error)))
            };
            // On the heap: the body's future may be large, and this thread's stack is the
            // test harness's.
            let outcome = AssertUnwindSafe(Box::pin(body)).catch_unwind().await;
            // The one exit, after a return and after a panic alike.
            if let Some(test) = test {
                test.rollback().await;
            }
            outcome
        });
        drop(sync_test);
        drop(runtime);
        match outcome {
            Ok(value) => value,
            Err(payload) => panic::resume_unwind(payload),
        }
    }

    /// A multi-thread runtime with every driver, whose threads enter `databases`.
    fn runtime(databases: Option<Databases>) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if let Some(databases) = databases {
            builder
                .on_thread_start(move || {
                    let guard = databases.enter();
                    WORKER_REGISTRY.with(|slot| *slot.borrow_mut() = Some(guard));
                })
                .on_thread_stop(|| {
                    let guard = WORKER_REGISTRY.with(|slot| slot.borrow_mut().take());
                    drop(guard);
                });
        }
        builder.build().unwrap_or_else(|error| {
            panic!("#[diesel_atomic::test] could not start its tokio runtime: {error}")
        })
    }
}
