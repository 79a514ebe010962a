//! Per-request transactions for async code (`aio::request`, Django's `ATOMIC_REQUESTS`):
//! rules Q1–Q3 as `scope::request` has them for sync views, over the task's state.
//!
//! Each `atomic_requests` alias begins lazily, at the view's first async use of it (a block,
//! `aio::connection`), as an ordinary outermost ambient block. The synchronous calls
//! (`on_commit`, `set_rollback`, `get_rollback`, `in_atomic_block`) cannot await a BEGIN: on
//! an alias whose transaction is due but not begun, they act on the request itself (its
//! callbacks wait for the BEGIN, or for the end of a request that never needed one). When
//! the view returns, the begun aliases commit (Ok) or roll back (Err, panic) in the order
//! they were added to `Databases`; a request dropped before that (a client that went away)
//! never commits (A2).
//!
//! [`run`] is the same request with the decision taken from the view's output by the caller
//! (the tower layer commits on the response head, not on `Ok`) and with [`AfterBegin`] hooks:
//! work run on an alias's request transaction right after its BEGIN (`SET LOCAL` for
//! row-level security), so only for requests that use the alias.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::engine::aio::ambient;
use crate::engine::aio::block::{self, Armed};
use crate::engine::aio::hooks;
use crate::engine::aio::lend::Lent;
use crate::engine::aio::replica;
use crate::engine::aio::state::{self, AsyncCallback, InBlock};
use crate::engine::rules::{self, AliasEnd, RequestEnd, RequestScope, RequestTransaction};
use crate::engine::state::BlockToken;
use crate::error::Error;
use crate::options::BlockOptions;

/// The running request of a task.
pub(crate) struct AsyncRequest {
    scope: RequestScope,
    /// Callbacks registered on an alias whose transaction had not begun yet.
    early: Vec<(Box<str>, AsyncCallback)>,
    /// Aliases marked for rollback before their transaction began.
    rollback: Vec<Box<str>>,
    /// Hooks still to run, each right after its alias's BEGIN.
    after_begin: Vec<AfterBegin>,
}

impl AsyncRequest {
    /// Whether `token` is one of the request's transactions: the view runs inside it, so
    /// everything the view awaits has its turn there (A3).
    pub(crate) fn holds_block(&self, token: BlockToken) -> bool {
        self.scope.aliases.iter().any(|(_, transaction)| {
            matches!(transaction, RequestTransaction::Begun(entered) if entered.token == token)
        })
    }

    /// Whether the request's transaction of `alias` is due: the request uses `alias` for the
    /// first time (see [`touch`]).
    pub(crate) fn begin_due(&mut self, alias: &str) -> bool {
        self.scope.begin_due(alias)
    }
}

/// Work run on one alias's request transaction right after its BEGIN, on its connection:
/// transaction-scoped settings such as PostgreSQL's `set_config(.., true)` for row-level
/// security. A request that never uses the alias never runs it.
pub struct AfterBegin {
    alias: Box<str>,
    /// The hook with its connection type erased: `None` when the alias's connection is of
    /// another type than the hook's.
    run: ErasedHook,
    /// The connection type the hook takes, for the error when the alias holds another.
    takes: &'static str,
}

type ErasedHook =
    Box<dyn for<'c> FnOnce(&'c mut dyn Any) -> Option<BoxFuture<'c, Result<(), Error>>> + Send>;

impl AfterBegin {
    /// A hook on `alias`'s connection, of type `C`.
    pub fn new<C, F>(alias: &str, hook: F) -> AfterBegin
    where
        C: Send + 'static,
        F: for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<(), Error>> + Send + 'static,
    {
        AfterBegin {
            alias: alias.into(),
            run: Box::new(move |conn: &mut dyn Any| conn.downcast_mut::<C>().map(hook)),
            takes: std::any::type_name::<C>(),
        }
    }
}

/// Runs `view` as one request (see the module doc). Nested requests are an error.
pub(crate) async fn request<T, E: From<Error>>(
    view: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match run(None, Vec::new(), view, Result::is_ok).await {
        Ok(result) => result,
        Err(error) => Err(error.into()),
    }
}

