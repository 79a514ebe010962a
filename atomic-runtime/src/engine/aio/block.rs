//! The async executor: carries out the plans of `engine::rules` with diesel-async's
//! connections, awaiting the SQL the sync executor calls. Every decision is the same call
//! into `rules`; what is new is the dropped future (rule A2), handled by [`Armed`].
//!
//! One path for every outcome, as in the sync executor: the body runs under `catch_unwind`,
//! so `Err`, `Ok` with the rollback flag and a panic all leave through [`leave`]. The blocks
//! themselves are run by `explicit::attempt` and `ambient::attempt`, which take the common
//! path inline and call the steps here for the rest.

use crate::adapter::ConnectionId;
use crate::adapter::async_connection::{AsyncPooledConn, AsyncTx, release};
use crate::engine::aio::hooks;
use crate::engine::aio::replica;
use crate::engine::aio::stale;
use crate::engine::aio::state::{self, AsyncCallback};
use crate::engine::block::{Settled, connection_missing, settle};
use crate::engine::rules::{
    self, BeginOptionsUse, CallersConnection, Cancel, EnterPlan, Leave, ReleaseRecovery, Route,
    SavepointExit,
};
use crate::engine::state::{BlockToken, Cancelled, Entered, Foreign, Slot};
use crate::error::Error;
use crate::options::BlockOptions;

/// The outcome of a block's body: its result, or its panic.
pub(crate) type Outcome<T, E> = std::thread::Result<Result<T, E>>;

/// Whether the body returned `Ok` (neither `Err` nor a panic).
pub(crate) fn succeeded<T, E>(outcome: &Outcome<T, E>) -> bool {
    matches!(outcome, Ok(Ok(_)))
}

/// Turns the body's outcome and the exit into what the block returns (X3, as the sync
/// executor's `settle`), awaiting the callbacks of a COMMIT (C3, A4).
///
/// Not an `async fn`: a block with no callback to run (every nested block, most outermost
/// ones) has its answer at once, without setting up the future that awaits the callbacks.
pub(crate) fn finish<'a, T: 'a, E: From<Error> + 'a>(
    alias: &'a str,
    outcome: Outcome<T, E>,
    exit: Exit,
) -> futures_util::future::Either<
    std::future::Ready<Result<T, E>>,
    impl Future<Output = Result<T, E>> + 'a,
> {
    use futures_util::future::Either;
    match settle(alias, outcome, exit.error) {
        Settled::Committed(value) if !exit.callbacks.is_empty() => Either::Right(async move {
            hooks::run_after_commit(alias, exit.callbacks).await;
            Ok(value)
        }),
        Settled::Committed(value) => Either::Left(std::future::ready(Ok(value))),
        Settled::Returned(result) => Either::Left(std::future::ready(result)),
    }
}

// --- Cancellation -----------------------------------------------------------------------------

/// An open block, armed against its future being dropped (rule A2). Dropped armed, it ends
/// the block in the state: an outermost block's pooled connection is marked broken and goes
/// back to its pool, which discards it (the server rolls back when the connection closes);
/// on the caller's connection, which a destructor cannot reach, the connection is remembered
/// as stale; a nested block marks its parent.
pub(crate) struct Armed {
    /// The alias's state index (`Entered::index`): no name to copy on the hot path.
    index: usize,
    pub(crate) token: BlockToken,
    pub(crate) entered: Option<Entered>,
    /// Where the block is, for a drop: its body, or its own SQL.
    pub(crate) phase: Cancelled,
    /// Set once the exit took the block off the state while its SQL is still awaited: a
    /// drop then only has the connection to account for.
    exiting: Option<Exiting>,
}

#[derive(Clone, Copy)]
enum Exiting {
    /// The outermost block's COMMIT or ROLLBACK on the caller's connection.
    CallersOutermost { id: ConnectionId, depth_before: u32 },
    /// A savepoint's RELEASE or ROLLBACK TO on the caller's connection.
    CallersSavepoint,
    /// SQL on a pooled connection, which goes back to its pool (or its block) marked broken.
    Pooled,
}

