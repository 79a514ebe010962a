//! What differs between the backends, and what must not: PostgreSQL refuses every statement
//! after an error until the transaction (or a savepoint) rolls back, SQLite and MariaDB go on;
//! an `#[atomic]` block around the failing statement makes all three behave alike. Also the
//! runtime with diesel's `MultiConnection`, whose transaction manager is not diesel's
//! `AnsiTransactionManager`.

mod common;

use common::*;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_atomic::atomic;
use diesel_atomic::transaction::{self, Atomic};

/// The servers' features are compiled in: `scripts/test` turns them on.
#[test]
fn every_backend_is_compiled_in() {
    let missing: Vec<&str> = [
        ("postgres", cfg!(feature = "postgres")),
        ("mysql", cfg!(feature = "mysql")),
    ]
    .into_iter()
    .filter(|(_, on)| !on)
    .map(|(feature, _)| feature)
    .collect();
    if missing.is_empty() {
        return;
    }
    let why = format!(
        "features {missing:?} are off, so their tests are not compiled; run `scripts/test`"
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED: {why}");
}

fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

fn a_failed_statement_aborts_the_transaction_on_postgresql_only<C: Backend>() {
    let db = setup::<C>();
    let mut pooled = db.default.get().unwrap();
    let result = Atomic::new().run_on(&mut *pooled, |conn| {
        conn.insert_thing(1)?;
        let duplicate = conn.insert_thing(1).unwrap_err();
        assert!(is_unique_violation(&duplicate), "{duplicate:?}");
        let next = conn.insert_thing(2);
        match C::KIND {
            // "current transaction is aborted, commands ignored until end of transaction block"
            Kind::Postgres => assert!(
                matches!(
                    &next,
                    Err(DieselError::DatabaseError(DatabaseErrorKind::Unknown, info))
                        if info.message().contains("current transaction is aborted")
                ),
                "{next:?}"
            ),
            Kind::Sqlite | Kind::Mysql => next.expect("the transaction goes on"),
        }
        // Let the block commit what the backend kept.
        Ok::<_, TestError>(())
    });
    match C::KIND {
        // PostgreSQL answers the COMMIT of an aborted transaction with ROLLBACK and no error,
        // and diesel (like psycopg2 under Django) reports success: nothing is committed. A
        // block must not swallow a database error; put the statement that may fail in a
        // nested block, as the next test does.
        Kind::Postgres => {
            assert_eq!(result, Ok(()));
            assert!(db.things("default").is_empty());
        }
        Kind::Sqlite | Kind::Mysql => {
            result.unwrap();
            assert_eq!(db.things("default"), [1, 2]);
        }
    }
    assert!(!transaction::in_atomic_block());
    drop(pooled);
    assert_pool_clean(&db.default);
}

#[atomic]
fn insert_thing_in_a_savepoint<C: Backend>(conn: &mut C, num: i32) -> QueryResult<()> {
    conn.insert_thing(num)
}

fn an_atomic_block_around_the_failing_statement_keeps_the_transaction_usable<C: Backend>() {
    let db = setup::<C>();
    let mut pooled = db.default.get().unwrap();
    Atomic::new()
        .run_on(&mut *pooled, |conn| {
            insert_thing_in_a_savepoint(conn, 1)?;
            let duplicate = insert_thing_in_a_savepoint(conn, 1).unwrap_err();
            assert!(is_unique_violation(&duplicate), "{duplicate:?}");
            assert!(!transaction::get_rollback()?, "the savepoint absorbed it");
            insert_thing_in_a_savepoint(conn, 2)?;
            Ok::<_, TestError>(())
        })
        .unwrap();
    drop(pooled);
    assert_eq!(db.things("default"), [1, 2]);
    assert_pool_clean(&db.default);
}

/// Django's rule F3, same on every backend: after a `savepoint = false` block failed, the
/// runtime refuses queries itself, before the backend is even asked.
fn a_joined_block_that_failed_blocks_queries_on_every_backend<C: Backend>() {
    let db = setup::<C>();
    let result = transaction::atomic(|| {
        insert_thing(1)?;
        let failed = Atomic::new().savepoint(false).run(|| insert_thing(1));
        assert!(matches!(failed, Err(TestError::Db(_))), "{failed:?}");
        let refused = insert_thing(2);
        assert!(
            matches!(&refused, Err(TestError::Atomic(message)) if message.contains("can't execute queries")),
            "{refused:?}"
        );
        Ok::<_, TestError>(())
    });
    assert_eq!(result, Ok(()));
    assert!(db.things("default").is_empty());
    assert_pool_clean(&db.default);
}

/// X4 on PostgreSQL: a savepoint block whose body swallowed a database error cannot RELEASE
/// (the transaction is aborted); it rolls back to its savepoint, returns the RELEASE error, and
/// leaves the enclosing transaction usable and unmarked. Elsewhere the RELEASE just works.
/// (Found by the model test in tests/model.rs.)
fn a_savepoint_that_swallowed_an_error_fails_alone<C: Backend>() {
    let db = setup::<C>();
    transaction::atomic(|| {
        insert_thing(1)?;
        let inner = transaction::atomic(|| {
            let duplicate = insert_thing(1);
            assert!(matches!(duplicate, Err(TestError::Db(_))), "{duplicate:?}");
            Ok::<_, TestError>(())
        });
        match C::KIND {
            Kind::Postgres => assert!(
                matches!(&inner, Err(TestError::Atomic(message)) if message.contains("aborted")),
                "the RELEASE error: {inner:?}"
            ),
            Kind::Sqlite | Kind::Mysql => assert_eq!(inner, Ok(())),
        }
        assert!(
            !transaction::get_rollback()?,
            "the outer block is not marked"
        );
        insert_thing(2)?;
        Ok::<_, TestError>(())
    })
    .unwrap();
    assert_eq!(db.things("default"), [1, 2]);
    assert_pool_clean(&db.default);
}

backend_tests!(
    a_failed_statement_aborts_the_transaction_on_postgresql_only,
    a_savepoint_that_swallowed_an_error_fails_alone,
    an_atomic_block_around_the_failing_statement_keeps_the_transaction_usable,
    a_joined_block_that_failed_blocks_queries_on_every_backend,
);

/// diesel's `MultiConnection`: one connection type for all three backends, with its own
/// transaction manager that forwards to the backend's.
#[cfg(all(feature = "postgres", feature = "mysql"))]
mod multi {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::r2d2::{ConnectionManager, Pool};
    use diesel_atomic::{Database, Databases, Error};

    #[derive(diesel::MultiConnection)]
    pub enum AnyConnection {
        Postgresql(PgConnection),
        Mysql(MysqlConnection),
        Sqlite(SqliteConnection),
    }

    #[atomic]
    fn explicit_insert(conn: &mut AnyConnection, name: &str, fail: bool) -> Result<(), TestError> {
        diesel::insert_into(reporters::table)
            .values((reporters::first_name.eq(name), reporters::last_name.eq("")))
            .execute(conn)?;
        if fail { Err(TestError::Oops) } else { Ok(()) }
    }

    fn ambient_insert(name: &str) -> Result<(), TestError> {
        diesel_atomic::connection(|conn: &mut AnyConnection| {
            diesel::insert_into(reporters::table)
                .values((reporters::first_name.eq(name), reporters::last_name.eq("")))
                .execute(conn)
                .map(drop)
                .map_err(TestError::from)
        })
    }

    /// Blocks, savepoints and callbacks through a `MultiConnection` pool on backend `C`'s
    /// test database.
    fn blocks_work_through_a_multi_connection<C: Backend>() {
        let db = setup::<C>();
        let pool = Pool::builder()
            .max_size(2)
            .build(ConnectionManager::<AnyConnection>::new(db.url("default")))
            .expect("a MultiConnection pool");
        let databases = Databases::new().add("default", Database::new(pool.clone()));
        let _registry = databases.enter();
        let notified = Notified::default();

        let notify = notified.clone();
        transaction::atomic(|| {
            ambient_insert("Tintin")?;
            let inner = transaction::atomic(|| {
                ambient_insert("Haddock")?;
                Err::<(), _>(TestError::Oops)
            });
            assert_eq!(inner, Err(TestError::Oops));
            transaction::on_commit(move || notify.push(1))?;
            Ok::<_, TestError>(())
        })
        .unwrap();
        assert_eq!(notified.get(), [1]);

        let mut conn = pool.get().unwrap();
        explicit_insert(&mut conn, "Calculus", false).unwrap();
        assert_eq!(
            explicit_insert(&mut conn, "Nestor", true),
            Err(TestError::Oops)
        );
        conn.batch_execute("SELECT 1").unwrap();
        drop(conn);

        assert_eq!(db.reporters("default"), ["Calculus", "Tintin"]);
        assert!(!transaction::in_atomic_block());
        for _ in 0..2 {
            // Every pooled MultiConnection is back outside a transaction: a fresh block on
            // each one opens a real transaction (depth 1), not a savepoint.
            let mut conn = pool.get().unwrap();
            Atomic::new()
                .durable(true)
                .run_on(&mut *conn, |_| Ok::<_, Error>(()))
                .expect("durable: no transaction is left open");
        }
    }

    backend_tests!(blocks_work_through_a_multi_connection);
}