/// Runs `view` as one request whose begun aliases commit when `commits` says so of the view's
/// output (and no rollback flag is set), with `after_begin` run after each alias's BEGIN.
///
/// `Err` when the request could not run (nested in another, a hook on an alias without a
/// request transaction: the view never ran) or a COMMIT failed (the output is dropped; no
/// callback of that alias ran). A panic of the view or of `commits` rolls back and goes on.
///
/// The request is recorded in the task's table only when it first uses the runtime
/// (`state::RequestScoped`): a request that never does ends with nothing to do. `databases`:
/// a registry of the request's own (the tower layer's), entered around each poll and drop.
pub(crate) fn run<T>(
    databases: Option<crate::databases::Databases>,
    after_begin: Vec<AfterBegin>,
    view: impl Future<Output = T>,
    commits: impl FnOnce(&T) -> bool,
) -> impl Future<Output = Result<T, Error>> {
    // Boxed as it is made, not at its first poll: the future handed back is a pointer, so
    // whoever holds it (the tower layer boxes it again) does not copy the view into a
    // second large allocation first. The view in a box of its own: an async block keeps
    // what it captured for its whole life, so the view inline would be stored twice (as
    // captured, and as awaited), and the request's box would not fit the allocator's
    // thread cache (1 KB).
    let view = Box::pin(view);
    state::request_scoped(
        databases,
        after_begin,
        Box::pin(async move {
            let mut guard = Abandon { armed: true };
            // The decision is taken inside the catch: a panicking `commits` rolls back too.
            let outcome = AssertUnwindSafe(async move {
                let output = view.await;
                let commit = commits(&output);
                (output, commit)
            })
            .catch_unwind()
            .await;
            let (outcome, commit) = match outcome {
                Ok((output, commit)) => (Ok(output), commit),
                Err(payload) => (Err(payload), false),
            };
            let (callback_panic, commit_error) = if state::request_recorded() {
                end(commit).await
            } else {
                (None, None)
            };
            // A callback's panic goes on in place of the view's output.
            let outcome = match callback_panic {
                Some(payload) => Err(payload),
                None => outcome,
            };
            guard.armed = false;
            match (outcome, commit_error) {
                (Err(payload), _) => panic::resume_unwind(payload),
                (Ok(_), Some(error)) => Err(error),
                (Ok(output), None) => Ok(output),
            }
        }),
    )
}

/// Records a request starting in `task` (the current table, or its own): its aliases with
/// `atomic_requests`, pending; its read scope starting at `serial` (rule P2). Gives the read
/// scope to restore at its end.
///
/// `Err` (nothing changed) when the task runs a request already, or a hook is on an alias
/// without a request transaction: a hook that could never run would leave its setting (a
/// tenant for row-level security) silently unset, so it is refused before the view runs.
pub(crate) fn record(
    task: &mut state::Task,
    after_begin: Vec<AfterBegin>,
    serial: u64,
) -> Result<u64, Error> {
    if task.request.is_some() {
        return Err(Error::RequestNested);
    }
    let aliases: Vec<(String, RequestTransaction)> = match &task.databases {
        Some(databases) => databases
            .atomic_request_aliases()
            .map(|alias| (alias.to_owned(), RequestTransaction::Pending))
            .collect(),
        None => Vec::new(),
    };
    if let Some(hook) = after_begin
        .iter()
        .find(|hook| !aliases.iter().any(|(alias, _)| **alias == *hook.alias))
    {
        return Err(Error::AfterBeginWithoutRequestTransaction {
            alias: hook.alias.to_string(),
        });
    }
    // The request is its reads' scope under `ReadYourWrites::Primary` (rule P2): commits
    // made before it, by earlier requests the task served, do not pin it to the primary.
    let restore = std::mem::replace(&mut task.read_scope_start, serial);
    if !aliases.is_empty() {
        task.request = Some(AsyncRequest {
            scope: RequestScope {
                aliases,
                exempt: Vec::new(),
            },
            early: Vec::new(),
            rollback: Vec::new(),
            after_begin,
        });
    }
    Ok(restore)
}

/// [`record`] in the table a request makes at its first use of the runtime: a fresh one,
/// whose read scope starts now (the request made no commit before: it had not used the
/// runtime).
pub(crate) fn record_in_new_table(task: &mut state::Task) {
    // A fresh table runs no request, and a request with hooks never waits for its table.
    if let Err(error) = record(task, Vec::new(), replica::serial_now()) {
        tracing::error!(%error, "recording a request in its new table");
    }
}

