//! Per-thread, per-alias transaction state (rule S1): the data the rules decide on, the slot
//! transitions that keep it consistent, and the thread's table of states.
//!
//! Never hold the table's borrow across user code or SQL: take what you need, release, act,
//! borrow again. Values whose `Drop` might run user code (callbacks, pooled connections) are
//! moved out under the borrow and dropped after it.

use std::cell::{Cell, RefCell};

use crate::adapter::{ConnectionId, PooledConn};
use crate::options::Isolation;

/// Where the alias's connection is right now. Plain data: the pooled connection object itself
/// is in [`AliasState::pooled`] while the slot is `Held`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// No block and no `connection()` call: the next ambient use checks one out.
    Empty,
    /// An ambient block owns this pooled connection.
    Held(ConnectionId),
    /// Taken out while a `connection()` closure (or the engine's own SQL) uses it.
    Lent(ConnectionId),
    /// An explicit-mode block runs on the caller's connection.
    Explicit(ConnectionId),
}

impl Slot {
    pub(crate) fn connection(self) -> Option<ConnectionId> {
        match self {
            Slot::Empty => None,
            Slot::Held(id) | Slot::Lent(id) | Slot::Explicit(id) => Some(id),
        }
    }
}

/// A transaction the runtime found open on the connection when its outermost block began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Foreign {
    /// None: the outermost block really begins and commits the transaction.
    None,
    /// diesel's `begin_test_transaction` (or r2d2's `TestCustomizer`): never commits.
    DieselTestTransaction,
    /// The caller's own `conn.transaction(..)`: it commits later, out of our sight.
    CallersTransaction,
}

/// The outermost block of an alias.
pub(crate) struct Outermost {
    /// Opened by `testing::TestTransaction` (ignored by the durable check, rule T1).
    pub(crate) opened_by_test_transaction: bool,
    /// The block runs on the caller's connection (`Slot::Explicit`), not on a pooled one.
    pub(crate) on_callers_connection: bool,
    /// The `Slot::Lent` an explicit-mode block replaced (a `connection()` call of this alias
    /// is running around it), restored at its exit.
    pub(crate) restore_lent: Option<ConnectionId>,
    /// diesel's depth before our BEGIN (0 unless `foreign` says otherwise).
    pub(crate) depth_before: u32,
    pub(crate) foreign: Foreign,
    /// The transaction was begun read-only (`read_only`, `replica`): its COMMIT wrote
    /// nothing that a later read must wait for (rule P2).
    pub(crate) read_only: bool,
}

/// What one open block is, from the outside in.
pub(crate) enum BlockKind {
    Outermost(Outermost),
    /// Nested with a savepoint (rule E3) that diesel created at `depth_before`.
    Savepoint {
        depth_before: u32,
    },
    /// Nested without a savepoint: merged into its parent.
    Merged,
}

/// Identifies a block at its exit, so a block ended from elsewhere is noticed. Unique on the
/// thread, across aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockToken(u64);

impl BlockToken {
    /// A token no other block of this thread has.
    #[inline]
    pub(crate) fn next() -> BlockToken {
        NEXT_TOKEN.with(|next| {
            let token = next.get();
            next.set(token + 1);
            BlockToken(token)
        })
    }
}

/// Each thread numbers its block tokens from a base of its own, so tokens are unique across
/// threads too: an async task's blocks may begin on several worker threads.
fn token_base() -> u64 {
    static THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    (THREADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 40) + 1
}

pub(crate) struct Block {
    pub(crate) token: BlockToken,
    pub(crate) kind: BlockKind,
    /// Length of the on_commit queue when the block began: rolling back its savepoint drops
    /// every callback after this mark (rule C2), in O(dropped).
    pub(crate) callbacks_mark: usize,
    /// diesel's transaction depth inside the block (a merged block shares its parent's).
    pub(crate) depth: u32,
    /// A block nested in this one was cancelled (its future dropped, rule A2): this block
    /// rolls back and reports `Error::Cancelled`.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) child_cancelled: Cancelled,
    /// The block runs inside a transaction level the runtime did not open and cannot watch
    /// (the caller's own `conn.transaction(..)`): whether its work commits is out of sight, so
    /// `on_commit` is refused while it is the innermost block.
    pub(crate) commit_out_of_sight: bool,
}