impl Armed {
    pub(crate) fn new(entered: Entered) -> Armed {
        Armed {
            index: entered.index,
            token: entered.token,
            entered: Some(entered),
            phase: Cancelled::InSql,
            exiting: None,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.entered = None;
        self.exiting = None;
    }

    /// A request transaction's block, being ended by the request (`aio::request`).
    pub(crate) fn for_request(entered: Entered) -> Armed {
        let mut armed = Armed::new(entered);
        armed.phase = Cancelled::InBody;
        armed
    }

    /// The block ended.
    pub(crate) fn done(mut self) {
        self.disarm();
    }

    /// Hands the open block over to its owner (a request), which answers for its end and its
    /// cancellation from now on.
    pub(crate) fn into_entered(mut self) -> Entered {
        let entered = self.entered.take().expect("an entered block is armed");
        self.disarm();
        entered
    }
}

/// Rule A2 for a block whose owner (a request) was dropped before ending it.
pub(crate) fn cancel_entered(entered: Entered) {
    cancel(entered.index, entered.token, Cancelled::InBody);
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(exiting) = self.exiting.take() {
            return cancelled_while_exiting(self.index, exiting);
        }
        if self.entered.take().is_some() {
            cancel(self.index, self.token, self.phase);
        }
    }
}

#[cold]
fn cancel(index: usize, token: BlockToken, phase: Cancelled) {
    let Some((plan, connection, pooled, alias)) = state::try_with_task(|task| {
        let state = task.states.at(index);
        let alias = state.alias().to_owned();
        let connection = state.slot.connection();
        let plan = rules::cancel(state, token, phase);
        let pooled = match &plan {
            Cancel::Outermost {
                on_callers_connection: false,
                ..
            } => state.release_held(),
            _ => None,
        };
        (plan, connection, pooled, alias)
    }) else {
        return;
    };
    state::wake_waiting();
    match plan {
        Cancel::Gone => {}
        Cancel::Nested { discarded } => {
            tracing::warn!(
                alias,
                "a nested atomic block was cancelled; its parent rolls back"
            );
            drop(discarded);
        }
        Cancel::Outermost {
            depth_before,
            on_callers_connection,
            discarded,
        } => {
            tracing::warn!(
                alias,
                "an atomic block was cancelled before it finished; its transaction never commits"
            );
            if on_callers_connection {
                if let Some(id) = connection {
                    stale::remember(id, depth_before);
                }
            } else {
                discard(pooled);
            }
            drop(discarded);
        }
    }
}

#[cold]
fn cancelled_while_exiting(index: usize, exiting: Exiting) {
    tracing::warn!("an atomic block was cancelled while it committed or rolled back");
    match exiting {
        Exiting::CallersOutermost { id, depth_before } => stale::remember(id, depth_before),
        Exiting::CallersSavepoint => {
            state::try_with_task(|task| {
                let state = task.states.at(index);
                if let Some(parent) = state.blocks.last_mut() {
                    parent.child_cancelled = Cancelled::InSql;
                    state.needs_rollback = true;
                }
            });
        }
        // The pooled connection is in the dropped future, or back in its block's slot
        // (`Taken`), marked broken either way.
        Exiting::Pooled => {}
    }
    state::wake_waiting();
}

/// A pooled connection that must not be used again: marked broken, back to its pool, which
/// discards it.
fn discard(pooled: Option<Box<dyn AsyncPooledConn>>) {
    if let Some(mut pooled) = pooled {
        pooled.inner().mark_broken();
        release(pooled);
    }
}

/// The held connection of an ambient block, taken out of the state while the engine's SQL
/// awaits on it. Dropped before it was put back (the future was cancelled), it goes back
/// marked broken, so the block it belongs to can only fail.
struct Taken {
    /// The alias's state index.
    index: usize,
    pooled: Option<Box<dyn AsyncPooledConn>>,
}

impl Taken {
    fn take(alias: &str) -> Option<Taken> {
        let (index, pooled) = state::with_task(|task| {
            let index = task.states.index(alias);
            let pooled = task.states.at(index).take_held()?;
            task.busy.push(index);
            Some((index, pooled))
        })?;
        Some(Taken {
            index,
            pooled: Some(pooled),
        })
    }

    fn conn(&mut self) -> &mut dyn AsyncTx {
        self.pooled.as_mut().expect("taken until put back").inner()
    }

    fn put_back(mut self) {
        let pooled = self.pooled.take().expect("taken until put back");
        let index = self.index;
        state::with_task(|task| {
            task.states.at(index).put_back(pooled);
            task.busy.retain(|busy| *busy != index);
        });
        state::wake_waiting();
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let Some(mut pooled) = self.pooled.take() else {
            return;
        };
        pooled.inner().mark_broken();
        let index = self.index;
        let back = state::try_with_task(|task| {
            task.busy.retain(|busy| *busy != index);
            let state = task.states.at(index);
            if matches!(state.slot, Slot::Lent(_)) && state.in_atomic_block() {
                state.put_back(pooled);
                None
            } else {
                Some(pooled)
            }
        });
        // No block to go back to: closed.
        if let Some(pooled) = back.flatten() {
            release(pooled);
        }
        state::wake_waiting();
    }
}

// --- Entering -------------------------------------------------------------------------------

