//! End to end: the service of `examples/web_async.rs` on an ephemeral loopback port, real HTTP
//! requests (hyper-util's client), on SQLite, PostgreSQL and MariaDB; what was committed is
//! read back on a fresh connection. Each test serves its own app: the registry travels with
//! the layer (`AtomicRequestsLayer::databases`), so they run side by side.

#[path = "../examples/web_async/app.rs"]
mod app;
mod common_aio;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use app::{Outbox, Store};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::post;
use common_aio::{Backend, Kind, PATIENCE, PoolKind, TestDb, quiet_expected_panics, within};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

aio_tests!(deadpool:
    the_readme_session_answers_as_documented,
    a_panicking_handler_answers_500_and_the_server_keeps_serving,
    two_hundred_concurrent_signups_commit_exactly_the_successful_half,
    a_client_that_disconnects_while_its_handler_awaits_rolls_back,
);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The app on the test's databases (pools of `size` per alias), serving `routes`.
struct Service<C: Backend> {
    base: String,
    client: HttpClient,
    outbox: Outbox,
    server: JoinHandle<()>,
    db: TestDb<C>,
}

impl<C: Backend + Store> Service<C> {
    async fn start(pool: PoolKind, size: usize, routes: Router<Outbox>) -> Service<C> {
        let db = TestDb::<C>::with_other(pool, size).await;
        let databases = app::open_databases::<C>(&db.url, db.url_of("other"), size)
            .await
            .expect("the app's databases");
        let outbox = Outbox::default();
        let app = app::app(routes, databases, outbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        // On the runtime's workers: each connection a task of its own, as in production.
        let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Service {
            base,
            client: client(),
            outbox,
            server,
            db,
        }
    }

    fn request(&self, method: Method, path: &str, body: Option<&str>) -> Request<Full<Bytes>> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        match body {
            Some(json) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::from(json.to_owned())),
            None => request.body(Full::default()),
        }
        .expect("request")
    }

    /// The status and the body (JSON, or else the text as a JSON string).
    async fn send(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let request = self.client.request(self.request(method, path, body));
        let response = within(PATIENCE, path, request).await.expect("response");
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

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(&body.to_string())).await
    }

    /// The committed users' e-mails, by id, read on a fresh connection.
    async fn users(&self) -> Vec<String> {
        let mut conn = C::establish(&self.db.url).await.expect("fresh connection");
        let users = conn.users().await.expect("read users");
        serde_json::to_value(users)
            .expect("users as JSON")
            .as_array()
            .expect("a list")
            .iter()
            .map(|user| user["email"].as_str().expect("email").to_owned())
            .collect()
    }
}