/// Rule Q3: ends the begun aliases one by one, in registration order, each committing (when
/// `commit`) and running its callbacks before the next one ends. Returns the last panic of a
/// callback (it replaces the view's outcome) and the failed COMMIT's error.
async fn end(commit: bool) -> (Option<Box<dyn Any + Send>>, Option<Error>) {
    let mut callback_panic = None;
    state::with_task(|task| {
        if let Some(request) = &mut task.request {
            request.scope.view_ended();
        }
    });
    let mut end = RequestEnd::new(commit);
    let mut commit_error = None;
    loop {
        let next = state::with_task(|task| task.request.as_mut().and_then(|r| r.scope.end_next()));
        let Some((alias, begun)) = next else { break };
        let Some(entered) = begun else {
            // Never begun: the callbacks it queued run as after an empty COMMIT.
            let (early, rolled_back) = take_early(&alias);
            if end.commits()
                && !rolled_back
                && let Err(payload) = AssertUnwindSafe(hooks::run_after_commit(&alias, early))
                    .catch_unwind()
                    .await
            {
                callback_panic = Some(payload);
                end.ended(AliasEnd::CallbackPanicked);
            }
            continue;
        };
        let commit = end.commits();
        let mut armed = Armed::for_request(entered);
        // Boxed: the request's own future stays small for the requests that begin nothing.
        let exit = Box::pin(ambient::leave(&alias, &mut armed, commit)).await;
        armed.done();
        let ended = match exit.error {
            // Nothing to run: no future set up for it.
            None if commit && exit.callbacks.is_empty() => AliasEnd::Committed,
            None if commit => {
                match AssertUnwindSafe(hooks::run_after_commit(&alias, exit.callbacks))
                    .catch_unwind()
                    .await
                {
                    Ok(()) => AliasEnd::Committed,
                    Err(payload) => {
                        tracing::error!(
                            alias,
                            "an on_commit callback panicked after the request's COMMIT; the \
                             aliases committed after it roll back"
                        );
                        callback_panic = Some(payload);
                        AliasEnd::CallbackPanicked
                    }
                }
            }
            None => AliasEnd::RolledBack,
            Some(error) if commit => {
                tracing::error!(alias, %error, "the request's COMMIT failed");
                commit_error = Some(error);
                AliasEnd::CommitFailed
            }
            Some(error) => {
                tracing::error!(alias, %error, "rolling back the request's transaction failed");
                AliasEnd::RolledBack
            }
        };
        end.ended(ended);
    }
    // Hooks of aliases the request never used go with it, after the borrow.
    let request = state::with_task(|task| task.request.take());
    drop(request);
    (callback_panic, commit_error)
}

fn take_early(alias: &str) -> (Vec<AsyncCallback>, bool) {
    state::with_task(|task| {
        let Some(request) = &mut task.request else {
            return (Vec::new(), false);
        };
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut request.early)
            .into_iter()
            .partition(|(name, _)| &**name == alias);
        request.early = others;
        let rolled_back = request.rollback.iter().any(|name| &**name == alias);
        (
            mine.into_iter().map(|(_, callback)| callback).collect(),
            rolled_back,
        )
    })
}

/// A request dropped before its end (the client went away): its begun aliases are cancelled
/// as dropped outermost blocks are (A2): never committed, their connections discarded.
struct Abandon {
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The table the request runs in is current here (the request's drop enters it);
        // a request that never made one has nothing to abandon.
        let request = state::try_with_made(|task| task.request.take()).flatten();
        let Some(request) = request else { return };
        for (_, transaction) in request.scope.aliases {
            if let RequestTransaction::Begun(entered) = transaction {
                block::cancel_entered(entered);
            }
        }
        drop(request.early);
    }
}

/// What [`touch`] returns: ready at once, or the boxed BEGIN of the request's transaction.
pub(crate) type Touch<'a> = futures_util::future::Either<
    std::future::Ready<Result<(), Error>>,
    BoxFuture<'a, Result<(), Error>>,
>;

/// Rule Q1 at an async use of `alias`: begins its request transaction when it is due.
///
/// Not an `async fn`: outside requests, nearly every call, the answer is ready without
/// setting up the future that begins a transaction; that one is boxed, so the caller's
/// future does not carry its size (about 1 KB) on every call.
pub(crate) fn touch(alias: &str) -> Touch<'_> {
    use futures_util::future::{Either, FutureExt};
    let due = state::has_table()
        && state::with_task(|task| {
            task.request
                .as_mut()
                .is_some_and(|request| request.begin_due(alias))
        });
    if due {
        Either::Right(begin_due(alias).boxed())
    } else {
        Either::Left(std::future::ready(Ok(())))
    }
}

