//! The sync executor: carries out the plans of `engine::rules` with diesel's synchronous
//! connections — checks connections out, sends BEGIN / SAVEPOINT / RELEASE / COMMIT /
//! ROLLBACK (with rule X4's recovery), and runs a block's body.
//!
//! One path for every outcome: [`attempt`] runs the body under `catch_unwind`, so `Err`, `Ok`
//! with the rollback flag set, and a panic all leave through [`leave`], and [`finish`] then
//! returns the error or resumes the panic unchanged (rule X3). Nothing here decides a rule:
//! each decision is a call into `rules`.

use std::panic::{self, AssertUnwindSafe};

use crate::adapter::connection::release_rolled_back_savepoint;
use crate::adapter::{ConnectionId, PooledConn, TxConnection};
use crate::databases;
use crate::engine::rules::{
    self, BeginOptionsUse, CallersConnection, EnterPlan, Leave, ReleaseRecovery, Route,
    SavepointExit,
};
use crate::engine::state::{self, Callback, Entered, Foreign};
use crate::engine::{hooks, replica};
use crate::error::Error;
use crate::options::BlockOptions;

/// Runs `body` once as a block: enter, the body under `catch_unwind`, leave; then hands the
/// body's outcome and what leaving produced to `then` (the retry loop's decision, or
/// [`finish`]). The block runs on the connection `connection` finds in `owner` (explicit
/// mode), or on the alias's ambient connection when it finds none. `body` gets `owner` back,
/// so an explicit-mode body can use the connection (and, for `#[atomic(conn = self.conn)]`,
/// the rest of its owner) in between.
#[inline]
pub(crate) fn attempt<S, C, T, E, R>(
    options: &BlockOptions<'_>,
    owner: &mut S,
    connection: impl Fn(&mut S) -> Option<&mut C>,
    body: impl FnOnce(&mut S) -> Result<T, E>,
    then: impl FnOnce(std::thread::Result<Result<T, E>>, Exit) -> R,
) -> Result<R, Error>
where
    S: ?Sized,
    C: TxConnection + ?Sized,
{
    let entered = enter(options, connection(owner).map(C::as_tx))?;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| body(&mut *owner)));
    let exit = leave(
        options.using,
        entered,
        connection(owner).map(C::as_tx),
        succeeded(&outcome),
    );
    Ok(then(outcome, exit))
}

/// [`attempt`], then [`finish`]: a block, as `#[atomic]` runs it.
#[inline]
pub(crate) fn run<S, C, T, E>(
    options: &BlockOptions<'_>,
    owner: &mut S,
    connection: impl Fn(&mut S) -> Option<&mut C>,
    body: impl FnOnce(&mut S) -> Result<T, E>,
) -> Result<T, E>
where
    S: ?Sized,
    C: TxConnection + ?Sized,
    E: From<Error>,
{
    let alias = options.using;
    attempt(options, owner, connection, body, |outcome, exit| {
        finish(alias, outcome, exit)
    })?
}

/// The `connection` of an ambient block: none, the alias's own.
#[inline]
pub(crate) fn ambient(_: &mut ()) -> Option<&mut (dyn TxConnection + 'static)> {
    None
}

/// Whether the body returned `Ok` (neither `Err` nor a panic).
#[inline]
pub(crate) fn succeeded<T, E>(outcome: &std::thread::Result<Result<T, E>>) -> bool {
    matches!(outcome, Ok(Ok(_)))
}

/// Turns the body's outcome and the exit's result into what the block returns (X3), and runs
/// the callbacks of a COMMIT (C3).
pub(crate) fn finish<T, E: From<Error>>(
    alias: &str,
    outcome: std::thread::Result<Result<T, E>>,
    exit: Exit,
) -> Result<T, E> {
    match settle(alias, outcome, exit.error) {
        Settled::Committed(value) => {
            hooks::run_after_commit(alias, exit.callbacks);
            Ok(value)
        }
        Settled::Returned(result) => result,
    }
}

