//! Lending an async alias's connection to `aio::connection`'s closure: the open block's, or
//! one checked out for the call (autocommit). The decisions are `rules::lend` and
//! `rules::give_back`, as for sync code.

use crate::adapter::async_connection::{AsyncPooledConn, AsyncTx, release};
use crate::engine::aio::block::checkout;
use crate::engine::aio::hooks;
use crate::engine::aio::replica;
use crate::engine::aio::state;
use crate::engine::rules::{self, GiveBack, Lend};
use crate::engine::state::BlockToken;
use crate::error::Error;

/// The alias's connection, taken out of the task's state while the closure uses it. Given
/// back with [`Lent::give_back`]; dropped before that (the future was cancelled), the
/// connection goes back marked broken (rule A2: what the closure left half-done is unknown),
/// and callbacks waiting for it are dropped.
pub(crate) struct Lent<'a> {
    alias: &'a str,
    pooled: Option<Box<dyn AsyncPooledConn>>,
    /// The connection belongs to an open block (put it back) rather than to this call.
    from_block: bool,
    /// Lent to a `read`, which does not write: its end is no commit to remember (rule P2).
    for_read: bool,
    /// The token the closure is polled under (see `Task::lends`).
    pub(crate) token: BlockToken,
}

impl<'a> Lent<'a> {
    /// Takes the alias's connection after waiting for the alias's turn (A3); rule F3 and one
    /// borrower at a time as for sync code.
    pub(crate) async fn take(alias: &'a str) -> Result<Lent<'a>, Error> {
        match Lent::take_open_block(alias) {
            Some(lent) => Ok(lent),
            None => Box::pin(Lent::take_for(alias, false)).await,
        }
    }

    /// [`Lent::take`] for a `read` on the primary (rule P1).
    pub(crate) async fn take_to_read(alias: &'a str) -> Result<Lent<'a>, Error> {
        Lent::take_for(alias, true).await
    }

    /// The common case of [`Lent::take`], decided in one look at the table: inside an open
    /// block of the alias whose turn it is, with no savepoint a cancelled block left open.
    /// `None` for anything else, the state untouched.
    fn take_open_block(alias: &'a str) -> Option<Lent<'a>> {
        if !state::in_task_scope() {
            return None;
        }
        state::with_task(|task| {
            let index = task.states.index(alias);
            if !task.has_turn(index) {
                return None;
            }
            let state = task.states.at(index);
            if state.leftover_savepoint.is_some()
                || !matches!(rules::lend(state), Ok(Lend::FromBlock))
            {
                return None;
            }
            let pooled = state.take_held()?;
            let token = BlockToken::next();
            task.lends.push((index, token));
            Some(Lent {
                alias,
                pooled: Some(pooled),
                from_block: true,
                for_read: false,
                token,
            })
        })
    }

    async fn take_for(alias: &'a str, for_read: bool) -> Result<Lent<'a>, Error> {
        state::turn(alias).await;
        let from_block = state::with(alias, |state| {
            Ok::<_, Error>(match rules::lend(state)? {
                Lend::FromBlock => state.take_held(),
                Lend::CheckOut => None,
            })
        })?;
        let token = BlockToken::next();
        if let Some(pooled) = from_block {
            register(alias, token);
            // Lent first, so a drop during the cleanup below gives the connection back to its
            // block (marked broken), never to the pool.
            let mut lent = Lent {
                alias,
                pooled: Some(pooled),
                from_block: true,
                for_read,
                token,
            };
            crate::engine::aio::block::close_cancelled_levels(alias, lent.conn()).await;
            return Ok(lent);
        }
        let pooled = checkout(alias).await?;
        let mut lent = Lent::checked_out(alias, pooled);
        lent.for_read = for_read;
        Ok(lent)
    }

    /// Lends `pooled`, checked out outside any block of the alias for a read: a replica's, or
    /// the primary's (P1).
    pub(crate) fn checked_out(alias: &'a str, pooled: Box<dyn AsyncPooledConn>) -> Lent<'a> {
        let id = pooled.id();
        state::with(alias, |state| rules::lend_checked_out(state, id));
        let token = BlockToken::next();
        register(alias, token);
        Lent {
            alias,
            pooled: Some(pooled),
            from_block: false,
            for_read: true,
            token,
        }
    }

    pub(crate) fn conn(&mut self) -> &mut dyn AsyncTx {
        self.pooled
            .as_mut()
            .expect("the connection is present until given back")
            .inner()
    }

    /// The connection's type, for `Error::WrongConnectionType`.
    pub(crate) fn type_name(&self) -> &'static str {
        self.pooled
            .as_ref()
            .expect("the connection is present until given back")
            .type_name()
    }

    /// Gives the connection back to its block or its pool, then runs the callbacks of blocks
    /// that committed on it meanwhile (C3).
    pub(crate) async fn give_back(mut self) {
        // What the closure wrote in autocommit mode is committed: the task's later reads must
        // see it (P2).
        if crate::databases::replicas_configured()
            && rules::lend_to_remember(self.from_block, self.for_read)
            && let Some(pooled) = &mut self.pooled
        {
            replica::remember_commit(self.alias, Some(pooled.inner())).await;
        }
        let after_lend = self.back(false);
        if !after_lend.is_empty() {
            hooks::run_after_commit(self.alias, after_lend).await;
        }
    }

    fn back(&mut self, broken: bool) -> Vec<crate::engine::aio::state::AsyncCallback> {
        let mut pooled = self.pooled.take();
        if broken && let Some(pooled) = &mut pooled {
            pooled.inner().mark_broken();
        }
        let from_block = self.from_block;
        let token = self.token;
        let back = state::try_with_task(|task| {
            let index = task.states.index(self.alias);
            task.lends.retain(|(_, lent)| *lent != token);
            let state = task.states.at(index);
            let back = rules::give_back(state, from_block);
            if back.to_block
                && let Some(pooled) = pooled.take()
            {
                state.put_back(pooled);
            }
            back
        });
        state::wake_waiting();
        let Some(GiveBack {
            orphaned_at_depth,
            after_lend,
            ..
        }) = back
        else {
            return Vec::new();
        };
        if let (Some(pooled), Some(_)) = (&mut pooled, orphaned_at_depth) {
            // Its block ended while it was lent: the pool must not get it back inside that
            // transaction, and a destructor cannot await a ROLLBACK.
            pooled.inner().mark_broken();
        }
        // Back to the pool (closed if broken) before the callbacks run.
        if let Some(pooled) = pooled {
            release(pooled);
        }
        after_lend
    }
}

/// Records the call's hold on `alias` (see `Task::lends`).
fn register(alias: &str, token: BlockToken) {
    state::with_task(|task| {
        let index = task.states.index(alias);
        task.lends.push((index, token));
    });
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if self.pooled.is_some() {
            // What the closure sent may have committed (autocommit): remembered, its position
            // to be asked of the primary by the next read (P2).
            if crate::databases::replicas_configured()
                && rules::lend_to_remember(self.from_block, self.for_read)
            {
                replica::remember_commit_unknown(self.alias);
            }
            // A panic unwinding out of the closure leaves the connection as a failed
            // statement would; a dropped future may leave it mid-statement.
            let broken = !std::thread::panicking();
            drop(self.back(broken));
        }
    }
}