/// [`touch`] when the request's transaction of `alias` is due (`RequestScope::begin_due`
/// marked it beginning).
pub(crate) async fn begin_due(alias: &str) -> Result<(), Error> {
    let begun = ambient::enter(&BlockOptions::nested(alias)).await;
    let (entered, result) = match begun {
        Ok(armed) => (Some(armed.into_entered()), Ok(())),
        Err(error) => (None, Err(error)),
    };
    let early = state::with_task(|task| {
        let request = task.request.as_mut()?;
        let began = entered.is_some();
        request.scope.begun(alias, entered);
        if !began {
            return None;
        }
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut request.early)
            .into_iter()
            .partition(|(name, _)| &**name == alias);
        request.early = others;
        let rollback = request.rollback.iter().any(|name| &**name == alias);
        let hook = request
            .after_begin
            .iter()
            .position(|hook| &*hook.alias == alias)
            .map(|at| request.after_begin.swap_remove(at));
        Some((mine, rollback, hook))
    });
    let Some((early, rollback, hook)) = early else {
        return result;
    };
    state::with(alias, |state| {
        state
            .callbacks
            .extend(early.into_iter().map(|(_, callback)| callback));
        if rollback {
            state.needs_rollback = true;
        }
    });
    match hook {
        Some(hook) => run_after_begin(alias, hook).await,
        None => result,
    }
}

/// Runs `alias`'s [`AfterBegin`] hook on the request transaction's connection, just begun.
/// A hook that fails marks the transaction for rollback (F2): a request must not go on, and
/// commit, without the settings its hook was there to make.
async fn run_after_begin(alias: &str, hook: AfterBegin) -> Result<(), Error> {
    let mut lent = Lent::take(alias).await?;
    let token = lent.token;
    let expected = lent.type_name();
    let ran = match (hook.run)(lent.conn().as_any()) {
        // Polled under the lend's token, as an `aio::connection` closure: the hook reaching
        // for the alias's ambient connection is refused, never a deadlock (A3).
        Some(future) => {
            InBlock {
                token,
                body: future,
            }
            .await
        }
        None => Err(Error::AfterBeginWrongConnectionType {
            alias: alias.to_owned(),
            expected,
            takes: hook.takes,
        }),
    };
    lent.give_back().await;
    if let Err(error) = &ran {
        tracing::error!(
            alias,
            %error,
            "the request's after_begin hook failed; its transaction will roll back"
        );
        state::with(alias, |state| {
            let _ = rules::set_rollback(state, true);
        });
    }
    ran
}

/// Whether `alias`'s request transaction is due but not begun (Q1: it counts as open).
pub(crate) fn pending(alias: &str) -> bool {
    state::has_table()
        && state::with_task(|task| {
            task.request
                .as_ref()
                .is_some_and(|request| request.scope.pending(alias))
        })
}

/// `on_commit` on a pending alias: the callback waits for its BEGIN (or the request's end).
/// Hands the callback back when the alias is not pending.
pub(crate) fn queue_early(alias: &str, callback: AsyncCallback) -> Result<(), AsyncCallback> {
    if !pending(alias) {
        return Err(callback);
    }
    state::with_task(|task| {
        if let Some(request) = &mut task.request {
            request.early.push((alias.into(), callback));
        }
    });
    Ok(())
}

/// `set_rollback` / `get_rollback` on a pending alias.
pub(crate) fn rollback_flag(alias: &str, set: Option<bool>) -> Option<bool> {
    if !pending(alias) {
        return None;
    }
    state::with_task(|task| {
        let request = task.request.as_mut()?;
        if let Some(flag) = set {
            request.rollback.retain(|name| &**name != alias);
            if flag {
                request.rollback.push(alias.into());
            }
        }
        Some(request.rollback.iter().any(|name| &**name == alias))
    })
}

/// `#[non_atomic_requests]` on an async view: `body` runs exempt from `alias`'s request
/// transaction (Q2).
pub(crate) async fn non_atomic<R>(alias: &'static str, body: impl Future<Output = R>) -> R {
    if !state::has_table() || !state::with_task(|task| task.request.is_some()) {
        return body.await;
    }
    state::with_task(|task| {
        if let Some(request) = &mut task.request {
            if request.scope.exempt_too_late(alias) {
                tracing::warn!(
                    alias,
                    "#[non_atomic_requests]: the request already began its transaction on \
                     this alias before the view ran, so the view runs inside it"
                );
            }
            request.scope.exempt.push(alias);
        }
    });
    struct Exempt;
    impl Drop for Exempt {
        fn drop(&mut self) {
            state::try_with_task(|task| {
                if let Some(request) = &mut task.request {
                    request.scope.exempt.pop();
                }
            });
        }
    }
    let _exempt = Exempt;
    body.await
}
