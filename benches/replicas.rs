//! Reads routed to replicas (rules P1, P2), on the servers `scripts/db-up --replica` starts:
//!
//! 1. **Routing cost**: `db(alias).read(..)` outside any block, nothing committed by the
//!    thread (so nothing to wait for), against `replica_pool.get()` + the same query by hand.
//!    Interleaved as `paired.rs` does: each round a chunk of ours and a chunk of theirs back to
//!    back in alternating order; ratio = median of the rounds' ratios.
//! 2. **Read-your-writes wait on an idle standby**: a block commits an UPDATE on the primary,
//!    then a `read` on the alias (policy `Wait(1 s)`) reads the row back; the read's latency
//!    (which includes waiting for the replica to replay the commit, or the fallback to the
//!    primary) against the same read with no commit before it. Median and p99, and how many
//!    reads saw a value other than the one just written (must be 0).
//!
//! ```sh
//! eval "$(scripts/db-up --replica)"
//! REPLICAS=1 cargo bench --features postgres,mysql --bench replicas
//! # ROUNDS=41 CHUNK=200 SAMPLES=400 by default
//! ```
//!
//! Needs `PG_URL` + `PG_REPLICA_URL` and/or `MYSQL_URL` + `MYSQL_REPLICA_URL`; a backend
//! without both is skipped with a note. Prints markdown and writes `bench/results/replicas.md`.

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_atomic::{Database, Databases, ReadYourWrites, db};

use common::{env, quantile};

diesel::table! {
    bench_replica_items (id) {
        id -> Integer,
        n -> Integer,
    }
}

const ALIAS: &str = "bench";

fn time(chunk: usize, f: &mut dyn FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..chunk {
        f();
    }
    start.elapsed()
}

/// The routing pair: (ours ns, theirs ns, median ratio, middle half).
fn pair(
    rounds: usize,
    chunk: usize,
    ours: &mut dyn FnMut(),
    theirs: &mut dyn FnMut(),
) -> (f64, f64, f64, (f64, f64)) {
    time(chunk, ours);
    time(chunk, theirs);
    let (mut ratios, mut ours_ns, mut theirs_ns) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = time(chunk, ours);
            (a, time(chunk, theirs))
        } else {
            let b = time(chunk, theirs);
            (time(chunk, ours), b)
        };
        let (a, b) = (
            a.as_nanos() as f64 / chunk as f64,
            b.as_nanos() as f64 / chunk as f64,
        );
        ratios.push(a / b);
        ours_ns.push(a);
        theirs_ns.push(b);
    }
    for values in [&mut ratios, &mut ours_ns, &mut theirs_ns] {
        values.sort_by(f64::total_cmp);
    }
    (
        quantile(&ours_ns, 0.5),
        quantile(&theirs_ns, 0.5),
        quantile(&ratios, 0.5),
        (quantile(&ratios, 0.25), quantile(&ratios, 0.75)),
    )
}

/// Median and p99 of latencies, in µs.
fn latency(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    (quantile(&us, 0.5), quantile(&us, 0.99))
}

