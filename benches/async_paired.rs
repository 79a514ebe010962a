//! The async runtime against hand-written diesel-async, interleaved in wall time: each round
//! is one `block_on` on a multi-thread tokio runtime that calls ours and theirs by turns, a
//! chunk of calls of each, timing every call (which side goes first flips from round to
//! round), and the ratio of a pair is the median of its rounds' ratios. Drift on a shared
//! machine, even within a round, falls on both sides alike, so it cancels; on this 2-CPU
//! machine that halved the spread of the control row against timing a chunk of each side
//! separately, which `CHUNKED=1` still does (as `paired.rs` does for the sync runtime; it also
//! reports each side's CPU time and context switches). Prints markdown and writes
//! `bench/results/async_paired.md`; `bench/run` runs it.
//!
//! ```sh
//! PAIRED=1 cargo bench --features async,async-postgres --bench async_paired
//! # ROUNDS=81 CHUNK=400 by default; PostgreSQL when PG_URL is set (chunk / 4 there).
//! ```
//!
//! 1. explicit mode (`#[atomic] async fn` on the caller's connection) against
//!    `conn.transaction(async |conn| ..)` on the same connection;
//! 2. ambient mode (`aio::transaction::atomic` + `aio::connection`) against
//!    `pool.get().await` + `conn.transaction` on the same deadpool pool;
//! 3. the cost of registering an on_commit callback: a block registering `CALLBACKS` of them
//!    against the same block registering none, both rolled back (`set_rollback(true)`), so the
//!    callbacks are dropped and never run; (difference of the two) / `CALLBACKS`.

mod common;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_atomic::{Database, Databases, Error, aio, atomic};
use tokio::runtime::Runtime;

use common::{env, quantile};

type Sqlite = SyncConnectionWrapper<SqliteConnection>;

diesel::table! {
    bench_async_items (id) {
        id -> Integer,
        n -> Integer,
    }
}

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS bench_async_items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)";

// --- The blocks under test: SQLite ---------------------------------------------------------------

/// The same 1,024 rows over and over, so the table does not grow with the run.
async fn replace_row(conn: &mut Sqlite, n: i32) -> QueryResult<()> {
    diesel::replace_into(bench_async_items::table)
        .values((
            bench_async_items::id.eq(n % 1024),
            bench_async_items::n.eq(n),
        ))
        .execute(conn)
        .await
        .map(drop)
}

#[atomic]
async fn sqlite_empty(conn: &mut Sqlite) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic]
async fn sqlite_insert(conn: &mut Sqlite, n: i32) -> QueryResult<()> {
    replace_row(conn, n).await
}

#[atomic]
async fn sqlite_nest1(conn: &mut Sqlite) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

#[atomic]
async fn sqlite_nest2(conn: &mut Sqlite) -> QueryResult<()> {
    sqlite_nest1(conn).await
}

#[atomic]
async fn sqlite_nest3(conn: &mut Sqlite) -> QueryResult<()> {
    sqlite_nest2(conn).await
}

#[atomic]
async fn sqlite_nest4(conn: &mut Sqlite) -> QueryResult<()> {
    sqlite_nest3(conn).await
}

async fn sqlite_nest4_diesel(conn: &mut Sqlite) -> QueryResult<()> {
    conn.transaction(async |c| {
        c.transaction(async |c| {
            c.transaction(async |c| c.transaction(async |_| QueryResult::Ok(())).await)
                .await
        })
        .await
    })
    .await
}

#[atomic]
async fn sqlite_insert_ambient(n: i32) -> Result<(), Error> {
    aio::connection(async |conn: &mut Sqlite| replace_row(conn, n).await.map_err(Error::from)).await
}

