//! Parameters keep Rust's drop order: one the body only borrows is dropped when the function
//! returns, after the block's COMMIT, exactly as without the attribute (a `MutexGuard`
//! argument still holds its lock while the transaction commits).

use std::cell::RefCell;
use std::sync::Mutex;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::{atomic, transaction};

thread_local! {
    static EVENTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn record(event: impl Into<String>) {
    EVENTS.with(|events| events.borrow_mut().push(event.into()));
}

fn take_events() -> Vec<String> {
    EVENTS.with(|events| events.take())
}

/// Records when it is dropped, and whether a block of the default alias was still open then.
struct Witness(&'static str);

impl Witness {
    // Through `&self`, so that the body borrows the whole parameter (reading the `Copy` field
    // alone would capture only the field).
    fn name(&self) -> &'static str {
        self.0
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let when = if transaction::in_atomic_block() {
            "inside the block"
        } else {
            "after the block"
        };
        record(format!("{} dropped {when}", self.0));
    }
}

#[atomic]
fn explicit(conn: &mut SqliteConnection, witness: Witness) -> QueryResult<()> {
    conn.batch_execute("SELECT 1")?;
    record(format!("body read {}", witness.name()));
    transaction::on_commit(|| record("committed")).map_err(diesel::result::Error::from)?;
    Ok(())
}

#[atomic(durable = true, retry = 2)]
fn retried(conn: &mut SqliteConnection, witness: Witness) -> QueryResult<()> {
    conn.batch_execute("SELECT 1")?;
    record(format!("body read {}", witness.name()));
    transaction::on_commit(|| record("committed")).map_err(diesel::result::Error::from)?;
    Ok(())
}

static LOCK: Mutex<u32> = Mutex::new(0);

#[atomic]
fn under_lock(
    conn: &mut SqliteConnection,
    guard: std::sync::MutexGuard<'static, u32>,
) -> QueryResult<u32> {
    conn.batch_execute("SELECT 1")?;
    transaction::on_commit(|| {
        let held = LOCK.try_lock().is_err();
        record(format!("lock held at commit: {held}"));
    })
    .map_err(diesel::result::Error::from)?;
    Ok(*guard)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();

    explicit(&mut conn, Witness("witness")).unwrap();
    assert_eq!(
        take_events(),
        [
            "body read witness",
            "committed",
            "witness dropped after the block"
        ]
    );

    retried(&mut conn, Witness("retried witness")).unwrap();
    assert_eq!(
        take_events(),
        [
            "body read retried witness",
            "committed",
            "retried witness dropped after the block"
        ]
    );

    assert_eq!(under_lock(&mut conn, LOCK.lock().unwrap()).unwrap(), 0);
    assert_eq!(take_events(), ["lock held at commit: true"]);
    assert!(LOCK.try_lock().is_ok(), "released when the function returned");
}
