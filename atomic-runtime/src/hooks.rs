//! on_commit: queueing callbacks and running them (rules C1–C5).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use crate::state::{self, Callback};

/// Queues `func` on the alias's open block, or runs it at once outside any block (C1).
pub(crate) fn on_commit<F: FnOnce() + 'static>(alias: &str, func: F, robust: bool) {
    let callback = Callback {
        func: Box::new(func),
        robust,
        name: std::any::type_name::<F>(),
    };
    let run_now = state::with(alias, |st| {
        if st.in_atomic_block() {
            st.callbacks.push(callback);
            None
        } else {
            Some(callback)
        }
    });
    if let Some(callback) = run_now {
        run(callback, When::Immediately);
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
