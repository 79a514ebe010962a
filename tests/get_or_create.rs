//! `get_or_create` and `update_or_create` (SEMANTICS G1–G3, API.md §6): the transaction- and
//! race-related part of Django's tests/get_or_create/tests.py, the cases Rust adds (panics,
//! on_commit, every way of reaching a connection), races won and lost under each isolation
//! level, and a stress test.
//!
//! Every test runs on every backend (`sqlite::`, `postgres::`, `mysql::`); where a backend
//! behaves differently the test says how and checks that. The `*_only` modules at the end hold
//! the few that only make sense on one server.
//!
//! The stress tests run 16 threads × 200 calls; `STRESS_FULL=1` runs 64 × 1,000. Their numbers
//! (calls/s, retries) are printed: `cargo test --test get_or_create stress -- --nocapture`.
//!
//! Django tests left out, with the reason:
//! - GetOrCreateTests.test_callable_defaults / ..._not_called / test_defaults_not_evaluated_
//!   unless_needed: `create` is a closure, so "defaults evaluated only when creating" is rule
//!   G1, tested by `existing_row_is_returned_and_create_never_runs`.
//! - GetOrCreateThroughManyToMany (rows 10, 11): there are no relation managers; `get` and
//!   `create` are the caller's own queries.
//! - UpdateOrCreateTests.test_update_only_defaults_and_pre_save_fields_when_local_fields
//!   (row 16): `update` writes what the caller's closure writes, nothing else.
//! - UpdateOrCreateTests / GetOrCreateTestsWithManualPKs "...plus_traceback" (rows 7, 14):
//!   Rust has no tracebacks; "the original error, unchanged" is checked by variant instead
//!   (the test's `create` wraps its error in `GocError::Create`).
//! - InvalidCreateArgumentsTests (row 20): invalid field names are compile errors in diesel.

mod common;

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::testing::TestTransaction;
use diesel_atomic::transaction::{self, Atomic};
use diesel_atomic::{
    AsDieselError, Database, Databases, Error, Isolation, RetryPolicy, atomic, connection,
    get_or_create, update_or_create,
};

// ---------------------------------------------------------------------------------------------
// The table: `keyed`, unique on `k`, and `keyed_notes`, which references it
// ---------------------------------------------------------------------------------------------

diesel::table! {
    keyed (id) {
        id -> Integer,
        k -> Integer,
        value -> Text,
        note -> Text,
    }
}

diesel::table! {
    keyed_notes (id) {
        id -> Integer,
        keyed_id -> Integer,
        body -> Text,
    }
}

#[derive(Queryable, Clone, Debug, PartialEq, Eq)]
struct Keyed {
    id: i32,
    k: i32,
    value: String,
    note: String,
}

const SQLITE_TABLES: &str = "
    CREATE TABLE keyed (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        k INTEGER NOT NULL UNIQUE,
        value TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE keyed_notes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        keyed_id INTEGER NOT NULL UNIQUE REFERENCES keyed (id),
        body TEXT NOT NULL
    );
";

