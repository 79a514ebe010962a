//! Entering and leaving blocks: rules E1–E3, X1–X5 and the rollback-flag half of F2.
//!
//! One path for every outcome: the body runs under `catch_unwind`, so `Err`, `Ok` with the
//! rollback flag set, and a panic all leave through `leave`, which rolls back and then returns
//! the error or resumes the panic unchanged (rule X3).

use std::panic::{self, AssertUnwindSafe};

use diesel::Connection;

use crate::begin::{BeginOptions, Isolation};
use crate::connection::{PooledConn, TxConnection, release_rolled_back_savepoint};
use crate::databases;
use crate::error::Error;
use crate::hooks;
use crate::request;
use crate::state::{self, Block, BlockKind, Callback, Foreign, Slot};

/// The options of one block: what `#[atomic(...)]` and `transaction::Atomic` carry (rule S2).
#[derive(Clone, Copy, Debug)]
pub struct BlockOptions<'a> {
    /// The database alias.
    pub using: &'a str,
    /// Nested blocks create a savepoint (else they merge into their parent).
    pub savepoint: bool,
    /// The block must be outermost.
    pub durable: bool,
    /// Isolation, read-only and lock mode for the BEGIN of an outermost block.
    pub begin: BeginOptions,
}

/// Runs `body` as a block on the alias's ambient connection.
pub(crate) fn run_ambient<T, E>(
    options: &BlockOptions<'_>,
    body: impl FnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    E: From<Error>,
{
    let entered = enter(options, None)?;
    let outcome = panic::catch_unwind(AssertUnwindSafe(body));
    let exit = leave(options.using, entered, None, succeeded(&outcome));
    finish(options.using, outcome, exit)
}

/// Runs `body` as a block on the caller's connection.
pub(crate) fn run_explicit<C, T, E>(
    options: &BlockOptions<'_>,
    conn: &mut C,
    body: impl FnOnce(&mut C) -> Result<T, E>,
) -> Result<T, E>
where
    C: Connection,
    E: From<Error>,
{
    let entered = enter(options, Some(conn))?;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| body(&mut *conn)));
    let exit = leave(options.using, entered, Some(conn), succeeded(&outcome));
    finish(options.using, outcome, exit)
}

/// Runs `body` as a block on a connection held by `owner` (`#[atomic(conn = self.conn)]`):
/// `field` reaches the connection each time the block needs it, so `body` can have all of
/// `owner`, the connection included, in between.
pub(crate) fn run_explicit_field<S, C, T, E>(
    options: &BlockOptions<'_>,
    owner: &mut S,
    field: impl Fn(&mut S) -> &mut C,
    body: impl FnOnce(&mut S) -> Result<T, E>,
) -> Result<T, E>
where
    S: ?Sized,
    C: Connection,
    E: From<Error>,
{
    let entered = enter(options, Some(field(owner)))?;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| body(&mut *owner)));
    let exit = leave(
        options.using,
        entered,
        Some(field(owner)),
        succeeded(&outcome),
    );
    finish(options.using, outcome, exit)
}

#[inline]
pub(crate) fn succeeded<T, E>(outcome: &std::thread::Result<Result<T, E>>) -> bool {
    matches!(outcome, Ok(Ok(_)))
}

/// Turns the body's outcome and the exit's result into what the block returns.
pub(crate) fn finish<T, E: From<Error>>(
    alias: &str,
    outcome: std::thread::Result<Result<T, E>>,
    exit: Exit,
) -> Result<T, E> {
    match outcome {
        Err(payload) => {
            if let Some(error) = exit.error {
                tracing::error!(alias, %error, "leaving an atomic block after a panic failed");
            }
            panic::resume_unwind(payload)
        }
        Ok(Err(error)) => {
            if let Some(exit_error) = exit.error {
                tracing::error!(alias, error = %exit_error, "leaving a failed atomic block failed too");
            }
            Err(error)
        }
        Ok(Ok(value)) => match exit.error {
            Some(error) => Err(error.into()),
            None => {
                hooks::run_after_commit(alias, exit.callbacks);
                Ok(value)
            }
        },
    }
}

