//! Per-thread, per-alias transaction state (rule S1).
//!
//! Never hold the borrow across user code or SQL: take what you need, release, act, borrow
//! again. The engine in `atomic` follows that shape everywhere.

use std::cell::{Cell, RefCell};

use crate::begin::Isolation;
use crate::connection::PooledConn;

/// Where the alias's connection is right now.
pub(crate) enum Slot {
    /// No block and no `connection()` call: the next ambient use checks one out.
    Empty,
    /// An ambient block owns the connection.
    Held(Box<dyn PooledConn>),
    /// Taken out while a `connection()` closure (or our own SQL) runs.
    Lent { address: usize },
    /// An explicit-mode block runs on the caller's connection.
    Explicit { address: usize },
}

impl Slot {
    pub(crate) fn address(&self) -> Option<usize> {
        match self {
            Slot::Empty => None,
            Slot::Held(conn) => Some(conn.inner_address()),
            Slot::Lent { address } | Slot::Explicit { address } => Some(*address),
        }
    }
}

/// A transaction the runtime found open when its outermost block began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Foreign {
    /// None: the outermost block really begins and commits the transaction.
    None,
    /// diesel's `begin_test_transaction` (or r2d2's `TestCustomizer`): never commits.
    Test,
    /// The caller's own `conn.transaction(..)`: it commits later, out of our sight.
    User,
}

/// What one open block is, from the outside in.
pub(crate) enum BlockKind {
    Outermost {
        /// Opened by `testing::TestTransaction` (ignored by the durable check, rule T1).
        from_test: bool,
        /// The connection is the caller's (`Slot::Explicit`), not the alias's pooled one.
        explicit: bool,
        /// The `Slot::Lent` marker an explicit-mode block replaced, restored at its exit.
        restore_lent: Option<usize>,
        /// diesel's depth before our BEGIN (0 unless `foreign` says otherwise).
        depth_before: u32,
        foreign: Foreign,
        /// Inside the caller's `conn.transaction(..)` on the connection of another alias's open
        /// block, whose COMMIT makes this block's work durable: the callbacks join that alias's
        /// queue at this block's exit.
        callbacks_join: Option<Box<str>>,
    },
    /// Nested with a savepoint (rule E3) that diesel created at `depth_before`.
    Savepoint { depth_before: u32 },
    /// Nested without a savepoint: merged into its parent.
    Merged,
}

pub(crate) struct Block {
    /// Identifies the block at its exit, so a block ended from elsewhere is noticed. Unique
    /// on the thread, across aliases.
    pub(crate) token: u64,
    pub(crate) kind: BlockKind,
    /// Length of the on_commit queue when the block began: rolling back its savepoint drops
    /// every callback after this mark (rule C2), in O(dropped).
    pub(crate) callbacks_mark: usize,
    /// diesel's transaction depth inside the block (a merged block shares its parent's).
    pub(crate) depth: u32,
    /// The block runs inside a transaction level the runtime did not open and cannot watch
    /// (the caller's own `conn.transaction(..)`): whether its work commits is out of sight, so
    /// `on_commit` is refused while it is the innermost block.
    pub(crate) commit_out_of_sight: bool,
}

/// A queued on_commit callback.
pub(crate) struct Callback {
    pub(crate) func: Box<dyn FnOnce()>,
    pub(crate) robust: bool,
    pub(crate) name: &'static str,
}