#[cfg(feature = "postgres")]
const POSTGRES_TABLES: &str = "
    CREATE TABLE keyed (
        id SERIAL PRIMARY KEY,
        k INTEGER NOT NULL UNIQUE,
        value TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE keyed_notes (
        id SERIAL PRIMARY KEY,
        keyed_id INTEGER NOT NULL UNIQUE REFERENCES keyed (id),
        body TEXT NOT NULL
    );
";

#[cfg(feature = "mysql")]
const MYSQL_TABLES: &str = "
    CREATE TABLE keyed (
        id INTEGER PRIMARY KEY AUTO_INCREMENT,
        k INTEGER NOT NULL UNIQUE,
        value VARCHAR(255) NOT NULL,
        note VARCHAR(255) NOT NULL DEFAULT ''
    ) ENGINE = InnoDB;
    CREATE TABLE keyed_notes (
        id INTEGER PRIMARY KEY AUTO_INCREMENT,
        keyed_id INTEGER NOT NULL UNIQUE,
        body VARCHAR(255) NOT NULL,
        FOREIGN KEY (keyed_id) REFERENCES keyed (id)
    ) ENGINE = InnoDB;
";

/// The queries the tests run, in diesel's DSL on each backend's connection type.
trait KeyedOps {
    fn create_keyed_tables(&mut self) -> QueryResult<()>;
    fn find_keyed(&mut self, k: i32) -> QueryResult<Option<Keyed>>;
    /// `SELECT ... FOR UPDATE` on the servers; a plain SELECT on SQLite, which has no row locks.
    fn find_keyed_for_update(&mut self, k: i32) -> QueryResult<Option<Keyed>>;
    fn find_keyed_by_id(&mut self, id: i32) -> QueryResult<Option<Keyed>>;
    /// Inserts `(k, value)` and loads the row back (MariaDB has no RETURNING).
    fn insert_keyed(&mut self, k: i32, value: &str) -> QueryResult<Keyed>;
    fn insert_keyed_with_id(&mut self, id: i32, k: i32, value: &str) -> QueryResult<Keyed>;
    /// Leaves out the NOT NULL `value`: Django's "invalid params".
    fn insert_keyed_without_value(&mut self, k: i32) -> QueryResult<Keyed>;
    fn set_keyed_value(&mut self, id: i32, value: &str) -> QueryResult<Keyed>;
    fn set_keyed_note(&mut self, k: i32, note: &str) -> QueryResult<usize>;
    /// Every row, by `k`.
    fn all_keyed(&mut self) -> QueryResult<Vec<Keyed>>;
    fn find_note(&mut self, keyed_id: i32) -> QueryResult<Option<(i32, i32, String)>>;
    fn insert_note(&mut self, keyed_id: i32, body: &str) -> QueryResult<(i32, i32, String)>;
    /// The typed layer: `get_or_insert` of `(k, value)`.
    fn get_or_insert_keyed(&mut self, k: i32, value: &str) -> QueryResult<(Keyed, bool)>;
    /// The typed layer: `update_or_insert` of `(k, value)`.
    fn update_or_insert_keyed(&mut self, k: i32, value: &str) -> QueryResult<(Keyed, bool)>;
}

macro_rules! keyed_ops {
    ($conn:ty, $tables:expr, $($for_update:tt)*) => {
        impl KeyedOps for $conn {
            fn create_keyed_tables(&mut self) -> QueryResult<()> {
                self.batch_execute($tables)
            }

            fn find_keyed(&mut self, k: i32) -> QueryResult<Option<Keyed>> {
                keyed::table.filter(keyed::k.eq(k)).first(self).optional()
            }

            fn find_keyed_for_update(&mut self, k: i32) -> QueryResult<Option<Keyed>> {
                keyed::table.filter(keyed::k.eq(k)) $($for_update)* .first(self).optional()
            }

            fn find_keyed_by_id(&mut self, id: i32) -> QueryResult<Option<Keyed>> {
                keyed::table.find(id).first(self).optional()
            }

            fn insert_keyed(&mut self, k: i32, value: &str) -> QueryResult<Keyed> {
                diesel::insert_into(keyed::table)
                    .values((keyed::k.eq(k), keyed::value.eq(value)))
                    .execute(self)?;
                keyed::table.filter(keyed::k.eq(k)).first(self)
            }

            fn insert_keyed_with_id(&mut self, id: i32, k: i32, value: &str) -> QueryResult<Keyed> {
                diesel::insert_into(keyed::table)
                    .values((keyed::id.eq(id), keyed::k.eq(k), keyed::value.eq(value)))
                    .execute(self)?;
                keyed::table.find(id).first(self)
            }

            fn insert_keyed_without_value(&mut self, k: i32) -> QueryResult<Keyed> {
                diesel::insert_into(keyed::table)
                    .values(keyed::k.eq(k))
                    .execute(self)?;
                keyed::table.filter(keyed::k.eq(k)).first(self)
            }

            fn set_keyed_value(&mut self, id: i32, value: &str) -> QueryResult<Keyed> {
                diesel::update(keyed::table.find(id))
                    .set(keyed::value.eq(value))
                    .execute(self)?;
                keyed::table.find(id).first(self)
            }

            fn set_keyed_note(&mut self, k: i32, note: &str) -> QueryResult<usize> {
                diesel::update(keyed::table.filter(keyed::k.eq(k)))
                    .set(keyed::note.eq(note))
                    .execute(self)
            }

            fn all_keyed(&mut self) -> QueryResult<Vec<Keyed>> {
                keyed::table.order(keyed::k).load(self)
            }

            fn find_note(&mut self, keyed_id: i32) -> QueryResult<Option<(i32, i32, String)>> {
                keyed_notes::table
                    .filter(keyed_notes::keyed_id.eq(keyed_id))
                    .first(self)
                    .optional()
            }

            fn insert_note(&mut self, keyed_id: i32, body: &str) -> QueryResult<(i32, i32, String)> {
                diesel::insert_into(keyed_notes::table)
                    .values((keyed_notes::keyed_id.eq(keyed_id), keyed_notes::body.eq(body)))
                    .execute(self)?;
                keyed_notes::table
                    .filter(keyed_notes::keyed_id.eq(keyed_id))
                    .first(self)
            }

            fn get_or_insert_keyed(&mut self, k: i32, value: &str) -> QueryResult<(Keyed, bool)> {
                diesel_atomic::get_or_insert(
                    self,
                    keyed::table.filter(keyed::k.eq(k)),
                    diesel::insert_into(keyed::table)
                        .values((keyed::k.eq(k), keyed::value.eq(value))),
                )
            }

            fn update_or_insert_keyed(&mut self, k: i32, value: &str) -> QueryResult<(Keyed, bool)> {
                diesel_atomic::update_or_insert(
                    self,
                    keyed::table.filter(keyed::k.eq(k)) $($for_update)*,
                    diesel::insert_into(keyed::table)
                        .values((keyed::k.eq(k), keyed::value.eq(value))),
                    diesel::update(keyed::table.filter(keyed::k.eq(k)))
                        .set(keyed::value.eq(value)),
                )
            }
        }
    };
}

keyed_ops!(diesel::SqliteConnection, SQLITE_TABLES,);
#[cfg(feature = "postgres")]
keyed_ops!(diesel::PgConnection, POSTGRES_TABLES, .for_update());
#[cfg(feature = "mysql")]
keyed_ops!(diesel::MysqlConnection, MYSQL_TABLES, .for_update());

/// What the tests' closures return: `create`'s own failures are `Create`, so a test can tell
/// that the error `get_or_create` returned is the one `create` produced.
#[derive(Debug)]
enum GocError {
    Create(DieselError),
    Db(DieselError),
    Atomic(Error),
}

impl From<DieselError> for GocError {
    fn from(error: DieselError) -> Self {
        GocError::Db(error)
    }
}

impl From<Error> for GocError {
    fn from(error: Error) -> Self {
        GocError::Atomic(error)
    }
}

impl AsDieselError for GocError {
    fn as_diesel_error(&self) -> Option<&DieselError> {
        match self {
            GocError::Create(error) | GocError::Db(error) => Some(error),
            GocError::Atomic(error) => error.as_diesel_error(),
        }
    }
}

type Goc<T> = Result<T, GocError>;

/// A backend whose connections run the tests' queries.
trait Keyeds: Backend + KeyedOps {}
impl<C: Backend + KeyedOps> Keyeds for C {}

/// The test's databases, with the `keyed` tables on "default".
fn setup_keyed<C: Keyeds>() -> TestDb<C> {
    let db = setup::<C>();
    db.raw("default")
        .create_keyed_tables()
        .expect("create the keyed tables");
    db
}

/// `get`: the row with key `k`.
fn by_key<C: Keyeds>(k: i32) -> impl FnMut(&mut C) -> Goc<Option<Keyed>> {
    move |conn| Ok(conn.find_keyed(k)?)
}

/// `get_for_update`: the row with key `k`, locked.
fn by_key_for_update<C: Keyeds>(k: i32) -> impl FnMut(&mut C) -> Goc<Option<Keyed>> {
    move |conn| Ok(conn.find_keyed_for_update(k)?)
}

/// `create`: inserts `(k, value)`; its failure is `GocError::Create`.
fn insert<C: Keyeds>(k: i32, value: &str) -> impl FnOnce(&mut C) -> Goc<Keyed> + '_ {
    move |conn| conn.insert_keyed(k, value).map_err(GocError::Create)
}

/// `create` for a row that must exist already.
fn never_called<C>(conn: &mut C) -> Goc<Keyed> {
    let _ = conn;
    panic!("create ran although the row exists (G1)")
}

/// The committed rows, read on a fresh connection.
fn committed<C: Keyeds>(db: &TestDb<C>) -> Vec<Keyed> {
    db.raw("default").all_keyed().expect("read keyed")
}

/// The rows the default alias's ambient connection sees (inside its open transaction).
fn visible<C: Keyeds>() -> Vec<Keyed> {
    connection(|conn: &mut C| conn.all_keyed().map_err(Error::from)).expect("read keyed")
}

fn keys(rows: &[Keyed]) -> Vec<i32> {
    rows.iter().map(|row| row.k).collect()
}