/// Enters a block, ambient when `caller` is `None` (rules E1–E3 in `rules::plan_enter`),
/// after waiting for the alias's turn (A3).
pub(crate) async fn enter(
    options: &BlockOptions<'_>,
    mut caller: Option<&mut dyn AsyncTx>,
) -> Result<Armed, Error> {
    let alias = options.using;
    let mut index = state::turn(alias).await;
    if let Some(conn) = caller.as_deref_mut() {
        let id = conn.id();
        let leftover = state::with_at(index, |state| {
            state.block_connection == Some(id) && state.leftover_savepoint.is_some()
        });
        if leftover {
            close_cancelled_levels(alias, conn).await;
            index = state::with_task(|task| task.states.index(alias));
        }
    }
    let callers_connection = match caller.as_deref_mut() {
        Some(conn) => Some(callers_connection(alias, index, conn)?),
        None => None,
    };
    let plan = state::with_others_at(index, |state, others| {
        rules::plan_enter(state, others, options, callers_connection.as_ref())
    })?;
    match plan {
        EnterPlan::Merged(entered) => {
            let mut armed = Armed::new(entered);
            armed.phase = Cancelled::InBody;
            Ok(armed)
        }
        EnterPlan::OnCallersConnection { entered, begin } => {
            let conn = caller.expect("a plan on the caller's connection comes with one");
            let depth = callers_connection.map_or(0, |conn| conn.depth);
            // Armed in its SQL phase: dropped during the BEGIN or SAVEPOINT, the block is
            // taken off the state and the connection counts as unknown.
            let mut armed = Armed::new(entered);
            // A plain BEGIN or SAVEPOINT, nearly every block, without `begin_on`'s future.
            let begun = match begin {
                BeginOptionsUse::Plain => conn.begin().await.map_err(Error::from),
                begin => begin_on(alias, conn, options, begin).await,
            };
            match begun {
                Ok(()) => {
                    tracing::debug!(
                        alias,
                        depth = depth + 1,
                        "BEGIN or SAVEPOINT (caller's connection)"
                    );
                    armed.phase = Cancelled::InBody;
                    Ok(armed)
                }
                Err(error) => Err(begin_failed(armed, error)),
            }
        }
        EnterPlan::CheckOut => enter_checked_out(options).await,
        EnterPlan::AmbientSavepoint => enter_ambient_savepoint(alias).await,
    }
}

/// A block whose BEGIN or SAVEPOINT failed: taken off the state again; gives the error back.
pub(crate) fn begin_failed(mut armed: Armed, error: Error) -> Error {
    if let Some(entered) = armed.entered.take() {
        state::with_at(entered.index, |state| rules::unpush(state, &entered));
    }
    state::wake_waiting();
    error
}

/// A savepoint block was cancelled in its body: its SAVEPOINT is still open on the connection
/// (a destructor cannot send SQL). Rolled back here, at the next engine step on the
/// connection, so the statements after it run at their own block's level (and are not rolled
/// back with the leftover savepoint at that block's exit) and later blocks nest where the
/// rules expect them.
pub(crate) async fn close_cancelled_levels(alias: &str, conn: &mut dyn AsyncTx) {
    let leftover = state::with(alias, |state| state.leftover_savepoint.take());
    if let Some(depth_before) = leftover
        && let Err(levels) = levels_left_open(conn, depth_before)
    {
        close_levels_left_open(alias, conn, levels).await;
    }
}

/// diesel's view of the caller's connection; refuses one left stale by a cancelled block.
fn callers_connection(
    alias: &str,
    index: usize,
    conn: &mut dyn AsyncTx,
) -> Result<CallersConnection, Error> {
    let depth = conn.depth()?;
    let id = conn.id();
    if depth > 0
        && !state::with_at(index, |state| state.block_connection == Some(id))
        && stale::is_stale(id, depth)
    {
        conn.mark_broken();
        stale::forget(id);
        return Err(Error::StaleTransaction {
            alias: alias.to_owned(),
        });
    }
    let foreign = rules::foreign_transaction(depth, || conn.open_transaction_is_test());
    Ok(CallersConnection { id, depth, foreign })
}

pub(crate) async fn begin_on(
    alias: &str,
    conn: &mut dyn AsyncTx,
    options: &BlockOptions<'_>,
    begin: BeginOptionsUse,
) -> Result<(), Error> {
    match begin {
        BeginOptionsUse::Apply => conn.begin_with(alias, &options.begin).await,
        BeginOptionsUse::Plain => Ok(conn.begin().await?),
        BeginOptionsUse::IgnoredInTest => {
            tracing::debug!(
                alias,
                options = %options.begin.describe(),
                "begin options ignored inside a test transaction"
            );
            Ok(conn.begin().await?)
        }
    }
}

