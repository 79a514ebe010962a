//! The block engine: Django's rules over per-thread, per-alias state, and the sync executor
//! that carries them out.
//!
//! - [`state`]: the data (blocks, rollback flag, on_commit queue, connection slot) and the
//!   thread's table of it.
//! - [`rules`]: every decision, pure and unit-tested (docs/SEMANTICS.md maps each rule here).
//! - [`block`]: the sync executor: enter, run the body, leave, with the SQL of each step.
//! - [`lend`]: ambient access to an alias's connection.
//! - [`hooks`]: registering and running on_commit callbacks.
//! - [`replica`]: which connection a read or a `replica = true` block gets (rules P1, P2).

#[cfg(feature = "async")]
pub(crate) mod aio;
pub(crate) mod block;
pub(crate) mod hooks;
pub(crate) mod lend;
pub(crate) mod replica;
pub(crate) mod rules;
pub(crate) mod state;
