//! Failures of the database itself, not of the body (SEMANTICS X4, X5): a COMMIT that fails, a
//! RELEASE that fails, a connection the server kills, and many threads sharing one pool.
//! Each test checks what was committed, that no callback of a failed transaction ran, and
//! that every pooled connection is usable and outside any transaction afterwards, by asking
//! the server rather than our bookkeeping.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{Error, atomic};

// ---------------------------------------------------------------------------------------------
// A COMMIT that fails: a deferred foreign key (SQLite, PostgreSQL; MariaDB has no deferred
// constraints, so its failed COMMIT is the killed-before-COMMIT test further down).
// ---------------------------------------------------------------------------------------------

const PARENT_CHILD: &str = "
    CREATE TABLE parents (id INTEGER PRIMARY KEY);
    CREATE TABLE children (
        id INTEGER PRIMARY KEY,
        parent_id INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
    );
";

/// Inserts a child whose parent does not exist: accepted now, refused at COMMIT.
fn insert_orphan<C: Backend>(conn: &mut C) -> QueryResult<()> {
    conn.batch_execute("INSERT INTO children (id, parent_id) VALUES (1, 42)")
}

fn count_children<C: Backend>(db: &TestDb<C>) -> i64 {
    db.raw("default").count_rows("children").expect("count")
}

#[atomic]
fn orphan_explicit<C: Backend>(conn: &mut C, ran: Notified) -> QueryResult<()> {
    insert_orphan(conn)?;
    transaction::on_commit(move || ran.push(1))?;
    Ok(())
}

#[atomic]
fn orphan_ambient<C: Backend>(ran: Notified) -> Result<(), Error> {
    diesel_atomic::connection(|conn: &mut C| insert_orphan(conn).map_err(Error::from))?;
    transaction::on_commit(move || ran.push(1))?;
    Ok(())
}

#[track_caller]
fn assert_foreign_key_violation(error: &DieselError) {
    assert!(
        matches!(
            error,
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)
        ),
        "{error:?}"
    );
}

fn failed_commit_in_explicit_mode_returns_the_error_and_commits_nothing<C: Backend>() {
    let db = setup::<C>();
    let mut conn = db.default.get().unwrap();
    conn.batch_execute(PARENT_CHILD).unwrap();
    let ran = Notified::default();

    let error = orphan_explicit(&mut *conn, ran.clone()).unwrap_err();

    assert_foreign_key_violation(&error);
    assert_eq!(count_children(&db), 0);
    assert!(ran.get().is_empty(), "no callback of a failed commit runs");
    assert!(!transaction::in_atomic_block());
    // The same connection is outside any transaction and usable.
    assert_not_in_transaction(&mut *conn);
    drop(conn);
    assert_pool_clean(&db.default);
}

fn failed_commit_in_ambient_mode_returns_the_error_and_the_pool_stays_clean<C: Backend>() {
    let db = setup::<C>();
    db.default
        .get()
        .unwrap()
        .batch_execute(PARENT_CHILD)
        .unwrap();
    let ran = Notified::default();

    let error = orphan_ambient::<C>(ran.clone()).unwrap_err();

    match &error {
        Error::Database(error) => assert_foreign_key_violation(error),
        other => panic!("expected the COMMIT's error, got {other:?}"),
    }
    assert_eq!(count_children(&db), 0);
    assert!(ran.get().is_empty(), "no callback of a failed commit runs");
    assert_pool_clean(&db.default);
    // The next block on the alias works and commits.
    transaction::atomic(|| create_reporter("Tintin", "")).unwrap();
    assert_eq!(db.reporters("default"), ["Tintin"]);
}

mod deferred_constraints {
    use super::*;

    backend_tests!(on [sqlite, postgres]:
        failed_commit_in_explicit_mode_returns_the_error_and_commits_nothing,
        failed_commit_in_ambient_mode_returns_the_error_and_the_pool_stays_clean,
    );
}

// ---------------------------------------------------------------------------------------------
// A RELEASE that fails (X4): the body released the block's savepoint behind diesel's back, so
// our RELEASE, and the ROLLBACK TO that X4 tries next, both fail on every backend.
// ---------------------------------------------------------------------------------------------

fn failed_release_marks_the_enclosing_transaction_for_rollback<C: Backend>() {
    let db = setup::<C>();
    let ran = Notified::default();
    let outer = transaction::atomic(|| {
        add("Tintin")?;
        let inner = transaction::atomic(|| {
            add_to("default", "Haddock")?;
            let ran = ran.clone();
            transaction::on_commit(move || ran.push(1))?;
            diesel_atomic::connection(|conn: &mut C| {
                conn.batch_execute("RELEASE SAVEPOINT diesel_savepoint_1")
                    .map_err(Error::from)
            })
        });
        assert!(
            matches!(inner, Err(Error::Database(DieselError::DatabaseError(..)))),
            "the failed RELEASE is the block's error: {inner:?}"
        );
        // The inner block's writes can no longer be undone on their own.
        assert!(transaction::get_rollback()?, "X4: marked for rollback");
        Ok::<_, TestError>(())
    });
    // Django's rule: a marked block whose body succeeded rolls back without an error.
    assert_eq!(outer, Ok(()));
    assert!(ran.get().is_empty());
    assert!(db.reporters("default").is_empty(), "nothing was committed");
    assert!(!transaction::in_atomic_block());
    assert_pool_clean(&db.default);
    transaction::atomic(|| add("Calculus")).unwrap();
    assert_eq!(db.reporters("default"), ["Calculus"]);
}

