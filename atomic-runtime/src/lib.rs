#![warn(missing_docs)]
//! The runtime behind `diesel-atomic`: database aliases, atomic blocks with Django's rules,
//! savepoints, on_commit callbacks and test helpers.
//!
//! Use it through the `diesel-atomic` facade, which adds the `#[atomic]` attribute.
//!
//! The modules are layers, each importing only from the ones above it (docs/ARCHITECTURE.md):

// Vocabulary every layer shares.
mod error;
mod options;
// The diesel adapter: every diesel internal the runtime leans on.
mod adapter;
// The registry of aliases and their pools.
mod databases;
// The block engine: Django's rules (pure) and the sync executor that carries them out, with
// the routing of reads to replicas.
mod engine;
// Scopes around blocks: requests and test transactions.
mod scope;
// The public API.
#[doc(hidden)]
pub mod __private;
mod api;

#[cfg(feature = "async")]
pub use api::aio;
pub use api::ambient::{Db, connection, db, read};
pub use api::create::{get_or_create, get_or_insert, update_or_create, update_or_insert};
pub use api::retry::{AsDieselError, RetryPolicy};
pub use api::{create, transaction};
#[doc(hidden)]
pub use databases::ErasedReplica;
pub use databases::{DEFAULT_DB_ALIAS, Database, Databases, DatabasesGuard, ReplicaPool};
pub use error::Error;
pub use options::{BeginMode, Isolation, ReadYourWrites};
pub use scope::request::request;
pub use scope::testing;
pub use transaction::SavepointId;