/// Identifies the block at its exit.
pub(crate) struct Entered {
    token: u64,
    /// The alias's state index (`state::with_at`).
    index: usize,
}

enum EnterPlan {
    /// Begin a transaction on a connection checked out of the alias's pool.
    CheckOut,
    /// The block is pushed; begin its transaction or savepoint on the caller's connection
    /// (with the block's begin options when it begins the transaction).
    BeginExplicit(Entered, bool),
    /// Create a savepoint on the ambient block's connection, carried out of the state.
    AmbientSavepoint(Box<dyn PooledConn>),
    /// Already pushed (a merged block needs no SQL).
    Done(Entered),
}

/// diesel's view of the caller's connection, read before our state is borrowed.
struct ExplicitConnection {
    address: usize,
    depth: u32,
    foreign: Foreign,
    /// Inside the caller's own transaction: the other alias whose open block runs on this
    /// connection at exactly that depth, if any (its COMMIT will make this block's work
    /// durable).
    host: Option<Box<str>>,
}

/// Enters a block: ambient when `explicit` is `None`.
///
/// The explicit path borrows the thread's state once: the block is pushed before its BEGIN
/// or SAVEPOINT and popped again if that fails (no user code runs in between).
pub(crate) fn enter(
    options: &BlockOptions<'_>,
    mut explicit: Option<&mut dyn TxConnection>,
) -> Result<Entered, Error> {
    let alias = options.using;
    request::touch(alias)?;
    let explicit_connection = match explicit.as_deref_mut() {
        Some(conn) => {
            let (depth, foreign) = open_transaction(conn)?;
            let address = conn.address();
            let host = match foreign {
                Foreign::User => host_block(address, alias, depth),
                Foreign::None | Foreign::Test => None,
            };
            Some(ExplicitConnection {
                address,
                depth,
                foreign,
                host,
            })
        }
        None => None,
    };
    let plan = state::with(alias, |st| -> Result<EnterPlan, Error> {
        if options.durable && st.refuses_durable() {
            return Err(durable_nested(alias));
        }
        if !st.in_atomic_block() {
            return match (&explicit_connection, &st.slot) {
                (Some(conn), slot) => {
                    if options.durable && conn.foreign == Foreign::User {
                        return Err(durable_nested(alias));
                    }
                    let apply_begin = applies_begin(options, conn.foreign)?;
                    let restore_lent = match slot {
                        Slot::Lent { address } => Some(*address),
                        _ => None,
                    };
                    st.slot = Slot::Explicit {
                        address: conn.address,
                    };
                    st.block_connection = conn.address;
                    let begun_isolation = options.begin.isolation.filter(|_| apply_begin);
                    let entered = push_outermost(
                        st,
                        false,
                        true,
                        restore_lent,
                        conn.depth,
                        conn.foreign,
                        begun_isolation,
                        conn.host.clone(),
                    );
                    Ok(EnterPlan::BeginExplicit(entered, apply_begin))
                }
                (None, Slot::Empty) => Ok(EnterPlan::CheckOut),
                (None, Slot::Explicit { .. }) => Err(Error::AliasBoundToExplicitConnection {
                    alias: alias.to_owned(),
                }),
                (None, _) => Err(Error::ConnectionInUse {
                    alias: alias.to_owned(),
                }),
            };
        }
        if !options.begin.is_default() && st.refuses_durable() {
            return Err(begin_nested(alias, &options.begin));
        }
        match (&explicit_connection, &st.slot) {
            (Some(conn), _) if conn.address != st.block_connection => Err(Error::AliasInUse {
                alias: alias.to_owned(),
            }),
            (None, Slot::Explicit { .. }) => Err(Error::AliasBoundToExplicitConnection {
                alias: alias.to_owned(),
            }),
            (None, Slot::Lent { .. } | Slot::Empty) => Err(Error::ConnectionInUse {
                alias: alias.to_owned(),
            }),
            (conn, _) if !options.savepoint || st.needs_rollback => {
                let out_of_sight = nested_out_of_sight(st, conn.as_ref());
                let depth = conn.as_ref().map_or(st.block_depth(), |conn| conn.depth);
                Ok(EnterPlan::Done(push(
                    st,
                    BlockKind::Merged,
                    depth,
                    out_of_sight,
                )))
            }
            (Some(conn), _) => {
                let depth_before = conn.depth;
                let out_of_sight = nested_out_of_sight(st, Some(conn));
                Ok(EnterPlan::BeginExplicit(
                    push(
                        st,
                        BlockKind::Savepoint { depth_before },
                        depth_before + 1,
                        out_of_sight,
                    ),
                    false,
                ))
            }
            (None, _) => Ok(EnterPlan::AmbientSavepoint(take_held(st))),
        }
    })?;

    match plan {
        EnterPlan::Done(entered) => Ok(entered),
        EnterPlan::BeginExplicit(entered, apply_begin) => {
            let conn = explicit.expect("explicit plans come with a connection");
            let begun = if apply_begin {
                conn.begin_with(alias, &options.begin)
            } else {
                conn.begin().map_err(Error::from)
            };
            match begun {
                Ok(()) => {
                    trace_begin(alias, &explicit_connection);
                    Ok(entered)
                }
                Err(error) => {
                    unpush(alias, entered);
                    Err(error)
                }
            }
        }
        EnterPlan::CheckOut => {
            let mut pooled = databases::lookup(alias)?.checkout(alias)?;
            let conn = pooled.inner();
            let (depth_before, foreign) = open_transaction(conn)?;
            if options.durable && foreign == Foreign::User {
                return Err(durable_nested(alias));
            }
            let apply_begin = applies_begin(options, foreign)?;
            if apply_begin {
                conn.begin_with(alias, &options.begin)?;
            } else {
                conn.begin()?;
            }
            let begun_isolation = options.begin.isolation.filter(|_| apply_begin);
            tracing::debug!(alias, depth = depth_before + 1, "BEGIN");
            let address = pooled.inner_address();
            Ok(state::with(alias, |st| {
                st.slot = Slot::Held(pooled);
                st.block_connection = address;
                push_outermost(
                    st,
                    false,
                    false,
                    None,
                    depth_before,
                    foreign,
                    begun_isolation,
                    None,
                )
            }))
        }
        EnterPlan::AmbientSavepoint(mut pooled) => {
            let conn = pooled.inner();
            let begun = conn.depth().and_then(|depth_before| {
                conn.begin()?;
                tracing::trace!(alias, depth = depth_before + 1, "SAVEPOINT");
                Ok(depth_before)
            });
            state::with(alias, |st| {
                st.slot = Slot::Held(pooled);
                let depth_before = begun?;
                let out_of_sight = nested_out_of_sight(st, None);
                Ok(push(
                    st,
                    BlockKind::Savepoint { depth_before },
                    depth_before + 1,
                    out_of_sight,
                ))
            })
        }
    }
}

