//! The default alias from async code, as [`crate::transaction`] is from sync code.

use std::future::Future;

use diesel_async::AsyncConnection;

use super::{AsyncFunc, AsyncFunc0, db, run_ambient, run_explicit};
use crate::databases::DEFAULT_DB_ALIAS;
use crate::error::Error;
use crate::options::{BeginMode, BeginOptions, BlockOptions, Isolation};

/// Runs `f` as an atomic block on the default alias (`#[atomic] async fn` in ambient mode).
pub async fn atomic<T, E, F>(f: F) -> Result<T, E>
where
    E: From<Error>,
    F: AsyncFunc0<Result<T, E>>,
{
    run_ambient(&BlockOptions::nested(DEFAULT_DB_ALIAS), f).await
}

/// A block with options, for async code: the builder twin of `#[atomic(...)] async fn`.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel_atomic::aio::transaction::Atomic;
/// let block = Atomic::new().using("other").durable(true);
/// # drop(block);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atomic {
    using: String,
    savepoint: bool,
    durable: bool,
    begin: BeginOptions,
}

impl Default for Atomic {
    fn default() -> Self {
        Atomic::new()
    }
}

impl Atomic {
    /// A block on the default alias with Django's defaults.
    pub fn new() -> Atomic {
        let defaults = BlockOptions::nested(DEFAULT_DB_ALIAS);
        Atomic {
            using: defaults.using.to_owned(),
            savepoint: defaults.savepoint,
            durable: defaults.durable,
            begin: defaults.begin,
        }
    }

    /// The alias the block runs on.
    pub fn using(mut self, alias: &str) -> Atomic {
        alias.clone_into(&mut self.using);
        self
    }

    /// Whether a nested block gets a savepoint (default true).
    pub fn savepoint(mut self, on: bool) -> Atomic {
        self.savepoint = on;
        self
    }

    /// Whether the block must be outermost (default false).
    pub fn durable(mut self, on: bool) -> Atomic {
        self.durable = on;
        self
    }

    /// The isolation level of the block's BEGIN (outermost only).
    pub fn isolation(mut self, level: Isolation) -> Atomic {
        self.begin.isolation = Some(level);
        self
    }

    /// A read-only transaction (outermost only).
    pub fn read_only(mut self, on: bool) -> Atomic {
        self.begin.read_only = on;
        self
    }

    /// SQLite's lock mode at BEGIN (outermost only).
    pub fn begin(mut self, mode: BeginMode) -> Atomic {
        self.begin.mode = Some(mode);
        self
    }

    fn options(&self) -> BlockOptions<'_> {
        BlockOptions {
            using: &self.using,
            savepoint: self.savepoint,
            durable: self.durable,
            begin: self.begin,
        }
    }

    /// Runs `f` as an ambient block with these options.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<Error>,
        F: AsyncFunc0<Result<T, E>>,
    {
        run_ambient(&self.options(), f).await
    }

    /// Runs `f` as a block on `conn` with these options (explicit mode).
    pub async fn run_on<C, T, E, F>(&self, conn: &mut C, f: F) -> Result<T, E>
    where
        C: AsyncConnection + 'static,
        E: From<Error>,
        for<'r> F: AsyncFnOnce(&'r mut C) -> Result<T, E> + AsyncFunc<&'r mut C, Result<T, E>>,
    {
        run_explicit(&self.options(), conn, f).await
    }
}

/// [`Db::on_commit`](super::Db::on_commit) on the default alias.
pub fn on_commit(f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit(f)
}

/// [`Db::on_commit_robust`](super::Db::on_commit_robust) on the default alias.
pub fn on_commit_robust(f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit_robust(f)
}

/// [`Db::on_commit_async`](super::Db::on_commit_async) on the default alias.
pub fn on_commit_async(f: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).on_commit_async(f)
}

/// [`Db::set_rollback`](super::Db::set_rollback) on the default alias.
pub fn set_rollback(rollback: bool) -> Result<(), Error> {
    db(DEFAULT_DB_ALIAS).set_rollback(rollback)
}

/// [`Db::get_rollback`](super::Db::get_rollback) on the default alias.
pub fn get_rollback() -> Result<bool, Error> {
    db(DEFAULT_DB_ALIAS).get_rollback()
}

/// [`Db::in_atomic_block`](super::Db::in_atomic_block) on the default alias.
pub fn in_atomic_block() -> bool {
    db(DEFAULT_DB_ALIAS).in_atomic_block()
}
