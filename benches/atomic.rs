//! What `#[atomic]` costs over the hand-written diesel that does the same, measured side by side
//! in one run (criterion). Groups, each pairing ours with diesel's:
//!
//! - `insert/*`: one INSERT (an upsert over 1,024 rows, so the table stays the same size) in a
//!   block. Explicit mode vs `conn.transaction`; ambient mode (pool
//!   checkout included) vs `pool.get()` + `conn.transaction`.
//! - `empty/*`: an empty block (pure bookkeeping) vs raw `BEGIN`/`COMMIT` and `conn.transaction`.
//! - `nesting/*/{1,4,16,64}`: nested blocks (savepoints) vs the same nesting of `conn.transaction`.
//! - `on_commit/*`: registering 1, 100 and 10,000 callbacks in a block (then dropped by a
//!   rollback, so running them is not measured), and rolling back a savepoint that holds 10,000
//!   of 100,000 callbacks vs one holding all of its parent's 10,000 (must be O(dropped)).
//! - `request/*`: `request()` around a one-INSERT view, with and without `atomic_requests`.
//!
//! On SQLite in memory always; the `insert` and `empty` groups also on PostgreSQL when the
//! crate feature `postgres` is on and `PG_URL` is set (`bench/run` does both). Ratios, not
//! absolute times, are the result: see BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::{Database, Databases, Error, transaction};

mod workloads;

use workloads::*;

// --- Groups ---------------------------------------------------------------------------------------

fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert");
    let mut conn = sqlite();
    let mut n = 0;
    group.bench_function("diesel_transaction", |b| {
        b.iter(|| {
            n += 1;
            insert_diesel(&mut conn, n).unwrap()
        })
    });
    group.bench_function("atomic_explicit", |b| {
        b.iter(|| {
            n += 1;
            insert_explicit(&mut conn, n).unwrap()
        })
    });

    let pool = sqlite_pool();
    group.bench_function("diesel_pool_get_transaction", |b| {
        b.iter(|| {
            n += 1;
            insert_diesel(&mut pool.get().unwrap(), n).unwrap()
        })
    });
    let _registry = Databases::new()
        .add("default", Database::new(pool.clone()))
        .enter();
    group.bench_function("atomic_ambient", |b| {
        b.iter(|| {
            n += 1;
            insert_ambient(n).unwrap()
        })
    });
    group.finish();
}

fn empty(c: &mut Criterion) {
    let mut group = c.benchmark_group("empty");
    let mut conn = sqlite();
    group.bench_function("raw_begin_commit", |b| {
        b.iter(|| {
            conn.batch_execute("BEGIN").unwrap();
            conn.batch_execute("COMMIT").unwrap();
        })
    });
    group.bench_function("diesel_transaction", |b| {
        b.iter(|| conn.transaction(|_| QueryResult::Ok(())).unwrap())
    });
    group.bench_function("atomic_explicit", |b| {
        b.iter(|| empty_explicit(&mut conn).unwrap())
    });
    group.finish();
}

fn nesting(c: &mut Criterion) {
    let mut group = c.benchmark_group("nesting");
    let mut conn = sqlite();
    for depth in [1, 4, 16, 64] {
        group.bench_with_input(
            BenchmarkId::new("diesel_transaction", depth),
            &depth,
            |b, &depth| b.iter(|| nest_diesel(&mut conn, black_box(depth)).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("atomic_explicit", depth),
            &depth,
            |b, &depth| b.iter(|| nest_explicit(&mut conn, black_box(depth)).unwrap()),
        );
    }
    group.finish();
}

fn on_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("on_commit");
    let mut conn = sqlite();
    for count in [0usize, 1, 100, 10_000] {
        group.bench_with_input(
            BenchmarkId::new("register_then_roll_back", count),
            &count,
            |b, &count| {
                b.iter(|| {
                    transaction::Atomic::new().run_on(&mut conn, |_| {
                        for _ in 0..count {
                            transaction::on_commit(|| ())?;
                        }
                        transaction::set_rollback(true)?;
                        Ok::<_, Error>(())
                    })
                })
            },
        );
    }

    // Rolling back a savepoint drops its own callbacks only: with 90,000 of its parent's
    // queued before it, it must cost what it costs with none.
    for parents in [0usize, 90_000] {
        group.sample_size(10);
        group.bench_with_input(
            BenchmarkId::new("savepoint_rollback_dropping_10000_after", parents),
            &parents,
            |b, &parents| {
                b.iter_custom(|iterations| {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iterations {
                        transaction::Atomic::new()
                            .run_on(&mut conn, |conn| {
                                for _ in 0..parents {
                                    transaction::on_commit(|| ())?;
                                }
                                let start = Instant::now();
                                let inner = transaction::Atomic::new().run_on(conn, |_| {
                                    for _ in 0..10_000 {
                                        transaction::on_commit(|| ())?;
                                    }
                                    Err::<(), _>(Error::TransactionManagement("roll back".into()))
                                });
                                measured += start.elapsed();
                                assert!(inner.is_err());
                                transaction::set_rollback(true)?;
                                Ok::<_, Error>(())
                            })
                            .unwrap();
                    }
                    measured
                })
            },
        );
    }
    group.finish();
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    let mut n = 0;
    for atomic_requests in [false, true] {
        let pool = sqlite_pool();
        let _registry = Databases::new()
            .add(
                "default",
                Database::new(pool.clone()).atomic_requests(atomic_requests),
            )
            .enter();
        let label = if atomic_requests {
            "atomic_requests"
        } else {
            "autocommit"
        };
        group.bench_function(BenchmarkId::new("view_without_request", label), |b| {
            b.iter(|| {
                n += 1;
                diesel_atomic::connection(|conn: &mut SqliteConnection| {
                    insert_row(conn, n).map_err(Error::from)
                })
                .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("request", label), |b| {
            b.iter(|| {
                n += 1;
                diesel_atomic::request(|| {
                    diesel_atomic::connection(|conn: &mut SqliteConnection| {
                        insert_row(conn, n).map_err(Error::from)
                    })
                })
                .unwrap()
            })
        });
    }
    group.finish();
}

#[cfg(feature = "postgres")]
fn postgres(c: &mut Criterion) {
    let Some(url) = std::env::var("PG_URL").ok().filter(|url| !url.is_empty()) else {
        eprintln!("PG_URL is not set: the PostgreSQL benchmarks are skipped");
        return;
    };

    let mut conn = postgres_connection(&url);
    let mut group = c.benchmark_group("postgres");
    let mut n = 0;
    group.bench_function("insert/diesel_transaction", |b| {
        b.iter(|| {
            n += 1;
            conn.transaction(|conn| upsert(conn, n)).unwrap()
        })
    });
    group.bench_function("insert/atomic_explicit", |b| {
        b.iter(|| {
            n += 1;
            insert_pg(&mut conn, n).unwrap()
        })
    });
    group.bench_function("empty/diesel_transaction", |b| {
        b.iter(|| conn.transaction(|_| QueryResult::Ok(())).unwrap())
    });
    group.bench_function("empty/atomic_explicit", |b| {
        b.iter(|| empty_pg(&mut conn).unwrap())
    });
    group.finish();
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: &mut Criterion) {}

criterion_group!(
    benches, insert, empty, nesting, on_commit, request, postgres
);
criterion_main!(benches);
