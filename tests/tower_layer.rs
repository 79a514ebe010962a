//! `diesel_atomic::tower::AtomicRequestsLayer` under axum, on SQLite, PostgreSQL and MariaDB:
//! each request's work on an `atomic_requests` alias is one transaction, begun at its first
//! use, committed or rolled back on the response head (rules Q1–Q3), never committed when the
//! server drops the request (a client that went away: A2). Driven with `oneshot`, and over a
//! real socket for the dropped request.
#![cfg(feature = "tower")]

mod common_aio;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use common_aio::{
    Backend, Notified, PATIENCE, PoolKind, TestDb, assert_clean, capture_error_logs,
    insert_ambient, quiet_expected_panics, visible_ambient, within,
};
use diesel::connection::InstrumentationEvent;
use diesel_async::AsyncConnection;
use diesel_atomic::aio::transaction;
use diesel_atomic::tower::{AtomicRequestsLayer, HookFuture};
use diesel_atomic::{Databases, non_atomic_requests};
use tower::ServiceExt;

aio_tests!(deadpool:
    a_successful_response_commits_and_runs_the_callbacks,
    an_error_status_rolls_back_and_drops_the_callbacks,
    set_rollback_in_the_handler_rolls_back_a_successful_response,
    a_grpc_status_header_decides_like_a_status,
    commit_when_decides_on_the_response_head,
    a_request_that_never_uses_the_database_sends_no_begin,
    a_panicking_handler_answers_500_rolls_back_and_the_service_keeps_serving,
    a_request_dropped_by_the_server_rolls_back_and_leaves_no_transaction_open,
    an_exempt_handler_commits_its_own_blocks,
    middleware_inside_the_layer_shares_the_request_transaction,
    a_layer_inside_a_layer_answers_500,
    after_begin_runs_once_and_only_for_requests_that_use_the_alias,
    after_begin_on_an_alias_without_request_transaction_answers_500,
);

/// The test's pool as the `atomic_requests` alias "default".
fn registry<C: Backend>(db: &TestDb<C>) -> Databases {
    Databases::new().add("default", db.pool.database().atomic_requests(true))
}

/// `router` inside a layer with the test's registry.
fn serve<C: Backend>(db: &TestDb<C>, router: Router) -> Router {
    router.layer(AtomicRequestsLayer::new().databases(registry(db)))
}

/// Sends one request through `app` (a clone: the app keeps serving).
async fn send(app: &Router, method: &str, path: &str) -> Response {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("request");
    within(PATIENCE, path, app.clone().oneshot(request))
        .await
        .expect("axum's router never fails")
}

async fn status(app: &Router, method: &str, path: &str) -> StatusCode {
    send(app, method, path).await.status()
}

/// A handler that inserts `num`, queues a callback that records it, and answers `status`.
async fn insert_then<C: Backend>(num: i32, log: Notified, status: StatusCode) -> StatusCode {
    insert_ambient::<C>(num).await.expect("insert");
    transaction::on_commit(move || log.push(num)).expect("on_commit");
    status
}

async fn a_successful_response_commits_and_runs_the_callbacks<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Notified::default();
    let handler_log = log.clone();
    let app = serve(
        &db,
        Router::new().route(
            "/",
            post(move || insert_then::<C>(1, handler_log, StatusCode::CREATED)),
        ),
    );
    assert_eq!(status(&app, "POST", "/").await, StatusCode::CREATED);
    assert_eq!(db.committed().await, [1]);
    assert_eq!(log.get(), [1]);
}

async fn an_error_status_rolls_back_and_drops_the_callbacks<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Notified::default();
    let (conflict, failed) = (log.clone(), log.clone());
    let app = serve(
        &db,
        Router::new()
            .route(
                "/conflict",
                post(move || insert_then::<C>(1, conflict, StatusCode::CONFLICT)),
            )
            .route(
                "/failed",
                post(move || insert_then::<C>(2, failed, StatusCode::BAD_GATEWAY)),
            ),
    );
    assert_eq!(
        status(&app, "POST", "/conflict").await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        status(&app, "POST", "/failed").await,
        StatusCode::BAD_GATEWAY
    );
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty());
    assert_clean(&mut *db.pool.get().await).await;
}

async fn set_rollback_in_the_handler_rolls_back_a_successful_response<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Notified::default();
    let handler_log = log.clone();
    let app = serve(
        &db,
        Router::new().route(
            "/",
            post(move || async move {
                let status = insert_then::<C>(1, handler_log, StatusCode::OK).await;
                transaction::set_rollback(true).expect("set_rollback");
                status
            }),
        ),
    );
    assert_eq!(status(&app, "POST", "/").await, StatusCode::OK);
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty());
}