fn trace_begin(alias: &str, conn: &Option<ExplicitConnection>) {
    let depth = conn.as_ref().map_or(0, |conn| conn.depth) + 1;
    tracing::debug!(
        alias,
        depth,
        "BEGIN (depth 1) or SAVEPOINT on the caller's connection"
    );
}

/// Whether an outermost block's BEGIN carries its begin options: not inside a test
/// transaction (whose BEGIN already ran; the options are ignored there, as `durable` is),
/// and an error inside the caller's own `conn.transaction(..)`.
#[inline]
fn applies_begin(options: &BlockOptions<'_>, foreign: Foreign) -> Result<bool, Error> {
    if options.begin.is_default() {
        return Ok(false);
    }
    begin_in_foreign(options, foreign)
}

#[inline(never)]
fn begin_in_foreign(options: &BlockOptions<'_>, foreign: Foreign) -> Result<bool, Error> {
    match foreign {
        Foreign::None => Ok(true),
        Foreign::Test => {
            tracing::debug!(
                alias = options.using,
                options = %options.begin.describe(),
                "begin options ignored inside a test transaction"
            );
            Ok(false)
        }
        Foreign::User => Err(begin_nested(options.using, &options.begin)),
    }
}

fn begin_nested(alias: &str, begin: &BeginOptions) -> Error {
    Error::TransactionManagement(format!(
        "alias '{alias}': {} can only be set by the block that begins the transaction, and \
         this block is nested in an open transaction (another atomic block, request()'s \
         transaction or the caller's conn.transaction); make it the outermost block and mark \
         it `durable = true` so that is checked",
        begin.describe()
    ))
}