#[track_caller]
fn assert_create_error(result: &Goc<(Keyed, bool)>, kind: DatabaseErrorKind) {
    match result {
        Err(GocError::Create(DieselError::DatabaseError(actual, _)))
            if std::mem::discriminant(actual) == std::mem::discriminant(&kind) => {}
        other => panic!("expected create's own {kind:?} error, got {other:?}"),
    }
}

/// `result` is `create`'s own database error, whatever its kind.
#[track_caller]
fn assert_create_failed(result: &Goc<(Keyed, bool)>) {
    assert!(
        matches!(
            result,
            Err(GocError::Create(DieselError::DatabaseError(..)))
        ),
        "expected create's own database error, got {result:?}"
    );
}

const EXPECTED_PANIC: &str = "create blew up";

// ---------------------------------------------------------------------------------------------
// Django's GetOrCreateTests and GetOrCreateTestsWithManualPKs (rows 1-8)
// ---------------------------------------------------------------------------------------------

// Django: GetOrCreateTests.test_get_or_create_method_with_get (and
// test_defaults_not_evaluated_unless_needed: G1)
fn existing_row_is_returned_and_create_never_runs<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let lennon = db.raw("default").insert_keyed(1, "John Lennon").unwrap();
    let mut conn = db.default.get().unwrap();
    let (row, created) = get_or_create(&mut *conn, by_key(1), never_called).unwrap();
    assert!(!created);
    assert_eq!(row, lennon);
    assert_eq!(committed(&db).len(), 1);
}

// Django: GetOrCreateTests.test_get_or_create_method_with_create
fn missing_row_is_created<C: Keyeds>() {
    let db = setup_keyed::<C>();
    db.raw("default").insert_keyed(1, "John Lennon").unwrap();
    let mut conn = db.default.get().unwrap();
    let (row, created) =
        get_or_create(&mut *conn, by_key(2), insert(2, "George Harrison")).unwrap();
    assert!(created);
    assert_eq!((row.k, row.value.as_str()), (2, "George Harrison"));
    assert_eq!(keys(&committed(&db)), [1, 2]);
}

// Django: GetOrCreateTests.test_get_or_create_redundant_instance
fn second_call_returns_the_row_the_first_created<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let mut conn = db.default.get().unwrap();
    let (first, created) = get_or_create(&mut *conn, by_key(7), insert(7, "George")).unwrap();
    assert!(created);
    let (second, created) = get_or_create(&mut *conn, by_key(7), never_called).unwrap();
    assert!(!created);
    assert_eq!(second, first);
    assert_eq!(committed(&db).len(), 1);
}

// Django: GetOrCreateTests.test_get_or_create_invalid_params (inside TestCase's transaction)
fn failed_create_returns_its_error_and_the_transaction_goes_on<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let test = TestTransaction::begin().unwrap();
    connection(|conn: &mut C| {
        let result = get_or_create(conn, by_key(1), |conn: &mut C| {
            conn.insert_keyed_without_value(1).map_err(GocError::Create)
        });
        assert_create_failed(&result);
        // The transaction is usable: the failure rolled back only its savepoint.
        conn.insert_keyed(2, "after").map(drop)?;
        Ok::<_, GocError>(())
    })
    .unwrap();
    assert_eq!(keys(&visible::<C>()), [2]);
    drop(test);
    assert!(committed(&db).is_empty());
}

// Django: GetOrCreateTestsWithManualPKs.test_create_with_duplicate_primary_key and
// test_get_or_create_raises_IntegrityError_plus_traceback
fn duplicate_primary_key_with_different_data_returns_the_original_error<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let original = db
        .raw("default")
        .insert_keyed_with_id(1, 1, "Original")
        .unwrap();
    let test = TestTransaction::begin().unwrap();
    let result = connection(|conn: &mut C| {
        get_or_create(
            conn,
            // Django's get(id=1, data="Different"): the row with id 1 holds other data.
            |conn: &mut C| {
                Ok(conn
                    .find_keyed_by_id(1)?
                    .filter(|row| row.value == "Different"))
            },
            |conn: &mut C| {
                conn.insert_keyed_with_id(1, 2, "Different")
                    .map_err(GocError::Create)
            },
        )
    });
    assert_create_error(&result, DatabaseErrorKind::UniqueViolation);
    assert_eq!(
        visible::<C>(),
        std::slice::from_ref(&original),
        "stored data unchanged"
    );
    drop(test);
    assert_eq!(committed(&db), [original]);
}

// Django: GetOrCreateTestsWithManualPKs.test_savepoint_rollback (#20463): a database error
// inside get_or_create leaves the enclosing transaction usable, on PostgreSQL too.
fn unique_violation_in_the_savepoint_leaves_the_transaction_usable<C: Keyeds>() {
    let db = setup_keyed::<C>();
    db.raw("default").insert_keyed(1, "foo").unwrap();
    let test = TestTransaction::begin().unwrap();
    connection(|conn: &mut C| {
        let result = get_or_create(
            conn,
            |conn: &mut C| Ok(conn.find_keyed_by_id(123_456_789)?),
            |conn: &mut C| {
                conn.insert_keyed_with_id(123_456_789, 1, "foo")
                    .map_err(GocError::Create)
            },
        );
        assert_create_error(&result, DatabaseErrorKind::UniqueViolation);
        conn.insert_keyed(2, "bar").map(drop)?;
        Ok::<_, GocError>(())
    })
    .unwrap();
    assert_eq!(keys(&visible::<C>()), [1, 2]);
    drop(test);
}

// Django: GetOrCreateTransactionTests.test_get_or_create_integrityerror (a real transaction,
// no TestCase around it)
fn foreign_key_to_a_missing_row_returns_the_integrity_error<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let mut conn = db.default.get().unwrap();
    let result = get_or_create(
        &mut *conn,
        |conn: &mut C| Ok(conn.find_note(999)?),
        |conn: &mut C| conn.insert_note(999, "orphan").map_err(GocError::Create),
    );
    match result {
        Err(GocError::Create(DieselError::DatabaseError(
            DatabaseErrorKind::ForeignKeyViolation,
            _,
        ))) => {}
        other => panic!("expected create's foreign key violation, got {other:?}"),
    }
    assert_not_in_transaction(&mut *conn);
}

// ---------------------------------------------------------------------------------------------
// What Rust adds: panics, on_commit, and every way of reaching the connection
// ---------------------------------------------------------------------------------------------

