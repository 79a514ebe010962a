//! Per-request transactions for async services (feature `tower`): Django's `ATOMIC_REQUESTS`
//! as a [`tower`](https://docs.rs/tower) layer, for axum, tonic or any hyper service.
//!
//! [`AtomicRequestsLayer`] runs each request as [`aio::request`](crate::aio::request) runs a
//! view (rules Q1–Q3 in docs/SEMANTICS.md): on every alias configured with
//! `atomic_requests(true)`, the request's work is one transaction, begun at its first use of
//! the alias (a request that never touches the database sends no BEGIN), and ended when the
//! inner service answers with the response head: committed unless the head says the request
//! failed ([`AtomicRequestsLayer::commit_when`]), rolled back otherwise.
//!
//! ```
//! # #[cfg(feature = "sqlite")] {
//! use axum::{Router, body::Body, http::Request, http::StatusCode, routing::post};
//! use diesel::SqliteConnection;
//! use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
//! use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
//! use diesel_async::SimpleAsyncConnection;
//! use diesel_atomic::tower::AtomicRequestsLayer;
//! use diesel_atomic::{aio, Database, Databases, Error};
//! use tower::ServiceExt;
//!
//! type Conn = SyncConnectionWrapper<SqliteConnection>;
//!
//! /// A handler: all its work on "default" is the request's transaction.
//! async fn signup() -> StatusCode {
//!     let inserted = aio::connection(async |conn: &mut Conn| {
//!         conn.batch_execute("INSERT INTO users (email) VALUES ('ada@example.com')").await
//!     })
//!     .await;
//!     match inserted {
//!         // Runs after the request's COMMIT, never if it rolls back.
//!         Ok(()) => match aio::transaction::on_commit(|| println!("welcome mail queued")) {
//!             Ok(()) => StatusCode::CREATED,
//!             Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
//!         },
//!         Err(_) => StatusCode::CONFLICT, // 4xx: rolled back
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.sqlite3");
//! # let path = path.to_str().unwrap();
//! let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(path)).build().unwrap();
//! # pool.get().await.unwrap()
//! #     .batch_execute("CREATE TABLE users (email TEXT NOT NULL UNIQUE)").await.unwrap();
//! let databases = Databases::new().add("default", Database::new_async(pool).atomic_requests(true));
//! // A service installs its registry (`databases.install()`); this one hands it to the layer.
//! let app = Router::new()
//!     .route("/signup", post(signup))
//!     .layer(AtomicRequestsLayer::new().databases(databases));
//!
//! let post = || Request::post("/signup").body(Body::empty()).unwrap();
//! let first = app.clone().oneshot(post()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let again = app.oneshot(post()).await.unwrap();
//! assert_eq!(again.status(), StatusCode::CONFLICT, "the unique email: rolled back");
//! # });
//! # }
//! ```
//!
//! # Rules
//!
//! - **The registry.** Each connection a server accepts is a task of its own, on any worker
//!   thread, so the registry is the installed one ([`Databases::install`]), or the one given
//!   to [`AtomicRequestsLayer::databases`], entered around every poll of the request (and its
//!   drop). A registry entered with [`Databases::enter`] on the thread that builds the router
//!   does not reach the server's tasks; it does reach requests polled on that thread (tests
//!   driving the service with `oneshot`). Tasks the handler spawns use the installed
//!   registry, and their blocks are transactions of their own (rule A1).
//! - **What shares the transaction.** The layer wraps the inner service's whole call:
//!   middleware added after the layer (closer to the handler: in axum, `.layer(..)` calls
//!   made before this one), extractors and the handler all run inside it and share one
//!   transaction per alias. Middleware outside the layer runs in autocommit mode.
//! - **The decision is made on the response head** ([`AtomicRequestsLayer::commit_when`]):
//!   by default, commit unless the status is 4xx or 5xx, or a `grpc-status` header is present
//!   and not `0` (tonic answers a failed call with HTTP 200 and `grpc-status` in the headers).
//!   [`aio::transaction::set_rollback(true)`](crate::aio::transaction::set_rollback) in the
//!   handler still rolls back. An `Err` of the inner service rolls back and is passed on.
//! - **The body streams after the COMMIT**, as Django's `StreamingHttpResponse` does: the
//!   transaction ends when the inner service yields the response head, and the connection
//!   goes back to its pool before the body is sent. Database work done while the body
//!   streams runs outside the request, in autocommit mode; a streamed export that must see
//!   one snapshot reads its rows in the handler or opens its own block.
//! - **A request that never uses the runtime** (a health check, a cache hit) sends no SQL and
//!   takes no state either: the request's state is made at its first use of an alias, an
//!   `on_commit` or a block, so such a request pays for the layer's wrapper only
//!   (BENCHMARKS.md, the layer around a handler that does not use it).
//! - **A failed COMMIT** (a deferred constraint, a serialization failure) answers `500
//!   Internal Server Error` with an empty body instead of the handler's response, runs none
//!   of that alias's `on_commit` callbacks, and is logged at ERROR. So does a request the
//!   runtime refuses to start ([`Error::RequestNested`] when the layer is applied twice).
//! - **A panic** in the handler or a middleware inside the layer rolls back, is logged at
//!   ERROR and answers `500 Internal Server Error`; the service keeps serving. The layer
//!   catches it itself (axum does not catch panics).
//! - **gRPC calls** (a `content-type` of `application/grpc`) get those two failures as gRPC
//!   clients expect them: HTTP 200 with `grpc-status: 13` (`INTERNAL`) and a `grpc-message`,
//!   not a 500, which they would read as `UNKNOWN`. No error detail reaches the client.
//! - **A client that goes away**: the server drops the handler's future, and the request
//!   never commits (rule A2): each begun alias's connection is marked broken and closed, never
//!   returned to its pool inside the transaction, and its callbacks never run.
//! - **Exempt a handler** with `#[non_atomic_requests]` (or `#[non_atomic_requests(using =
//!   "other")]`) on its `async fn`: its aliases stay in autocommit mode and its own blocks are
//!   outermost (rule Q2).
//! - **Several aliases are independent transactions**, committed one after the other, the
//!   first-added last; there is no two-phase commit (rule Q3).
//!
//! Synchronous diesel handlers (`diesel::r2d2` pools) use
//! [`axum::atomic_view`](crate::axum) instead (feature `axum`): the layer runs on the async
//! runtime, for aliases added with [`Database::new_async`](crate::Database::new_async).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use http::{Request, Response, StatusCode, request, response};