fn durable_nested(alias: &str) -> Error {
    Error::DurableNested {
        alias: alias.to_owned(),
    }
}

/// diesel's depth before an outermost block, and whose transaction is open at that depth.
#[inline]
fn open_transaction(conn: &mut dyn TxConnection) -> Result<(u32, Foreign), Error> {
    let depth = conn.depth()?;
    let foreign = match depth {
        0 => Foreign::None,
        _ if conn.open_transaction_is_test() => Foreign::Test,
        _ => Foreign::User,
    };
    Ok((depth, foreign))
}

/// Inside the caller's own transaction on `address`: the other alias whose open block runs
/// on that connection with nothing of the caller's in between (its innermost block is at
/// `depth`), whose COMMIT makes this block's work durable.
#[cold]
fn host_block(address: usize, alias: &str, depth: u32) -> Option<Box<str>> {
    state::block_on_connection(address, alias)
        .filter(|(_, host_depth)| *host_depth == depth)
        .map(|(host, _)| host.into_boxed_str())
}

/// Whether a nested block's commit is out of sight: its parent's is, or it begins on the
/// caller's connection deeper than the parent block runs, inside a `conn.transaction(..)` of
/// the caller's whose rollback diesel-atomic would not see.
#[inline]
fn nested_out_of_sight(st: &state::AliasState, explicit: Option<&ExplicitConnection>) -> bool {
    let parent = st.blocks.last();
    parent.is_some_and(|block| block.commit_out_of_sight)
        || explicit.is_some_and(|conn| conn.depth != st.block_depth())
}

/// Takes back a block whose BEGIN or SAVEPOINT failed.
fn unpush(alias: &str, entered: Entered) {
    state::with(alias, |st| {
        if st.blocks.last().map(|block| block.token) != Some(entered.token) {
            return;
        }
        if let Some(Block {
            kind:
                BlockKind::Outermost {
                    explicit: true,
                    restore_lent,
                    ..
                },
            ..
        }) = st.blocks.pop()
        {
            st.slot = restore_lent.map_or(Slot::Empty, |address| Slot::Lent { address });
            st.block_connection = 0;
        }
    });
}

/// Opens the outermost block of a `testing::TestTransaction` on the alias's pooled connection.
pub(crate) fn enter_test_block(alias: &str) -> Result<Entered, Error> {
    let busy = state::with(alias, |st| {
        st.in_atomic_block() || !matches!(st.slot, Slot::Empty)
    });
    if busy {
        return Err(Error::TransactionManagement(format!(
            "a TestTransaction must begin outside every atomic block and `connection()` call \
             on alias '{alias}'"
        )));
    }
    let mut pooled = databases::lookup(alias)?.checkout(alias)?;
    let conn = pooled.inner();
    let (depth_before, foreign) = open_transaction(conn)?;
    conn.begin()?;
    tracing::debug!(alias, depth = depth_before + 1, "BEGIN (test transaction)");
    let address = pooled.inner_address();
    Ok(state::with(alias, |st| {
        st.slot = Slot::Held(pooled);
        st.block_connection = address;
        push_outermost(st, true, false, None, depth_before, foreign, None, None)
    }))
}

