//! Test helpers: Django's `TestCase` transaction and `captureOnCommitCallbacks` (rules T1, T2).

use std::marker::PhantomData;

use crate::databases::{self, DEFAULT_DB_ALIAS};
use crate::engine::block;
use crate::engine::hooks::{self, When};
use crate::engine::rules;
use crate::engine::state::{self, Callback, Entered};
use crate::error::Error;

/// A transaction per alias for the current thread, rolled back when dropped.
///
/// Every atomic block inside becomes a savepoint, on_commit callbacks never run (use
/// [`capture_on_commit_callbacks`] to see them), and a durable block directly inside is
/// allowed, as under Django's `TestCase`. Begin it outside every block; it is not `Send`.
///
/// Ambient code under test uses the test's connection by itself. Explicit-mode code must be
/// handed that connection (`connection(|conn| code_under_test(conn))`): a block on any other
/// connection of the alias is `Error::AliasInUse`, because its work would escape the rollback.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::SqliteConnection;
/// use diesel_atomic::testing::TestTransaction;
/// use diesel_atomic::{transaction, Database, Databases, Error};
///
/// # let pool = Pool::builder().max_size(1)
/// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
/// let _registry = Databases::new().add("default", Database::new(pool)).enter();
/// let test = TestTransaction::begin()?;
/// assert!(transaction::in_atomic_block());
/// transaction::Atomic::new().durable(true).run(|| Ok::<_, Error>(()))?;
/// drop(test); // everything rolled back
/// assert!(!transaction::in_atomic_block());
/// # Ok::<(), Error>(())
/// ```
#[must_use = "the test transaction rolls back when dropped"]
pub struct TestTransaction {
    /// Open blocks, in the order they began; rolled back in reverse.
    blocks: Vec<(String, Entered)>,
    _not_send: PhantomData<*const ()>,
}

impl TestTransaction {
    /// Begins on every configured alias, in registration order.
    pub fn begin() -> Result<TestTransaction, Error> {
        let databases = databases::current()?;
        let aliases: Vec<&str> = databases.aliases().collect();
        TestTransaction::begin_using(&aliases)
    }

    /// Begins on the given aliases only.
    pub fn begin_using(aliases: &[&str]) -> Result<TestTransaction, Error> {
        let mut test = TestTransaction {
            blocks: Vec::with_capacity(aliases.len()),
            _not_send: PhantomData,
        };
        for alias in aliases {
            // On error, `test` drops and rolls back the aliases already begun.
            let entered = block::enter_test_block(alias)?;
            test.blocks.push(((*alias).to_owned(), entered));
        }
        Ok(test)
    }
}

impl Drop for TestTransaction {
    fn drop(&mut self) {
        while let Some((alias, entered)) = self.blocks.pop() {
            block::abandon_test_block(&alias, entered);
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

/// Callbacks captured by [`capture_on_commit_callbacks`], in registration order.
///
/// Iterating yields the callbacks not yet run (none when they were executed).
pub struct CapturedCallbacks {
    count: usize,
    pending: Vec<Box<dyn FnOnce()>>,
}

impl CapturedCallbacks {
    /// How many were captured (and run, if `execute`).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.count == 0
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

impl IntoIterator for CapturedCallbacks {
    type Item = Box<dyn FnOnce()>;
    type IntoIter = std::vec::IntoIter<Box<dyn FnOnce()>>;

    fn into_iter(self) -> Self::IntoIter {
        self.pending.into_iter()
    }
}

/// Django's `captureOnCommitCallbacks` on the default alias.
///
/// Returns `f`'s value and the callbacks registered on `"default"` while `f` ran that survived
/// (not dropped by a savepoint rollback). They are taken out of the queue; with `execute` they
/// are run in order, repeating for the callbacks those register, until none are new.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// # use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::SqliteConnection;
/// use diesel_atomic::testing::{capture_on_commit_callbacks, TestTransaction};
/// use diesel_atomic::{transaction, Database, Databases};
///
/// # let pool = Pool::builder().max_size(1)
/// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
/// let _registry = Databases::new().add("default", Database::new(pool)).enter();
/// let _test = TestTransaction::begin()?;
/// let ((), callbacks) = capture_on_commit_callbacks(false, || {
///     transaction::on_commit(|| println!("welcome mail")).unwrap();
/// });
/// assert_eq!(callbacks.len(), 1);
/// for callback in callbacks {
///     callback();
/// }
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
pub fn capture_on_commit_callbacks<T>(
    execute: bool,
    f: impl FnOnce() -> T,
) -> (T, CapturedCallbacks) {
    capture_on_commit_callbacks_using(DEFAULT_DB_ALIAS, execute, f)
}

/// [`capture_on_commit_callbacks`] for any alias.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel_atomic::testing::capture_on_commit_callbacks_using;
///
/// let (value, callbacks) = capture_on_commit_callbacks_using("other", true, || 7);
/// assert_eq!((value, callbacks.len()), (7, 0));
/// ```
pub fn capture_on_commit_callbacks_using<T>(
    alias: &str,
    execute: bool,
    f: impl FnOnce() -> T,
) -> (T, CapturedCallbacks) {
    let mark = state::with(alias, |state| state.callbacks.len());
    let value = f();
    let mut captured = CapturedCallbacks {
        count: 0,
        pending: Vec::new(),
    };
    loop {
        let batch = take_since(alias, mark);
        if batch.is_empty() {
            break;
        }
        captured.count += batch.len();
        if !execute {
            captured
                .pending
                .extend(batch.into_iter().map(|callback| callback.func));
            break;
        }
        for callback in batch {
            hooks::run(callback, When::Immediately);
        }
    }
    (value, captured)
}

fn take_since(alias: &str, mark: usize) -> Vec<Callback> {
    state::with(alias, |state| rules::take_callbacks_since(state, mark))
}
