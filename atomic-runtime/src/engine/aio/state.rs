//! The async runtime's state (rule A1): the same per-alias state as the sync runtime's, in a
//! table per tokio task instead of per thread, plus what only tasks need: which blocks are
//! being polled (so sibling blocks under `join!` take turns, A3) and the wakers waiting for
//! their turn.
//!
//! The table lives in a `task_local!` `RefCell`. Its borrow is never held across an `.await`
//! (the closures below are synchronous), which keeps every future `Send`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::adapter::ConnectionId;
use crate::adapter::async_connection::AsyncPooledConn;
use crate::databases::Databases;
use crate::engine::state::{AliasState, BlockToken, Flavor, Others, Pooled, States};

/// The async runtime's flavour of state: `Send` callbacks (plain or futures), diesel-async
/// pooled connections.
pub(crate) struct AsyncFlavor;

impl Flavor for AsyncFlavor {
    type Callback = AsyncCallback;
    type Pooled = dyn AsyncPooledConn;
}

impl Pooled for dyn AsyncPooledConn {
    fn id(&self) -> ConnectionId {
        AsyncPooledConn::id(self)
    }
}

/// A queued on_commit callback of async code.
pub(crate) struct AsyncCallback {
    pub(crate) func: CallbackFn,
    pub(crate) robust: bool,
    pub(crate) name: &'static str,
}

pub(crate) enum CallbackFn {
    Plain(Box<dyn FnOnce() + Send>),
    /// Awaited after the COMMIT, in order with the plain ones (rule A4).
    Future(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl AsyncCallback {
    pub(crate) fn plain<F: FnOnce() + Send + 'static>(func: F, robust: bool) -> Self {
        AsyncCallback {
            func: CallbackFn::Plain(Box::new(func)),
            robust,
            name: std::any::type_name::<F>(),
        }
    }

    pub(crate) fn future<F: Future<Output = ()> + Send + 'static>(future: F, robust: bool) -> Self {
        AsyncCallback {
            func: CallbackFn::Future(Box::pin(future)),
            robust,
            name: std::any::type_name::<F>(),
        }
    }
}

/// One task's state.
pub(crate) struct Task {
    pub(crate) states: States<AsyncFlavor>,
    /// The blocks whose bodies are being polled right now, outermost first: a block may
    /// begin, or the connection be lent, only where its alias's innermost block is among
    /// them (nested code), never from a sibling branch of a `join!` (A3).
    pub(crate) polling: Vec<BlockToken>,
    /// Sibling branches waiting for their turn; woken whenever a block ends.
    pub(crate) waiting: Vec<Waker>,
    /// The aliases (state indexes) whose connection the engine's own SQL has out right now
    /// (BEGIN, SAVEPOINT, RELEASE...): a sibling waits for it rather than find it missing.
    pub(crate) busy: Vec<usize>,
    /// The `aio::connection` calls holding an alias's connection (state index, and the token
    /// their closure is polled under): code inside the closure that reaches for the alias is
    /// refused (`ConnectionInUse`), a sibling branch waits for its turn (A3).
    pub(crate) lends: Vec<(usize, BlockToken)>,
    /// The registry in force where the task's first block began (the thread's `enter`ed one
    /// or the installed one): a task moves between worker threads, its registry does not.
    pub(crate) databases: Option<Databases>,
    /// The running `aio::request`, if any.
    pub(crate) request: Option<crate::scope::aio_request::AsyncRequest>,
}

impl Task {
    fn new() -> Self {
        Task {
            states: States::new(),
            polling: Vec::new(),
            waiting: Vec::new(),
            busy: Vec::new(),
            lends: Vec::new(),
            databases: crate::databases::current().ok(),
            request: None,
        }
    }

    /// A table for a new outermost block: the thread's spare one when it has one (its
    /// entries and buffers are allocated already), else a new one.
    fn fresh() -> Self {
        match SPARE.with(|spare| spare.borrow_mut().take()) {
            Some(mut task) => {
                task.databases = crate::databases::current().ok();
                task
            }
            None => Task::new(),
        }
    }

    /// Whether nothing in the table refers to a block, a connection or a callback.
    fn is_idle(&self) -> bool {
        self.states.iter().all(AliasState::is_idle)
            && self.request.is_none()
            && self.polling.is_empty()
            && self.busy.is_empty()
            && self.lends.is_empty()
    }
}

/// Keeps a table whose outermost block ended as the thread's spare, if it is idle.
fn recycle(mut task: Task) {
    if task.is_idle() {
        task.waiting.clear();
        task.databases = None;
        SPARE.with(|spare| *spare.borrow_mut() = Some(task));
    }
}

tokio::task_local! {
    static TASK: RefCell<Task>;
}

