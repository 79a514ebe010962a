//! Per-request transactions in an [axum](https://docs.rs/axum) service (feature `axum`).
//!
//! diesel is synchronous, so a view is a plain closure that does its database work with the
//! ambient connection ([`connection`](crate::connection), [`db`](crate::db), `#[atomic]`
//! functions). [`run_view`] runs it on tokio's blocking pool inside [`request`](crate::request):
//! each alias configured with `atomic_requests(true)` is one transaction for the view, committed
//! when it returns `Ok` and rolled back when it returns `Err` or panics. [`atomic_view`] does the
//! same and turns the outcome into a [`Response`].
//!
//! ```no_run
//! use axum::{Json, Router, http::StatusCode, response::IntoResponse, response::Response};
//! use diesel::prelude::*;
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use diesel_atomic::axum::atomic_view;
//! use diesel_atomic::{Database, Databases, transaction};
//!
//! /// The service's error: `From<diesel_atomic::Error>` so that `?` works in views and the
//! /// request's COMMIT can report its failure, `IntoResponse` to answer with it.
//! struct AppError(diesel_atomic::Error);
//!
//! impl From<diesel_atomic::Error> for AppError {
//!     fn from(error: diesel_atomic::Error) -> Self {
//!         AppError(error)
//!     }
//! }
//!
//! impl IntoResponse for AppError {
//!     fn into_response(self) -> Response {
//!         (StatusCode::INTERNAL_SERVER_ERROR, self.0.to_string()).into_response()
//!     }
//! }
//!
//! /// A view: synchronous; all its work on "default" is the request's transaction.
//! fn signup(email: String) -> Result<(StatusCode, String), AppError> {
//!     diesel_atomic::connection(|conn: &mut SqliteConnection| {
//!         diesel::sql_query("INSERT INTO users (email) VALUES (?)")
//!             .bind::<diesel::sql_types::Text, _>(&email)
//!             .execute(conn)
//!             .map_err(diesel_atomic::Error::from)
//!     })?;
//!     // Runs after the request's COMMIT, never if it rolls back.
//!     transaction::on_commit(move || println!("welcome mail queued for {email}"))?;
//!     Ok((StatusCode::CREATED, "welcome\n".to_owned()))
//! }
//!
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::new(ConnectionManager::<SqliteConnection>::new("app.sqlite3"))?;
//! // Process-wide: the views run on tokio's blocking threads, which must see the registry.
//! Databases::new()
//!     .add("default", Database::new(pool).atomic_requests(true))
//!     .install()?;
//!
//! let app = Router::new().route(
//!     "/signup",
//!     axum::routing::post(|Json(email): Json<String>| atomic_view(move || signup(email))),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Rules for views
//!
//! - **The registry must be installed** with [`Databases::install`](crate::Databases::install).
//!   A view runs on one of tokio's blocking threads, so a registry entered with
//!   [`Databases::enter`](crate::Databases::enter) on the thread that calls `run_view` does not
//!   reach it; or pass the registry along with [`run_view_in`]. The view runs on that one
//!   thread from start to end, as the request's transactions (thread-local state) require.
//! - **Do the database work inside the view, never in the async handler.** Outside the view a
//!   query would block one of the runtime's workers, and it would run outside the request's
//!   transaction, in autocommit mode. A view is synchronous, so it cannot hold the ambient
//!   connection across an `.await`; keep it that way (no `block_on` inside a view).
//! - **Exempt a view** with `#[non_atomic_requests]` (or `#[non_atomic_requests(using =
//!   "other")]`) on the function the closure calls: its aliases stay in autocommit mode and its
//!   own `#[atomic]` blocks are outermost transactions, committed one by one.
//! - **Several aliases are independent transactions**, committed one after the other; there is
//!   no two-phase commit (see [`request`](crate::request)).
//! - Only the view is wrapped. Middleware and extractors run before it, in autocommit mode.
//! - A client that goes away does not cancel a view that has started: it runs to its end, and
//!   commits or rolls back as usual.

use std::any::Any;
use std::fmt;

use ::axum::http::StatusCode;
use ::axum::response::{IntoResponse, Response};

use crate::Error;

