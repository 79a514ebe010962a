//! Django's rules (docs/SEMANTICS.md), as decisions over an alias's state.
//!
//! Every function here is pure in the sense that matters: no SQL, no pool, no user code, no
//! logging; it reads and updates the in-memory state and returns a plan that an executor
//! carries out (`engine::block` for sync code). So each rule is written once, for every
//! executor, and unit-tested below without a database. A function's doc names the rules it
//! implements; docs/SEMANTICS.md names the function for each rule.

use std::time::Duration;

use crate::adapter::ConnectionId;
use crate::engine::state::{
    AliasState, Block, BlockKind, BlockToken, Cancelled, Entered, Flavor, Foreign, LastCommit,
    Others, Outermost, Position, Slot, SyncFlavor,
};
use crate::error::Error;
use crate::options::{BeginOptions, BlockOptions, ReadYourWrites};

// --- Entering a block: E1–E3 -----------------------------------------------------------------

/// diesel's view of the caller's connection (explicit mode), read before the state is
/// borrowed.
#[derive(Debug)]
pub(crate) struct CallersConnection {
    pub(crate) id: ConnectionId,
    /// diesel's transaction depth now.
    pub(crate) depth: u32,
    /// Whose transaction is open at that depth, if any (see [`foreign_transaction`]).
    pub(crate) foreign: Foreign,
}

/// Whose transaction is open on a connection at `depth` before an outermost block begins:
/// none, diesel's test transaction (asked only when one is open), or the caller's own.
#[inline]
pub(crate) fn foreign_transaction(depth: u32, is_test: impl FnOnce() -> bool) -> Foreign {
    match depth {
        0 => Foreign::None,
        _ if is_test() => Foreign::DieselTestTransaction,
        _ => Foreign::CallersTransaction,
    }
}

/// Rule C3 across aliases: whether the open block of `state`'s alias carries the work of a
/// block of another alias begun on connection `id` at diesel depth `depth` — its innermost
/// block runs there, with nothing of the caller's in between, and its own commit is in sight.
/// Then that block's COMMIT makes the other block's work durable, and the other block's
/// callbacks join its queue.
pub(crate) fn hosts<K: Flavor>(state: &AliasState<K>, id: ConnectionId, depth: u32) -> bool {
    state.block_connection == Some(id)
        && state
            .blocks
            .last()
            .is_some_and(|innermost| innermost.depth == depth && !innermost.commit_out_of_sight)
}

/// The other alias whose block [`hosts`] a block begun on connection `id` at `depth`.
#[cold]
fn host_of<K: Flavor>(others: &Others<'_, K>, id: ConnectionId, depth: u32) -> Option<Box<str>> {
    others.find_map(|other| hosts(other, id, depth).then(|| other.alias().into()))
}

/// Whether the block's begin options go into its BEGIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BeginOptionsUse {
    /// A plain BEGIN (or SAVEPOINT): no options, or a nested block.
    Plain,
    /// BEGIN with the options.
    Apply,
    /// Inside diesel's test transaction, whose BEGIN already ran: ignored, as `durable` is
    /// (rule T1).
    IgnoredInTest,
}

/// What the executor does to enter a block.
#[derive(Debug)]
pub(crate) enum EnterPlan {
    /// E2 for an ambient block: check a connection out of the alias's pool, ask
    /// [`begin_outermost`], BEGIN, then [`push_checked_out`].
    CheckOut,
    /// The block is pushed: BEGIN (E2) or SAVEPOINT (E3) on the caller's connection, then keep
    /// `entered`, or [`unpush`] it if that failed.
    OnCallersConnection {
        entered: Entered,
        begin: BeginOptionsUse,
    },
    /// E3 for an ambient block: SAVEPOINT on the held connection, then [`push_savepoint`].
    AmbientSavepoint,
    /// E3 without a savepoint: pushed, no SQL.
    Merged(Entered),
}

/// Rules E1–E3 and durable: how to enter a block with `options` on `state`'s alias, ambient
/// when `caller` is `None`. Pushes the block when no SQL must come first. `others` are the
/// thread's other alias states: an outermost block inside the caller's own transaction looks
/// there for the block that [`hosts`] it.
#[inline]
pub(crate) fn plan_enter<K: Flavor>(
    state: &mut AliasState<K>,
    others: Others<'_, K>,
    options: &BlockOptions<'_>,
    caller: Option<&CallersConnection>,
) -> Result<EnterPlan, Error> {
    // P1 before E1: a nested replica block is refused for what it is, durable or not.
    if options.begin.replica {
        check_replica_block(state, caller)?;
    }
    // E1: first, with no state change.
    if options.durable && refuses_durable(state) {
        return Err(durable_nested(state));
    }
    if !state.in_atomic_block() {
        return match (caller, state.slot) {
            (Some(conn), _) => {
                let begin = begin_outermost(options, conn.foreign)?;
                let restore_lent = state.bind_explicit(conn.id);
                let begun_isolation = options
                    .begin
                    .isolation
                    .filter(|_| begin == BeginOptionsUse::Apply);
                let host = match conn.foreign {
                    Foreign::CallersTransaction => host_of(&others, conn.id, conn.depth),
                    Foreign::None | Foreign::DieselTestTransaction => None,
                };
                let entered = push_outermost(
                    state,
                    Outermost {
                        opened_by_test_transaction: false,
                        on_callers_connection: true,
                        restore_lent,
                        depth_before: conn.depth,
                        foreign: conn.foreign,
                        read_only: options.begin.begins_read_only(),
                    },
                    begun_isolation,
                    host,
                );
                Ok(EnterPlan::OnCallersConnection { entered, begin })
            }
            (None, Slot::Empty) => Ok(EnterPlan::CheckOut),
            (None, Slot::Explicit(_)) => Err(alias_bound_to_explicit_connection(state)),
            (None, Slot::Held(_) | Slot::Lent(_)) => Err(connection_in_use(state)),
        };
    }
    // Begin options belong to the BEGIN; a nested block has none (rule S2's options, E2).
    if !options.begin.is_default() && refuses_durable(state) {
        return Err(begin_options_nested(state.alias(), &options.begin));
    }
    match (caller, state.slot) {
        (Some(conn), _) if Some(conn.id) != state.block_connection => Err(Error::AliasInUse {
            alias: state.alias().to_owned(),
        }),
        (None, Slot::Explicit(_)) => Err(alias_bound_to_explicit_connection(state)),
        (None, Slot::Lent(_) | Slot::Empty) => Err(connection_in_use(state)),
        // E3: no savepoint asked for, or none allowed once marked for rollback.
        (caller, _) if !options.savepoint || state.needs_rollback => {
            let out_of_sight = nested_out_of_sight(state, caller);
            let depth = caller.map_or(state.block_depth(), |conn| conn.depth);
            Ok(EnterPlan::Merged(push(
                state,
                BlockKind::Merged,
                depth,
                out_of_sight,
            )))
        }
        (Some(conn), _) => {
            let out_of_sight = nested_out_of_sight(state, caller);
            let depth_before = conn.depth;
            let entered = push(
                state,
                BlockKind::Savepoint { depth_before },
                depth_before + 1,
                out_of_sight,
            );
            Ok(EnterPlan::OnCallersConnection {
                entered,
                begin: BeginOptionsUse::Plain,
            })
        }
        (None, _) => Ok(EnterPlan::AmbientSavepoint),
    }
}

