//! The Rust half of the Django side-by-side benchmark; `bench/django/run` runs it
//! alternately with `bench/django/bench.py` and prints the ratio table.
//!
//! The workloads of `bench.py`, each `BLOCKS` outermost blocks on a SQLite file database in WAL
//! mode with synchronous=NORMAL, in four flavours with a database file each: plain diesel
//! (`conn.transaction`), the same with a `pool.get()` per block, and diesel-atomic's explicit
//! and ambient modes (the latter on a pool of one connection). The flavours take turns every
//! `CHUNK` blocks. One JSON line per flavour and workload gives the CPU time per block in ns,
//! and the wall time: the sum over the chunks of each chunk's best time in `REPS` repetitions.

use std::hint::black_box;
use std::ops::Range;
use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sql_types::{Integer, Text};
use diesel_atomic::{Database, Databases, atomic, transaction};

diesel::table! {
    bench_row (id) {
        id -> Integer,
        n -> Integer,
    }
}

/// bench.py's `PRAGMAS`, Django's `init_command`.
const PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=OFF; PRAGMA busy_timeout=5000;";
/// The table Django's schema editor creates for bench.py's model.
const CREATE: &str = r#"CREATE TABLE IF NOT EXISTS "bench_row"
    ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "n" integer NOT NULL)"#;
const RAW_INSERT: &str = "INSERT INTO bench_row (n) VALUES (?)";
/// The flavours take turns every `CHUNK` blocks.
const CHUNK: usize = 1_000;
const WORKLOADS: [&str; 5] = ["orm_insert", "raw_insert", "empty", "nested4", "on_commit"];
/// Printed by both sides, to compare their connections; `pragma_*` tables hold these.
const SHOWN_PRAGMAS: [&str; 11] = [
    "journal_mode",
    "synchronous",
    "foreign_keys",
    "cache_size",
    "page_size",
    "temp_store",
    "locking_mode",
    "busy_timeout",
    "cache_spill",
    "automatic_index",
    "secure_delete",
];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(PRAGMAS)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

fn open(path: &std::path::Path) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
    conn.batch_execute(PRAGMAS).unwrap();
    conn.batch_execute(CREATE).unwrap();
    conn
}

/// A pool of one connection, which r2d2 does not ping at each checkout: Django does not check
/// its persistent connection either (`CONN_HEALTH_CHECKS` is off by default).
fn pool(path: &std::path::Path) -> Pool<ConnectionManager<SqliteConnection>> {
    drop(open(path));
    Pool::builder()
        .max_size(1)
        .test_on_check_out(false)
        .connection_customizer(Box::new(Pragmas))
        .build(ConnectionManager::new(path.to_string_lossy()))
        .unwrap()
}

fn insert(conn: &mut SqliteConnection, i: i32) -> QueryResult<usize> {
    diesel::insert_into(bench_row::table)
        .values(bench_row::n.eq(i))
        .execute(conn)
}

fn raw_insert(conn: &mut SqliteConnection, i: i32) -> QueryResult<usize> {
    diesel::sql_query(RAW_INSERT)
        .bind::<Integer, _>(i)
        .execute(conn)
}

// Plain diesel.

fn diesel_block(conn: &mut SqliteConnection, workload: &str, i: i32) -> QueryResult<()> {
    match workload {
        "orm_insert" => conn.transaction(|c| insert(c, i)).map(drop),
        "raw_insert" => conn.transaction(|c| raw_insert(c, i)).map(drop),
        "empty" => conn.transaction(|_| Ok(())),
        "nested4" => conn.transaction(|c| {
            c.transaction(|c| c.transaction(|c| c.transaction(|_| QueryResult::Ok(()))))
        }),
        _ => unreachable!("diesel has no on_commit"),
    }
}

// diesel-atomic, explicit mode.

#[atomic]
fn explicit_insert(conn: &mut SqliteConnection, i: i32) -> QueryResult<usize> {
    insert(conn, i)
}

#[atomic]
fn explicit_raw_insert(conn: &mut SqliteConnection, i: i32) -> QueryResult<usize> {
    raw_insert(conn, i)
}

#[atomic(conn = _conn)]
fn explicit_empty(_conn: &mut SqliteConnection) -> QueryResult<()> {
    Ok(())
}

#[atomic]
fn explicit_nested4(conn: &mut SqliteConnection) -> QueryResult<()> {
    explicit_nested3(conn)
}

#[atomic]
fn explicit_nested3(conn: &mut SqliteConnection) -> QueryResult<()> {
    explicit_nested2(conn)
}

#[atomic]
fn explicit_nested2(conn: &mut SqliteConnection) -> QueryResult<()> {
    explicit_empty(conn)
}

#[atomic(conn = _conn)]
fn explicit_on_commit(_conn: &mut SqliteConnection) -> QueryResult<()> {
    transaction::on_commit(|| ())?;
    Ok(())
}

fn explicit_block(conn: &mut SqliteConnection, workload: &str, i: i32) -> QueryResult<()> {
    match workload {
        "orm_insert" => explicit_insert(conn, i).map(drop),
        "raw_insert" => explicit_raw_insert(conn, i).map(drop),
        "empty" => explicit_empty(conn),
        "nested4" => explicit_nested4(conn),
        _ => explicit_on_commit(conn),
    }
}

// diesel-atomic, ambient mode.

#[atomic]
fn ambient_insert(i: i32) -> QueryResult<usize> {
    diesel_atomic::connection(|c: &mut SqliteConnection| insert(c, i))
}

#[atomic]
fn ambient_raw_insert(i: i32) -> QueryResult<usize> {
    diesel_atomic::connection(|c: &mut SqliteConnection| raw_insert(c, i))
}