/// What a block returns, before its callbacks run.
pub(crate) enum Settled<T, E> {
    /// The body succeeded and the exit committed (or released): run the callbacks, then
    /// return the value.
    Committed(T),
    /// The body's error, or the exit's.
    Returned(Result<T, E>),
}

/// Rule X3, for both executors: the body's error or panic wins over the exit's own failure
/// (logged); the exit's failure turns a successful body into an error. A panic is resumed
/// unchanged.
#[inline]
pub(crate) fn settle<T, E: From<Error>>(
    alias: &str,
    outcome: std::thread::Result<Result<T, E>>,
    exit_error: Option<Error>,
) -> Settled<T, E> {
    match outcome {
        Err(payload) => {
            if let Some(error) = exit_error {
                tracing::error!(alias, %error, "leaving an atomic block after a panic failed");
            }
            panic::resume_unwind(payload)
        }
        Ok(Err(error)) => {
            if let Some(exit_error) = exit_error {
                tracing::error!(alias, error = %exit_error, "leaving a failed atomic block failed too");
            }
            Settled::Returned(Err(error))
        }
        Ok(Ok(value)) => match exit_error {
            Some(error) => Settled::Returned(Err(error.into())),
            None => Settled::Committed(value),
        },
    }
}

// --- Entering -------------------------------------------------------------------------------

/// Enters a block: ambient when `caller` is `None` (rules E1–E3 in `rules::plan_enter`).
///
/// On the caller's connection the state is borrowed once: the block is pushed before its
/// BEGIN or SAVEPOINT and taken back if that fails (no user code runs in between).
#[inline]
pub(crate) fn enter(
    options: &BlockOptions<'_>,
    mut caller: Option<&mut dyn TxConnection>,
) -> Result<Entered, Error> {
    let alias = options.using;
    #[cfg(feature = "async")]
    if crate::engine::aio::state::held_by_async_block(alias) {
        return Err(sync_inside_async(alias));
    }
    let callers_connection = match caller.as_deref_mut() {
        Some(conn) => Some(callers_connection(conn)?),
        None => None,
    };
    let plan = state::with_others(alias, |state, others| {
        rules::plan_enter(state, others, options, callers_connection.as_ref())
    })?;
    match plan {
        EnterPlan::Merged(entered) => Ok(entered),
        EnterPlan::OnCallersConnection { entered, begin } => {
            let conn = caller.expect("a plan on the caller's connection comes with one");
            let depth = callers_connection.map_or(0, |conn| conn.depth);
            match begin_on(alias, conn, depth, options, begin) {
                Ok(()) => {
                    tracing::debug!(
                        alias,
                        depth = depth + 1,
                        "BEGIN (depth 1) or SAVEPOINT on the caller's connection"
                    );
                    Ok(entered)
                }
                Err(error) => {
                    state::with(alias, |state| rules::unpush(state, &entered));
                    Err(error)
                }
            }
        }
        EnterPlan::CheckOut => enter_checked_out(options),
        EnterPlan::AmbientSavepoint => enter_ambient_savepoint(alias),
    }
}

/// diesel's view of the caller's connection.
#[inline]
fn callers_connection(conn: &mut dyn TxConnection) -> Result<CallersConnection, Error> {
    let depth = conn.depth()?;
    let foreign = rules::foreign_transaction(depth, || conn.open_transaction_is_test());
    Ok(CallersConnection {
        id: conn.id(),
        depth,
        foreign,
    })
}

/// BEGIN (with the block's options when the plan says so) or SAVEPOINT.
#[inline]
fn begin_on(
    alias: &str,
    conn: &mut dyn TxConnection,
    depth: u32,
    options: &BlockOptions<'_>,
    begin: BeginOptionsUse,
) -> Result<(), Error> {
    match begin {
        BeginOptionsUse::Apply => conn.begin_with(alias, &options.begin),
        BeginOptionsUse::Plain => Ok(conn.begin_at(depth)?),
        BeginOptionsUse::IgnoredInTest => {
            tracing::debug!(
                alias,
                options = %options.begin.describe(),
                "begin options ignored inside a test transaction"
            );
            Ok(conn.begin_at(depth)?)
        }
    }
}

