//! `aio::get_or_create` and `aio::update_or_create` (SEMANTICS G1–G3) on the async runtime:
//! tests/get_or_create.rs test by test (same names, same assertions), on SQLite, PostgreSQL
//! and MariaDB (deadpool; the connection is the caller's, so the pool plays no part). Every
//! call is explicit: `get` and `create` are async closures on the caller's connection, which
//! is a connection the test checked out of the pool, the ambient block's (through
//! `aio::connection`), or an explicit-mode `#[atomic] async fn`'s.
//!
//! Plus real races (`two_tasks_racing_*`): two tokio tasks, each on a connection of its own,
//! both miss the lookup (a barrier), then both create; one gets `created = true`, the other
//! `created = false` with the winner's row, and the table holds one row.
//!
//! Differences from the sync file: the async builder `Atomic` has no `retry`, so the
//! retrying blocks are `#[atomic(durable = true, retry = n)] async fn`s with the default
//! backoff (isolation levels in the attribute). The async `snapshot_hides_commits` uses the
//! block's begun isolation or the backend default (PostgreSQL READ COMMITTED, MariaDB
//! REPEATABLE READ) without asking the server; every race here begins its level in the block
//! or relies on the server default, so the expectations are the sync ones.
//!
//! Not ported: the typed layer (`get_or_insert` / `update_or_insert`: the async API has no
//! such functions), the stress tests (the sync ones run 16 threads × 200 calls; the races
//! here cover the mechanism), and the Django tests the sync file leaves out, for its reasons.
#![cfg(feature = "async")]

mod common_aio;

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common_aio::*;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;
use diesel_atomic::aio::testing::TestTransaction;
use diesel_atomic::aio::transaction::{self, Atomic};
use diesel_atomic::aio::{self, get_or_create, update_or_create};
use diesel_atomic::{AsDieselError, Error, Isolation, atomic};
use tokio::sync::{Barrier, Notify};

aio_tests!(deadpool:
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
    inside_run_on_a_failed_create_leaves_the_block_usable,
    inside_a_test_transaction_the_row_rolls_back,
    inside_diesels_own_transaction_a_failed_create_leaves_it_usable,
    lost_race_returns_the_winners_row,
    race_hidden_by_a_repeatable_read_snapshot_is_won_by_a_rerun,
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
    two_tasks_racing_on_one_key_outside_any_block_one_creates_one_gets,
    two_tasks_racing_on_one_key_in_retrying_blocks_one_creates_one_gets,
);

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

#[cfg(feature = "async-postgres")]
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

