//! What the macros' expansions call. Not public API: no stability promise.
//!
//! The runners are the API layer's own (`api::ambient`, `api::retry`), re-exported under the
//! names the expansions use.

use diesel::Connection;

pub use crate::api::ambient::{run_ambient, run_explicit, run_explicit_field};
pub use crate::api::retry::{run_ambient_retry, run_explicit_field_retry, run_explicit_retry};
pub use crate::api::test_attribute::{TestOptions, run as run_test};
use crate::error::Error;
pub use crate::options::BeginOptions;
pub use crate::options::BlockOptions as Options;

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

/// What `#[atomic] async fn` expands to.
#[cfg(feature = "async")]
pub mod aio {
    pub use crate::api::aio::{
        run_ambient, run_ambient_retry, run_explicit, run_explicit_field, run_explicit_field_retry,
        run_explicit_retry,
    };
    pub use crate::api::test_attribute::aio::run as run_test;

    /// `#[non_atomic_requests(using = alias)]` on an `async fn` view: the body runs exempt
    /// from the request transaction on `alias` (rule Q2).
    pub async fn non_atomic_requests<R>(
        alias: &'static str,
        body: impl std::future::Future<Output = R>,
    ) -> R {
        crate::scope::aio_request::non_atomic(alias, body).await
    }

    pub use crate::scope::aio_request::AfterBegin;

    /// The tower layer's request (`diesel_atomic::tower`): `aio::request` whose commit is
    /// decided on the view's output by `commits` (the response head), with `after_begin`
    /// hooks, and `databases` (the layer's registry, if it has one) entered around each of
    /// its polls and its drop. `Err` when it could not run or a COMMIT failed; a panic goes
    /// on after the rollback.
    pub fn request_deciding<T>(
        databases: Option<crate::Databases>,
        after_begin: Vec<AfterBegin>,
        view: impl std::future::Future<Output = T>,
        commits: impl FnOnce(&T) -> bool,
    ) -> impl std::future::Future<Output = Result<T, crate::Error>> {
        crate::scope::aio_request::run(databases, after_begin, view, commits)
    }

    /// `conn = self.field` on an `async fn`: reaches a diesel-async connection in a field, as
    /// [`super::FieldConnection`] does for sync ones.
    pub trait FieldConnection {
        /// The connection.
        fn __diesel_atomic_connection(&mut self) -> &mut Self;
    }

    impl<C: diesel_async::AsyncConnection> FieldConnection for C {
        #[inline]
        fn __diesel_atomic_connection(&mut self) -> &mut Self {
            self
        }
    }
}

/// Without the `async` feature, `#[atomic] async fn` reaches these, whose bound says what to
/// turn on.
#[cfg(not(feature = "async"))]
pub mod aio {
    use super::Options;

    /// Never implemented: the feature is off.
    #[diagnostic::on_unimplemented(
        message = "#[atomic] async fn needs diesel-atomic's `async` feature",
        label = "an async block needs the async runtime",
        note = "add `features = [\"async\"]` (and `async-postgres` / `async-mysql` for those \
                servers) to the diesel-atomic dependency"
    )]
    pub trait AsyncFeatureEnabled {}

    /// See [`AsyncFeatureEnabled`].
    pub async fn run_ambient<T, F: AsyncFeatureEnabled>(_: &Options<'_>, _: F) -> T {
        unreachable!("the `async` feature is off")
    }

    /// See [`AsyncFeatureEnabled`].
    pub async fn run_explicit<C, T, F: AsyncFeatureEnabled>(_: &Options<'_>, _: &mut C, _: F) -> T {
        unreachable!("the `async` feature is off")
    }

    /// See [`AsyncFeatureEnabled`].
    pub async fn run_explicit_field<S, A, T, F: AsyncFeatureEnabled>(
        _: &Options<'_>,
        _: &mut S,
        _: A,
        _: F,
    ) -> T {
        unreachable!("the `async` feature is off")
    }

    /// See [`AsyncFeatureEnabled`].
    pub async fn run_ambient_retry<P, T, F: AsyncFeatureEnabled>(_: &Options<'_>, _: P, _: F) -> T {
        unreachable!("the `async` feature is off")
    }

    /// See [`AsyncFeatureEnabled`].
    pub async fn run_explicit_retry<P, C, T, F: AsyncFeatureEnabled>(
        _: &Options<'_>,
        _: P,
        _: &mut C,
        _: F,
    ) -> T {
        unreachable!("the `async` feature is off")
    }

    /// See [`AsyncFeatureEnabled`].
    pub async fn run_explicit_field_retry<P, S, A, T, F: AsyncFeatureEnabled>(
        _: &Options<'_>,
        _: P,
        _: &mut S,
        _: A,
        _: F,
    ) -> T {
        unreachable!("the `async` feature is off")
    }

    /// See [`AsyncFeatureEnabled`].
    pub async fn non_atomic_requests<R, F: AsyncFeatureEnabled>(_: &'static str, _: F) -> R {
        unreachable!("the `async` feature is off")
    }

    /// Never implemented: the feature is off.
    #[diagnostic::on_unimplemented(
        message = "#[diesel_atomic::test] async fn needs diesel-atomic's `async` feature",
        label = "an async test runs on the async runtime",
        note = "add `features = [\"async\"]` (and `async-postgres` / `async-mysql` for those \
                servers) to the diesel-atomic dependency, or make the test a plain `fn`"
    )]
    pub trait AsyncTestFeatureEnabled {}

    /// See [`AsyncTestFeatureEnabled`].
    pub fn run_test<T, F: AsyncTestFeatureEnabled>(_: super::TestOptions, _: F) -> T {
        unreachable!("the `async` feature is off")
    }

    /// See [`AsyncFeatureEnabled`].
    pub trait FieldConnection {
        /// The connection.
        fn __diesel_atomic_connection(&mut self) -> &mut Self;
    }
}