// ---------------------------------------------------------------------------------------------
// The server kills the connection (X5).
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Many threads, one pool.
// ---------------------------------------------------------------------------------------------

fn threads_sharing_a_pool_commit_exactly_their_successful_blocks<C: Backend>() {
    let db = setup::<C>();
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
                let _registry = TestDb::<C>::enter(&databases);
                quiet_expected_panics("expected panic");
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

/// How one level of a random nest of blocks ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Ok,
    Err,
    Panic,
}

/// A small deterministic generator (xorshift64*), so that a failure can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs levels `outcomes[level..]` as nested blocks, each inserting `first + level` before its
/// child; an inner `Err` is swallowed by its parent (which goes on), a panic unwinds through
/// every level. `savepoint = false` levels join their parent.
fn nest(outcomes: &[(Outcome, bool)], level: usize, first: i32) -> Result<(), TestError> {
    let Some(&(outcome, savepoint)) = outcomes.get(level) else {
        return Ok(());
    };
    Atomic::new().savepoint(savepoint).run(|| {
        insert_thing(first + level as i32)?;
        let _ = nest(outcomes, level + 1, first);
        match outcome {
            Outcome::Ok => Ok(()),
            Outcome::Err => Err(TestError::Oops),
            Outcome::Panic => panic!("expected panic at level {level}"),
        }
    })
}

/// The rows a nest commits, by SEMANTICS S/X/F: a panic anywhere rolls everything back. A
/// level that fails (its own `Err`, or a joined child that failed into it) rolls back to its
/// savepoint when it has one (the outermost always does), else marks its parent for rollback.
/// A level's row survives when no level at or above it rolled back.
fn committed_rows(outcomes: &[(Outcome, bool)], first: i32) -> Vec<i32> {
    if outcomes
        .iter()
        .any(|(outcome, _)| *outcome == Outcome::Panic)
    {
        return Vec::new();
    }
    let mut rolled_back = vec![false; outcomes.len()];
    let mut marked = false;
    for (level, &(outcome, savepoint)) in outcomes.iter().enumerate().rev() {
        if outcome == Outcome::Err || marked {
            let has_savepoint = level == 0 || savepoint;
            rolled_back[level] = has_savepoint;
            marked = !has_savepoint;
        }
    }
    (0..outcomes.len())
        .take_while(|&level| !rolled_back[level])
        .map(|level| first + level as i32)
        .collect()
}

fn ten_thousand_random_blocks_leave_every_pooled_connection_clean<C: Backend>() {
    let db = setup::<C>();
    const THREADS: usize = 4;
    const BLOCKS: usize = 2_500;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let databases = db.databases.clone();
            std::thread::spawn(move || {
                let _registry = TestDb::<C>::enter(&databases);
                quiet_expected_panics("expected panic");
                let mut random = Random(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                let mut expected = Vec::new();
                for block in 0..BLOCKS {
                    let depth = 1 + random.below(3) as usize;
                    let outcomes: Vec<(Outcome, bool)> = (0..depth)
                        .map(|level| {
                            let outcome = match random.below(10) {
                                0..=5 => Outcome::Ok,
                                6..=8 => Outcome::Err,
                                _ => Outcome::Panic,
                            };
                            // The outermost block always opens a transaction.
                            (outcome, level == 0 || random.below(4) != 0)
                        })
                        .collect();
                    let first = ((t * BLOCKS + block) * 4) as i32;
                    let result = std::panic::catch_unwind(|| nest(&outcomes, 0, first));
                    if let Ok(Err(error)) = result {
                        assert_eq!(error, TestError::Oops, "block {block}: {outcomes:?}");
                    }
                    assert!(!transaction::in_atomic_block());
                    expected.extend(committed_rows(&outcomes, first));
                }
                expected
            })
        })
        .collect();
    let mut expected: Vec<i32> = handles
        .into_iter()
        .flat_map(|handle| handle.join().expect("worker thread"))
        .collect();
    expected.sort_unstable();

    let mut stored = db.things("default");
    stored.sort_unstable();
    assert_eq!(stored.len(), expected.len());
    assert_eq!(stored, expected);
    assert_pool_clean(&db.default);
}

// ---------------------------------------------------------------------------------------------
// A BEGIN that fails.
// ---------------------------------------------------------------------------------------------

#[atomic]
fn insert_explicit<C: Backend>(conn: &mut C) -> QueryResult<()> {
    insert_reporter(conn, "Tintin", "")
}

