//! Isolation level, read-only and SQLite's lock mode at BEGIN (rule E2), checked by asking the
//! server what the open transaction runs with and by what a concurrent commit shows.

// Server-only tests are compiled only with the server features (scripts/test turns both on).
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports)
)]

mod common;

use std::sync::mpsc;
use std::thread;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::testing::TestTransaction;
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{BeginMode, Error, Isolation};

/// What the server says about the transaction open on a connection.
trait Probe: Backend {
    /// The isolation level and whether the transaction is read-only.
    fn transaction_characteristics(&mut self) -> QueryResult<(Isolation, bool)>;
}

impl Probe for SqliteConnection {
    fn transaction_characteristics(&mut self) -> QueryResult<(Isolation, bool)> {
        unreachable!("SQLite has only SERIALIZABLE read-write transactions")
    }
}

#[cfg(feature = "postgres")]
impl Probe for PgConnection {
    fn transaction_characteristics(&mut self) -> QueryResult<(Isolation, bool)> {
        use diesel::dsl::sql;
        use diesel::sql_types::Text;
        let (level, read_only): (String, String) = diesel::select((
            sql::<Text>("current_setting('transaction_isolation')"),
            sql::<Text>("current_setting('transaction_read_only')"),
        ))
        .get_result(self)?;
        Ok((parse_level(&level), read_only == "on"))
    }
}

#[cfg(feature = "mysql")]
impl Probe for MysqlConnection {
    fn transaction_characteristics(&mut self) -> QueryResult<(Isolation, bool)> {
        use diesel::dsl::sql;
        use diesel::sql_types::{BigInt, Text};
        // InnoDB lists a transaction once it touched a table; `SET TRANSACTION` does not show
        // in @@tx_isolation, so ask InnoDB about the running transaction itself. InnoDB
        // refreshes its information_schema copy at most every 100 ms: wait that out.
        self.count_rows("reporters")?;
        std::thread::sleep(std::time::Duration::from_millis(150));
        let (level, read_only): (String, i64) = diesel::select((
            sql::<Text>(
                "(SELECT trx_isolation_level FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id = CONNECTION_ID())",
            ),
            sql::<BigInt>(
                "(SELECT trx_is_read_only FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id = CONNECTION_ID())",
            ),
        ))
        .get_result(self)?;
        Ok((parse_level(&level), read_only == 1))
    }
}