// tonic answers a failed call with HTTP 200 and `grpc-status` in the headers (trailers-only).
async fn a_grpc_status_header_decides_like_a_status<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let grpc = |num: i32, code: &'static str| {
        post(move || async move {
            insert_ambient::<C>(num).await.expect("insert");
            ([("grpc-status", code)], "")
        })
    };
    let app = serve(
        &db,
        Router::new()
            .route("/invalid-argument", grpc(1, "3"))
            .route("/ok", grpc(2, "0")),
    );
    assert_eq!(
        status(&app, "POST", "/invalid-argument").await,
        StatusCode::OK
    );
    assert_eq!(status(&app, "POST", "/ok").await, StatusCode::OK);
    assert_eq!(db.committed().await, [2], "grpc-status 3 must roll back");
}

async fn commit_when_decides_on_the_response_head<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    fn unless_dry_run(head: &axum::http::response::Parts) -> bool {
        !head.headers.contains_key("x-dry-run")
    }
    let app = Router::new()
        .route(
            "/dry-run",
            post(|| async {
                insert_ambient::<C>(1).await.expect("insert");
                ([("x-dry-run", "1")], StatusCode::CREATED)
            }),
        )
        .route(
            "/rejected",
            post(|| async {
                insert_ambient::<C>(2).await.expect("insert");
                StatusCode::UNPROCESSABLE_ENTITY
            }),
        )
        .layer(
            AtomicRequestsLayer::new()
                .commit_when(unless_dry_run)
                .databases(registry(&db)),
        );
    assert_eq!(status(&app, "POST", "/dry-run").await, StatusCode::CREATED);
    assert_eq!(
        status(&app, "POST", "/rejected").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        db.committed().await,
        [2],
        "the policy replaces the default: a 422 commits, a dry run does not"
    );
}

async fn a_request_that_never_uses_the_database_sends_no_begin<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    // The pool's one connection reports every statement and BEGIN it sends (diesel's
    // instrumentation); the layer's requests get that connection.
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = Arc::clone(&sent);
    db.pool
        .get()
        .await
        .set_instrumentation(move |event: InstrumentationEvent<'_>| match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                recorder.lock().unwrap().push(query.to_string());
            }
            InstrumentationEvent::BeginTransaction { .. } => {
                recorder.lock().unwrap().push("BEGIN".to_owned());
            }
            _ => {}
        });
    let app = serve(
        &db,
        Router::new()
            .route("/static", get(|| async { "no database here" }))
            .route(
                "/write",
                post(|| insert_then::<C>(1, Notified::default(), StatusCode::OK)),
            ),
    );
    assert_eq!(status(&app, "GET", "/static").await, StatusCode::OK);
    let after_static = sent.lock().unwrap().clone();
    assert!(
        after_static.is_empty(),
        "a request that never used the database sent {after_static:?}"
    );
    // The counter does see a request that uses the database (its BEGIN, INSERT, COMMIT).
    assert_eq!(status(&app, "POST", "/write").await, StatusCode::OK);
    let after_write = sent.lock().unwrap().clone();
    assert!(
        after_write.iter().any(|sql| sql == "BEGIN"),
        "{after_write:?}"
    );
    assert_eq!(db.committed().await, [1]);
}

async fn a_panicking_handler_answers_500_rolls_back_and_the_service_keeps_serving<C: Backend>(
    pool: PoolKind,
) {
    quiet_expected_panics("the handler failed on purpose");
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Notified::default();
    let (panicking, working) = (log.clone(), log.clone());
    let app = serve(
        &db,
        Router::new()
            .route(
                "/panic",
                post(move || async move {
                    insert_then::<C>(1, panicking, StatusCode::OK).await;
                    if !transaction::get_rollback().expect("in the request") {
                        panic!("the handler failed on purpose");
                    }
                    StatusCode::OK
                }),
            )
            .route(
                "/work",
                post(move || insert_then::<C>(2, working, StatusCode::OK)),
            ),
    );
    let (answer, errors) = capture_error_logs(status(&app, "POST", "/panic")).await;
    assert_eq!(answer, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        errors.iter().any(|message| message.contains("panicked")),
        "no ERROR event about the panic: {errors:?}"
    );
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty());
    // The same service, and its pool of one, serve the next request.
    assert_eq!(status(&app, "POST", "/work").await, StatusCode::OK);
    assert_eq!(db.committed().await, [2]);
    assert_eq!(log.get(), [2]);
}

