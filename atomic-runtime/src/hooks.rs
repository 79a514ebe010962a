//! on_commit: queueing callbacks and running them (rules C1–C5).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use crate::error::Error;
use crate::state::{self, Callback, Slot};

/// Queues `func` on the alias's open block, or runs it at once outside any block (C1).
///
/// Refused where the commit is out of sight: inside a block that runs in the caller's own
/// `conn.transaction(..)`, and inside a `connection()` call outside any block, whose closure
/// may have opened such a transaction on the connection it holds.
pub(crate) fn on_commit<F: FnOnce() + 'static>(
    alias: &str,
    func: F,
    robust: bool,
) -> Result<(), Error> {
    let callback = Callback {
        func: Box::new(func),
        robust,
        name: std::any::type_name::<F>(),
    };
    let decision = state::with(alias, |st| match st.blocks.last() {
        Some(block) if block.commit_out_of_sight => {
            Decision::Refuse(callback, INSIDE_USER_TRANSACTION)
        }
        Some(_) => {
            st.callbacks.push(callback);
            Decision::Queued
        }
        None if matches!(st.slot, Slot::Lent { .. }) => {
            Decision::Refuse(callback, INSIDE_LENT_CONNECTION)
        }
        None => Decision::RunNow(callback),
    });
    match decision {
        Decision::Queued => Ok(()),
        Decision::RunNow(callback) => {
            run(callback, When::Immediately);
            Ok(())
        }
        Decision::Refuse(callback, reason) => {
            drop(callback);
            Err(Error::OnCommitRefused {
                alias: alias.to_owned(),
                reason,
            })
        }
    }
}

enum Decision {
    Queued,
    RunNow(Callback),
    Refuse(Callback, &'static str),
}

const INSIDE_USER_TRANSACTION: &str = "the innermost atomic block runs inside a transaction \
     that diesel-atomic did not open, the caller's own `conn.transaction(..)`, whose commit or \
     rollback it cannot see; open that transaction with an atomic block instead (`#[atomic]`, \
     `transaction::Atomic::run_on`), so the callback runs after it commits";

const INSIDE_LENT_CONNECTION: &str = "inside a `connection()` call outside any atomic block, \
     the closure holds the connection and may have opened a transaction of diesel's own \
     (`conn.transaction(..)`) that diesel-atomic cannot see; open an atomic block around the \
     work (`#[atomic]`, `transaction::atomic`), or register the callback after `connection()` \
     returns";

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

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "a panic with a non-string payload"
    }
}
