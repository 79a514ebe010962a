//! The service of `examples/web.rs`, also started by `tests/web.rs`.
//!
//! Two aliases, both with per-request transactions (Django's `ATOMIC_REQUESTS`):
//! "default" holds `users` and `audit`, "other" holds `notes`. Every view is a synchronous
//! function run by [`atomic_view`]: on tokio's blocking pool, inside `diesel_atomic::request`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::result::DatabaseErrorKind;
use diesel_atomic::axum::atomic_view;
use diesel_atomic::{Database, Databases, atomic, db, non_atomic_requests, transaction};
use serde::{Deserialize, Serialize};

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Text,
    }
}

diesel::table! {
    audit (id) {
        id -> Integer,
        event -> Text,
    }
}

diesel::table! {
    notes (id) {
        id -> Integer,
        body -> Text,
    }
}

/// Each alias, its SQLite file (in the data directory) and its schema.
pub const DATABASES: [(&str, &str, &str); 2] = [
    (
        "default",
        "default.sqlite3",
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
         CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, event TEXT NOT NULL);",
    ),
    (
        "other",
        "other.sqlite3",
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    ),
];

/// Creates (or opens) the databases in `dir` and returns their registry, for `install()`.
pub fn open_databases(dir: &Path) -> Result<Databases, Box<dyn std::error::Error>> {
    let mut databases = Databases::new();
    for (alias, file, schema) in DATABASES {
        let url = dir.join(file).to_string_lossy().into_owned();
        // WAL, as a server runs SQLite: readers do not block the writer, and concurrent
        // writers wait for each other (busy_timeout) instead of failing at once.
        let mut conn = SqliteConnection::establish(&url)?;
        conn.batch_execute("PRAGMA journal_mode = WAL;")?;
        conn.batch_execute(schema)?;
        let pool = Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(10))
            .connection_customizer(Box::new(SqlitePragmas))
            .build(ConnectionManager::<SqliteConnection>::new(url))?;
        databases = databases.add(alias, Database::new(pool).atomic_requests(true));
    }
    Ok(databases)
}

/// What every pooled connection runs when it is opened.
#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The routes. The registry of [`open_databases`] must be installed.
pub fn router() -> Router {
    Router::new()
        .route(
            "/signup",
            post(|Json(form): Json<Signup>| atomic_view(move || signup(&form.email))),
        )
        .route(
            "/import",
            post(|Json(form): Json<Import>| atomic_view(move || import(&form.emails))),
        )
        .route("/users", get(|| atomic_view(list_users)))
        .route(
            "/notes",
            get(|| atomic_view(list_notes))
                .post(|Json(form): Json<NewNote>| atomic_view(move || add_note(&form.body))),
        )
}

// --- Views: synchronous, run inside the request's transactions ------------------------------

/// `POST /signup`: the whole view is one transaction on "default".
fn signup(email: &str) -> Result<(StatusCode, Json<User>), AppError> {
    let user = create_user(email)?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// `POST /import`: exempt from the request's transaction on "default", so that every row is
/// a transaction of its own: a bad row is skipped and the good ones stay committed.
#[non_atomic_requests]
fn import(emails: &[String]) -> Result<Json<ImportReport>, AppError> {
    let mut report = ImportReport::default();
    for email in emails {
        match import_one(email) {
            Ok(user) => report.imported.push(user),
            Err(error) => report.skipped.push(Skipped {
                email: email.clone(),
                error: error.to_string(),
            }),
        }
    }
    Ok(Json(report))
}

/// One imported row. `durable`: this must be the outermost block, so `Ok` means committed;
/// it would fail with `Error::DurableNested` if the view were not exempt.
#[atomic(durable = true)]
fn import_one(email: &str) -> Result<User, AppError> {
    create_user(email)
}

/// Writes the user and its audit row, and queues the welcome mail for after the commit.
fn create_user(email: &str) -> Result<User, AppError> {
    let id = diesel_atomic::connection(|conn: &mut SqliteConnection| {
        diesel::insert_into(audit::table)
            .values(audit::event.eq(format!("signup {email}")))
            .execute(conn)?;
        diesel::insert_into(users::table)
            .values(users::email.eq(email))
            .execute(conn)
            .map_err(|error| match error {
                diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                    AppError::EmailTaken(email.to_owned())
                }
                error => error.into(),
            })?;
        Ok::<_, AppError>(
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "last_insert_rowid()",
            ))
            .get_result(conn)?,
        )
    })?;

    // Runs after the transaction commits, never if it rolls back.
    let to = email.to_owned();
    transaction::on_commit(move || send_welcome_mail(to))?;

    // A real view checks its input first. This one checks last, to show that an error after
    // the INSERTs takes them back: the user, the audit row and the queued mail.
    if !is_valid_email(email) {
        return Err(AppError::InvalidEmail(email.to_owned()));
    }
    Ok(User {
        id,
        email: email.to_owned(),
    })
}

/// `POST /notes`: one transaction on "other"; the view never touches "default", so no
/// transaction is begun there.
fn add_note(body: &str) -> Result<(StatusCode, Json<Note>), AppError> {
    if body.trim().is_empty() {
        return Err(AppError::EmptyNote);
    }
    let id = db("other").connection(|conn: &mut SqliteConnection| {
        diesel::insert_into(notes::table)
            .values(notes::body.eq(body))
            .execute(conn)?;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "last_insert_rowid()",
        ))
        .get_result(conn)
    })?;
    Ok((
        StatusCode::CREATED,
        Json(Note {
            id,
            body: body.to_owned(),
        }),
    ))
}

/// `GET /users`.
fn list_users() -> Result<Json<Vec<User>>, AppError> {
    let users = diesel_atomic::connection(|conn: &mut SqliteConnection| {
        users::table
            .select((users::id, users::email))
            .order(users::id)
            .load::<(i32, String)>(conn)
    })?;
    Ok(Json(
        users
            .into_iter()
            .map(|(id, email)| User { id, email })
            .collect(),
    ))
}

/// `GET /notes`.
fn list_notes() -> Result<Json<Vec<Note>>, AppError> {
    let notes = db("other").connection(|conn: &mut SqliteConnection| {
        notes::table
            .select((notes::id, notes::body))
            .order(notes::id)
            .load::<(i32, String)>(conn)
    })?;
    Ok(Json(
        notes
            .into_iter()
            .map(|(id, body)| Note { id, body })
            .collect(),
    ))
}

fn is_valid_email(email: &str) -> bool {
    email
        .split_once('@')
        .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
}

/// Stands in for a mail queue: the addresses "sent" a welcome mail, in order.
static OUTBOX: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn send_welcome_mail(to: String) {
    tracing::info!(%to, "committed: welcome mail queued");
    OUTBOX.lock().unwrap_or_else(|e| e.into_inner()).push(to);
}

/// The addresses sent a welcome mail so far.
#[allow(dead_code, reason = "tests/web.rs reads it; the example only logs")]
pub fn welcome_mails() -> Vec<String> {
    OUTBOX.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

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

#[derive(Serialize)]
struct User {
    id: i32,
    email: String,
}

#[derive(Serialize)]
struct Note {
    id: i32,
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

/// The service's error: `From<diesel_atomic::Error>` as views require, a response as the
/// handlers require.
#[derive(Debug)]
enum AppError {
    InvalidEmail(String),
    EmailTaken(String),
    EmptyNote,
    Database(diesel::result::Error),
    Transaction(diesel_atomic::Error),
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
