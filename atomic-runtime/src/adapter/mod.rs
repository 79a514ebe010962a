//! The diesel adapter: everything the runtime knows about diesel, in one leaf that nothing of
//! the runtime imports back into.
//!
//! - [`connection`]: type erasure (`TxConnection`, `PooledConn`) and connection identity.
//! - [`internals`]: the diesel internals we lean on (transaction depth and its bookkeeping,
//!   savepoint names, the test-transaction flag, backend detection), one function each.
//! - [`prepared`]: SQLite's transaction statements through diesel's statement cache.
//! - [`begin_sql`]: BEGIN with an isolation level, read-only or lock mode, per backend.
//! - [`classify`]: what an error or a server setting means (transient failures, isolation).
//! - [`replication`]: where a commit is in the primary's log, and whether a replica replayed it
//!   (rule P2).
//! - `async_connection` (feature `async`): the same for diesel-async's connections and pools.
//! - `async_replication` (feature `async`): [`replication`]'s queries on diesel-async's
//!   connections.

#[cfg(feature = "async")]
pub(crate) mod async_connection;
#[cfg(feature = "async")]
pub(crate) mod async_replication;
pub(crate) mod begin_sql;
pub(crate) mod classify;
pub(crate) mod connection;
pub(crate) mod internals;
pub(crate) mod prepared;
pub(crate) mod replication;

pub(crate) use connection::{ConnectionId, PooledConn, TxConnection};
pub(crate) use internals::BackendKind;
