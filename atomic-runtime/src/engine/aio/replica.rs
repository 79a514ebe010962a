//! Reads on replicas for async code (rules P1 and P2): the async twin of `engine::replica`.
//! The decisions are the same calls (`rules::route_read`, `rules::what_to_remember`); the SQL
//! is `adapter::async_replication`'s, awaited.
//!
//! What differs is whose commits a read must see: the task's (or the request's), not the
//! thread's. A task's table lives for one outermost call, so what a call's COMMIT leaves for
//! later reads is handed from one call of the task to the next through [`carry`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::adapter::async_connection::{AsyncPooledConn, AsyncTx};
use crate::adapter::async_replication;
use crate::databases::{self, ReplicaSet};
use crate::engine::aio::block::{checkout, lookup};
use crate::engine::aio::lend::Lent;
use crate::engine::aio::state::{self, Task};
use crate::engine::replica::{
    Resolved, after_wait, commit_position, on_primary_instead, resolved, to_remember,
};
use crate::engine::rules::{self, ReadRoute, Remember, WaitFor};
use crate::engine::state::{LastCommit, Position};
use crate::error::Error;

/// The connection a read on `alias` gets: inside a block of the alias the block's, else a
/// replica's or the primary's (rules P1, P2), lent for the call.
pub(crate) async fn lend_for_read(alias: &str) -> Result<Lent<'_>, Error> {
    // A program without replicas reads as `connection()` does, without a registry lookup.
    if !databases::replicas_configured() {
        return Lent::take_to_read(alias).await;
    }
    let database = lookup(alias)?;
    let Some(replicas) = database.replicas(alias)? else {
        return Lent::take_to_read(alias).await;
    };
    state::turn(alias).await;
    match route(alias, &replicas) {
        ReadRoute::Primary(_) => Lent::take_to_read(alias).await,
        ReadRoute::Replica { index, wait } => {
            match ready_replica(alias, &replicas, index, wait).await {
                Some(pooled) => Ok(Lent::checked_out(alias, pooled)),
                None => Lent::take_to_read(alias).await,
            }
        }
    }
}

/// The connection an outermost `replica = true` block begins on: a replica's, or the
/// primary's when the alias has none, the task's commit sends it there
/// (`ReadYourWrites::Primary`), or the replica is unreachable or lags (see the sync
/// `engine::replica::checkout_for_block`, whose reasons hold here).
pub(crate) async fn checkout_for_block(alias: &str) -> Result<Box<dyn AsyncPooledConn>, Error> {
    let database = lookup(alias)?;
    let Some(replicas) = database.replicas(alias)? else {
        tracing::debug!(
            alias,
            "replica = true on an alias without replicas: the block runs on the primary"
        );
        return checkout(alias).await;
    };
    match route(alias, &replicas) {
        ReadRoute::Primary(because) => {
            tracing::debug!(
                alias,
                ?because,
                "replica = true: the block runs on the primary"
            );
            checkout(alias).await
        }
        ReadRoute::Replica { index, wait } => {
            match ready_replica(alias, &replicas, index, wait).await {
                Some(pooled) => {
                    tracing::debug!(
                        alias,
                        replica = index,
                        "replica = true: the block runs on a replica"
                    );
                    Ok(pooled)
                }
                None => checkout(alias).await,
            }
        }
    }
}

/// Rules P1–P2's route for `alias` now.
fn route(alias: &str, replicas: &ReplicaSet<'_>) -> ReadRoute {
    let turn = replicas.turn();
    state::with_task(|task| {
        let scope_start = task.read_scope_start;
        let index = task.states.index(alias);
        rules::route_read(
            task.states.at(index),
            replicas.len(),
            replicas.policy,
            scope_start,
            turn,
        )
    })
}

/// A connection of replica `index` that has replayed what `wait` names, or `None` after
/// exactly one WARN event saying why the read goes to the primary instead.
async fn ready_replica(
    alias: &str,
    replicas: &ReplicaSet<'_>,
    index: usize,
    wait: Option<WaitFor>,
) -> Option<Box<dyn AsyncPooledConn>> {
    let mut pooled = match replicas.checkout_async(alias, index).await {
        Ok(pooled) => pooled,
        Err(error) => {
            on_primary_instead(alias, index, &format!("it cannot be reached ({error})"));
            return None;
        }
    };
    let Some(WaitFor { position, timeout }) = wait else {
        return Some(pooled);
    };
    let position = match position {
        Position::Known(position) => position,
        Position::Unknown => {
            let answer = primary_position(alias).await;
            let record = |position| {
                state::with(alias, |state| rules::position_resolved(state, position));
            };
            match resolved(alias, index, answer, record) {
                Resolved::Wait(position) => position,
                Resolved::Nothing => return Some(pooled),
                Resolved::OnPrimary => return None,
            }
        }
    };
    // Marked broken while awaited, as `position_after_commit` explains.
    let conn = pooled.inner();
    conn.mark_broken();
    let waited = async_replication::wait_for(&mut *conn, &position, timeout).await;
    conn.clear_broken();
    let record = |position| state::with(alias, |state| rules::replayed(state, index, &position));
    after_wait(alias, index, position, timeout, "task", waited, record).then_some(pooled)
}

/// The primary's current position, at or past every commit made before (for a commit whose
/// own position was not read).
async fn primary_position(alias: &str) -> Result<Option<Box<str>>, String> {
    let mut pooled = checkout(alias).await.map_err(|error| error.to_string())?;
    // Marked broken while awaited, as `position_after_commit` explains.
    let conn = pooled.inner();
    conn.mark_broken();
    let position = async_replication::current_position(&mut *conn).await;
    conn.clear_broken();
    position
        .map(|position| position.map(Into::into))
        .map_err(|error| error.to_string())
}