/// Rule E1: durable is refused inside any block but a lone TestTransaction block (T1).
#[inline]
pub(crate) fn refuses_durable<K: Flavor>(state: &AliasState<K>) -> bool {
    match state.blocks.as_slice() {
        [] => false,
        [only] => !matches!(
            &only.kind,
            BlockKind::Outermost(Outermost {
                opened_by_test_transaction: true,
                ..
            })
        ),
        _ => true,
    }
}

/// Rule P1 for a `replica = true` block: it begins a read-only transaction of its own on a
/// replica, so it must be outermost and checked out of the alias's pools (a connection passed
/// in is not a replica), by an executor that routes it. Directly inside a lone
/// `TestTransaction` it is allowed and becomes a savepoint of the test's transaction, which
/// holds the test's data (as Django's test replicas mirror the primary).
fn check_replica_block<K: Flavor>(
    state: &AliasState<K>,
    caller: Option<&CallersConnection>,
) -> Result<(), Error> {
    let unsupported = |reason| Error::ReplicaUnsupported {
        alias: state.alias().to_owned(),
        reason,
    };
    if !K::ROUTES_REPLICA_BLOCKS {
        return Err(unsupported(REPLICA_NOT_ROUTED));
    }
    if refuses_durable(state) {
        return Err(Error::ReplicaNested {
            alias: state.alias().to_owned(),
        });
    }
    if caller.is_some() && !state.in_atomic_block() {
        return Err(unsupported(REPLICA_ON_CALLERS_CONNECTION));
    }
    Ok(())
}

const REPLICA_NOT_ROUTED: &str = "is not run on a replica by the async runtime yet (it would \
     run on the primary unnoticed); drop `replica = true` to run it on the primary";

const REPLICA_ON_CALLERS_CONNECTION: &str = "cannot run on a connection passed in (explicit \
     mode): that connection is not one of the alias's replicas; let the block check one out \
     (ambient mode, no connection argument), or drop `replica = true`";

/// An outermost block's BEGIN on a connection where `foreign` is open: durable is refused
/// inside the caller's own transaction (E1); begin options apply to a real BEGIN only.
#[inline]
pub(crate) fn begin_outermost(
    options: &BlockOptions<'_>,
    foreign: Foreign,
) -> Result<BeginOptionsUse, Error> {
    if options.durable && foreign == Foreign::CallersTransaction {
        return Err(Error::DurableNested {
            alias: options.using.to_owned(),
        });
    }
    if options.begin.is_default() {
        return Ok(BeginOptionsUse::Plain);
    }
    match foreign {
        Foreign::None => Ok(BeginOptionsUse::Apply),
        Foreign::DieselTestTransaction => Ok(BeginOptionsUse::IgnoredInTest),
        Foreign::CallersTransaction => Err(begin_options_nested(options.using, &options.begin)),
    }
}

/// E2 for an ambient block after its BEGIN on the connection the state now holds.
#[inline]
pub(crate) fn push_checked_out<K: Flavor>(
    state: &mut AliasState<K>,
    depth_before: u32,
    foreign: Foreign,
    options: &BlockOptions<'_>,
    begin: BeginOptionsUse,
) -> Entered {
    let begun_isolation = options
        .begin
        .isolation
        .filter(|_| begin == BeginOptionsUse::Apply);
    push_outermost(
        state,
        Outermost {
            opened_by_test_transaction: false,
            on_callers_connection: false,
            restore_lent: None,
            depth_before,
            foreign,
            read_only: options.begin.begins_read_only(),
        },
        begun_isolation,
        None,
    )
}

/// E3 for an ambient block after its SAVEPOINT at `depth_before`.
#[inline]
pub(crate) fn push_savepoint<K: Flavor>(state: &mut AliasState<K>, depth_before: u32) -> Entered {
    let out_of_sight = nested_out_of_sight(state, None);
    push(
        state,
        BlockKind::Savepoint { depth_before },
        depth_before + 1,
        out_of_sight,
    )
}

/// Rule T1: a TestTransaction begins outside every block and `connection()` call of the
/// alias.
pub(crate) fn check_test_transaction_start<K: Flavor>(state: &AliasState<K>) -> Result<(), Error> {
    if state.in_atomic_block() || state.slot != Slot::Empty {
        return Err(Error::TestTransactionNested {
            alias: state.alias().to_owned(),
        });
    }
    Ok(())
}

/// Rule T1: the outermost block of a TestTransaction, on the connection the state now holds.
pub(crate) fn push_test_transaction<K: Flavor>(
    state: &mut AliasState<K>,
    depth_before: u32,
    foreign: Foreign,
) -> Entered {
    push_outermost(
        state,
        Outermost {
            opened_by_test_transaction: true,
            on_callers_connection: false,
            restore_lent: None,
            depth_before,
            foreign,
            read_only: false,
        },
        None,
        None,
    )
}

