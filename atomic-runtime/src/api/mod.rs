//! The public API: what users call, each entry point beginning a due request transaction
//! (`scope::request::touch`) before it hands over to the engine.
//!
//! - [`ambient`]: `connection()`, `db(alias)` and the `Db` handle; the runners the macro's
//!   expansion and `transaction::Atomic` share.
//! - [`transaction`]: Django's `django.db.transaction` (`atomic`, `Atomic`, `on_commit`, the
//!   rollback flag, manual savepoints).
//! - [`retry`]: rerunning a durable block after a transient failure.
//! - [`create`]: `get_or_create` and its family.
//! - [`savepoint`]: manual savepoints' SQL.
//! - [`test_attribute`]: what `#[diesel_atomic::test]` runs around a test.

#[cfg(feature = "async")]
pub mod aio;
pub(crate) mod ambient;
pub mod create;
pub(crate) mod retry;
pub(crate) mod savepoint;
pub(crate) mod test_attribute;
pub mod transaction;
