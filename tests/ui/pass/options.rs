//! Every option, in any order, with a trailing comma; nested blocks with `savepoint = false`
//! and an outermost `durable = true` block.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic(savepoint = false, using = "default")]
fn joins_parent(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("INSERT INTO t (id) VALUES (2)")
}

#[atomic(durable = true)]
fn outermost(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("INSERT INTO t (id) VALUES (1)")?;
    joins_parent(conn)
}

#[atomic(durable = false, savepoint = true, using = "default", conn = conn, crate = "diesel_atomic")]
fn every_option(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("SELECT 1")
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    outermost(&mut conn).unwrap();
    every_option(&mut conn).unwrap();
    let rows: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM t")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(rows, 2);
}