/// Sends `tx` when dropped: tells the test the server dropped the handler's future.
struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

type Slot = Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>;

// A2 over a real socket: axum drops the handler's future when its client goes away.
async fn a_request_dropped_by_the_server_rolls_back_and_leaves_no_transaction_open<C: Backend>(
    pool: PoolKind,
) {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let db = TestDb::<C>::new(pool, 1).await;
    let log = Notified::default();
    let (inserted_tx, inserted_rx) = tokio::sync::oneshot::channel();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel();
    let inserted: Slot = Arc::new(Mutex::new(Some(inserted_tx)));
    let dropped: Slot = Arc::new(Mutex::new(Some(dropped_tx)));
    let (hanging_log, next_log) = (log.clone(), log.clone());
    let app = serve(
        &db,
        Router::new()
            .route(
                "/hang",
                post(move || async move {
                    let _dropped = OnDrop(dropped.lock().unwrap().take());
                    insert_then::<C>(1, hanging_log, StatusCode::OK).await;
                    if let Some(tx) = inserted.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    std::future::pending::<StatusCode>().await
                }),
            )
            .route(
                "/next",
                post(move || insert_then::<C>(2, next_log, StatusCode::OK)),
            ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    // On the runtime's workers: each connection a task of its own, as in production.
    let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let post_to = |path: &str| {
        Request::post(format!("{base}{path}"))
            .body(Empty::<axum::body::Bytes>::new())
            .expect("request")
    };

    let client = Client::builder(TokioExecutor::new()).build_http();
    let hanging = tokio::spawn(client.request(post_to("/hang")));
    within(PATIENCE, "the handler's INSERT", inserted_rx)
        .await
        .expect("the handler ran");
    // The client goes away: the request is cancelled and its connection closed.
    hanging.abort();
    drop(client);
    within(PATIENCE, "the server dropping the handler", dropped_rx)
        .await
        .expect("the handler's future was dropped");

    let mut raw = db.raw().await;
    db.assert_no_open_transaction_elsewhere(&mut raw).await;
    assert!(db.committed().await.is_empty());
    assert!(
        log.get().is_empty(),
        "a callback of the dropped request ran"
    );
    // The pool's one connection never came back inside the transaction: the next request gets
    // one that works.
    let client = Client::builder(TokioExecutor::new()).build_http();
    let next = within(
        PATIENCE,
        "the next request",
        client.request(post_to("/next")),
    )
    .await
    .expect("response");
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(db.committed().await, [2]);
    assert_eq!(log.get(), [2]);
    server.abort();
}

// A deferred foreign key is checked at COMMIT: on SQLite and PostgreSQL only (MariaDB checks
// every constraint at once, so nothing makes its COMMIT fail this way; no MariaDB variant).
mod failed_commit {
    use super::*;

    #[test]
    fn sqlite() {
        common_aio::block_on(|| {
            common_aio::run::<common_aio::Sqlite, _>(
                PoolKind::Deadpool,
                a_failed_commit_answers_500_and_runs_no_callbacks::<common_aio::Sqlite>,
            )
        });
    }

    #[cfg(feature = "async-postgres")]
    #[test]
    fn postgres() {
        common_aio::block_on(|| {
            common_aio::run::<diesel_async::AsyncPgConnection, _>(
                PoolKind::Deadpool,
                a_failed_commit_answers_500_and_runs_no_callbacks::<diesel_async::AsyncPgConnection>,
            )
        });
    }
}

async fn a_failed_commit_answers_500_and_runs_no_callbacks<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    db.raw()
        .await
        .batch_execute(
            "CREATE TABLE parents (id INTEGER PRIMARY KEY);
             CREATE TABLE children (
                 id INTEGER PRIMARY KEY,
                 parent INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
             );",
        )
        .await
        .expect("schema");
    let log = Notified::default();
    let handler_log = log.clone();
    let app = serve(
        &db,
        Router::new().route(
            "/",
            post(move || async move {
                insert_ambient::<C>(1).await.expect("insert");
                let orphan = diesel_atomic::aio::connection(async |conn: &mut C| {
                    conn.batch_execute("INSERT INTO children (id, parent) VALUES (1, 99)")
                        .await
                })
                .await;
                // Accepted for now: the foreign key is checked at COMMIT.
                orphan.expect("a deferred constraint");
                transaction::on_commit(move || handler_log.push(1)).expect("on_commit");
                StatusCode::CREATED
            }),
        ),
    );
    let (answer, errors) = capture_error_logs(status(&app, "POST", "/")).await;
    assert_eq!(answer, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!errors.is_empty(), "the failed COMMIT was not logged");
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty(), "a callback ran after a failed COMMIT");
    assert_clean(&mut *db.pool.get().await).await;
}

