//! A gRPC service (tonic) behind `diesel_atomic::tower::AtomicRequestsLayer`, called by a real
//! tonic client over a socket, on PostgreSQL. tonic answers a failed call with HTTP 200 and
//! its status in a `grpc-status` header, which the layer's default decision
//! (`commit_unless_failed`) reads: `Ok` commits, `Err(Status)` rolls back. A panic in the
//! method and a failed COMMIT reach the client as `INTERNAL` (the layer answers a gRPC call
//! with `grpc-status: 13`, not a 500, which a gRPC client reads as `UNKNOWN`).
//!
//! The service is `accounts.Accounts/Create(CreateRequest { email }) -> CreateReply { id }`.
//! Its messages and glue are written by hand, as tonic-build would generate them from
//! `accounts.proto`, so that no protoc is needed.

mod common_aio;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use common_aio::{PATIENCE, PoolKind, TestDb, quiet_expected_panics, within};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_atomic::tower::AtomicRequestsLayer;
use diesel_atomic::{Databases, aio};
use tonic::body::Body;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

// --- What tonic-build would generate ----------------------------------------------------------

/// `message CreateRequest { string email = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
struct CreateRequest {
    #[prost(string, tag = "1")]
    email: String,
}

/// `message CreateReply { int64 id = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
struct CreateReply {
    #[prost(int64, tag = "1")]
    id: i64,
}

const CREATE: &str = "/accounts.Accounts/Create";

/// The client half: one unary call.
struct AccountsClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl AccountsClient {
    async fn connect(address: String) -> AccountsClient {
        let channel = Endpoint::from_shared(address)
            .expect("address")
            .connect()
            .await
            .expect("connect");
        AccountsClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn create(&mut self, email: &str) -> Result<CreateReply, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|error| Status::unknown(format!("service not ready: {error}")))?;
        let request = tonic::Request::new(CreateRequest {
            email: email.to_owned(),
        });
        let path = http::uri::PathAndQuery::from_static(CREATE);
        let call = self.grpc.unary(request, path, ProstCodec::default());
        let reply = within(PATIENCE, CREATE, call).await?;
        Ok(reply.into_inner())
    }
}

/// The server half: routes `Create` to [`Accounts::create`], decoding and encoding with prost.
#[derive(Clone)]
struct AccountsServer(Accounts);

impl tower::Service<http::Request<Body>> for AccountsServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let accounts = self.0.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                CREATE => {
                    // tonic's `UnaryService` is any tower service of `tonic::Request`s.
                    let create = tower::service_fn(move |call| {
                        let accounts = accounts.clone();
                        async move { accounts.create(call).await }
                    });
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(create, request).await
                }
                _ => Status::unimplemented(request.uri().path().to_owned()).into_http(),
            })
        })
    }
}

// --- The service ----------------------------------------------------------------------------

