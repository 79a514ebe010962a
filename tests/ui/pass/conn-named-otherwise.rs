//! `conn = name` picks the connection parameter when it is not called `conn`.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic(conn = db)]
fn create(label: &str, db: &mut SqliteConnection) -> QueryResult<usize> {
    db.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")?;
    Ok(label.len())
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    assert_eq!(create("abc", &mut conn).unwrap(), 3);
}