/// Takes back an explicit-mode block whose BEGIN or SAVEPOINT failed.
pub(crate) fn unpush<K: Flavor>(state: &mut AliasState<K>, entered: &Entered) {
    if state.blocks.last().map(|block| block.token) != Some(entered.token) {
        return;
    }
    if let Some(Block {
        kind:
            BlockKind::Outermost(Outermost {
                on_callers_connection: true,
                restore_lent,
                ..
            }),
        ..
    }) = state.blocks.pop()
    {
        state.unbind_explicit(restore_lent);
    }
}

/// Whether a nested block's commit is out of sight: its parent's is, or it begins on the
/// caller's connection deeper than the parent block runs, inside a `conn.transaction(..)` of
/// the caller's whose rollback diesel-atomic would not see.
#[inline]
fn nested_out_of_sight<K: Flavor>(
    state: &AliasState<K>,
    caller: Option<&CallersConnection>,
) -> bool {
    let parent = state.blocks.last();
    parent.is_some_and(|block| block.commit_out_of_sight)
        || caller.is_some_and(|conn| conn.depth != state.block_depth())
}

/// E2: the flag is cleared, nothing else of a former transaction survives.
#[inline]
fn push_outermost<K: Flavor>(
    state: &mut AliasState<K>,
    outermost: Outermost,
    begun_isolation: Option<crate::options::Isolation>,
    callbacks_join: Option<Box<str>>,
) -> Entered {
    state.needs_rollback = false;
    state.leftover_savepoint = None;
    state.begun_isolation = begun_isolation;
    // The caller's own transaction commits out of sight, unless another alias's block on the
    // same connection will commit it (then the callbacks join that block's queue).
    let commit_out_of_sight =
        outermost.foreign == Foreign::CallersTransaction && callbacks_join.is_none();
    state.callbacks_join = callbacks_join;
    let depth = outermost.depth_before + 1;
    push(
        state,
        BlockKind::Outermost(outermost),
        depth,
        commit_out_of_sight,
    )
}

#[inline]
fn push<K: Flavor>(
    state: &mut AliasState<K>,
    kind: BlockKind,
    depth: u32,
    commit_out_of_sight: bool,
) -> Entered {
    let token = BlockToken::next();
    state.blocks.push(Block {
        token,
        kind,
        callbacks_mark: state.callbacks.len(),
        depth,
        child_cancelled: Cancelled::No,
        commit_out_of_sight,
    });
    Entered {
        token,
        index: state.index,
    }
}

// --- Leaving a block: X1–X5, C2, C3 ----------------------------------------------------------

/// What the executor does to leave a block. Callbacks the exit discards (C2) are handed out
/// to be dropped after the state's borrow: their captures' `Drop` may call the runtime.
pub(crate) enum Leave<K: Flavor = SyncFlavor> {
    /// Nothing to run (a merged block, X1/X2).
    Done,
    /// The block is not the innermost one any more: it was ended from elsewhere.
    Lost,
    /// X1/X2 for a savepoint: RELEASE on `success`, else ROLLBACK TO + RELEASE; then
    /// [`after_savepoint`].
    Savepoint {
        depth_before: u32,
        success: bool,
        callbacks_mark: usize,
        discarded: Vec<K::Callback>,
    },
    /// X1/X2 for the outermost block: COMMIT on `success`, else ROLLBACK. The state is reset
    /// already (C3); `callbacks` run, or go where `route` says, only if the COMMIT succeeded
    /// and [`callbacks_survive`].
    Outermost {
        success: bool,
        depth_before: u32,
        foreign: Foreign,
        callbacks: Vec<K::Callback>,
        route: Route,
    },
    /// The block's connection is lent to a `connection()` closure that is still running (a
    /// TestTransaction dropped inside it): it is rolled back when the closure gives it back.
    Orphaned {
        success: bool,
        discarded: Vec<K::Callback>,
    },
}

/// Where an outermost block's committed callbacks go.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// They run now, after the block's exit (C3).
    RunNow,
    /// The block ran while a `connection()` call held the connection: this alias's own call
    /// (`same_alias`, which holds the alias whatever connection the block used), or another
    /// alias's call that lent this very connection. They run when that call gives it back.
    AfterLend {
        same_alias: bool,
        connection: ConnectionId,
    },
    /// Into the queue of this other alias's open block, which commits the work.
    Join(Box<str>),
}

/// Rules X1–X3 and C2: how to leave the block `entered`, given whether its body succeeded
/// (`Ok`, not `Err` or a panic). Pops the block; for the outermost one also resets the state
/// (C3) and moves its connection out (an ambient block's is in `state.pooled` until the
/// executor takes it with [`AliasState::release_held`]).
#[inline]
pub(crate) fn plan_leave<K: Flavor>(
    state: &mut AliasState<K>,
    entered: &Entered,
    body_succeeded: bool,
) -> Leave<K> {
    if state.blocks.last().map(|block| block.token) != Some(entered.token) {
        return Leave::Lost;
    }
    let block = state.blocks.pop().expect("checked above");
    // A leftover savepoint above this block's level goes with the block's own exit, which
    // rolls back every level above its own (a merged block has no level of its own, and
    // sends nothing).
    if !matches!(block.kind, BlockKind::Merged)
        && state
            .leftover_savepoint
            .is_some_and(|depth| depth >= block.depth)
    {
        state.leftover_savepoint = None;
    }
    // X2: a failed body, or the rollback flag, rolls back.
    let success = body_succeeded && !state.needs_rollback;
    // X2: the flag is cleared first; a merged block sets it again for its parent.
    state.needs_rollback = false;
    match block.kind {
        BlockKind::Merged => {
            state.needs_rollback = !success;
            Leave::Done
        }
        BlockKind::Savepoint { depth_before } => Leave::Savepoint {
            depth_before,
            success,
            callbacks_mark: block.callbacks_mark,
            discarded: if success {
                Vec::new()
            } else {
                split_off_callbacks(state, block.callbacks_mark)
            },
        },
        BlockKind::Outermost(outermost) => {
            // C3: the state is reset before the callbacks run.
            let callbacks = std::mem::take(&mut state.callbacks);
            let route = if callbacks.is_empty() {
                Route::RunNow
            } else {
                route(
                    &outermost,
                    state.callbacks_join.take(),
                    state.block_connection,
                )
            };
            if outermost.on_callers_connection {
                state.unbind_explicit(outermost.restore_lent);
            } else if matches!(state.slot, Slot::Lent(_)) {
                state.block_connection = None;
                state.orphaned_at_depth = Some(outermost.depth_before);
                return Leave::Orphaned {
                    success,
                    discarded: callbacks,
                };
            }
            Leave::Outermost {
                success,
                depth_before: outermost.depth_before,
                foreign: outermost.foreign,
                callbacks,
                route,
            }
        }
    }
}

