//! Instruction counts, for callgrind: deterministic where wall-clock time on a shared machine
//! is not. Runs one workload 20,000 times, picked by the first argument:
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind target/release/deps/instructions-* empty_atomic
//! valgrind --tool=callgrind target/release/deps/instructions-* empty_diesel
//! ```
//!
//! Workloads: `{empty,insert,nest4,nest16,nest64}_{atomic,diesel}`. `bench/run` prints the table.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

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

fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
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