/// A failed `create` takes its on_commit callbacks with it (C2); a successful one's run after
/// the outermost commit.
fn on_commit_in_a_failed_create_is_dropped<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let notified = Notified::default();
    transaction::atomic(|| {
        connection(|conn: &mut C| {
            let queued = notified.clone();
            let failed = get_or_create(conn, by_key(1), |conn: &mut C| {
                transaction::on_commit(move || queued.push(1))?;
                conn.insert_keyed_without_value(1).map_err(GocError::Create)
            });
            assert_create_failed(&failed);
            let queued = notified.clone();
            let (_, created) = get_or_create(conn, by_key(2), |conn: &mut C| {
                transaction::on_commit(move || queued.push(2))?;
                insert(2, "kept")(conn)
            })?;
            assert!(created);
            Ok::<_, GocError>(())
        })?;
        assert!(notified.get().is_empty(), "nothing runs before the commit");
        Ok::<_, GocError>(())
    })
    .unwrap();
    assert_eq!(notified.get(), [2]);
    assert_eq!(keys(&committed(&db)), [2]);
}

/// A panic in `create` rolls its savepoint back and resumes unchanged; the enclosing block
/// goes on and commits.
fn panic_in_create_rolls_back_and_the_transaction_stays_usable<C: Keyeds>() {
    quiet_expected_panics(EXPECTED_PANIC);
    let db = setup_keyed::<C>();
    transaction::atomic(|| {
        connection(|conn: &mut C| {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                get_or_create(conn, by_key(1), |conn: &mut C| {
                    conn.insert_keyed(1, "half-done")
                        .map_err(GocError::Create)?;
                    panic::panic_any(EXPECTED_PANIC)
                })
            }));
            let payload = outcome.expect_err("the panic resumes");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&EXPECTED_PANIC));
            assert_eq!(conn.find_keyed(1)?, None, "the savepoint was rolled back");
            conn.insert_keyed(2, "after").map(drop)?;
            Ok::<_, GocError>(())
        })
    })
    .unwrap();
    assert_eq!(keys(&committed(&db)), [2]);
}

/// With no transaction open, `create` is a transaction of its own that commits at once.
fn outside_any_transaction_the_row_is_committed<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let mut conn = db.default.get().unwrap();
    let (row, created) = get_or_create(&mut *conn, by_key(1), insert(1, "one")).unwrap();
    assert!(created);
    assert_not_in_transaction(&mut *conn);
    assert_eq!(committed(&db), [row]);
}

/// Through `connection()` outside any block, `create` is a transaction of its own on the
/// alias: its on_commit callbacks run at its commit, and the alias is in no block afterwards.
fn through_connection_outside_a_block_create_commits_on_its_own<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let notified = Notified::default();
    let queued = notified.clone();
    let (row, created) = connection(|conn: &mut C| {
        get_or_create(conn, by_key(1), |conn: &mut C| {
            assert!(transaction::in_atomic_block(), "create runs in a block");
            transaction::on_commit(move || queued.push(1))?;
            insert(1, "one")(conn)
        })
    })
    .unwrap();
    assert!(created);
    assert_eq!(notified.get(), [1]);
    assert!(!transaction::in_atomic_block());
    assert_eq!(committed(&db), [row]);
}

/// Inside an ambient `#[atomic]` block the row belongs to the block's transaction.
fn inside_an_ambient_block_the_row_commits_or_rolls_back_with_it<C: Keyeds>() {
    #[atomic]
    fn create_then<C: Keyeds>(k: i32, fail: bool) -> Goc<Keyed> {
        let (row, created) =
            connection(|conn: &mut C| get_or_create(conn, by_key(k), insert(k, "x")))?;
        assert!(created);
        assert!(transaction::in_atomic_block());
        if fail {
            return Err(GocError::Db(DieselError::RollbackTransaction));
        }
        Ok(row)
    }

    let db = setup_keyed::<C>();
    let kept = create_then::<C>(1, false).unwrap();
    assert!(create_then::<C>(2, true).is_err());
    assert_eq!(committed(&db), [kept]);
}

/// In explicit mode, `create` nests as a savepoint of the function's block.
fn inside_explicit_mode_a_failed_create_leaves_the_block_usable<C: Keyeds>() {
    #[atomic]
    fn two_creates<C: Keyeds>(conn: &mut C) -> Goc<()> {
        let failed = get_or_create(conn, by_key(1), |conn: &mut C| {
            conn.insert_keyed_without_value(1).map_err(GocError::Create)
        });
        assert_create_failed(&failed);
        assert!(!transaction::get_rollback()?, "the block is not marked");
        let (_, created) = get_or_create(conn, by_key(2), insert(2, "two"))?;
        assert!(created);
        Ok(())
    }

    let db = setup_keyed::<C>();
    let mut conn = db.default.get().unwrap();
    two_creates(&mut *conn).unwrap();
    assert_not_in_transaction(&mut *conn);
    assert_eq!(keys(&committed(&db)), [2]);
}

/// Inside a `TestTransaction` everything, the created row included, rolls back at the end.
fn inside_a_test_transaction_the_row_rolls_back<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let test = TestTransaction::begin().unwrap();
    let (row, created) =
        connection(|conn: &mut C| get_or_create(conn, by_key(1), insert(1, "x"))).unwrap();
    assert!(created);
    assert_eq!(visible::<C>(), [row]);
    drop(test);
    assert!(committed(&db).is_empty());
}

/// On a connection of no alias inside diesel's own `conn.transaction`, a failed `create`
/// rolls back only its savepoint.
fn inside_diesels_own_transaction_a_failed_create_leaves_it_usable<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let mut pooled = db.default.get().unwrap();
    let conn: &mut C = &mut pooled;
    conn.transaction(|conn| {
        let failed = get_or_create(conn, by_key(1), |conn: &mut C| {
            conn.insert_keyed_without_value(1).map_err(GocError::Create)
        });
        assert_create_failed(&failed);
        get_or_create(conn, by_key(2), insert(2, "two")).map(drop)
    })
    .unwrap();
    assert_eq!(keys(&committed(&db)), [2]);
}

/// The race's loser: `create` fails on the unique constraint because another writer inserted
/// the row after `get` missed; the second `get` returns the winner's row.
fn lost_race_returns_the_winners_row<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let winner = db.raw("default").insert_keyed(1, "winner").unwrap();
    let mut calls = 0;
    // The first lookup "missed": it ran before the winner's commit.
    let stale_then_fresh = |conn: &mut C| -> Goc<Option<Keyed>> {
        calls += 1;
        Ok(match calls {
            1 => None,
            _ => conn.find_keyed(1)?,
        })
    };
    let mut conn = db.default.get().unwrap();
    let (row, created) = get_or_create(&mut *conn, stale_then_fresh, insert(1, "loser")).unwrap();
    assert!(!created);
    assert_eq!(row, winner);
    assert_eq!(committed(&db), [winner]);
}

// ---------------------------------------------------------------------------------------------
// Races under each isolation level (G3)
// ---------------------------------------------------------------------------------------------