pub(crate) struct AliasState {
    alias: Box<str>,
    /// Where this state sits in the thread's list: states are never removed, so a block can
    /// find its alias's state again without comparing names.
    pub(crate) index: usize,
    /// The open blocks, outermost first. Non-empty ⇔ `in_atomic_block`.
    pub(crate) blocks: Vec<Block>,
    pub(crate) needs_rollback: bool,
    /// The on_commit queue, in registration order.
    pub(crate) callbacks: Vec<Callback>,
    pub(crate) slot: Slot,
    /// Address of the connection the open blocks run on (meaningful while `blocks` is not empty).
    pub(crate) block_connection: usize,
    /// Set when work in the current transaction failed because of a row its snapshot cannot
    /// see (a lost `get_or_create` race under REPEATABLE READ): a retrying block reruns then.
    pub(crate) hidden_conflict: bool,
    /// The isolation level the outermost block's BEGIN asked for (`None`: the connection's
    /// default). Meaningful while `blocks` is not empty. `get_or_create` reads it before asking
    /// the server, because MariaDB's `@@tx_isolation` keeps showing the session's level inside
    /// a transaction begun after a one-shot `SET TRANSACTION ISOLATION LEVEL`.
    pub(crate) begun_isolation: Option<Isolation>,
    /// Callbacks of blocks that committed on the connection a `connection()` call of this
    /// alias lent out: they run when that call gives the connection back (rule C3: after the
    /// state is reset, so they may use the alias).
    pub(crate) after_lend: Vec<Callback>,
    /// The block that owned the lent connection ended while it was lent (a `TestTransaction`
    /// dropped inside the `connection()` closure): when the connection comes back it is rolled
    /// back to this depth and returned to the pool.
    pub(crate) orphaned_at_depth: Option<u32>,
}

impl AliasState {
    fn new(alias: &str, index: usize) -> Self {
        AliasState {
            alias: alias.into(),
            index,
            blocks: Vec::new(),
            needs_rollback: false,
            callbacks: Vec::new(),
            slot: Slot::Empty,
            block_connection: 0,
            hidden_conflict: false,
            begun_isolation: None,
            after_lend: Vec::new(),
            orphaned_at_depth: None,
        }
    }

    /// Whether nothing on this thread refers to the state any more, so its entry may be
    /// reused for another alias.
    fn is_idle(&self) -> bool {
        self.blocks.is_empty()
            && matches!(self.slot, Slot::Empty)
            && self.callbacks.is_empty()
            && self.after_lend.is_empty()
            && self.orphaned_at_depth.is_none()
    }

    /// diesel's depth inside the innermost open block (0 outside blocks).
    pub(crate) fn block_depth(&self) -> u32 {
        self.blocks.last().map_or(0, |block| block.depth)
    }