/// Rule C3: where an outermost block's committed callbacks go.
#[cold]
fn route(
    outermost: &Outermost,
    callbacks_join: Option<Box<str>>,
    connection: Option<ConnectionId>,
) -> Route {
    match (callbacks_join, outermost.restore_lent, connection) {
        (Some(host), _, _) => Route::Join(host),
        (None, Some(_), Some(connection)) => Route::AfterLend {
            same_alias: true,
            connection,
        },
        (None, None, Some(connection)) if outermost.on_callers_connection => Route::AfterLend {
            same_alias: false,
            connection,
        },
        _ => Route::RunNow,
    }
}

/// The callbacks after `mark`, taken out of the queue (C2), to be dropped outside the borrow.
#[inline]
pub(crate) fn split_off_callbacks<K: Flavor>(
    state: &mut AliasState<K>,
    mark: usize,
) -> Vec<K::Callback> {
    let mark = mark.min(state.callbacks.len());
    state.callbacks.split_off(mark)
}

/// C3 (and T1): whether the callbacks of an outermost block that ended run (or are routed):
/// only after a COMMIT that diesel-atomic saw succeed, and never inside diesel's test
/// transaction, which never commits.
#[inline]
pub(crate) fn callbacks_survive(foreign: Foreign, committed: bool) -> bool {
    committed && foreign != Foreign::DieselTestTransaction
}

/// How a savepoint's exit went, for [`after_savepoint`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SavepointExit {
    /// The RELEASE failed (X4).
    pub(crate) release_failed: bool,
    /// The savepoint could not be rolled back either: the transaction is lost (X4).
    pub(crate) transaction_lost: bool,
}

/// Rule X4 after a savepoint's SQL: a failed RELEASE rolled the savepoint back (its callbacks
/// go, C2) or lost the transaction, which is then marked for rollback. Returns the callbacks
/// to drop outside the borrow.
pub(crate) fn after_savepoint<K: Flavor>(
    state: &mut AliasState<K>,
    callbacks_mark: usize,
    exit: SavepointExit,
) -> Vec<K::Callback> {
    if exit.transaction_lost {
        state.needs_rollback = true;
    }
    if exit.release_failed {
        split_off_callbacks(state, callbacks_mark)
    } else {
        Vec::new()
    }
}

/// What to do after a RELEASE failed (X4), from diesel's depth now (`None`: its transaction
/// manager broke).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReleaseRecovery {
    /// ROLLBACK TO + RELEASE.
    RollbackTo,
    /// The backend flagged the transaction and diesel already rolled back to the savepoint
    /// (PostgreSQL after an error): only the RELEASE is left.
    ReleaseOnly,
    /// The transaction is lost (the depth is not ours): mark it for rollback.
    Lost,
}

/// Rule X4 for a savepoint begun at `depth_before` whose RELEASE failed.
pub(crate) fn recover_release(depth_now: Option<u32>, depth_before: u32) -> ReleaseRecovery {
    match depth_now {
        Some(depth) if depth > depth_before => ReleaseRecovery::RollbackTo,
        Some(depth) if depth == depth_before => ReleaseRecovery::ReleaseOnly,
        _ => ReleaseRecovery::Lost,
    }
}

/// Rules X1/X2 when the caller left diesel levels open inside the block: a panic out of
/// diesel's own `conn.transaction(..)` does not roll its level back (diesel catches no
/// panics). Those levels never completed, so they are rolled back before the block's own
/// COMMIT, RELEASE or ROLLBACK, which then applies to the block's level. How many, from
/// diesel's depth now and the depth inside the block.
#[inline]
pub(crate) fn levels_left_open(depth_now: Option<u32>, block_depth: u32) -> u32 {
    depth_now.map_or(0, |depth| depth.saturating_sub(block_depth))
}

/// Rule X4 for the outermost block whose COMMIT failed: roll back if the transaction is still
/// open (diesel ≥ 2.3.14 usually rolled back already; a broken manager makes the pool
/// discard the connection).
pub(crate) fn rollback_after_failed_commit(depth_now: Option<u32>, depth_before: u32) -> bool {
    depth_now.is_some_and(|depth| depth > depth_before)
}

/// Rule C3 across aliases: a block of another alias that ran inside this alias's open block
/// on the same connection hands over its committed callbacks; they join this queue and run
/// after this alias's outermost COMMIT (or go with its rollback). `Err` gives them back when
/// the block has ended already.
pub(crate) fn join_queue<K: Flavor>(
    host: &mut AliasState<K>,
    callbacks: Vec<K::Callback>,
) -> Result<(), Vec<K::Callback>> {
    if !host.in_atomic_block() {
        return Err(callbacks);
    }
    host.callbacks.extend(callbacks);
    Ok(())
}

/// Rule C3 for a block that committed while a `connection()` call held the connection (see
/// [`Route::AfterLend`]): the callbacks wait in the lender's state until that call gives the
/// connection back. `Err` gives them back when nothing is lent any more.
pub(crate) fn defer_until_lend_ends<K: Flavor>(
    lender: &mut AliasState<K>,
    same_alias: bool,
    connection: ConnectionId,
    callbacks: Vec<K::Callback>,
) -> Result<(), Vec<K::Callback>> {
    match lender.slot {
        Slot::Lent(lent) if same_alias || lent == connection => {
            lender.after_lend.extend(callbacks);
            Ok(())
        }
        _ => Err(callbacks),
    }
}

/// Ends a TestTransaction's outermost block with whatever is still open above it (T1: the
/// TestTransaction was moved into a block of its own and dropped there). Those blocks report
/// the loss at their exit.
pub(crate) struct Abandoned<K: Flavor = SyncFlavor> {
    /// Roll the held connection back to this depth, then return it to the pool.
    pub(crate) depth_before: u32,
    pub(crate) discarded: Vec<K::Callback>,
}