#[cfg(feature = "async-mysql")]
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
trait KeyedOps: Sized {
    const TABLES: &'static str;
    fn find_keyed(&mut self, k: i32) -> impl Future<Output = QueryResult<Option<Keyed>>> + Send;
    /// `SELECT ... FOR UPDATE` on the servers; a plain SELECT on SQLite, which has no row locks.
    fn find_keyed_for_update(
        &mut self,
        k: i32,
    ) -> impl Future<Output = QueryResult<Option<Keyed>>> + Send;
    fn find_keyed_by_id(
        &mut self,
        id: i32,
    ) -> impl Future<Output = QueryResult<Option<Keyed>>> + Send;
    /// Inserts `(k, value)` and loads the row back (MariaDB has no RETURNING).
    fn insert_keyed(
        &mut self,
        k: i32,
        value: &str,
    ) -> impl Future<Output = QueryResult<Keyed>> + Send;
    fn insert_keyed_with_id(
        &mut self,
        id: i32,
        k: i32,
        value: &str,
    ) -> impl Future<Output = QueryResult<Keyed>> + Send;
    /// Leaves out the NOT NULL `value`: Django's "invalid params".
    fn insert_keyed_without_value(
        &mut self,
        k: i32,
    ) -> impl Future<Output = QueryResult<Keyed>> + Send;
    fn set_keyed_value(
        &mut self,
        id: i32,
        value: &str,
    ) -> impl Future<Output = QueryResult<Keyed>> + Send;
    fn set_keyed_note(
        &mut self,
        k: i32,
        note: &str,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
    /// Every row, by `k`.
    fn all_keyed(&mut self) -> impl Future<Output = QueryResult<Vec<Keyed>>> + Send;
    fn find_note(
        &mut self,
        keyed_id: i32,
    ) -> impl Future<Output = QueryResult<Option<(i32, i32, String)>>> + Send;
    fn insert_note(
        &mut self,
        keyed_id: i32,
        body: &str,
    ) -> impl Future<Output = QueryResult<(i32, i32, String)>> + Send;
}

macro_rules! keyed_ops {
    ($conn:ty, $tables:expr, $($for_update:tt)*) => {
        impl KeyedOps for $conn {
            const TABLES: &'static str = $tables;

            async fn find_keyed(&mut self, k: i32) -> QueryResult<Option<Keyed>> {
                keyed::table.filter(keyed::k.eq(k)).first(self).await.optional()
            }

            async fn find_keyed_for_update(&mut self, k: i32) -> QueryResult<Option<Keyed>> {
                keyed::table.filter(keyed::k.eq(k)) $($for_update)* .first(self).await.optional()
            }

            async fn find_keyed_by_id(&mut self, id: i32) -> QueryResult<Option<Keyed>> {
                keyed::table.find(id).first(self).await.optional()
            }

            async fn insert_keyed(&mut self, k: i32, value: &str) -> QueryResult<Keyed> {
                diesel::insert_into(keyed::table)
                    .values((keyed::k.eq(k), keyed::value.eq(value)))
                    .execute(self)
                    .await?;
                keyed::table.filter(keyed::k.eq(k)).first(self).await
            }

            async fn insert_keyed_with_id(
                &mut self,
                id: i32,
                k: i32,
                value: &str,
            ) -> QueryResult<Keyed> {
                diesel::insert_into(keyed::table)
                    .values((keyed::id.eq(id), keyed::k.eq(k), keyed::value.eq(value)))
                    .execute(self)
                    .await?;
                keyed::table.find(id).first(self).await
            }

            async fn insert_keyed_without_value(&mut self, k: i32) -> QueryResult<Keyed> {
                diesel::insert_into(keyed::table)
                    .values(keyed::k.eq(k))
                    .execute(self)
                    .await?;
                keyed::table.filter(keyed::k.eq(k)).first(self).await
            }

            async fn set_keyed_value(&mut self, id: i32, value: &str) -> QueryResult<Keyed> {
                diesel::update(keyed::table.find(id))
                    .set(keyed::value.eq(value))
                    .execute(self)
                    .await?;
                keyed::table.find(id).first(self).await
            }

            async fn set_keyed_note(&mut self, k: i32, note: &str) -> QueryResult<usize> {
                diesel::update(keyed::table.filter(keyed::k.eq(k)))
                    .set(keyed::note.eq(note))
                    .execute(self)
                    .await
            }

            async fn all_keyed(&mut self) -> QueryResult<Vec<Keyed>> {
                keyed::table.order(keyed::k).load(self).await
            }

            async fn find_note(
                &mut self,
                keyed_id: i32,
            ) -> QueryResult<Option<(i32, i32, String)>> {
                keyed_notes::table
                    .filter(keyed_notes::keyed_id.eq(keyed_id))
                    .first(self)
                    .await
                    .optional()
            }

            async fn insert_note(
                &mut self,
                keyed_id: i32,
                body: &str,
            ) -> QueryResult<(i32, i32, String)> {
                diesel::insert_into(keyed_notes::table)
                    .values((keyed_notes::keyed_id.eq(keyed_id), keyed_notes::body.eq(body)))
                    .execute(self)
                    .await?;
                keyed_notes::table
                    .filter(keyed_notes::keyed_id.eq(keyed_id))
                    .first(self)
                    .await
            }
        }
    };
}

keyed_ops!(Sqlite, SQLITE_TABLES,);
#[cfg(feature = "async-postgres")]
keyed_ops!(diesel_async::AsyncPgConnection, POSTGRES_TABLES, .for_update());
#[cfg(feature = "async-mysql")]
keyed_ops!(diesel_async::AsyncMysqlConnection, MYSQL_TABLES, .for_update());

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

const POOL: usize = 2;

/// The test's database, with the `keyed` tables.
async fn setup_keyed<C: Keyeds>(pool: PoolKind) -> TestDb<C> {
    let db = TestDb::<C>::new(pool, POOL).await;
    let mut raw = db.raw().await;
    for statement in C::TABLES.split(';').filter(|s| !s.trim().is_empty()) {
        raw.batch_execute(statement)
            .await
            .expect("create the keyed tables");
    }
    db
}

/// `get`: the row with key `k`.
macro_rules! by_key {
    ($k:expr) => {
        async move |conn: &mut C| -> Goc<Option<Keyed>> { Ok(conn.find_keyed($k).await?) }
    };
}

/// `get_for_update`: the row with key `k`, locked.
macro_rules! by_key_for_update {
    ($k:expr) => {
        async move |conn: &mut C| -> Goc<Option<Keyed>> {
            Ok(conn.find_keyed_for_update($k).await?)
        }
    };
}

/// `create`: inserts `(k, value)`; its failure is `GocError::Create`.
macro_rules! insert {
    ($k:expr, $value:expr) => {
        async move |conn: &mut C| -> Goc<Keyed> {
            conn.insert_keyed($k, $value)
                .await
                .map_err(GocError::Create)
        }
    };
}

/// `create` that leaves out the NOT NULL `value`: a genuine failure.
macro_rules! insert_without_value {
    ($k:expr) => {
        async move |conn: &mut C| -> Goc<Keyed> {
            conn.insert_keyed_without_value($k)
                .await
                .map_err(GocError::Create)
        }
    };
}

/// `create` for a row that must exist already.
macro_rules! never_called {
    () => {
        async |_: &mut C| -> Goc<Keyed> { panic!("create ran although the row exists (G1)") }
    };
}

/// The committed rows, read on a fresh connection.
async fn committed<C: Keyeds>(db: &TestDb<C>) -> Vec<Keyed> {
    db.raw().await.all_keyed().await.expect("read keyed")
}

/// The rows the default alias's ambient connection sees (inside its open transaction).
async fn visible<C: Keyeds>() -> Vec<Keyed> {
    aio::connection(async |conn: &mut C| conn.all_keyed().await.map_err(Error::from))
        .await
        .expect("read keyed")
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
fn assert_create_failed<T: std::fmt::Debug>(result: &Goc<T>) {
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
async fn existing_row_is_returned_and_create_never_runs<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let lennon = db.raw().await.insert_keyed(1, "John Lennon").await.unwrap();
    let mut conn = db.pool.get().await;
    let (row, created) = get_or_create(&mut *conn, by_key!(1), never_called!())
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(row, lennon);
    assert_eq!(committed(&db).await.len(), 1);
}

// Django: GetOrCreateTests.test_get_or_create_method_with_create
async fn missing_row_is_created<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    db.raw().await.insert_keyed(1, "John Lennon").await.unwrap();
    let mut conn = db.pool.get().await;
    let (row, created) = get_or_create(&mut *conn, by_key!(2), insert!(2, "George Harrison"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!((row.k, row.value.as_str()), (2, "George Harrison"));
    assert_eq!(keys(&committed(&db).await), [1, 2]);
}

// Django: GetOrCreateTests.test_get_or_create_redundant_instance
async fn second_call_returns_the_row_the_first_created<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let mut conn = db.pool.get().await;
    let (first, created) = get_or_create(&mut *conn, by_key!(7), insert!(7, "George"))
        .await
        .unwrap();
    assert!(created);
    let (second, created) = get_or_create(&mut *conn, by_key!(7), never_called!())
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(second, first);
    assert_eq!(committed(&db).await.len(), 1);
}

// Django: GetOrCreateTests.test_get_or_create_invalid_params (inside TestCase's transaction)
async fn failed_create_returns_its_error_and_the_transaction_goes_on<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let test = TestTransaction::begin().await.unwrap();
    aio::connection(async |conn: &mut C| {
        let result = get_or_create(conn, by_key!(1), insert_without_value!(1)).await;
        assert_create_failed(&result);
        // The transaction is usable: the failure rolled back only its savepoint.
        conn.insert_keyed(2, "after").await.map(drop)?;
        Ok::<_, GocError>(())
    })
    .await
    .unwrap();
    assert_eq!(keys(&visible::<C>().await), [2]);
    test.rollback().await;
    assert!(committed(&db).await.is_empty());
    assert_pool_clean(&db, POOL).await;
}

// Django: GetOrCreateTestsWithManualPKs.test_create_with_duplicate_primary_key and
// test_get_or_create_raises_IntegrityError_plus_traceback
async fn duplicate_primary_key_with_different_data_returns_the_original_error<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    let original = db
        .raw()
        .await
        .insert_keyed_with_id(1, 1, "Original")
        .await
        .unwrap();
    let test = TestTransaction::begin().await.unwrap();
    let result = aio::connection(async |conn: &mut C| {
        get_or_create(
            conn,
            // Django's get(id=1, data="Different"): the row with id 1 holds other data.
            async |conn: &mut C| -> Goc<Option<Keyed>> {
                Ok(conn
                    .find_keyed_by_id(1)
                    .await?
                    .filter(|row| row.value == "Different"))
            },
            async |conn: &mut C| -> Goc<Keyed> {
                conn.insert_keyed_with_id(1, 2, "Different")
                    .await
                    .map_err(GocError::Create)
            },
        )
        .await
    })
    .await;
    assert_create_error(&result, DatabaseErrorKind::UniqueViolation);
    assert_eq!(
        visible::<C>().await,
        std::slice::from_ref(&original),
        "stored data unchanged"
    );
    test.rollback().await;
    assert_eq!(committed(&db).await, [original]);
}

