//! The async executor (feature `async`): the same rules (`engine::rules`) over per-task state,
//! awaiting diesel-async's SQL, failing closed when a block's future is dropped (rule A2).
//!
//! - [`state`]: the task's table of alias states, and turn-taking for `join!`ed blocks (A3).
//! - [`block`]: enter, run the body, leave; the cancellation guard.
//! - [`explicit`], [`ambient`]: a block's common path in each mode, with `block`'s steps
//!   for the rest.
//! - [`lend`]: `aio::connection`'s access to the alias's connection.
//! - [`hooks`]: on_commit callbacks, plain and async (A4).
//! - [`replica`]: reads on replicas, and what a commit leaves for the task's later reads (P1,
//!   P2).
//! - [`stale`]: caller-owned connections a cancelled block left inside a transaction.

pub(crate) mod ambient;
pub(crate) mod block;
pub(crate) mod explicit;
pub(crate) mod hooks;
pub(crate) mod lend;
pub(crate) mod replica;
pub(crate) mod stale;
pub(crate) mod state;