/// The accounts service; `created` records the e-mails its `on_commit` callbacks saw.
#[derive(Clone, Default)]
struct Accounts {
    created: Arc<Mutex<Vec<String>>>,
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

impl Accounts {
    /// Inserts the account, queues the callback, and only then validates the address: an
    /// invalid one fails after the INSERT, which the request's rollback takes back.
    async fn create(
        &self,
        request: tonic::Request<CreateRequest>,
    ) -> Result<tonic::Response<CreateReply>, Status> {
        let email = request.into_inner().email;
        let Id { id } = aio::connection(async |conn: &mut AsyncPgConnection| {
            diesel::sql_query("INSERT INTO accounts (email) VALUES ($1) RETURNING id")
                .bind::<Text, _>(&email)
                .get_result::<Id>(conn)
                .await
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
        let (created, to) = (Arc::clone(&self.created), email.clone());
        aio::transaction::on_commit(move || created.lock().unwrap().push(to))
            .map_err(|error| Status::internal(error.to_string()))?;
        if !email.contains('@') {
            return Err(Status::invalid_argument(format!(
                "invalid e-mail address {email:?}"
            )));
        }
        if email.starts_with("panic@") {
            panic!("expected panic: the method panics after its INSERT");
        }
        Ok(tonic::Response::new(CreateReply { id }))
    }

    fn created(&self) -> Vec<String> {
        self.created.lock().unwrap().clone()
    }
}

/// The service on the test's database, served by tonic behind the layer on an ephemeral
/// port, and a client connected to it.
struct Served {
    db: TestDb<AsyncPgConnection>,
    accounts: Accounts,
    client: AccountsClient,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(pool: PoolKind) -> Served {
        let db = TestDb::<AsyncPgConnection>::new(pool, 1).await;
        db.raw()
            .await
            // A unique address, checked at COMMIT: a second account for an address makes the
            // request's COMMIT fail.
            .batch_execute(
                "CREATE TABLE accounts (
                     id BIGSERIAL PRIMARY KEY,
                     email TEXT NOT NULL,
                     UNIQUE (email) DEFERRABLE INITIALLY DEFERRED
                 )",
            )
            .await
            .expect("schema");
        let databases = Databases::new().add("default", db.pool.database().atomic_requests(true));
        let accounts = Accounts::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let server = Server::builder()
            .layer(AtomicRequestsLayer::new().databases(databases))
            .serve_with_incoming(
                AccountsServer(accounts.clone()),
                TcpIncoming::from(listener),
            );
        let server = tokio::spawn(async move { server.await.expect("serve") });
        Served {
            db,
            accounts,
            client: AccountsClient::connect(address).await,
            server,
        }
    }

    /// The committed accounts' e-mails, read on a fresh connection.
    async fn committed(&self) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Email {
            #[diesel(sql_type = Text)]
            email: String,
        }
        diesel::sql_query("SELECT email FROM accounts ORDER BY id")
            .load::<Email>(&mut self.db.raw().await)
            .await
            .expect("read accounts")
            .into_iter()
            .map(|row| row.email)
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// --- Tests ----------------------------------------------------------------------------------

async fn ok_commits(pool: PoolKind) {
    let mut served = Served::start(pool).await;

    let reply = served
        .client
        .create("ada@example.com")
        .await
        .expect("created");

    assert!(reply.id > 0, "{reply:?}");
    assert_eq!(served.committed().await, ["ada@example.com"]);
    assert_eq!(
        served.accounts.created(),
        ["ada@example.com"],
        "on_commit ran"
    );
}

#[test]
fn an_ok_reply_commits_and_runs_the_on_commit_callbacks() {
    common_aio::block_on(|| {
        common_aio::run::<AsyncPgConnection, _>(PoolKind::Deadpool, ok_commits)
    });
}

async fn error_status_rolls_back(pool: PoolKind) {
    let mut served = Served::start(pool).await;

    let status = served
        .client
        .create("not-an-email")
        .await
        .expect_err("an invalid address");

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "invalid e-mail address \"not-an-email\"");
    assert!(
        served.committed().await.is_empty(),
        "the INSERT was rolled back"
    );
    assert!(
        served.accounts.created().is_empty(),
        "on_commit ran after a rollback"
    );
    // The decision is per call: the next one, on the pool's one connection, commits.
    served
        .client
        .create("bob@example.com")
        .await
        .expect("created");
    assert_eq!(served.committed().await, ["bob@example.com"]);
    assert_eq!(served.accounts.created(), ["bob@example.com"]);
}

#[test]
fn an_error_status_after_the_insert_rolls_back_and_runs_no_callbacks() {
    common_aio::block_on(|| {
        common_aio::run::<AsyncPgConnection, _>(PoolKind::Deadpool, error_status_rolls_back)
    });
}

async fn a_panic_is_internal(pool: PoolKind) {
    quiet_expected_panics("expected panic");
    let mut served = Served::start(pool).await;

    let status = served
        .client
        .create("panic@example.com")
        .await
        .expect_err("the method panicked");

    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(served.committed().await.is_empty(), "rolled back");
    assert!(served.accounts.created().is_empty(), "no callback ran");
    // The service keeps serving, on the pool's one connection.
    served
        .client
        .create("ada@example.com")
        .await
        .expect("created");
    assert_eq!(served.committed().await, ["ada@example.com"]);
}

#[test]
fn a_panicking_method_rolls_back_and_reaches_the_client_as_internal() {
    common_aio::block_on(|| {
        common_aio::run::<AsyncPgConnection, _>(PoolKind::Deadpool, a_panic_is_internal)
    });
}

async fn a_failed_commit_is_internal(pool: PoolKind) {
    let mut served = Served::start(pool).await;
    served
        .client
        .create("ada@example.com")
        .await
        .expect("created");

    // The INSERT succeeds (the unique check is deferred); the COMMIT fails.
    let status = served
        .client
        .create("ada@example.com")
        .await
        .expect_err("the COMMIT failed");

    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "the request's transaction did not commit");
    assert_eq!(served.committed().await, ["ada@example.com"]);
    assert_eq!(
        served.accounts.created(),
        ["ada@example.com"],
        "the failed COMMIT ran no callback"
    );
}

#[test]
fn a_failed_commit_reaches_the_client_as_internal_and_runs_no_callbacks() {
    common_aio::block_on(|| {
        common_aio::run::<AsyncPgConnection, _>(PoolKind::Deadpool, a_failed_commit_is_internal)
    });
}