// Django: GetOrCreateTestsWithManualPKs.test_savepoint_rollback (#20463): a database error
// inside get_or_create leaves the enclosing transaction usable, on PostgreSQL too.
async fn unique_violation_in_the_savepoint_leaves_the_transaction_usable<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    db.raw().await.insert_keyed(1, "foo").await.unwrap();
    let test = TestTransaction::begin().await.unwrap();
    aio::connection(async |conn: &mut C| {
        let result = get_or_create(
            conn,
            async |conn: &mut C| -> Goc<Option<Keyed>> {
                Ok(conn.find_keyed_by_id(123_456_789).await?)
            },
            async |conn: &mut C| -> Goc<Keyed> {
                conn.insert_keyed_with_id(123_456_789, 1, "foo")
                    .await
                    .map_err(GocError::Create)
            },
        )
        .await;
        assert_create_error(&result, DatabaseErrorKind::UniqueViolation);
        conn.insert_keyed(2, "bar").await.map(drop)?;
        Ok::<_, GocError>(())
    })
    .await
    .unwrap();
    assert_eq!(keys(&visible::<C>().await), [1, 2]);
    test.rollback().await;
    assert_pool_clean(&db, POOL).await;
}

// Django: GetOrCreateTransactionTests.test_get_or_create_integrityerror (a real transaction,
// no TestCase around it)
async fn foreign_key_to_a_missing_row_returns_the_integrity_error<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let mut conn = db.pool.get().await;
    let result = get_or_create(
        &mut *conn,
        async |conn: &mut C| -> Goc<Option<(i32, i32, String)>> { Ok(conn.find_note(999).await?) },
        async |conn: &mut C| -> Goc<(i32, i32, String)> {
            conn.insert_note(999, "orphan")
                .await
                .map_err(GocError::Create)
        },
    )
    .await;
    match result {
        Err(GocError::Create(DieselError::DatabaseError(
            DatabaseErrorKind::ForeignKeyViolation,
            _,
        ))) => {}
        other => panic!("expected create's foreign key violation, got {other:?}"),
    }
    assert_clean(&mut *conn).await;
}

// ---------------------------------------------------------------------------------------------
// What Rust adds: panics, on_commit, and every way of reaching the connection
// ---------------------------------------------------------------------------------------------

/// A failed `create` takes its on_commit callbacks with it (C2); a successful one's run after
/// the outermost commit.
async fn on_commit_in_a_failed_create_is_dropped<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let notified = Notified::default();
    transaction::atomic(async || {
        aio::connection(async |conn: &mut C| {
            let queued = notified.clone();
            let failed = get_or_create(conn, by_key!(1), async |conn: &mut C| -> Goc<Keyed> {
                transaction::on_commit(move || queued.push(1))?;
                conn.insert_keyed_without_value(1)
                    .await
                    .map_err(GocError::Create)
            })
            .await;
            assert_create_failed(&failed);
            let queued = notified.clone();
            let (_, created) =
                get_or_create(conn, by_key!(2), async |conn: &mut C| -> Goc<Keyed> {
                    transaction::on_commit(move || queued.push(2))?;
                    insert!(2, "kept")(conn).await
                })
                .await?;
            assert!(created);
            Ok::<_, GocError>(())
        })
        .await?;
        assert!(notified.get().is_empty(), "nothing runs before the commit");
        Ok::<_, GocError>(())
    })
    .await
    .unwrap();
    assert_eq!(notified.get(), [2]);
    assert_eq!(keys(&committed(&db).await), [2]);
    assert_pool_clean(&db, POOL).await;
}

/// A panic in `create` rolls its savepoint back and resumes unchanged; the enclosing block
/// goes on and commits.
async fn panic_in_create_rolls_back_and_the_transaction_stays_usable<C: Keyeds>(pool: PoolKind) {
    quiet_expected_panics(EXPECTED_PANIC);
    let db = setup_keyed::<C>(pool).await;
    transaction::atomic(async || {
        aio::connection(async |conn: &mut C| {
            let outcome = catch_unwind(get_or_create(
                &mut *conn,
                by_key!(1),
                async |conn: &mut C| -> Goc<Keyed> {
                    conn.insert_keyed(1, "half-done")
                        .await
                        .map_err(GocError::Create)?;
                    std::panic::panic_any(EXPECTED_PANIC)
                },
            ))
            .await;
            let payload = outcome.expect_err("the panic resumes");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&EXPECTED_PANIC));
            assert_eq!(
                conn.find_keyed(1).await?,
                None,
                "the savepoint was rolled back"
            );
            conn.insert_keyed(2, "after").await.map(drop)?;
            Ok::<_, GocError>(())
        })
        .await
    })
    .await
    .unwrap();
    assert_eq!(keys(&committed(&db).await), [2]);
    assert_pool_clean(&db, POOL).await;
}

