//! The blocks the wall-time benchmarks measure, shared by `atomic.rs` (criterion) and
//! `paired.rs` (interleaved pairs): each of ours next to the hand-written diesel that does the
//! same.
#![allow(dead_code)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_atomic::{Error, atomic};

diesel::table! {
    rows (id) {
        id -> Integer,
        n -> Integer,
    }
}

pub const SQLITE_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)";

pub fn sqlite() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    conn.batch_execute(SQLITE_SCHEMA).expect("schema");
    conn
}

#[derive(Debug)]
pub struct Schema(pub &'static str);

impl<C: Connection> CustomizeConnection<C, diesel::r2d2::Error> for Schema {
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(self.0)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub fn sqlite_pool() -> Pool<ConnectionManager<SqliteConnection>> {
    Pool::builder()
        .max_size(1)
        .connection_customizer(Box::new(Schema(SQLITE_SCHEMA)))
        .build(ConnectionManager::new(":memory:"))
        .expect("pool")
}

// --- The blocks under test ----------------------------------------------------------------------

pub fn insert_row<C>(conn: &mut C, n: i32) -> QueryResult<()>
where
    C: Connection<Backend = <SqliteConnection as Connection>::Backend>
        + diesel::connection::LoadConnection,
{
    // The same 1,024 rows over and over: the table (and so the cost of an INSERT) does not
    // grow with the number of iterations, which criterion picks per benchmark.
    diesel::replace_into(rows::table)
        .values((rows::id.eq(n % 1024), rows::n.eq(n)))
        .execute(conn)
        .map(drop)
}

#[atomic]
pub fn insert_explicit(conn: &mut SqliteConnection, n: i32) -> QueryResult<()> {
    insert_row(conn, n)
}

pub fn insert_diesel(conn: &mut SqliteConnection, n: i32) -> QueryResult<()> {
    conn.transaction(|conn| insert_row(conn, n))
}

#[atomic]
pub fn insert_ambient(n: i32) -> Result<(), Error> {
    diesel_atomic::connection(|conn: &mut SqliteConnection| {
        insert_row(conn, n).map_err(Error::from)
    })
}

#[atomic]
pub fn empty_explicit(conn: &mut SqliteConnection) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic]
pub fn nest_explicit(conn: &mut SqliteConnection, depth: u32) -> QueryResult<()> {
    if depth > 1 {
        nest_explicit(conn, depth - 1)
    } else {
        Ok(())
    }
}

pub fn nest_diesel(conn: &mut SqliteConnection, depth: u32) -> QueryResult<()> {
    conn.transaction(|conn| {
        if depth > 1 {
            nest_diesel(conn, depth - 1)
        } else {
            Ok(())
        }
    })
}

// --- PostgreSQL (`PG_URL`) -------------------------------------------------------------------

/// A connection to `url` with a temporary `rows` table of its own.
#[cfg(feature = "postgres")]
pub fn postgres_connection(url: &str) -> PgConnection {
    let mut conn = PgConnection::establish(url).expect("connect to PG_URL");
    conn.batch_execute("CREATE TEMP TABLE rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .expect("schema");
    conn
}

#[cfg(feature = "postgres")]
pub fn upsert(conn: &mut PgConnection, n: i32) -> QueryResult<()> {
    diesel::insert_into(rows::table)
        .values((rows::id.eq(n % 1024), rows::n.eq(n)))
        .on_conflict(rows::id)
        .do_update()
        .set(rows::n.eq(n))
        .execute(conn)
        .map(drop)
}

#[cfg(feature = "postgres")]
#[atomic]
pub fn insert_pg(conn: &mut PgConnection, n: i32) -> QueryResult<()> {
    upsert(conn, n)
}

#[cfg(feature = "postgres")]
#[atomic]
pub fn empty_pg(conn: &mut PgConnection) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}