/// Whether, and where, a nested block's future was dropped (rule A2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(not(feature = "async"), allow(dead_code))]
pub(crate) enum Cancelled {
    #[default]
    No,
    /// While its body ran, and it had a savepoint: its work is in that savepoint (still open
    /// on the connection, rolled back before the parent's next statement).
    InBody,
    /// While its body ran, and it had no savepoint: its work is in this block's level, so
    /// the block that owns that level (a merged block passes the mark up) must roll back.
    InLevel,
    /// While its own SQL was awaited: what the server did is unknown, so the connection is
    /// marked broken rather than used again.
    InSql,
}

/// A queued on_commit callback.
pub(crate) struct Callback {
    pub(crate) func: Box<dyn FnOnce()>,
    pub(crate) robust: bool,
    pub(crate) name: &'static str,
}

impl Callback {
    pub(crate) fn new<F: FnOnce() + 'static>(func: F, robust: bool) -> Callback {
        Callback {
            func: Box::new(func),
            robust,
            name: std::any::type_name::<F>(),
        }
    }
}

/// Where an open block was entered: what its exit needs to find it again.
#[derive(Debug)]
#[must_use = "a block that is entered must be left (engine::block::leave)"]
pub(crate) struct Entered {
    pub(crate) token: BlockToken,
    /// The alias's state index (`with_at`).
    pub(crate) index: usize,
}

/// What differs between the sync runtime's state (per thread) and the async one's (per task):
/// the callback type (an async callback must be `Send`, and may be a future) and the pooled
/// connection type. The rules are written once over both.
pub(crate) trait Flavor: 'static {
    type Callback;
    type Pooled: ?Sized + Pooled;
    /// Whether this runtime's executor checks a `replica = true` block out of a replica (rule
    /// P1). Where it does not, such a block is refused rather than run on the primary
    /// unnoticed.
    const ROUTES_REPLICA_BLOCKS: bool = false;
}

/// A pooled connection as the state sees it.
pub(crate) trait Pooled {
    fn id(&self) -> ConnectionId;
}

impl<P: PooledConn + ?Sized> Pooled for P {
    fn id(&self) -> ConnectionId {
        PooledConn::id(self)
    }
}

/// The sync runtime's state: per thread, `FnOnce()` callbacks, r2d2 connections.
pub(crate) struct SyncFlavor;

impl Flavor for SyncFlavor {
    type Callback = Callback;
    type Pooled = dyn PooledConn;
    const ROUTES_REPLICA_BLOCKS: bool = true;
}

/// This thread's last commit on an alias, for reads on its replicas (rule P2, read your own
/// writes). Kept only for aliases with replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LastCommit {
    /// The thread's commit serial ([`next_commit_serial`]) at that commit; 0 for none.
    pub(crate) serial: u64,
    /// Where the commit is in the primary's log, while a read must wait for a replica to
    /// replay it (policy `Wait`).
    pub(crate) position: Option<Position>,
    /// The replicas, one bit per index, seen to have replayed `position`: reads there need
    /// not wait for it again. Replicas past the 64th are asked every time.
    pub(crate) replayed_on: u64,
}

impl LastCommit {
    pub(crate) fn is_empty(&self) -> bool {
        *self == LastCommit::default()
    }
}

/// A commit's place in the primary's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Position {
    /// PostgreSQL's WAL position, MariaDB's GTID.
    Known(Box<str>),
    /// Not read (the commit was on the caller's connection, or reading it failed): the
    /// primary's current position, read before the wait, is at or past it.
    Unknown,
}