/// How the transaction around `get_or_create` begins.
#[derive(Clone, Copy, Debug)]
enum Snapshot {
    /// The backend's default: READ COMMITTED on PostgreSQL, REPEATABLE READ on MariaDB,
    /// a deferred transaction on SQLite.
    Default,
    /// `Atomic::isolation(level)` on the servers (SQLite: its default).
    Level(Isolation),
}

/// Runs `get_or_create(k = 1)` in an outermost block begun as `snapshot`. With `winner`,
/// another connection inserts and commits the row right after the first lookup missed, on the
/// first attempt only. Returns what the block returned and how many attempts it took.
fn race_after_the_first_lookup<C: Keyeds>(
    db: &TestDb<C>,
    snapshot: Snapshot,
    retries: Option<u32>,
    winner: bool,
    create: fn(&mut C) -> Goc<Keyed>,
) -> (Goc<(Keyed, bool)>, u32) {
    let mut block = Atomic::new().durable(true);
    match snapshot {
        // SQLite accepts SERIALIZABLE only (all its transactions are).
        Snapshot::Level(level) if C::KIND != Kind::Sqlite || level == Isolation::Serializable => {
            block = block.isolation(level);
        }
        _ => {}
    }
    let mut attempts = 0;
    let attempt = || {
        attempts += 1;
        get_or_create_while_a_winner_commits(&db.default, winner && attempts == 1, create)
    };
    let result = match retries {
        Some(retries) => block
            .retry(RetryPolicy::new(retries).backoff(Duration::ZERO, Duration::ZERO))
            .run(attempt),
        None => block.run(attempt),
    };
    (result, attempts)
}

/// `get_or_create(k = 1)` on the default alias's connection. With `winner`, a connection of
/// `winner_pool` inserts and commits the row right after the first lookup missed.
fn get_or_create_while_a_winner_commits<C: Keyeds>(
    winner_pool: &Pooled<C>,
    winner: bool,
    create: fn(&mut C) -> Goc<Keyed>,
) -> Goc<(Keyed, bool)> {
    connection(|conn: &mut C| {
        let mut lookups = 0;
        let lookup = |conn: &mut C| -> Goc<Option<Keyed>> {
            lookups += 1;
            let found = conn.find_keyed(1)?;
            if winner && lookups == 1 {
                let mut winner = winner_pool.get().expect("a second connection");
                winner.insert_keyed(1, "winner")?;
            }
            Ok(found)
        };
        get_or_create(conn, lookup, create)
    })
}

fn insert_loser<C: Keyeds>(conn: &mut C) -> Goc<Keyed> {
    insert(1, "loser")(conn)
}

/// Inside REPEATABLE READ (PostgreSQL, MariaDB) no statement sees the winner's row; the
/// transaction is marked and a retrying block reruns it, whose first lookup finds the row.
/// SQLite's deferred transaction fails the insert with "database is locked" (the snapshot is
/// stale), which the retrying block reruns too.
fn race_hidden_by_a_repeatable_read_snapshot_is_won_by_a_rerun<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::RepeatableRead),
        Some(3),
        true,
        insert_loser::<C>,
    );
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    assert_eq!(attempts, 2, "one rerun with a new snapshot");
    assert_eq!(committed(&db), [row]);
}

/// At each backend's default: PostgreSQL (READ COMMITTED) finds the winner's row in the same
/// attempt; MariaDB (REPEATABLE READ, read from `@@tx_isolation`) and SQLite need the rerun.
fn race_at_the_default_isolation<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let (result, attempts) =
        race_after_the_first_lookup(&db, Snapshot::Default, Some(3), true, insert_loser::<C>);
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    let expected = match C::KIND {
        Kind::Postgres => 1,
        Kind::Mysql | Kind::Sqlite => 2,
    };
    assert_eq!(attempts, expected);
}

/// The same through the attribute: `#[atomic(durable = true, retry = n)]` reruns the function
/// after a race its snapshot hid.
fn race_at_the_default_isolation_is_won_by_the_retry_attribute<C: Keyeds>() {
    #[atomic(durable = true, retry = 3)]
    fn tag<C: Keyeds>(winner_pool: &Pooled<C>, attempts: &Cell<u32>) -> Goc<(Keyed, bool)> {
        attempts.set(attempts.get() + 1);
        get_or_create_while_a_winner_commits(winner_pool, attempts.get() == 1, insert_loser::<C>)
    }

    let db = setup_keyed::<C>();
    let attempts = Cell::new(0);
    let (row, created) = tag(&db.default, &attempts).unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    let expected = match C::KIND {
        Kind::Postgres => 1,
        Kind::Mysql | Kind::Sqlite => 2,
    };
    assert_eq!(attempts.get(), expected);
}

/// Under READ COMMITTED (PostgreSQL, MariaDB) the second lookup sees the winner's row: no
/// rerun. SQLite has no READ COMMITTED (its race is the deferred one above).
fn race_under_read_committed_is_won_without_a_rerun<C: Keyeds>() {
    if C::KIND == Kind::Sqlite {
        return;
    }
    let db = setup_keyed::<C>();
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::ReadCommitted),
        Some(3),
        true,
        insert_loser::<C>,
    );
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    assert_eq!(attempts, 1);
}

/// Without a retrying block the hidden race is `create`'s own error, as in Django: the unique
/// violation on the servers, "database is locked" on SQLite.
fn hidden_race_without_retry_returns_creates_error<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::RepeatableRead),
        None,
        true,
        insert_loser::<C>,
    );
    assert_eq!(attempts, 1);
    match C::KIND {
        Kind::Sqlite => match &result {
            Err(GocError::Create(DieselError::DatabaseError(_, info)))
                if info.message() == "database is locked" => {}
            other => panic!("expected create's SQLITE_BUSY, got {other:?}"),
        },
        Kind::Postgres | Kind::Mysql => {
            assert_create_error(&result, DatabaseErrorKind::UniqueViolation)
        }
    }
    assert_eq!(committed(&db)[0].value, "winner");
}

/// A genuine failure (no race) under READ COMMITTED is not taken for a hidden race: the
/// retrying block runs once. On MariaDB this needs the runtime's record of the level, since
/// `@@tx_isolation` still says REPEATABLE-READ inside such a transaction.
fn genuine_failure_under_read_committed_is_not_rerun<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::ReadCommitted),
        Some(3),
        false,
        |conn: &mut C| conn.insert_keyed_without_value(1).map_err(GocError::Create),
    );
    assert_create_failed(&result);
    assert_eq!(attempts, 1);
}

