//! End to end: the service of `examples/web.rs` on an ephemeral loopback port, real HTTP
//! requests, and the database checked afterwards with a fresh connection.
//!
//! The registry is process-wide (`Databases::install`, as a service does it), so the tests
//! take turns: each holds [`REGISTRY`] while its service runs.

#[path = "../examples/web/app.rs"]
mod app;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use diesel::prelude::*;
use diesel_atomic::axum::atomic_view;
use diesel_atomic::transaction;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinHandle;

/// Held by the running test: its registry is the installed one.
static REGISTRY: Mutex<()> = Mutex::const_new(());

/// The service on its own databases, and a client for it.
struct Service {
    base: String,
    dir: TempDir,
    client: Client<HttpConnector, Full<Bytes>>,
    server: JoinHandle<()>,
    _registry: MutexGuard<'static, ()>,
}

impl Service {
    async fn start() -> Service {
        Service::start_with(app::router()).await
    }

    /// Serves `router` on 127.0.0.1, port chosen by the system.
    async fn start_with(router: Router) -> Service {
        let registry = REGISTRY.lock().await;
        let dir = tempfile::tempdir().expect("temp dir");
        app::open_databases(dir.path())
            .expect("databases")
            .install()
            .expect("install");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        Service {
            base,
            dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
            server,
            _registry: registry,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None).await
    }

