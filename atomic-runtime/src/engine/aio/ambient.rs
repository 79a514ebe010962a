//! An ambient block (its connection from the alias's pool) the way nearly every one goes: the
//! outermost block of the alias, its turn, a connection checked out of the pool, a plain
//! BEGIN, a body that succeeds, a COMMIT that succeeds, the connection back to its pool.
//! Each step is awaited in this one function and decided in one look at the task's table,
//! instead of through the nested futures of `block::{enter, leave}`, which every other case
//! still takes (a request's BEGIN due, a sibling holding the alias, a nested block, a replica
//! block, begin options, a rollback, a failed COMMIT, a cancelled child, a commit replicas
//! must hear of). Every decision is a call into `engine::rules`, as there.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::adapter::async_connection::release;
use crate::engine::aio::block::{self, Armed, Exit, Outcome, Planned};
use crate::engine::aio::state::{self, AsyncCallback, InBlock};
use crate::engine::rules::{self, EnterPlan, Leave, Route};
use crate::engine::state::{Cancelled, Entered, Foreign};
use crate::error::Error;
use crate::options::BlockOptions;

/// Runs `body` as an ambient block on `options.using`. Returns the body's outcome and what
/// leaving produced; the caller decides (retry) or `block::finish`es. No higher-ranked bound
/// on the body: rustc cannot always prove a future `Send` through one when the body's output
/// holds a lifetime (`Result<&'static str, E>` from an axum handler).
pub(crate) async fn attempt<T, E>(
    options: &BlockOptions<'_>,
    body: impl Future<Output = Result<T, E>>,
) -> Result<(Outcome<T, E>, Exit), Error> {
    let mut armed = enter(options).await?;

    // The body, polled inside its block (A3), panics caught (X3).
    let outcome = AssertUnwindSafe(InBlock {
        token: armed.token,
        body,
    })
    .catch_unwind()
    .await;
    armed.phase = Cancelled::InSql;

    let succeeded = block::succeeded(&outcome);
    let exit = leave(options.using, &mut armed, succeeded).await;
    armed.disarm();
    Ok((outcome, exit))
}

/// Enters an ambient block (`block::enter` without a caller's connection): the common path
/// decided in one look at the table, anything else by `block::enter_general`. Also a
/// request's BEGIN, at its first use of an alias.
pub(crate) async fn enter(options: &BlockOptions<'_>) -> Result<Armed, Error> {
    Ok(match quick_enter(options)? {
        Entry::Open(entered) => {
            let mut armed = Armed::new(entered);
            armed.phase = Cancelled::InBody;
            armed
        }
        Entry::CheckOut => {
            // Rule E2. Nothing is in the state until the BEGIN succeeded: dropped before, the
            // connection goes back to its pool, marked broken by diesel-async if a BEGIN was
            // under way (or by `begin_with`), and is discarded.
            let (pooled, outermost) = block::checkout_and_begin(options).await?;
            block::hold_checked_out(options, pooled, outermost)
        }
        Entry::General { request_due } => {
            Box::pin(block::enter_general(options, None, request_due)).await?
        }
    })
}

/// Leaves an ambient block (`block::leave` without a caller's connection): a plain COMMIT
/// awaited in place, anything else carried out by `block::carry_out`. Also a request's end
/// of an alias.
pub(crate) async fn leave(alias: &str, armed: &mut Armed, succeeded: bool) -> Exit {
    match block::plan_exit(armed, None, succeeded) {
        Some(planned) => {
            let child = planned.child;
            let exit = match quick_exit(planned) {
                QuickExit::Nothing => Exit::clean(),
                QuickExit::Commit {
                    mut pooled,
                    depth_before,
                    foreign,
                    callbacks,
                    route,
                } => {
                    let conn = pooled.inner();
                    let error = match conn.commit().await {
                        Ok(()) => {
                            tracing::debug!(alias, "COMMIT");
                            None
                        }
                        Err(error) => Some(
                            Box::pin(block::commit_failed(alias, conn, depth_before, error)).await,
                        ),
                    };
                    // Back to the pool before the callbacks run (C3), or closed if
                    // diesel-async reports it broken or inside a transaction.
                    release(pooled);
                    let committed = error.is_none();
                    block::outermost_exit(alias, error, committed, foreign, callbacks, route)
                }
                QuickExit::General(planned) => {
                    Box::pin(block::carry_out(alias, planned, None)).await
                }
            };
            block::exited(alias, armed, child, succeeded, exit)
        }
        None => Exit::clean(),
    }
}

/// How a block enters, decided in one look at the table.
enum Entry {
    /// Open at once (a merged block, rule E3): no SQL.
    Open(Entered),
    /// The alias's outermost block: a connection to check out, BEGIN, then push (E2).
    CheckOut,
    /// Not the common path: `block::enter_general` decides, the block's state untouched so far.
    /// `request_due`: the request's transaction of the alias is marked beginning (rule Q1),
    /// its BEGIN still to send.
    General { request_due: bool },
}

/// `block::enter` for an ambient block when nothing needs awaiting before the plan: no
/// request transaction due on the alias, and the alias's turn (A3).
fn quick_enter(options: &BlockOptions<'_>) -> Result<Entry, Error> {
    let alias = options.using;
    state::with_task(|task| {
        let index = match block::common_path_index(task, alias) {
            Ok(index) => index,
            Err(request_due) => return Ok(Entry::General { request_due }),
        };
        let (state, others) = task.states.with_others(index);
        Ok(match rules::plan_enter(state, others, options, None)? {
            EnterPlan::Merged(entered) => Entry::Open(entered),
            // A replica block's connection is a replica's (rule P1): `block::enter` routes it.
            EnterPlan::CheckOut if !options.begin.replica => Entry::CheckOut,
            // Plans that change nothing before they are carried out.
            EnterPlan::CheckOut
            | EnterPlan::AmbientSavepoint
            | EnterPlan::OnCallersConnection { .. } => Entry::General { request_due: false },
        })
    })
}

/// A plan whose SQL is a plain COMMIT on the block's pooled connection (or none), awaited in
/// place; any other goes back to `block::carry_out`.
enum QuickExit {
    Nothing,
    Commit {
        pooled: Box<dyn crate::adapter::async_connection::AsyncPooledConn>,
        depth_before: u32,
        foreign: Foreign,
        callbacks: Vec<AsyncCallback>,
        route: Route,
    },
    General(Planned),
}

fn quick_exit(mut planned: Planned) -> QuickExit {
    let block_depth = match planned.plan {
        _ if planned.child != Cancelled::No => return QuickExit::General(planned),
        Leave::Done => return QuickExit::Nothing,
        Leave::Outermost {
            success: true,
            depth_before,
            ..
        } if !planned.remember => depth_before + 1,
        _ => return QuickExit::General(planned),
    };
    let Some(mut pooled) = planned.pooled.take() else {
        return QuickExit::General(planned);
    };
    // A level left open above the block's own (a panic inside it) is rolled back first.
    if block::levels_left_open(pooled.inner(), block_depth).is_err() {
        planned.pooled = Some(pooled);
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
            pooled,
            depth_before,
            foreign,
            callbacks,
            route,
        },
        plan => QuickExit::General(Planned {
            plan,
            pooled: Some(pooled),
            ..planned
        }),
    }
}