/// E2 for an ambient block: a connection from the alias's pool (a replica's for a `replica =
/// true` block, rule P1), BEGIN, push.
fn enter_checked_out(options: &BlockOptions<'_>) -> Result<Entered, Error> {
    let alias = options.using;
    let database = databases::lookup(alias)?;
    let mut pooled = if options.begin.replica {
        replica::checkout_for_block(alias, &database)?
    } else {
        database.checkout(alias)?
    };
    let conn = pooled.inner();
    let depth_before = conn.depth()?;
    let foreign = rules::foreign_transaction(depth_before, || conn.open_transaction_is_test());
    // A pool may hand out a connection inside a transaction (r2d2's `TestCustomizer`).
    let begin = rules::begin_outermost(options, foreign)?;
    begin_on(alias, conn, depth_before, options, begin)?;
    tracing::debug!(alias, depth = depth_before + 1, "BEGIN");
    Ok(state::with(alias, |state| {
        state.hold(pooled);
        rules::push_checked_out(state, depth_before, foreign, options, begin)
    }))
}

/// E3 for an ambient block: SAVEPOINT on the held connection, push.
fn enter_ambient_savepoint(alias: &str) -> Result<Entered, Error> {
    let mut pooled = state::with(alias, |state| state.take_held())
        .expect("an ambient block holds its connection");
    let conn = pooled.inner();
    let begun = conn.depth().and_then(|depth_before| {
        conn.begin_at(depth_before)?;
        tracing::trace!(alias, depth = depth_before + 1, "SAVEPOINT");
        Ok(depth_before)
    });
    state::with(alias, |state| {
        state.put_back(pooled);
        Ok(rules::push_savepoint(state, begun?))
    })
}

/// Opens the outermost block of a `testing::TestTransaction` on the alias's pooled connection
/// (rule T1).
pub(crate) fn enter_test_block(alias: &str) -> Result<Entered, Error> {
    state::with(alias, |state| rules::check_test_transaction_start(state))?;
    let mut pooled = databases::lookup(alias)?.checkout(alias)?;
    let conn = pooled.inner();
    let depth_before = conn.depth()?;
    let foreign = rules::foreign_transaction(depth_before, || conn.open_transaction_is_test());
    conn.begin_at(depth_before)?;
    tracing::debug!(alias, depth = depth_before + 1, "BEGIN (test transaction)");
    Ok(state::with(alias, |state| {
        state.hold(pooled);
        rules::push_test_transaction(state, depth_before, foreign)
    }))
}

// --- Leaving --------------------------------------------------------------------------------

/// What leaving a block produced (the callback type is the sync or the async runtime's).
pub(crate) struct Exit<C = Callback> {
    /// The exit's own failure (COMMIT or RELEASE failed, block ended elsewhere, a nested
    /// block cancelled).
    pub(crate) error: Option<Error>,
    /// Callbacks to run now: the transaction committed.
    pub(crate) callbacks: Vec<C>,
}