    pub(crate) fn in_atomic_block(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// Rule E1: durable is refused inside any block but a lone TestTransaction block.
    pub(crate) fn refuses_durable(&self) -> bool {
        match self.blocks.as_slice() {
            [] => false,
            [only] => !matches!(
                only.kind,
                BlockKind::Outermost {
                    from_test: true,
                    ..
                }
            ),
            _ => true,
        }
    }
}

/// The thread's alias states.
struct States {
    list: Vec<AliasState>,
}

/// How many alias states a thread keeps before it reuses idle ones: an application with a
/// few aliases never pays for reuse, and one with an alias per tenant stays bounded.
const KEPT_STATES: usize = 32;

thread_local! {
    static STATES: RefCell<States> = const { RefCell::new(States { list: Vec::new() }) };
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
}

/// A block token unique on this thread: block tokens of all aliases come from here, so a
/// token never matches a block of another alias whose state reused an entry.
#[inline]
pub(crate) fn next_token() -> u64 {
    NEXT_TOKEN.with(|next| {
        let token = next.get();
        next.set(token + 1);
        token
    })
}

/// Runs `f` on the alias's state, creating it on first use. `f` must not call user code, nor
/// drop values whose `Drop` might (callbacks): move those out and drop them after.
pub(crate) fn with<R>(alias: &str, f: impl FnOnce(&mut AliasState) -> R) -> R {
    STATES.with(|states| {
        let states = &mut states.borrow_mut().list;
        let index = match states.iter().position(|state| &*state.alias == alias) {
            Some(index) => index,
            None => create(states, alias),
        };
        f(&mut states[index])
    })
}

/// Makes a state for `alias`: a new entry, or, once the thread has many, an idle entry of
/// another alias (an idle state holds nothing, and no open block refers to its index).
#[cold]
fn create(states: &mut Vec<AliasState>, alias: &str) -> usize {
    if states.len() >= KEPT_STATES
        && let Some(index) = states.iter().position(AliasState::is_idle)
    {
        states[index] = AliasState::new(alias, index);
        return index;
    }
    let index = states.len();
    states.push(AliasState::new(alias, index));
    index
}

/// Runs `f` on the state at `index` (an [`AliasState::index`] of this thread), which was
/// `alias`'s when the caller's block began: the hot path's second borrow, without the name
/// lookup. If the block has ended elsewhere since, the entry may hold another alias now; the
/// caller's block token (unique on the thread) tells, so `f` must check it first.
#[inline]
pub(crate) fn with_at<R>(index: usize, f: impl FnOnce(&mut AliasState) -> R) -> R {
    STATES.with(|states| f(&mut states.borrow_mut().list[index]))
}

/// Like `with`, for drop paths: does nothing once the thread's state is being torn down.
pub(crate) fn try_with<R>(alias: &str, f: impl FnOnce(&mut AliasState) -> R) -> Option<R> {
    STATES
        .try_with(|states| {
            let mut states = states.try_borrow_mut().ok()?;
            let state = states
                .list
                .iter_mut()
                .find(|state| &*state.alias == alias)?;
            Some(f(state))
        })
        .ok()
        .flatten()
}

/// Reads the alias's state without creating it.
pub(crate) fn peek<R>(alias: &str, f: impl FnOnce(Option<&AliasState>) -> R) -> R {
    STATES.with(|states| {
        let states = states.borrow();
        f(states.list.iter().find(|state| &*state.alias == alias))
    })
}

/// The alias other than `except` whose open block runs on the connection at `address`, and
/// diesel's depth inside that alias's innermost block.
pub(crate) fn block_on_connection(address: usize, except: &str) -> Option<(String, u32)> {
    STATES.with(|states| {
        states
            .borrow()
            .list
            .iter()
            .find(|state| {
                state.in_atomic_block()
                    && state.block_connection == address
                    && &*state.alias != except
            })
            .map(|state| (state.alias.to_string(), state.block_depth()))
    })
}

/// The alias whose `connection()` call outside any block lent the connection at `address`.
pub(crate) fn lender_of(address: usize) -> Option<String> {
    STATES.with(|states| {
        states
            .borrow()
            .list
            .iter()
            .find(|state| {
                !state.in_atomic_block()
                    && matches!(state.slot, Slot::Lent { address: lent } if lent == address)
            })
            .map(|state| state.alias.to_string())
    })
}

/// The alias whose open block runs on (or whose `connection()` call lent) the connection at
/// `address`, if any.
pub(crate) fn alias_of_connection(address: usize) -> Option<String> {
    STATES.with(|states| {
        let states = states.borrow();
        states
            .list
            .iter()
            .find(|state| {
                (state.in_atomic_block() && state.block_connection == address)
                    || state.slot.address() == Some(address)
            })
            .map(|state| state.alias.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states_on_this_thread() -> usize {
        STATES.with(|states| states.borrow().list.len())
    }

    #[test]
    fn idle_states_of_many_aliases_are_reused() {
        for tenant in 0..10_000 {
            with(&format!("tenant-{tenant}"), |_| ());
        }
        assert_eq!(states_on_this_thread(), KEPT_STATES);
        assert!(peek("tenant-9999", |st| st.is_some()));
    }

    #[test]
    fn a_state_that_holds_something_is_never_reused() {
        with("busy", |st| st.slot = Slot::Lent { address: 1 });
        for tenant in 0..100 {
            with(&format!("tenant-{tenant}"), |_| ());
        }
        assert!(peek("busy", |st| st
            .is_some_and(|st| matches!(st.slot, Slot::Lent { .. }))));
        with("busy", |st| st.slot = Slot::Empty);
    }
}
