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

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};

use futures_util::FutureExt;

use crate::engine::aio::block::{self, Armed};
use crate::engine::aio::hooks;
use crate::engine::aio::replica;
use crate::engine::aio::state::{self, AsyncCallback};
use crate::engine::rules::{AliasEnd, RequestEnd, RequestScope, RequestTransaction};
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
}

impl AsyncRequest {
    /// Whether `token` is one of the request's transactions: the view runs inside it, so
    /// everything the view awaits has its turn there (A3).
    pub(crate) fn holds_block(&self, token: BlockToken) -> bool {
        self.scope.aliases.iter().any(|(_, transaction)| {
            matches!(transaction, RequestTransaction::Begun(entered) if entered.token == token)
        })
    }
}

/// Runs `view` as one request (see the module doc). Nested requests are an error.
pub(crate) async fn request<T, E: From<Error>>(
    view: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    state::scoped(Box::pin(async move {
        let databases = state::with_task(|task| task.databases.clone());
        let aliases: Vec<(String, RequestTransaction)> = databases
            .map(|databases| {
                databases
                    .aliases()
                    .filter(|alias| {
                        databases
                            .get(alias)
                            .is_ok_and(|db| db.has_atomic_requests())
                    })
                    .map(|alias| (alias.to_owned(), RequestTransaction::Pending))
                    .collect()
            })
            .unwrap_or_default();
        let nested = state::with_task(|task| task.request.is_some());
        if nested {
            return Err(Error::RequestNested.into());
        }
        // The request is its reads' scope under `ReadYourWrites::Primary` (rule P2): commits
        // made before it, by earlier requests the task served, do not pin it to the primary.
        let scope_before = state::with_task(|task| {
            std::mem::replace(&mut task.read_scope_start, replica::serial_now())
        });
        let restore = move || state::with_task(|task| task.read_scope_start = scope_before);
        if aliases.is_empty() {
            let result = view.await;
            restore();
            return result;
        }
        state::with_task(|task| {
            task.request = Some(AsyncRequest {
                scope: RequestScope {
                    aliases,
                    exempt: Vec::new(),
                },
                early: Vec::new(),
                rollback: Vec::new(),
            })
        });
        let mut guard = Abandon { armed: true };
        let outcome = AssertUnwindSafe(view).catch_unwind().await;
        let ended = end(outcome).await;
        guard.armed = false;
        restore();
        match ended {
            Ok(result) => result,
            Err(payload) => panic::resume_unwind(payload),
        }
    }))
    .await
}

/// Rule Q3: ends the begun aliases one by one, in registration order, each committing and
/// running its callbacks before the next one ends.
async fn end<T, E: From<Error>>(
    mut outcome: std::thread::Result<Result<T, E>>,
) -> std::thread::Result<Result<T, E>> {
    state::with_task(|task| {
        if let Some(request) = &mut task.request {
            request.scope.view_ended();
        }
    });
    let mut end = RequestEnd::new(matches!(outcome, Ok(Ok(_))));
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
                outcome = Err(payload);
                end.ended(AliasEnd::CallbackPanicked);
            }
            continue;
        };
        let commit = end.commits();
        let mut armed = Armed::for_request(entered);
        let exit = block::leave(&alias, &mut armed, None, commit).await;
        armed.done();
        let ended = match exit.error {
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
                        outcome = Err(payload);
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
    state::with_task(|task| task.request = None);
    match (outcome, commit_error) {
        (Ok(Ok(_)), Some(error)) => Ok(Err(error.into())),
        (outcome, _) => outcome,
    }
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
        let request = state::try_with_task(|task| task.request.take()).flatten();
        let Some(request) = request else { return };
        for (_, transaction) in request.scope.aliases {
            if let RequestTransaction::Begun(entered) = transaction {
                block::cancel_entered(entered);
            }
        }
        drop(request.early);
    }
}

/// Rule Q1 at an async use of `alias`: begins its request transaction when it is due.
///
/// Not an `async fn`: outside requests, nearly every call, the answer is ready without
/// setting up the future that begins a transaction.
pub(crate) fn touch(alias: &str) -> impl Future<Output = Result<(), Error>> + '_ {
    let due = state::has_table()
        && state::with_task(|task| {
            task.request
                .as_mut()
                .is_some_and(|request| request.scope.begin_due(alias))
        });
    async move { if due { begin_due(alias).await } else { Ok(()) } }
}

/// [`touch`] when the request's transaction of `alias` is due.
async fn begin_due(alias: &str) -> Result<(), Error> {
    let begun = block::enter(&BlockOptions::nested(alias), None).await;
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
        Some((mine, rollback))
    });
    if let Some((early, rollback)) = early {
        state::with(alias, |state| {
            state
                .callbacks
                .extend(early.into_iter().map(|(_, callback)| callback));
            if rollback {
                state.needs_rollback = true;
            }
        });
    }
    result
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
