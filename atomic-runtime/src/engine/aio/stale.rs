//! Rule A2 for the caller's own connection (explicit mode): an outermost block whose future
//! was dropped left its transaction open on a connection the runtime does not own and cannot
//! reach from a destructor. It is remembered here by identity and depth, so the next block
//! on that connection refuses to run as a savepoint of the stale transaction: it marks the
//! connection broken and reports `Error::StaleTransaction`.
//!
//! A pooled connection the caller drops meanwhile is discarded by its pool (it is inside a
//! transaction); its entry stays until evicted, bounded by [`KEPT`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::adapter::ConnectionId;

/// How many stale connections are remembered (oldest forgotten first).
const KEPT: usize = 1024;

static STALE: Mutex<VecDeque<(ConnectionId, u32)>> = Mutex::new(VecDeque::new());
/// `STALE.len()`, read without the lock on every explicit outermost block.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The connection `id` was left inside a transaction begun at diesel depth `depth_before`.
pub(crate) fn remember(id: ConnectionId, depth_before: u32) {
    let mut stale = STALE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stale.retain(|(known, _)| *known != id);
    if stale.len() == KEPT {
        stale.pop_front();
    }
    stale.push_back((id, depth_before));
    COUNT.store(stale.len(), Ordering::Relaxed);
}

/// Whether connection `id`, at diesel depth `depth`, is inside a remembered stale
/// transaction. A connection found back at the depth it had before is forgotten (its owner
/// rolled it back).
#[inline]
pub(crate) fn is_stale(id: ConnectionId, depth: u32) -> bool {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return false;
    }
    check(id, depth)
}

#[cold]
fn check(id: ConnectionId, depth: u32) -> bool {
    let mut stale = STALE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(position) = stale.iter().position(|(known, _)| *known == id) else {
        return false;
    };
    let (_, depth_before) = stale[position];
    if depth > depth_before {
        return true;
    }
    stale.remove(position);
    COUNT.store(stale.len(), Ordering::Relaxed);
    false
}

/// Forgets connection `id` (it was marked broken and reported).
pub(crate) fn forget(id: ConnectionId) {
    let mut stale = STALE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    stale.retain(|(known, _)| *known != id);
    COUNT.store(stale.len(), Ordering::Relaxed);
}