/// E2 for an ambient block: a connection from the alias's pool, BEGIN, push.
async fn enter_checked_out(options: &BlockOptions<'_>) -> Result<Armed, Error> {
    let alias = options.using;
    // A `replica = true` block's connection is a replica's (rule P1).
    let (pooled, outermost) = if options.begin.replica {
        // Dropped during the BEGIN, `pooled` goes back to its pool marked broken by
        // diesel-async (or by `begin_with`): discarded.
        let mut pooled = replica::checkout_for_block(alias).await?;
        let outermost = plan_checked_out(options, pooled.inner())?;
        begin_on(alias, pooled.inner(), options, outermost.begin).await?;
        (pooled, outermost)
    } else {
        checkout_and_begin(options).await?
    };
    Ok(hold_checked_out(options, pooled, outermost))
}

/// What rule E2 needs to know of a connection just checked out for an outermost block.
pub(crate) struct CheckedOut {
    depth_before: u32,
    foreign: Foreign,
    pub(crate) begin: BeginOptionsUse,
}

/// diesel's view of a checked-out connection, and how its BEGIN goes (E2).
pub(crate) fn plan_checked_out(
    options: &BlockOptions<'_>,
    conn: &mut dyn AsyncTx,
) -> Result<CheckedOut, Error> {
    let depth_before = conn.depth()?;
    let foreign = rules::foreign_transaction(depth_before, || conn.open_transaction_is_test());
    let begin = rules::begin_outermost(options, foreign)?;
    Ok(CheckedOut {
        depth_before,
        foreign,
        begin,
    })
}

/// After the BEGIN on a checked-out connection: the state holds it and the block is pushed,
/// armed in its body's phase (E2).
pub(crate) fn hold_checked_out(
    options: &BlockOptions<'_>,
    pooled: Box<dyn AsyncPooledConn>,
    outermost: CheckedOut,
) -> Armed {
    let CheckedOut {
        depth_before,
        foreign,
        begin,
    } = outermost;
    tracing::debug!(alias = options.using, depth = depth_before + 1, "BEGIN");
    let entered = state::with(options.using, |state| {
        state.hold(pooled);
        rules::push_checked_out(state, depth_before, foreign, options, begin)
    });
    let mut armed = Armed::new(entered);
    armed.phase = Cancelled::InBody;
    armed
}

/// The start of a block's one look at the table on the common path (`explicit`, `ambient`):
/// the alias's state index, or `Err(request_due)` when the block must take
/// [`enter_general`]: the request's transaction of the alias is due (rule Q1; marked
/// beginning now), or it is not the alias's turn (A3).
pub(crate) fn common_path_index(task: &mut state::Task, alias: &str) -> Result<usize, bool> {
    if task
        .request
        .as_mut()
        .is_some_and(|request| request.begin_due(alias))
    {
        return Err(true);
    }
    let index = task.states.index(alias);
    if !task.has_turn(index) {
        return Err(false);
    }
    Ok(index)
}

/// Entering off the common path: the request's transaction begun first when
/// [`common_path_index`] marked it due, then [`enter`], which waits for the alias's turn and
/// closes a leftover savepoint.
pub(crate) async fn enter_general(
    options: &BlockOptions<'_>,
    caller: Option<&mut dyn AsyncTx>,
    request_due: bool,
) -> Result<Armed, Error> {
    if request_due {
        crate::scope::aio_request::begin_due(options.using).await?;
    }
    enter(options, caller).await
}

/// A connection from the async alias's pool.
pub(crate) async fn checkout(alias: &str) -> Result<Box<dyn AsyncPooledConn>, Error> {
    pool(alias)?.checkout(alias).await
}

/// E2 up to the push, for an outermost block on a connection from the alias's pool: checked
/// out, planned ([`plan_checked_out`]) and begun. A plain BEGIN goes in the pool's one future
/// with the checkout; a BEGIN with options follows in a future of its own ([`begin_on`]).
/// Dropped during a BEGIN, the connection goes back to its pool marked broken by diesel-async
/// (or by `begin_with`): discarded.
pub(crate) async fn checkout_and_begin(
    options: &BlockOptions<'_>,
) -> Result<(Box<dyn AsyncPooledConn>, CheckedOut), Error> {
    let alias = options.using;
    let mut planned = None;
    let mut plan = |conn: &mut dyn AsyncTx| {
        let outermost = plan_checked_out(options, conn)?;
        let plain = outermost.begin == BeginOptionsUse::Plain;
        planned = Some(outermost);
        Ok(plain)
    };
    let mut pooled = pool(alias)?.checkout_begun(alias, &mut plan).await?;
    let outermost = planned.expect("the pool plans the connection it checked out");
    if outermost.begin != BeginOptionsUse::Plain {
        Box::pin(begin_on(alias, pooled.inner(), options, outermost.begin)).await?;
    }
    Ok((pooled, outermost))
}

