//! The async runtime's state (rule A1): the same per-alias state as the sync runtime's, in a
//! table per tokio task instead of per thread, plus what only tasks need: which blocks are
//! being polled (so sibling blocks under `join!` take turns, A3) and the wakers waiting for
//! their turn.
//!
//! The table lives in a `task_local!` `RefCell`. Its borrow is never held across an `.await`
//! (the closures below are synchronous), which keeps every future `Send`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::adapter::ConnectionId;
use crate::adapter::async_connection::AsyncPooledConn;
use crate::databases::Databases;
use crate::engine::state::{AliasState, BlockToken, Flavor, Others, Pooled, States};
use crate::scope::aio_request::AfterBegin;

/// The async runtime's flavour of state: `Send` callbacks (plain or futures), diesel-async
/// pooled connections.
pub(crate) struct AsyncFlavor;

impl Flavor for AsyncFlavor {
    type Callback = AsyncCallback;
    type Pooled = dyn AsyncPooledConn;
    const ROUTES_REPLICA_BLOCKS: bool = true;
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
    /// The commit serial where the current read scope began (rule P2): the running request's
    /// start, else 0 (the task's whole life).
    pub(crate) read_scope_start: u64,
}

/// A task's table as it is kept: boxed, so its address (which [`Keep`] gives the thread while
/// the task runs) stays put when the table moves between the task, the spare and the parked
/// slot.
pub(crate) type Table = Box<RefCell<Task>>;

impl Task {
    fn new() -> Table {
        Box::new(RefCell::new(Task {
            states: States::new(),
            polling: Vec::new(),
            waiting: Vec::new(),
            busy: Vec::new(),
            lends: Vec::new(),
            databases: crate::databases::current().ok(),
            request: None,
            read_scope_start: 0,
        }))
    }

    /// A table for a new outermost block: the thread's spare one when it has one (its
    /// entries and buffers are allocated already), else a new one.
    fn fresh() -> Table {
        let mut table = match SPARE.with(|spare| spare.borrow_mut().pop()) {
            Some(mut table) => {
                table.get_mut().databases = crate::databases::current().ok();
                table
            }
            None => Task::new(),
        };
        if crate::databases::replicas_configured() {
            crate::engine::aio::replica::resume(table.get_mut());
        }
        table
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
fn recycle(mut table: Table) {
    let task = table.get_mut();
    if crate::databases::replicas_configured() {
        crate::engine::aio::replica::carry(task);
    }
    task.read_scope_start = 0;
    if task.is_idle() {
        task.waiting.clear();
        task.databases = None;
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_TABLES {
                spare.push(table);
            }
        });
    }
}

thread_local! {
    /// The table of the task whose outermost call is being polled on this thread: set by
    /// [`Keep`] around each poll (and its drop) and restored after, so it is the task's
    /// table exactly while the task's code runs, as a `tokio::task_local!` would be. Ours
    /// because tokio's moves its value in and out of the thread on every poll, a quarter of
    /// the runtime's own instructions per block (callgrind); this sets one pointer.
    static CURRENT: Cell<*const RefCell<Task>> = const { Cell::new(std::ptr::null()) };
}

/// The current task's table, while [`Keep`] (or a [`RequestScoped`]) polls it; a request
/// polled without one gets its table now (see [`RequestScoped`]).
fn current() -> Option<&'static RefCell<Task>> {
    match made() {
        Some(table) => Some(table),
        None => make_request_table(),
    }
}

/// The current task's table if it has one already: never makes a request's.
fn made() -> Option<&'static RefCell<Task>> {
    let table = CURRENT.with(Cell::get);
    // SAFETY: a non-null pointer was set by `InTable::enter`, `InRequest::enter` or
    // `make_request_table` from a `Table` that the `Keep` or `RequestScoped` being polled (or
    // `in_parked`) owns and neither frees nor replaces while it runs; their guard restores
    // the previous pointer when that poll or drop returns or unwinds, so the pointer is only
    // seen while the table is alive. The `'static` never leaves this module: callers use it
    // inside a synchronous call.
    unsafe { table.as_ref() }
}