    /// The status and the body (JSON, or else the text as a JSON string).
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        let request = match body {
            Some(json) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::from(json.to_string())),
            None => request.body(Full::default()),
        };
        let response = self
            .client
            .request(request.expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    /// What `sql` selects (one text column) from `alias`'s database, on a fresh connection.
    fn select(&self, alias: &str, sql: &str) -> Vec<String> {
        let (_, file, _) = app::DATABASES
            .into_iter()
            .find(|(name, _, _)| *name == alias)
            .expect("alias");
        let path = self.dir.path().join(file);
        let mut conn = SqliteConnection::establish(path.to_str().expect("UTF-8 path"))
            .expect("fresh connection");
        diesel::dsl::sql::<diesel::sql_types::Text>(sql)
            .load(&mut conn)
            .expect("select")
    }

    fn users(&self) -> Vec<String> {
        self.select("default", "SELECT email FROM users ORDER BY id")
    }

    fn audit(&self) -> Vec<String> {
        self.select("default", "SELECT event FROM audit ORDER BY id")
    }

    fn notes(&self) -> Vec<String> {
        self.select("other", "SELECT body FROM notes ORDER BY id")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_commits_user_and_audit_row_then_queues_mail() {
    let service = Service::start().await;

    let (status, body) = service
        .post("/signup", json!({ "email": "ada@example.com" }))
        .await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["email"], "ada@example.com");
    assert_eq!(service.users(), ["ada@example.com"]);
    assert_eq!(service.audit(), ["signup ada@example.com"]);
    // on_commit ran after the request's COMMIT, before the response was sent.
    assert!(app::welcome_mails().contains(&"ada@example.com".to_owned()));
    let (status, users) = service.get("/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        users,
        json!([{ "id": body["id"], "email": "ada@example.com" }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_after_the_inserts_rolls_back_the_request() {
    let service = Service::start().await;

    let (status, body) = service
        .post("/signup", json!({ "email": "no-at-sign.example.com" }))
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body,
        json!({ "error": "invalid e-mail address \"no-at-sign.example.com\"" })
    );
    assert!(service.users().is_empty(), "the user was rolled back");
    assert!(service.audit().is_empty(), "the audit row was rolled back");
    assert!(!app::welcome_mails().contains(&"no-at-sign.example.com".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_signup_rolls_back_its_audit_row() {
    let service = Service::start().await;

    let (first, _) = service
        .post("/signup", json!({ "email": "bob@example.com" }))
        .await;
    let (second, body) = service
        .post("/signup", json!({ "email": "bob@example.com" }))
        .await;

    assert_eq!(first, StatusCode::CREATED);
    assert_eq!(second, StatusCode::CONFLICT, "{body}");
    assert_eq!(service.users(), ["bob@example.com"]);
    assert_eq!(
        service.audit(),
        ["signup bob@example.com"],
        "the second request's audit row, written before its failed INSERT, was rolled back"
    );
}

/// Set by the panicking view's on_commit callback, which must never run.
static PANICKED_VIEW_COMMITTED: AtomicBool = AtomicBool::new(false);

/// A view that writes, registers an on_commit callback, then panics.
fn signup_then_panic() -> Result<StatusCode, TestError> {
    diesel_atomic::connection(|conn: &mut SqliteConnection| {
        diesel::sql_query("INSERT INTO users (email) VALUES ('panic@example.com')").execute(conn)
    })?;
    transaction::on_commit(|| PANICKED_VIEW_COMMITTED.store(true, Ordering::SeqCst))?;
    panic!("the view fell over after its INSERT");
}

#[derive(Debug)]
struct TestError(String);

impl From<diesel_atomic::Error> for TestError {
    fn from(error: diesel_atomic::Error) -> Self {
        TestError(error.to_string())
    }
}

impl From<diesel::result::Error> for TestError {
    fn from(error: diesel::result::Error) -> Self {
        TestError(error.to_string())
    }
}

impl IntoResponse for TestError {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_view_rolls_back_and_the_service_keeps_serving() {
    let router = app::router().route("/panic", post(|| atomic_view(signup_then_panic)));
    let service = Service::start_with(router).await;

    let (status, body) = service.post("/panic", json!({})).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body, "internal server error\n",
        "nothing of the panic leaks"
    );
    assert!(service.users().is_empty(), "the INSERT was rolled back");
    assert!(!PANICKED_VIEW_COMMITTED.load(Ordering::SeqCst));

    // The blocking threads (and their thread-local transaction state) are reused.
    for n in 0..4 {
        let email = format!("after-panic-{n}@example.com");
        let (status, body) = service.post("/signup", json!({ "email": email })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(service.users().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_import_commits_good_rows_one_by_one() {
    let service = Service::start().await;

    let (status, report) = service
        .post(
            "/import",
            json!({ "emails": ["cy@example.com", "bad", "dee@example.com", "cy@example.com"] }),
        )
        .await;

    assert_eq!(status, StatusCode::OK, "{report}");
    let imported: Vec<&str> = report["imported"]
        .as_array()
        .expect("imported")
        .iter()
        .map(|user| user["email"].as_str().expect("email"))
        .collect();
    assert_eq!(imported, ["cy@example.com", "dee@example.com"]);
    assert_eq!(
        report["skipped"],
        json!([
            { "email": "bad", "error": "invalid e-mail address \"bad\"" },
            { "email": "cy@example.com", "error": "\"cy@example.com\" is already signed up" },
        ])
    );
    assert_eq!(service.users(), ["cy@example.com", "dee@example.com"]);
    assert_eq!(
        service.audit(),
        ["signup cy@example.com", "signup dee@example.com"],
        "each bad row's audit row went with its own block"
    );
    let mails = app::welcome_mails();
    assert!(mails.contains(&"cy@example.com".to_owned()));
    assert!(mails.contains(&"dee@example.com".to_owned()));
    assert!(!mails.contains(&"bad".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_commit_on_the_other_alias_only() {
    let service = Service::start().await;

    let (status, body) = service
        .post("/notes", json!({ "body": "remember the milk" }))
        .await;
    let (empty, _) = service.post("/notes", json!({ "body": "  " })).await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(empty, StatusCode::BAD_REQUEST);
    assert_eq!(service.notes(), ["remember the milk"]);
    assert!(service.users().is_empty() && service.audit().is_empty());
    let (_, notes) = service.get("/notes").await;
    assert_eq!(
        notes,
        json!([{ "id": body["id"], "body": "remember the milk" }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_signups_commit_exactly_the_successful_half() {
    let service = Service::start().await;
    let (status, _) = service
        .post("/signup", json!({ "email": "taken@example.com" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Even requests succeed; odd ones fail after their INSERTs: an invalid address (400) or
    // a taken one (409).
    let email = |n: usize| match n % 4 {
        0 | 2 => format!("user{n}@example.com"),
        1 => format!("user{n}@invalid"),
        _ => "taken@example.com".to_owned(),
    };
    let expected_status = |n: usize| match n % 4 {
        0 | 2 => StatusCode::CREATED,
        1 => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    let service = std::sync::Arc::new(service);
    let started = Instant::now();
    let requests: Vec<_> = (0..50)
        .map(|n| {
            let service = service.clone();
            let email = email(n);
            tokio::spawn(async move { service.post("/signup", json!({ "email": email })).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("request task").0);
    }
    eprintln!("50 concurrent requests took {:?}", started.elapsed());

    let expected: Vec<StatusCode> = (0..50).map(expected_status).collect();
    assert_eq!(statuses, expected);
    let mut committed = service.users();
    committed.sort();
    let mut successful: Vec<String> = std::iter::once("taken@example.com".to_owned())
        .chain((0..50).step_by(2).map(email))
        .collect();
    successful.sort();
    assert_eq!(
        committed, successful,
        "exactly the successful half committed"
    );
    assert_eq!(
        service.audit().len(),
        26,
        "one audit row per committed user"
    );
    let mails = app::welcome_mails();
    for n in (0..50).step_by(2) {
        assert!(
            mails.contains(&email(n)),
            "request {n} committed: mail sent"
        );
    }
    for n in (1..50).step_by(4) {
        assert!(
            !mails.contains(&email(n)),
            "request {n} rolled back: no mail"
        );
    }
    let taken = mails.iter().filter(|to| *to == "taken@example.com");
    assert_eq!(taken.count(), 1, "the duplicates sent no second mail");
}