#[inline]
fn push(
    st: &mut state::AliasState,
    kind: BlockKind,
    depth: u32,
    commit_out_of_sight: bool,
) -> Entered {
    let token = state::next_token();
    st.blocks.push(Block {
        token,
        kind,
        callbacks_mark: st.callbacks.len(),
        depth,
        commit_out_of_sight,
    });
    Entered {
        token,
        index: st.index,
    }
}

#[inline]
#[allow(clippy::too_many_arguments)]
fn push_outermost(
    st: &mut state::AliasState,
    from_test: bool,
    explicit: bool,
    restore_lent: Option<usize>,
    depth_before: u32,
    foreign: Foreign,
    begun_isolation: Option<Isolation>,
    callbacks_join: Option<Box<str>>,
) -> Entered {
    st.needs_rollback = false;
    st.begun_isolation = begun_isolation;
    // The caller's own transaction commits out of sight, unless another alias's block on the
    // same connection will commit it (then the callbacks join that block's queue).
    let commit_out_of_sight = foreign == Foreign::User && callbacks_join.is_none();
    push(
        st,
        BlockKind::Outermost {
            from_test,
            explicit,
            restore_lent,
            depth_before,
            foreign,
            callbacks_join,
        },
        depth_before + 1,
        commit_out_of_sight,
    )
}

/// Takes the ambient block's connection out for our own SQL; the slot reads `Lent` meanwhile.
fn take_held(st: &mut state::AliasState) -> Box<dyn PooledConn> {
    let address = st.slot.address().unwrap_or_default();
    match std::mem::replace(&mut st.slot, Slot::Lent { address }) {
        Slot::Held(pooled) => pooled,
        _ => unreachable!("take_held is called only on a held slot"),
    }
}

/// What leaving a block produced.
pub(crate) struct Exit {
    /// The exit's own failure (COMMIT or RELEASE failed, block ended elsewhere).
    pub(crate) error: Option<Error>,
    /// Callbacks to run now: the transaction committed.
    pub(crate) callbacks: Vec<Callback>,
}

impl Exit {
    fn clean() -> Self {
        Exit {
            error: None,
            callbacks: Vec::new(),
        }
    }

    fn failed(error: Error) -> Self {
        Exit {
            error: Some(error),
            callbacks: Vec::new(),
        }
    }
}

enum LeavePlan {
    Done,
    Lost,
    Savepoint {
        depth_before: u32,
        success: bool,
        held: Option<Box<dyn PooledConn>>,
        callbacks_mark: usize,
    },
    Outermost {
        success: bool,
        held: Option<Box<dyn PooledConn>>,
        depth_before: u32,
        foreign: Foreign,
        callbacks: Vec<Callback>,
        /// Where committed callbacks go instead of running at once (see `Route`).
        route: Route,
    },
    /// The block's connection is lent to a `connection()` closure that is still running (a
    /// `TestTransaction` dropped inside it): it is rolled back when the closure gives it back.
    Orphaned {
        success: bool,
    },
}

/// Where an outermost block's committed callbacks go.
enum Route {
    /// They run now, after the block's exit.
    RunNow,
    /// The block ran while a `connection()` call held the connection: this alias's own call
    /// (`same_alias`, which holds the alias whatever connection the block used), or another
    /// alias's call that lent this very connection. They run when that call gives it back.
    AfterLend { same_alias: bool, address: usize },
    /// Into the queue of this other alias's open block, which commits the work.
    Join(Box<str>),
}