/// Sets the thread's current table for a scope; restores the one before on drop.
struct InTable(*const RefCell<Task>);

impl InTable {
    fn enter(table: &RefCell<Task>) -> InTable {
        InTable(CURRENT.with(|current| current.replace(table)))
    }
}

/// [`InTable`] for a request's poll: its table if it has one, else none, with its slot
/// offered for the first use to make it in (`LAZY`); both restored on drop.
struct InRequest {
    current: *const RefCell<Task>,
    lazy: *mut Option<Table>,
}

impl InRequest {
    fn enter(slot: &mut Option<Table>) -> InRequest {
        let (table, lazy) = match slot.as_deref() {
            Some(table) => (std::ptr::from_ref(table), std::ptr::null_mut()),
            None => (std::ptr::null(), std::ptr::from_mut(slot)),
        };
        InRequest {
            current: CURRENT.with(|current| current.replace(table)),
            lazy: LAZY.with(|offered| offered.replace(lazy)),
        }
    }

    /// No table current, none offered to make.
    fn enter_none() -> InRequest {
        InRequest {
            current: CURRENT.with(|current| current.replace(std::ptr::null())),
            lazy: LAZY.with(|offered| offered.replace(std::ptr::null_mut())),
        }
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.current));
        LAZY.with(|offered| offered.set(self.lazy));
    }
}

impl Drop for InTable {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

thread_local! {
    /// Where the request being polled on this thread keeps its table, while it has none:
    /// the first call that needs the task's table makes it there (see [`RequestScoped`]).
    /// Null while a table is current: a request polled inside one runs in it.
    static LAZY: Cell<*mut Option<Table>> = const { Cell::new(std::ptr::null_mut()) };
}

/// Makes the table of the request being polled, at its first use of the runtime, and
/// records the request in it (as `aio_request::record` does at the start of a request
/// that runs inside an existing table).
#[cold]
fn make_request_table() -> Option<&'static RefCell<Task>> {
    let slot = LAZY.with(|slot| slot.replace(std::ptr::null_mut()));
    // SAFETY: a non-null `LAZY` was set by `InRequest::enter` from the slot of the
    // `RequestScoped` being polled, which does not touch the slot until that poll returns;
    // the guard clears `LAZY` when the poll returns or unwinds, and it is taken (nulled)
    // here, so the slot is written once, through this pointer only.
    let slot = unsafe { slot.as_mut() }?;
    let mut table = Task::fresh();
    crate::scope::aio_request::record_in_new_table(table.get_mut());
    let made: *const RefCell<Task> = &*table;
    *slot = Some(table);
    CURRENT.with(|current| current.set(made));
    // SAFETY: `made` points into the box just stored in the slot, which the
    // `RequestScoped` keeps (unmoved: it is boxed) until after the poll; the poll's guard
    // restores `CURRENT` before the poll returns. As for `made()`.
    unsafe { made.as_ref() }
}

/// Whether the current task has a state table already (a request's counts: it is made
/// now).
pub(crate) fn in_task_scope() -> bool {
    current().is_some()
}

/// Whether the current task has recorded a running request (without making a request's
/// table: a request that never used the runtime has none, and nothing to end).
pub(crate) fn request_recorded() -> bool {
    made().is_some_and(|task| task.try_borrow().is_ok_and(|task| task.request.is_some()))
}

thread_local! {
    /// A task's table parked between calls: an async `testing::TestTransaction` begun outside
    /// any block must outlive the call that began it, so its table waits here, on the thread
    /// that polls the test (`#[tokio::test]` polls its body on the test thread), and each
    /// outermost call of that thread runs in it.
    static PARKED: RefCell<Option<Table>> = const { RefCell::new(None) };
    /// Idle tables kept from the thread's last outermost blocks, so the next ones allocate
    /// nothing for their state (every outermost block of a task begins with a table). More
    /// than one: a server has many requests in flight at once, each holding a table, and
    /// they end on whichever worker thread polls them last; with one spare a thread, nearly
    /// every request built a table and dropped another (the layer benchmark, 64 clients).
    static SPARE: RefCell<Vec<Table>> = const { RefCell::new(Vec::new()) };
}

