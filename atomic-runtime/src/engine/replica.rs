//! Reads on replicas, for sync code (rules P1 and P2): the connection a read or a `replica =
//! true` block gets — a replica, once it has replayed the thread's last commit on the alias,
//! or the primary — and what a COMMIT leaves for later reads. The decisions are
//! `rules::route_read` and `rules::what_to_remember`; the SQL is `adapter::replication`'s.

use diesel::Connection;

use crate::adapter::{PooledConn, replication};
use crate::databases::{self, Database, ReplicaSet};
use crate::engine::lend::Lent;
use crate::engine::rules::{self, ReadRoute, Remember, WaitFor};
use crate::engine::state::{self, Position};
use crate::error::Error;

/// Runs `f` on the connection a read on `alias` gets: inside a block of the alias the
/// block's, else a replica's or the primary's (rules P1, P2), lent for the call.
pub(crate) fn read<C, T, E>(alias: &str, f: impl FnOnce(&mut C) -> Result<T, E>) -> Result<T, E>
where
    C: Connection + 'static,
    E: From<Error>,
{
    let mut lent = lend_for_read(alias)?;
    let expected = lent.pooled().type_name();
    let Some(conn) = lent.pooled().inner_any().downcast_mut::<C>() else {
        return Err(Error::WrongConnectionType {
            alias: alias.to_owned(),
            expected,
        }
        .into());
    };
    f(conn)
}

/// The connection of a read, lent as `connection()` lends one.
fn lend_for_read(alias: &str) -> Result<Lent<'_>, Error> {
    #[cfg(feature = "async")]
    if crate::engine::aio::state::held_by_async_block(alias) {
        return Err(crate::engine::block::sync_inside_async(alias));
    }
    // A program without replicas reads as `connection()` does, without a registry lookup.
    if !databases::replicas_configured() {
        return Lent::take_to_read(alias);
    }
    let database = databases::lookup(alias)?;
    let Some(replicas) = database.replicas(alias)? else {
        return Lent::take_to_read(alias);
    };
    match route(alias, &replicas) {
        ReadRoute::Primary(_) => Lent::take_to_read(alias),
        ReadRoute::Replica { index, wait } => {
            match ready_replica(alias, &database, &replicas, index, wait) {
                Some(pooled) => Ok(Lent::checked_out(alias, pooled)),
                None => Lent::take_to_read(alias),
            }
        }
    }
}

/// The connection an outermost `replica = true` block begins on: a replica's, or the
/// primary's when the alias has none, the thread's commit sends it there
/// (`ReadYourWrites::Primary`), or the replica is unreachable or lags.
///
/// An alias without replicas runs the block on the primary rather than failing: the block is
/// read-only either way and sees data at least as fresh as a replica's, so its answer is one a
/// replica could have given, and development and test setups without replicas run the same
/// code. A replica that is configured but unusable is an error (`ReplicaMisconfigured`), never
/// this fallback.
pub(crate) fn checkout_for_block(
    alias: &str,
    database: &Database,
) -> Result<Box<dyn PooledConn>, Error> {
    let Some(replicas) = database.replicas(alias)? else {
        tracing::debug!(
            alias,
            "replica = true on an alias without replicas: the block runs on the primary"
        );
        return database.checkout(alias);
    };
    match route(alias, &replicas) {
        ReadRoute::Primary(because) => {
            tracing::debug!(
                alias,
                ?because,
                "replica = true: the block runs on the primary"
            );
            database.checkout(alias)
        }
        ReadRoute::Replica { index, wait } => {
            match ready_replica(alias, database, &replicas, index, wait) {
                Some(pooled) => {
                    tracing::debug!(
                        alias,
                        replica = index,
                        "replica = true: the block runs on a replica"
                    );
                    Ok(pooled)
                }
                None => database.checkout(alias),
            }
        }
    }
}

/// Rules P1–P2's route for `alias` now.
fn route(alias: &str, replicas: &ReplicaSet<'_>) -> ReadRoute {
    let turn = replicas.turn();
    let scope_start = state::read_scope_start();
    state::with(alias, |state| {
        rules::route_read(state, replicas.len(), replicas.policy, scope_start, turn)
    })
}

