//! Retrying durable async blocks (`#[atomic(durable = true, retry = n)] async fn`): the sync
//! retry loop's decisions (`rules::retry_reason`, the same backoff), with the attempts and the
//! backoff awaited.

use diesel_async::AsyncConnection;

use super::{AsyncFuncMut, AsyncFuncMut0};
use crate::adapter::classify::transient_code;
use crate::api::retry::{AsDieselError, Jitter, RetryPolicy, attempt_failure};
use crate::engine::aio::block::{self, Exit, Outcome};
use crate::engine::aio::state;
use crate::engine::aio::{ambient, explicit};
use crate::engine::rules;
use crate::error::Error;
use crate::options::BlockOptions;

/// A durable ambient async block, rerun per `policy`.
pub async fn run_ambient_retry<T, E, F>(
    options: &BlockOptions<'_>,
    policy: RetryPolicy,
    mut body: F,
) -> Result<T, E>
where
    E: From<Error> + AsDieselError,
    F: AsyncFuncMut0<Result<T, E>>,
{
    state::scoped(Box::pin(async move {
        let alias = options.using;
        check_durable(options)?;
        crate::scope::aio_request::touch(alias).await?;
        let mut retries = Retries::new(policy);
        loop {
            take_hidden_conflict(alias);
            let attempted = ambient::attempt(options, body()).await;
            if let Some(done) = retries.after(alias, attempted).await {
                return done;
            }
        }
    }))
    .await
}

/// A durable explicit-mode async block on `conn`, rerun per `policy`.
pub async fn run_explicit_retry<C, T, E, F>(
    options: &BlockOptions<'_>,
    policy: RetryPolicy,
    conn: &mut C,
    mut body: F,
) -> Result<T, E>
where
    C: AsyncConnection + 'static,
    E: From<Error> + AsDieselError,
    for<'r> F: AsyncFuncMut<&'r mut C, Result<T, E>>,
{
    state::scoped(Box::pin(async move {
        let alias = options.using;
        check_durable(options)?;
        crate::scope::aio_request::touch(alias).await?;
        let mut retries = Retries::new(policy);
        loop {
            take_hidden_conflict(alias);
            let attempted = explicit::attempt(options, conn, super::same, &mut body).await;
            if let Some(done) = retries.after(alias, attempted).await {
                return done;
            }
        }
    }))
    .await
}

/// A durable async block on a connection held by `owner`, rerun per `policy`.
pub async fn run_explicit_field_retry<S, C, T, E, F>(
    options: &BlockOptions<'_>,
    policy: RetryPolicy,
    owner: &mut S,
    field: impl Fn(&mut S) -> &mut C,
    mut body: F,
) -> Result<T, E>
where
    S: ?Sized,
    C: AsyncConnection + 'static,
    E: From<Error> + AsDieselError,
    for<'r> F: AsyncFuncMut<&'r mut S, Result<T, E>>,
{
    state::scoped(Box::pin(async move {
        let alias = options.using;
        check_durable(options)?;
        crate::scope::aio_request::touch(alias).await?;
        let mut retries = Retries::new(policy);
        loop {
            take_hidden_conflict(alias);
            let attempted = explicit::attempt(options, owner, &field, &mut body).await;
            if let Some(done) = retries.after(alias, attempted).await {
                return done;
            }
        }
    }))
    .await
}

/// Rule R1: only a durable block may be rerun (a nested one cannot undo its parent's work).
fn check_durable(options: &BlockOptions<'_>) -> Result<(), Error> {
    if options.durable {
        Ok(())
    } else {
        Err(Error::RetryNeedsDurable {
            alias: options.using.to_owned(),
        })
    }
}

fn take_hidden_conflict(alias: &str) -> bool {
    state::with(alias, |state| std::mem::take(&mut state.hidden_conflict))
}

/// The loop's state: how many reruns so far, and the backoff's jitter.
struct Retries {
    policy: RetryPolicy,
    retry: u32,
    jitter: Jitter,
}

impl Retries {
    fn new(policy: RetryPolicy) -> Self {
        Retries {
            policy,
            retry: 0,
            jitter: Jitter::new(),
        }
    }

    /// After an attempt: `Some` with what the block returns, or `None` after the backoff,
    /// for another attempt (rule R1, decided by `rules::retry_reason` as for sync blocks).
    async fn after<T, E>(
        &mut self,
        alias: &str,
        attempted: Result<(Outcome<T, E>, Exit), Error>,
    ) -> Option<Result<T, E>>
    where
        E: From<Error> + AsDieselError,
    {
        let hidden_conflict = take_hidden_conflict(alias);
        let reason = match attempted {
            // BEGIN failed (SQLite's BEGIN IMMEDIATE busy, say): nothing ran yet.
            Err(error) => match error.as_diesel_error().and_then(transient_code) {
                Some(code) if self.retry < self.policy.retries() => code,
                _ => return Some(Err(error.into())),
            },
            Ok((outcome, exit)) => {
                let failure = attempt_failure(&outcome, exit.error.as_ref(), hidden_conflict);
                match failure.and_then(rules::retry_reason) {
                    Some(code) if self.retry < self.policy.retries() => code,
                    Some(code) => {
                        tracing::warn!(
                            alias,
                            attempts = self.retry + 1,
                            sqlstate = code,
                            "atomic block failed with a transient error; no retries left"
                        );
                        return Some(block::finish(alias, outcome, exit).await);
                    }
                    None => return Some(block::finish(alias, outcome, exit).await),
                }
            }
        };
        self.retry += 1;
        let backoff = self.policy.delay(self.retry, &mut self.jitter);
        tracing::warn!(
            alias,
            attempt = self.retry + 1,
            sqlstate = reason,
            backoff_us = u64::try_from(backoff.as_micros()).unwrap_or(u64::MAX),
            "retrying atomic block after a transient failure"
        );
        tokio::time::sleep(backoff).await;
        None
    }
}