/// With no transaction open, `create` is a transaction of its own that commits at once.
async fn outside_any_transaction_the_row_is_committed<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let mut conn = db.pool.get().await;
    let (row, created) = get_or_create(&mut *conn, by_key!(1), insert!(1, "one"))
        .await
        .unwrap();
    assert!(created);
    assert_clean(&mut *conn).await;
    assert_eq!(committed(&db).await, [row]);
}

/// Through `aio::connection` outside any block, `create` is a transaction of its own on the
/// alias: its on_commit callbacks run at its commit, and the alias is in no block afterwards.
async fn through_connection_outside_a_block_create_commits_on_its_own<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let notified = Notified::default();
    let queued = notified.clone();
    let (row, created) = aio::connection(async |conn: &mut C| {
        get_or_create(conn, by_key!(1), async |conn: &mut C| -> Goc<Keyed> {
            assert!(transaction::in_atomic_block(), "create runs in a block");
            transaction::on_commit(move || queued.push(1))?;
            insert!(1, "one")(conn).await
        })
        .await
    })
    .await
    .unwrap();
    assert!(created);
    assert_eq!(notified.get(), [1]);
    assert!(!transaction::in_atomic_block());
    assert_eq!(committed(&db).await, [row]);
    assert_pool_clean(&db, POOL).await;
}

/// Inside an ambient `#[atomic]` block the row belongs to the block's transaction.
async fn inside_an_ambient_block_the_row_commits_or_rolls_back_with_it<C: Keyeds>(pool: PoolKind) {
    #[atomic]
    async fn create_then<C: Keyeds>(k: i32, fail: bool) -> Goc<Keyed> {
        // A reference: the lookup, called more than once, may not borrow its own state.
        let k = &k;
        let (row, created) = aio::connection(async |conn: &mut C| {
            get_or_create(conn, by_key!(*k), insert!(*k, "x")).await
        })
        .await?;
        assert!(created);
        assert!(transaction::in_atomic_block());
        if fail {
            return Err(GocError::Db(DieselError::RollbackTransaction));
        }
        Ok(row)
    }

    let db = setup_keyed::<C>(pool).await;
    let kept = create_then::<C>(1, false).await.unwrap();
    assert!(create_then::<C>(2, true).await.is_err());
    assert_eq!(committed(&db).await, [kept]);
    assert_pool_clean(&db, POOL).await;
}

/// In explicit mode, `create` nests as a savepoint of the function's block.
async fn inside_explicit_mode_a_failed_create_leaves_the_block_usable<C: Keyeds>(pool: PoolKind) {
    #[atomic]
    async fn two_creates<C: Keyeds>(conn: &mut C) -> Goc<()> {
        let failed = get_or_create(conn, by_key!(1), insert_without_value!(1)).await;
        assert_create_failed(&failed);
        assert!(!transaction::get_rollback()?, "the block is not marked");
        let (_, created) = get_or_create(conn, by_key!(2), insert!(2, "two")).await?;
        assert!(created);
        Ok(())
    }

    let db = setup_keyed::<C>(pool).await;
    let mut conn = db.pool.get().await;
    two_creates(&mut *conn).await.unwrap();
    assert_clean(&mut *conn).await;
    assert_eq!(keys(&committed(&db).await), [2]);
}

/// The same with `Atomic::run_on` on the caller's connection.
async fn inside_run_on_a_failed_create_leaves_the_block_usable<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let mut conn = db.pool.get().await;
    Atomic::new()
        .run_on(&mut *conn, async |conn: &mut C| {
            let failed = get_or_create(conn, by_key!(1), insert_without_value!(1)).await;
            assert_create_failed(&failed);
            assert!(!transaction::get_rollback()?, "the block is not marked");
            let (_, created) = get_or_create(conn, by_key!(2), insert!(2, "two")).await?;
            assert!(created);
            Ok::<_, GocError>(())
        })
        .await
        .unwrap();
    assert_clean(&mut *conn).await;
    assert_eq!(keys(&committed(&db).await), [2]);
}

/// Inside a `TestTransaction` everything, the created row included, rolls back at the end.
async fn inside_a_test_transaction_the_row_rolls_back<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let test = TestTransaction::begin().await.unwrap();
    let (row, created) = aio::connection(async |conn: &mut C| {
        get_or_create(conn, by_key!(1), insert!(1, "x")).await
    })
    .await
    .unwrap();
    assert!(created);
    assert_eq!(visible::<C>().await, [row]);
    test.rollback().await;
    assert!(committed(&db).await.is_empty());
    assert_pool_clean(&db, POOL).await;
}

/// On a connection of no alias inside diesel-async's own `conn.transaction`, a failed `create`
/// rolls back only its savepoint.
async fn inside_diesels_own_transaction_a_failed_create_leaves_it_usable<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    let mut pooled = db.pool.get().await;
    let conn: &mut C = &mut pooled;
    conn.transaction::<_, GocError, _>(async |conn: &mut C| {
        let failed = get_or_create(conn, by_key!(1), insert_without_value!(1)).await;
        assert_create_failed(&failed);
        get_or_create(conn, by_key!(2), insert!(2, "two"))
            .await
            .map(drop)
    })
    .await
    .unwrap();
    assert_clean(conn).await;
    assert_eq!(keys(&committed(&db).await), [2]);
}

/// The race's loser: `create` fails on the unique constraint because another writer inserted
/// the row after `get` missed; the second `get` returns the winner's row.
async fn lost_race_returns_the_winners_row<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let winner = db.raw().await.insert_keyed(1, "winner").await.unwrap();
    let calls = &Cell::new(0);
    // The first lookup "missed": it ran before the winner's commit.
    let stale_then_fresh = async move |conn: &mut C| -> Goc<Option<Keyed>> {
        calls.set(calls.get() + 1);
        Ok(match calls.get() {
            1 => None,
            _ => conn.find_keyed(1).await?,
        })
    };
    let mut conn = db.pool.get().await;
    let (row, created) = get_or_create(&mut *conn, stale_then_fresh, insert!(1, "loser"))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(row, winner);
    assert_eq!(committed(&db).await, [winner]);
}