/// The alias's async pool.
fn pool(alias: &str) -> Result<std::sync::Arc<dyn crate::api::aio::AsyncPool>, Error> {
    // The pool found under the table's borrow: one reference count, not the alias's whole
    // `Database` cloned.
    let in_task = state::try_with_task(|task| {
        let databases = task.databases.as_ref()?;
        Some(
            databases
                .get(alias)
                .and_then(|database| database.async_pool(alias))
                .cloned(),
        )
    })
    .flatten();
    match in_task {
        Some(pool) => pool,
        None => Ok(crate::databases::lookup(alias)?.async_pool(alias)?.clone()),
    }
}

/// The database configured under `alias`, from the task's registry.
pub(crate) fn lookup(alias: &str) -> Result<crate::databases::Database, Error> {
    let databases = state::try_with_task(|task| task.databases.clone()).flatten();
    match databases {
        Some(databases) => databases.get(alias).cloned(),
        None => crate::databases::lookup(alias),
    }
}

/// E3 for an ambient block: SAVEPOINT on the held connection, push.
async fn enter_ambient_savepoint(alias: &str) -> Result<Armed, Error> {
    let mut taken = Taken::take(alias).expect("an ambient block holds its connection");
    let conn = taken.conn();
    close_cancelled_levels(alias, conn).await;
    let begun = match conn.depth() {
        Ok(depth_before) => conn.begin().await.map(|()| depth_before),
        Err(error) => Err(error),
    };
    taken.put_back();
    let depth_before = begun?;
    tracing::trace!(alias, depth = depth_before + 1, "SAVEPOINT");
    let entered = state::with(alias, |state| rules::push_savepoint(state, depth_before));
    let mut armed = Armed::new(entered);
    armed.phase = Cancelled::InBody;
    Ok(armed)
}

// --- Leaving --------------------------------------------------------------------------------

/// What leaving an async block produced.
pub(crate) type Exit = crate::engine::block::Exit<AsyncCallback>;

/// Leaves a block (rules X1–X4 in `rules::plan_leave`, A2 for a cancelled child).
pub(crate) async fn leave(
    alias: &str,
    armed: &mut Armed,
    caller: Option<&mut dyn AsyncTx>,
    body_succeeded: bool,
) -> Exit {
    let Some(planned) = plan_exit(armed, caller.as_deref().map(AsyncTx::id), body_succeeded) else {
        return Exit::clean();
    };
    let child = planned.child;
    let exit = carry_out(alias, planned, caller).await;
    exited(alias, armed, child, body_succeeded, exit)
}

/// How a block leaves, decided in one look at the state: the plan, and what it needs.
pub(crate) struct Planned {
    pub(crate) plan: Leave<crate::engine::aio::state::AsyncFlavor>,
    /// An outermost block's pooled connection, taken out of the state.
    pub(crate) pooled: Option<Box<dyn AsyncPooledConn>>,
    /// Whether a nested block of this one was cancelled (A2), and where.
    pub(crate) child: Cancelled,
    /// Whether a COMMIT must be remembered for later reads on replicas (P2).
    pub(crate) remember: bool,
}

/// The first half of leaving: the block taken off the state (`rules::plan_leave`), and the
/// guard told what a drop from now on leaves to account for. `None` when the block is no
/// longer armed. `caller` is the caller's connection's id (explicit mode).
pub(crate) fn plan_exit(
    armed: &mut Armed,
    caller: Option<ConnectionId>,
    body_succeeded: bool,
) -> Option<Planned> {
    let entered = armed.entered.take()?;
    // Only a process with replicas looks at what a COMMIT must leave for later reads (P2).
    let watch_commits = crate::databases::replicas_configured();
    let planned = state::with_at(entered.index, |state| {
        let remember = watch_commits && rules::commit_to_remember(state, &entered);
        let child = rules::child_cancelled(state, &entered);
        let plan = rules::plan_leave(state, &entered, body_succeeded && child == Cancelled::No);
        if matches!(plan, Leave::Done) && child != Cancelled::No {
            rules::pass_cancel_up(state, child);
        }
        let pooled = match &plan {
            Leave::Outermost { .. } => state.release_held(),
            _ => None,
        };
        Planned {
            plan,
            pooled,
            child,
            remember,
        }
    });
    armed.exiting = Some(match (caller, &planned.plan) {
        (Some(id), Leave::Outermost { depth_before, .. }) => Exiting::CallersOutermost {
            id,
            depth_before: *depth_before,
        },
        (Some(_), _) => Exiting::CallersSavepoint,
        (None, _) => Exiting::Pooled,
    });
    Some(planned)
}