#[non_atomic_requests]
async fn import<C: Backend>() -> StatusCode {
    assert!(!transaction::in_atomic_block());
    transaction::atomic(async || insert_ambient::<C>(1).await)
        .await
        .expect("the import's block");
    StatusCode::INTERNAL_SERVER_ERROR
}

// Q2: `#[non_atomic_requests]` on an async handler.
async fn an_exempt_handler_commits_its_own_blocks<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let app = serve(&db, Router::new().route("/", post(import::<C>)));
    assert_eq!(
        status(&app, "POST", "/").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        db.committed().await,
        [1],
        "the exempt handler's block did not commit"
    );
}

async fn middleware_inside_the_layer_shares_the_request_transaction<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let audit = axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            assert!(transaction::in_atomic_block());
            insert_ambient::<C>(1)
                .await
                .expect("the middleware's insert");
            next.run(request).await
        },
    );
    let app = Router::new()
        .route(
            "/",
            post(|| async {
                let seen = visible_ambient::<C>().await.expect("read");
                insert_ambient::<C>(2).await.expect("the handler's insert");
                (StatusCode::CONFLICT, format!("{seen:?}"))
            }),
        )
        // Added first: closer to the handler, inside the request.
        .layer(audit)
        .layer(AtomicRequestsLayer::new().databases(registry(&db)));
    let response = send(&app, "POST", "/").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .expect("body");
    assert_eq!(body, "[1]", "the handler did not see the middleware's row");
    assert!(
        db.committed().await.is_empty(),
        "the middleware's row outlived the request's rollback"
    );
}

async fn a_layer_inside_a_layer_answers_500<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let ran = Arc::new(Mutex::new(false));
    let handler_ran = Arc::clone(&ran);
    let app = serve(
        &db,
        Router::new()
            .route(
                "/",
                post(move || async move {
                    *handler_ran.lock().unwrap() = true;
                    StatusCode::OK
                }),
            )
            .layer(AtomicRequestsLayer::new()),
    );
    let (answer, errors) = capture_error_logs(status(&app, "POST", "/")).await;
    assert_eq!(answer, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!*ran.lock().unwrap(), "the handler ran in a nested request");
    assert!(
        errors
            .iter()
            .any(|message| message.contains("already running")),
        "{errors:?}"
    );
}

async fn after_begin_runs_once_and_only_for_requests_that_use_the_alias<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook_calls = Arc::clone(&calls);
    let layer = AtomicRequestsLayer::new()
        .databases(registry(&db))
        .after_begin(
            "default",
            move |conn: &mut C, head: &axum::http::request::Parts| -> HookFuture<'_> {
                hook_calls.lock().unwrap().push(head.uri.path().to_owned());
                Box::pin(async move {
                    conn.batch_execute("SELECT 1").await?;
                    Ok(())
                })
            },
        );
    let app = Router::new()
        .route("/static", get(|| async { "no database here" }))
        .route(
            "/write",
            post(|| async {
                insert_ambient::<C>(1).await.expect("insert");
                insert_ambient::<C>(2).await.expect("insert");
                StatusCode::OK
            }),
        )
        .layer(layer);
    assert_eq!(status(&app, "GET", "/static").await, StatusCode::OK);
    assert!(calls.lock().unwrap().is_empty(), "ran with no BEGIN");
    assert_eq!(status(&app, "POST", "/write").await, StatusCode::OK);
    assert_eq!(*calls.lock().unwrap(), ["/write"], "once per request");
    assert_eq!(db.committed().await, [1, 2]);
}

async fn after_begin_on_an_alias_without_request_transaction_answers_500<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let ran = Arc::new(Mutex::new(false));
    let handler_ran = Arc::clone(&ran);
    let app = Router::new()
        .route(
            "/",
            get(move || async move {
                *handler_ran.lock().unwrap() = true;
            }),
        )
        .layer(
            AtomicRequestsLayer::new()
                .databases(registry(&db))
                .after_begin(
                    "other",
                    |conn: &mut C, _: &axum::http::request::Parts| -> HookFuture<'_> {
                        Box::pin(async move { Ok(conn.batch_execute("SELECT 1").await?) })
                    },
                ),
        );
    let (answer, errors) = capture_error_logs(status(&app, "GET", "/")).await;
    assert_eq!(answer, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!*ran.lock().unwrap(), "the handler ran without its hook");
    assert!(
        errors.iter().any(|message| message.contains("'other'")),
        "the error does not name the alias: {errors:?}"
    );
}

