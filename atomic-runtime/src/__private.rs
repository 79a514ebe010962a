//! What the macros' expansions call. Not public API: no stability promise.

use diesel::Connection;

use crate::api::retry::{AsDieselError, RetryPolicy};
use crate::error::Error;
pub use crate::options::BeginOptions;
pub use crate::options::BlockOptions as Options;

/// `#[atomic]` in ambient mode.
#[inline]
pub fn run_ambient<T, E>(options: &Options<'_>, body: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    E: From<Error>,
{
    crate::api::ambient::run_ambient(options, body)
}

/// `#[atomic]` in explicit mode.
#[inline]
pub fn run_explicit<C, T, E>(
    options: &Options<'_>,
    conn: &mut C,
    body: impl FnOnce(&mut C) -> Result<T, E>,
) -> Result<T, E>
where
    C: Connection,
    E: From<Error>,
{
    crate::api::ambient::run_explicit(options, conn, body)
}

/// `#[atomic(conn = self.field)]`: the connection is a field of the receiver.
#[inline]
pub fn run_explicit_field<S, C, T, E>(
    options: &Options<'_>,
    owner: &mut S,
    field: impl Fn(&mut S) -> &mut C,
    body: impl FnOnce(&mut S) -> Result<T, E>,
) -> Result<T, E>
where
    S: ?Sized,
    C: Connection,
    E: From<Error>,
{
    crate::api::ambient::run_explicit_field(options, owner, field, body)
}

/// `#[atomic(conn = self.field, durable = true, retry = n)]`.
#[inline]
pub fn run_explicit_field_retry<S, C, T, E>(
    options: &Options<'_>,
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
    crate::api::retry::run_explicit_field(options, policy, owner, field, body)
}

/// Reaches the connection in a field for `conn = self.field`, through method-call autoderef,
/// so the field may hold the connection itself or a `&mut` to it.
pub trait FieldConnection {
    /// The connection.
    fn __diesel_atomic_connection(&mut self) -> &mut Self;
}

impl<C: Connection> FieldConnection for C {
    #[inline]
    fn __diesel_atomic_connection(&mut self) -> &mut Self {
        self
    }
}

/// `#[atomic(durable = true, retry = n)]` in ambient mode.
#[inline]
pub fn run_ambient_retry<T, E>(
    options: &Options<'_>,
    policy: RetryPolicy,
    body: impl FnMut() -> Result<T, E>,
) -> Result<T, E>
where
    E: From<Error> + AsDieselError,
{
    crate::api::retry::run_ambient(options, policy, body)
}

/// `#[atomic(durable = true, retry = n)]` in explicit mode.
#[inline]
pub fn run_explicit_retry<C, T, E>(
    options: &Options<'_>,
    policy: RetryPolicy,
    conn: &mut C,
    body: impl FnMut(&mut C) -> Result<T, E>,
) -> Result<T, E>
where
    C: Connection,
    E: From<Error> + AsDieselError,
{
    crate::api::retry::run_explicit(options, policy, conn, body)
}

/// `#[non_atomic_requests(using = alias)]`: the body runs exempt from the per-request
/// transaction on `alias`. Outside `request()` there is none, so this only runs the body.
#[inline]
pub fn non_atomic_requests<R>(alias: &'static str, body: impl FnOnce() -> R) -> R {
    crate::scope::request::non_atomic(alias, body)
}

pub use crate::scope::request::RequestReport;

/// `diesel_atomic::axum`: runs `view` as `request()` does, but hands back a panic (the view's,
/// or that of an on_commit callback after a COMMIT) instead of resuming it, with how each
/// alias's request transaction ended, so the web layer can log what really happened.
pub fn request_with_report<T, E: From<Error>>(
    view: impl FnOnce() -> Result<T, E>,
) -> (std::thread::Result<Result<T, E>>, RequestReport) {
    match crate::scope::request::run(view) {
        Ok(ended) => ended,
        Err(error) => (Ok(Err(error.into())), RequestReport::default()),
    }
}

/// What `#[atomic]` needs of its function's error type, checked by `check_error_type` with
/// a message of its own: the block returns its own errors (a failed `BEGIN` or `COMMIT`, an
/// unknown alias) through that type.
///
/// The blanket impl is what makes the bound `From<Error>`; rustc reports an unsatisfied
/// `E: From<Error>` behind it with this trait's message, because both name the same type.
#[diagnostic::on_unimplemented(
    message = "the error type of an #[atomic] function must implement \
               `From<diesel_atomic::Error>`, and `{Self}` does not",
    label = "the error type of an #[atomic] function",
    note = "the block returns its own errors (a failed BEGIN or COMMIT, an unknown alias) \
            through this type: give `{Self}` a variant such as `Atomic(diesel_atomic::Error)` \
            and `impl From<diesel_atomic::Error> for {Self}`, or return \
            `diesel::result::Error` (`QueryResult<T>`) or `diesel_atomic::Error`"
)]
pub trait AtomicFunctionError {}

impl<E: From<Error>> AtomicFunctionError for E {}

/// Emitted before the block for a function declared `-> Result<T, E>`, spanned where the
/// entry point's own `E: From<Error>` bound is: rustc then reports this check's message and
/// drops the entry point's identical obligation at the same place as a duplicate.
#[inline(always)]
pub fn check_error_type<E: AtomicFunctionError>() {}