/// Whether the current task has a state table already.
pub(crate) fn in_task_scope() -> bool {
    TASK.try_with(|_| ()).is_ok()
}

thread_local! {
    /// A task's table parked between calls: an async `testing::TestTransaction` begun outside
    /// any block must outlive the call that began it, so its table waits here, on the thread
    /// that polls the test (`#[tokio::test]` polls its body on the test thread), and each
    /// outermost call of that thread runs in it.
    static PARKED: RefCell<Option<Task>> = const { RefCell::new(None) };
    /// An idle table kept from the thread's last outermost block, so the next one allocates
    /// nothing for its state (every outermost block of a task begins with a table).
    static SPARE: RefCell<Option<Task>> = const { RefCell::new(None) };
}

/// Runs `future` with a state table for the task: the existing one when there is one, the
/// table a test transaction parked on this thread, else a new one for the future's lifetime
/// (the outermost block or call of a task, rule A1).
pub(crate) async fn scoped<F: Future>(future: F) -> F::Output {
    if in_task_scope() {
        return future.await;
    }
    let (task, then): (Task, fn(Task)) = match PARKED.with(|parked| parked.borrow_mut().take()) {
        None => (Task::fresh(), recycle),
        Some(task) => (task, park),
    };
    Keep {
        scope: TASK.scope(RefCell::new(task), future),
        then,
        done: false,
    }
    .await
}

/// Parks a table for the thread's next outermost calls (see `PARKED`).
pub(crate) fn park(task: Task) {
    PARKED.with(|parked| *parked.borrow_mut() = Some(task));
}

/// Whether a table is parked on this thread.
pub(crate) fn has_parked() -> bool {
    PARKED.with(|parked| parked.borrow().is_some())
}

/// Drops the parked table once nothing is left in it (its test transaction ended).
pub(crate) fn unpark_if_idle() {
    let idle = PARKED.with(|parked| {
        parked
            .borrow()
            .as_ref()
            .is_some_and(|task| task.states.iter().all(|state| !state.in_atomic_block()))
    });
    if idle {
        drop(PARKED.with(|parked| parked.borrow_mut().take()));
    }
}

/// Runs `f` (synchronous) with the parked table as the task's, for a destructor.
pub(crate) fn in_parked(f: impl FnOnce()) {
    let Some(task) = PARKED.with(|parked| parked.borrow_mut().take()) else {
        return;
    };
    let task = TASK.sync_scope(RefCell::new(task), || {
        f();
        TASK.with(|task| std::mem::replace(&mut *task.borrow_mut(), Task::new()))
    });
    park(task);
}

/// A new, empty table, to park.
pub(crate) fn new_task() -> Task {
    Task::new()
}

pin_project_lite::pin_project! {
    /// Runs a call with a table and hands the table on when the call ends: parked again (a
    /// test transaction's) or kept as the thread's spare. A call dropped before it ended
    /// takes its table with it (its guards must see the table while they run, and tokio drops
    /// the call inside its scope): a test transaction's connection is then discarded with it,
    /// never returned to a pool inside the transaction.
    struct Keep<F: Future> {
        #[pin]
        scope: tokio::task::futures::TaskLocalFuture<RefCell<Task>, F>,
        then: fn(Task),
        done: bool,
    }
}

impl<F: Future> Future for Keep<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let polled = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            this.scope.as_mut().poll(cx)
        })) {
            Ok(polled) => polled,
            // A panic out of the call (a block resumes its body's panic once it has rolled
            // back): the table goes on, a test transaction's with it.
            Err(payload) => {
                *this.done = true;
                if let Some(task) = this.scope.take_value() {
                    (this.then)(task.into_inner());
                }
                std::panic::resume_unwind(payload)
            }
        };
        if polled.is_ready() {
            *this.done = true;
            if let Some(task) = this.scope.take_value() {
                (this.then)(task.into_inner());
            }
        }
        polled
    }
}

/// Runs `f` on the task's table. Only inside [`scoped`]. Like the sync `state::with`, `f`
/// must not call user code nor drop what might.
///
/// Outside any task scope, the table a test transaction parked on this thread stands in (the
/// test body's own calls, such as `on_commit` or `in_atomic_block`, see the test
/// transaction); see [`has_table`].
pub(crate) fn with_task<R>(f: impl FnOnce(&mut Task) -> R) -> R {
    let mut f = Some(f);
    let inside = TASK.try_with(|task| (f.take().expect("called once"))(&mut task.borrow_mut()));
    match inside {
        Ok(result) => result,
        Err(_) => PARKED.with(|parked| {
            let mut parked = parked.borrow_mut();
            let task = parked
                .as_mut()
                .expect("the task's table is used inside a task scope or a test transaction");
            (f.take().expect("called once"))(task)
        }),
    }
}