/// SQLite only: it is the backend whose BEGIN fails inside a transaction diesel does not know
/// about (PostgreSQL warns and goes on; MariaDB commits the open one first).
#[test]
fn failed_begin_leaves_no_block_behind() {
    run::<SqliteConnection>(|| {
        let db = setup::<SqliteConnection>();
        let mut conn = db.default.get().unwrap();
        // A transaction diesel does not know about: our BEGIN fails.
        conn.batch_execute("BEGIN").unwrap();

        let error = insert_explicit(&mut *conn).unwrap_err();

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
        insert_explicit(&mut *conn).unwrap();
        drop(conn);
        assert_eq!(db.reporters("default"), ["Tintin"]);
        // Ambient access is not left bound to the explicit connection either.
        transaction::atomic(|| create_reporter("Haddock", "")).unwrap();
        assert_eq!(db.reporters("default"), ["Haddock", "Tintin"]);
    });
}

backend_tests!(
    failed_release_marks_the_enclosing_transaction_for_rollback,
    threads_sharing_a_pool_commit_exactly_their_successful_blocks,
    ten_thousand_random_blocks_leave_every_pooled_connection_clean,
);

/// Only the servers have sessions to kill.
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod server {
    use super::*;

    /// The server's id of the session behind the default alias's ambient connection.
    fn ambient_session<C: Backend>() -> Result<i64, Error> {
        diesel_atomic::connection(|conn: &mut C| conn.session_id().map_err(Error::from))
    }

    fn killed_connection_mid_block_fails_the_block_and_the_next_block_gets_a_fresh_one<
        C: Backend,
    >() {
        let db = setup::<C>();
        let mut admin = db.raw("default");
        let ran = Notified::default();

        let result = transaction::atomic(|| {
            add("Tintin")?;
            let ran = ran.clone();
            transaction::on_commit(move || ran.push(1))?;
            let session = ambient_session::<C>()?;
            admin.kill_session(session)?;
            add("Haddock")
        });

        assert!(matches!(result, Err(TestError::Atomic(_))), "{result:?}");
        assert!(
            ran.get().is_empty(),
            "no callback of the killed transaction ran"
        );
        assert!(!transaction::in_atomic_block());
        assert!(db.reporters("default").is_empty(), "nothing was committed");
        let killed = ran.clone();
        transaction::atomic(|| {
            add("Calculus")?;
            transaction::on_commit(move || killed.push(2))?;
            Ok::<_, TestError>(())
        })
        .expect("the next block runs on a fresh connection");
        assert_eq!(ran.get(), [2]);
        assert_eq!(db.reporters("default"), ["Calculus"]);
        assert_pool_clean(&db.default);
    }

    #[atomic]
    fn kill_then_insert<C: Backend>(conn: &mut C, admin: &mut C) -> Result<(), TestError> {
        add_on(conn, "Tintin")?;
        let session = conn.session_id()?;
        admin.kill_session(session)?;
        add_on(conn, "Haddock")
    }

    fn killed_connection_in_explicit_mode_is_discarded_by_the_pool<C: Backend>() {
        let db = setup::<C>();
        let mut admin = db.raw("default");
        let mut conn = db.default.get().unwrap();

        let result = kill_then_insert(&mut *conn, &mut admin);

        assert!(matches!(result, Err(TestError::Db(_))), "{result:?}");
        assert!(!transaction::in_atomic_block());
        // r2d2 asks diesel whether the connection broke when it comes back, and throws it away.
        drop(conn);
        assert_pool_clean(&db.default);
        next_block_commits_on_a_fresh_connection(&db);
    }

    /// After a killed connection, a block on a pooled connection commits.
    fn next_block_commits_on_a_fresh_connection<C: Backend>(db: &TestDb<C>) {
        let mut conn = db.default.get().unwrap();
        Atomic::new()
            .run_on(&mut *conn, |conn| add_on(conn, "Calculus"))
            .unwrap();
        drop(conn);
        assert_eq!(db.reporters("default"), ["Calculus"]);
    }

    /// A COMMIT that fails because the connection died after the body's last statement: the
    /// error is returned and, since the server never saw a COMMIT, nothing was committed.
    fn connection_killed_before_commit_fails_the_commit<C: Backend>() {
        let db = setup::<C>();
        let mut admin = db.raw("default");
        let ran = Notified::default();

        let result = transaction::atomic(|| {
            add("Tintin")?;
            let ran = ran.clone();
            transaction::on_commit(move || ran.push(1))?;
            let session = ambient_session::<C>()?;
            admin.kill_session(session)?;
            Ok::<_, TestError>(())
        });

        assert!(
            matches!(result, Err(TestError::Atomic(_))),
            "the COMMIT's error: {result:?}"
        );
        assert!(
            ran.get().is_empty(),
            "no callback runs after a failed COMMIT"
        );
        assert!(db.reporters("default").is_empty());
        assert_pool_clean(&db.default);
        transaction::atomic(|| add("Calculus")).unwrap();
        assert_eq!(db.reporters("default"), ["Calculus"]);
    }

    backend_tests!(on [postgres, mysql]:
        killed_connection_mid_block_fails_the_block_and_the_next_block_gets_a_fresh_one,
        killed_connection_in_explicit_mode_is_discarded_by_the_pool,
        connection_killed_before_commit_fails_the_commit,
    );
}