// ---------------------------------------------------------------------------------------------
// Races under each isolation level (G3)
// ---------------------------------------------------------------------------------------------

/// How the transaction around `get_or_create` begins.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Snapshot {
    /// The backend's default: READ COMMITTED on PostgreSQL, REPEATABLE READ on MariaDB,
    /// a deferred transaction on SQLite.
    Default,
    /// `isolation = level` on the servers (SQLite: its default, except SERIALIZABLE).
    Level(Isolation),
}

/// What `create` does in a race.
#[derive(Clone, Copy, Debug)]
enum Create {
    /// Inserts `(1, "loser")`.
    Loser,
    /// Leaves out the NOT NULL `value`: a genuine failure.
    WithoutValue,
}

/// `get_or_create(k = 1)` on the default alias's connection. With `winner`, a connection of
/// `winner_pool` inserts and commits the row right after the first lookup missed.
async fn get_or_create_while_a_winner_commits<C: Keyeds>(
    winner_pool: &TestPool<C>,
    winner: bool,
    create: Create,
) -> Goc<(Keyed, bool)> {
    // A reference: the lookup, called more than once, may not borrow its own state (an async
    // closure whose future copies a captured value out of it is not `FnMut`).
    let winner = &winner;
    aio::connection(async |conn: &mut C| {
        let lookups = &AtomicU32::new(0);
        let lookup = async move |conn: &mut C| -> Goc<Option<Keyed>> {
            let first = lookups.fetch_add(1, Ordering::SeqCst) == 0;
            let found = conn.find_keyed(1).await?;
            if *winner && first {
                let mut winner = winner_pool.get().await;
                winner.insert_keyed(1, "winner").await?;
            }
            Ok(found)
        };
        match create {
            Create::Loser => get_or_create(conn, lookup, insert!(1, "loser")).await,
            Create::WithoutValue => get_or_create(conn, lookup, insert_without_value!(1)).await,
        }
    })
    .await
}

/// One attempt of a race's block: counts it, and lets the winner in on the first one only.
async fn race_attempt<C: Keyeds>(
    pool: &TestPool<C>,
    attempts: &AtomicU32,
    winner: bool,
    create: Create,
) -> Goc<(Keyed, bool)> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    get_or_create_while_a_winner_commits(pool, winner && attempt == 1, create).await
}

/// The race's outermost blocks, durable, one per isolation level, rerun up to 3 times (the
/// async builder has no `retry`: the attribute is the only async retry form).
macro_rules! race_block {
    ($name:ident, $($args:tt)*) => {
        #[atomic($($args)*)]
        async fn $name<C: Keyeds>(
            pool: &TestPool<C>,
            attempts: &AtomicU32,
            winner: bool,
            create: Create,
        ) -> Goc<(Keyed, bool)> {
            race_attempt(pool, attempts, winner, create).await
        }
    };
}

race_block!(retrying_at_the_default, durable = true, retry = 3);
race_block!(
    retrying_repeatable_read,
    durable = true,
    isolation = "repeatable_read",
    retry = 3
);
race_block!(
    retrying_read_committed,
    durable = true,
    isolation = "read_committed",
    retry = 3
);
race_block!(
    retrying_serializable,
    durable = true,
    isolation = "serializable",
    retry = 3
);
race_block!(once_at_the_default, durable = true);
race_block!(
    once_repeatable_read,
    durable = true,
    isolation = "repeatable_read"
);

/// Runs `get_or_create(k = 1)` in an outermost block begun as `snapshot`. With `winner`,
/// another connection inserts and commits the row right after the first lookup missed, on the
/// first attempt only. Returns what the block returned and how many attempts it took.
async fn race_after_the_first_lookup<C: Keyeds>(
    db: &TestDb<C>,
    snapshot: Snapshot,
    retry: bool,
    winner: bool,
    create: Create,
) -> (Goc<(Keyed, bool)>, u32) {
    // SQLite accepts SERIALIZABLE only (all its transactions are).
    let snapshot = match snapshot {
        Snapshot::Level(level) if C::KIND == Kind::Sqlite && level != Isolation::Serializable => {
            Snapshot::Default
        }
        snapshot => snapshot,
    };
    let attempts = AtomicU32::new(0);
    let (pool, a) = (&db.pool, &attempts);
    let result = match (snapshot, retry) {
        (Snapshot::Default, true) => retrying_at_the_default(pool, a, winner, create).await,
        (Snapshot::Level(Isolation::RepeatableRead), true) => {
            retrying_repeatable_read(pool, a, winner, create).await
        }
        (Snapshot::Level(Isolation::ReadCommitted), true) => {
            retrying_read_committed(pool, a, winner, create).await
        }
        (Snapshot::Level(Isolation::Serializable), true) => {
            retrying_serializable(pool, a, winner, create).await
        }
        (Snapshot::Default, false) => once_at_the_default(pool, a, winner, create).await,
        (Snapshot::Level(Isolation::RepeatableRead), false) => {
            once_repeatable_read(pool, a, winner, create).await
        }
        other => unreachable!("no race block for {other:?}"),
    };
    (result, AtomicU32::load(&attempts, Ordering::SeqCst))
}

/// Inside REPEATABLE READ (PostgreSQL, MariaDB) no statement sees the winner's row; the
/// transaction is marked and a retrying block reruns it, whose first lookup finds the row.
/// SQLite's deferred transaction fails the insert with "database is locked" (the snapshot is
/// stale), which the retrying block reruns too.
async fn race_hidden_by_a_repeatable_read_snapshot_is_won_by_a_rerun<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::RepeatableRead),
        true,
        true,
        Create::Loser,
    )
    .await;
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    assert_eq!(attempts, 2, "one rerun with a new snapshot");
    assert_eq!(committed(&db).await, [row]);
    assert_pool_clean(&db, POOL).await;
}