/// A block registering `count` plain callbacks, rolled back: they are dropped, never run.
#[atomic]
async fn register_plain(conn: &mut Sqlite, count: usize) -> Result<(), Error> {
    let _ = conn;
    for i in 0..count {
        // Capturing `i` makes the closure non-zero-sized, so its box allocates, as a real
        // callback's (which captures what it sends or invalidates) does.
        aio::transaction::on_commit(move || {
            black_box(i);
        })?;
    }
    aio::transaction::set_rollback(true)
}

/// As `register_plain`, with `on_commit_async` futures.
#[atomic]
async fn register_future(conn: &mut Sqlite, count: usize) -> Result<(), Error> {
    let _ = conn;
    for i in 0..count {
        aio::transaction::on_commit_async(async move {
            black_box(i);
        })?;
    }
    aio::transaction::set_rollback(true)
}

/// As `register_plain`, committed: the callbacks run after the COMMIT.
#[atomic]
async fn register_plain_commit(conn: &mut Sqlite, count: usize) -> Result<(), Error> {
    let _ = conn;
    for i in 0..count {
        aio::transaction::on_commit(move || {
            black_box(i);
        })?;
    }
    Ok(())
}

// --- PostgreSQL (`PG_URL`) ---------------------------------------------------------------------

#[cfg(feature = "async-postgres")]
mod pg {
    use super::*;
    use diesel_async::AsyncPgConnection;

    pub type Pg = AsyncPgConnection;

    pub async fn upsert(conn: &mut Pg, n: i32) -> QueryResult<()> {
        diesel::insert_into(bench_async_items::table)
            .values((
                bench_async_items::id.eq(n % 1024),
                bench_async_items::n.eq(n),
            ))
            .on_conflict(bench_async_items::id)
            .do_update()
            .set(bench_async_items::n.eq(n))
            .execute(conn)
            .await
            .map(drop)
    }

    #[atomic]
    pub async fn empty(conn: &mut Pg) -> QueryResult<()> {
        let _ = conn;
        Ok(())
    }

    #[atomic]
    pub async fn insert(conn: &mut Pg, n: i32) -> QueryResult<()> {
        upsert(conn, n).await
    }

    #[atomic]
    async fn nest1(conn: &mut Pg) -> QueryResult<()> {
        let _ = conn;
        Ok(())
    }

    #[atomic]
    async fn nest2(conn: &mut Pg) -> QueryResult<()> {
        nest1(conn).await
    }

    #[atomic]
    async fn nest3(conn: &mut Pg) -> QueryResult<()> {
        nest2(conn).await
    }

    #[atomic]
    pub async fn nest4(conn: &mut Pg) -> QueryResult<()> {
        nest3(conn).await
    }

    pub async fn nest4_diesel(conn: &mut Pg) -> QueryResult<()> {
        conn.transaction(async |c| {
            c.transaction(async |c| {
                c.transaction(async |c| c.transaction(async |_| QueryResult::Ok(())).await)
                    .await
            })
            .await
        })
        .await
    }

    #[atomic]
    pub async fn insert_ambient(n: i32) -> Result<(), Error> {
        aio::connection(async |conn: &mut Pg| upsert(conn, n).await.map_err(Error::from)).await
    }
}

// --- The method ------------------------------------------------------------------------------

struct Pair {
    what: String,
    ours_ns: f64,
    theirs_ns: f64,
    ratio: f64,
    spread: (f64, f64),
    cpu_ratio: f64,
    switches: (f64, f64),
    target: Option<f64>,
}

/// The process's CPU time (user and system, every thread: the caller, tokio's workers, its
/// blocking pool) and its context switches so far.
fn usage() -> (Duration, i64) {
    // SAFETY: getrusage writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        time(usage.ru_utime) + time(usage.ru_stime),
        usage.ru_nvcsw + usage.ru_nivcsw,
    )
}

struct Timed {
    wall: Duration,
    cpu: Duration,
    switches: i64,
}