/// Runs `view` on tokio's blocking pool inside [`request`](crate::request), and turns the
/// outcome into a response: `Ok(t)` is `t`'s response, `Err(e)` is `e`'s.
///
/// A panic in the view rolls back the request's transactions, is logged at ERROR level and
/// answers `500 Internal Server Error`; the service keeps serving. Use [`run_view`] to look at
/// the outcome before it becomes a response.
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use axum::{Router, routing::get};
/// use diesel::prelude::*;
/// use diesel_atomic::axum::atomic_view;
///
/// struct AppError(diesel_atomic::Error);
/// # impl From<diesel_atomic::Error> for AppError {
/// #     fn from(error: diesel_atomic::Error) -> Self { AppError(error) }
/// # }
/// # impl IntoResponse for AppError {
/// #     fn into_response(self) -> Response {
/// #         (StatusCode::INTERNAL_SERVER_ERROR, self.0.to_string()).into_response()
/// #     }
/// # }
///
/// fn answer() -> Result<String, AppError> {
///     let answer: i64 = diesel_atomic::connection(|conn: &mut SqliteConnection| {
///         diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT 42")
///             .get_result(conn)
///             .map_err(diesel_atomic::Error::from)
///     })?;
///     Ok(answer.to_string())
/// }
///
/// let app: Router = Router::new().route("/answer", get(|| atomic_view(answer)));
/// # let pool = diesel::r2d2::Pool::builder().max_size(1)
/// #     .build(diesel::r2d2::ConnectionManager::<SqliteConnection>::new(":memory:"))
/// #     .unwrap();
/// # diesel_atomic::Databases::new()
/// #     .add("default", diesel_atomic::Database::new(pool).atomic_requests(true))
/// #     .install()
/// #     .unwrap();
/// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # let response = runtime.block_on(atomic_view(answer));
/// # assert_eq!(response.status(), StatusCode::OK);
/// ```
pub async fn atomic_view<T, E>(view: impl FnOnce() -> Result<T, E> + Send + 'static) -> Response
where
    T: IntoResponse + Send + 'static,
    E: IntoResponse + From<Error> + Send + 'static,
{
    run_view(view).await.into_response()
}

/// Runs `view` on tokio's blocking pool inside [`request`](crate::request) and returns what it
/// returned, for handlers that post-process it.
///
/// By the time this returns, the request's transactions have ended: committed when the view
/// returned `Ok` (its `on_commit` callbacks have run), rolled back when it returned `Err`
/// ([`ViewError::View`]) or panicked ([`ViewError::Panicked`], logged at ERROR level). A
/// failing COMMIT is an `Err` too, made from the [`Error`] with `E::from`.
///
/// `Result<T, ViewError<E>>` is itself a response when `T` and `E` are, so a handler can
/// return it as is:
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::{IntoResponse, Response};
/// use diesel_atomic::axum::{ViewError, run_view};
///
/// #[derive(Debug)]
/// struct AppError(diesel_atomic::Error);
/// # impl From<diesel_atomic::Error> for AppError {
/// #     fn from(error: diesel_atomic::Error) -> Self { AppError(error) }
/// # }
/// # impl IntoResponse for AppError {
/// #     fn into_response(self) -> Response { StatusCode::INTERNAL_SERVER_ERROR.into_response() }
/// # }
///
/// fn greeting(name: String) -> Result<String, AppError> {
///     Ok(format!("hello, {name}"))
/// }
///
/// async fn shout(name: String) -> Result<(StatusCode, String), ViewError<AppError>> {
///     let text = run_view(move || greeting(name)).await?;
///     Ok((StatusCode::OK, text.to_uppercase()))
/// }
/// # let pool = diesel::r2d2::Pool::builder().max_size(1)
/// #     .build(diesel::r2d2::ConnectionManager::<diesel::SqliteConnection>::new(":memory:"))
/// #     .unwrap();
/// # diesel_atomic::Databases::new()
/// #     .add("default", diesel_atomic::Database::new(pool).atomic_requests(true))
/// #     .install()
/// #     .unwrap();
/// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let (status, text) = runtime.block_on(shout("ada".to_owned())).unwrap();
/// assert_eq!((status, text.as_str()), (StatusCode::OK, "HELLO, ADA"));
/// ```
pub async fn run_view<T, E>(
    view: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ViewError<E>>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    run(None, view).await
}

/// [`run_view`] with a registry of its own instead of the installed one: for an app that
/// keeps its [`Databases`](crate::Databases) in its state, or tests that run several services
/// side by side. The registry is entered on the blocking thread for the view's duration.
///
/// ```
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel::SqliteConnection;
/// use diesel_atomic::axum::run_view_in;
/// use diesel_atomic::{transaction, Database, Databases, Error};
///
/// let pool = Pool::builder().max_size(1)
///     .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
///     .unwrap();
/// let databases = Databases::new().add("default", Database::new(pool).atomic_requests(true));
/// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let inside = runtime
///     .block_on(run_view_in(&databases, || Ok::<_, Error>(transaction::in_atomic_block())))
///     .unwrap();
/// assert!(inside, "the view ran inside the request's transaction");
/// ```
pub async fn run_view_in<T, E>(
    databases: &crate::Databases,
    view: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ViewError<E>>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    run(Some(databases.clone()), view).await
}

async fn run<T, E>(
    databases: Option<crate::Databases>,
    view: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ViewError<E>>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let blocking = move || {
        let _registry = databases.as_ref().map(crate::Databases::enter);
        let (outcome, report) = crate::__private::request_with_report(view);
        if let Err(payload) = &outcome {
            log_panic(&panic_message(payload.as_ref()), &report);
        }
        outcome
    };
    match tokio::task::spawn_blocking(blocking).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(error))) => Err(ViewError::View(error)),
        Ok(Err(payload)) => Err(ViewError::Panicked {
            message: panic_message(payload.as_ref()),
        }),
        // The blocking closure itself catches every panic of the view and its callbacks.
        Err(join_error) if join_error.is_panic() => Err(ViewError::Panicked {
            message: panic_message(&*join_error.into_panic()),
        }),
        Err(_) => Err(ViewError::Cancelled),
    }
}