/// A connection of replica `index` that has replayed what `wait` names, or `None` after
/// exactly one WARN event saying why the read goes to the primary instead.
fn ready_replica(
    alias: &str,
    database: &Database,
    replicas: &ReplicaSet<'_>,
    index: usize,
    wait: Option<WaitFor>,
) -> Option<Box<dyn PooledConn>> {
    let mut pooled = match replicas.checkout(index) {
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
            let answer = primary_position(alias, database);
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
    let waited = replication::wait_for(&mut *pooled, &position, timeout);
    let record = |position| state::with(alias, |state| rules::replayed(state, index, &position));
    after_wait(alias, index, position, timeout, "thread", waited, record).then_some(pooled)
}

/// The primary's current position, at or past every commit made before (for a commit whose
/// own position was not read).
fn primary_position(alias: &str, database: &Database) -> Result<Option<Box<str>>, String> {
    let mut pooled = database
        .checkout(alias)
        .map_err(|error| error.to_string())?;
    replication::current_position(&mut *pooled)
        .map(|position| position.map(Into::into))
        .map_err(|error| error.to_string())
}

/// The one WARN event of a read that goes to the primary instead of a replica (the async
/// executor's too).
#[cold]
pub(crate) fn on_primary_instead(alias: &str, replica: usize, reason: &str) {
    tracing::warn!(
        alias,
        replica,
        reason,
        "alias '{alias}': reading from the primary instead of replica {replica}: {reason}"
    );
}

/// What a read waits for once the primary was asked its position for a commit whose own
/// position is unknown (rule P2). Shared by both executors.
pub(crate) enum Resolved {
    /// Wait for the replica to replay this position.
    Wait(Box<str>),
    /// The primary has no position to give (nothing to wait for): read the replica.
    Nothing,
    /// The primary could not be asked: the read goes to the primary (its WARN is logged).
    OnPrimary,
}

/// [`Resolved`] from the primary's answer; a known position is handed to `record` (the
/// executor's state) so later reads do not ask again.
pub(crate) fn resolved(
    alias: &str,
    replica: usize,
    answer: Result<Option<Box<str>>, String>,
    record: impl FnOnce(Option<Box<str>>),
) -> Resolved {
    match answer {
        Ok(position) => {
            record(position.clone());
            match position {
                Some(position) => Resolved::Wait(position),
                None => Resolved::Nothing,
            }
        }
        Err(reason) => {
            on_primary_instead(
                alias,
                replica,
                &format!("the primary's position could not be read ({reason})"),
            );
            Resolved::OnPrimary
        }
    }
}

/// Whether the read goes to replica `replica` after its wait for `position` ended with
/// `waited`: yes when it replayed it (handed to `record`, the executor's state), else one
/// WARN and the primary. `whose` names whose commit it waited for ("thread", "task"). Shared
/// by both executors.
pub(crate) fn after_wait(
    alias: &str,
    replica: usize,
    position: Box<str>,
    timeout: std::time::Duration,
    whose: &str,
    waited: Result<bool, replication::Unavailable>,
    record: impl FnOnce(Position),
) -> bool {
    match waited {
        Ok(true) => {
            record(Position::Known(position));
            true
        }
        Ok(false) => {
            on_primary_instead(
                alias,
                replica,
                &format!(
                    "it has not replayed this {whose}'s last commit ({position}) within \
                     {timeout:?}"
                ),
            );
            false
        }
        Err(error) => {
            on_primary_instead(
                alias,
                replica,
                &format!("waiting for it to replay this {whose}'s last commit failed ({error})"),
            );
            false
        }
    }
}

/// Rule P2 after the COMMIT of an outermost block that may have written on the primary
/// (`rules::commit_to_remember`), or at the end of a `connection()` call outside blocks
/// (`rules::lend_to_remember`): remembers it for later reads, with its position in the
/// primary's log read on `pooled`, the connection it committed on (`None`: the caller's
/// connection, which the runtime cannot query; the read then asks the primary). Only aliases
/// with replicas get here with something to do.
#[cold]
pub(crate) fn remember_commit(alias: &str, pooled: Option<&mut (dyn PooledConn + 'static)>) {
    let position = match to_remember(&databases::lookup(alias), alias) {
        Remember::Nothing => return,
        Remember::Commit => None,
        Remember::Position => match pooled {
            Some(conn) => commit_position(alias, replication::position_after_commit(conn)),
            None => Some(Position::Unknown),
        },
    };
    let serial = state::next_commit_serial();
    state::with(alias, |state| {
        rules::remember_commit(state, serial, position)
    });
}

/// What a commit on `alias` must leave for later reads (rule P2, `rules::what_to_remember`):
/// nothing for an alias that is not configured, has no replica or a misconfigured one (its
/// reads fail with that error anyway). Shared by both executors.
pub(crate) fn to_remember(database: &Result<Database, Error>, alias: &str) -> Remember {
    match database.as_ref().map(|database| database.replicas(alias)) {
        Ok(Ok(Some(replicas))) => rules::what_to_remember(replicas.len(), replicas.policy),
        _ => Remember::Nothing,
    }
}

/// The position to remember from the answer of the query after a COMMIT: its value, or, when
/// the query failed, `Unknown` (the next read then asks the primary) with a WARN event.
/// Shared by both executors.
pub(crate) fn commit_position(
    alias: &str,
    answer: Result<Option<String>, replication::Unavailable>,
) -> Option<Position> {
    match answer {
        Ok(position) => position.map(|position| Position::Known(position.into())),
        Err(error) => {
            tracing::warn!(
                alias,
                %error,
                "reading the position of a COMMIT failed; the next read on a replica waits \
                 for the primary's current position instead"
            );
            Some(Position::Unknown)
        }
    }
}