/// Times `chunk` calls of `f` in one `block_on`: wall time, CPU time, context switches.
fn time<S, F: AsyncFnMut(&mut S)>(rt: &Runtime, state: &mut S, chunk: usize, f: &mut F) -> Timed {
    rt.block_on(async {
        let (cpu, switches) = usage();
        let start = Instant::now();
        for _ in 0..chunk {
            f(state).await;
        }
        let wall = start.elapsed();
        let (cpu_after, switches_after) = usage();
        Timed {
            wall,
            cpu: cpu_after.saturating_sub(cpu),
            switches: switches_after - switches,
        }
    })
}

/// Times `chunk` calls of each of `ours` and `theirs` in one `block_on`, alternating call by
/// call (`ours` first when `ours_first`, then by turns): the wall time of each side's calls,
/// summed; the CPU time and context switches of the whole chunk.
fn time_alternating<S>(
    rt: &Runtime,
    state: &mut S,
    chunk: usize,
    ours_first: bool,
    ours: &mut impl AsyncFnMut(&mut S),
    theirs: &mut impl AsyncFnMut(&mut S),
) -> (Duration, Duration, Duration, i64) {
    rt.block_on(async {
        let (cpu, switches) = usage();
        let mut ours_wall = Duration::ZERO;
        let mut theirs_wall = Duration::ZERO;
        for i in 0..chunk {
            for side in [(i % 2 == 0) == ours_first, (i % 2 == 0) != ours_first] {
                let start = Instant::now();
                if side {
                    ours(state).await;
                    ours_wall += start.elapsed();
                } else {
                    theirs(state).await;
                    theirs_wall += start.elapsed();
                }
            }
        }
        let (cpu_after, switches_after) = usage();
        (
            ours_wall,
            theirs_wall,
            cpu_after.saturating_sub(cpu),
            switches_after - switches,
        )
    })
}

/// Whether rounds alternate the two sides call by call (the default) rather than time a chunk
/// of each (`CHUNKED=1`, which also gives each side's CPU time and context switches).
fn alternating() -> bool {
    std::env::var_os("CHUNKED").is_none()
}