#[atomic]
fn ambient_empty() -> QueryResult<()> {
    Ok(())
}

#[atomic]
fn ambient_nested4() -> QueryResult<()> {
    ambient_nested3()
}

#[atomic]
fn ambient_nested3() -> QueryResult<()> {
    ambient_nested2()
}

#[atomic]
fn ambient_nested2() -> QueryResult<()> {
    ambient_empty()
}

#[atomic]
fn ambient_on_commit() -> QueryResult<()> {
    transaction::on_commit(|| ())?;
    Ok(())
}

fn ambient_block(workload: &str, i: i32) -> QueryResult<()> {
    match workload {
        "orm_insert" => ambient_insert(i).map(drop),
        "raw_insert" => ambient_raw_insert(i).map(drop),
        "empty" => ambient_empty(),
        "nested4" => ambient_nested4(),
        _ => ambient_on_commit(),
    }
}

/// This thread's CPU time in ns (user and system): unlike wall time, it leaves out the time
/// other processes take the CPU, which on a shared machine is most of the noise.
fn cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// CPU and wall nanoseconds that the blocks `range` take.
fn time(range: Range<i32>, mut block: impl FnMut(i32) -> QueryResult<()>) -> [f64; 2] {
    let (cpu, wall) = (cpu_ns(), Instant::now());
    for i in range {
        black_box(block(black_box(i))).unwrap();
    }
    [cpu_ns() - cpu, wall.elapsed().as_nanos() as f64]
}

#[derive(diesel::QueryableByName)]
struct Value {
    #[diesel(sql_type = Text)]
    value: String,
}

fn query_text(conn: &mut SqliteConnection, sql: &str) -> String {
    diesel::sql_query(sql)
        .get_result::<Value>(conn)
        .unwrap()
        .value
}

fn main() {
    let blocks = i32::try_from(env("BLOCKS", 10_000)).unwrap();
    let reps = env("REPS", 5);
    let dir = tempfile::Builder::new()
        .prefix("diesel-atomic-vs-django-")
        .tempdir()
        .unwrap();
    let mut diesel_conn = open(&dir.path().join("diesel.sqlite3"));
    let mut explicit_conn = open(&dir.path().join("explicit.sqlite3"));
    let diesel_pool = pool(&dir.path().join("diesel_pool.sqlite3"));
    let ambient_pool = pool(&dir.path().join("ambient.sqlite3"));
    let _registry = Databases::new()
        .add("default", Database::new(ambient_pool.clone()))
        .enter();

    let flavours = ["diesel", "diesel_pool", "explicit", "ambient"];
    // The best time of each chunk of CHUNK blocks, over the repetitions.
    let chunks: Vec<Range<i32>> = (0..blocks)
        .step_by(CHUNK)
        .map(|start| start..blocks.min(start + CHUNK as i32))
        .collect();
    let mut best =
        vec![vec![vec![[f64::INFINITY; 2]; chunks.len()]; WORKLOADS.len()]; flavours.len()];
    for _ in 0..reps {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            // The flavours take turns every chunk, each going first in turn, so that the load of
            // other processes (on a shared machine) weighs on all of them alike.
            for (c, range) in chunks.iter().enumerate() {
                for k in 0..flavours.len() {
                    let f = (c + k) % flavours.len();
                    let range = range.clone();
                    let [cpu, wall] = match flavours[f] {
                        "diesel" | "diesel_pool" if *workload == "on_commit" => continue,
                        "diesel" => time(range, |i| diesel_block(&mut diesel_conn, workload, i)),
                        "diesel_pool" => time(range, |i| {
                            diesel_block(&mut diesel_pool.get().unwrap(), workload, i)
                        }),
                        "explicit" => {
                            time(range, |i| explicit_block(&mut explicit_conn, workload, i))
                        }
                        _ => time(range, |i| ambient_block(workload, i)),
                    };
                    let best = &mut best[f][w][c];
                    *best = [best[0].min(cpu), best[1].min(wall)];
                }
            }
        }
    }
    for (f, flavour) in flavours.iter().enumerate() {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            let sum = |k: usize| best[f][w].iter().map(|ns| ns[k]).sum::<f64>() / f64::from(blocks);
            let (cpu, wall) = (sum(0), sum(1));
            if cpu.is_finite() {
                println!(
                    r#"{{"flavour": "{flavour}", "workload": "{workload}", "ns_per_block": {cpu:.1}, "wall_ns_per_block": {wall:.1}}}"#
                );
            }
        }
    }

    let rows = 2 * reps as i64 * i64::from(blocks);
    let (mut pooled, mut ambient) = (diesel_pool.get().unwrap(), ambient_pool.get().unwrap());
    for conn in [
        &mut diesel_conn,
        &mut explicit_conn,
        &mut *pooled,
        &mut *ambient,
    ] {
        let count: i64 = bench_row::table.count().get_result(conn).unwrap();
        assert_eq!(count, rows, "every insert was committed");
    }
    let pragmas: Vec<String> = SHOWN_PRAGMAS
        .iter()
        .map(|p| {
            let value = query_text(
                &mut diesel_conn,
                &format!("SELECT CAST((SELECT * FROM pragma_{p}) AS TEXT) AS value"),
            );
            match value.parse::<i64>() {
                Ok(n) => format!(r#""{p}": {n}"#),
                Err(_) => format!(r#""{p}": "{value}""#),
            }
        })
        .collect();
    let sqlite = query_text(&mut diesel_conn, "SELECT sqlite_version() AS value");
    println!(
        r#"{{"flavour": "diesel", "versions": {{"sqlite": "{sqlite}"}}, "pragmas": {{{}}}}}"#,
        pragmas.join(", ")
    );
}