/// One ERROR event that says which panic it was and how each alias's transaction ended.
fn log_panic(message: &str, report: &crate::__private::RequestReport) {
    let committed = report.committed.join(", ");
    let rolled_back = report.rolled_back.join(", ");
    match &report.callback_panicked {
        Some(alias) => tracing::error!(
            panic = %message,
            alias = %alias,
            committed = %committed,
            rolled_back = %rolled_back,
            "an on_commit callback panicked after the request committed on '{alias}'; that \
             commit stands, the callbacks after it were dropped and the aliases after it \
             rolled back"
        ),
        None => tracing::error!(
            panic = %message,
            rolled_back = %rolled_back,
            "the view panicked; its request transactions were rolled back"
        ),
    }
}

/// Why [`run_view`] has no value: the view's own error, or a panic.
///
/// As a response: `View(e)` is `e`'s response, `Panicked` is `500 Internal Server Error` and
/// `Cancelled` is `503 Service Unavailable`, each with a short plain-text body that reveals
/// nothing of the panic.
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::IntoResponse;
/// use diesel_atomic::axum::ViewError;
///
/// let panicked: ViewError<StatusCode> = ViewError::Panicked { message: "boom".into() };
/// assert_eq!(panicked.into_response().status(), StatusCode::INTERNAL_SERVER_ERROR);
/// let refused = ViewError::View(StatusCode::CONFLICT);
/// assert_eq!(refused.into_response().status(), StatusCode::CONFLICT);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ViewError<E> {
    /// The view returned `Err` (or the request's COMMIT failed); its transactions rolled back.
    View(E),
    /// The view panicked (its transactions rolled back), or a plain on_commit callback
    /// panicked after a COMMIT (that alias's work stands; the aliases committed after it
    /// rolled back). The ERROR event logged with it says which.
    Panicked {
        /// The panic message (`"Box<dyn Any>"` when the payload is not a string).
        message: String,
    },
    /// The view never ran: the runtime is shutting down.
    Cancelled,
}

impl<E: IntoResponse> IntoResponse for ViewError<E> {
    fn into_response(self) -> Response {
        match self {
            ViewError::View(error) => error.into_response(),
            ViewError::Panicked { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n").into_response()
            }
            ViewError::Cancelled => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down\n",
            )
                .into_response(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for ViewError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewError::View(error) => error.fmt(f),
            ViewError::Panicked { message } => write!(f, "the view panicked: {message}"),
            ViewError::Cancelled => {
                f.write_str("the view did not run: the runtime is shutting down")
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ViewError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ViewError::View(error) => Some(error),
            ViewError::Panicked { .. } | ViewError::Cancelled => None,
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    match payload.downcast_ref::<&str>() {
        Some(message) => (*message).to_owned(),
        None => match payload.downcast_ref::<String>() {
            Some(message) => message.clone(),
            None => "Box<dyn Any>".to_owned(),
        },
    }
}