/// The rounds of a pair: per round, the wall time per call of ours and of theirs, the ratio of
/// their CPU times, and the context switches per call of ours and of theirs. Alternating call
/// by call (see [`time_alternating`]), the CPU time and switches are the pair's together: the
/// CPU ratio reads 1 and both sides get the same switches.
fn rounds<S>(
    rt: &Runtime,
    state: &mut S,
    rounds: usize,
    chunk: usize,
    mut ours: impl AsyncFnMut(&mut S),
    mut theirs: impl AsyncFnMut(&mut S),
) -> Vec<(f64, f64, f64, f64, f64)> {
    // Warm up both: caches, statement caches, the allocator, tokio's blocking threads.
    time(rt, state, chunk, &mut ours);
    time(rt, state, chunk, &mut theirs);
    if alternating() {
        return (0..rounds)
            .map(|round| {
                let (a, b, _, switches) =
                    time_alternating(rt, state, chunk, round % 2 == 0, &mut ours, &mut theirs);
                let per_call = switches as f64 / (2 * chunk) as f64;
                (
                    a.as_nanos() as f64 / chunk as f64,
                    b.as_nanos() as f64 / chunk as f64,
                    1.0,
                    per_call,
                    per_call,
                )
            })
            .collect();
    }
    (0..rounds)
        .map(|round| {
            let (a, b) = if round % 2 == 0 {
                let a = time(rt, state, chunk, &mut ours);
                (a, time(rt, state, chunk, &mut theirs))
            } else {
                let b = time(rt, state, chunk, &mut theirs);
                (time(rt, state, chunk, &mut ours), b)
            };
            (
                a.wall.as_nanos() as f64 / chunk as f64,
                b.wall.as_nanos() as f64 / chunk as f64,
                a.cpu.as_secs_f64() / b.cpu.as_secs_f64(),
                a.switches as f64 / chunk as f64,
                b.switches as f64 / chunk as f64,
            )
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn pair<S>(
    rt: &Runtime,
    what: impl Into<String>,
    target: Option<f64>,
    state: &mut S,
    n_rounds: usize,
    chunk: usize,
    ours: impl AsyncFnMut(&mut S),
    theirs: impl AsyncFnMut(&mut S),
) -> Pair {
    // `ONLY=<text>` times only the pairs whose name contains it (the others run once).
    let what = what.into();
    let (n_rounds, chunk) = match std::env::var("ONLY") {
        Ok(only) if !what.contains(only.as_str()) => (1, 1),
        _ => (n_rounds, chunk),
    };
    let times = rounds(rt, state, n_rounds, chunk, ours, theirs);
    let mut ratios: Vec<f64> = times.iter().map(|(a, b, ..)| a / b).collect();
    let mut ours_ns: Vec<f64> = times.iter().map(|t| t.0).collect();
    let mut theirs_ns: Vec<f64> = times.iter().map(|t| t.1).collect();
    let mut cpu: Vec<f64> = times.iter().map(|t| t.2).collect();
    let mut ours_switches: Vec<f64> = times.iter().map(|t| t.3).collect();
    let mut theirs_switches: Vec<f64> = times.iter().map(|t| t.4).collect();
    for values in [
        &mut ratios,
        &mut ours_ns,
        &mut theirs_ns,
        &mut cpu,
        &mut ours_switches,
        &mut theirs_switches,
    ] {
        values.sort_by(f64::total_cmp);
    }
    let pair = Pair {
        what,
        ours_ns: quantile(&ours_ns, 0.5),
        theirs_ns: quantile(&theirs_ns, 0.5),
        ratio: quantile(&ratios, 0.5),
        spread: (quantile(&ratios, 0.25), quantile(&ratios, 0.75)),
        cpu_ratio: quantile(&cpu, 0.5),
        switches: (
            quantile(&ours_switches, 0.5),
            quantile(&theirs_switches, 0.5),
        ),
        target,
    };
    eprintln!(
        "{}: {:.3}× (CPU {:.3}×, switches {:.2} / {:.2})",
        pair.what, pair.ratio, pair.cpu_ratio, pair.switches.0, pair.switches.1
    );
    pair
}

struct Registration {
    what: String,
    with_ns: f64,
    without_ns: f64,
    per_callback: f64,
    spread: (f64, f64),
    target: Option<f64>,
}

/// (a block registering `count` callbacks − the same block registering none) / `count`, per
/// round, interleaved; the median of the rounds' figures.
#[allow(clippy::too_many_arguments)]
fn registration<S>(
    rt: &Runtime,
    what: impl Into<String>,
    target: Option<f64>,
    state: &mut S,
    n_rounds: usize,
    chunk: usize,
    count: usize,
    with: impl AsyncFnMut(&mut S),
    without: impl AsyncFnMut(&mut S),
) -> Registration {
    let times = rounds(rt, state, n_rounds, chunk, with, without);
    let mut per: Vec<f64> = times
        .iter()
        .map(|(a, b, ..)| (a - b) / count as f64)
        .collect();
    let mut with_ns: Vec<f64> = times.iter().map(|t| t.0).collect();
    let mut without_ns: Vec<f64> = times.iter().map(|t| t.1).collect();
    for values in [&mut per, &mut with_ns, &mut without_ns] {
        values.sort_by(f64::total_cmp);
    }
    let registration = Registration {
        what: what.into(),
        with_ns: quantile(&with_ns, 0.5),
        without_ns: quantile(&without_ns, 0.5),
        per_callback: quantile(&per, 0.5),
        spread: (quantile(&per, 0.25), quantile(&per, 0.75)),
        target,
    };
    eprintln!(
        "{}: {:.1} ns per callback",
        registration.what, registration.per_callback
    );
    registration
}

fn verdict(value: f64, target: Option<f64>, unit: &str) -> String {
    match target {
        Some(target) if value <= target => format!("≤ {target}{unit}: met"),
        Some(target) => format!("≤ {target}{unit}: **missed**"),
        None => String::new(),
    }
}

fn main() {
    // `cargo bench` runs every bench target; only `PAIRED=1 cargo bench --bench async_paired`
    // runs this one.
    if std::env::var_os("PAIRED").is_none() {
        return;
    }
    let n_rounds = env("ROUNDS", 81);
    let chunk = env("CHUNK", 400);
    let callbacks = env("CALLBACKS", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut pairs = Vec::new();
    let mut registrations = Vec::new();
    let mut notes = Vec::new();

    // --- SQLite, explicit mode: both sides on the same connection. ---
    let mut conn: Sqlite = rt.block_on(async {
        let mut conn = Sqlite::establish(":memory:").await.expect("SQLite");
        conn.batch_execute(SCHEMA).await.expect("schema");
        conn
    });
    let mut n = 0;
    let mut m = 0;
    pairs.push(pair(
        &rt,
        "SQLite: empty block, explicit vs `conn.transaction`",
        Some(1.02),
        &mut conn,
        n_rounds,
        chunk,
        async |c| sqlite_empty(c).await.unwrap(),
        async |c| c.transaction(async |_| QueryResult::Ok(())).await.unwrap(),
    ));
    pairs.push(pair(
        &rt,
        "SQLite: one INSERT, explicit vs `conn.transaction`",
        Some(1.02),
        &mut conn,
        n_rounds,
        chunk,
        async |c| {
            n += 1;
            sqlite_insert(c, n).await.unwrap()
        },
        async |c| {
            m += 1;
            let m = m;
            c.transaction(async |c| replace_row(c, m).await)
                .await
                .unwrap()
        },
    ));
    pairs.push(pair(
        &rt,
        "SQLite control: one INSERT, `conn.transaction` vs itself",
        None,
        &mut conn,
        n_rounds,
        chunk,
        async |c| {
            n += 1;
            let n = n;
            c.transaction(async |c| replace_row(c, n).await)
                .await
                .unwrap()
        },
        async |c| {
            m += 1;
            let m = m;
            c.transaction(async |c| replace_row(c, m).await)
                .await
                .unwrap()
        },
    ));
    pairs.push(pair(
        &rt,
        "SQLite: 4 nested blocks, explicit vs nested `conn.transaction`",
        Some(1.02),
        &mut conn,
        n_rounds,
        (chunk / 4).max(50),
        async |c| sqlite_nest4(c).await.unwrap(),
        async |c| sqlite_nest4_diesel(c).await.unwrap(),
    ));

    // --- SQLite, on_commit registration, in a block rolled back. ---
    let reg_chunk = (chunk / 20).max(10);
    registrations.push(registration(
        &rt,
        "`on_commit(\\|\\| ..)`, block rolled back (callbacks dropped)",
        Some(100.0),
        &mut conn,
        n_rounds,
        reg_chunk,
        callbacks,
        async |c| register_plain(c, callbacks).await.unwrap(),
        async |c| register_plain(c, 0).await.unwrap(),
    ));
    registrations.push(registration(
        &rt,
        "`on_commit_async(async {..})`, block rolled back (futures dropped)",
        Some(100.0),
        &mut conn,
        n_rounds,
        reg_chunk,
        callbacks,
        async |c| register_future(c, callbacks).await.unwrap(),
        async |c| register_future(c, 0).await.unwrap(),
    ));
    registrations.push(registration(
        &rt,
        "`on_commit(\\|\\| ..)`, block committed (callbacks run): for reference",
        None,
        &mut conn,
        n_rounds,
        reg_chunk,
        callbacks,
        async |c| register_plain_commit(c, callbacks).await.unwrap(),
        async |c| register_plain_commit(c, 0).await.unwrap(),
    ));
    drop(conn);

    // --- SQLite, ambient mode against pool.get() + conn.transaction on the same pool. ---
    {
        // One pooled in-memory database, kept for the run (max_size 1: both sides get it).
        let manager = AsyncDieselConnectionManager::<Sqlite>::new(":memory:");
        let pool = Pool::builder(manager).max_size(1).build().expect("pool");
        let _registry = Databases::new()
            .add("default", Database::new_async(pool.clone()))
            .enter();
        rt.block_on(aio::connection(async |c: &mut Sqlite| {
            c.batch_execute(SCHEMA).await
        }))
        .expect("schema");
        pairs.push(pair(
            &rt,
            "SQLite: one INSERT, ambient vs `pool.get()` + `conn.transaction`",
            Some(1.05),
            &mut (),
            n_rounds,
            chunk,
            async |_| {
                n += 1;
                sqlite_insert_ambient(n).await.unwrap()
            },
            async |_| {
                m += 1;
                let m = m;
                let mut c = pool.get().await.unwrap();
                c.transaction(async |c| replace_row(c, m).await)
                    .await
                    .unwrap()
            },
        ));
    }

    // --- PostgreSQL ---
    let pg_chunk = (chunk / 4).max(20);
    let url = std::env::var("PG_URL").ok().filter(|url| !url.is_empty());
    #[cfg(feature = "async-postgres")]
    if let Some(url) = &url {
        use pg::*;
        let mut conn: Pg = rt.block_on(async {
            let mut conn = Pg::establish(url).await.expect("connect to PG_URL");
            conn.batch_execute(&format!("{SCHEMA}; TRUNCATE bench_async_items"))
                .await
                .expect("schema");
            conn
        });
        pairs.push(pair(
            &rt,
            "PostgreSQL: empty block, explicit vs `conn.transaction`",
            Some(1.02),
            &mut conn,
            n_rounds,
            pg_chunk,
            async |c| empty(c).await.unwrap(),
            async |c| c.transaction(async |_| QueryResult::Ok(())).await.unwrap(),
        ));
        pairs.push(pair(
            &rt,
            "PostgreSQL: one INSERT, explicit vs `conn.transaction`",
            Some(1.02),
            &mut conn,
            n_rounds,
            pg_chunk,
            async |c| {
                n += 1;
                insert(c, n).await.unwrap()
            },
            async |c| {
                m += 1;
                let m = m;
                c.transaction(async |c| upsert(c, m).await).await.unwrap()
            },
        ));
        pairs.push(pair(
            &rt,
            "PostgreSQL: 4 nested blocks, explicit vs nested `conn.transaction`",
            Some(1.02),
            &mut conn,
            n_rounds,
            (pg_chunk / 4).max(10),
            async |c| nest4(c).await.unwrap(),
            async |c| nest4_diesel(c).await.unwrap(),
        ));
        drop(conn);

        let manager = AsyncDieselConnectionManager::<Pg>::new(url.as_str());
        let pool = Pool::builder(manager).max_size(1).build().expect("pool");
        let _registry = Databases::new()
            .add("default", Database::new_async(pool.clone()))
            .enter();
        pairs.push(pair(
            &rt,
            "PostgreSQL: one INSERT, ambient vs `pool.get()` + `conn.transaction`",
            Some(1.05),
            &mut (),
            n_rounds,
            pg_chunk,
            async |_| {
                n += 1;
                insert_ambient(n).await.unwrap()
            },
            async |_| {
                m += 1;
                let m = m;
                let mut c = pool.get().await.unwrap();
                c.transaction(async |c| upsert(c, m).await).await.unwrap()
            },
        ));
    }
    #[cfg(not(feature = "async-postgres"))]
    if url.is_some() {
        notes.push("PostgreSQL skipped: built without the `async-postgres` feature.".to_owned());
    }
    if url.is_none() {
        notes.push("PostgreSQL skipped: PG_URL is not set.".to_owned());
    }

    let method = if alternating() {
        "each round one `block_on` on a multi-thread tokio runtime (2 workers) that calls ours \
         and theirs by turns, a chunk of calls of each, timing every call (which side goes \
         first flips from round to round), so drift on a shared machine, even within a \
         round, falls on both sides alike. Ratio: the median of the rounds' ratios (ours' \
         summed call times / theirs'), with the middle half of them. CPU: not split between \
         the sides in this method (`CHUNKED=1` times a chunk of each side separately and \
         reports each side's CPU time). Switches: the process's context switches per block, \
         both sides together"
    } else {
        "each round a chunk of ours and a chunk of theirs back to back in alternating order, \
         each chunk one `block_on` on a multi-thread tokio runtime (2 workers). Ratio: the \
         median of the rounds' ratios, with the middle half of them. CPU: the median of the \
         rounds' ratios of the process's CPU time (user and system, all threads; \
         `getrusage`), which the time threads spend asleep waiting to be woken does not \
         enter. Switches: the process's context switches per block (median), ours / theirs"
    };
    let mut table = format!(
        "Async runtime, interleaved wall time: {n_rounds} rounds, {method}. Chunks: {chunk} \
         blocks (SQLite), {pg_chunk} (PostgreSQL), a quarter of that for 4 nested blocks. \
         SQLite is `SyncConnectionWrapper<SqliteConnection>` in memory (every statement is a \
         `spawn_blocking` hop, on both sides); PostgreSQL is `AsyncPgConnection`; ambient \
         mode and its counterpart share one deadpool pool of one connection. The control row \
         times the hand-written block against itself: how far from 1.000 this method strays \
         on this machine.\n\n\
         | workload | ours (ns) | hand-written (ns) | ratio | middle half | CPU | switches | target |\n\
         | --- | ---: | ---: | ---: | --- | ---: | --- | --- |\n"
    );
    for pair in &pairs {
        writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.3}× | {:.3}–{:.3} | {} | {} | {} |",
            pair.what,
            pair.ours_ns,
            pair.theirs_ns,
            pair.ratio,
            pair.spread.0,
            pair.spread.1,
            if alternating() {
                "–".to_owned()
            } else {
                format!("{:.3}×", pair.cpu_ratio)
            },
            if alternating() {
                format!("{:.2}", pair.switches.0)
            } else {
                format!("{:.2} / {:.2}", pair.switches.0, pair.switches.1)
            },
            verdict(pair.ratio, pair.target, "×"),
        )
        .unwrap();
    }
    write!(
        table,
        "\non_commit registration (SQLite, explicit block): per round, (time of a block \
         registering {callbacks} callbacks − time of the same block registering none) / \
         {callbacks}, the two blocks interleaved as above ({reg_chunk} blocks a chunk); the \
         median of the rounds' figures, with the middle half. The rolled-back rows end their \
         block with `set_rollback(true)`, so the callbacks are dropped, never run: the figure \
         is registration (a box, a push onto the block's queue) plus the drop. The committed \
         row lets them run after the COMMIT, for comparison.\n\n\
         | registration | block with (ns) | block without (ns) | per callback (ns) | middle half | target |\n\
         | --- | ---: | ---: | ---: | --- | --- |\n"
    )
    .unwrap();
    for r in &registrations {
        writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.1} | {:.1}–{:.1} | {} |",
            r.what,
            r.with_ns,
            r.without_ns,
            r.per_callback,
            r.spread.0,
            r.spread.1,
            verdict(r.per_callback, r.target, " ns"),
        )
        .unwrap();
    }
    for note in &notes {
        write!(table, "\n{note}\n").unwrap();
    }
    print!("{table}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(root.join("bench/results/async_paired.md"), table)
        .expect("write async_paired.md");
}