/// The sync suite's `race_at_the_default_isolation` and
/// `race_at_the_default_isolation_is_won_by_the_retry_attribute` in one (the attribute is the
/// async retry form): PostgreSQL (READ COMMITTED) finds the winner's row in the same attempt;
/// MariaDB (REPEATABLE READ, the backend default) and SQLite need the rerun.
async fn race_at_the_default_isolation_is_won_by_the_retry_attribute<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let (result, attempts) =
        race_after_the_first_lookup(&db, Snapshot::Default, true, true, Create::Loser).await;
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    let expected = match C::KIND {
        Kind::Postgres => 1,
        Kind::Mysql | Kind::Sqlite => 2,
    };
    assert_eq!(attempts, expected);
    assert_pool_clean(&db, POOL).await;
}

/// Under READ COMMITTED (PostgreSQL, MariaDB) the second lookup sees the winner's row: no
/// rerun. SQLite has no READ COMMITTED (its race is the deferred one above).
async fn race_under_read_committed_is_won_without_a_rerun<C: Keyeds>(pool: PoolKind) {
    if C::KIND == Kind::Sqlite {
        return;
    }
    let db = setup_keyed::<C>(pool).await;
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::ReadCommitted),
        true,
        true,
        Create::Loser,
    )
    .await;
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    assert_eq!(attempts, 1);
}

/// Without a retrying block the hidden race is `create`'s own error, as in Django: the unique
/// violation on the servers, "database is locked" on SQLite.
async fn hidden_race_without_retry_returns_creates_error<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::RepeatableRead),
        false,
        true,
        Create::Loser,
    )
    .await;
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
    assert_eq!(committed(&db).await[0].value, "winner");
    assert_pool_clean(&db, POOL).await;
}

/// A genuine failure (no race) under READ COMMITTED is not taken for a hidden race: the
/// retrying block runs once. (On MariaDB the async runtime knows the level from the block's
/// own `isolation`.)
async fn genuine_failure_under_read_committed_is_not_rerun<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::ReadCommitted),
        true,
        false,
        Create::WithoutValue,
    )
    .await;
    assert_create_failed(&result);
    assert_eq!(attempts, 1);
}

/// Under REPEATABLE READ a genuine failure (a NOT NULL violation) whose second lookup misses
/// is not a unique violation, so it is not taken for a hidden race: the retrying block runs
/// once and returns `create`'s error.
async fn genuine_failure_under_repeatable_read_is_not_rerun<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let level = match C::KIND {
        Kind::Sqlite => Isolation::Serializable,
        Kind::Postgres | Kind::Mysql => Isolation::RepeatableRead,
    };
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(level),
        true,
        false,
        Create::WithoutValue,
    )
    .await;
    assert_create_failed(&result);
    assert_eq!(attempts, 1);
}

/// The body of `swallowed_hidden_conflict_does_not_rerun_a_later_unrelated_error`'s blocks.
async fn lose_the_race_then_fail<C: Keyeds>(pool: &TestPool<C>, attempts: &AtomicU32) -> Goc<()> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let lost = get_or_create_while_a_winner_commits(pool, attempt == 1, Create::Loser).await;
    assert!(lost.is_err(), "the race is lost: {lost:?}");
    // The application goes on and fails for a reason of its own.
    Err(GocError::Db(DieselError::NotFound))
}

#[atomic(durable = true, isolation = "repeatable_read", retry = 3)]
async fn lose_then_fail_repeatable_read<C: Keyeds>(
    pool: &TestPool<C>,
    attempts: &AtomicU32,
) -> Goc<()> {
    lose_the_race_then_fail(pool, attempts).await
}

#[atomic(durable = true, isolation = "serializable", retry = 3)]
async fn lose_then_fail_serializable<C: Keyeds>(
    pool: &TestPool<C>,
    attempts: &AtomicU32,
) -> Goc<()> {
    lose_the_race_then_fail(pool, attempts).await
}

/// A lost race the snapshot hides, swallowed by the block, does not make a later unrelated
/// error look like one: the retrying block returns that error after one attempt.
async fn swallowed_hidden_conflict_does_not_rerun_a_later_unrelated_error<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    let attempts = AtomicU32::new(0);
    let result = match C::KIND {
        Kind::Sqlite => lose_then_fail_serializable(&db.pool, &attempts).await,
        Kind::Postgres | Kind::Mysql => lose_then_fail_repeatable_read(&db.pool, &attempts).await,
    };
    assert!(
        matches!(result, Err(GocError::Db(DieselError::NotFound))),
        "{result:?}"
    );
    assert_eq!(AtomicU32::load(&attempts, Ordering::SeqCst), 1);
    assert_pool_clean(&db, POOL).await;
}

/// PostgreSQL SERIALIZABLE: the loser's INSERT fails on the unique constraint (PostgreSQL 15
/// reports 23505 here; other interleavings get a serialization failure, 40001) and the second
/// lookup misses; either way the retrying block reruns the transaction.
#[cfg(feature = "async-postgres")]
async fn race_under_serializable_is_won_by_a_rerun<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let (result, attempts) = race_after_the_first_lookup(
        &db,
        Snapshot::Level(Isolation::Serializable),
        true,
        true,
        Create::Loser,
    )
    .await;
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "winner");
    assert_eq!(attempts, 2);
}

// ---------------------------------------------------------------------------------------------
// update_or_create: Django's UpdateOrCreateTests (rows 12-19)
// ---------------------------------------------------------------------------------------------

/// `update`: sets the row's value.
macro_rules! set_value {
    ($value:expr) => {
        async |conn: &mut C, row: Keyed| -> Goc<Keyed> {
            Ok(conn.set_keyed_value(row.id, $value).await?)
        }
    };
}

// Django: UpdateOrCreateTests.test_create_twice
async fn update_or_create_creates_then_updates<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let mut conn = db.pool.get().await;
    let (first, created) = update_or_create(
        &mut *conn,
        by_key_for_update!(1),
        insert!(1, "created"),
        set_value!("updated"),
    )
    .await
    .unwrap();
    assert!(created);
    assert_eq!(first.value, "created");
    let (second, created) = update_or_create(
        &mut *conn,
        by_key_for_update!(1),
        never_called!(),
        set_value!("updated"),
    )
    .await
    .unwrap();
    assert!(!created);
    assert_eq!((second.id, second.value.as_str()), (first.id, "updated"));
    assert_clean(&mut *conn).await;
    assert_eq!(committed(&db).await, [second]);
}