/// Like [`with_task`] for drop paths: nothing when there is no table or it is borrowed.
pub(crate) fn try_with_task<R>(f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    let mut f = Some(f);
    let inside = TASK.try_with(|task| {
        let mut task = task.try_borrow_mut().ok()?;
        Some((f.take().expect("called once"))(&mut task))
    });
    match inside {
        Ok(result) => result,
        Err(_) => PARKED
            .try_with(|parked| {
                let mut parked = parked.try_borrow_mut().ok()?;
                let task = parked.as_mut()?;
                Some((f.take().expect("called once"))(task))
            })
            .ok()
            .flatten(),
    }
}

/// Whether there is a table to use: the task's, or one a test transaction parked on this
/// thread.
pub(crate) fn has_table() -> bool {
    in_task_scope() || has_parked()
}

/// Runs `f` on the alias's state (created on first use).
pub(crate) fn with<R>(alias: &str, f: impl FnOnce(&mut AliasState<AsyncFlavor>) -> R) -> R {
    with_task(|task| {
        let index = task.states.index(alias);
        f(task.states.at(index))
    })
}

/// Runs `f` on the alias's state and the task's other ones.
pub(crate) fn with_others<R>(
    alias: &str,
    f: impl FnOnce(&mut AliasState<AsyncFlavor>, Others<'_, AsyncFlavor>) -> R,
) -> R {
    with_task(|task| {
        let index = task.states.index(alias);
        let (state, others) = task.states.with_others(index);
        f(state, others)
    })
}

/// Reads the alias's state without creating it; `None` outside a task scope too.
pub(crate) fn peek<R>(alias: &str, f: impl FnOnce(Option<&AliasState<AsyncFlavor>>) -> R) -> R {
    let mut f = Some(f);
    let inside = TASK.try_with(|task| {
        let task = task.borrow();
        (f.take().expect("called once"))(task.states.find(alias))
    });
    match inside {
        Ok(result) => result,
        Err(_) => PARKED.with(|parked| {
            let parked = parked.borrow();
            let state = parked.as_ref().and_then(|task| task.states.find(alias));
            (f.take().expect("called once"))(state)
        }),
    }
}

/// Waits until code running now may use `alias` (see [`Task::has_turn`]).
pub(crate) fn turn(alias: &str) -> Turn<'_> {
    Turn { alias }
}

pub(crate) struct Turn<'a> {
    alias: &'a str,
}

impl Future for Turn<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        with_task(|task| {
            let index = task.states.index(self.alias);
            let state = task.states.at(index);
            // A test transaction's or a request's block has no body being polled:
            // everything the test or the view awaits runs inside it.
            let lent_to_a_sibling = task
                .lends
                .iter()
                .any(|(lent, token)| *lent == index && !task.polling.contains(token));
            let ok = !task.busy.contains(&index)
                && !lent_to_a_sibling
                && state.blocks.last().is_none_or(|block| {
                    task.polling.contains(&block.token)
                        || opened_by_test_transaction(block)
                        || task
                            .request
                            .as_ref()
                            .is_some_and(|request| request.holds_block(block.token))
                });
            if ok {
                Poll::Ready(())
            } else {
                task.waiting.push(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

fn opened_by_test_transaction(block: &crate::engine::state::Block) -> bool {
    matches!(
        &block.kind,
        crate::engine::state::BlockKind::Outermost(outermost) if outermost.opened_by_test_transaction
    )
}

/// Wakes the sibling branches waiting for their turn (a block ended).
pub(crate) fn wake_waiting() {
    let waiting = try_with_task(|task| std::mem::take(&mut task.waiting)).unwrap_or_default();
    for waker in waiting {
        waker.wake();
    }
}

pin_project_lite::pin_project! {
    /// A block's body, polled with the block's token on the task's polling path.
    pub(crate) struct InBlock<F> {
        pub(crate) token: BlockToken,
        #[pin]
        pub(crate) body: F,
    }
}

impl<F: Future> Future for InBlock<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let token = *this.token;
        with_task(|task| task.polling.push(token));
        // Popped even if the body panics, so the path stays truthful for the block's exit.
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                try_with_task(|task| task.polling.pop());
            }
        }
        let _pop = Pop;
        this.body.poll(cx)
    }
}

/// Whether an async block (or `aio::connection` call) of the current task holds `alias`:
/// then sync access to it is refused (API §9), never a second transaction. Cheap outside a
/// task scope, which is where sync code normally runs.
pub(crate) fn held_by_async_block(alias: &str) -> bool {
    TASK.try_with(|task| {
        task.try_borrow().is_ok_and(|task| {
            task.states.find(alias).is_some_and(|state| {
                state.in_atomic_block() || state.slot != crate::engine::state::Slot::Empty
            })
        })
    })
    .unwrap_or(false)
}