impl<C: Backend> Drop for Service<C> {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// --- The README's session -----------------------------------------------------------------

/// One `curl` of the README's session: what is sent and what comes back.
#[derive(Debug)]
struct Exchange {
    method: Method,
    path: String,
    body: Option<String>,
    status: StatusCode,
    answer: Value,
}

/// The session of the README's "The async web example" section: each `$ curl ...` line of
/// its `console` block, and the line after it (the body, a space, the status).
fn readme_session() -> Vec<Exchange> {
    let readme = include_str!("../README.md");
    let section = readme
        .split_once("### The async web example")
        .expect("the README's async web example section")
        .1;
    let block = section
        .split_once("```console\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a console block")
        .0;
    let mut lines = block.lines();
    let mut session = Vec::new();
    while let Some(command) = lines.next() {
        let command = command.strip_prefix("$ curl ").expect("a curl command");
        let output = lines.next().expect("the command's output");
        let path = command
            .split_whitespace()
            .find_map(|word| word.strip_prefix("localhost:8000"))
            .expect("a localhost:8000 URL");
        let body = command
            .split_once(" -d '")
            .map(|(_, data)| data.strip_suffix('\'').expect("quoted data").to_owned());
        let (answer, status) = output.rsplit_once(' ').expect("body and status");
        session.push(Exchange {
            method: if body.is_some() {
                Method::POST
            } else {
                Method::GET
            },
            path: path.to_owned(),
            body,
            status: status.parse().expect("a status code"),
            answer: serde_json::from_str(answer).expect("a JSON answer"),
        });
    }
    assert!(session.len() >= 8, "the session was not found: {session:?}");
    session
}

/// `value` without its `"id"` fields.
fn without_ids(value: &Value) -> Value {
    match value {
        Value::Object(fields) => fields
            .iter()
            .filter(|(name, _)| *name != "id")
            .map(|(name, value)| (name.clone(), without_ids(value)))
            .collect(),
        Value::Array(items) => items.iter().map(without_ids).collect(),
        other => other.clone(),
    }
}

async fn the_readme_session_answers_as_documented<C: Backend + Store>(pool: PoolKind) {
    let service = Service::<C>::start(pool, 2, app::routes::<C>()).await;

    for exchange in readme_session() {
        let (status, answer) = service
            .send(
                exchange.method.clone(),
                &exchange.path,
                exchange.body.as_deref(),
            )
            .await;
        assert_eq!(status, exchange.status, "{exchange:?}: answered {answer}");
        // A rolled-back INSERT uses up its id on the servers (a sequence, an auto-increment),
        // not on SQLite, which the README shows.
        if C::KIND == Kind::Sqlite {
            assert_eq!(answer, exchange.answer, "{exchange:?}");
        } else {
            assert_eq!(
                without_ids(&answer),
                without_ids(&exchange.answer),
                "{exchange:?}"
            );
        }
    }
    assert_eq!(
        service.users().await,
        ["ada@example.com", "bob@example.com", "cy@example.com"]
    );
    assert_eq!(
        service.outbox.sent(),
        ["ada@example.com", "bob@example.com", "cy@example.com"]
    );
}

// --- A panic --------------------------------------------------------------------------------

async fn signup_then_panic<C: Store>(State(outbox): State<Outbox>) -> StatusCode {
    let signed_up = app::create_user::<C>(&outbox, "panic@example.com").await;
    panic!(
        "the handler fell over after its INSERT ({})",
        signed_up.is_ok()
    );
}

async fn a_panicking_handler_answers_500_and_the_server_keeps_serving<C: Backend + Store>(
    pool: PoolKind,
) {
    quiet_expected_panics("the handler fell over");
    // One connection: the panicking request's must come back to the pool, outside its
    // transaction, for the next requests to be served.
    let routes = app::routes::<C>().route("/panic", post(signup_then_panic::<C>));
    let service = Service::<C>::start(pool, 1, routes).await;

    let (status, body) = service.send(Method::POST, "/panic", None).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, "", "nothing of the panic leaks");
    assert!(
        service.users().await.is_empty(),
        "the INSERT was rolled back"
    );
    assert!(
        service.outbox.sent().is_empty(),
        "a rolled-back user got a mail"
    );
    for n in 0..4 {
        let email = format!("after-panic-{n}@example.com");
        let (status, body) = service.post("/signup", json!({ "email": email })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(service.users().await.len(), 4);
    assert_eq!(service.outbox.sent().len(), 4);
}

// --- Many at once ---------------------------------------------------------------------------

async fn two_hundred_concurrent_signups_commit_exactly_the_successful_half<C: Backend + Store>(
    pool: PoolKind,
) {
    const REQUESTS: usize = 200;
    let service = Service::<C>::start(pool, 4, app::routes::<C>()).await;
    // Committed before the requests, outside the app: its mail is not in the outbox.
    let mut conn = C::establish(&service.db.url).await.expect("connection");
    conn.insert_user("taken@example.com")
        .await
        .expect("the taken address");

    // Even requests succeed; odd ones fail after their INSERT (an invalid address: 400) or
    // at it (a taken one: 409).
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
    let started = Instant::now();
    let answers = futures_util::future::join_all(
        (0..REQUESTS).map(|n| service.post("/signup", json!({ "email": email(n) }))),
    )
    .await;
    eprintln!(
        "{:?}: {REQUESTS} concurrent requests took {:?}",
        C::KIND,
        started.elapsed()
    );

    let statuses: Vec<StatusCode> = answers.iter().map(|(status, _)| *status).collect();
    let expected: Vec<StatusCode> = (0..REQUESTS).map(expected_status).collect();
    assert_eq!(statuses, expected);
    let successful: Vec<String> = (0..REQUESTS).step_by(2).map(email).collect();
    let mut committed = service.users().await;
    committed.retain(|email| email != "taken@example.com");
    committed.sort();
    let mut sent = service.outbox.sent();
    sent.sort();
    let mut want = successful.clone();
    want.sort();
    assert_eq!(committed.len(), 100, "committed rows");
    assert_eq!(committed, want, "exactly the successful half committed");
    assert_eq!(sent.len(), 100, "on_commit callbacks run");
    assert_eq!(sent, want, "exactly the committed users got a mail");
}

// --- A client that goes away ----------------------------------------------------------------

/// What the waiting handler takes on its one call: where to say it inserted, and the signal
/// it then awaits.
type Signals = Arc<Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>>;

async fn a_client_that_disconnects_while_its_handler_awaits_rolls_back<C: Backend + Store>(
    pool: PoolKind,
) {
    let (inserted_tx, inserted_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let signals: Signals = Arc::new(Mutex::new(Some((inserted_tx, release_rx))));
    let routes = app::routes::<C>().route(
        "/signup-and-wait",
        post(move |State(outbox): State<Outbox>| async move {
            let (inserted, release) = signals.lock().unwrap().take().expect("one call");
            let user = app::create_user::<C>(&outbox, "gone@example.com").await;
            let _ = inserted.send(());
            // The test never sends it: the client goes away first.
            let _ = release.await;
            match user {
                Ok(_) => StatusCode::CREATED,
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
            }
        }),
    );
    // One connection: it must not come back to the pool inside the dropped request's
    // transaction.
    let service = Service::<C>::start(pool, 1, routes).await;

    let leaving = client();
    let request = leaving.request(service.request(Method::POST, "/signup-and-wait", None));
    let request = tokio::spawn(request);
    within(PATIENCE, "the handler's INSERT", inserted_rx)
        .await
        .expect("the handler ran");
    // The server sees the request's transaction (so that seeing none later means something):
    // PostgreSQL in pg_stat_activity, MariaDB in information_schema.innodb_trx, SQLite as
    // the write lock held.
    let mut raw = service.db.raw().await;
    let open = raw
        .open_transactions_elsewhere()
        .await
        .expect("ask the server");
    assert_eq!(open, 1, "the waiting request's transaction");
    // The client goes away: the request is cancelled and its connection closed.
    request.abort();
    drop(leaving);
    // The server dropped the handler's future, and the receiver it awaited with it.
    let mut release_tx = release_tx;
    within(
        PATIENCE,
        "the server dropping the handler",
        release_tx.closed(),
    )
    .await;

    // And now none: the connection was closed, not given back inside the transaction.
    service
        .db
        .assert_no_open_transaction_elsewhere(&mut raw)
        .await;
    assert!(
        service.users().await.is_empty(),
        "the INSERT was rolled back"
    );
    assert!(
        service.outbox.sent().is_empty(),
        "the dropped request sent a mail"
    );
    // The pool's one connection serves the next request, whose write commits.
    let (status, body) = service
        .post("/signup", json!({ "email": "next@example.com" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(service.users().await, ["next@example.com"]);
    assert_eq!(service.outbox.sent(), ["next@example.com"]);
}