/// The second half: the SQL of the plan.
pub(crate) async fn carry_out(
    alias: &str,
    planned: Planned,
    caller: Option<&mut dyn AsyncTx>,
) -> Exit {
    let Planned {
        plan,
        pooled,
        child,
        remember,
    } = planned;
    match plan {
        Leave::Done => Exit::clean(),
        Leave::Lost => Exit::failed(Error::BlockEndedElsewhere {
            alias: alias.to_owned(),
        }),
        Leave::Orphaned { success, discarded } => {
            drop(discarded);
            if success {
                Exit::failed(connection_missing(alias))
            } else {
                Exit::clean()
            }
        }
        Leave::Savepoint {
            depth_before,
            success,
            callbacks_mark,
            discarded,
        } => {
            drop(discarded);
            leave_savepoint(alias, caller, depth_before, success, callbacks_mark, child).await
        }
        Leave::Outermost {
            success,
            depth_before,
            foreign,
            callbacks,
            route,
        } => {
            leave_outermost(
                alias,
                caller,
                pooled,
                depth_before,
                success,
                foreign,
                callbacks,
                route,
                child,
                remember,
            )
            .await
        }
    }
}

/// The end of leaving, once the SQL is done: the guard has nothing left to account for,
/// siblings waiting for their turn are woken, and a cancelled child fails the block (A2).
pub(crate) fn exited(
    alias: &str,
    armed: &mut Armed,
    child: Cancelled,
    body_succeeded: bool,
    mut exit: Exit,
) -> Exit {
    armed.exiting = None;
    state::wake_waiting();
    if child != Cancelled::No && exit.error.is_none() && body_succeeded {
        exit.error = Some(Error::Cancelled {
            alias: alias.to_owned(),
        });
    }
    exit
}

#[allow(clippy::too_many_arguments)]
async fn leave_outermost(
    alias: &str,
    caller: Option<&mut dyn AsyncTx>,
    mut pooled: Option<Box<dyn AsyncPooledConn>>,
    depth_before: u32,
    success: bool,
    foreign: Foreign,
    callbacks: Vec<AsyncCallback>,
    route: Route,
    child: Cancelled,
    remember: bool,
) -> Exit {
    let conn: &mut dyn AsyncTx = match (&mut pooled, caller) {
        (Some(pooled), _) => pooled.inner(),
        (None, Some(conn)) => conn,
        (None, None) => return Exit::failed(connection_missing(alias)),
    };
    let error = if child == Cancelled::InSql {
        // What the server did with the cancelled SQL is unknown: never use it again.
        conn.mark_broken();
        None
    } else {
        let depth = match levels_left_open(conn, depth_before + 1) {
            Ok(depth) => depth,
            Err(levels) => close_levels_left_open(alias, conn, levels).await,
        };
        if success {
            let _ = depth;
            // The COMMIT awaited here, its failure's recovery in a future of its own: the
            // path every block takes sets up one future less.
            match conn.commit().await {
                Ok(()) => {
                    tracing::debug!(alias, "COMMIT");
                    None
                }
                Err(error) => Some(commit_failed(alias, conn, depth_before, error).await),
            }
        } else {
            rollback_outermost(alias, conn, depth_before).await;
            None
        }
    };
    let committed = error.is_none() && success;
    if committed && remember {
        replica::remember_commit(alias, Some(&mut *conn)).await;
    }
    // Back to the pool before the callbacks run (C3), or closed if diesel-async reports it
    // broken or inside a transaction.
    if let Some(pooled) = pooled {
        release(pooled);
    }
    outermost_exit(alias, error, committed, foreign, callbacks, route)
}

/// What an outermost block's exit leaves once its COMMIT or ROLLBACK is done: the error, and
/// the committed callbacks to run now (C3), routed where the plan said.
pub(crate) fn outermost_exit(
    alias: &str,
    error: Option<diesel::result::Error>,
    committed: bool,
    foreign: Foreign,
    callbacks: Vec<AsyncCallback>,
    route: Route,
) -> Exit {
    let callbacks = if callbacks.is_empty() {
        callbacks
    } else if rules::callbacks_survive(foreign, committed) {
        route_callbacks(alias, route, callbacks)
    } else {
        drop(callbacks);
        Vec::new()
    };
    Exit {
        error: error.map(Error::from),
        callbacks,
    }
}