use crate::__private::aio::{AfterBegin, request_deciding};
use crate::{Databases, Error};

/// The future an [`AtomicRequestsLayer::after_begin`] hook returns: `Box::pin(async move {
/// .. })` borrowing the connection and the request head.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use axum::http::request::Parts;
/// use diesel::SqliteConnection;
/// use diesel_async::SimpleAsyncConnection;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel_atomic::tower::{AtomicRequestsLayer, HookFuture};
///
/// /// A hook as a function: the lifetime ties the future to both arguments.
/// fn foreign_keys<'a>(
///     conn: &'a mut SyncConnectionWrapper<SqliteConnection>,
///     _head: &'a Parts,
/// ) -> HookFuture<'a> {
///     Box::pin(async move { Ok(conn.batch_execute("PRAGMA defer_foreign_keys = ON").await?) })
/// }
///
/// let layer = AtomicRequestsLayer::new().after_begin("default", foreign_keys);
/// # let _ = layer;
/// # }
/// ```
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Runs every request of the service it wraps inside the request's transactions (see the
/// [module](self) docs).
///
/// ```
/// use axum::{Router, routing::get};
/// use diesel_atomic::tower::AtomicRequestsLayer;
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(AtomicRequestsLayer::new());
/// ```
#[derive(Clone)]
pub struct AtomicRequestsLayer {
    settings: Arc<Settings>,
}

/// What the layer's services share.
#[derive(Clone)]
struct Settings {
    commit_when: fn(&response::Parts) -> bool,
    after_begin: Vec<Hook>,
    databases: Option<Databases>,
}

