//! Why `get_or_create` needs a unique constraint: threads race to create the same rows, with
//! a naive "select, then insert if missing" and with `diesel_atomic::get_or_create`, on a table
//! with and without `UNIQUE (k)`.
//!
//! Run it with `cargo run --example race` (`THREADS` and `ROUNDS` change the size). Each round,
//! every thread asks for the same new key at once. How many duplicates a variant produces
//! depends on timing, so this is an example, not a test; typically:
//!
//! - without the constraint, both approaches insert duplicates: nothing stops the second
//!   insert, and `get_or_create` only recovers from an insert that *fails*;
//! - with it, the naive approach fails (the losers get the unique violation as an error),
//!   and `get_or_create` returns the winner's row to every caller: no duplicates, no errors.
//!
//! The database is an SQLite file in a temp directory, in WAL mode with a busy timeout, as a
//! server deployment runs SQLite.

use std::sync::Barrier;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

diesel::table! {
    keyed (id) {
        id -> Integer,
        k -> Integer,
        value -> Text,
    }
}

#[derive(Clone, Copy, Debug)]
enum Approach {
    /// `SELECT`, then `INSERT` if nothing came back.
    Naive,
    /// `diesel_atomic::get_or_create`.
    GetOrCreate,
}

struct Outcome {
    rows: i64,
    keys: i64,
    errors: usize,
}

fn connect(path: &str) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(path).expect("open the database");
    conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;")
        .expect("pragmas");
    conn
}

fn find(conn: &mut SqliteConnection, k: i32) -> QueryResult<Option<(i32, i32, String)>> {
    keyed::table.filter(keyed::k.eq(k)).first(conn).optional()
}

fn create(conn: &mut SqliteConnection, k: i32, thread: usize) -> QueryResult<(i32, i32, String)> {
    diesel::insert_into(keyed::table)
        .values((
            keyed::k.eq(k),
            keyed::value.eq(format!("by thread {thread}")),
        ))
        .execute(conn)?;
    // With duplicates possible, "the row" is the first one.
    keyed::table
        .filter(keyed::k.eq(k))
        .order(keyed::id)
        .first(conn)
}

/// `threads` threads, `rounds` keys: every thread asks for key `round` at the same moment.
fn race(approach: Approach, unique: bool, threads: usize, rounds: i32) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("race.sqlite3");
    let path = path.to_str().expect("temp paths are UTF-8");
    let constraint = if unique { ", UNIQUE (k)" } else { "" };
    connect(path)
        .batch_execute(&format!(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE keyed (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 k INTEGER NOT NULL,
                 value TEXT NOT NULL{constraint}
             );"
        ))
        .expect("create the table");

    let barrier = Barrier::new(threads);
    let errors: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut conn = connect(path);
                    let mut errors = 0;
                    for k in 0..rounds {
                        barrier.wait();
                        let result = match approach {
                            Approach::Naive => match find(&mut conn, k) {
                                Ok(Some(row)) => Ok(row),
                                Ok(None) => create(&mut conn, k, thread),
                                Err(error) => Err(error),
                            },
                            Approach::GetOrCreate => diesel_atomic::get_or_create(
                                &mut conn,
                                |conn| find(conn, k),
                                |conn| create(conn, k, thread),
                            )
                            .map(|(row, _created)| row),
                        };
                        if result.is_err() {
                            errors += 1;
                        }
                    }
                    errors
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .sum()
    });

    let mut conn = connect(path);
    let rows = keyed::table.count().get_result(&mut conn).expect("count");
    let keys = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(DISTINCT k) FROM keyed")
        .get_result(&mut conn)
        .expect("count keys");
    Outcome { rows, keys, errors }
}

fn main() {
    let size = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let threads = size("THREADS", 8);
    let rounds = i32::try_from(size("ROUNDS", 200)).expect("ROUNDS fits an i32");
    println!(
        "{threads} threads, {rounds} rounds: each round every thread asks for the same new key\n"
    );
    println!(
        "{:<15} {:<12} {:>6} {:>6} {:>11} {:>7}",
        "approach", "UNIQUE (k)", "rows", "keys", "duplicates", "errors"
    );
    for unique in [false, true] {
        for approach in [Approach::Naive, Approach::GetOrCreate] {
            let started = std::time::Instant::now();
            let outcome = race(approach, unique, threads, rounds);
            let elapsed: Duration = started.elapsed();
            println!(
                "{:<15} {:<12} {:>6} {:>6} {:>11} {:>7}   ({:.2} s)",
                format!("{approach:?}"),
                if unique { "yes" } else { "no" },
                outcome.rows,
                outcome.keys,
                outcome.rows - outcome.keys,
                outcome.errors,
                elapsed.as_secs_f64(),
            );
        }
    }
    println!(
        "\nOnly get_or_create with the constraint gives one row per key and no errors: without \
         it, nothing makes the losers' inserts fail; without get_or_create, their failures \
         reach the caller."
    );
}
