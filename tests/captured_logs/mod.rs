//! Collects the `tracing` events emitted on the current thread, so a test can assert what a
//! robust on_commit callback's failure logged (Django's `assertLogs`).
#![allow(dead_code)]

use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Every event seen while [`capture_logs`] ran: its level and its rendered message.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<(Level, String)>>>);

impl Collected {
    /// The messages of the events seen at `level`, in order.
    fn at(&self, level: Level) -> Vec<String> {
        self.0
            .lock()
            .expect("log collector poisoned")
            .iter()
            .filter(|(at, _)| *at == level)
            .map(|(_, message)| message.clone())
            .collect()
    }
}

/// Collects the events at `most_verbose` or more severe.
struct CollectLayer(Collected, Level);

impl<S: Subscriber> Layer<S> for CollectLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() > self.1 {
            return;
        }
        let mut message = MessageField(String::new());
        event.record(&mut message);
        self.0
            .0
            .lock()
            .expect("log collector poisoned")
            .push((*event.metadata().level(), message.0));
    }
}

struct MessageField(String);

impl Visit for MessageField {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Runs `f` with a collecting subscriber for this thread only (other tests run in parallel)
/// and returns its value with the messages of the ERROR events it emitted, in order.
pub fn capture_error_logs<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    global();
    let collected = Collected::default();
    let subscriber =
        tracing_subscriber::registry().with(CollectLayer(collected.clone(), Level::TRACE));
    let value = tracing::subscriber::with_default(subscriber, f);
    let errors = collected.at(Level::ERROR);
    (value, errors)
}

/// Runs `f` like [`capture_error_logs`] and returns the messages of its events at `level`.
pub fn capture_logs<T>(level: Level, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    global();
    let collected = Collected::default();
    let subscriber =
        tracing_subscriber::registry().with(CollectLayer(collected.clone(), Level::TRACE));
    let value = tracing::subscriber::with_default(subscriber, f);
    let messages = collected.at(level);
    (value, messages)
}

/// The name the runtime reports for a callback: `std::any::type_name` of its type.
pub fn type_name_of<F>(_: &F) -> &'static str {
    std::any::type_name::<F>()
}

/// The process-wide collector, installed at the first capture of the test binary.
///
/// Every capture installs it, not only [`capture_process_error_logs`]: `tracing` caches each
/// callsite's interest process-wide, computed by whichever thread first reaches the callsite.
/// A sibling test's thread with no subscriber of its own would cache "never", and a capture
/// running at the same time, or later, would then miss that event (the runtime's WARN of a
/// read that fell back to the primary came back empty in about one run in six). With this
/// collector as the default of every thread, no callsite is cached as "never".
fn global() -> &'static Collected {
    static GLOBAL: std::sync::OnceLock<Collected> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| {
        let collected = Collected::default();
        // WARN and ERROR only: it sees every event of the threads without a capture of their
        // own, and keeps what `capture_process_error_logs` reads.
        let subscriber =
            tracing_subscriber::registry().with(CollectLayer(collected.clone(), Level::WARN));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other process-wide subscriber in this test binary");
        tracing::callsite::rebuild_interest_cache();
        collected
    })
}

/// Fixes a closure's signature to `FnOnce()` (a closure whose body only panics would
/// otherwise infer `!` as its return type).
pub fn callback<F: FnOnce() + 'static>(f: F) -> F {
    f
}

/// Runs `f` like [`capture_error_logs`], with the collector installed process-wide (once per
/// test binary), for work that logs on threads of its own (tokio's blocking pool). Callers run
/// one at a time.
pub fn capture_process_error_logs<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let collected = global();
    collected.0.lock().expect("log collector poisoned").clear();
    let value = f();
    let errors = collected.at(Level::ERROR);
    (value, errors)
}
