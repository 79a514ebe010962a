#![warn(missing_docs)]
//! The runtime behind `diesel-atomic`: database aliases, atomic blocks with Django's rules,
//! savepoints, on_commit callbacks and test helpers.
//!
//! Use it through the `diesel-atomic` facade, which adds the `#[atomic]` attribute.

mod ambient;
mod atomic;
mod begin;
mod connection;
mod databases;
mod error;
mod get_or_create;
mod hooks;
mod prepared;
mod request;
mod retry;
mod savepoint;
mod state;
pub mod testing;
pub mod transaction;

#[doc(hidden)]
pub mod __private;

pub use ambient::{Db, connection, db};
pub use begin::{BeginMode, Isolation};
pub use databases::{DEFAULT_DB_ALIAS, Database, Databases, DatabasesGuard};
pub use error::Error;
pub use get_or_create::{get_or_create, get_or_insert, update_or_create, update_or_insert};
pub use request::request;
pub use retry::{AsDieselError, RetryPolicy};
pub use savepoint::SavepointId;