/// Sends committed callbacks where the plan routed them; returns those that run now.
fn route_callbacks(alias: &str, route: Route, callbacks: Vec<AsyncCallback>) -> Vec<AsyncCallback> {
    match route {
        Route::RunNow => callbacks,
        Route::AfterLend {
            same_alias,
            connection,
        } => {
            let lender = if same_alias {
                Some(alias.to_owned())
            } else {
                state::with_task(|task| {
                    task.states
                        .iter()
                        .find(|state| {
                            !state.in_atomic_block() && state.slot == Slot::Lent(connection)
                        })
                        .map(|state| state.alias().to_owned())
                })
            };
            let Some(lender) = lender else {
                return callbacks;
            };
            state::with(&lender, |state| {
                rules::defer_until_lend_ends(state, same_alias, connection, callbacks)
            })
            .err()
            .unwrap_or_default()
        }
        Route::Join(host) => {
            if let Err(lost) = state::with(&host, |state| rules::join_queue(state, callbacks)) {
                tracing::error!(
                    alias,
                    host = &*host,
                    dropped = lost.len(),
                    "on_commit callbacks dropped: the block of the alias whose transaction \
                     carried this block's work ended first"
                );
            }
            Vec::new()
        }
    }
}

async fn leave_savepoint(
    alias: &str,
    caller: Option<&mut dyn AsyncTx>,
    depth_before: u32,
    success: bool,
    callbacks_mark: usize,
    child: Cancelled,
) -> Exit {
    let mut taken = match caller {
        Some(_) => None,
        None => match Taken::take(alias) {
            Some(taken) => Some(taken),
            None => return Exit::failed(connection_missing(alias)),
        },
    };
    let conn: &mut dyn AsyncTx = match (&mut taken, caller) {
        (Some(taken), _) => taken.conn(),
        (None, Some(conn)) => conn,
        (None, None) => unreachable!("taken above"),
    };
    let (error, transaction_lost) = if child == Cancelled::InSql {
        conn.mark_broken();
        (None, true)
    } else {
        let depth = match levels_left_open(conn, depth_before + 1) {
            Ok(depth) => depth,
            Err(levels) => close_levels_left_open(alias, conn, levels).await,
        };
        if success {
            let _ = depth;
            // As the COMMIT above: the failure's recovery in a future of its own.
            match conn.commit().await {
                Ok(()) => {
                    tracing::trace!(alias, depth = depth_before + 1, "RELEASE SAVEPOINT");
                    (None, false)
                }
                Err(error) => release_failed(alias, conn, depth_before, error).await,
            }
        } else {
            (None, !rollback_savepoint(alias, conn, depth_before).await)
        }
    };
    if let Some(taken) = taken {
        taken.put_back();
    }
    savepoint_exit(alias, callbacks_mark, error, transaction_lost)
}

/// What a savepoint's exit leaves once its RELEASE or ROLLBACK TO is done (X4): after a
/// failure, the state told what is lost.
pub(crate) fn savepoint_exit(
    alias: &str,
    callbacks_mark: usize,
    error: Option<diesel::result::Error>,
    transaction_lost: bool,
) -> Exit {
    let exit = SavepointExit {
        release_failed: error.is_some(),
        transaction_lost,
    };
    if exit != SavepointExit::default() {
        let discarded = state::with(alias, |state| {
            rules::after_savepoint(state, callbacks_mark, exit)
        });
        drop(discarded);
    }
    Exit {
        error: error.map(Error::from),
        callbacks: Vec::new(),
    }
}

/// diesel's depth (`Ok`) when no level is left open above the block's own, the common case,
/// answered without setting up [`close_levels_left_open`]'s future; else how many are.
pub(crate) fn levels_left_open(
    conn: &mut dyn AsyncTx,
    block_depth: u32,
) -> Result<Option<u32>, u32> {
    let Ok(depth) = conn.depth() else {
        return Ok(None);
    };
    match rules::levels_left_open(Some(depth), block_depth) {
        0 => Ok(Some(depth)),
        levels => Err(levels),
    }
}

/// Rolls back the `levels` left open above the block's own (a panic, or a cancelled child);
/// returns diesel's depth now.
async fn close_levels_left_open(alias: &str, conn: &mut dyn AsyncTx, levels: u32) -> Option<u32> {
    tracing::debug!(
        alias,
        levels,
        "rolling back levels left open inside the block"
    );
    for _ in 0..levels {
        if let Err(error) = conn.rollback().await {
            tracing::error!(alias, %error, "rolling back a level left open failed");
            break;
        }
    }
    conn.depth().ok()
}