/// How many idle tables a thread keeps (see `SPARE`): a few hundred bytes each.
const SPARE_TABLES: usize = 32;

/// Runs `future` with a state table for the task: the existing one when there is one, the
/// table a test transaction parked on this thread, else a new one for the future's lifetime
/// (the outermost block or call of a task, rule A1).
pub(crate) async fn scoped<F: Future>(future: F) -> F::Output {
    if in_task_scope() {
        return future.await;
    }
    let (table, then): (Table, fn(Table)) = match PARKED.with(|parked| parked.borrow_mut().take()) {
        None => (Task::fresh(), recycle),
        Some(task) => (task, park),
    };
    Keep {
        table: Some(table),
        future: Some(future),
        then,
    }
    .await
}

/// Parks a table for the thread's next outermost calls (see `PARKED`).
pub(crate) fn park(table: Table) {
    PARKED.with(|parked| *parked.borrow_mut() = Some(table));
}

/// Whether a table is parked on this thread.
pub(crate) fn has_parked() -> bool {
    PARKED.with(|parked| parked.borrow().is_some())
}

/// Drops the parked table once nothing is left in it (its test transaction ended).
pub(crate) fn unpark_if_idle() {
    let idle = PARKED.with(|parked| {
        parked.borrow().as_ref().is_some_and(|table| {
            table
                .borrow()
                .states
                .iter()
                .all(|state| !state.in_atomic_block())
        })
    });
    if idle {
        drop(PARKED.with(|parked| parked.borrow_mut().take()));
    }
}

/// Runs `f` (synchronous) with the parked table as the task's, for a destructor.
pub(crate) fn in_parked(f: impl FnOnce()) {
    let Some(table) = PARKED.with(|parked| parked.borrow_mut().take()) else {
        return;
    };
    {
        let _in = InTable::enter(&table);
        f();
    }
    park(table);
}

/// A new, empty table, to park.
pub(crate) fn new_task() -> Table {
    Task::new()
}

pin_project_lite::pin_project! {
    /// Runs a call with a table and hands the table on when the call ends: parked again (a
    /// test transaction's) or kept as the thread's spare. A call dropped before it ended
    /// takes its table with it (its guards must see the table while they run, so the call
    /// is dropped inside the table's scope): a test transaction's connection is then
    /// discarded with it, never returned to a pool inside the transaction.
    struct Keep<F> {
        table: Option<Table>,
        #[pin]
        future: Option<F>,
        then: fn(Table),
    }

    impl<F> PinnedDrop for Keep<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let Some(table) = this.table.as_deref() {
                {
                    let _in = InTable::enter(table);
                    this.future.set(None);
                }
                // A call dropped before it ended: what the task committed before it (resumed
                // into this table) still counts for the task's later reads (rule P2).
                if crate::databases::replicas_configured()
                    && let Ok(mut task) = table.try_borrow_mut()
                {
                    crate::engine::aio::replica::carry(&mut task);
                }
            }
        }
    }
}

impl<F: Future> Keep<F> {
    /// Hands the table on once the call is over (returned or panicked).
    fn done(table: &mut Option<Table>, then: fn(Table)) {
        if let Some(table) = table.take() {
            then(table);
        }
    }
}

