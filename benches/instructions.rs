//! Instruction counts, for callgrind: deterministic where wall-clock time on a shared machine
//! is not. Runs one workload 20,000 times, picked by the first argument:
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind target/release/deps/instructions-* empty_atomic
//! valgrind --tool=callgrind target/release/deps/instructions-* empty_diesel
//! ```
//!
//! Workloads: `{empty,insert,nest4,nest16,nest64}_{atomic,diesel}`, and `insert_ambient` /
//! `insert_pooled` (ambient mode vs `pool.get()` + `conn.transaction`). `bench/run` prints the table.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_atomic::{Database, Databases, atomic};

diesel::table! {
    rows (id) {
        id -> Integer,
        n -> Integer,
    }
}

const BLOCKS: i32 = 20_000;

#[atomic]
fn empty_atomic(conn: &mut SqliteConnection) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic]
fn insert_atomic(conn: &mut SqliteConnection, n: i32) -> QueryResult<()> {
    insert(conn, n)
}

#[atomic]
fn nest_atomic(conn: &mut SqliteConnection, depth: u32) -> QueryResult<()> {
    if depth > 1 {
        nest_atomic(conn, depth - 1)
    } else {
        Ok(())
    }
}

fn nest_diesel(conn: &mut SqliteConnection, depth: u32) -> QueryResult<()> {
    conn.transaction(|conn| {
        if depth > 1 {
            nest_diesel(conn, depth - 1)
        } else {
            Ok(())
        }
    })
}

fn insert(conn: &mut SqliteConnection, n: i32) -> QueryResult<()> {
    diesel::insert_into(rows::table)
        .values(rows::n.eq(n))
        .execute(conn)
        .map(drop)
}

/// Ambient mode: the block checks a connection out of the alias's pool.
#[atomic]
fn insert_ambient(n: i32) -> Result<(), diesel_atomic::Error> {
    diesel_atomic::connection(|conn: &mut SqliteConnection| insert(conn, n))?;
    Ok(())
}

/// What ambient mode is measured against: `pool.get()` + `conn.transaction`, per block.
fn ambient(workload: &str) {
    let pool = Pool::builder()
        .max_size(1)
        .connection_customizer(Box::new(Schema))
        .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
        .expect("pool");
    let _registry = Databases::new()
        .add("default", Database::new(pool.clone()))
        .enter();
    for n in 0..BLOCKS {
        match workload {
            "insert_ambient" => insert_ambient(n).expect("block"),
            _ => {
                let mut conn = pool.get().expect("checkout");
                conn.transaction(|conn| insert(conn, n)).expect("block")
            }
        }
    }
}

#[derive(Debug)]
struct Schema;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Schema {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
    if matches!(workload.as_str(), "insert_ambient" | "insert_pooled") {
        return ambient(&workload);
    }
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    conn.batch_execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .expect("schema");
    let conn = &mut conn;
    for n in 0..BLOCKS {
        let done = match workload.as_str() {
            "empty_atomic" => empty_atomic(conn),
            "empty_diesel" => conn.transaction(|_| Ok(())),
            "insert_atomic" => insert_atomic(conn, n),
            "insert_diesel" => conn.transaction(|conn| insert(conn, n)),
            "nest4_atomic" => nest_atomic(conn, 4),
            "nest4_diesel" => nest_diesel(conn, 4),
            "nest16_atomic" => nest_atomic(conn, 16),
            "nest16_diesel" => nest_diesel(conn, 16),
            "nest64_atomic" => nest_atomic(conn, 64),
            "nest64_diesel" => nest_diesel(conn, 64),
            // `cargo bench` runs every bench target with `--bench`: nothing to do then.
            _ => return,
        };
        done.expect("block");
    }
}