/// Leaves a block (rules X1–X4); `body_succeeded` is false for `Err` and panics.
pub(crate) fn leave(
    alias: &str,
    entered: Entered,
    explicit: Option<&mut dyn TxConnection>,
    body_succeeded: bool,
) -> Exit {
    // Callbacks the exit discards are moved out here and dropped after the state's borrow
    // ends: their captures' `Drop` may call the runtime.
    let mut discarded = Vec::new();
    let plan = state::with_at(entered.index, |st| {
        if st.blocks.last().map(|block| block.token) != Some(entered.token) {
            return LeavePlan::Lost;
        }
        let block = st.blocks.pop().expect("checked above");
        let success = body_succeeded && !st.needs_rollback;
        // X2: the flag is cleared first; a merged block sets it again for its parent.
        st.needs_rollback = false;
        match block.kind {
            BlockKind::Merged => {
                st.needs_rollback = !success;
                LeavePlan::Done
            }
            BlockKind::Savepoint { depth_before } => {
                if !success {
                    discarded = split_off_callbacks(st, block.callbacks_mark);
                }
                let held = matches!(st.slot, Slot::Held(_)).then(|| take_held(st));
                LeavePlan::Savepoint {
                    depth_before,
                    success,
                    held,
                    callbacks_mark: block.callbacks_mark,
                }
            }
            BlockKind::Outermost {
                explicit: is_explicit,
                restore_lent,
                depth_before,
                foreign,
                callbacks_join,
                ..
            } => {
                // C3: the state is reset before the callbacks run.
                let callbacks = std::mem::take(&mut st.callbacks);
                let address = st.block_connection;
                st.block_connection = 0;
                if is_explicit {
                    st.slot = restore_lent.map_or(Slot::Empty, |address| Slot::Lent { address });
                } else if matches!(st.slot, Slot::Lent { .. }) {
                    discarded = callbacks;
                    st.orphaned_at_depth = Some(depth_before);
                    return LeavePlan::Orphaned { success };
                }
                let held = match std::mem::replace(&mut st.slot, Slot::Empty) {
                    Slot::Held(pooled) => Some(pooled),
                    other => {
                        st.slot = other;
                        None
                    }
                };
                let route = match (callbacks_join, restore_lent) {
                    _ if callbacks.is_empty() => Route::RunNow,
                    (Some(host), _) => Route::Join(host),
                    (None, Some(_)) => Route::AfterLend {
                        same_alias: true,
                        address,
                    },
                    (None, None) if is_explicit => Route::AfterLend {
                        same_alias: false,
                        address,
                    },
                    (None, None) => Route::RunNow,
                };
                LeavePlan::Outermost {
                    success,
                    held,
                    depth_before,
                    foreign,
                    callbacks,
                    route,
                }
            }
        }
    });
    drop(discarded);

    match plan {
        LeavePlan::Done => Exit::clean(),
        LeavePlan::Lost => lost_block(alias),
        LeavePlan::Orphaned { success } => orphaned_block(alias, success),
        LeavePlan::Savepoint {
            depth_before,
            success,
            held,
            callbacks_mark,
        } => leave_savepoint(alias, explicit, depth_before, success, held, callbacks_mark),
        LeavePlan::Outermost {
            success,
            mut held,
            depth_before,
            foreign,
            callbacks,
            route,
        } => {
            let end = |conn: &mut dyn TxConnection| {
                if success {
                    commit_outermost(alias, conn, depth_before)
                } else {
                    rollback_outermost(alias, conn, depth_before);
                    None
                }
            };
            let error = match (&mut held, explicit) {
                (Some(pooled), _) => end(pooled.inner()),
                (None, Some(conn)) => end(conn),
                (None, None) => return connection_missing(alias, "outermost atomic block"),
            };
            // Back to the pool before the callbacks run (C3); r2d2 discards it if diesel
            // reports it broken or still inside a transaction (X4, X5).
            drop(held);
            let committed = error.is_none() && success;
            let callbacks = match foreign {
                Foreign::None | Foreign::User if committed => {
                    route_callbacks(alias, route, callbacks)
                }
                // A test transaction never commits; a rollback drops the callbacks (C2).
                _ => {
                    drop(callbacks);
                    Vec::new()
                }
            };
            Exit {
                error: error.map(Error::from),
                callbacks,
            }
        }
    }
}

/// The callbacks after `mark`, taken out of the queue to be dropped outside the borrow.
fn split_off_callbacks(st: &mut state::AliasState, mark: usize) -> Vec<Callback> {
    let mark = mark.min(st.callbacks.len());
    st.callbacks.split_off(mark)
}