/// An `after_begin` hook, made per request into the runtime's [`AfterBegin`] with the
/// request's head.
#[derive(Clone)]
struct Hook {
    alias: Arc<str>,
    make: Arc<dyn Fn(Arc<request::Parts>) -> AfterBegin + Send + Sync>,
}

impl Default for AtomicRequestsLayer {
    fn default() -> Self {
        AtomicRequestsLayer::new()
    }
}

impl AtomicRequestsLayer {
    /// A layer for every alias configured with `atomic_requests(true)`, committing by
    /// [`commit_unless_failed`], with the installed registry.
    pub fn new() -> Self {
        AtomicRequestsLayer {
            settings: Arc::new(Settings {
                commit_when: commit_unless_failed,
                after_begin: Vec::new(),
                databases: None,
            }),
        }
    }

    /// Decides on the response head whether the request's transactions commit (`true`) or
    /// roll back; a rollback flag set in the handler rolls back whatever this says. The
    /// default is [`commit_unless_failed`]; a function can build on it.
    ///
    /// ```
    /// use axum::http::response::Parts;
    /// use diesel_atomic::tower::{AtomicRequestsLayer, commit_unless_failed};
    ///
    /// /// Also roll back a dry run, which the handler answers with `x-dry-run: 1`.
    /// fn commit(head: &Parts) -> bool {
    ///     commit_unless_failed(head) && !head.headers.contains_key("x-dry-run")
    /// }
    ///
    /// let layer = AtomicRequestsLayer::new().commit_when(commit);
    /// # let _ = layer;
    /// ```
    pub fn commit_when(mut self, decide: fn(&response::Parts) -> bool) -> Self {
        Arc::make_mut(&mut self.settings).commit_when = decide;
        self
    }

    /// Uses `databases` for the layer's requests instead of the installed registry: it is
    /// entered around every poll of a request (and its drop), whichever thread polls it. For
    /// services that keep their registry in their state, and tests that serve several side by
    /// side.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use diesel::SqliteConnection;
    /// use diesel_async::pooled_connection::{AsyncDieselConnectionManager, deadpool::Pool};
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_atomic::tower::AtomicRequestsLayer;
    /// use diesel_atomic::{Database, Databases};
    ///
    /// type Conn = SyncConnectionWrapper<SqliteConnection>;
    /// let manager = AsyncDieselConnectionManager::<Conn>::new(":memory:");
    /// let pool = Pool::builder(manager).max_size(1).build().unwrap();
    /// let databases = Databases::new().add("default", Database::new_async(pool).atomic_requests(true));
    /// let layer = AtomicRequestsLayer::new().databases(databases);
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn databases(mut self, databases: Databases) -> Self {
        Arc::make_mut(&mut self.settings).databases = Some(databases);
        self
    }