pub(crate) struct AliasState<K: Flavor = SyncFlavor> {
    alias: Box<str>,
    /// Where this state sits in the thread's table, so that a block can find its alias's state
    /// again without comparing names (an entry is reused only once idle: see `create`).
    pub(crate) index: usize,
    /// The open blocks, outermost first. Non-empty ⇔ `in_atomic_block`.
    pub(crate) blocks: Vec<Block>,
    pub(crate) needs_rollback: bool,
    /// The on_commit queue, in registration order.
    pub(crate) callbacks: Vec<K::Callback>,
    pub(crate) slot: Slot,
    /// The pooled connection while the slot is `Held`.
    pub(crate) pooled: Option<Box<K::Pooled>>,
    /// The connection the open blocks run on (`Some` while `blocks` is not empty).
    pub(crate) block_connection: Option<ConnectionId>,
    /// Set when work in the current transaction failed because of a row its snapshot cannot
    /// see (a lost `get_or_create` race under REPEATABLE READ): a retrying block reruns then.
    pub(crate) hidden_conflict: bool,
    /// The isolation level the outermost block's BEGIN asked for (`None`: the connection's
    /// default). Meaningful while `blocks` is not empty. `get_or_create` reads it before asking
    /// the server, because MariaDB's `@@tx_isolation` keeps showing the session's level inside
    /// a transaction begun after a one-shot `SET TRANSACTION ISOLATION LEVEL`.
    pub(crate) begun_isolation: Option<Isolation>,
    /// Inside the caller's transaction on the connection of another alias's open block, whose
    /// COMMIT makes this alias's work durable: the outermost block's callbacks join that
    /// alias's queue at its exit. Set by each outermost block; meaningful while it is open.
    pub(crate) callbacks_join: Option<Box<str>>,
    /// Callbacks of blocks that committed on the connection a `connection()` call of this
    /// alias lent out: they run when that call gives the connection back (rule C3: after the
    /// state is reset, so they may use the alias).
    pub(crate) after_lend: Vec<K::Callback>,
    /// The block that owned the lent connection ended while it was lent (a `TestTransaction`
    /// dropped inside the `connection()` closure): when the connection comes back it is rolled
    /// back to this depth and returned to the pool.
    pub(crate) orphaned_at_depth: Option<u32>,
    /// A savepoint block was cancelled in its body (A2, async): its SAVEPOINT, begun at this
    /// depth, is still open on the connection (a destructor cannot send SQL). The next engine
    /// step on the connection rolls back to this depth first.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) leftover_savepoint: Option<u32>,
    /// This thread's last commit on the alias, for reads on its replicas (rule P2).
    pub(crate) last_commit: LastCommit,
}

impl<K: Flavor> AliasState<K> {
    pub(crate) fn new(alias: &str, index: usize) -> Self {
        AliasState {
            alias: alias.into(),
            index,
            blocks: Vec::new(),
            needs_rollback: false,
            callbacks: Vec::new(),
            slot: Slot::Empty,
            pooled: None,
            block_connection: None,
            hidden_conflict: false,
            begun_isolation: None,
            callbacks_join: None,
            after_lend: Vec::new(),
            orphaned_at_depth: None,
            leftover_savepoint: None,
            last_commit: LastCommit::default(),
        }
    }

    pub(crate) fn alias(&self) -> &str {
        &self.alias
    }

    #[inline]
    pub(crate) fn in_atomic_block(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// diesel's depth inside the innermost open block (0 outside blocks).
    #[inline]
    pub(crate) fn block_depth(&self) -> u32 {
        self.blocks.last().map_or(0, |block| block.depth)
    }

    /// Whether nothing on this thread refers to the state any more, so its entry may be
    /// reused for another alias. A remembered commit is kept: forgetting it would let a read
    /// miss the thread's own write (rule P2).
    pub(crate) fn is_idle(&self) -> bool {
        self.blocks.is_empty()
            && self.slot == Slot::Empty
            && self.callbacks.is_empty()
            && self.after_lend.is_empty()
            && self.orphaned_at_depth.is_none()
            && self.last_commit.is_empty()
    }

    // --- Slot transitions: the only places that move the connection in and out. ---------------

    /// An ambient outermost block (or a test transaction) holds `pooled` from now on.
    pub(crate) fn hold(&mut self, pooled: Box<K::Pooled>) {
        let id = pooled.id();
        self.slot = Slot::Held(id);
        self.block_connection = Some(id);
        self.pooled = Some(pooled);
    }

    /// Takes the held connection out while the engine's own SQL runs on it; the slot reads
    /// `Lent` meanwhile, so nothing else reaches for it. Put it back with [`Self::put_back`].
    #[inline]
    pub(crate) fn take_held(&mut self) -> Option<Box<K::Pooled>> {
        let Slot::Held(id) = self.slot else {
            return None;
        };
        self.slot = Slot::Lent(id);
        self.pooled.take()
    }

    /// Gives a connection taken with [`Self::take_held`] back to the block.
    #[inline]
    pub(crate) fn put_back(&mut self, pooled: Box<K::Pooled>) {
        self.slot = Slot::Held(pooled.id());
        self.pooled = Some(pooled);
    }

    /// The outermost ambient block ended: its connection goes back to the pool (dropped by the
    /// caller, outside the borrow).
    #[inline]
    pub(crate) fn release_held(&mut self) -> Option<Box<K::Pooled>> {
        self.block_connection = None;
        match self.slot {
            Slot::Held(_) => {
                self.slot = Slot::Empty;
                self.pooled.take()
            }
            _ => None,
        }
    }

    /// An explicit-mode outermost block binds the alias to the caller's connection; returns
    /// the `Lent` it replaced, to restore at its exit.
    #[inline]
    pub(crate) fn bind_explicit(&mut self, id: ConnectionId) -> Option<ConnectionId> {
        let restore_lent = match self.slot {
            Slot::Lent(lent) => Some(lent),
            _ => None,
        };
        self.slot = Slot::Explicit(id);
        self.block_connection = Some(id);
        restore_lent
    }

    /// The explicit-mode outermost block ended (or never began).
    #[inline]
    pub(crate) fn unbind_explicit(&mut self, restore_lent: Option<ConnectionId>) {
        self.slot = restore_lent.map_or(Slot::Empty, Slot::Lent);
        self.block_connection = None;
    }
}

/// A table of alias states: a thread's (sync) or a task's (async).
pub(crate) struct States<K: Flavor = SyncFlavor> {
    list: Vec<AliasState<K>>,
}

/// How many alias states a table keeps before it reuses idle ones: an application with a
/// few aliases never pays for reuse, and one with an alias per tenant stays bounded.
const KEPT_STATES: usize = 32;

impl<K: Flavor> States<K> {
    pub(crate) const fn new() -> Self {
        States { list: Vec::new() }
    }

