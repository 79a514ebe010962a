//! Rerunning a whole durable block after a transient failure: a serialization failure
//! (SQLSTATE 40001), a deadlock (PostgreSQL 40P01, MySQL/MariaDB 1213) or `SQLITE_BUSY`.
//!
//! Only the outermost block is retried: after such a failure the database has rolled the
//! transaction back (or will at our ROLLBACK), so rerunning an inner block would run it in a
//! transaction that is already lost. A COMMIT whose outcome is unknown (the connection broke
//! during it, SQLSTATE 40003) is never retried: it may have committed.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use diesel::Connection;
use diesel::result::Error as DieselError;

use crate::adapter::TxConnection;
use crate::adapter::classify::{is_unique_violation, transient_code};
use crate::engine::rules::{self, AttemptFailure};
use crate::engine::{block, state};
use crate::error::Error;
use crate::options::BlockOptions;
use crate::scope::request;

/// How often and how patiently a durable block is rerun after a transient failure.
///
/// `RetryPolicy::new(5)` reruns the block up to 5 more times (6 attempts in all), waiting
/// between attempts with capped exponential backoff and jitter: before retry `n` (from 1) a
/// random time between half and all of `min(cap, base · 2ⁿ⁻¹)`. The defaults are a 2 ms base
/// and a 200 ms cap.
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use std::time::Duration;
/// use diesel_atomic::RetryPolicy;
///
/// let policy = RetryPolicy::new(5).backoff(Duration::from_millis(1), Duration::from_millis(50));
/// assert_eq!(policy.retries(), 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    retries: u32,
    base: Duration,
    cap: Duration,
}

impl RetryPolicy {
    /// Up to `retries` reruns, with the default backoff.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// assert_eq!(diesel_atomic::RetryPolicy::new(3).retries(), 3);
    /// ```
    pub const fn new(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            base: Duration::from_millis(2),
            cap: Duration::from_millis(200),
        }
    }

    /// The backoff before the first retry (`base`, doubled before each further one) and its
    /// ceiling (`cap`).
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// use std::time::Duration;
    /// let policy = diesel_atomic::RetryPolicy::new(3).backoff(Duration::ZERO, Duration::ZERO);
    /// # drop(policy);
    /// ```
    pub const fn backoff(mut self, base: Duration, cap: Duration) -> RetryPolicy {
        self.base = base;
        self.cap = cap;
        self
    }

    /// How many reruns the policy allows.
    ///
    /// ```
    /// # extern crate atomic_runtime as diesel_atomic;
    /// assert_eq!(diesel_atomic::RetryPolicy::new(0).retries(), 0);
    /// ```
    pub const fn retries(&self) -> u32 {
        self.retries
    }

    /// The wait before retry number `retry` (1 for the first).
    pub(crate) fn delay(&self, retry: u32, jitter: &mut Jitter) -> Duration {
        let doubled = self.base.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let ceiling = doubled.min(self.cap);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.next_unit())
    }
}

/// What the retry loop reads from a block's error type: the diesel error inside, if any.
///
/// Implemented for [`diesel::result::Error`] and [`crate::Error`]. An application error type
/// used with `retry` implements it by handing out the diesel error it wraps:
///
/// ```
/// # extern crate atomic_runtime as diesel_atomic;
/// use diesel_atomic::AsDieselError;
///
/// enum AppError {
///     Db(diesel::result::Error),
///     Runtime(diesel_atomic::Error),
///     NotFound,
/// }
///
/// impl AsDieselError for AppError {
///     fn as_diesel_error(&self) -> Option<&diesel::result::Error> {
///         match self {
///             AppError::Db(error) => Some(error),
///             AppError::Runtime(error) => error.as_diesel_error(),
///             AppError::NotFound => None,
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`retry` cannot tell what failed in `{Self}`: it does not implement \
               `diesel_atomic::AsDieselError`",
    label = "the error type of a block with `retry`",
    note = "implement `diesel_atomic::AsDieselError` for `{Self}`, returning the \
            `diesel::result::Error` it wraps (or `None`), so serialization failures and \
            deadlocks can be retried"
)]
pub trait AsDieselError {
    /// The diesel error this error carries, if any.
    fn as_diesel_error(&self) -> Option<&DieselError>;
}

impl AsDieselError for DieselError {
    fn as_diesel_error(&self) -> Option<&DieselError> {
        Some(self)
    }
}

impl AsDieselError for Error {
    fn as_diesel_error(&self) -> Option<&DieselError> {
        match self {
            Error::Database(error) => Some(error),
            _ => None,
        }
    }
}

/// Records that the current transaction on `alias` failed on a row its snapshot cannot see
/// (`get_or_create` lost a race under REPEATABLE READ or SERIALIZABLE): rerunning the whole
/// transaction, with a new snapshot, succeeds, so a retrying block around it reruns.
pub(crate) fn note_hidden_conflict(alias: &str) {
    state::with(alias, |state| state.hidden_conflict = true);
}

fn take_hidden_conflict(alias: &str) -> bool {
    state::with(alias, |state| std::mem::take(&mut state.hidden_conflict))
}