pub(crate) fn abandon_from<K: Flavor>(
    state: &mut AliasState<K>,
    token: BlockToken,
) -> Option<Abandoned<K>> {
    let depth_before = match state.blocks.first() {
        Some(Block {
            kind: BlockKind::Outermost(outermost),
            token: first,
            ..
        }) if *first == token => outermost.depth_before,
        _ => return None,
    };
    state.blocks.clear();
    state.needs_rollback = false;
    let discarded = std::mem::take(&mut state.callbacks);
    if matches!(state.slot, Slot::Lent(_)) {
        // Lent to a `connection()` closure: rolled back when it comes back.
        state.block_connection = None;
        state.orphaned_at_depth = Some(depth_before);
    }
    Some(Abandoned {
        depth_before,
        discarded,
    })
}

// --- Cancellation: A2 ---------------------------------------------------------------------------

/// What a block whose future was dropped leaves to its executor.
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) enum Cancel<K: Flavor = SyncFlavor> {
    /// The block is not open any more (its exit ran, or a TestTransaction ended it).
    Gone,
    /// The outermost block: its transaction must never commit. The state is reset; the
    /// executor marks the connection broken (a held one goes back to its pool, which discards
    /// it) or, on the caller's connection, remembers it as stale.
    Outermost {
        depth_before: u32,
        on_callers_connection: bool,
        discarded: Vec<K::Callback>,
    },
    /// A nested block: its parent is marked to roll back and report `Error::Cancelled`.
    Nested { discarded: Vec<K::Callback> },
}

/// Rule A2: the future of block `token` was dropped before the block's exit, `where` it was
/// (in its body, or in its own SQL). Blocks opened inside it were dropped before it (a future
/// drops what it owns first), so it is the innermost one; whatever is still above it goes
/// too. Its callbacks go (C2).
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) fn cancel<K: Flavor>(
    state: &mut AliasState<K>,
    token: BlockToken,
    r#where: Cancelled,
) -> Cancel<K> {
    let Some(position) = state.blocks.iter().position(|block| block.token == token) else {
        return Cancel::Gone;
    };
    let mark = state.blocks[position].callbacks_mark;
    let removed: Vec<Block> = state.blocks.drain(position..).collect();
    let discarded = split_off_callbacks(state, mark);
    if position > 0 {
        // Its work is in its own savepoint, or, merged, in the parent's level.
        let in_level = matches!(removed[0].kind, BlockKind::Merged);
        let mark = match r#where {
            Cancelled::InSql => Cancelled::InSql,
            _ if in_level => Cancelled::InLevel,
            _ => Cancelled::InBody,
        };
        if let (BlockKind::Savepoint { depth_before }, Cancelled::InBody) = (&removed[0].kind, mark)
        {
            state.leftover_savepoint = Some(
                state
                    .leftover_savepoint
                    .map_or(*depth_before, |known| known.min(*depth_before)),
            );
        }
        let parent = &mut state.blocks[position - 1];
        parent.child_cancelled = stronger(parent.child_cancelled, mark);
        state.needs_rollback = true;
        return Cancel::Nested { discarded };
    }
    let Some(Block {
        kind: BlockKind::Outermost(outermost),
        ..
    }) = removed.into_iter().next()
    else {
        unreachable!("the first block is the outermost one")
    };
    state.needs_rollback = false;
    let mut discarded = discarded;
    discarded.append(&mut state.callbacks);
    if outermost.on_callers_connection {
        state.unbind_explicit(outermost.restore_lent);
    } else {
        state.block_connection = None;
    }
    Cancel::Outermost {
        depth_before: outermost.depth_before,
        on_callers_connection: outermost.on_callers_connection,
        discarded,
    }
}

/// Rule A2 at the exit of a merged block whose child was cancelled with its work in the
/// level (a merged child): the level is the parent's, so the parent is marked as if the
/// child had been its own (it rolls back and reports `Error::Cancelled`, whatever the code in
/// between does with the rollback flag).
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) fn pass_cancel_up<K: Flavor>(state: &mut AliasState<K>, child: Cancelled) {
    // A savepoint child's work went with its savepoint: the merged block failed, and marks
    // its parent for rollback as any failed merged block does (X2), which the parent may clear.
    if !matches!(child, Cancelled::InLevel | Cancelled::InSql) {
        return;
    }
    if let Some(parent) = state.blocks.last_mut() {
        parent.child_cancelled = stronger(parent.child_cancelled, child);
        state.needs_rollback = true;
    }
}