/// Rule P2 after the COMMIT of an outermost block that may have written on the primary
/// (`rules::commit_to_remember`), or at the end of an `aio::connection()` call outside blocks
/// (`rules::lend_to_remember`): remembers it for the task's later reads, with its position
/// in the primary's log read on `conn`, the connection it committed on (`None`: a connection
/// that cannot be asked now; the read then asks the primary). Only aliases with replicas get
/// here with something to do.
#[cold]
pub(crate) async fn remember_commit(alias: &str, conn: Option<&mut dyn AsyncTx>) {
    let position = match to_remember(&lookup(alias), alias) {
        Remember::Nothing => return,
        Remember::Commit => None,
        Remember::Position => match conn {
            Some(conn) => commit_position(alias, position_after_commit(conn).await),
            None => Some(Position::Unknown),
        },
    };
    let serial = next_commit_serial();
    state::with(alias, |state| {
        rules::remember_commit(state, serial, position)
    });
}

/// The position of the commit just made on `conn` (depth 0). Marked broken while the query is
/// awaited (as are the replica's wait and the primary's position query): dropped there (rule
/// A2; a read under `tokio::time::timeout` while it waits for a replica, say), the connection,
/// which may have the query's answer still unread, goes back to its pool broken and is
/// discarded: fail closed, rather than trust each client library to drain a cut-off answer
/// (tokio-postgres and mysql_async do, as the test of a dropped wait shows).
async fn position_after_commit(
    conn: &mut dyn AsyncTx,
) -> Result<Option<String>, crate::adapter::replication::Unavailable> {
    conn.mark_broken();
    let position = async_replication::position_after_commit(&mut *conn).await;
    conn.clear_broken();
    position
}

/// Rule P2 for a commit whose position cannot be read now (a destructor cannot await):
/// remembered as made, the primary's position read by the next replica read.
pub(crate) fn remember_commit_unknown(alias: &str) {
    let position = match to_remember(&lookup(alias), alias) {
        Remember::Nothing => return,
        Remember::Commit => None,
        Remember::Position => Some(Position::Unknown),
    };
    let serial = next_commit_serial();
    state::try_with_task(|task| {
        let index = task.states.index(alias);
        rules::remember_commit(task.states.at(index), serial, position);
    });
}

/// Commit serials of async code: one counter for the process, since a task moves between
/// threads (the sync runtime's are per thread).
static COMMIT_SERIAL: AtomicU64 = AtomicU64::new(0);

fn next_commit_serial() -> u64 {
    COMMIT_SERIAL.fetch_add(1, Ordering::Relaxed) + 1
}

/// The serial a request's read scope starts at: commits after it send the request's reads to
/// the primary under `ReadYourWrites::Primary`.
pub(crate) fn serial_now() -> u64 {
    COMMIT_SERIAL.load(Ordering::Relaxed)
}

// --- Carrying a task's commits from one call to the next ---------------------------------------

/// Who made a commit: a tokio task, or (for a future driven by `block_on`, which has no task
/// id and stays on its thread) a thread.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Maker {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

fn maker() -> Maker {
    match tokio::task::try_id() {
        Some(id) => Maker::Task(id),
        None => Maker::Thread(std::thread::current().id()),
    }
}

/// The remembered commits of tasks between their calls, by task. A task that ends leaves its
/// entry behind (nothing tells us it ended): past [`CARRIED_TASKS`] entries, the older half is
/// forgotten, and a forgotten commit reads like none (its replica read may not see it).
struct Carried {
    /// Each task's remembered commits, stamped with when they were carried (for forgetting
    /// the oldest).
    by_maker: HashMap<Maker, (u64, Remembered)>,
    stamp: u64,
}

/// A table's remembered commits, by alias.
type Remembered = Vec<(Box<str>, LastCommit)>;

static CARRIED: Mutex<Option<Carried>> = Mutex::new(None);

/// How many tasks' commits are carried between their calls at most.
const CARRIED_TASKS: usize = 65_536;

/// Hands what a call's table remembers (rule P2) to the task's next call, and empties it there
/// (an idle table is reused by other tasks). At the end of a task's outermost call.
pub(crate) fn carry(task: &mut Task) {
    let remembered: Remembered = task
        .states
        .iter_mut()
        .filter(|state| !state.last_commit.is_empty())
        .map(|state| (state.alias().into(), std::mem::take(&mut state.last_commit)))
        .collect();
    if remembered.is_empty() {
        return;
    }
    let mut carried = CARRIED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let carried = carried.get_or_insert_with(|| Carried {
        by_maker: HashMap::new(),
        stamp: 0,
    });
    if carried.by_maker.len() >= CARRIED_TASKS {
        let mut stamps: Vec<u64> = carried.by_maker.values().map(|(stamp, _)| *stamp).collect();
        stamps.sort_unstable();
        let median = stamps[stamps.len() / 2];
        carried.by_maker.retain(|_, (stamp, _)| *stamp >= median);
    }
    carried.stamp += 1;
    let stamp = carried.stamp;
    carried.by_maker.insert(maker(), (stamp, remembered));
}

/// Gives a task's new outermost call what its earlier calls remembered (see [`carry`]).
pub(crate) fn resume(task: &mut Task) {
    let remembered = {
        let mut carried = CARRIED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match carried.as_mut() {
            Some(carried) => carried.by_maker.remove(&maker()),
            None => None,
        }
    };
    let Some((_, remembered)) = remembered else {
        return;
    };
    for (alias, last_commit) in remembered {
        let index = task.states.index(&alias);
        task.states.at(index).last_commit = last_commit;
    }
}
