//! Wall time of ours against hand-written diesel, interleaved: each round times a chunk of
//! ours and a chunk of theirs back to back (in alternating order), and the ratio of a pair is
//! the median of its rounds' ratios. Drift on a shared machine moves both chunks of a round
//! alike, so it cancels, where criterion (one side fully before the other) puts it into the
//! ratio. Prints markdown and writes `bench/results/paired.md`; `bench/run` runs it.
//!
//! ```sh
//! PAIRED=1 cargo bench --bench paired            # ROUNDS=41 CHUNK=2000 by default
//! ```

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_atomic::{Database, Databases};

mod common;
mod workloads;

use common::{env, quantile};
use workloads::*;

struct Pair {
    what: String,
    ours_ns: f64,
    theirs_ns: f64,
    ratio: f64,
    spread: (f64, f64),
    target: Option<f64>,
}

/// Times `chunk` calls of `f`.
fn time(chunk: usize, f: &mut dyn FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..chunk {
        f();
    }
    start.elapsed()
}

fn pair(
    what: impl Into<String>,
    target: Option<f64>,
    rounds: usize,
    chunk: usize,
    ours: &mut dyn FnMut(),
    theirs: &mut dyn FnMut(),
) -> Pair {
    // Warm up both: caches, statement caches, the allocator.
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
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
        ours_ns.push(a.as_nanos() as f64 / chunk as f64);
        theirs_ns.push(b.as_nanos() as f64 / chunk as f64);
    }
    for values in [&mut ratios, &mut ours_ns, &mut theirs_ns] {
        values.sort_by(f64::total_cmp);
    }
    Pair {
        what: what.into(),
        ours_ns: quantile(&ours_ns, 0.5),
        theirs_ns: quantile(&theirs_ns, 0.5),
        ratio: quantile(&ratios, 0.5),
        spread: (quantile(&ratios, 0.25), quantile(&ratios, 0.75)),
        target,
    }
}

fn main() {
    // `cargo bench` runs every bench target; only `PAIRED=1 cargo bench --bench paired` runs.
    if std::env::var_os("PAIRED").is_none() {
        return;
    }
    let rounds = env("ROUNDS", 41);
    let chunk = env("CHUNK", 2000);
    let mut pairs = Vec::new();

    // Both sides of a pair run on the same connection, so they see the same database state.
    let conn = RefCell::new(sqlite());
    let mut n = 0;
    let mut m = 0;
    pairs.push(pair(
        "one INSERT, explicit mode vs `conn.transaction`",
        Some(1.02),
        rounds,
        chunk,
        &mut || {
            n += 1;
            insert_explicit(&mut conn.borrow_mut(), n).unwrap()
        },
        &mut || {
            m += 1;
            insert_diesel(&mut conn.borrow_mut(), m).unwrap()
        },
    ));

    let pool = sqlite_pool();
    let _registry = Databases::new()
        .add("default", Database::new(pool.clone()))
        .enter();
    pairs.push(pair(
        "one INSERT, ambient mode vs `pool.get()` + `conn.transaction`",
        Some(1.10),
        rounds,
        chunk,
        &mut || {
            n += 1;
            insert_ambient(n).unwrap()
        },
        &mut || {
            m += 1;
            insert_diesel(&mut pool.get().unwrap(), m).unwrap()
        },
    ));

    pairs.push(pair(
        "empty block vs `conn.transaction`",
        Some(1.02),
        rounds,
        chunk,
        &mut || empty_explicit(&mut conn.borrow_mut()).unwrap(),
        &mut || {
            conn.borrow_mut()
                .transaction(|_| QueryResult::Ok(()))
                .unwrap()
        },
    ));

    for depth in [1, 4, 16, 64] {
        let chunk = (chunk / depth as usize).max(50);
        pairs.push(pair(
            format!("{depth} nested blocks vs nested `conn.transaction`"),
            Some(1.02),
            rounds,
            chunk,
            &mut || nest_explicit(&mut conn.borrow_mut(), depth).unwrap(),
            &mut || nest_diesel(&mut conn.borrow_mut(), depth).unwrap(),
        ));
    }

    #[cfg(feature = "postgres")]
    if let Some(url) = std::env::var("PG_URL").ok().filter(|url| !url.is_empty()) {
        let conn = RefCell::new(postgres_connection(&url));
        let chunk = (chunk / 10).max(50);
        pairs.push(pair(
            "PostgreSQL: one INSERT, explicit mode vs `conn.transaction`",
            Some(1.02),
            rounds,
            chunk,
            &mut || {
                n += 1;
                insert_pg(&mut conn.borrow_mut(), n).unwrap()
            },
            &mut || {
                m += 1;
                conn.borrow_mut()
                    .transaction(|conn| upsert(conn, m))
                    .unwrap()
            },
        ));
        pairs.push(pair(
            "PostgreSQL: empty block vs `conn.transaction`",
            Some(1.02),
            rounds,
            chunk,
            &mut || empty_pg(&mut conn.borrow_mut()).unwrap(),
            &mut || {
                conn.borrow_mut()
                    .transaction(|_| QueryResult::Ok(()))
                    .unwrap()
            },
        ));
    }

    let mut table = format!(
        "Interleaved wall time: {rounds} rounds, each a chunk of ours and a chunk of theirs back \
         to back ({chunk} blocks a chunk; nested: {chunk} / depth; PostgreSQL: {chunk} / 10). \
         Ratio: the median of the rounds' ratios, with the middle half of them.\n\n\
         | workload | ours (ns) | hand-written (ns) | ratio | middle half | target |\n\
         | --- | ---: | ---: | ---: | --- | --- |\n"
    );
    for pair in &pairs {
        let verdict = match pair.target {
            Some(target) if pair.ratio <= target => format!("≤ {target:.2}: met"),
            Some(target) => format!("≤ {target:.2}: **missed**"),
            None => String::new(),
        };
        writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.3}× | {:.3}–{:.3} | {verdict} |",
            pair.what, pair.ours_ns, pair.theirs_ns, pair.ratio, pair.spread.0, pair.spread.1
        )
        .unwrap();
    }
    print!("{table}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(root.join("bench/results/paired.md"), table).expect("write paired.md");
}
