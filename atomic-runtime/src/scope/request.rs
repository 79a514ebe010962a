//! Per-request transactions (Django's `ATOMIC_REQUESTS`): rules Q1–Q3.
//!
//! `request(view)` records which aliases want a request transaction; each one begins lazily,
//! at the view's first use of the alias (an ambient connection, a block, `on_commit`,
//! `set_rollback`, a manual savepoint), as an ordinary outermost ambient block. So the view
//! itself decides to opt out: `#[non_atomic_requests]` marks its aliases exempt when its body
//! starts, before any use, and routers need no registration step. When the view returns, the
//! begun aliases commit (Ok) or roll back (Err, panic) in the order they were added to
//! `Databases`.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};

use crate::databases;
use crate::engine::block;
use crate::engine::hooks;
use crate::engine::rules::{AliasEnd, RequestEnd, RequestScope, RequestTransaction};
use crate::engine::state;
use crate::error::Error;
use crate::options::BlockOptions;

thread_local! {
    /// Whether a `request()` runs on this thread: the one check every use of an alias pays.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static SCOPE: RefCell<RequestScope> = const { RefCell::new(RequestScope::new()) };
}

/// Runs `view` as Django runs a view under `ATOMIC_REQUESTS`.
///
/// For every alias whose [`Database`](crate::Database) has `atomic_requests(true)`, the view's
/// work on that alias is one transaction: committed when the view returns `Ok`, rolled back
/// when it returns `Err` or panics (the panic then resumes). The transaction begins at the
/// view's first use of the alias, so inside the view [`in_atomic_block`] is true, its own
/// `#[atomic]` blocks are savepoints, `durable = true` blocks fail with
/// [`Error::DurableNested`], and `on_commit` callbacks run after the request commits. Only the
/// view is wrapped: middleware that runs before or after it works in autocommit mode.
///
/// A view function marked `#[non_atomic_requests]` (or `#[non_atomic_requests(using =
/// "other")]`) runs in autocommit mode on that alias instead; its own `#[atomic]` blocks are
/// outermost transactions.
///
/// **Several aliases are independent transactions**, committed one after the other in the
/// order they were added to [`Databases`](crate::Databases); there is no two-phase commit. If
/// a COMMIT fails, the aliases committed before it stay committed, the ones after it roll
/// back, and `request` returns the COMMIT's error. Keep a request's writes on one alias when
/// they must be all-or-nothing together.
///
/// Explicit-mode blocks (a `conn: &mut C` of your own) cannot join the request's transaction,
/// which runs on the alias's pooled connection: on an alias with a request transaction they
/// fail with [`Error::AliasInUse`]. Use the ambient connection in views, or exempt the view.
///
/// [`in_atomic_block`]: crate::transaction::in_atomic_block
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel::prelude::*;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel_atomic::{transaction, Database, Databases, Error};
///
/// # let pool = Pool::builder().max_size(1)
/// #     .build(ConnectionManager::<SqliteConnection>::new(":memory:")).unwrap();
/// let _registry = Databases::new()
///     .add("default", Database::new(pool).atomic_requests(true))
///     .enter();
///
/// let answer = diesel_atomic::request(|| {
///     // The request's transaction begins here, at the view's first use of "default".
///     diesel_atomic::connection(|conn: &mut SqliteConnection| {
///         diesel::sql_query("CREATE TABLE hits (n INTEGER)").execute(conn)?;
///         diesel::sql_query("INSERT INTO hits VALUES (1)").execute(conn)
///     })?;
///     assert!(transaction::in_atomic_block());
///     Ok::<_, Error>("ok")
/// })?;
/// assert_eq!(answer, "ok");
/// assert!(!transaction::in_atomic_block());
/// # Ok::<(), Error>(())
/// ```
pub fn request<T, E: From<Error>>(view: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let (outcome, _report) = run(view)?;
    match outcome {
        Ok(result) => result,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// How a request's transactions ended, for the web layer's log line.
#[derive(Debug, Default)]
pub struct RequestReport {
    /// The aliases whose request transaction committed, in commit order.
    pub committed: Vec<String>,
    /// The aliases whose request transaction rolled back.
    pub rolled_back: Vec<String>,
    /// The alias whose plain on_commit callback panicked after its COMMIT, if one did (the
    /// outcome's panic is then that callback's, not the view's).
    pub callback_panicked: Option<String>,
}

/// [`request`] without resuming a panic: the view's outcome (or the panic of a callback that
/// ran after a COMMIT) and how each alias's transaction ended.
pub(crate) fn run<T, E: From<Error>>(
    view: impl FnOnce() -> Result<T, E>,
) -> Result<(std::thread::Result<Result<T, E>>, RequestReport), Error> {
    if ACTIVE.with(Cell::get) {
        return Err(Error::RequestNested);
    }
    // Rule P2: under `ReadYourWrites::Primary`, the view's commits send its later reads to
    // the primary; commits made before the request (by another request on this thread) do
    // not.
    let _read_scope = state::ReadScope::begin();
    let aliases: Vec<(String, RequestTransaction)> = databases::current()
        .map(|databases| {
            databases
                .atomic_request_aliases()
                .map(|alias| (alias.to_owned(), RequestTransaction::Pending))
                .collect()
        })
        .unwrap_or_default();
    if aliases.is_empty() {
        let outcome = panic::catch_unwind(AssertUnwindSafe(view));
        return Ok((outcome, RequestReport::default()));
    }

    SCOPE.with_borrow_mut(|scope| {
        scope.aliases = aliases;
        scope.exempt.clear();
    });
    ACTIVE.with(|active| active.set(true));
    let mut outcome = panic::catch_unwind(AssertUnwindSafe(view));
    SCOPE.with_borrow_mut(RequestScope::view_ended);

    // Rule Q3, nested as Django nests one atomic wrapper per alias: each alias commits and
    // runs its callbacks before the next one ends, and every alias leaves its block whatever
    // happens. An alias ends only after the ones before it: their callbacks run inside its
    // request transaction (and may begin it), as they run inside its wrapper in Django.
    let mut end = RequestEnd::new(matches!(outcome, Ok(Ok(_))));
    let mut commit_error = None;
    let mut report = RequestReport::default();
    while let Some((alias, begun)) = SCOPE.with_borrow_mut(RequestScope::end_next) {
        // Never begun: nothing to commit or roll back.
        let Some(entered) = begun else { continue };
        let commit = end.commits();
        let exit = block::leave(&alias, entered, None, commit);
        let ended = match exit.error {
            None if commit => {
                report.committed.push(alias.clone());
                let callbacks = exit.callbacks;
                let ran = panic::catch_unwind(AssertUnwindSafe(|| {
                    hooks::run_after_commit(&alias, callbacks);
                }));
                match ran {
                    Ok(()) => AliasEnd::Committed,
                    Err(payload) => {
                        tracing::error!(
                            alias,
                            "an on_commit callback panicked after the request's COMMIT; the \
                             aliases committed after it roll back"
                        );
                        report.callback_panicked = Some(alias);
                        outcome = Err(payload);
                        AliasEnd::CallbackPanicked
                    }
                }
            }
            None => {
                report.rolled_back.push(alias);
                AliasEnd::RolledBack
            }
            Some(error) if commit => {
                tracing::error!(alias, %error, "the request's COMMIT failed");
                report.rolled_back.push(alias);
                commit_error = Some(error);
                AliasEnd::CommitFailed
            }
            Some(error) => {
                tracing::error!(alias, %error, "rolling back the request's transaction failed");
                report.rolled_back.push(alias);
                AliasEnd::RolledBack
            }
        };
        end.ended(ended);
    }
    // The request is over: what runs after it works in autocommit mode.
    ACTIVE.with(|active| active.set(false));

    let outcome = match (outcome, commit_error) {
        (Ok(Ok(_)), Some(error)) => Ok(Err(error.into())),
        (outcome, _) => outcome,
    };
    Ok((outcome, report))
}

/// Called by every API entry point that uses `alias` (never by the engine): begins the
/// request's transaction on it if one is due (rule Q1's laziness).
#[inline]
pub(crate) fn touch(alias: &str) -> Result<(), Error> {
    if ACTIVE.with(Cell::get) {
        begin_if_due(alias)
    } else {
        Ok(())
    }
}

fn begin_if_due(alias: &str) -> Result<(), Error> {
    if !SCOPE.with_borrow_mut(|scope| scope.begin_due(alias)) {
        return Ok(());
    }
    let begun = block::enter(&BlockOptions::nested(alias), None);
    let (entered, result) = match begun {
        Ok(entered) => (Some(entered), Ok(())),
        // Not begun: the next use tries again.
        Err(error) => (None, Err(error)),
    };
    SCOPE.with_borrow_mut(|scope| scope.begun(alias, entered));
    result
}

/// Whether `alias`'s request transaction is due but not begun: the view already counts as
/// inside an atomic block there (`in_atomic_block`, `get_rollback`).
pub(crate) fn pending(alias: &str) -> bool {
    ACTIVE.with(Cell::get) && SCOPE.with_borrow(|scope| scope.pending(alias))
}

/// `#[non_atomic_requests(using = alias)]`: runs `body` with `alias` exempt from the request's
/// transaction (rule Q2).
pub(crate) fn non_atomic<R>(alias: &'static str, body: impl FnOnce() -> R) -> R {
    if !ACTIVE.with(Cell::get) {
        return body();
    }
    SCOPE.with_borrow_mut(|scope| {
        if scope.exempt_too_late(alias) {
            tracing::warn!(
                alias,
                "#[non_atomic_requests]: the request already began its transaction on this \
                 alias before the view ran, so the view runs inside it; exempt the function \
                 that request() calls"
            );
        }
        scope.exempt.push(alias);
    });
    // Popped also when the body panics.
    struct Exempt;
    impl Drop for Exempt {
        fn drop(&mut self) {
            SCOPE.with_borrow_mut(|scope| {
                scope.exempt.pop();
            });
        }
    }
    let _exempt = Exempt;
    body()
}
