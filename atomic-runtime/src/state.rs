//! Per-thread, per-alias transaction state (rule S1).
//!
//! Never hold the borrow across user code or SQL: take what you need, release, act, borrow
//! again. The engine in `atomic` follows that shape everywhere.

use std::cell::RefCell;

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
    },
    /// Nested with a savepoint (rule E3) that diesel created at `depth_before`.
    Savepoint { depth_before: u32 },
    /// Nested without a savepoint: merged into its parent.
    Merged,
}

pub(crate) struct Block {
    /// Identifies the block at its exit, so a block ended from elsewhere is noticed.
    pub(crate) token: u64,
    pub(crate) kind: BlockKind,
    /// Length of the on_commit queue when the block began: rolling back its savepoint drops
    /// every callback after this mark (rule C2), in O(dropped).
    pub(crate) callbacks_mark: usize,
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
    /// Source of block tokens; unique within this alias's stack is all they need.
    next_token: u64,
    /// Set when work in the current transaction failed because of a row its snapshot cannot
    /// see (a lost `get_or_create` race under REPEATABLE READ): a retrying block reruns then.
    pub(crate) hidden_conflict: bool,
    /// The isolation level the outermost block's BEGIN asked for (`None`: the connection's
    /// default). Meaningful while `blocks` is not empty. `get_or_create` reads it before asking
    /// the server, because MariaDB's `@@tx_isolation` keeps showing the session's level inside
    /// a transaction begun after a one-shot `SET TRANSACTION ISOLATION LEVEL`.
    pub(crate) begun_isolation: Option<Isolation>,
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
            next_token: 1,
            hidden_conflict: false,
            begun_isolation: None,
        }
    }

    pub(crate) fn next_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
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

thread_local! {
    static STATES: RefCell<Vec<AliasState>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the alias's state, creating it on first use. `f` must not call user code.
pub(crate) fn with<R>(alias: &str, f: impl FnOnce(&mut AliasState) -> R) -> R {
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let index = match states.iter().position(|state| &*state.alias == alias) {
            Some(index) => index,
            None => {
                let index = states.len();
                states.push(AliasState::new(alias, index));
                index
            }
        };
        f(&mut states[index])
    })
}

/// Runs `f` on the state at `index` (an [`AliasState::index`] of this thread), which is
/// `alias`'s: the hot path's second borrow, without the name lookup.
#[inline]
pub(crate) fn with_at<R>(index: usize, alias: &str, f: impl FnOnce(&mut AliasState) -> R) -> R {
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let state = &mut states[index];
        debug_assert_eq!(&*state.alias, alias);
        f(state)
    })
}

/// Like `with`, for drop paths: does nothing once the thread's state is being torn down.
pub(crate) fn try_with<R>(alias: &str, f: impl FnOnce(&mut AliasState) -> R) -> Option<R> {
    STATES
        .try_with(|states| {
            let mut states = states.try_borrow_mut().ok()?;
            let state = states.iter_mut().find(|state| &*state.alias == alias)?;
            Some(f(state))
        })
        .ok()
        .flatten()
}

/// Reads the alias's state without creating it.
pub(crate) fn peek<R>(alias: &str, f: impl FnOnce(Option<&AliasState>) -> R) -> R {
    STATES.with(|states| {
        let states = states.borrow();
        f(states.iter().find(|state| &*state.alias == alias))
    })
}

/// The alias whose open block runs on (or whose `connection()` call lent) the connection at
/// `address`, if any.
pub(crate) fn alias_of_connection(address: usize) -> Option<String> {
    STATES.with(|states| {
        let states = states.borrow();
        states
            .iter()
            .find(|state| {
                (state.in_atomic_block() && state.block_connection == address)
                    || state.slot.address() == Some(address)
            })
            .map(|state| state.alias.to_string())
    })
}
