//! An explicit-mode block (on the caller's connection) the way nearly every one goes: the
//! alias is free to use, a plain BEGIN or SAVEPOINT, a body that succeeds, a COMMIT or
//! RELEASE that succeeds. That path is generic over the connection type, so diesel-async's
//! own BEGIN and COMMIT futures are awaited in place instead of boxed behind `AsyncTx`, and
//! entering and leaving are each decided in one look at the task's table. Anything else (a
//! request's BEGIN due, a sibling holding the alias, a leftover savepoint, begin options, a
//! rollback, a failed COMMIT, a cancelled child, a commit replicas must hear of) goes through
//! [`block`]'s general steps, boxed. Every decision is still a call into `engine::rules`;
//! only how the SQL is awaited differs.
//!
//! Why it exists: a block's cost over diesel-async's `conn.transaction` was spread over the
//! layers of futures the general steps nest (each moved into its parent, each its own poll)
//! and the boxes `AsyncTx` puts around BEGIN and COMMIT (see BENCHMARKS.md).

use std::panic::AssertUnwindSafe;

use diesel_async::{AsyncConnection, TransactionManager};
use futures_util::FutureExt;

use crate::adapter::async_connection::AsyncTx;
use crate::api::aio::AsyncFunc;
use crate::engine::aio::block::{self, Armed, Exit, Outcome, Planned};
use crate::engine::aio::stale;
use crate::engine::aio::state::{self, AsyncCallback, InBlock};
use crate::engine::rules::{self, BeginOptionsUse, CallersConnection, EnterPlan, Leave, Route};
use crate::engine::state::{Cancelled, Entered, Foreign};
use crate::error::Error;
use crate::options::BlockOptions;

/// Runs `body` as a block on the connection `connection` finds in `owner`. Returns the
/// body's outcome and what leaving produced, as `ambient::attempt` does.
pub(crate) async fn attempt<S, C, T, E, F>(
    options: &BlockOptions<'_>,
    owner: &mut S,
    connection: impl Fn(&mut S) -> &mut C,
    body: F,
) -> Result<(Outcome<T, E>, Exit), Error>
where
    S: ?Sized,
    C: AsyncConnection + 'static,
    for<'r> F: AsyncFunc<&'r mut S, Result<T, E>>,
{
    let alias = options.using;
    let mut armed = match quick_enter(options, connection(owner))? {
        Entry::Open(entered) => {
            let mut armed = Armed::new(entered);
            armed.phase = Cancelled::InBody;
            armed
        }
        Entry::Begin(entered, begin) => {
            // Armed in its SQL phase: dropped during the BEGIN, the block is taken off the
            // state and the connection counts as unknown.
            let mut armed = Armed::new(entered);
            let conn = connection(owner);
            let begun = match begin {
                BeginOptionsUse::Plain => C::TransactionManager::begin_transaction(conn)
                    .await
                    .map_err(Error::from),
                begin => Box::pin(block::begin_on(alias, conn, options, begin)).await,
            };
            if let Err(error) = begun {
                return Err(block::begin_failed(armed, error));
            }
            tracing::debug!(alias, "BEGIN or SAVEPOINT (caller's connection)");
            armed.phase = Cancelled::InBody;
            armed
        }
        Entry::General { request_due } => {
            Box::pin(block::enter_general(
                options,
                Some(connection(owner)),
                request_due,
            ))
            .await?
        }
    };

    // The body, polled inside its block (A3), panics caught (X3).
    let outcome = AssertUnwindSafe(InBlock {
        token: armed.token,
        body: body(&mut *owner),
    })
    .catch_unwind()
    .await;
    armed.phase = Cancelled::InSql;

    let succeeded = block::succeeded(&outcome);
    let conn = connection(owner);
    let id = AsyncTx::id(&*conn);
    let exit = match block::plan_exit(&mut armed, Some(id), succeeded) {
        Some(planned) => {
            let child = planned.child;
            let exit = match quick_exit(planned, conn) {
                QuickExit::Nothing => Exit::clean(),
                QuickExit::Commit {
                    depth_before,
                    foreign,
                    callbacks,
                    route,
                } => {
                    let error = commit(alias, conn, depth_before).await;
                    let committed = error.is_none();
                    block::outermost_exit(alias, error, committed, foreign, callbacks, route)
                }
                QuickExit::Release {
                    depth_before,
                    callbacks_mark,
                } => {
                    let (error, lost) = release(alias, conn, depth_before).await;
                    block::savepoint_exit(alias, callbacks_mark, error, lost)
                }
                QuickExit::General(planned) => {
                    Box::pin(block::carry_out(alias, planned, Some(conn))).await
                }
            };
            block::exited(alias, &mut armed, child, succeeded, exit)
        }
        None => Exit::clean(),
    };
    armed.disarm();
    Ok((outcome, exit))
}

