//! The seed scenario: sign a user up and send a welcome e-mail only once the user is committed.
//!
//! Run it with `cargo run --example signup`. The second signup fails after its INSERT: the
//! user is rolled back and its e-mail is never sent.

use std::cell::RefCell;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_atomic::{Database, Databases, atomic, transaction};

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

thread_local! {
    /// Stands in for a mail server: what was "sent".
    static OUTBOX: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn send_welcome_email(to: String) {
    println!("   -> welcome e-mail sent to {to}");
    OUTBOX.with(|outbox| outbox.borrow_mut().push(to));
}

/// Creates the user and queues the welcome e-mail; all of it or nothing.
#[atomic]
fn signup(email: &str, referral: Option<&str>) -> Result<i32, SignupError> {
    let id = diesel_atomic::connection(|conn: &mut SqliteConnection| {
        diesel::insert_into(users::table)
            .values(users::email.eq(email))
            .execute(conn)?;
        users::table
            .select(diesel::dsl::max(users::id))
            .first::<Option<i32>>(conn)
    })?
    .unwrap_or_default();
    println!("   user #{id} inserted (not committed yet)");

    let to = email.to_owned();
    transaction::on_commit(move || send_welcome_email(to))?;
    println!("   welcome e-mail queued until commit");

    if let Some(code) = referral {
        apply_referral(code)?;
    }
    Ok(id)
}

/// A nested block: a savepoint inside `signup`'s transaction.
#[atomic]
fn apply_referral(code: &str) -> Result<(), SignupError> {
    if code != "FRIENDS" {
        return Err(SignupError::UnknownReferral(code.to_owned()));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("diesel-atomic-signup-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("app.sqlite3");
    let pool = Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<SqliteConnection>::new(
            path.to_string_lossy(),
        ))?;
    pool.get()?.batch_execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE)",
    )?;
    Databases::new()
        .add("default", Database::new(pool.clone()))
        .install()?;

    println!("== signup ada@example.com");
    match signup("ada@example.com", None) {
        Ok(id) => println!("   committed: user #{id}"),
        Err(error) => println!("   failed: {error}"),
    }

    println!("\n== signup bob@example.com with referral code \"BOGUS\"");
    match signup("bob@example.com", Some("BOGUS")) {
        Ok(id) => println!("   committed: user #{id}"),
        Err(error) => println!("   failed: {error}; everything it did was rolled back"),
    }

    let emails: Vec<String> = users::table
        .select(users::email)
        .order(users::id)
        .load(&mut pool.get()?)?;
    let sent = OUTBOX.with(|outbox| outbox.borrow().clone());
    println!("\nusers in the database: {emails:?}");
    println!("e-mails sent:          {sent:?}");

    drop(pool);
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(emails, ["ada@example.com"]);
    assert_eq!(sent, ["ada@example.com"]);
    Ok(())
}