    /// Runs `hook` on `alias`'s connection right after the request's BEGIN on that alias,
    /// with the request's head (method, URI, headers and the extensions that middleware
    /// outside the layer added): for transaction-scoped settings, such as the tenant that
    /// PostgreSQL's row-level security policies read. A request that never uses the alias
    /// sends no BEGIN and does not run it; an exempt handler (`#[non_atomic_requests]`) has no
    /// request transaction on the alias, so none of its blocks run it either.
    ///
    /// Bind values from the request as parameters; never build SQL text from them. One hook
    /// per alias: a second call for the same alias replaces the first.
    ///
    /// Misuse is reported as an [`Error`] naming the alias: a hook whose alias has no request
    /// transaction in the registry fails every request before its handler runs (`500`, logged:
    /// [`Error::AfterBeginWithoutRequestTransaction`]), and a hook typed on another connection
    /// than the alias holds fails the handler's first use of the alias
    /// ([`Error::AfterBeginWrongConnectionType`]). A hook that fails marks the transaction for
    /// rollback, and its error is what the handler's database call returns.
    ///
    /// ```
    /// # #[cfg(feature = "async-postgres")] {
    /// use axum::http::request::Parts;
    /// use diesel::sql_types::{Nullable, Text};
    /// use diesel_async::{AsyncPgConnection, RunQueryDsl};
    /// use diesel_atomic::tower::AtomicRequestsLayer;
    ///
    /// let layer = AtomicRequestsLayer::new().after_begin(
    ///     "default",
    ///     |conn: &mut AsyncPgConnection, head: &Parts| {
    ///         let tenant = head
    ///             .headers
    ///             .get("x-tenant")
    ///             .and_then(|value| value.to_str().ok())
    ///             .map(str::to_owned);
    ///         Box::pin(async move {
    ///             // `true`: local to the transaction, gone at its COMMIT or ROLLBACK.
    ///             diesel::sql_query("SELECT set_config('app.tenant', $1, true)")
    ///                 .bind::<Nullable<Text>, _>(tenant)
    ///                 .execute(conn)
    ///                 .await?;
    ///             Ok(())
    ///         })
    ///     },
    /// );
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn after_begin<C, F>(mut self, alias: &str, hook: F) -> Self
    where
        C: diesel_async::AsyncConnection + 'static,
        F: for<'a> Fn(&'a mut C, &'a request::Parts) -> HookFuture<'a> + Send + Sync + 'static,
    {
        let hook = Arc::new(hook);
        let alias: Arc<str> = alias.into();
        let make = {
            let alias = Arc::clone(&alias);
            move |head: Arc<request::Parts>| {
                let hook = Arc::clone(&hook);
                AfterBegin::new(&alias, move |conn: &mut C| -> HookFuture<'_> {
                    Box::pin(async move { hook(conn, &head).await })
                })
            }
        };
        let settings = Arc::make_mut(&mut self.settings);
        settings.after_begin.retain(|hook| hook.alias != alias);
        settings.after_begin.push(Hook {
            alias,
            make: Arc::new(make),
        });
        self
    }
}

impl fmt::Debug for AtomicRequestsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hooks: Vec<&str> = self.after_begin.iter().map(|hook| &*hook.alias).collect();
        f.debug_struct("AtomicRequestsLayer")
            .field("after_begin", &hooks)
            .field("own_registry", &self.databases.is_some())
            .finish_non_exhaustive()
    }
}

/// The default of [`AtomicRequestsLayer::commit_when`]: commit unless the status is 4xx or
/// 5xx, or a `grpc-status` header is present and not `0` (tonic answers a failed call with
/// HTTP 200 and its status in the headers).
///
/// ```
/// use axum::http::{Response, StatusCode};
/// use diesel_atomic::tower::commit_unless_failed;
///
/// let head = |status: StatusCode, grpc: Option<&str>| {
///     let mut response = Response::builder().status(status);
///     if let Some(code) = grpc {
///         response = response.header("grpc-status", code);
///     }
///     response.body(()).unwrap().into_parts().0
/// };
/// assert!(commit_unless_failed(&head(StatusCode::CREATED, None)));
/// assert!(!commit_unless_failed(&head(StatusCode::CONFLICT, None)));
/// assert!(commit_unless_failed(&head(StatusCode::OK, Some("0"))));
/// assert!(!commit_unless_failed(&head(StatusCode::OK, Some("3"))));
/// ```
pub fn commit_unless_failed(head: &response::Parts) -> bool {
    let failed = head.status.is_client_error() || head.status.is_server_error();
    // Anything but "0", an unreadable value included, is a failed call: fail closed.
    // A name made once: looking a `&str` up parses it on every call.
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let grpc_failed = head
        .headers
        .get(&GRPC_STATUS)
        .is_some_and(|code| code.as_bytes().trim_ascii() != b"0");
    !failed && !grpc_failed
}

impl<S> tower_layer::Layer<S> for AtomicRequestsLayer {
    type Service = AtomicRequests<S>;