/// The mark that says more: unknown SQL over work in the level over work in a savepoint.
#[cfg_attr(not(feature = "async"), allow(dead_code))]
fn stronger(a: Cancelled, b: Cancelled) -> Cancelled {
    let rank = |mark| match mark {
        Cancelled::No => 0,
        Cancelled::InBody => 1,
        Cancelled::InLevel => 2,
        Cancelled::InSql => 3,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// Rule A2 at a block's exit: whether a block nested in it was cancelled, and where.
#[cfg_attr(not(feature = "async"), allow(dead_code))]
#[inline]
pub(crate) fn child_cancelled<K: Flavor>(state: &AliasState<K>, entered: &Entered) -> Cancelled {
    match state.blocks.last() {
        Some(block) if block.token == entered.token => block.child_cancelled,
        _ => Cancelled::No,
    }
}

// --- The rollback flag: F1–F3 ----------------------------------------------------------------

/// Rules F1 and F2: `set_rollback(flag)` marks the innermost block with a savepoint (or the
/// outermost) to roll back on exit without an error, or cancels that; only inside a block.
pub(crate) fn set_rollback<K: Flavor>(state: &mut AliasState<K>, flag: bool) -> Result<(), Error> {
    if !state.in_atomic_block() {
        return Err(not_in_atomic_block(state.alias(), "set_rollback"));
    }
    state.needs_rollback = flag;
    Ok(())
}

/// Rule F1: `get_rollback()` only inside a block.
pub(crate) fn get_rollback<K: Flavor>(
    state: Option<&AliasState<K>>,
    alias: &str,
) -> Result<bool, Error> {
    match state {
        Some(state) if state.in_atomic_block() => Ok(state.needs_rollback),
        _ => Err(not_in_atomic_block(alias, "get_rollback")),
    }
}

/// Where ambient access to an alias gets its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lend {
    /// The open block's: take it out with [`AliasState::take_held`].
    FromBlock,
    /// None is held: check one out of the pool, in autocommit mode for the call, and mark it
    /// lent with [`lend_checked_out`].
    CheckOut,
}

/// Ambient access (`connection()`, manual savepoints): rule F3 while the block is marked for
/// rollback, and one borrower at a time (the connection is lent, or bound to an explicit-mode
/// block).
pub(crate) fn lend<K: Flavor>(state: &AliasState<K>) -> Result<Lend, Error> {
    match state.slot {
        Slot::Explicit(_) => Err(alias_bound_to_explicit_connection(state)),
        Slot::Lent(_) => Err(connection_in_use(state)),
        _ if state.needs_rollback && state.in_atomic_block() => {
            Err(Error::broken_transaction(state.alias()))
        }
        Slot::Held(_) => Ok(Lend::FromBlock),
        Slot::Empty => Ok(Lend::CheckOut),
    }
}

/// A connection checked out for ambient access outside any block is lent to the caller.
pub(crate) fn lend_checked_out<K: Flavor>(state: &mut AliasState<K>, id: ConnectionId) {
    state.slot = Slot::Lent(id);
}

/// What giving a lent connection back means.
pub(crate) struct GiveBack<K: Flavor = SyncFlavor> {
    /// It goes back to the open block that lent it.
    pub(crate) to_block: bool,
    /// The block that owned it ended meanwhile: roll it back to this depth first (then it
    /// goes to the pool).
    pub(crate) orphaned_at_depth: Option<u32>,
    /// Callbacks of blocks that committed on it, to run once it is back (C3).
    pub(crate) after_lend: Vec<K::Callback>,
}

/// The end of ambient access: the connection goes back to its block, or to the pool.
pub(crate) fn give_back<K: Flavor>(state: &mut AliasState<K>, from_block: bool) -> GiveBack<K> {
    let orphaned_at_depth = state.orphaned_at_depth.take();
    let to_block = from_block && orphaned_at_depth.is_none();
    if !to_block {
        state.slot = Slot::Empty;
    }
    GiveBack {
        to_block,
        orphaned_at_depth,
        after_lend: std::mem::take(&mut state.after_lend),
    }
}

// --- on_commit: C1, C2, C5 ---------------------------------------------------------------------

/// What becomes of a callback registered now.
pub(crate) enum OnCommit<K: Flavor = SyncFlavor> {
    /// Queued on the open block (C1).
    Queued,
    /// Outside any block: run it now (C1).
    RunNow(K::Callback),
    /// The commit is out of sight: refused, with the reason (the callback is handed back to
    /// be dropped outside the borrow).
    Refused(K::Callback, &'static str),
}

/// Rules C1 and C5: `on_commit` on `state`'s alias. Refused where the commit is out of sight:
/// inside a block that runs in the caller's own `conn.transaction(..)`, and inside a
/// `connection()` call outside any block, whose closure may have opened such a transaction on
/// the connection it holds (Django refuses on_commit in manual transaction management).
#[inline]
pub(crate) fn on_commit<K: Flavor>(
    state: &mut AliasState<K>,
    mut others: Others<'_, K>,
    callback: K::Callback,
) -> OnCommit<K> {
    match state.blocks.last() {
        Some(block) if block.commit_out_of_sight => {
            OnCommit::Refused(callback, INSIDE_CALLERS_TRANSACTION)
        }
        Some(block) => {
            let depth = block.depth;
            // C2/C3 across aliases: the work the callback follows is being done inside
            // another alias's block on this connection, deeper than this alias's innermost
            // one: the callback goes with that block (dropped by its rollback, handed on to
            // this alias's queue at its exit).
            let deeper = others
                .iter_mut()
                .filter(|other| {
                    other.block_connection == state.block_connection && other.block_depth() > depth
                })
                .max_by_key(|other| other.block_depth());
            match deeper {
                Some(other) if other.blocks.last().is_some_and(|b| b.commit_out_of_sight) => {
                    OnCommit::Refused(callback, INSIDE_CALLERS_TRANSACTION)
                }
                Some(other) => {
                    other.callbacks.push(callback);
                    OnCommit::Queued
                }
                None => {
                    state.callbacks.push(callback);
                    OnCommit::Queued
                }
            }
        }
        None if matches!(state.slot, Slot::Lent(_)) => {
            OnCommit::Refused(callback, INSIDE_LENT_CONNECTION)
        }
        None => OnCommit::RunNow(callback),
    }
}

const INSIDE_CALLERS_TRANSACTION: &str = "the innermost atomic block runs inside a \
     transaction that diesel-atomic did not open, the caller's own `conn.transaction(..)`, whose \
     commit or rollback it cannot see; open that transaction with an atomic block instead \
     (`#[atomic]`, `transaction::Atomic::run_on`), so the callback runs after it commits";

const INSIDE_LENT_CONNECTION: &str = "inside a `connection()` call outside any atomic block, \
     the closure holds the connection and may have opened a transaction of diesel's own \
     (`conn.transaction(..)`) that diesel-atomic cannot see; open an atomic block around the \
     work (`#[atomic]`, `transaction::atomic`), or register the callback after `connection()` \
     returns";

/// Rule T2: the callbacks registered since `mark` that are still queued, taken out.
pub(crate) fn take_callbacks_since<K: Flavor>(
    state: &mut AliasState<K>,
    mark: usize,
) -> Vec<K::Callback> {
    split_off_callbacks(state, mark)
}

// --- Per-request transactions: Q1–Q3 -----------------------------------------------------------

/// One alias's request transaction.
#[derive(Debug)]
pub(crate) enum RequestTransaction {
    /// Not used by the view yet.
    Pending,
    /// Its BEGIN is under way (the block's own entry must not begin it again).
    Beginning,
    Begun(Entered),
}

/// The running request on a thread: the `atomic_requests` aliases in registration order, and
/// the aliases the running `#[non_atomic_requests]` functions exempt (a stack).
#[derive(Debug, Default)]
pub(crate) struct RequestScope {
    pub(crate) aliases: Vec<(String, RequestTransaction)>,
    pub(crate) exempt: Vec<&'static str>,
}

impl RequestScope {
    pub(crate) const fn new() -> Self {
        RequestScope {
            aliases: Vec::new(),
            exempt: Vec::new(),
        }
    }

    /// Rule Q1 (laziness): whether the view's use of `alias` must begin its request
    /// transaction now; marks it beginning. Q2: never for an exempt alias.
    pub(crate) fn begin_due(&mut self, alias: &str) -> bool {
        if self.exempt.contains(&alias) {
            return false;
        }
        match self.aliases.iter_mut().find(|(name, _)| name == alias) {
            Some((_, transaction @ RequestTransaction::Pending)) => {
                *transaction = RequestTransaction::Beginning;
                true
            }
            _ => false,
        }
    }

    /// After the BEGIN of `alias`'s request transaction: begun, or pending again when it
    /// failed (the next use tries again).
    pub(crate) fn begun(&mut self, alias: &str, entered: Option<Entered>) {
        if let Some((_, transaction)) = self.aliases.iter_mut().find(|(name, _)| name == alias) {
            *transaction = match entered {
                Some(entered) => RequestTransaction::Begun(entered),
                None => RequestTransaction::Pending,
            };
        }
    }

    /// Rule Q1: a request transaction due but not begun already counts as an open block
    /// (`in_atomic_block`, `get_rollback`), unless the alias is exempt (Q2).
    pub(crate) fn pending(&self, alias: &str) -> bool {
        !self.exempt.contains(&alias)
            && self.aliases.iter().any(|(name, transaction)| {
                name == alias && matches!(transaction, RequestTransaction::Pending)
            })
    }

    /// Rule Q2: whether exempting `alias` comes too late (its transaction has begun: the view
    /// runs inside it).
    pub(crate) fn exempt_too_late(&self, alias: &str) -> bool {
        self.aliases.iter().any(|(name, transaction)| {
            name == alias && !matches!(transaction, RequestTransaction::Pending)
        })
    }

    /// The view returned (or unwound): the exemptions of its functions are over.
    pub(crate) fn view_ended(&mut self) {
        self.exempt.clear();
    }

    /// Rule Q3: the next alias to end, in registration order, with its block if its
    /// transaction began. The aliases after it stay in the request: callbacks of this one may
    /// still begin them.
    pub(crate) fn end_next(&mut self) -> Option<(String, Option<Entered>)> {
        if self.aliases.is_empty() {
            return None;
        }
        let (alias, transaction) = self.aliases.remove(0);
        let entered = match transaction {
            RequestTransaction::Begun(entered) => Some(entered),
            RequestTransaction::Pending | RequestTransaction::Beginning => None,
        };
        Some((alias, entered))
    }
}

/// Rule Q3 as Django nests it (one atomic wrapper per alias, the first-registered innermost):
/// the aliases leave in order, each committing only while every earlier one committed and ran
/// its callbacks without a panic.
#[derive(Debug)]
pub(crate) struct RequestEnd {
    commit: bool,
}

/// How one alias's request transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AliasEnd {
    Committed,
    /// Its COMMIT failed: the aliases after it roll back, and the request returns the error.
    CommitFailed,
    /// Committed, then a plain callback panicked: the aliases after it roll back, and the
    /// panic goes on.
    CallbackPanicked,
    RolledBack,
}

impl RequestEnd {
    /// The view's outcome: only `Ok` commits.
    pub(crate) fn new(view_succeeded: bool) -> Self {
        RequestEnd {
            commit: view_succeeded,
        }
    }

    /// Whether the next alias commits.
    pub(crate) fn commits(&self) -> bool {
        self.commit
    }

    /// Records how an alias ended.
    pub(crate) fn ended(&mut self, end: AliasEnd) {
        if matches!(end, AliasEnd::CommitFailed | AliasEnd::CallbackPanicked) {
            self.commit = false;
        }
    }
}

// --- Retry: which failed attempt is rerun (P3 and the retry contract) --------------------------

/// What an attempt's failure looked like, for [`retry_reason`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttemptFailure {
    /// The body panicked (never retried).
    pub(crate) panicked: bool,
    /// The transient code of the body's error (`adapter::classify::transient_code`).
    pub(crate) body_transient: Option<&'static str>,
    /// The body's error is a unique violation.
    pub(crate) body_unique_violation: bool,
    /// The transient code of the exit's error (a failed COMMIT), when the body succeeded.
    pub(crate) commit_transient: Option<&'static str>,
    /// `get_or_create` lost a race its snapshot hides during the attempt.
    pub(crate) hidden_conflict: bool,
}