    /// The index of `alias`'s state, created on first use.
    #[inline]
    pub(crate) fn index(&mut self, alias: &str) -> usize {
        match self.list.iter().position(|state| &*state.alias == alias) {
            Some(index) => index,
            None => self.create(alias),
        }
    }

    /// Makes a state for `alias`: a new entry, or, once the table has many, an idle entry of
    /// another alias (an idle state holds nothing, and no open block refers to its index).
    #[cold]
    fn create(&mut self, alias: &str) -> usize {
        let states = &mut self.list;
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

    /// The state at `index`.
    #[inline]
    pub(crate) fn at(&mut self, index: usize) -> &mut AliasState<K> {
        &mut self.list[index]
    }

    /// The state at `index`, to read (the async runtime's turn check).
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn get(&self, index: usize) -> &AliasState<K> {
        &self.list[index]
    }

    /// The state at `index` and the others beside it.
    pub(crate) fn with_others(&mut self, index: usize) -> (&mut AliasState<K>, Others<'_, K>) {
        let (before, rest) = self.list.split_at_mut(index);
        let (state, after) = rest.split_first_mut().expect("the index is in the table");
        (state, Others { before, after })
    }

    /// `alias`'s state, if there is one.
    pub(crate) fn find(&self, alias: &str) -> Option<&AliasState<K>> {
        self.list.iter().find(|state| &*state.alias == alias)
    }

    /// `alias`'s state to change, if there is one.
    pub(crate) fn find_mut(&mut self, alias: &str) -> Option<&mut AliasState<K>> {
        self.list.iter_mut().find(|state| &*state.alias == alias)
    }

    /// Every state.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &AliasState<K>> {
        self.list.iter()
    }

    /// Every state, to change.
    #[cfg(feature = "async")]
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut AliasState<K>> {
        self.list.iter_mut()
    }
}

thread_local! {
    static STATES: RefCell<States> = const { RefCell::new(States::new()) };
    static NEXT_TOKEN: Cell<u64> = Cell::new(token_base());
    /// How many remembered commits this thread has made (rule P2).
    static COMMIT_SERIAL: Cell<u64> = const { Cell::new(0) };
    /// The commit serial when the current read scope began: commits after it count for the
    /// `Primary` policy. 0 on a thread (its scope is the whole thread), the serial at its
    /// start inside `request()`.
    static READ_SCOPE_START: Cell<u64> = const { Cell::new(0) };
}

/// The serial of a commit being remembered now: greater than every earlier one of the thread.
pub(crate) fn next_commit_serial() -> u64 {
    COMMIT_SERIAL.with(|serial| {
        serial.set(serial.get() + 1);
        serial.get()
    })
}

/// Where the current read scope began (see `READ_SCOPE_START`).
pub(crate) fn read_scope_start() -> u64 {
    READ_SCOPE_START.with(Cell::get)
}

/// A read scope of its own (a request's) until the guard drops: commits made before it do
/// not send its reads to the primary under the `Primary` policy (rule P2).
#[must_use = "the scope lasts while the guard lives"]
pub(crate) struct ReadScope {
    previous: u64,
}

impl ReadScope {
    pub(crate) fn begin() -> ReadScope {
        let now = COMMIT_SERIAL.with(Cell::get);
        ReadScope {
            previous: READ_SCOPE_START.with(|start| start.replace(now)),
        }
    }
}

impl Drop for ReadScope {
    fn drop(&mut self) {
        let _ = READ_SCOPE_START.try_with(|start| start.set(self.previous));
    }
}

/// Runs `f` on the alias's state, creating it on first use. `f` must not call user code, nor
/// drop values whose `Drop` might (callbacks, connections): move those out and drop them after.
pub(crate) fn with<R>(alias: &str, f: impl FnOnce(&mut AliasState) -> R) -> R {
    STATES.with(|states| {
        let states = &mut *states.borrow_mut();
        let index = states.index(alias);
        f(states.at(index))
    })
}

/// The other aliases' states, beside the one [`with_others`] hands out.
pub(crate) struct Others<'a, K: Flavor = SyncFlavor> {
    before: &'a mut [AliasState<K>],
    after: &'a mut [AliasState<K>],
}

