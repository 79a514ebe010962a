//! on_commit: registering callbacks and running them (rules C1–C5; the decisions are
//! `rules::on_commit`, `rules::plan_leave` and `rules::callbacks_survive`).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use crate::engine::rules::{self, OnCommit};
use crate::engine::state::{self, Callback};
use crate::error::Error;

/// Queues `callback` on the alias's open block, runs it at once outside any block (C1), or
/// refuses it where the commit is out of sight.
pub(crate) fn on_commit(alias: &str, callback: Callback) -> Result<(), Error> {
    #[cfg(feature = "async")]
    if crate::engine::aio::state::held_by_async_block(alias) {
        drop(callback);
        return Err(Error::SyncInsideAsync {
            alias: alias.to_owned(),
            advice: "register the callback with diesel_atomic::aio::transaction::on_commit \
                     (or aio::db(alias).on_commit), so it runs after the async block commits",
        });
    }
    match state::with_others(alias, |state, others| {
        rules::on_commit(state, others, callback)
    }) {
        OnCommit::Queued => Ok(()),
        OnCommit::RunNow(callback) => {
            run(callback, When::Immediately);
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

/// Runs a committed transaction's callbacks in registration order (C3). A plain callback's
/// panic propagates and drops the rest (C4); the state was reset before, so the next
/// transaction starts with an empty queue.
#[inline]
pub(crate) fn run_after_commit(alias: &str, callbacks: Vec<Callback>) {
    // The common case, kept inline: no callbacks, and an empty Vec owns no allocation.
    if callbacks.is_empty() {
        std::mem::forget(callbacks);
        return;
    }
    run_queue(alias, callbacks);
}

#[inline(never)]
fn run_queue(alias: &str, callbacks: Vec<Callback>) {
    tracing::debug!(
        alias,
        count = callbacks.len(),
        "running on_commit callbacks"
    );
    for callback in callbacks {
        run(callback, When::AfterCommit);
    }
}

/// Runs the callbacks of blocks that committed on a connection a `connection()` call lent
/// out, now that the call gave it back. They run from that call's guard, possibly while a
/// panic unwinds out of its closure: then a callback's panic cannot propagate, so each one is
/// caught and logged as a robust one is.
pub(crate) fn run_deferred(alias: &str, callbacks: Vec<Callback>) {
    if callbacks.is_empty() {
        return;
    }
    if !std::thread::panicking() {
        return run_queue(alias, callbacks);
    }
    for callback in callbacks {
        run(
            Callback {
                robust: true,
                ..callback
            },
            When::AfterCommit,
        );
    }
}

/// When a callback runs, which picks Django's wording for a robust callback's failure.
#[derive(Clone, Copy)]
pub(crate) enum When {
    Immediately,
    AfterCommit,
}

/// Runs one callback; a robust one's panic is caught and logged at ERROR (C4).
pub(crate) fn run(callback: Callback, when: When) {
    let Callback { func, robust, name } = callback;
    tracing::trace!(callback = name, "on_commit callback");
    if !robust {
        func();
        return;
    }
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(func)) {
        let message = panic_message(payload.as_ref());
        match when {
            When::AfterCommit => tracing::error!(
                callback = name,
                "Error calling {name} in on_commit() during transaction ({message})."
            ),
            When::Immediately => {
                tracing::error!(
                    callback = name,
                    "Error calling {name} in on_commit() ({message})."
                )
            }
        }
    }
}

/// The message of a panic payload (a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "a panic with a non-string payload"
    }
}
