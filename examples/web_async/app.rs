//! The service of `examples/web_async.rs`, also started by `tests/web_async.rs`.
//!
//! Async axum handlers on diesel-async, each request inside `AtomicRequestsLayer`: the
//! request's work on each alias is one transaction, committed when the handler answers 2xx or
//! 3xx, rolled back on 4xx, 5xx or a panic. Two aliases: "default" holds `users`, "other"
//! holds `notes`. The handlers are generic over the connection type ([`Store`]): SQLite
//! through diesel-async's `SyncConnectionWrapper`, PostgreSQL, MariaDB.

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use diesel::sql_types::BigInt;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_atomic::tower::AtomicRequestsLayer;
use diesel_atomic::{Database, Databases, aio, atomic, non_atomic_requests};
use serde::{Deserialize, Serialize};

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
    }
}

diesel::table! {
    notes (id) {
        id -> BigInt,
        body -> Text,
    }
}

/// SQLite through diesel-async: each statement runs on tokio's blocking pool.
pub type Sqlite = SyncConnectionWrapper<SqliteConnection>;

/// Any setup error (a bad URL, a server that is down, a failed CREATE TABLE).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens both aliases, `size` connections each, creating their tables if needed; both with
/// per-request transactions.
pub async fn open_databases<C: Store>(
    default_url: &str,
    other_url: &str,
    size: usize,
) -> Result<Databases, BoxError> {
    let default = C::open(default_url, size, C::USERS).await?;
    let other = C::open(other_url, size, C::NOTES).await?;
    Ok(Databases::new()
        .add("default", default.atomic_requests(true))
        .add("other", other.atomic_requests(true)))
}

/// The routes; [`app`] serves them.
pub fn routes<C: Store>() -> Router<Outbox> {
    Router::new()
        .route("/signup", post(signup::<C>))
        .route("/import", post(import::<C>))
        .route("/users", get(list_users::<C>))
        .route("/notes", get(list_notes::<C>).post(add_note::<C>))
        .route(
            "/outbox",
            get(|State(outbox): State<Outbox>| async move { Json(outbox.sent()) }),
        )
}

/// `routes` with every request inside the request's transactions on `databases`' aliases.
///
/// The registry travels with the layer, which enters it around every poll of a request, so
/// the tests serve one app per backend side by side. A service with one registry may
/// `install()` it instead and use `AtomicRequestsLayer::new()`.
pub fn app(routes: Router<Outbox>, databases: Databases, outbox: Outbox) -> Router {
    routes
        .with_state(outbox)
        .layer(AtomicRequestsLayer::new().databases(databases))
}

// --- Handlers: async, inside the request's transactions -------------------------------------

/// `POST /signup`: the whole request is one transaction on "default".
async fn signup<C: Store>(
    State(outbox): State<Outbox>,
    Json(form): Json<Signup>,
) -> Result<(StatusCode, Json<User>), AppError> {
    let user = create_user::<C>(&outbox, &form.email).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// `POST /import`: exempt from the request's transaction on "default", so that every row is
/// a transaction of its own: a bad row is skipped and the good ones stay committed.
#[non_atomic_requests]
async fn import<C: Store>(
    State(outbox): State<Outbox>,
    Json(form): Json<Import>,
) -> Json<ImportReport> {
    let mut report = ImportReport::default();
    for email in form.emails {
        match import_one::<C>(&outbox, &email).await {
            Ok(user) => report.imported.push(user),
            Err(error) => report.skipped.push(Skipped {
                error: error.to_string(),
                email,
            }),
        }
    }
    Json(report)
}

/// One imported row. `durable`: this must be the outermost block, so `Ok` means committed;
/// it would fail with `Error::DurableNested` if the handler were not exempt.
#[atomic(durable = true)]
async fn import_one<C: Store>(outbox: &Outbox, email: &str) -> Result<User, AppError> {
    create_user::<C>(outbox, email).await
}

/// Writes the user and queues the welcome mail for after the commit.
pub async fn create_user<C: Store>(outbox: &Outbox, email: &str) -> Result<User, AppError> {
    let id = aio::connection(async |conn: &mut C| {
        conn.insert_user(email)
            .await
            .map_err(|error| AppError::insert_failed(email, error))
    })
    .await?;

    // Runs after the transaction commits, never if it rolls back.
    let (outbox, to) = (outbox.clone(), email.to_owned());
    aio::transaction::on_commit(move || outbox.send_welcome_mail(to))?;

    // A real handler checks its input first. This one checks last, to show that an error
    // after the INSERT takes it back, and the queued mail with it.
    if !is_valid_email(email) {
        return Err(AppError::InvalidEmail(email.to_owned()));
    }
    Ok(User {
        id,
        email: email.to_owned(),
    })
}

/// `POST /notes`: one transaction on "other"; nothing touches "default", so no transaction
/// is begun there.
async fn add_note<C: Store>(
    Json(form): Json<NewNote>,
) -> Result<(StatusCode, Json<Note>), AppError> {
    if form.body.trim().is_empty() {
        return Err(AppError::EmptyNote);
    }
    let id = aio::db("other")
        .connection(async |conn: &mut C| conn.insert_note(&form.body).await)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Note {
            id,
            body: form.body,
        }),
    ))
}