/// Sends a committed outermost block's callbacks where they belong; returns those that run
/// now.
#[inline]
fn route_callbacks(alias: &str, route: Route, callbacks: Vec<Callback>) -> Vec<Callback> {
    match route {
        Route::RunNow => callbacks,
        Route::AfterLend {
            same_alias,
            address,
        } => defer_until_lend_ends(alias, same_alias, address, callbacks),
        Route::Join(host) => join_host(alias, &host, callbacks),
    }
}

/// Hands committed callbacks to the `connection()` call that lent the block's connection: they
/// run when it gives the connection back (C3: they may use that alias, so they wait for it).
#[cold]
fn defer_until_lend_ends(
    alias: &str,
    same_alias: bool,
    address: usize,
    callbacks: Vec<Callback>,
) -> Vec<Callback> {
    let lender = if same_alias {
        Some(alias.to_owned())
    } else {
        state::lender_of(address)
    };
    let Some(lender) = lender else {
        return callbacks;
    };
    let mut callbacks = Some(callbacks);
    state::with(&lender, |st| {
        // This alias's own `connection()` call holds the alias whichever connection the block
        // ran on; another alias's only matters when it lent this very connection.
        if matches!(st.slot, Slot::Lent { address: lent } if same_alias || lent == address) {
            st.after_lend.extend(callbacks.take().into_iter().flatten());
        }
    });
    // Not lent any more (cannot happen while the block's body ran inside the closure): now.
    callbacks.unwrap_or_default()
}