/// Whether a failed attempt is worth rerunning the whole transaction for, named as the
/// database names the failure: a transient failure of the body or of its COMMIT (a broken
/// connection's COMMIT is not transient: its outcome is unknown), or a race the snapshot hid,
/// counted only when the block failed with the unique violation such a race ends in.
pub(crate) fn retry_reason(failure: AttemptFailure) -> Option<&'static str> {
    if failure.panicked {
        return None;
    }
    failure
        .body_transient
        .or(failure.commit_transient)
        .or((failure.hidden_conflict && failure.body_unique_violation)
            .then_some("snapshot conflict"))
}

// --- Replicas: P1, P2 --------------------------------------------------------------------------

/// Where a read goes (or the BEGIN of a `replica = true` block), for [`route_read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReadRoute {
    /// The primary: the alias's connection as `connection()` gets it.
    Primary(OnPrimary),
    /// Replica `index`, once it has replayed what `wait` names (`None`: nothing to wait for).
    Replica { index: usize, wait: Option<WaitFor> },
}

/// Why a read goes to the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnPrimary {
    /// P1: a block of the alias is open (or its connection is lent or bound): a transaction
    /// reads its own writes, on its own connection.
    InBlock,
    /// The alias has no replica.
    NoReplica,
    /// P2 under `ReadYourWrites::Primary`: this scope committed on the alias.
    CommittedInScope,
}