// Django: UpdateOrCreateTests.test_integrity (inside TestCase's transaction)
async fn update_or_create_without_a_required_field_returns_the_error<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let test = TestTransaction::begin().await.unwrap();
    aio::connection(async |conn: &mut C| {
        let result = update_or_create(
            conn,
            by_key_for_update!(1),
            insert_without_value!(1),
            set_value!("never"),
        )
        .await;
        assert_create_failed(&result);
        conn.insert_keyed(2, "after").await.map(drop)?;
        Ok::<_, GocError>(())
    })
    .await
    .unwrap();
    test.rollback().await;
    assert!(committed(&db).await.is_empty());
    assert_pool_clean(&db, POOL).await;
}

// Django: UpdateOrCreateTests.test_manual_primary_key_test and
// UpdateOrCreateTestsWithManualPKs.test_create_with_duplicate_primary_key
async fn update_or_create_duplicate_primary_key_returns_the_original_error<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    let original = db
        .raw()
        .await
        .insert_keyed_with_id(1, 1, "Original")
        .await
        .unwrap();
    let mut conn = db.pool.get().await;
    let result = update_or_create(
        &mut *conn,
        async |conn: &mut C| -> Goc<Option<Keyed>> {
            Ok(conn
                .find_keyed_for_update(2)
                .await?
                .filter(|row| row.id == 1))
        },
        async |conn: &mut C| -> Goc<Keyed> {
            conn.insert_keyed_with_id(1, 2, "Different")
                .await
                .map_err(GocError::Create)
        },
        set_value!("Different"),
    )
    .await;
    assert_create_error(&result, DatabaseErrorKind::UniqueViolation);
    assert_clean(&mut *conn).await;
    assert_eq!(committed(&db).await, [original]);
}

// Django: UpdateOrCreateTransactionTests.test_updates_in_transaction. The lookup locks the row
// (SQLite: update_or_create's transaction begins IMMEDIATE), so a concurrent UPDATE waits for
// update_or_create's transaction and runs after it: both writes survive.
async fn update_or_create_makes_a_concurrent_update_wait<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    db.raw().await.insert_keyed(1, "John").await.unwrap();
    let hold = Duration::from_millis(500);
    let locked = tokio::sync::Notify::new();
    let mut conn = db.pool.get().await;
    let mut other = db.pool.get().await;
    let updater = async {
        update_or_create(
            &mut *conn,
            by_key_for_update!(1),
            never_called!(),
            async |conn: &mut C, row: Keyed| -> Goc<Keyed> {
                locked.notify_one();
                tokio::time::sleep(hold).await;
                Ok(conn.set_keyed_value(row.id, "Lennon").await?)
            },
        )
        .await
    };
    let concurrent = async {
        locked.notified().await;
        let started = Instant::now();
        let updated = other.set_keyed_note(1, "NotLennon").await.unwrap();
        (updated, started.elapsed())
    };
    let (result, (updated, waited)) = within(PATIENCE, "the updates", async {
        tokio::join!(updater, concurrent)
    })
    .await;
    assert_eq!(updated, 1);
    let (row, created) = result.unwrap();
    assert!(!created);
    assert_eq!(row.value, "Lennon");
    assert!(
        waited >= hold - Duration::from_millis(100),
        "the concurrent UPDATE waited only {waited:?}"
    );
    let rows = committed(&db).await;
    assert_eq!(
        (rows[0].value.as_str(), rows[0].note.as_str()),
        ("Lennon", "NotLennon")
    );
}

/// Django: UpdateOrCreateTransactionTests.test_creation_in_transaction, made deterministic: the
/// first locked lookup "missed" because the winner had not committed yet; `create` then fails
/// on the unique constraint, the second locked lookup finds the winner's row, and `update` runs
/// on it.
async fn update_or_create_that_loses_the_creation_race_updates_the_winners_row<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    let winner = db.raw().await.insert_keyed(1, "winner").await.unwrap();
    let lookups = &Cell::new(0);
    let stale_then_fresh = async move |conn: &mut C| -> Goc<Option<Keyed>> {
        lookups.set(lookups.get() + 1);
        Ok(match lookups.get() {
            1 => None,
            _ => conn.find_keyed_for_update(1).await?,
        })
    };
    let mut conn = db.pool.get().await;
    let (row, created) = update_or_create(
        &mut *conn,
        stale_then_fresh,
        insert!(1, "loser"),
        set_value!("updated"),
    )
    .await
    .unwrap();
    assert!(!created);
    assert_eq!((row.id, row.value.as_str()), (winner.id, "updated"));
    assert_eq!(committed(&db).await, [row]);
}

/// `update_or_create`'s `Err` from `update` rolls the whole block back, the created-or-found
/// row's changes included.
async fn update_or_create_rolls_back_when_update_fails<C: Keyeds>(pool: PoolKind) {
    let db = setup_keyed::<C>(pool).await;
    let original = db.raw().await.insert_keyed(1, "original").await.unwrap();
    let mut conn = db.pool.get().await;
    let result = update_or_create(
        &mut *conn,
        by_key_for_update!(1),
        never_called!(),
        async |conn: &mut C, row: Keyed| -> Goc<Keyed> {
            conn.set_keyed_value(row.id, "changed").await?;
            Err(GocError::Db(DieselError::RollbackTransaction))
        },
    )
    .await;
    assert!(matches!(
        result,
        Err(GocError::Db(DieselError::RollbackTransaction))
    ));
    assert_clean(&mut *conn).await;
    assert_eq!(committed(&db).await, [original]);
}

// ---------------------------------------------------------------------------------------------
// Real races: two tasks on the same key
// ---------------------------------------------------------------------------------------------