// --- PostgreSQL: a tenant for row-level security, and a hook on the wrong type -------------

#[cfg(feature = "async-postgres")]
mod postgres_only {
    use super::*;
    use diesel::sql_types::{Nullable, Text};
    use diesel_async::{AsyncPgConnection, RunQueryDsl};

    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Nullable<Text>)]
        value: Option<String>,
    }

    /// `app.tenant` as the handler's connection sees it (`None`: unset or empty).
    async fn current_tenant() -> Option<String> {
        let setting = diesel_atomic::aio::connection(async |conn: &mut AsyncPgConnection| {
            diesel::sql_query("SELECT current_setting('app.tenant', true) AS value")
                .get_result::<Setting>(conn)
                .await
        })
        .await
        .expect("read the setting");
        setting.value.filter(|value| !value.is_empty())
    }

    fn tenant_from_header<'a>(
        conn: &'a mut AsyncPgConnection,
        head: &'a axum::http::request::Parts,
    ) -> HookFuture<'a> {
        let tenant = head
            .headers
            .get("x-tenant")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            diesel::sql_query("SELECT set_config('app.tenant', $1, true)")
                .bind::<Nullable<Text>, _>(tenant)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    async fn tenant_for_one_request(pool: PoolKind) {
        let db = TestDb::<AsyncPgConnection>::new(pool, 1).await;
        let app = Router::new()
            .route(
                "/tenant",
                get(|| async { format!("{:?}", current_tenant().await) }),
            )
            .route(
                "/no-hook",
                get(|| async {
                    // Outside the request transaction (exempt): no BEGIN, no hook.
                    #[non_atomic_requests]
                    async fn exempt() -> String {
                        format!("{:?}", current_tenant().await)
                    }
                    exempt().await
                }),
            )
            .layer(
                AtomicRequestsLayer::new()
                    .databases(registry(&db))
                    .after_begin("default", tenant_from_header),
            );
        let request = |path: &str, tenant: Option<&str>| {
            let mut request = Request::get(path);
            if let Some(tenant) = tenant {
                request = request.header("x-tenant", tenant);
            }
            request.body(Body::empty()).expect("request")
        };
        let body = |response: Response| async move {
            let bytes = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .expect("body");
            String::from_utf8(bytes.to_vec()).expect("UTF-8")
        };
        let first = app
            .clone()
            .oneshot(request("/tenant", Some("acme")))
            .await
            .expect("response");
        assert_eq!(body(first).await, r#"Some("acme")"#);
        // Pool of one: the same session, where the setting ended with the transaction.
        let next = app
            .clone()
            .oneshot(request("/no-hook", None))
            .await
            .expect("response");
        assert_eq!(body(next).await, "None", "the tenant outlived its request");
        let other = app
            .oneshot(request("/tenant", Some("globex")))
            .await
            .expect("response");
        assert_eq!(body(other).await, r#"Some("globex")"#);
    }

    #[test]
    fn the_tenant_is_set_for_the_request_and_gone_for_the_next_request() {
        common_aio::block_on(|| {
            common_aio::run::<AsyncPgConnection, _>(PoolKind::Deadpool, tenant_for_one_request)
        });
    }

    /// The alias holds SQLite connections; the hook is written for PostgreSQL's.
    async fn hook_on_the_wrong_type(pool: PoolKind) {
        let db = TestDb::<common_aio::Sqlite>::new(pool, 1).await;
        let app = Router::new()
            .route(
                "/",
                post(|| async {
                    match insert_ambient::<common_aio::Sqlite>(1).await {
                        Ok(()) => (StatusCode::OK, String::new()),
                        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                    }
                }),
            )
            .layer(
                AtomicRequestsLayer::new()
                    .databases(registry(&db))
                    .after_begin("default", tenant_from_header),
            );
        let response = send(&app, "POST", "/").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let message = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let message = String::from_utf8_lossy(&message);
        assert!(
            message.contains("after_begin hook of database alias 'default'")
                && message.contains("AsyncPgConnection"),
            "{message}"
        );
        assert!(db.committed().await.is_empty());
    }

    #[test]
    fn a_hook_on_the_wrong_connection_type_fails_naming_the_alias() {
        common_aio::block_on(|| {
            common_aio::run::<common_aio::Sqlite, _>(PoolKind::Deadpool, hook_on_the_wrong_type)
        });
    }
}
