//! `isolation`, `begin` and `retry` on durable blocks in both modes, run on SQLite: the body
//! runs once when nothing fails, reruns after a transient failure, and an option SQLite cannot
//! honour is refused at run time before the body runs.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::{Database, Databases, Error, atomic, connection};

/// What SQLite reports when another connection holds the lock: worth another attempt.
fn busy() -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::Unknown,
        Box::new("database is locked".to_owned()),
    )
}

#[atomic(
    durable = true,
    isolation = "serializable",
    begin = "immediate",
    retry = 3
)]
fn explicit(conn: &mut SqliteConnection, runs: &mut u32) -> QueryResult<()> {
    *runs += 1;
    conn.batch_execute("INSERT INTO t (id) VALUES (1)")
}

#[atomic(retry = 2, begin = "exclusive", durable = true)]
fn busy_once(conn: &mut SqliteConnection, runs: &mut u32) -> QueryResult<()> {
    *runs += 1;
    conn.batch_execute(&format!("INSERT INTO t (id) VALUES ({})", 10 + *runs))?;
    if *runs == 1 { Err(busy()) } else { Ok(()) }
}

#[atomic(
    durable = true,
    isolation = "serializable",
    begin = "immediate",
    retry = 3
)]
fn ambient(runs: &mut u32) -> Result<i64, Error> {
    *runs += 1;
    connection(|conn: &mut SqliteConnection| {
        conn.batch_execute("INSERT INTO t (id) VALUES (2)")?;
        Ok(
            diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM t")
                .get_result(conn)?,
        )
    })
}

#[atomic(durable = true, isolation = "read_committed")]
fn weaker_isolation(runs: &mut u32) -> Result<(), Error> {
    *runs += 1;
    Ok(())
}

#[atomic(durable = true, read_only = true, begin = "deferred")]
fn read_only(conn: &mut SqliteConnection, runs: &mut u32) -> QueryResult<()> {
    *runs += 1;
    conn.batch_execute("SELECT 1")
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

    let mut runs = 0;
    explicit(&mut conn, &mut runs).unwrap();
    assert_eq!(runs, 1, "nothing failed, so the body ran once");
    assert_eq!(count(&mut conn), 1);

    let mut runs = 0;
    busy_once(&mut conn, &mut runs).unwrap();
    assert_eq!(runs, 2, "the busy attempt was rolled back and rerun");
    assert_eq!(count(&mut conn), 2, "only the second attempt's row is kept");

    let mut runs = 0;
    let refused = read_only(&mut conn, &mut runs).unwrap_err().to_string();
    assert!(refused.contains("no read-only transactions"), "{refused}");
    assert_eq!(runs, 0, "refused at BEGIN, before the body");

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

    let mut runs = 0;
    assert_eq!(ambient(&mut runs).unwrap(), 1);
    assert_eq!(runs, 1, "nothing failed, so the body ran once");

    let mut runs = 0;
    assert!(matches!(
        weaker_isolation(&mut runs),
        Err(Error::BeginOptionsUnsupported { .. })
    ));
    assert_eq!(runs, 0, "refused at BEGIN, before the body");
}