    fn layer(&self, inner: S) -> AtomicRequests<S> {
        AtomicRequests {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// The service [`AtomicRequestsLayer`] makes: `inner`, with each request inside the
/// request's transactions.
///
/// ```
/// use std::convert::Infallible;
/// use axum::body::Body;
/// use axum::http::{Request, Response};
/// use diesel_atomic::tower::{AtomicRequests, AtomicRequestsLayer};
/// use tower::{Layer, service_fn};
///
/// let hello = service_fn(|_: Request<Body>| async {
///     Ok::<_, Infallible>(Response::new(Body::from("hello")))
/// });
/// let service: AtomicRequests<_> = AtomicRequestsLayer::new().layer(hello);
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct AtomicRequests<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S: fmt::Debug> fmt::Debug for AtomicRequests<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicRequests")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish()
    }
}

/// The response future of [`AtomicRequests`]: boxed, since it holds the runtime's request
/// future around the inner service's.
///
/// ```
/// use std::convert::Infallible;
/// use axum::body::Body;
/// use axum::http::{Request, Response};
/// use diesel_atomic::tower::{AtomicRequestsLayer, ResponseFuture};
/// use tower::{Layer, Service, service_fn};
///
/// let mut service = AtomicRequestsLayer::new().layer(service_fn(|_: Request<Body>| async {
///     Ok::<_, Infallible>(Response::new(Body::empty()))
/// }));
/// let future: ResponseFuture<Response<Body>, Infallible> =
///     service.call(Request::new(Body::empty()));
/// # drop(future);
/// ```
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for AtomicRequests<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The instance that was polled ready serves this request (tower's contract); the
        // clone waits for the next `poll_ready`.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let settings = &*self.settings;
        let grpc = is_grpc(&request);
        let (request, after_begin) = hooks_for(settings, request);
        let decide = settings.commit_when;
        // The inner call itself, not only its future, runs in the request: middleware does
        // work in `call` (axum's `from_fn` builds its future there).
        let view = async move { inner.call(request).await.map(Response::into_parts) };
        let commits = move |output: &Result<(response::Parts, ResBody), S::Error>| matches!(output, Ok((head, _)) if decide(head));
        let request = request_deciding(settings.databases.clone(), after_begin, view, commits);
        Box::pin(async move {
            match AssertUnwindSafe(request).catch_unwind().await {
                Ok(Ok(Ok((head, body)))) => Ok(Response::from_parts(head, body)),
                Ok(Ok(Err(error))) => Err(error),
                // A failed COMMIT, or a request the runtime refused to start.
                Ok(Err(error)) => {
                    tracing::error!("answering {}: {error}", failure_name(grpc));
                    Ok(failed(grpc, "the request's transaction did not commit"))
                }
                Err(payload) => {
                    let message = panic_message(payload.as_ref());
                    tracing::error!(
                        "the request panicked ({message}); its transactions were rolled back; \
                         answering {}",
                        failure_name(grpc)
                    );
                    Ok(failed(
                        grpc,
                        "the request failed; its transaction was rolled back",
                    ))
                }
            }
        })
    }
}

/// The request's `after_begin` hooks, each holding the request's head (cloned only when the
/// layer has hooks).
fn hooks_for<B>(settings: &Settings, request: Request<B>) -> (Request<B>, Vec<AfterBegin>) {
    if settings.after_begin.is_empty() {
        return (request, Vec::new());
    }
    let (head, body) = request.into_parts();
    let shared = Arc::new(head.clone());
    let hooks = settings
        .after_begin
        .iter()
        .map(|hook| (hook.make)(Arc::clone(&shared)))
        .collect();
    (Request::from_parts(head, body), hooks)
}

/// Whether the request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

fn failure_name(grpc: bool) -> &'static str {
    if grpc {
        "grpc-status 13 (INTERNAL)"
    } else {
        "500 Internal Server Error"
    }
}

/// The answer to a request that failed in the layer (a failed COMMIT, a panic): `500`, or
/// for a gRPC call a trailers-only response with `grpc-status: 13`, which gRPC clients read
/// as `INTERNAL` (a 500 reads as `UNKNOWN`). `message` is fixed text: no error detail
/// reaches the client.
fn failed<B: Default>(grpc: bool, message: &'static str) -> Response<B> {
    let mut response = Response::new(B::default());
    if grpc {
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", http::HeaderValue::from_static("13"));
        headers.insert("grpc-message", http::HeaderValue::from_static(message));
    } else {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    response
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    match payload.downcast_ref::<&str>() {
        Some(message) => message,
        None => match payload.downcast_ref::<String>() {
            Some(message) => message,
            None => "Box<dyn Any>",
        },
    }
}