/// A durable block on the alias's ambient connection, rerun per `policy`.
pub fn run_ambient_retry<T, E>(
    options: &BlockOptions<'_>,
    policy: RetryPolicy,
    mut body: impl FnMut() -> Result<T, E>,
) -> Result<T, E>
where
    E: From<Error> + AsDieselError,
{
    attempts(options, policy, &mut (), block::ambient, |_| body())
}

/// A durable block on `conn`, rerun per `policy`.
pub fn run_explicit_retry<C, T, E>(
    options: &BlockOptions<'_>,
    policy: RetryPolicy,
    conn: &mut C,
    body: impl FnMut(&mut C) -> Result<T, E>,
) -> Result<T, E>
where
    C: Connection,
    E: From<Error> + AsDieselError,
{
    attempts(options, policy, conn, |conn| Some(conn), body)
}

/// A durable block on a connection held by `owner`, rerun per `policy`.
pub fn run_explicit_field_retry<S, C, T, E>(
    options: &BlockOptions<'_>,
    policy: RetryPolicy,
    owner: &mut S,
    field: impl Fn(&mut S) -> &mut C,
    body: impl FnMut(&mut S) -> Result<T, E>,
) -> Result<T, E>
where
    S: ?Sized,
    C: Connection,
    E: From<Error> + AsDieselError,
{
    attempts(options, policy, owner, |owner| Some(field(owner)), body)
}

/// The retry loop around one attempt (enter, body, leave): `rules::retry_reason` decides.
fn attempts<S, C, T, E>(
    options: &BlockOptions<'_>,
    policy: RetryPolicy,
    owner: &mut S,
    connection: impl Fn(&mut S) -> Option<&mut C>,
    mut body: impl FnMut(&mut S) -> Result<T, E>,
) -> Result<T, E>
where
    S: ?Sized,
    C: TxConnection + ?Sized,
    E: From<Error> + AsDieselError,
{
    let alias = options.using;
    if !options.durable {
        return Err(Error::RetryNeedsDurable {
            alias: alias.to_owned(),
        }
        .into());
    }
    let mut jitter = Jitter::new();
    let mut retry = 0;
    loop {
        request::touch(alias)?;
        take_hidden_conflict(alias);
        let attempted = block::attempt(options, owner, &connection, &mut body, |outcome, exit| {
            (outcome, exit)
        });
        let hidden_conflict = take_hidden_conflict(alias);
        let reason = match attempted {
            // BEGIN failed (SQLite's BEGIN IMMEDIATE busy, say): nothing ran yet.
            Err(error) => match error.as_diesel_error().and_then(transient_code) {
                Some(code) if retry < policy.retries => code,
                _ => return Err(error.into()),
            },
            Ok((outcome, exit)) => {
                let failure = attempt_failure(&outcome, exit.error.as_ref(), hidden_conflict);
                match failure.and_then(rules::retry_reason) {
                    Some(code) if retry < policy.retries => code,
                    Some(code) => {
                        tracing::warn!(
                            alias,
                            attempts = retry + 1,
                            sqlstate = code,
                            "atomic block failed with a transient error; no retries left"
                        );
                        return block::finish(alias, outcome, exit);
                    }
                    None => return block::finish(alias, outcome, exit),
                }
            }
        };
        retry += 1;
        let backoff = policy.delay(retry, &mut jitter);
        tracing::warn!(
            alias,
            attempt = retry + 1,
            sqlstate = reason,
            backoff_us = u64::try_from(backoff.as_micros()).unwrap_or(u64::MAX),
            "retrying atomic block after a transient failure"
        );
        std::thread::sleep(backoff);
    }
}

/// What failed in an attempt, for `rules::retry_reason`; `None` when it succeeded.
pub(crate) fn attempt_failure<T, E: AsDieselError>(
    outcome: &std::thread::Result<Result<T, E>>,
    exit_error: Option<&Error>,
    hidden_conflict: bool,
) -> Option<AttemptFailure> {
    let body_error = match outcome {
        Ok(Ok(_)) if exit_error.is_none() => return None,
        Ok(Ok(_)) => None,
        Ok(Err(error)) => error.as_diesel_error(),
        Err(_) => None,
    };
    Some(AttemptFailure {
        panicked: outcome.is_err(),
        body_transient: body_error.and_then(transient_code),
        body_unique_violation: body_error.is_some_and(is_unique_violation),
        // A COMMIT's failure counts only when the body succeeded.
        commit_transient: match outcome {
            Ok(Ok(_)) => exit_error
                .and_then(AsDieselError::as_diesel_error)
                .and_then(transient_code),
            _ => None,
        },
        hidden_conflict,
    })
}

/// xorshift64*, seeded from the standard library's per-process random keys: jitter needs to
/// differ between threads and processes, not to be unpredictable.
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new() -> Jitter {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_usize(&hasher as *const _ as usize);
        Jitter(hasher.finish() | 1)
    }

    /// A number in [0, 1).
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let policy =
            RetryPolicy::new(10).backoff(Duration::from_millis(2), Duration::from_millis(20));
        let mut jitter = Jitter::new();
        for (retry, ceiling_ms) in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 20), (9, 20), (40, 20)] {
            let ceiling = Duration::from_millis(ceiling_ms);
            for _ in 0..100 {
                let delay = policy.delay(retry, &mut jitter);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{retry}: {delay:?}"
                );
            }
        }
    }
}