impl<'a, K: Flavor> Others<'a, K> {
    /// Other states given as a slice (the rules' unit tests).
    #[cfg(test)]
    pub(crate) fn of(states: &'a mut [AliasState<K>]) -> Self {
        Others {
            before: states,
            after: &mut [],
        }
    }

    /// The first of the other states for which `f` says something.
    pub(crate) fn find_map<R>(&self, f: impl FnMut(&AliasState<K>) -> Option<R>) -> Option<R> {
        self.before.iter().chain(self.after.iter()).find_map(f)
    }

    /// The other states, to change one.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut AliasState<K>> {
        self.before.iter_mut().chain(self.after.iter_mut())
    }
}

/// Like [`with`], with a look at the thread's other alias states (for the rules that look
/// across aliases), under the same borrow.
pub(crate) fn with_others<R>(alias: &str, f: impl FnOnce(&mut AliasState, Others<'_>) -> R) -> R {
    STATES.with(|states| {
        let states = &mut *states.borrow_mut();
        let index = states.index(alias);
        let (state, others) = states.with_others(index);
        f(state, others)
    })
}

/// Runs `f` on the state at `index` (an [`AliasState::index`] of this thread), which was
/// `alias`'s when the caller's block began: the hot path's second borrow, without the name
/// lookup. If the block has ended elsewhere since, the entry may hold another alias now; the
/// caller's block token (unique on the thread) tells, so `f` must check it first.
#[inline]
pub(crate) fn with_at<R>(index: usize, f: impl FnOnce(&mut AliasState) -> R) -> R {
    STATES.with(|states| f(states.borrow_mut().at(index)))
}

/// Like `with`, for drop paths: does nothing once the thread's state is being torn down.
pub(crate) fn try_with<R>(alias: &str, f: impl FnOnce(&mut AliasState) -> R) -> Option<R> {
    STATES
        .try_with(|states| {
            let mut states = states.try_borrow_mut().ok()?;
            Some(f(states.find_mut(alias)?))
        })
        .ok()
        .flatten()
}

/// Reads the alias's state without creating it.
pub(crate) fn peek<R>(alias: &str, f: impl FnOnce(Option<&AliasState>) -> R) -> R {
    STATES.with(|states| f(states.borrow().find(alias)))
}

/// Reads every state of the thread (for the rules that look across aliases).
pub(crate) fn find_map<R>(f: impl FnMut(&AliasState) -> Option<R>) -> Option<R> {
    STATES.with(|states| states.borrow().iter().find_map(f))
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
        assert!(peek("tenant-9999", |state| state.is_some()));
    }

    #[test]
    fn a_state_that_holds_something_is_never_reused() {
        let lent = ConnectionId::of(&0u8);
        with("busy", |state| state.slot = Slot::Lent(lent));
        for tenant in 0..100 {
            with(&format!("tenant-{tenant}"), |_| ());
        }
        assert!(peek("busy", |state| state
            .is_some_and(|state| state.slot == Slot::Lent(lent))));
        with("busy", |state| state.slot = Slot::Empty);
    }

    #[test]
    fn block_tokens_are_unique_on_the_thread() {
        let first = BlockToken::next();
        let second = BlockToken::next();
        assert_ne!(first, second);
    }
}
