//! Explicit mode with a generic connection type, bounded inline or in a `where` clause.

use diesel::prelude::*;
use diesel::sqlite::Sqlite;
use diesel_atomic::atomic;

#[atomic]
fn create<C: Connection<Backend = Sqlite> + 'static>(conn: &mut C) -> QueryResult<()> {
    conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
}

#[atomic(using = "other")]
fn insert_then_fail<C>(conn: &mut C) -> QueryResult<()>
where
    C: Connection<Backend = Sqlite> + 'static,
{
    conn.batch_execute("INSERT INTO t (id) VALUES (1)")?;
    Err(diesel::result::Error::RollbackTransaction)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    create(&mut conn).unwrap();
    assert!(insert_then_fail(&mut conn).is_err());
    let rows: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM t")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(rows, 0);
}