/// `GET /users`.
async fn list_users<C: Store>() -> Result<Json<Vec<User>>, AppError> {
    let users = aio::connection(async |conn: &mut C| conn.users().await).await?;
    Ok(Json(users))
}

/// `GET /notes`.
async fn list_notes<C: Store>() -> Result<Json<Vec<Note>>, AppError> {
    let notes = aio::db("other")
        .connection(async |conn: &mut C| conn.notes().await)
        .await?;
    Ok(Json(notes))
}

fn is_valid_email(email: &str) -> bool {
    email
        .split_once('@')
        .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
}

/// Stands in for a mail queue: the addresses "sent" a welcome mail, in order. Shared by the
/// handlers as axum state, so each app (each test) has its own.
#[derive(Clone, Default)]
pub struct Outbox(Arc<Mutex<Vec<String>>>);

impl Outbox {
    fn send_welcome_mail(&self, to: String) {
        tracing::info!(%to, "committed: welcome mail queued");
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(to);
    }

    /// The addresses sent a welcome mail so far.
    pub fn sent(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// --- The connection types ----------------------------------------------------------------

/// What the handlers need from a connection type. diesel's query types are checked per
/// backend, so the queries are written once, in [`store!`], and implemented for each
/// connection type; what differs between the backends is in its arguments.
pub trait Store: AsyncConnection + Send + 'static {
    /// The table of "default", created if missing.
    const USERS: &'static str;
    /// The table of "other", created if missing.
    const NOTES: &'static str;

    /// A pool of `size` connections to `url`, after running `schema` there.
    fn open(
        url: &str,
        size: usize,
        schema: &str,
    ) -> impl Future<Output = Result<Database, BoxError>>;
    // The queries' futures are `Send`: a handler's future moves between tokio's workers.
    /// Inserts the user and returns its id.
    fn insert_user(&mut self, email: &str) -> impl Future<Output = QueryResult<i64>> + Send;
    /// Every user, by id.
    fn users(&mut self) -> impl Future<Output = QueryResult<Vec<User>>> + Send;
    /// Inserts the note and returns its id.
    fn insert_note(&mut self, body: &str) -> impl Future<Output = QueryResult<i64>> + Send;
    /// Every note, by id.
    fn notes(&mut self) -> impl Future<Output = QueryResult<Vec<Note>>> + Send;
}

macro_rules! store {
    (
        $conn:ty,
        users = $users:literal,
        notes = $notes:literal,
        // The id the connection's last INSERT got, as a BIGINT.
        last_id = $last_id:literal,
        // What every pooled connection runs when it is opened, if anything.
        $(on_connect = $on_connect:literal,)?
    ) => {
        impl Store for $conn {
            const USERS: &'static str = $users;
            const NOTES: &'static str = $notes;

            async fn open(url: &str, size: usize, schema: &str) -> Result<Database, BoxError> {
                let mut config = ManagerConfig::<Self>::default();
                config.custom_setup = Box::new(|url| {
                    let url = url.to_owned();
                    Box::pin(async move {
                        #[allow(unused_mut, reason = "without on_connect")]
                        let mut conn = Self::establish(&url).await?;
                        $(conn.batch_execute($on_connect)
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;)?
                        Ok(conn)
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(url, config);
                let pool = Pool::builder(manager).max_size(size).build()?;
                pool.get().await?.batch_execute(schema).await?;
                Ok(Database::new_async(pool))
            }

            async fn insert_user(&mut self, email: &str) -> QueryResult<i64> {
                diesel::insert_into(users::table)
                    .values(users::email.eq(email))
                    .execute(self)
                    .await?;
                diesel::select(diesel::dsl::sql::<BigInt>($last_id))
                    .get_result(self)
                    .await
            }

            async fn users(&mut self) -> QueryResult<Vec<User>> {
                users::table.order(users::id).load(self).await
            }

            async fn insert_note(&mut self, body: &str) -> QueryResult<i64> {
                diesel::insert_into(notes::table)
                    .values(notes::body.eq(body))
                    .execute(self)
                    .await?;
                diesel::select(diesel::dsl::sql::<BigInt>($last_id))
                    .get_result(self)
                    .await
            }

            async fn notes(&mut self) -> QueryResult<Vec<Note>> {
                notes::table.order(notes::id).load(self).await
            }
        }
    };
}

store!(
    Sqlite,
    users = "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE)",
    notes = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    last_id = "last_insert_rowid()",
    // WAL, as a server runs SQLite: readers do not block the writer, and concurrent writers
    // wait for each other (busy_timeout) instead of failing at once.
    on_connect =
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;",
);

#[cfg(feature = "async-postgres")]
store!(
    diesel_async::AsyncPgConnection,
    users =
        "CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE)",
    notes = "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)",
    last_id = "lastval()",
);

#[cfg(feature = "async-mysql")]
store!(
    diesel_async::AsyncMysqlConnection,
    // MariaDB indexes no unbounded TEXT: the unique e-mail is a VARCHAR.
    users = "CREATE TABLE IF NOT EXISTS users \
             (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) NOT NULL UNIQUE)",
    notes = "CREATE TABLE IF NOT EXISTS notes \
             (id BIGINT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL)",
    last_id = "CAST(LAST_INSERT_ID() AS SIGNED)",
);

// --- Requests, responses, errors -------------------------------------------------------------

#[derive(Deserialize)]
struct Signup {
    email: String,
}

#[derive(Deserialize)]
struct Import {
    emails: Vec<String>,
}

#[derive(Deserialize)]
struct NewNote {
    body: String,
}

#[derive(Queryable, Serialize)]
pub struct User {
    id: i64,
    email: String,
}

#[derive(Queryable, Serialize)]
pub struct Note {
    id: i64,
    body: String,
}

#[derive(Default, Serialize)]
struct ImportReport {
    imported: Vec<User>,
    skipped: Vec<Skipped>,
}

#[derive(Serialize)]
struct Skipped {
    email: String,
    error: String,
}

/// The service's error: `From<diesel_atomic::Error>` as the runtime's functions require, a
/// response as the handlers require. Its status decides the request's transactions.
#[derive(Debug)]
pub enum AppError {
    InvalidEmail(String),
    EmailTaken(String),
    EmptyNote,
    Database(diesel::result::Error),
    Transaction(diesel_atomic::Error),
}

impl AppError {
    fn insert_failed(email: &str, error: diesel::result::Error) -> AppError {
        match error {
            diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                AppError::EmailTaken(email.to_owned())
            }
            error => AppError::Database(error),
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::InvalidEmail(email) => write!(f, "invalid e-mail address {email:?}"),
            AppError::EmailTaken(email) => write!(f, "{email:?} is already signed up"),
            AppError::EmptyNote => f.write_str("a note needs a body"),
            AppError::Database(error) => write!(f, "database error: {error}"),
            AppError::Transaction(error) => write!(f, "{error}"),
        }
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(error: diesel::result::Error) -> Self {
        AppError::Database(error)
    }
}

impl From<diesel_atomic::Error> for AppError {
    fn from(error: diesel_atomic::Error) -> Self {
        AppError::Transaction(error)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match self {
            AppError::InvalidEmail(_) | AppError::EmptyNote => StatusCode::BAD_REQUEST,
            AppError::EmailTaken(_) => StatusCode::CONFLICT,
            AppError::Database(_) | AppError::Transaction(_) => {
                tracing::error!(error = %self, "the request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}