impl<F: Future> Future for Keep<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let table = this.table.as_deref().expect("polled after it returned");
        let polled = {
            let _in = InTable::enter(table);
            poll_catching(this.future.as_mut(), cx)
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            // A finished (or panicked) future holds nothing left to drop in the scope.
            Ok(Poll::Ready(output)) => {
                Keep::<F>::done(this.table, *this.then);
                Poll::Ready(output)
            }
            // A panic out of the call (a block resumes its body's panic once it has rolled
            // back): the table goes on, a test transaction's with it.
            Err(payload) => {
                Keep::<F>::done(this.table, *this.then);
                std::panic::resume_unwind(payload)
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request (`aio::request`, the tower layer) with the task's table its view runs in.
    ///
    /// Polled inside a table (a block's, a test transaction's), the request is recorded
    /// there at its first poll and runs in it, as any call does. Otherwise it has a table of
    /// its own, made only when its view first uses the runtime (a block, `aio::connection`,
    /// `on_commit`...): a request that never touches a database (a health check, a cache
    /// hit) takes no table, records nothing and has nothing to end. Until then its slot is
    /// offered to the thread (`LAZY`) around each of its polls.
    pub(crate) struct RequestScoped<F> {
        // The request's own registry (the tower layer's), entered around each poll and the
        // drop: a server's requests are tasks on any worker thread.
        databases: Option<crate::databases::Databases>,
        start: Option<Vec<AfterBegin>>,
        place: Place,
        // The read scope to restore when the request ends (rule P2).
        restore: u64,
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for RequestScoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _registry = crate::databases::MovedIn::enter(this.databases);
            // A request dropped before it ended: its guards run in its table (if it made
            // one), which goes with it, its connections discarded (A2).
            match this.place {
                Place::Own(Some(table), _) => {
                    {
                        let _in = InTable::enter(table);
                        this.future.set(None);
                    }
                    if crate::databases::replicas_configured()
                        && let Ok(mut task) = table.try_borrow_mut()
                    {
                        crate::engine::aio::replica::carry(&mut task);
                    }
                }
                // It never used the runtime: its guards find no table (not the one of
                // whoever drops it), and make none.
                Place::Own(None, _) => {
                    let _in = InRequest::enter_none();
                    this.future.set(None);
                }
                // In whichever table is current where it is dropped, as any call; still with
                // the request's registry entered.
                Place::Inline | Place::Start => this.future.set(None),
            }
        }
    }
}

/// Where a [`RequestScoped`] runs.
enum Place {
    /// Not polled yet.
    Start,
    /// In the table that was current at its first poll.
    Inline,
    /// In a table of its own (made at first use while `None`), handed on by the function
    /// when the request ends: parked again (a test transaction's) or kept as a spare.
    Own(Option<Table>, fn(Table)),
}

/// Runs `future`, a request's work, in the task's table (see [`RequestScoped`]), with
/// `databases` (if any) entered around each of its polls and its drop. `after_begin`: the
/// request's hooks; a request with hooks takes its table at once (its hooks are checked
/// against the registry before the view runs).
pub(crate) fn request_scoped<T, F>(
    databases: Option<crate::databases::Databases>,
    after_begin: Vec<AfterBegin>,
    future: F,
) -> RequestScoped<F>
where
    F: Future<Output = Result<T, crate::Error>>,
{
    RequestScoped {
        databases,
        start: Some(after_begin),
        place: Place::Start,
        restore: 0,
        future: Some(future),
    }
}

impl<T, F: Future<Output = Result<T, crate::Error>>> Future for RequestScoped<F> {
    type Output = Result<T, crate::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _registry = crate::databases::MovedIn::enter(this.databases);
        if let Some(after_begin) = this.start.take() {
            match start_request(after_begin) {
                Ok((place, restore)) => {
                    *this.place = place;
                    *this.restore = restore;
                }
                Err((place, error)) => {
                    *this.place = Place::Inline;
                    if let Place::Own(Some(table), then) = place {
                        then(table);
                    }
                    this.future.set(None);
                    return Poll::Ready(Err(error));
                }
            }
        }
        let polled = {
            let _in = match this.place {
                Place::Own(slot, _) => Some(InRequest::enter(slot)),
                _ => None,
            };
            poll_catching(this.future.as_mut(), cx)
        };
        if let Ok(Poll::Pending) = polled {
            return Poll::Pending;
        }
        // A finished (or panicked) future holds nothing left to drop in a scope.
        this.future.set(None);
        end_request(this.place, *this.restore);
        match polled {
            Ok(output) => output,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }
}