/// Under REPEATABLE READ a genuine failure (a NOT NULL violation) whose second lookup misses
/// is not a unique violation, so it is not taken for a hidden race: the retrying block runs
/// once and returns `create`'s error.
fn genuine_failure_under_repeatable_read_is_not_rerun<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let level = match C::KIND {
        Kind::Sqlite => Isolation::Serializable,
        Kind::Postgres | Kind::Mysql => Isolation::RepeatableRead,
    };
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(level),
        Some(2),
        false,
        |conn: &mut C| conn.insert_keyed_without_value(1).map_err(GocError::Create),
    );
    assert_create_failed(&result);
    assert_eq!(attempts, 1);
}

/// A lost race the snapshot hides, swallowed by the block, does not make a later unrelated
/// error look like one: the retrying block returns that error after one attempt.
fn swallowed_hidden_conflict_does_not_rerun_a_later_unrelated_error<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let mut attempts = 0;
    let result: Goc<()> = Atomic::new()
        .durable(true)
        .isolation(match C::KIND {
            Kind::Sqlite => Isolation::Serializable,
            Kind::Postgres | Kind::Mysql => Isolation::RepeatableRead,
        })
        .retry(RetryPolicy::new(3).backoff(Duration::ZERO, Duration::ZERO))
        .run(|| {
            attempts += 1;
            let lost =
                get_or_create_while_a_winner_commits(&db.default, attempts == 1, insert_loser::<C>);
            assert!(lost.is_err(), "the race is lost: {lost:?}");
            // The application goes on and fails for a reason of its own.
            Err(GocError::Db(DieselError::NotFound))
        });
    assert!(
        matches!(result, Err(GocError::Db(DieselError::NotFound))),
        "{result:?}"
    );
    assert_eq!(attempts, 1);
}

// ---------------------------------------------------------------------------------------------
// update_or_create: Django's UpdateOrCreateTests (rows 12-19)
// ---------------------------------------------------------------------------------------------

fn set_value<C: Keyeds>(value: &str) -> impl FnOnce(&mut C, Keyed) -> Goc<Keyed> + '_ {
    move |conn, row| Ok(conn.set_keyed_value(row.id, value)?)
}

// Django: UpdateOrCreateTests.test_create_twice
fn update_or_create_creates_then_updates<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let mut conn = db.default.get().unwrap();
    let (first, created) = update_or_create(
        &mut *conn,
        by_key_for_update(1),
        insert(1, "created"),
        set_value("updated"),
    )
    .unwrap();
    assert!(created);
    assert_eq!(first.value, "created");
    let (second, created) = update_or_create(
        &mut *conn,
        by_key_for_update(1),
        never_called,
        set_value("updated"),
    )
    .unwrap();
    assert!(!created);
    assert_eq!((second.id, second.value.as_str()), (first.id, "updated"));
    assert_not_in_transaction(&mut *conn);
    assert_eq!(committed(&db), [second]);
}

// Django: UpdateOrCreateTests.test_integrity (inside TestCase's transaction)
fn update_or_create_without_a_required_field_returns_the_error<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let test = TestTransaction::begin().unwrap();
    connection(|conn: &mut C| {
        let result = update_or_create(
            conn,
            by_key_for_update(1),
            |conn: &mut C| conn.insert_keyed_without_value(1).map_err(GocError::Create),
            set_value("never"),
        );
        assert_create_failed(&result);
        conn.insert_keyed(2, "after").map(drop)?;
        Ok::<_, GocError>(())
    })
    .unwrap();
    drop(test);
    assert!(committed(&db).is_empty());
}

// Django: UpdateOrCreateTests.test_manual_primary_key_test and
// UpdateOrCreateTestsWithManualPKs.test_create_with_duplicate_primary_key
fn update_or_create_duplicate_primary_key_returns_the_original_error<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let original = db
        .raw("default")
        .insert_keyed_with_id(1, 1, "Original")
        .unwrap();
    let mut conn = db.default.get().unwrap();
    let result = update_or_create(
        &mut *conn,
        |conn: &mut C| Ok(conn.find_keyed_for_update(2)?.filter(|row| row.id == 1)),
        |conn: &mut C| {
            conn.insert_keyed_with_id(1, 2, "Different")
                .map_err(GocError::Create)
        },
        set_value("Different"),
    );
    assert_create_error(&result, DatabaseErrorKind::UniqueViolation);
    assert_not_in_transaction(&mut *conn);
    assert_eq!(committed(&db), [original]);
}

// Django: UpdateOrCreateTransactionTests.test_updates_in_transaction. The lookup locks the row
// (SQLite: update_or_create's transaction begins IMMEDIATE), so a concurrent UPDATE waits for
// update_or_create's transaction and runs after it: both writes survive.
fn update_or_create_makes_a_concurrent_update_wait<C: Keyeds>() {
    let db = setup_keyed::<C>();
    db.raw("default").insert_keyed(1, "John").unwrap();
    let pool = &db.default;
    let hold = Duration::from_millis(500);
    let (locked_tx, locked_rx) = mpsc::channel();
    let waited = std::thread::scope(|scope| {
        let updater = scope.spawn(move || {
            let mut conn = pool.get().unwrap();
            update_or_create(
                &mut *conn,
                by_key_for_update(1),
                never_called,
                |conn: &mut C, row: Keyed| {
                    locked_tx.send(()).unwrap();
                    std::thread::sleep(hold);
                    Ok(conn.set_keyed_value(row.id, "Lennon")?)
                },
            )
        });
        locked_rx.recv().unwrap();
        let started = Instant::now();
        let mut other = pool.get().unwrap();
        let updated = other.set_keyed_note(1, "NotLennon").unwrap();
        let waited = started.elapsed();
        assert_eq!(updated, 1);
        let (row, created) = updater.join().unwrap().unwrap();
        assert!(!created);
        assert_eq!(row.value, "Lennon");
        waited
    });
    assert!(
        waited >= hold - Duration::from_millis(100),
        "the concurrent UPDATE waited only {waited:?}"
    );
    let rows = committed(&db);
    assert_eq!(
        (rows[0].value.as_str(), rows[0].note.as_str()),
        ("Lennon", "NotLennon")
    );
}

/// Django: UpdateOrCreateTransactionTests.test_creation_in_transaction, made deterministic: the
/// first locked lookup "missed" because the winner had not committed yet; `create` then fails
/// on the unique constraint, the second locked lookup finds the winner's row, and `update` runs
/// on it.
fn update_or_create_that_loses_the_creation_race_updates_the_winners_row<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let winner = db.raw("default").insert_keyed(1, "winner").unwrap();
    let mut lookups = 0;
    let stale_then_fresh = |conn: &mut C| -> Goc<Option<Keyed>> {
        lookups += 1;
        Ok(match lookups {
            1 => None,
            _ => conn.find_keyed_for_update(1)?,
        })
    };
    let mut conn = db.default.get().unwrap();
    let (row, created) = update_or_create(
        &mut *conn,
        stale_then_fresh,
        insert(1, "loser"),
        set_value("updated"),
    )
    .unwrap();
    assert!(!created);
    assert_eq!((row.id, row.value.as_str()), (winner.id, "updated"));
    assert_eq!(committed(&db), [row]);
}

