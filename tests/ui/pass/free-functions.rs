//! Free functions in both modes: the block commits on `Ok` and rolls back on `Err`.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_atomic::{Database, Databases, Error, atomic, connection};

#[atomic]
fn insert_then_fail(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("INSERT INTO t (id) VALUES (1)")?;
    Err(diesel::result::Error::RollbackTransaction)
}

#[atomic]
fn insert(conn: &mut SqliteConnection, id: i32) -> QueryResult<()> {
    conn.batch_execute(&format!("INSERT INTO t (id) VALUES ({id})"))
}

#[atomic]
fn ambient_insert_then_fail() -> Result<(), Error> {
    connection(|conn: &mut SqliteConnection| {
        conn.batch_execute("INSERT INTO t (id) VALUES (3)")
            .map_err(Error::from)
    })?;
    Err(Error::from(diesel::result::Error::RollbackTransaction))
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
    assert!(insert_then_fail(&mut conn).is_err());
    insert(&mut conn, 2).unwrap();
    assert_eq!(count(&mut conn), 1);

    let pool = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
        .unwrap();
    let _registry = Databases::new().add("default", Database::new(pool)).enter();
    connection(|conn: &mut SqliteConnection| {
        conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .map_err(Error::from)
    })
    .unwrap();
    assert!(ambient_insert_then_fail().is_err());
    let rows = connection(|conn: &mut SqliteConnection| Ok::<_, Error>(count(conn))).unwrap();
    assert_eq!(rows, 0, "the ambient block was rolled back");
}