/// A request's first poll: where it runs, and the read scope to restore at its end.
fn start_request(after_begin: Vec<AfterBegin>) -> Result<(Place, u64), (Place, crate::Error)> {
    let serial = crate::engine::aio::replica::serial_now();
    // Inside another request that has no table yet, this makes it: the nested request is
    // then recorded there, and refused.
    if current().is_some() {
        let recorded =
            with_task(|task| crate::scope::aio_request::record(task, after_begin, serial));
        return match recorded {
            Ok(restore) => Ok((Place::Inline, restore)),
            Err(error) => Err((Place::Inline, error)),
        };
    }
    let (mut table, then): (Table, fn(Table)) =
        match PARKED.with(|parked| parked.borrow_mut().take()) {
            Some(table) => (table, park),
            // The common case: the table waits for the request's first use (and is reset
            // when it is kept as a spare: no read scope to restore).
            None if after_begin.is_empty() => return Ok((Place::Own(None, recycle), 0)),
            None => (Task::fresh(), recycle),
        };
    match crate::scope::aio_request::record(table.get_mut(), after_begin, serial) {
        Ok(restore) => Ok((Place::Own(Some(table), then), restore)),
        Err(error) => Err((Place::Own(Some(table), then), error)),
    }
}

/// A request's end: its read scope restored, its own table handed on.
fn end_request(place: &mut Place, restore: u64) {
    match std::mem::replace(place, Place::Inline) {
        Place::Inline => {
            if made().is_some() {
                with_task(|task| task.read_scope_start = restore);
            }
        }
        Place::Own(Some(mut table), then) => {
            table.get_mut().read_scope_start = restore;
            then(table);
        }
        Place::Own(None, _) | Place::Start => {}
    }
}

/// Polls a scope's future with its panic caught, so the scope can hand its table on before
/// the panic goes on.
fn poll_catching<F: Future>(
    future: Pin<&mut Option<F>>,
    cx: &mut Context<'_>,
) -> std::thread::Result<Poll<F::Output>> {
    let future = future.as_pin_mut().expect("polled after it returned");
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx)))
}

/// Runs `f` on the task's table. Only inside [`scoped`]. Like the sync `state::with`, `f`
/// must not call user code nor drop what might.
///
/// Outside any task scope, the table a test transaction parked on this thread stands in (the
/// test body's own calls, such as `on_commit` or `in_atomic_block`, see the test
/// transaction); see [`has_table`].
pub(crate) fn with_task<R>(f: impl FnOnce(&mut Task) -> R) -> R {
    match current() {
        Some(task) => f(&mut task.borrow_mut()),
        None => PARKED.with(|parked| {
            let mut parked = parked.borrow_mut();
            let table = parked
                .as_mut()
                .expect("the task's table is used inside a task scope or a test transaction");
            f(table.get_mut())
        }),
    }
}

/// Like [`with_task`] for drop paths: nothing when there is no table or it is borrowed.
pub(crate) fn try_with_task<R>(f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    match current() {
        Some(task) => Some(f(&mut *task.try_borrow_mut().ok()?)),
        None => PARKED
            .try_with(|parked| {
                let mut parked = parked.try_borrow_mut().ok()?;
                let table = parked.as_mut()?;
                Some(f(table.get_mut()))
            })
            .ok()
            .flatten(),
    }
}

