//! Manual savepoints (rule M1): not on the block stack, and they do not scope callbacks.
//! `Db::savepoint` and friends run these statements on the alias's lent connection.

use std::cell::Cell;

/// A manual savepoint made by `savepoint()`; opaque, `Copy`, meaningful on its thread only.
///
/// An id made outside a block is a no-op for `savepoint_commit` / `savepoint_rollback`.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// let id: diesel_atomic::SavepointId = diesel_atomic::transaction::savepoint()?;
/// let copy = id;
/// assert_eq!(id, copy);
/// # Ok::<(), diesel_atomic::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SavepointId(u64);

impl SavepointId {
    pub(crate) const NONE: SavepointId = SavepointId(0);
}

thread_local! {
    static NEXT: Cell<u64> = const { Cell::new(1) };
}

pub(crate) fn next_id() -> SavepointId {
    NEXT.with(|next| {
        let id = next.get();
        next.set(id + 1);
        SavepointId(id)
    })
}

fn name(id: SavepointId) -> String {
    format!("diesel_atomic_{}", id.0)
}

pub(crate) fn create_sql(id: SavepointId) -> String {
    format!("SAVEPOINT {}", name(id))
}

/// `None` for an id made outside a block: its release is a no-op (M1).
pub(crate) fn release_sql(id: SavepointId) -> Option<String> {
    (id != SavepointId::NONE).then(|| format!("RELEASE SAVEPOINT {}", name(id)))
}

/// `None` for an id made outside a block: its rollback is a no-op (M1).
pub(crate) fn rollback_sql(id: SavepointId) -> Option<String> {
    (id != SavepointId::NONE).then(|| format!("ROLLBACK TO SAVEPOINT {}", name(id)))
}
