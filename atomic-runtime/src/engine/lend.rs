//! Lending an alias's connection to ambient code (`connection()`, manual savepoints): the
//! open block's, or one checked out for the call, in autocommit mode. The decisions are
//! `rules::lend` and `rules::give_back`.

use crate::adapter::PooledConn;
use crate::databases;
use crate::engine::block::roll_back_to;
use crate::engine::rules::{self, GiveBack, Lend};
use crate::engine::state;
use crate::engine::{hooks, replica};
use crate::error::Error;

/// The alias's connection, taken out of the state while ambient code uses it, and put back
/// (or returned to the pool) when dropped, also while unwinding.
pub(crate) struct Lent<'a> {
    alias: &'a str,
    pooled: Option<Box<dyn PooledConn>>,
    /// The connection belongs to an open block (put it back) rather than to this call.
    from_block: bool,
    /// Lent to a `read`, which does not write: its end is no commit to remember (rule P2).
    for_read: bool,
}

impl<'a> Lent<'a> {
    /// Takes the alias's connection (rule F3: refused while its block is marked for
    /// rollback).
    pub(crate) fn take(alias: &'a str) -> Result<Self, Error> {
        Lent::take_for(alias, false)
    }

    /// [`Lent::take`] for a `read` on the primary (rule P1).
    pub(crate) fn take_to_read(alias: &'a str) -> Result<Self, Error> {
        Lent::take_for(alias, true)
    }

    fn take_for(alias: &'a str, for_read: bool) -> Result<Self, Error> {
        #[cfg(feature = "async")]
        if crate::engine::aio::state::held_by_async_block(alias) {
            return Err(crate::engine::block::sync_inside_async(alias));
        }
        let from_block = state::with(alias, |state| {
            Ok::<_, Error>(match rules::lend(state)? {
                Lend::FromBlock => state.take_held(),
                Lend::CheckOut => None,
            })
        })?;
        if let Some(pooled) = from_block {
            return Ok(Lent {
                alias,
                pooled: Some(pooled),
                from_block: true,
                for_read,
            });
        }
        let pooled = databases::lookup(alias)?.checkout(alias)?;
        let mut lent = Lent::checked_out(alias, pooled);
        lent.for_read = for_read;
        Ok(lent)
    }

    /// Lends `pooled`, checked out outside any block of the alias (rule `rules::lend` said
    /// `CheckOut`) for a read: a replica's, or the primary's (P1).
    pub(crate) fn checked_out(alias: &'a str, pooled: Box<dyn PooledConn>) -> Self {
        let id = pooled.id();
        state::with(alias, |state| rules::lend_checked_out(state, id));
        Lent {
            alias,
            pooled: Some(pooled),
            from_block: false,
            for_read: true,
        }
    }

    pub(crate) fn pooled(&mut self) -> &mut dyn PooledConn {
        self.pooled
            .as_deref_mut()
            .expect("the connection is present until drop")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut pooled = self.pooled.take();
        let back = state::try_with(self.alias, |state| {
            let back = rules::give_back(state, self.from_block);
            if back.to_block
                && let Some(pooled) = pooled.take()
            {
                state.put_back(pooled);
            }
            back
        });
        // The rest runs outside the state's borrow.
        let Some(GiveBack {
            orphaned_at_depth,
            after_lend,
            ..
        }) = back
        else {
            return;
        };
        if let (Some(pooled), Some(depth_before)) = (&mut pooled, orphaned_at_depth) {
            roll_back_to(self.alias, pooled.inner(), depth_before);
        }
        // What the closure wrote in autocommit mode is committed: later reads must see it
        // (P2). Not while unwinding: the closure may have stopped mid-statement.
        if databases::replicas_configured()
            && rules::lend_to_remember(self.from_block, self.for_read)
            && !std::thread::panicking()
            && let Some(pooled) = &mut pooled
        {
            replica::remember_commit(self.alias, Some(&mut **pooled));
        }
        // Back to the pool (r2d2 discards it if it is still inside a transaction) before the
        // callbacks of the blocks that committed on it run (C3).
        drop(pooled);
        hooks::run_deferred(self.alias, after_lend);
    }
}