/// The runtime's error message, from a block that must have failed with one.
#[track_caller]
fn atomic_error<T: std::fmt::Debug>(result: Result<T, TestError>) -> String {
    match result {
        Err(TestError::Atomic(message)) => message,
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

fn parse_level(level: &str) -> Isolation {
    match level.to_ascii_lowercase().replace('-', " ").as_str() {
        "read uncommitted" => Isolation::ReadUncommitted,
        "read committed" => Isolation::ReadCommitted,
        "repeatable read" => Isolation::RepeatableRead,
        "serializable" => Isolation::Serializable,
        other => panic!("unknown isolation level {other:?}"),
    }
}

const LEVELS: [Isolation; 3] = [
    Isolation::ReadCommitted,
    Isolation::RepeatableRead,
    Isolation::Serializable,
];

fn ambient_characteristics<C: Probe>(block: &Atomic) -> Result<(Isolation, bool), Error> {
    block.run(|| {
        diesel_atomic::connection(|conn: &mut C| {
            conn.transaction_characteristics().map_err(Error::from)
        })
    })
}

fn each_level_is_the_transactions_level_in_both_modes<C: Probe>() {
    let db = setup::<C>();
    for level in LEVELS {
        for read_only in [false, true] {
            let block = Atomic::new()
                .durable(true)
                .isolation(level)
                .read_only(read_only);
            assert_eq!(
                ambient_characteristics::<C>(&block).unwrap(),
                (level, read_only),
                "ambient mode"
            );
            let mut conn = db.raw("default");
            let explicit = block
                .run_on(&mut conn, |conn| conn.transaction_characteristics())
                .unwrap();
            assert_eq!(explicit, (level, read_only), "explicit mode");
            assert_not_in_transaction(&mut conn);
        }
    }
    assert_pool_clean(&db.default);
}

/// The level is not only reported but enforced: a second read of the same query sees a
/// concurrent commit under READ COMMITTED and not under REPEATABLE READ.
fn a_concurrent_commit_shows_under_read_committed_only<C: Probe>() {
    let db = setup::<C>();
    for (level, sees_it) in [
        (Isolation::ReadCommitted, true),
        (Isolation::RepeatableRead, false),
    ] {
        let mut other = db.raw("default");
        let mut conn = db.raw("default");
        let (before, after) = Atomic::new()
            .isolation(level)
            .run_on(&mut conn, |conn| {
                let before = conn.count_rows("reporters")?;
                other.insert_reporter("Tintin", "")?;
                let after = conn.count_rows("reporters")?;
                Ok::<_, DieselError>((before, after))
            })
            .unwrap();
        assert_eq!(after - before, i64::from(sees_it), "{level}");
    }
}

fn read_only_blocks_reject_writes<C: Probe>() {
    let db = setup::<C>();
    let block = Atomic::new().durable(true).read_only(true);

    let ambient = block.run(|| create_reporter("Tintin", ""));
    assert!(
        matches!(
            ambient,
            Err(Error::Database(DieselError::DatabaseError(
                DatabaseErrorKind::ReadOnlyTransaction,
                _
            )))
        ),
        "{ambient:?}"
    );
    let mut conn = db.raw("default");
    let explicit = block.run_on(&mut conn, |conn| conn.insert_reporter("Haddock", ""));
    assert!(
        matches!(
            explicit,
            Err(DieselError::DatabaseError(
                DatabaseErrorKind::ReadOnlyTransaction,
                _
            ))
        ),
        "{explicit:?}"
    );
    assert!(db.reporters("default").is_empty());
    assert_not_in_transaction(&mut conn);
    assert_pool_clean(&db.default);
    // Reads are fine.
    let count = block
        .run(|| {
            on_alias("default", |conn| {
                conn.count_rows("reporters").map_err(Error::from)
            })
        })
        .unwrap();
    assert_eq!(count, 0);
}

fn begin_options_on_a_nested_block_are_an_error_naming_the_alias<C: Backend>() {
    let db = setup::<C>();
    let level = match C::KIND {
        Kind::Sqlite => Isolation::Serializable,
        _ => Isolation::RepeatableRead,
    };
    let result = Atomic::new().using("other").run(|| {
        add_to("other", "Tintin")?;
        Atomic::new()
            .using("other")
            .isolation(level)
            .run(|| add_to("other", "Haddock"))
    });
    let message = result.unwrap_err().to_string();
    assert!(message.contains("alias 'other'"), "{message}");
    assert!(message.contains(&format!("isolation {level}")), "{message}");
    assert!(message.contains("durable = true"), "{message}");
    assert!(
        !message.contains("  "),
        "one space between words: {message}"
    );
    // The outer block returned the error, so it rolled back.
    assert!(db.reporters("other").is_empty());

    // Inside the caller's own diesel transaction too.
    let mut conn = db.raw("default");
    let result = conn.transaction(|conn| {
        Atomic::new()
            .isolation(level)
            .run_on(conn, |conn| conn.insert_reporter("Nestor", ""))
    });
    let message = result.unwrap_err().to_string();
    assert!(message.contains("alias 'default'"), "{message}");
    assert_not_in_transaction(&mut conn);
}

/// Like `durable`, the options are ignored by a block directly inside a TestTransaction (whose
/// BEGIN already ran), so code under test runs unchanged in tests.
fn begin_options_are_ignored_directly_inside_a_test_transaction<C: Backend>() {
    let _db = setup::<C>();
    let level = match C::KIND {
        Kind::Sqlite => Isolation::Serializable,
        _ => Isolation::RepeatableRead,
    };
    let test = TestTransaction::begin().unwrap();
    Atomic::new()
        .durable(true)
        .isolation(level)
        .run(|| add("Tintin"))
        .unwrap();
    assert_eq!(visible_reporters(), ["Tintin"]);
    drop(test);
}

fn sqlite_refuses_what_it_cannot_honour<C: Backend>() {
    let db = setup::<C>();
    for block in [
        Atomic::new().isolation(Isolation::ReadCommitted),
        Atomic::new().isolation(Isolation::RepeatableRead),
        Atomic::new().read_only(true),
    ] {
        let message = atomic_error(block.run(|| add("Tintin")));
        assert!(message.contains("alias 'default'"), "{message}");
        assert!(message.contains("SQLite"), "{message}");
        let mut conn = db.raw("default");
        assert!(
            block
                .run_on(&mut conn, |conn| add_on(conn, "Haddock"))
                .is_err()
        );
        assert_not_in_transaction(&mut conn);
    }
    Atomic::new()
        .isolation(Isolation::Serializable)
        .run(|| add("Calculus"))
        .unwrap();
    assert_eq!(db.reporters("default"), ["Calculus"]);
    assert_pool_clean(&db.default);
}

fn servers_refuse_sqlites_lock_mode<C: Backend>() {
    let db = setup::<C>();
    let message = atomic_error(
        Atomic::new()
            .begin(BeginMode::Immediate)
            .run(|| add("Tintin")),
    );
    assert!(message.contains("alias 'default'"), "{message}");
    assert!(message.contains("SQLite's lock mode"), "{message}");
    assert!(db.reporters("default").is_empty());
    assert_pool_clean(&db.default);
}

/// `BEGIN IMMEDIATE` holds the write lock from the start: another writer's own
/// `BEGIN IMMEDIATE` is refused at once (busy_timeout 0) while the block runs, and is not for a
/// deferred block that has not written yet.
fn immediate_blocks_hold_the_write_lock_from_begin<C: Backend>() {
    let db = setup::<C>();
    let url = db.url("default").to_owned();
    for (mode, locked) in [(BeginMode::Immediate, true), (BeginMode::Deferred, false)] {
        let (asked, answer) = (mpsc::channel::<()>(), mpsc::channel::<bool>());
        let url = url.clone();
        let writer = thread::spawn(move || {
            let mut conn = SqliteConnection::establish(&url).unwrap();
            conn.batch_execute("PRAGMA busy_timeout = 0").unwrap();
            asked.1.recv().unwrap();
            let refused = conn.batch_execute("BEGIN IMMEDIATE; ROLLBACK;").is_err();
            answer.0.send(refused).unwrap();
        });
        let refused = Atomic::new()
            .begin(mode)
            .run(|| {
                asked.0.send(()).unwrap();
                Ok::<_, Error>(answer.1.recv().unwrap())
            })
            .unwrap();
        writer.join().unwrap();
        assert_eq!(refused, locked, "{mode:?}");
    }
    assert_pool_clean(&db.default);
}

/// A block that is refused at BEGIN leaves nothing behind: no transaction, no open block.
fn a_refused_begin_leaves_no_block_behind<C: Backend>() {
    let db = setup::<C>();
    let bad = match C::KIND {
        Kind::Sqlite => Atomic::new().read_only(true),
        _ => Atomic::new().begin(BeginMode::Exclusive),
    };
    assert!(bad.run(|| add("Tintin")).is_err());
    assert!(!transaction::in_atomic_block());
    transaction::atomic(|| add("Haddock")).unwrap();
    assert_eq!(db.reporters("default"), ["Haddock"]);
    assert_pool_clean(&db.default);
}

backend_tests!(
    begin_options_on_a_nested_block_are_an_error_naming_the_alias,
    begin_options_are_ignored_directly_inside_a_test_transaction,
    a_refused_begin_leaves_no_block_behind,
);
mod sqlite_only {
    use super::*;
    backend_tests!(on [sqlite]:
        sqlite_refuses_what_it_cannot_honour,
        immediate_blocks_hold_the_write_lock_from_begin,
    );
}

mod servers {
    use super::*;
    backend_tests!(on [postgres, mysql]:
        each_level_is_the_transactions_level_in_both_modes,
        a_concurrent_commit_shows_under_read_committed_only,
        read_only_blocks_reject_writes,
        servers_refuse_sqlites_lock_mode,
    );
}