/// Like [`try_with_task`] for a request's drop: only the table current now, if there is
/// one (never a parked one, never made now).
pub(crate) fn try_with_made<R>(f: impl FnOnce(&mut Task) -> R) -> Option<R> {
    Some(f(&mut *made()?.try_borrow_mut().ok()?))
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

/// Runs `f` on the state at `index` (an `Entered::index` or what [`turn`] gave): no lookup
/// by name on the block's hot path.
pub(crate) fn with_at<R>(index: usize, f: impl FnOnce(&mut AliasState<AsyncFlavor>) -> R) -> R {
    with_task(|task| f(task.states.at(index)))
}

/// Runs `f` on the state at `index` and the task's other ones.
pub(crate) fn with_others_at<R>(
    index: usize,
    f: impl FnOnce(&mut AliasState<AsyncFlavor>, Others<'_, AsyncFlavor>) -> R,
) -> R {
    with_task(|task| {
        let (state, others) = task.states.with_others(index);
        f(state, others)
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
    match current() {
        Some(task) => f(task.borrow().states.find(alias)),
        None => PARKED.with(|parked| {
            let parked = parked.borrow();
            let task = parked.as_ref().map(|table| table.borrow());
            f(task.as_ref().and_then(|task| task.states.find(alias)))
        }),
    }
}

/// Waits until code running now may use `alias` (see [`Task::has_turn`]); gives the alias's
/// state index, valid until the next `.await`.
pub(crate) fn turn(alias: &str) -> Turn<'_> {
    Turn { alias }
}

pub(crate) struct Turn<'a> {
    alias: &'a str,
}

impl Future for Turn<'_> {
    type Output = usize;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        with_task(|task| {
            let index = task.states.index(self.alias);
            if task.has_turn(index) {
                Poll::Ready(index)
            } else {
                task.waiting.push(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

impl Task {
    /// Whether code running now may use the alias at `index` (A3): no engine SQL and no
    /// sibling's `aio::connection` has its connection out, and its innermost block, if any,
    /// is on the polling path (nested code, never a sibling branch of a `join!`).
    pub(crate) fn has_turn(&self, index: usize) -> bool {
        // A test transaction's or a request's block has no body being polled: everything
        // the test or the view awaits runs inside it.
        let lent_to_a_sibling = self
            .lends
            .iter()
            .any(|(lent, token)| *lent == index && !self.polling.contains(token));
        !self.busy.contains(&index)
            && !lent_to_a_sibling
            && self.states.get(index).blocks.last().is_none_or(|block| {
                self.polling.contains(&block.token)
                    || opened_by_test_transaction(block)
                    || self
                        .request
                        .as_ref()
                        .is_some_and(|request| request.holds_block(block.token))
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
    let waiting =
        try_with_task(|task| (!task.waiting.is_empty()).then(|| std::mem::take(&mut task.waiting)))
            .flatten()
            .unwrap_or_default();
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
    current().is_some_and(|task| {
        task.try_borrow().is_ok_and(|task| {
            task.states.find(alias).is_some_and(|state| {
                state.in_atomic_block() || state.slot != crate::engine::state::Slot::Empty
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls in flight at once each hold a table; when they end, the thread keeps every one
    /// of them for its next calls (a server's concurrent requests), not only the last.
    #[test]
    fn a_thread_keeps_the_idle_tables_of_its_concurrent_calls() {
        let runtime = current_thread_runtime();
        runtime.block_on(async {
            let call = || scoped(async { tokio::task::yield_now().await });
            futures_util::future::join3(call(), call(), call()).await;
        });
        assert_eq!(spares(), 3);
        runtime.block_on(async {
            let call = || scoped(async { tokio::task::yield_now().await });
            futures_util::future::join(call(), call()).await;
        });
        assert_eq!(spares(), 3, "two calls took two spares and gave them back");
    }

    /// A request takes its table at its view's first use of the runtime: one that never
    /// uses it (a health check) makes none, one that does makes one and keeps it as a spare.
    #[test]
    fn a_request_takes_a_table_only_when_its_view_uses_the_runtime() {
        let runtime = current_thread_runtime();
        let request = |view: Pin<Box<dyn Future<Output = ()>>>| {
            crate::scope::aio_request::run(None, Vec::new(), view, |_| true)
        };
        runtime
            .block_on(request(Box::pin(async { tokio::task::yield_now().await })))
            .expect("a request that never used the runtime");
        assert_eq!(
            spares(),
            0,
            "a table was made for a request that never used one"
        );
        runtime
            .block_on(request(Box::pin(async {
                tokio::task::yield_now().await;
                assert!(!in_atomic_block_anywhere());
            })))
            .expect("a request that used the runtime");
        assert_eq!(
            spares(),
            1,
            "the request's table, made at its first use, is kept"
        );
    }

    fn current_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    /// How many idle tables the thread keeps now.
    fn spares() -> usize {
        SPARE.with(|spare| spare.borrow().len())
    }

    /// A first use of the runtime by the view: the request's table is made for it.
    fn in_atomic_block_anywhere() -> bool {
        with_task(|task| task.states.iter().any(AliasState::in_atomic_block))
    }
}