/// Checks the outcome of two racing calls: one created the row, the other got it, both
/// returned the one row the table holds.
#[track_caller]
fn assert_one_created_one_got(results: Vec<(Keyed, bool)>, rows: &[Keyed]) {
    assert_eq!(rows.len(), 1, "one row: {rows:?}");
    let created: Vec<bool> = results.iter().map(|(_, created)| *created).collect();
    assert_eq!(
        created.iter().filter(|created| **created).count(),
        1,
        "one created = true, one created = false: {results:?}"
    );
    for (row, _) in &results {
        assert_eq!(row, &rows[0], "both calls returned the stored row");
    }
}

/// Two tasks, each on a connection of its own checked out of the pool and in autocommit: both
/// lookups miss (a barrier), then both create. The loser's `create` fails on the unique
/// constraint (it waits for the winner's insert to commit) and its second lookup finds the
/// winner's row.
async fn two_tasks_racing_on_one_key_outside_any_block_one_creates_one_gets<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    let barrier = Arc::new(Barrier::new(2));
    let mut handles = Vec::new();
    for name in ["first", "second"] {
        let mut conn = db.pool.get().await;
        let barrier = Arc::clone(&barrier);
        handles.push(tokio::spawn(with_registry(
            db.databases.clone(),
            async move {
                let lookups = &AtomicU32::new(0);
                let barrier = &barrier;
                let lookup = async move |conn: &mut C| -> Goc<Option<Keyed>> {
                    let first = lookups.fetch_add(1, Ordering::SeqCst) == 0;
                    let found = conn.find_keyed(1).await?;
                    if first {
                        assert_eq!(found, None, "nobody created the row yet");
                        barrier.wait().await;
                    }
                    Ok(found)
                };
                let result = get_or_create(&mut *conn, lookup, insert!(1, name)).await;
                assert_clean(&mut *conn).await;
                result
            },
        )));
    }
    let mut results = Vec::new();
    for handle in handles {
        let result = within(PATIENCE, "a racing task", handle)
            .await
            .expect("task");
        results.push(result.unwrap());
    }
    assert_one_created_one_got(results, &committed(&db).await);
}

/// One racer's block: durable, rerun after a race its snapshot hid (MariaDB's REPEATABLE
/// READ, SQLite's stale snapshot); the barrier holds both first lookups until both missed,
/// and a racer given `wait_for` creates only once that has been notified.
#[atomic(durable = true, retry = 3)]
async fn racer_in_a_retrying_block<C: Keyeds>(
    barrier: &Barrier,
    wait_for: Option<&Notify>,
    attempts: &AtomicU32,
    name: &str,
) -> Goc<(Keyed, bool)> {
    let attempt = &(attempts.fetch_add(1, Ordering::SeqCst) + 1);
    let wait_for = &wait_for;
    aio::connection(async |conn: &mut C| {
        let lookups = &AtomicU32::new(0);
        let lookup = async move |conn: &mut C| -> Goc<Option<Keyed>> {
            let first = lookups.fetch_add(1, Ordering::SeqCst) == 0;
            let found = conn.find_keyed(1).await?;
            if *attempt == 1 && first {
                assert_eq!(found, None, "nobody created the row yet");
                barrier.wait().await;
                if let Some(other_committed) = *wait_for {
                    other_committed.notified().await;
                }
            }
            Ok(found)
        };
        get_or_create(conn, lookup, insert!(1, name)).await
    })
    .await
}

/// Two tasks, each in a retrying durable block of its own (`#[atomic(durable = true, retry =
/// 3)] async fn` through `aio::connection`): one creates the row, the other gets it; on
/// PostgreSQL (READ COMMITTED) in the same attempt, on MariaDB and SQLite after one rerun.
///
/// Both first lookups miss before either creates (a barrier), and the second racer creates
/// only once the first has committed, so its snapshot is stale when it does. Left to timing,
/// SQLite's loser could also fail on the winner's write lock before the winner committed (a
/// read transaction asking for the write lock gets `SQLITE_BUSY` at once, without waiting),
/// rerun while the row is still uncommitted, and need a third attempt: one CI run did.
async fn two_tasks_racing_on_one_key_in_retrying_blocks_one_creates_one_gets<C: Keyeds>(
    pool: PoolKind,
) {
    let db = setup_keyed::<C>(pool).await;
    let barrier = Arc::new(Barrier::new(2));
    let first_committed = Arc::new(Notify::new());
    let mut handles = Vec::new();
    for name in ["first", "second"] {
        let barrier = Arc::clone(&barrier);
        let first_committed = Arc::clone(&first_committed);
        handles.push(tokio::spawn(with_registry(
            db.databases.clone(),
            async move {
                let attempts = AtomicU32::new(0);
                let wait_for = (name == "second").then_some(&*first_committed);
                let result =
                    racer_in_a_retrying_block::<C>(&barrier, wait_for, &attempts, name).await;
                if name == "first" {
                    // Stored as a permit if the second racer is not waiting yet.
                    first_committed.notify_one();
                }
                (name, result, AtomicU32::load(&attempts, Ordering::SeqCst))
            },
        )));
    }
    let mut results = Vec::new();
    let mut attempts = Vec::new();
    for handle in handles {
        let (name, result, tries) = within(PATIENCE, "a racing task", handle)
            .await
            .expect("task");
        let result = result.unwrap();
        assert_eq!(result.1, name == "first", "{name} created: {result:?}");
        results.push(result);
        attempts.push(tries);
    }
    let expected = match C::KIND {
        Kind::Postgres => [1, 1],
        Kind::Mysql | Kind::Sqlite => [1, 2],
    };
    assert_eq!(attempts, expected, "attempts per task (first, second)");
    assert_one_created_one_got(results, &committed(&db).await);
    assert_pool_clean(&db, POOL).await;
}

// ---------------------------------------------------------------------------------------------
// One server only
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "async-postgres")]
mod postgres_only {
    #[test]
    fn race_under_serializable_is_won_by_a_rerun() {
        crate::common_aio::block_on(|| {
            crate::common_aio::run::<diesel_async::AsyncPgConnection, _>(
                crate::common_aio::PoolKind::Deadpool,
                super::race_under_serializable_is_won_by_a_rerun::<diesel_async::AsyncPgConnection>,
            )
        });
    }
}
