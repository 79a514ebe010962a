//! `return`, `?` and early exits keep their meaning: an early `Err` rolls back, an early
//! `Ok` commits.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic]
fn insert(conn: &mut SqliteConnection, id: i32, fail_early: bool) -> QueryResult<&'static str> {
    conn.batch_execute(&format!("INSERT INTO t (id) VALUES ({id})"))?;
    if fail_early {
        return Err(diesel::result::Error::RollbackTransaction);
    }
    if id > 10 {
        return Ok("big");
    }
    conn.batch_execute("INSERT INTO t (id) VALUES (1)")?; // fails for id = 1: duplicate key
    Ok("small")
}

fn count(conn: &mut SqliteConnection) -> i64 {
    diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM t")
        .get_result(conn)
        .unwrap()
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    assert!(insert(&mut conn, 5, true).is_err());
    assert_eq!(count(&mut conn), 0, "early Err rolled back");
    assert_eq!(insert(&mut conn, 20, false).unwrap(), "big");
    assert_eq!(count(&mut conn), 1, "early Ok committed");
    assert!(insert(&mut conn, 1, false).is_err());
    assert_eq!(count(&mut conn), 1, "`?` on the failed insert rolled back");
}