/// X4 after a failed RELEASE SAVEPOINT: the error, and whether the transaction is lost.
#[cold]
pub(crate) async fn release_failed(
    alias: &str,
    conn: &mut dyn AsyncTx,
    depth_before: u32,
    error: diesel::result::Error,
) -> (Option<diesel::result::Error>, bool) {
    tracing::error!(alias, %error, "RELEASE SAVEPOINT failed");
    let recovered = match rules::recover_release(conn.depth().ok(), depth_before) {
        ReleaseRecovery::RollbackTo => rollback_savepoint(alias, conn, depth_before).await,
        // diesel-async lowered its depth without rolling the savepoint back (diesel rolls it
        // back): both are left to do.
        ReleaseRecovery::ReleaseOnly => conn.rollback_released(depth_before).await.is_ok(),
        ReleaseRecovery::Lost => false,
    };
    (Some(error), !recovered)
}

async fn rollback_savepoint(alias: &str, conn: &mut dyn AsyncTx, depth_before: u32) -> bool {
    let rolled_back = match conn.rollback().await {
        Ok(()) => conn.release_rolled_back(depth_before).await,
        Err(error) => Err(error),
    };
    match rolled_back {
        Ok(()) => {
            tracing::trace!(alias, depth = depth_before + 1, "ROLLBACK TO SAVEPOINT");
            true
        }
        Err(error) => {
            tracing::error!(alias, %error, "ROLLBACK TO SAVEPOINT failed; marking the transaction for rollback");
            false
        }
    }
}

/// X4 after a failed COMMIT: rolls back what is still open; gives the error back.
#[cold]
pub(crate) async fn commit_failed(
    alias: &str,
    conn: &mut dyn AsyncTx,
    depth_before: u32,
    error: diesel::result::Error,
) -> diesel::result::Error {
    tracing::error!(alias, %error, "COMMIT failed; rolling back");
    if rules::rollback_after_failed_commit(conn.depth().ok(), depth_before) {
        rollback_outermost(alias, conn, depth_before).await;
    }
    error
}

async fn rollback_outermost(alias: &str, conn: &mut dyn AsyncTx, depth_before: u32) {
    let rolled_back = match conn.rollback().await {
        Ok(()) if depth_before > 0 => conn.release_rolled_back(depth_before).await,
        other => other,
    };
    match rolled_back {
        Ok(()) => tracing::debug!(alias, "ROLLBACK"),
        Err(error) => {
            conn.mark_broken();
            tracing::error!(alias, %error, "ROLLBACK failed; the connection is discarded")
        }
    }
}

// --- Test transactions (rule T1) ----------------------------------------------------------------

/// Opens the outermost block of an async `testing::TestTransaction` on a connection of the
/// alias's pool.
pub(crate) async fn enter_test_block(alias: &str) -> Result<Entered, Error> {
    state::with(alias, |state| rules::check_test_transaction_start(state))?;
    let mut pooled = checkout(alias).await?;
    let conn = pooled.inner();
    let depth_before = conn.depth()?;
    let foreign = rules::foreign_transaction(depth_before, || conn.open_transaction_is_test());
    conn.begin().await?;
    tracing::debug!(alias, depth = depth_before + 1, "BEGIN (test transaction)");
    Ok(state::with(alias, |state| {
        state.hold(pooled);
        rules::push_test_transaction(state, depth_before, foreign)
    }))
}

/// Rolls a test transaction's block back (and whatever is still open above it): ROLLBACK,
/// the connection back to its pool.
pub(crate) async fn leave_test_block(alias: &str, entered: Entered) {
    let on_top = state::with(alias, |state| {
        state.blocks.last().map(|block| block.token) == Some(entered.token)
    });
    if !on_top {
        return abandon_test_block(alias, entered);
    }
    let mut armed = Armed::new(entered);
    armed.phase = Cancelled::InBody;
    let exit = leave(alias, &mut armed, None, false).await;
    armed.disarm();
    if let Some(error) = exit.error {
        tracing::error!(alias, %error, "rolling back a TestTransaction failed");
    }
}

/// Ends a test transaction's block without SQL (a destructor cannot await a ROLLBACK): the
/// state forgets it and its connection goes back to its pool marked broken, so the pool
/// discards it and the server rolls back when it closes.
pub(crate) fn abandon_test_block(alias: &str, entered: Entered) {
    let abandoned = state::try_with_task(|task| {
        let index = task.states.index(alias);
        let state = task.states.at(index);
        let abandoned = rules::abandon_from(state, entered.token)?;
        Some((abandoned, state.release_held()))
    })
    .flatten();
    if let Some((abandoned, pooled)) = abandoned {
        drop(abandoned.discarded);
        discard(pooled);
    }
    state::wake_waiting();
}