/// `update_or_create`'s `Err` from `update` rolls the whole block back, the created-or-found
/// row's changes included.
fn update_or_create_rolls_back_when_update_fails<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let original = db.raw("default").insert_keyed(1, "original").unwrap();
    let mut conn = db.default.get().unwrap();
    let result = update_or_create(
        &mut *conn,
        by_key_for_update(1),
        never_called,
        |conn: &mut C, row: Keyed| {
            conn.set_keyed_value(row.id, "changed")?;
            Err::<Keyed, _>(GocError::Db(DieselError::RollbackTransaction))
        },
    );
    assert!(matches!(
        result,
        Err(GocError::Db(DieselError::RollbackTransaction))
    ));
    assert_not_in_transaction(&mut *conn);
    assert_eq!(committed(&db), [original]);
}

/// The typed layer: diesel statements instead of closures.
fn typed_layer_gets_inserts_and_updates<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let mut conn = db.default.get().unwrap();
    let (created, was_created) = conn.get_or_insert_keyed(1, "one").unwrap();
    assert!(was_created);
    let (found, was_created) = conn.get_or_insert_keyed(1, "ignored").unwrap();
    assert!(!was_created);
    assert_eq!(found, created);
    let (updated, was_created) = conn.update_or_insert_keyed(1, "uno").unwrap();
    assert!(!was_created);
    assert_eq!((updated.id, updated.value.as_str()), (created.id, "uno"));
    let (other, was_created) = conn.update_or_insert_keyed(2, "two").unwrap();
    assert!(was_created);
    assert_eq!(committed(&db), [updated, other]);
}

// ---------------------------------------------------------------------------------------------
// Stress
// ---------------------------------------------------------------------------------------------

const STRESS_KEYS: i32 = 100;

/// Threads × calls per thread: 16 × 200, or 64 × 1,000 with `STRESS_FULL=1`.
fn stress_size() -> (usize, usize) {
    match std::env::var("STRESS_FULL").as_deref() {
        Ok("1") => (64, 1_000),
        _ => (16, 200),
    }
}

/// How each stress call's block is run.
#[derive(Clone, Copy, Debug)]
enum StressBlock {
    /// A durable block without retry.
    #[cfg(feature = "postgres")]
    Plain,
    /// A durable block rerun after transient failures and hidden races.
    Retrying(Option<Isolation>),
}

struct StressOutcome {
    calls: usize,
    attempts: usize,
    errors: Vec<String>,
}

/// Every thread makes its calls, each `get_or_create` of a pseudo-random key in its own block,
/// on a registry whose pool has a connection per thread. Checks: exactly one row per key,
/// every call got its own key's row (the one in the table), no errors.
fn stress<C: Keyeds>(name: &str, block: StressBlock) -> StressOutcome {
    let db = setup_keyed::<C>();
    let (threads, calls_per_thread) = stress_size();
    let mut pool = Pool::builder()
        .max_size(u32::try_from(threads).unwrap())
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(60));
    if let Some(customizer) = C::customizer() {
        pool = pool.connection_customizer(customizer);
    }
    let pool = pool
        .build(ConnectionManager::<C>::new(db.url("default")))
        .expect("stress pool");
    let databases = Databases::new().add("default", Database::new(pool));
    let attempts = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let returned = Mutex::new(Vec::with_capacity(threads * calls_per_thread));
    let go = AtomicBool::new(false);

    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (databases, attempts, errors, returned, go) =
                (&databases, &attempts, &errors, &returned, &go);
            scope.spawn(move || {
                let _registry = TestDb::<C>::enter(databases);
                let mut seen = Vec::with_capacity(calls_per_thread);
                let mut random = XorShift::new(thread as u64);
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                for _ in 0..calls_per_thread {
                    let k = i32::try_from(random.next_u64() % STRESS_KEYS as u64).unwrap();
                    let value = format!("v{k}");
                    let call = || {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        connection(|conn: &mut C| get_or_create(conn, by_key(k), insert(k, &value)))
                    };
                    let result =
                        match block {
                            #[cfg(feature = "postgres")]
                            StressBlock::Plain => Atomic::new().durable(true).run(call),
                            StressBlock::Retrying(isolation) => {
                                let mut atomic = Atomic::new();
                                if let Some(level) = isolation {
                                    atomic = atomic.isolation(level);
                                }
                                atomic
                                    .retry(RetryPolicy::new(100).backoff(
                                        Duration::from_millis(1),
                                        Duration::from_millis(50),
                                    ))
                                    .run(call)
                            }
                        };
                    match result {
                        Ok((row, _)) => seen.push((k, row)),
                        Err(error) => errors.lock().unwrap().push(format!("k={k}: {error:?}")),
                    }
                }
                returned.lock().unwrap().extend(seen);
            });
        }
        go.store(true, Ordering::Release);
    });
    let elapsed = started.elapsed();

    let calls = threads * calls_per_thread;
    let outcome = StressOutcome {
        calls,
        attempts: attempts.into_inner(),
        errors: errors.into_inner().unwrap(),
    };
    println!(
        "stress {kind:?} {name}: {threads} threads x {calls_per_thread} calls = {calls} calls in \
         {secs:.2} s: {rate:.0} calls/s, {retries} retries, {errors} errors",
        kind = C::KIND,
        secs = elapsed.as_secs_f64(),
        rate = calls as f64 / elapsed.as_secs_f64(),
        retries = outcome.attempts - calls,
        errors = outcome.errors.len(),
    );

    assert!(
        outcome.errors.is_empty(),
        "{} errors, the first: {:?}",
        outcome.errors.len(),
        &outcome.errors[..outcome.errors.len().min(5)]
    );
    let rows = committed(&db);
    assert_eq!(
        keys(&rows),
        (0..STRESS_KEYS).collect::<Vec<_>>(),
        "exactly one row per key"
    );
    let returned = returned.into_inner().unwrap();
    assert_eq!(returned.len(), calls);
    for (k, row) in &returned {
        assert_eq!(row.k, *k, "a call returned another key's row");
        assert_eq!(
            row,
            &rows[usize::try_from(*k).unwrap()],
            "a call returned a row that is not the stored one"
        );
    }
    outcome
}

