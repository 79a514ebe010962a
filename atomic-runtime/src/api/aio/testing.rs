//! Test helpers for async code: Django's `TestCase` transaction and
//! `captureOnCommitCallbacks` (rules T1, T2), as [`crate::testing`] has them for sync code.

use std::future::Future;
use std::marker::PhantomData;

use crate::databases::DEFAULT_DB_ALIAS;
use crate::engine::aio::block::{self, lookup};
use crate::engine::aio::hooks;
use crate::engine::aio::state::{self, AsyncCallback};
use crate::engine::rules;
use crate::engine::state::Entered;
use crate::error::Error;

/// A transaction per alias that the test's work runs inside and that never commits (rule T1):
/// blocks inside it are savepoints, `durable` blocks are allowed directly inside, and their
/// callbacks never run (use [`capture_on_commit_callbacks`] to see them).
///
/// Begun outside any block, it stays with the thread that polls the test (`#[tokio::test]`
/// polls its body on the test thread): the blocks and calls the test awaits run inside it.
/// `.rollback().await` rolls it back and returns the connections to their pools; dropped
/// instead, the connections go back marked broken (a destructor cannot await a ROLLBACK), so
/// the pools discard them and the servers roll back.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # #[cfg(feature = "sqlite")] {
/// # use diesel::SqliteConnection;
/// # use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
/// use diesel_async::SimpleAsyncConnection;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel_atomic::aio::{self, testing::TestTransaction};
/// use diesel_atomic::{Database, Databases, Error};
/// type Conn = SyncConnectionWrapper<SqliteConnection>;
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// # let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(":memory:")).build().unwrap();
/// let _registry = Databases::new().add("default", Database::new_async(pool)).enter();
/// let test = TestTransaction::begin().await?;
/// aio::transaction::Atomic::new()
///     .durable(true)
///     .run(async || {
///         aio::connection(async |c: &mut Conn| c.batch_execute("CREATE TABLE t (id INTEGER)").await)
///             .await
///     })
///     .await?;
/// test.rollback().await;
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// # }
/// ```
#[must_use = "the test transaction rolls back when dropped"]
pub struct TestTransaction {
    blocks: Vec<(String, Entered)>,
    /// Its table is parked on the thread (begun outside any block).
    parked: bool,
    _not_send: PhantomData<*const ()>,
}

impl TestTransaction {
    /// A test transaction on every alias of the registry in force.
    pub async fn begin() -> Result<TestTransaction, Error> {
        let databases = crate::databases::current()?;
        let aliases: Vec<&str> = databases.aliases().collect();
        TestTransaction::begin_using(&aliases).await
    }

    /// A test transaction on the aliases given.
    pub async fn begin_using(aliases: &[&str]) -> Result<TestTransaction, Error> {
        let parked = !state::in_task_scope();
        if parked && !state::has_parked() {
            state::park(state::new_task());
        }
        let mut test = TestTransaction {
            blocks: Vec::with_capacity(aliases.len()),
            parked,
            _not_send: PhantomData,
        };
        let begun = state::scoped(async {
            for alias in aliases {
                lookup(alias)?;
                let entered = block::enter_test_block(alias).await?;
                test.blocks.push(((*alias).to_owned(), entered));
            }
            Ok::<(), Error>(())
        })
        .await;
        match begun {
            Ok(()) => Ok(test),
            Err(error) => {
                test.rollback().await;
                Err(error)
            }
        }
    }

    /// Rolls the transactions back and returns their connections to the pools.
    pub async fn rollback(mut self) {
        let blocks = std::mem::take(&mut self.blocks);
        state::scoped(async {
            for (alias, entered) in blocks.into_iter().rev() {
                block::leave_test_block(&alias, entered).await;
            }
        })
        .await;
        if self.parked {
            state::unpark_if_idle();
        }
    }
}

impl Drop for TestTransaction {
    fn drop(&mut self) {
        if self.blocks.is_empty() {
            return;
        }
        let blocks = std::mem::take(&mut self.blocks);
        let abandon = move || {
            for (alias, entered) in blocks.into_iter().rev() {
                block::abandon_test_block(&alias, entered);
            }
        };
        if self.parked {
            state::in_parked(abandon);
            state::unpark_if_idle();
        } else {
            abandon();
        }
    }
}

impl std::fmt::Debug for TestTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.blocks.iter().map(|(alias, _)| alias))
            .finish()
    }
}

/// The callbacks [`capture_on_commit_callbacks`] took out of the queue.
pub struct CapturedCallbacks {
    alias: String,
    count: usize,
    pending: Vec<AsyncCallback>,
}

impl CapturedCallbacks {
    /// How many callbacks were captured (executed or not).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none was captured.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Runs the captured callbacks that were not executed (`execute = false`), in order,
    /// futures awaited.
    pub async fn run(self) {
        hooks::run_captured(&self.alias, self.pending).await;
    }
}

impl std::fmt::Debug for CapturedCallbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedCallbacks")
            .field("len", &self.count)
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// Django's `captureOnCommitCallbacks` for the default alias (rule T2): awaits `f`, then
/// takes the callbacks it registered that are still queued (inside a test transaction they
/// never run otherwise); with `execute`, runs them (and those they register), in order.
pub async fn capture_on_commit_callbacks<T>(
    execute: bool,
    f: impl Future<Output = T>,
) -> (T, CapturedCallbacks) {
    capture_on_commit_callbacks_using(DEFAULT_DB_ALIAS, execute, f).await
}

/// [`capture_on_commit_callbacks`] on `alias`.
pub async fn capture_on_commit_callbacks_using<T>(
    alias: &str,
    execute: bool,
    f: impl Future<Output = T>,
) -> (T, CapturedCallbacks) {
    state::scoped(async {
        let mark = state::with(alias, |state| state.callbacks.len());
        let value = f.await;
        let mut captured = CapturedCallbacks {
            alias: alias.to_owned(),
            count: 0,
            pending: Vec::new(),
        };
        loop {
            let batch = state::with(alias, |state| rules::take_callbacks_since(state, mark));
            if batch.is_empty() {
                break;
            }
            captured.count += batch.len();
            if !execute {
                captured.pending.extend(batch);
                break;
            }
            hooks::run_captured(alias, batch).await;
        }
        (value, captured)
    })
    .await
}