/// Rule C3 for a block inside the caller's transaction on another alias's block: its
/// callbacks run after that block's outermost COMMIT (or are dropped by its rollback).
#[cold]
fn join_host(alias: &str, host: &str, callbacks: Vec<Callback>) -> Vec<Callback> {
    let mut callbacks = Some(callbacks);
    state::with(host, |st| {
        if st.in_atomic_block() {
            st.callbacks.extend(callbacks.take().into_iter().flatten());
        }
    });
    if let Some(lost) = callbacks {
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

#[cold]
fn orphaned_block(alias: &str, success: bool) -> Exit {
    tracing::debug!(
        alias,
        "the block's connection is lent to a connection() call; it rolls back when that call \
         returns"
    );
    if success {
        return connection_missing(alias, "outermost atomic block");
    }
    Exit::clean()
}

#[cold]
fn lost_block(alias: &str) -> Exit {
    Exit::failed(Error::TransactionManagement(format!(
        "the atomic block on alias '{alias}' was ended from inside (a TestTransaction \
         dropped inside it?); its work is rolled back"
    )))
}

#[cold]
fn connection_missing(alias: &str, block: &str) -> Exit {
    Exit::failed(Error::TransactionManagement(format!(
        "the connection of alias '{alias}' was not back in place when its {block} ended"
    )))
}

/// Leaves a nested block with a savepoint: RELEASE on success, else ROLLBACK TO (X1, X2, X4).
#[inline(never)]
fn leave_savepoint(
    alias: &str,
    explicit: Option<&mut dyn TxConnection>,
    depth_before: u32,
    success: bool,
    mut held: Option<Box<dyn PooledConn>>,
    callbacks_mark: usize,
) -> Exit {
    let conn: &mut dyn TxConnection = match (&mut held, explicit) {
        (Some(pooled), _) => pooled.inner(),
        (None, Some(conn)) => conn,
        (None, None) => return connection_missing(alias, "atomic block"),
    };
    let (error, mark_for_rollback) = if success {
        release_savepoint(alias, conn, depth_before)
    } else {
        (None, !rollback_savepoint(alias, conn, depth_before))
    };
    if held.is_some() || error.is_some() || mark_for_rollback {
        let discarded = state::with(alias, |st| {
            if let Some(pooled) = held {
                st.slot = Slot::Held(pooled);
            }
            if mark_for_rollback {
                st.needs_rollback = true;
            }
            // A failed RELEASE rolled the savepoint back, or marked the whole transaction.
            match error {
                Some(_) => split_off_callbacks(st, callbacks_mark),
                None => Vec::new(),
            }
        });
        drop(discarded);
    }
    Exit {
        error: error.map(Error::from),
        callbacks: Vec::new(),
    }
}

/// X1/X4 for a savepoint: RELEASE; on failure ROLLBACK TO + RELEASE, else mark for rollback.
/// Returns the RELEASE error and whether the transaction must be marked for rollback.
fn release_savepoint(
    alias: &str,
    conn: &mut dyn TxConnection,
    depth_before: u32,
) -> (Option<diesel::result::Error>, bool) {
    match conn.commit() {
        Ok(()) => {
            tracing::trace!(alias, depth = depth_before + 1, "RELEASE SAVEPOINT");
            (None, false)
        }
        Err(error) => {
            tracing::error!(alias, %error, "RELEASE SAVEPOINT failed");
            // X4: ROLLBACK TO + RELEASE. diesel leaves its depth alone when a plain RELEASE
            // fails, but when the backend flagged the transaction (PostgreSQL after an error)
            // it has already rolled back to the savepoint itself: then only RELEASE is left.
            let recovered = match conn.depth() {
                Ok(depth) if depth > depth_before => rollback_savepoint(alias, conn, depth_before),
                Ok(depth) if depth == depth_before => {
                    release_after_diesels_rollback(alias, conn, depth_before)
                }
                // diesel's manager broke (or the depth is not ours): the transaction is lost.
                _ => false,
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
) -> Option<diesel::result::Error> {
    match conn.commit() {
        Ok(()) => {
            tracing::debug!(alias, "COMMIT");
            None
        }
        Err(error) => {
            tracing::error!(alias, %error, "COMMIT failed; rolling back");
            // diesel ≥ 2.3.14 already rolled back a failed top-level COMMIT; this covers a
            // transaction still open after all. A broken manager makes r2d2 discard it.
            if conn.depth().is_ok_and(|depth| depth > depth_before) {
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

/// Ends a TestTransaction's block on `alias`, and whatever is still open above it.
pub(crate) fn abandon_test_block(alias: &str, entered: Entered) {
    let on_top = state::try_with(alias, |st| {
        st.blocks.last().map(|block| block.token) == Some(entered.token)
    });
    match on_top {
        Some(true) => {
            let exit = leave(alias, entered, None, false);
            if let Some(error) = exit.error {
                tracing::error!(alias, %error, "rolling back a TestTransaction failed");
            }
        }
        Some(false) => {
            // Blocks opened inside are still open (the TestTransaction was moved into one and
            // dropped there): roll everything back; those blocks report the loss at their exit.
            let mut discarded = Vec::new();
            let taken = state::try_with(alias, |st| {
                let depth_before = match st.blocks.first() {
                    Some(Block {
                        kind: BlockKind::Outermost { depth_before, .. },
                        token,
                        ..
                    }) if *token == entered.token => *depth_before,
                    _ => return None,
                };
                st.blocks.clear();
                discarded = std::mem::take(&mut st.callbacks);
                st.needs_rollback = false;
                st.block_connection = 0;
                match std::mem::replace(&mut st.slot, Slot::Empty) {
                    Slot::Held(pooled) => Some((pooled, depth_before)),
                    other => {
                        // Lent to a `connection()` closure: rolled back when it comes back.
                        if matches!(other, Slot::Lent { .. }) {
                            st.orphaned_at_depth = Some(depth_before);
                        }
                        st.slot = other;
                        None
                    }
                }
            })
            .flatten();
            drop(discarded);
            if let Some((mut pooled, depth_before)) = taken {
                let conn = pooled.inner();
                while conn.depth().is_ok_and(|depth| depth > depth_before) {
                    if conn.rollback().is_err() {
                        break;
                    }
                }
            }
        }
        None => {}
    }
}
