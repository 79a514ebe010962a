use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

type DbConn = SqliteConnection;

// Without an error, the block would run on a pooled connection while the body writes to `db`.
#[atomic]
fn transfer(db: &mut DbConn) -> QueryResult<()> {
    db.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
}

fn main() {}