impl<C> Exit<C> {
    pub(crate) fn clean() -> Self {
        Exit {
            error: None,
            callbacks: Vec::new(),
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        Exit {
            error: Some(error),
            callbacks: Vec::new(),
        }
    }
}

/// Leaves a block (rules X1–X4 in `rules::plan_leave`); `body_succeeded` is false for `Err`
/// and panics.
#[inline]
pub(crate) fn leave(
    alias: &str,
    entered: Entered,
    caller: Option<&mut dyn TxConnection>,
    body_succeeded: bool,
) -> Exit {
    // Only a process with replicas looks at what a COMMIT must leave for later reads (P2).
    let watch_commits = databases::replicas_configured();
    let (plan, pooled, remember) = state::with_at(entered.index, |state| {
        let remember = watch_commits && rules::commit_to_remember(state, &entered);
        let plan = rules::plan_leave(state, &entered, body_succeeded);
        let pooled = match &plan {
            Leave::Savepoint { .. } => state.take_held(),
            Leave::Outermost { .. } => state.release_held(),
            _ => None,
        };
        (plan, pooled, remember)
    });
    match plan {
        Leave::Done => Exit::clean(),
        Leave::Lost => Exit::failed(Error::BlockEndedElsewhere {
            alias: alias.to_owned(),
        }),
        Leave::Orphaned { success, discarded } => {
            drop_discarded(discarded);
            tracing::debug!(
                alias,
                "the block's connection is lent to a connection() call; it rolls back when \
                 that call returns"
            );
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
            drop_discarded(discarded);
            leave_savepoint(alias, caller, pooled, depth_before, success, callbacks_mark)
        }
        Leave::Outermost {
            success,
            depth_before,
            foreign,
            callbacks,
            route,
        } => leave_outermost(
            alias,
            caller,
            pooled,
            depth_before,
            success,
            foreign,
            callbacks,
            route,
            remember,
        ),
    }
}

/// Drops callbacks a block's exit discarded, outside the state's borrow (their captures' `Drop`
/// may call the runtime). Most exits discard none: an empty queue owns nothing to drop.
#[inline]
fn drop_discarded(discarded: Vec<Callback>) {
    if discarded.capacity() == 0 {
        std::mem::forget(discarded);
    } else {
        drop(discarded);
    }
}

/// X1/X2 for the outermost block: COMMIT or ROLLBACK, what a COMMIT leaves for later reads
/// (P2, when `remember`), the connection back to the pool, then the callbacks of a COMMIT
/// where they belong.
#[allow(clippy::too_many_arguments)]
#[inline]
fn leave_outermost(
    alias: &str,
    caller: Option<&mut dyn TxConnection>,
    mut pooled: Option<Box<dyn PooledConn>>,
    depth_before: u32,
    success: bool,
    foreign: Foreign,
    callbacks: Vec<Callback>,
    route: Route,
    remember: bool,
) -> Exit {
    let conn: &mut dyn TxConnection = match (&mut pooled, caller) {
        (Some(pooled), _) => pooled.inner(),
        (None, Some(conn)) => conn,
        (None, None) => return Exit::failed(connection_missing(alias)),
    };
    let depth = close_levels_left_open(alias, conn, depth_before + 1);
    let error = if success {
        commit_outermost(alias, conn, depth_before, depth)
    } else {
        rollback_outermost(alias, conn, depth_before);
        None
    };
    let committed = error.is_none() && success;
    if committed && remember {
        replica::remember_commit(alias, pooled.as_deref_mut());
    }
    // Back to the pool before the callbacks run (C3); r2d2 discards it if diesel reports it
    // broken or still inside a transaction (X4, X5).
    drop(pooled);
    let callbacks = if rules::callbacks_survive(foreign, committed) {
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
#[inline]
fn route_callbacks(alias: &str, route: Route, callbacks: Vec<Callback>) -> Vec<Callback> {
    match route {
        Route::RunNow => callbacks,
        Route::AfterLend {
            same_alias,
            connection,
        } => defer_until_lend_ends(alias, same_alias, connection, callbacks),
        Route::Join(host) => join_host(alias, &host, callbacks),
    }
}

#[cold]
fn defer_until_lend_ends(
    alias: &str,
    same_alias: bool,
    connection: ConnectionId,
    callbacks: Vec<Callback>,
) -> Vec<Callback> {
    let lender = if same_alias {
        Some(alias.to_owned())
    } else {
        state::find_map(|state| {
            (!state.in_atomic_block() && state.slot == state::Slot::Lent(connection))
                .then(|| state.alias().to_owned())
        })
    };
    let Some(lender) = lender else {
        return callbacks;
    };
    // Not lent any more (cannot happen while the block's body ran inside the closure): now.
    state::with(&lender, |state| {
        rules::defer_until_lend_ends(state, same_alias, connection, callbacks)
    })
    .err()
    .unwrap_or_default()
}

#[cold]
fn join_host(alias: &str, host: &str, callbacks: Vec<Callback>) -> Vec<Callback> {
    if let Err(lost) = state::with(host, |state| rules::join_queue(state, callbacks)) {
        tracing::error!(
            alias,
            host,
            dropped = lost.len(),
            "on_commit callbacks dropped: the block of the alias whose transaction carried \
             this block's work ended first"
        );
    }
    Vec::new()
}

/// X1/X2/X4 for a nested block with a savepoint: RELEASE on success, else ROLLBACK TO.
#[inline(never)]
fn leave_savepoint(
    alias: &str,
    caller: Option<&mut dyn TxConnection>,
    mut pooled: Option<Box<dyn PooledConn>>,
    depth_before: u32,
    success: bool,
    callbacks_mark: usize,
) -> Exit {
    let conn: &mut dyn TxConnection = match (&mut pooled, caller) {
        (Some(pooled), _) => pooled.inner(),
        (None, Some(conn)) => conn,
        (None, None) => return Exit::failed(connection_missing(alias)),
    };
    let depth = close_levels_left_open(alias, conn, depth_before + 1);
    let (error, transaction_lost) = if success {
        release_savepoint(alias, conn, depth_before, depth)
    } else {
        (None, !rollback_savepoint(alias, conn, depth_before))
    };
    let exit = SavepointExit {
        release_failed: error.is_some(),
        transaction_lost,
    };
    if pooled.is_some() || exit != SavepointExit::default() {
        let discarded = state::with(alias, |state| {
            if let Some(pooled) = pooled {
                state.put_back(pooled);
            }
            rules::after_savepoint(state, callbacks_mark, exit)
        });
        drop_discarded(discarded);
    }
    Exit {
        error: error.map(Error::from),
        callbacks: Vec::new(),
    }
}

/// Rolls back the diesel levels a panic left open above the block's own (see
/// `rules::levels_left_open`). Returns diesel's depth now, when it could be read: the block's
/// own.
#[inline]
fn close_levels_left_open(
    alias: &str,
    conn: &mut dyn TxConnection,
    block_depth: u32,
) -> Option<u32> {
    let depth = conn.depth().ok()?;
    let levels = rules::levels_left_open(Some(depth), block_depth);
    if levels == 0 {
        return Some(depth);
    }
    close_levels(alias, conn, levels);
    conn.depth().ok()
}

#[cold]
fn close_levels(alias: &str, conn: &mut dyn TxConnection, levels: u32) {
    tracing::warn!(
        alias,
        levels,
        "rolling back transaction levels of diesel's own that a panic left open inside the block"
    );
    for _ in 0..levels {
        if let Err(error) = conn.rollback() {
            tracing::error!(alias, %error, "rolling back a level left open failed");
            return;
        }
    }
}

/// X1/X4 for a savepoint: RELEASE; on failure ROLLBACK TO + RELEASE, else the transaction is
/// lost. Returns the RELEASE error and whether the transaction is lost.
fn release_savepoint(
    alias: &str,
    conn: &mut dyn TxConnection,
    depth_before: u32,
    depth: Option<u32>,
) -> (Option<diesel::result::Error>, bool) {
    let released = match depth {
        Some(depth) => conn.commit_at(depth),
        None => conn.commit(),
    };
    match released {
        Ok(()) => {
            tracing::trace!(alias, depth = depth_before + 1, "RELEASE SAVEPOINT");
            (None, false)
        }
        Err(error) => {
            tracing::error!(alias, %error, "RELEASE SAVEPOINT failed");
            let recovered = match rules::recover_release(conn.depth().ok(), depth_before) {
                ReleaseRecovery::RollbackTo => rollback_savepoint(alias, conn, depth_before),
                ReleaseRecovery::ReleaseOnly => {
                    release_after_diesels_rollback(alias, conn, depth_before)
                }
                ReleaseRecovery::Lost => false,
            };
            (Some(error), !recovered)
        }
    }
}

/// The RELEASE half of X4 after diesel rolled back to the savepoint itself.
fn release_after_diesels_rollback(
    alias: &str,
    conn: &mut dyn TxConnection,
    depth_before: u32,
) -> bool {
    match release_rolled_back_savepoint(conn, depth_before) {
        Ok(()) => {
            tracing::trace!(
                alias,
                depth = depth_before + 1,
                "ROLLBACK TO SAVEPOINT (by diesel)"
            );
            true
        }
        Err(error) => {
            tracing::error!(alias, %error, "RELEASE SAVEPOINT after diesel's ROLLBACK TO failed; marking the transaction for rollback");
            false
        }
    }
}

/// X2 for a savepoint: ROLLBACK TO + RELEASE; false when that failed.
fn rollback_savepoint(alias: &str, conn: &mut dyn TxConnection, depth_before: u32) -> bool {
    let rolled_back = conn
        .rollback()
        .and_then(|()| release_rolled_back_savepoint(conn, depth_before));
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

/// X1/X4 for the outermost block: COMMIT; on failure make sure the transaction is gone.
fn commit_outermost(
    alias: &str,
    conn: &mut dyn TxConnection,
    depth_before: u32,
    depth: Option<u32>,
) -> Option<diesel::result::Error> {
    let committed = match depth {
        Some(depth) => conn.commit_at(depth),
        None => conn.commit(),
    };
    match committed {
        Ok(()) => {
            tracing::debug!(alias, "COMMIT");
            None
        }
        Err(error) => {
            tracing::error!(alias, %error, "COMMIT failed; rolling back");
            if rules::rollback_after_failed_commit(conn.depth().ok(), depth_before) {
                rollback_outermost(alias, conn, depth_before);
            }
            Some(error)
        }
    }
}

/// X2 for the outermost block: ROLLBACK. A failure leaves diesel's manager broken, so the
/// pool discards the connection when it comes back.
fn rollback_outermost(alias: &str, conn: &mut dyn TxConnection, depth_before: u32) {
    let rolled_back = if depth_before == 0 {
        conn.rollback()
    } else {
        conn.rollback()
            .and_then(|()| release_rolled_back_savepoint(conn, depth_before))
    };
    match rolled_back {
        Ok(()) => tracing::debug!(alias, "ROLLBACK"),
        Err(error) => {
            tracing::error!(alias, %error, "ROLLBACK failed; the connection is discarded")
        }
    }
}

/// Rolls a connection whose block ended while it was lent back to `depth_before`.
pub(crate) fn roll_back_to(alias: &str, conn: &mut dyn TxConnection, depth_before: u32) {
    while conn.depth().is_ok_and(|depth| depth > depth_before) {
        if let Err(error) = conn.rollback() {
            tracing::error!(alias, %error, "rolling back an abandoned block failed; the connection is discarded");
            return;
        }
    }
    tracing::debug!(
        alias,
        "ROLLBACK (the block ended while its connection was lent)"
    );
}

/// A sync block on an alias an async block of the current task holds (API §9).
#[cfg(feature = "async")]
#[cold]
pub(crate) fn sync_inside_async(alias: &str) -> Error {
    Error::SyncInsideAsync {
        alias: alias.to_owned(),
        advice: "a synchronous block or connection() here would be a second transaction and \
                 would block the executor; use the async API (#[atomic] async fn, \
                 diesel_atomic::aio)",
    }
}

#[cold]
pub(crate) fn connection_missing(alias: &str) -> Error {
    Error::ConnectionMissing {
        alias: alias.to_owned(),
    }
}

/// Ends a TestTransaction's block on `alias`, and whatever is still open above it (T1).
pub(crate) fn abandon_test_block(alias: &str, entered: Entered) {
    let on_top = state::try_with(alias, |state| {
        state.blocks.last().map(|block| block.token) == Some(entered.token)
    });
    match on_top {
        Some(true) => {
            let exit = leave(alias, entered, None, false);
            if let Some(error) = exit.error {
                tracing::error!(alias, %error, "rolling back a TestTransaction failed");
            }
        }
        Some(false) => {
            let abandoned = state::try_with(alias, |state| {
                let abandoned = rules::abandon_from(state, entered.token)?;
                Some((abandoned, state.release_held()))
            })
            .flatten();
            if let Some((abandoned, pooled)) = abandoned {
                drop(abandoned.discarded);
                if let Some(mut pooled) = pooled {
                    roll_back_to(alias, pooled.inner(), abandoned.depth_before);
                }
            }
        }
        None => {}
    }
}