/// xorshift64: spreads each thread's keys differently, reproducibly.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(0x9E37_79B9_7F4A_7C15 ^ (seed.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9)))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Each call in a retrying block at the backend's default isolation. PostgreSQL (READ
/// COMMITTED) never needs a retry; MariaDB (REPEATABLE READ) and SQLite (deferred) do.
fn stress_in_retrying_blocks<C: Keyeds>() {
    let outcome = stress::<C>("retrying blocks", StressBlock::Retrying(None));
    if C::KIND == Kind::Postgres {
        assert_eq!(
            outcome.attempts, outcome.calls,
            "READ COMMITTED sees the winner's row: no call needs a retry"
        );
    }
}

/// Each call in a plain block (PostgreSQL's READ COMMITTED): no retry, no error.
#[cfg(feature = "postgres")]
fn stress_in_plain_blocks<C: Keyeds>() {
    stress::<C>("plain blocks", StressBlock::Plain);
}

/// Each call in a retrying REPEATABLE READ block: the races the snapshot hides are rerun.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn stress_in_repeatable_read_blocks<C: Keyeds>() {
    stress::<C>(
        "repeatable read blocks",
        StressBlock::Retrying(Some(Isolation::RepeatableRead)),
    );
}

// ---------------------------------------------------------------------------------------------
// One server only
// ---------------------------------------------------------------------------------------------

/// PostgreSQL SERIALIZABLE: the loser's INSERT fails on the unique constraint (PostgreSQL 15
/// reports 23505 here; other interleavings get a serialization failure, 40001) and the second
/// lookup misses; either way the retrying block reruns the transaction.
#[cfg(feature = "postgres")]
fn race_under_serializable_is_won_by_a_rerun<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::Serializable),
        Some(3),
        true,
        insert_loser::<C>,
    );
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    assert_eq!(attempts, 2);
}

/// Django: UpdateOrCreateTransactionTests.test_creation_in_transaction, with real
/// concurrency (PostgreSQL: under MariaDB's REPEATABLE READ the locked lookup of a missing row
/// locks the gap, so the winner's INSERT would wait for the loser instead). The loser's lookup
/// misses; the winner inserts and commits; the loser's `create` fails on the constraint, its
/// locked second lookup finds the winner's row and `update` runs on it while holding the lock,
/// so a concurrent UPDATE waits and runs after it.
#[cfg(feature = "postgres")]
fn update_or_create_loses_a_real_creation_race<C: Keyeds>() {
    let db = setup_keyed::<C>();
    let pool = &db.default;
    let hold = Duration::from_millis(500);
    let (missed_tx, missed_rx) = mpsc::channel();
    let (inserted_tx, inserted_rx) = mpsc::channel::<()>();
    let (locked_tx, locked_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let loser = scope.spawn(move || {
            let mut conn = pool.get().unwrap();
            update_or_create(
                &mut *conn,
                by_key_for_update(1),
                |conn: &mut C| {
                    missed_tx.send(()).unwrap();
                    inserted_rx.recv().unwrap();
                    insert(1, "Doe")(conn)
                },
                |conn: &mut C, row: Keyed| {
                    locked_tx.send(()).unwrap();
                    std::thread::sleep(hold);
                    Ok(conn.set_keyed_value(row.id, "updated by the loser")?)
                },
            )
        });
        missed_rx.recv().unwrap();
        let mut winner = pool.get().unwrap();
        winner.insert_keyed(1, "John").unwrap();
        inserted_tx.send(()).unwrap();
        locked_rx.recv().unwrap();
        let started = Instant::now();
        winner.set_keyed_note(1, "NotLennon").unwrap();
        let waited = started.elapsed();
        let (row, created) = loser.join().unwrap().unwrap();
        assert!(!created);
        assert_eq!(row.value, "updated by the loser");
        assert!(
            waited >= hold - Duration::from_millis(100),
            "waited {waited:?}"
        );
    });
    let rows = committed(&db);
    assert_eq!(
        (rows[0].value.as_str(), rows[0].note.as_str()),
        ("updated by the loser", "NotLennon")
    );
}

// ---------------------------------------------------------------------------------------------

backend_tests!(
    existing_row_is_returned_and_create_never_runs,
    missing_row_is_created,
    second_call_returns_the_row_the_first_created,
    failed_create_returns_its_error_and_the_transaction_goes_on,
    duplicate_primary_key_with_different_data_returns_the_original_error,
    unique_violation_in_the_savepoint_leaves_the_transaction_usable,
    foreign_key_to_a_missing_row_returns_the_integrity_error,
    on_commit_in_a_failed_create_is_dropped,
    panic_in_create_rolls_back_and_the_transaction_stays_usable,
    outside_any_transaction_the_row_is_committed,
    through_connection_outside_a_block_create_commits_on_its_own,
    inside_an_ambient_block_the_row_commits_or_rolls_back_with_it,
    inside_explicit_mode_a_failed_create_leaves_the_block_usable,
    inside_a_test_transaction_the_row_rolls_back,
    inside_diesels_own_transaction_a_failed_create_leaves_it_usable,
    lost_race_returns_the_winners_row,
    race_hidden_by_a_repeatable_read_snapshot_is_won_by_a_rerun,
    race_at_the_default_isolation,
    race_at_the_default_isolation_is_won_by_the_retry_attribute,
    race_under_read_committed_is_won_without_a_rerun,
    hidden_race_without_retry_returns_creates_error,
    genuine_failure_under_read_committed_is_not_rerun,
    genuine_failure_under_repeatable_read_is_not_rerun,
    swallowed_hidden_conflict_does_not_rerun_a_later_unrelated_error,
    update_or_create_creates_then_updates,
    update_or_create_without_a_required_field_returns_the_error,
    update_or_create_duplicate_primary_key_returns_the_original_error,
    update_or_create_makes_a_concurrent_update_wait,
    update_or_create_that_loses_the_creation_race_updates_the_winners_row,
    update_or_create_rolls_back_when_update_fails,
    typed_layer_gets_inserts_and_updates,
    stress_in_retrying_blocks,
);

/// Tests for one backend, in a module of their own (`backend_tests!` owns `postgres`/`mysql`).
macro_rules! only_on {
    ($module:ident, $feature:literal, $conn:ty: $($test:ident),* $(,)?) => {
        #[cfg(feature = $feature)]
        mod $module {
            $(#[test]
            fn $test() {
                crate::common::run::<$conn>(super::$test::<$conn>);
            })*
        }
    };
}

only_on!(postgres_only, "postgres", diesel::PgConnection:
    stress_in_plain_blocks,
    stress_in_repeatable_read_blocks,
    race_under_serializable_is_won_by_a_rerun,
    update_or_create_loses_a_real_creation_race,
);

only_on!(mysql_only, "mysql", diesel::MysqlConnection:
    stress_in_repeatable_read_blocks,
);
