//! on_commit for async code (rules C1–C5, A4): registering callbacks, plain or futures, and
//! running them after the outermost COMMIT, in registration order, futures awaited there.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::engine::aio::state::{self, AsyncCallback, CallbackFn};
use crate::engine::hooks::panic_message;
use crate::engine::rules::{self, OnCommit};
use crate::error::Error;

/// Queues `callback` on the alias's open block of this task, runs it at once outside any
/// block (C1), or refuses it where the commit is out of sight.
pub(crate) fn on_commit(alias: &str, callback: AsyncCallback) -> Result<(), Error> {
    // Q1: a request transaction due but not begun counts as open; its callbacks wait.
    let Err(callback) = crate::scope::aio_request::queue_early(alias, callback) else {
        return Ok(());
    };
    let decision = if state::has_table() {
        state::with_others(alias, |state, others| {
            rules::on_commit(state, others, callback)
        })
    } else {
        OnCommit::RunNow(callback)
    };
    match decision {
        OnCommit::Queued => Ok(()),
        OnCommit::RunNow(callback) => {
            run_now(callback);
            Ok(())
        }
        OnCommit::Refused(callback, reason) => {
            drop(callback);
            Err(Error::OnCommitRefused {
                alias: alias.to_owned(),
                reason,
            })
        }
    }
}

/// C1 outside any block: a plain callback runs now; a future cannot be awaited from a
/// synchronous call, so it is spawned on the current tokio runtime.
fn run_now(callback: AsyncCallback) {
    let AsyncCallback { func, robust, name } = callback;
    match func {
        CallbackFn::Plain(func) => run_plain(func, robust, name, "in on_commit()"),
        CallbackFn::Future(future) => {
            tokio::spawn(async move {
                if robust {
                    if let Err(payload) = AssertUnwindSafe(future).catch_unwind().await {
                        log_robust_failure(name, "in on_commit()", panic_message(payload.as_ref()));
                    }
                } else {
                    future.await;
                }
            });
        }
    }
}

/// Runs a committed transaction's callbacks in registration order (C3, A4): plain ones
/// called, futures awaited. A plain callback's panic propagates and drops the rest (C4).
pub(crate) async fn run_after_commit(alias: &str, callbacks: Vec<AsyncCallback>) {
    run_queue(alias, callbacks, "in on_commit() during transaction").await;
}

/// Runs callbacks `capture_on_commit_callbacks(true, ..)` took out of the queue (T2): as
/// after a COMMIT, with Django's wording for a callback run at once (no transaction around).
pub(crate) async fn run_captured(alias: &str, callbacks: Vec<AsyncCallback>) {
    run_queue(alias, callbacks, "in on_commit()").await;
}

/// Runs `callbacks` in order; `when` is Django's wording for a robust one's failure.
async fn run_queue(alias: &str, callbacks: Vec<AsyncCallback>, when: &str) {
    if callbacks.is_empty() {
        return;
    }
    tracing::debug!(
        alias,
        count = callbacks.len(),
        "running on_commit callbacks"
    );
    for AsyncCallback { func, robust, name } in callbacks {
        tracing::trace!(callback = name, "on_commit callback");
        match func {
            CallbackFn::Plain(func) => run_plain(func, robust, name, when),
            CallbackFn::Future(future) if robust => {
                if let Err(payload) = AssertUnwindSafe(future).catch_unwind().await {
                    log_robust_failure(name, when, panic_message(payload.as_ref()));
                }
            }
            CallbackFn::Future(future) => future.await,
        }
    }
}

fn run_plain(func: Box<dyn FnOnce() + Send>, robust: bool, name: &str, when: &str) {
    if !robust {
        return func();
    }
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(func)) {
        log_robust_failure(name, when, panic_message(payload.as_ref()));
    }
}

/// Django's wording for a robust callback's failure (as the sync runtime logs it).
fn log_robust_failure(name: &str, when: &str, message: &str) {
    tracing::error!(callback = name, "Error calling {name} {when} ({message}).");
}
