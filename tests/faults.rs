//! Failures of the database itself, not of the body: a COMMIT that fails (rule X4), and many
//! threads sharing one pool. Afterwards no pooled connection may be left inside a transaction.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::{Error, atomic, transaction};

const PARENT_CHILD: &str = "
    CREATE TABLE parents (id INTEGER PRIMARY KEY);
    CREATE TABLE children (
        id INTEGER PRIMARY KEY,
        parent_id INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
    );
";

/// Inserts a child whose parent does not exist: accepted now, refused at COMMIT.
fn insert_orphan(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("INSERT INTO children (id, parent_id) VALUES (1, 42)")
}

fn count_children(db: &TestDb) -> i64 {
    diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM children")
        .get_result(&mut db.raw("default"))
        .expect("count")
}

#[atomic]
fn orphan_explicit(conn: &mut SqliteConnection, ran: Notified) -> QueryResult<()> {
    insert_orphan(conn)?;
    transaction::on_commit(move || ran.push(1))?;
    Ok(())
}

#[atomic]
fn orphan_ambient(ran: Notified) -> Result<(), Error> {
    diesel_atomic::connection(|conn: &mut SqliteConnection| {
        insert_orphan(conn).map_err(Error::from)
    })?;
    transaction::on_commit(move || ran.push(1))?;
    Ok(())
}

#[test]
fn failed_commit_in_explicit_mode_returns_the_error_and_commits_nothing() {
    let db = setup();
    let mut conn = db.default.get().unwrap();
    conn.batch_execute(PARENT_CHILD).unwrap();
    let ran = Notified::default();

    let error = orphan_explicit(&mut conn, ran.clone()).unwrap_err();

    assert!(
        matches!(
            error,
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                _
            )
        ),
        "{error:?}"
    );
    assert_eq!(count_children(&db), 0);
    assert!(ran.get().is_empty(), "no callback of a failed commit runs");
    assert!(!transaction::in_atomic_block());
    // The same connection is outside any transaction and usable.
    assert_not_in_transaction(&mut conn);
    drop(conn);
    assert_pool_clean(&db.default);
}

#[test]
fn failed_commit_in_ambient_mode_returns_the_error_and_the_pool_stays_clean() {
    let db = setup();
    db.default
        .get()
        .unwrap()
        .batch_execute(PARENT_CHILD)
        .unwrap();
    let ran = Notified::default();

    let error = orphan_ambient(ran.clone()).unwrap_err();

    assert!(
        matches!(
            error,
            Error::Database(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                _
            ))
        ),
        "{error:?}"
    );
    assert_eq!(count_children(&db), 0);
    assert!(ran.get().is_empty(), "no callback of a failed commit runs");
    assert_pool_clean(&db.default);
    // The next block on the alias works and commits.
    transaction::atomic(|| create_reporter("Tintin", "")).unwrap();
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

#[test]
fn threads_sharing_a_pool_commit_exactly_their_successful_blocks() {
    let db = setup();
    const THREADS: usize = 4;
    const BLOCKS: usize = 50;
    let barrier = Arc::new(Barrier::new(THREADS));
    let committed = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let databases = db.databases.clone();
            let barrier = Arc::clone(&barrier);
            let committed = Arc::clone(&committed);
            std::thread::spawn(move || {
                let _registry = databases.enter();
                quiet_expected_panics();
                barrier.wait();
                for i in 0..BLOCKS {
                    let num = (t * BLOCKS + i) as i32;
                    let outcome = std::panic::catch_unwind(|| {
                        transaction::atomic(|| {
                            insert_thing(num)?;
                            match num % 3 {
                                0 => Ok(()),
                                1 => Err(TestError::Oops),
                                _ => panic!("expected panic {num}"),
                            }
                        })
                    });
                    if matches!(outcome, Ok(Ok(()))) {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                assert!(!transaction::in_atomic_block());
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("worker thread");
    }

    let expected: Vec<i32> = (0..(THREADS * BLOCKS) as i32)
        .filter(|n| n % 3 == 0)
        .collect();
    let mut stored = db.things("default");
    stored.sort_unstable();
    assert_eq!(stored, expected);
    assert_eq!(committed.load(Ordering::Relaxed), expected.len());
    assert_pool_clean(&db.default);
}

/// Keeps the deliberate panics of the thread test out of the output; others still print.
fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.payload().downcast_ref::<String>();
            if !message.is_some_and(|m| m.starts_with("expected panic")) {
                default_hook(info);
            }
        }));
    });
}

#[atomic]
fn insert_explicit(conn: &mut SqliteConnection) -> QueryResult<()> {
    insert_reporter(conn, "Tintin", "")
}

#[test]
fn failed_begin_leaves_no_block_behind() {
    let db = setup();
    let mut conn = db.default.get().unwrap();
    // A transaction diesel does not know about: our BEGIN fails.
    conn.batch_execute("BEGIN").unwrap();

    let error = insert_explicit(&mut conn).unwrap_err();

    assert!(
        error.to_string().contains("within a transaction"),
        "{error}"
    );
    assert!(!transaction::in_atomic_block(), "the block was taken back");
    assert!(matches!(
        transaction::get_rollback(),
        Err(Error::NotInAtomicBlock { .. })
    ));
    conn.batch_execute("ROLLBACK").unwrap();
    insert_explicit(&mut conn).unwrap();
    drop(conn);
    assert_eq!(db.reporters("default"), ["Tintin"]);
    // Ambient access is not left bound to the explicit connection either.
    transaction::atomic(|| create_reporter("Haddock", "")).unwrap();
    assert_eq!(db.reporters("default"), ["Haddock", "Tintin"]);
}
