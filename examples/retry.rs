//! `#[atomic(durable = true, retry = n)]`: transactions that lose a concurrency conflict are
//! rerun instead of failing.
//!
//! Run it with `cargo run --example retry` (`THREADS` and `TRANSFERS` change the size). Threads
//! move money between a few accounts; each transfer reads both balances, then writes both.
//! On SQLite in WAL mode a deferred transaction that read, while another writer committed,
//! can no longer write: its first write fails with "database is locked" (SQLITE_BUSY), busy
//! timeout or not. PostgreSQL's SERIALIZABLE (40001), its deadlocks (40P01) and MariaDB's
//! deadlocks (1213) are the same kind of failure, and `retry` handles them alike.
//!
//! The example runs the same transfers twice: without `retry` some fail (their money stays
//! where it was), with `retry = 20` every one goes through. Money is conserved either way: a
//! failed transfer rolled back entirely.
//!
//! The database is an SQLite file in a temp directory, in WAL mode with a busy timeout, as a
//! server deployment runs SQLite.

use std::cell::Cell;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_atomic::{Database, Databases, atomic};

diesel::table! {
    accounts (id) {
        id -> Integer,
        balance -> BigInt,
    }
}

const ACCOUNTS: i32 = 4;
const OPENING_BALANCE: i64 = 1_000;

thread_local! {
    /// How many times this thread's transfer bodies ran, retries included.
    static ATTEMPTS: Cell<u64> = const { Cell::new(0) };
}

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

fn balance(conn: &mut SqliteConnection, id: i32) -> QueryResult<i64> {
    accounts::table
        .find(id)
        .select(accounts::balance)
        .first(conn)
}

fn set_balance(conn: &mut SqliteConnection, id: i32, balance: i64) -> QueryResult<()> {
    diesel::update(accounts::table.find(id))
        .set(accounts::balance.eq(balance))
        .execute(conn)
        .map(drop)
}

/// Reads both balances, then writes both: a read-then-write transaction.
fn move_money(from: i32, to: i32, amount: i64) -> QueryResult<()> {
    ATTEMPTS.with(|attempts| attempts.set(attempts.get() + 1));
    diesel_atomic::connection(|conn: &mut SqliteConnection| {
        let (from_balance, to_balance) = (balance(conn, from)?, balance(conn, to)?);
        // Give the other threads a moment to commit in between, as real work would.
        std::thread::sleep(Duration::from_micros(200));
        set_balance(conn, from, from_balance - amount)?;
        set_balance(conn, to, to_balance + amount)
    })
}

#[atomic(durable = true)]
fn transfer_once(from: i32, to: i32, amount: i64) -> QueryResult<()> {
    move_money(from, to, amount)
}

#[atomic(durable = true, retry = 20)]
fn transfer_with_retry(from: i32, to: i32, amount: i64) -> QueryResult<()> {
    move_money(from, to, amount)
}

struct Run {
    failed: usize,
    attempts: u64,
    total: i64,
}

fn run(databases: &Databases, threads: usize, transfers: usize, with_retry: bool) -> Run {
    let outcomes: Vec<(usize, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let databases = databases.clone();
                scope.spawn(move || {
                    let _registry = databases.enter();
                    ATTEMPTS.with(|attempts| attempts.set(0));
                    let mut failed = 0;
                    for n in 0..transfers {
                        let from = ((thread + n) % ACCOUNTS as usize) as i32 + 1;
                        let to = from % ACCOUNTS + 1;
                        let done = if with_retry {
                            transfer_with_retry(from, to, 1)
                        } else {
                            transfer_once(from, to, 1)
                        };
                        failed += usize::from(done.is_err());
                    }
                    (failed, ATTEMPTS.with(Cell::get))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let _registry = databases.enter();
    let total: i64 = diesel_atomic::connection(|conn: &mut SqliteConnection| {
        let balances: Vec<i64> = accounts::table.select(accounts::balance).load(conn)?;
        Ok::<_, diesel::result::Error>(balances.iter().sum())
    })
    .expect("read the balances");
    Run {
        failed: outcomes.iter().map(|(failed, _)| failed).sum(),
        attempts: outcomes.iter().map(|(_, attempts)| attempts).sum(),
        total,
    }
}

fn main() {
    let threads: usize = env_number("THREADS", 8);
    let transfers: usize = env_number("TRANSFERS", 100);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bank.sqlite3");
    let path = path.to_str().expect("UTF-8 temp path");

    let mut setup = SqliteConnection::establish(path).expect("create the database");
    setup
        .batch_execute(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL);",
        )
        .expect("schema");
    for id in 1..=ACCOUNTS {
        diesel::insert_into(accounts::table)
            .values((accounts::id.eq(id), accounts::balance.eq(OPENING_BALANCE)))
            .execute(&mut setup)
            .expect("open the accounts");
    }

    let pool = Pool::builder()
        .max_size(threads as u32 + 1)
        .connection_customizer(Box::new(Pragmas))
        .build(ConnectionManager::<SqliteConnection>::new(path))
        .expect("pool");
    let databases = Databases::new().add("default", Database::new(pool));

    println!(
        "{threads} threads × {transfers} transfers of 1 between {ACCOUNTS} accounts \
         (total {})",
        OPENING_BALANCE * i64::from(ACCOUNTS)
    );
    println!("| transfers | failed | bodies run | total afterwards |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, with_retry) in [("without retry", false), ("retry = 20", true)] {
        let run = run(&databases, threads, transfers, with_retry);
        println!(
            "| {name} | {} of {} | {} | {} |",
            run.failed,
            threads * transfers,
            run.attempts,
            run.total
        );
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
