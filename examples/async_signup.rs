//! The signup example on the async runtime: sign a user up and send a welcome e-mail only once
//! the user is committed, with diesel-async and `#[atomic] async fn`.
//!
//! Run it with `cargo run --example async_signup --features async`. The second signup fails
//! after its INSERT and the third one's fraud check times out: neither user is committed, and
//! neither e-mail is sent.

use std::sync::Mutex;
use std::time::Duration;

use diesel::{ExpressionMethods, QueryDsl, SqliteConnection};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use diesel_atomic::{Database, Databases, aio, atomic};

/// SQLite through diesel-async: each statement runs on tokio's blocking pool.
type Conn = SyncConnectionWrapper<SqliteConnection>;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Text,
    }
}

#[derive(Debug)]
enum SignupError {
    Database(diesel::result::Error),
    Transaction(diesel_atomic::Error),
    UnknownReferral(String),
}

impl std::fmt::Display for SignupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignupError::Database(error) => write!(f, "database error: {error}"),
            SignupError::Transaction(error) => write!(f, "{error}"),
            SignupError::UnknownReferral(code) => write!(f, "unknown referral code {code:?}"),
        }
    }
}

impl From<diesel::result::Error> for SignupError {
    fn from(error: diesel::result::Error) -> Self {
        SignupError::Database(error)
    }
}

impl From<diesel_atomic::Error> for SignupError {
    fn from(error: diesel_atomic::Error) -> Self {
        SignupError::Transaction(error)
    }
}

/// Stands in for a mail server: what was "sent". A task may move between threads, so this is
/// a process-wide list rather than a thread-local one.
static OUTBOX: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn send_welcome_email(to: String) {
    tokio::time::sleep(Duration::from_millis(10)).await; // the mail server's round trip
    println!("   -> welcome e-mail sent to {to}");
    OUTBOX.lock().unwrap().push(to);
}

/// Creates the user and queues the welcome e-mail; all of it or nothing. Ambient mode: the
/// block checks out a connection, and everything this task awaits inside shares it.
#[atomic]
async fn signup(email: &str, referral: Option<&str>) -> Result<i32, SignupError> {
    let id = aio::connection(async |conn: &mut Conn| {
        diesel::insert_into(users::table)
            .values(users::email.eq(email))
            .execute(conn)
            .await?;
        users::table
            .select(diesel::dsl::max(users::id))
            .first::<Option<i32>>(conn)
            .await
    })
    .await?
    .unwrap_or_default();
    println!("   user #{id} inserted (not committed yet)");

    // Awaited after the outermost COMMIT, before this call returns; dropped on rollback.
    aio::transaction::on_commit_async(send_welcome_email(email.to_owned()))?;
    println!("   welcome e-mail queued until commit");

    if let Some(code) = referral {
        // Explicit mode on the block's own connection: a savepoint of this transaction.
        aio::connection(async |conn: &mut Conn| apply_referral(conn, code).await).await?;
    }
    Ok(id)
}

#[atomic]
async fn apply_referral(conn: &mut Conn, code: &str) -> Result<(), SignupError> {
    conn.batch_execute("SELECT 1").await?; // stands in for the referral lookup
    if code != "FRIENDS" {
        return Err(SignupError::UnknownReferral(code.to_owned()));
    }
    Ok(())
}

/// A signup that waits for a fraud check, but not for long: `timeout` drops the check's
/// block halfway, so this block rolls back and returns `Error::Cancelled` even though its
/// body returns `Ok`.
#[atomic]
async fn signup_checked(email: &str) -> Result<i32, SignupError> {
    let id = signup(email, None).await?; // nested: a savepoint
    match tokio::time::timeout(Duration::from_millis(50), fraud_check(id)).await {
        Ok(checked) => checked?,
        Err(_) => println!("   fraud check timed out: its block was dropped halfway"),
    }
    Ok(id)
}

#[atomic]
async fn fraud_check(_user: i32) -> Result<(), SignupError> {
    tokio::time::sleep(Duration::from_secs(5)).await; // a slow service
    Ok(())
}

fn report(outcome: Result<i32, SignupError>) {
    match outcome {
        Ok(id) => println!("   committed: user #{id}"),
        Err(SignupError::Transaction(diesel_atomic::Error::Cancelled { alias, .. })) => {
            println!("   failed: Error::Cancelled on {alias:?}: the whole signup rolled back")
        }
        Err(error) => println!("   failed: {error}; everything it did was rolled back"),
    }
}

// Multi-thread (tokio's default for `main`): `SyncConnectionWrapper` needs it for cancellation.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("diesel-atomic-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = dir.join("app.sqlite3").to_string_lossy().into_owned();
    let pool = Pool::builder(AsyncDieselConnectionManager::<Conn>::new(url))
        .max_size(2)
        .build()?;
    Databases::new()
        .add("default", Database::new_async(pool))
        .install()?;
    aio::connection(async |conn: &mut Conn| {
        conn.batch_execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE)",
        )
        .await
    })
    .await?;

    println!("== signup ada@example.com");
    report(signup("ada@example.com", None).await);

    println!("\n== signup bob@example.com with referral code \"BOGUS\"");
    report(signup("bob@example.com", Some("BOGUS")).await);

    println!("\n== signup cy@example.com, fraud check with a 50 ms timeout");
    report(signup_checked("cy@example.com").await);

    let emails: Vec<String> = aio::connection(async |conn: &mut Conn| {
        users::table
            .select(users::email)
            .order(users::id)
            .load(conn)
            .await
    })
    .await?;
    let sent = OUTBOX.lock().unwrap().clone();
    println!("\nusers in the database: {emails:?}");
    println!("e-mails sent:          {sent:?}");

    std::fs::remove_dir_all(&dir)?;
    assert_eq!(emails, ["ada@example.com"]);
    assert_eq!(sent, ["ada@example.com"]);
    Ok(())
}