/// One backend's measurements, as markdown rows.
macro_rules! measure {
    ($backend:expr, $conn:ty, $primary:expr, $replica:expr, $schema:expr, $session:expr, $out:expr) => {{
        let (rounds, chunk, samples) = (env("ROUNDS", 41), env("CHUNK", 200), env("SAMPLES", 400));
        let pool = |url: &str, session: &'static str| {
            Pool::builder()
                .max_size(2)
                .connection_customizer(Box::new(Session(session)))
                .build(ConnectionManager::<$conn>::new(url))
                .expect("pool")
        };
        let primary = pool($primary, $session);
        let replica = pool($replica, "");
        {
            let mut conn = primary.get().expect("primary");
            for statement in $schema {
                diesel::sql_query(statement).execute(&mut conn).expect("schema");
            }
        }
        // The replica has the row before anything is timed.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut conn = replica.get().expect("replica");
            let found = bench_replica_items::table
                .find(1)
                .select(bench_replica_items::n)
                .first::<i32>(&mut conn)
                .optional();
            if let Ok(Some(_)) = found {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never got the row");
            std::thread::sleep(Duration::from_millis(50));
        }
        let read_row = |conn: &mut $conn| {
            bench_replica_items::table
                .find(1)
                .select(bench_replica_items::n)
                .first::<i32>(conn)
        };
        let _registry = Databases::new()
            .add(
                ALIAS,
                Database::new(primary.clone())
                    .replica(replica.clone())
                    .read_your_writes(ReadYourWrites::Wait(Duration::from_secs(1))),
            )
            .enter();

        // 1. Routing: nothing committed by this thread, so nothing to wait for.
        let (ours, theirs, ratio, (low, high)) = pair(
            rounds,
            chunk,
            &mut || {
                std::hint::black_box(db(ALIAS).read(read_row).expect("read"));
            },
            &mut || {
                let mut conn = replica.get().expect("replica");
                std::hint::black_box(read_row(&mut conn).expect("read"));
            },
        );
        let verdict = if ratio <= 1.05 { "met" } else { "**missed**" };
        writeln!(
            $out,
            "| {}: `read` outside blocks vs `replica_pool.get()` + the query | {ours:.0} | {theirs:.0} | {ratio:.3}× | {low:.3}–{high:.3} | ≤ 1.05×: {verdict} |",
            $backend
        )
        .unwrap();

        // 2. Read-your-writes: commit, then read back, timed; against a read with no commit.
        let mut after_commit = Vec::with_capacity(samples);
        let mut plain = Vec::with_capacity(samples);
        let mut stale = 0;
        for k in 0..samples as i32 {
            db(ALIAS)
                .atomic(|| {
                    db(ALIAS).connection(|conn: &mut $conn| {
                        diesel::update(bench_replica_items::table.find(1))
                            .set(bench_replica_items::n.eq(k))
                            .execute(conn)
                    })
                })
                .expect("commit");
            let start = Instant::now();
            let seen = db(ALIAS).read(read_row).expect("read");
            after_commit.push(start.elapsed());
            if seen != k {
                stale += 1;
            }
            let start = Instant::now();
            std::hint::black_box(db(ALIAS).read(read_row).expect("read"));
            plain.push(start.elapsed());
        }
        let (median, p99) = latency(after_commit);
        let (plain_median, plain_p99) = latency(plain);
        writeln!(
            $out,
            "| {} | {median:.0} | {p99:.0} | {plain_median:.0} | {plain_p99:.0} | {stale} of {samples} |",
            $backend
        )
        .unwrap();
    }};
}

/// SQL every connection of a pool runs when it is opened.
#[derive(Debug)]
struct Session(&'static str);

impl<C: diesel::connection::SimpleConnection>
    diesel::r2d2::CustomizeConnection<C, diesel::r2d2::Error> for Session
{
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        if !self.0.is_empty() {
            conn.batch_execute(self.0)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

fn main() {
    if std::env::var_os("REPLICAS").is_none() {
        return;
    }
    let url = |name: &str| std::env::var(name).ok().filter(|url| !url.is_empty());
    let mut routing = String::new();
    let mut waits = String::new();
    let mut notes = String::new();
    let mut results = Vec::new();

    #[cfg(feature = "postgres")]
    if let (Some(primary), Some(replica)) = (url("PG_URL"), url("PG_REPLICA_URL")) {
        let mut out = String::new();
        measure!(
            "PostgreSQL",
            diesel::PgConnection,
            &primary,
            &replica,
            [
                "CREATE TABLE IF NOT EXISTS bench_replica_items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
                "INSERT INTO bench_replica_items VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
            ],
            // scripts/db-up runs the primary with `synchronous_commit = off`, under which a
            // commit's WAL reaches the standby at the WAL writer's next flush (up to
            // `wal_writer_delay`, 200 ms): the wait measured here is a production setting's.
            "SET synchronous_commit = on",
            out
        );
        results.push(out);
    } else {
        notes.push_str("PostgreSQL: skipped (PG_URL and PG_REPLICA_URL are not both set).\n");
    }
    #[cfg(feature = "mysql")]
    if let (Some(primary), Some(replica)) = (url("MYSQL_URL"), url("MYSQL_REPLICA_URL")) {
        let mut out = String::new();
        measure!(
            "MariaDB",
            diesel::MysqlConnection,
            &primary,
            &replica,
            [
                "CREATE TABLE IF NOT EXISTS bench_replica_items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
                "INSERT IGNORE INTO bench_replica_items VALUES (1, 0)",
            ],
            "",
            out
        );
        results.push(out);
    } else {
        notes.push_str("MariaDB: skipped (MYSQL_URL and MYSQL_REPLICA_URL are not both set).\n");
    }
    let _ = url;
    for out in results {
        let mut lines = out.lines();
        if let Some(line) = lines.next() {
            routing.push_str(line);
            routing.push('\n');
        }
        if let Some(line) = lines.next() {
            waits.push_str(line);
            waits.push('\n');
        }
    }
    let report = format!(
        "| routing a read | ours (ns) | by hand (ns) | ratio | middle half | target |\n\
         | --- | ---: | ---: | ---: | --- | --- |\n{routing}\n\
         | read right after a commit, `Wait(1 s)` | median (µs) | p99 (µs) | no commit before: median (µs) | p99 (µs) | stale reads |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n{waits}\n{notes}"
    );
    print!("{report}");
    std::fs::create_dir_all("bench/results").expect("bench/results");
    std::fs::write("bench/results/replicas.md", report).expect("write bench/results/replicas.md");
}