/// What a read waits for on its replica before it reads there (rule P2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WaitFor {
    /// The thread's last commit on the alias.
    pub(crate) position: Position,
    /// How long at most; then the read goes to the primary.
    pub(crate) timeout: Duration,
}

/// Rules P1 and P2: where a read on `state`'s alias goes, with `replicas` replicas under
/// `policy`. `turn` is the round robin's number (replica `turn % replicas`); `scope_start`
/// the commit serial at which the read scope (the request, else the thread) began.
///
/// Inside a block the block's connection (P1). Outside, a replica, except after this thread
/// committed on the alias: `Wait` first waits until that replica has replayed the commit,
/// unless it was seen to already; `Primary` reads the primary if the commit was made in this
/// scope; `Off` reads the replica at once.
pub(crate) fn route_read<K: Flavor>(
    state: &AliasState<K>,
    replicas: usize,
    policy: ReadYourWrites,
    scope_start: u64,
    turn: usize,
) -> ReadRoute {
    if state.in_atomic_block() || state.slot != Slot::Empty {
        return ReadRoute::Primary(OnPrimary::InBlock);
    }
    if replicas == 0 {
        return ReadRoute::Primary(OnPrimary::NoReplica);
    }
    let index = turn % replicas;
    let last = &state.last_commit;
    let wait = match policy {
        ReadYourWrites::Off => None,
        ReadYourWrites::Primary if last.serial > scope_start => {
            return ReadRoute::Primary(OnPrimary::CommittedInScope);
        }
        ReadYourWrites::Primary => None,
        ReadYourWrites::Wait(timeout) => match &last.position {
            Some(position) if !replayed_on(last, index) => Some(WaitFor {
                position: position.clone(),
                timeout,
            }),
            _ => None,
        },
    };
    ReadRoute::Replica { index, wait }
}

/// Whether replica `index` was seen to have replayed the last commit.
fn replayed_on(last: &LastCommit, index: usize) -> bool {
    index < 64 && last.replayed_on & (1 << index) != 0
}

/// What a COMMIT on an alias leaves for later reads (rule P2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Remember {
    /// Nothing: no replica, or the policy is `Off`.
    Nothing,
    /// That the thread committed (`Primary`).
    Commit,
    /// That it committed, and where in the primary's log (`Wait`: one query after COMMIT).
    Position,
}

/// Rule P2: what a commit on an alias with `replicas` replicas under `policy` must remember.
/// Aliases without replicas remember nothing and send no query.
pub(crate) fn what_to_remember(replicas: usize, policy: ReadYourWrites) -> Remember {
    match policy {
        _ if replicas == 0 => Remember::Nothing,
        ReadYourWrites::Off => Remember::Nothing,
        ReadYourWrites::Primary => Remember::Commit,
        ReadYourWrites::Wait(_) => Remember::Position,
    }
}

/// Rule P2 at an outermost block's exit: whether its COMMIT may have written on the primary,
/// so that later reads must see it: the block `entered` is the outermost one, the runtime
/// began its transaction (not the caller's own, not diesel's test transaction), and not
/// read-only (a `replica = true` block is read-only too). Asked before [`plan_leave`].
#[inline]
pub(crate) fn commit_to_remember<K: Flavor>(state: &AliasState<K>, entered: &Entered) -> bool {
    match state.blocks.as_slice() {
        [
            Block {
                token,
                kind: BlockKind::Outermost(outermost),
                ..
            },
        ] => *token == entered.token && outermost.foreign == Foreign::None && !outermost.read_only,
        _ => false,
    }
}

/// Rule P2 at the end of a `connection()` call: a connection checked out for the call, outside
/// every block of the alias, ran in autocommit mode, where each statement the closure sent
/// committed on its own; the call counts as a commit to remember. A connection lent by a
/// block commits with its block, and one lent to a `read` is not written to.
#[inline]
pub(crate) fn lend_to_remember(from_block: bool, for_read: bool) -> bool {
    !from_block && !for_read
}

/// Rule P2: the thread committed on the alias (its commit serial `serial`; `position` where
/// the policy waits for it). No replica has replayed it yet.
pub(crate) fn remember_commit<K: Flavor>(
    state: &mut AliasState<K>,
    serial: u64,
    position: Option<Position>,
) {
    state.last_commit = LastCommit {
        serial,
        position,
        replayed_on: 0,
    };
}

/// Rule P2: the position of a commit remembered as [`Position::Unknown`] is now known to be
/// at most `position` (the primary's current one; `None`: nothing to wait for). Once known,
/// other replicas wait for it without asking the primary again.
pub(crate) fn position_resolved<K: Flavor>(state: &mut AliasState<K>, position: Option<Box<str>>) {
    let last = &mut state.last_commit;
    if last.position == Some(Position::Unknown) {
        last.position = position.map(Position::Known);
        last.replayed_on = 0;
    }
}

/// Rule P2: replica `index` has replayed `position`, so reads there do not wait for it again
/// (unless a later commit replaced it meanwhile).
pub(crate) fn replayed<K: Flavor>(state: &mut AliasState<K>, index: usize, position: &Position) {
    let last = &mut state.last_commit;
    if last.position.as_ref() == Some(position) && index < 64 {
        last.replayed_on |= 1 << index;
    }
}

// --- Errors the rules return ------------------------------------------------------------------

fn durable_nested<K: Flavor>(state: &AliasState<K>) -> Error {
    Error::DurableNested {
        alias: state.alias().to_owned(),
    }
}

fn connection_in_use<K: Flavor>(state: &AliasState<K>) -> Error {
    Error::ConnectionInUse {
        alias: state.alias().to_owned(),
    }
}

fn alias_bound_to_explicit_connection<K: Flavor>(state: &AliasState<K>) -> Error {
    Error::AliasBoundToExplicitConnection {
        alias: state.alias().to_owned(),
    }
}

fn begin_options_nested(alias: &str, begin: &BeginOptions) -> Error {
    Error::BeginOptionsNested {
        alias: alias.to_owned(),
        options: begin.describe(),
    }
}

fn not_in_atomic_block(alias: &str, operation: &'static str) -> Error {
    Error::NotInAtomicBlock {
        alias: alias.to_owned(),
        operation,
    }
}

#[cfg(test)]
mod tests;