/// How a block enters, decided in one look at the table.
enum Entry {
    /// Open at once (a merged block, rule E3): no SQL.
    Open(Entered),
    /// Pushed; BEGIN or SAVEPOINT to send.
    Begin(Entered, BeginOptionsUse),
    /// Not the common path: `block::enter_general` decides, the block's state untouched so far.
    /// `request_due`: the request's transaction of the alias is marked beginning (rule Q1),
    /// its BEGIN still to send.
    General { request_due: bool },
}

/// `block::enter` for the caller's connection when nothing needs awaiting before the plan:
/// no request transaction due on the alias, the alias's turn (A3), no savepoint a cancelled
/// block left open on the connection, diesel's depth readable and the connection not stale.
fn quick_enter(options: &BlockOptions<'_>, conn: &mut dyn AsyncTx) -> Result<Entry, Error> {
    let alias = options.using;
    state::with_task(|task| {
        let index = match block::common_path_index(task, alias) {
            Ok(index) => index,
            Err(request_due) => return Ok(Entry::General { request_due }),
        };
        let id = conn.id();
        let state = task.states.get(index);
        let ours = state.block_connection == Some(id);
        if ours && state.leftover_savepoint.is_some() {
            return Ok(Entry::General { request_due: false });
        }
        let Ok(depth) = conn.depth() else {
            return Ok(Entry::General { request_due: false });
        };
        if depth > 0 && !ours && stale::is_stale(id, depth) {
            return Ok(Entry::General { request_due: false });
        }
        let callers = CallersConnection {
            id,
            depth,
            foreign: rules::foreign_transaction(depth, || conn.open_transaction_is_test()),
        };
        let (state, others) = task.states.with_others(index);
        Ok(
            match rules::plan_enter(state, others, options, Some(&callers))? {
                EnterPlan::Merged(entered) => Entry::Open(entered),
                EnterPlan::OnCallersConnection { entered, begin } => Entry::Begin(entered, begin),
                // Plans for ambient blocks, which change nothing before they are carried out.
                EnterPlan::CheckOut | EnterPlan::AmbientSavepoint => {
                    Entry::General { request_due: false }
                }
            },
        )
    })
}

/// A plan whose SQL is a plain COMMIT or RELEASE (or none), awaited in place; any other
/// goes back to `block::carry_out`.
enum QuickExit {
    Nothing,
    Commit {
        depth_before: u32,
        foreign: Foreign,
        callbacks: Vec<AsyncCallback>,
        route: Route,
    },
    Release {
        depth_before: u32,
        callbacks_mark: usize,
    },
    General(Planned),
}

fn quick_exit(planned: Planned, conn: &mut dyn AsyncTx) -> QuickExit {
    let block_depth = match planned.plan {
        _ if planned.child != Cancelled::No => return QuickExit::General(planned),
        Leave::Done => return QuickExit::Nothing,
        Leave::Outermost {
            success: true,
            depth_before,
            ..
        } if !planned.remember && planned.pooled.is_none() => depth_before + 1,
        Leave::Savepoint {
            success: true,
            depth_before,
            ..
        } => depth_before + 1,
        _ => return QuickExit::General(planned),
    };
    // A level left open above the block's own (a panic inside it) is rolled back first.
    if block::levels_left_open(conn, block_depth).is_err() {
        return QuickExit::General(planned);
    }
    match planned.plan {
        Leave::Outermost {
            depth_before,
            foreign,
            callbacks,
            route,
            ..
        } => QuickExit::Commit {
            depth_before,
            foreign,
            callbacks,
            route,
        },
        Leave::Savepoint {
            depth_before,
            callbacks_mark,
            discarded,
            ..
        } => {
            // A RELEASE discards nothing; empty, it is dropped here without a callback.
            drop(discarded);
            QuickExit::Release {
                depth_before,
                callbacks_mark,
            }
        }
        plan => QuickExit::General(Planned { plan, ..planned }),
    }
}

/// An outermost block's COMMIT; its error after X4's recovery.
async fn commit<C: AsyncConnection + 'static>(
    alias: &str,
    conn: &mut C,
    depth_before: u32,
) -> Option<diesel::result::Error> {
    match C::TransactionManager::commit_transaction(conn).await {
        Ok(()) => {
            tracing::debug!(alias, "COMMIT");
            None
        }
        Err(error) => Some(Box::pin(block::commit_failed(alias, conn, depth_before, error)).await),
    }
}

/// A nested block's RELEASE SAVEPOINT; after a failure (X4), its error and whether the
/// transaction is lost.
async fn release<C: AsyncConnection + 'static>(
    alias: &str,
    conn: &mut C,
    depth_before: u32,
) -> (Option<diesel::result::Error>, bool) {
    match C::TransactionManager::commit_transaction(conn).await {
        Ok(()) => {
            tracing::trace!(alias, depth = depth_before + 1, "RELEASE SAVEPOINT");
            (None, false)
        }
        Err(error) => Box::pin(block::release_failed(alias, conn, depth_before, error)).await,
    }
}
