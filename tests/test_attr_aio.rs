//! `#[diesel_atomic::test] async fn`: Django's `TestCase` (rule T1) for async code, on a tokio
//! runtime the attribute builds, and with `transaction = false` its `TransactionTestCase`.
//!
//! As in tests/test_attr.rs, the attributed functions are tests of their own (on a SQLite
//! database each, when run alone) and are also called by the backend tests at the bottom,
//! which give them a database on SQLite, PostgreSQL or MariaDB and then look, from a
//! connection of their own, at what the test left committed.

mod common_aio;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};

use common_aio::{Backend, Kind, PoolKind, Sqlite, TestDb};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_atomic::{Database, Databases, Error, aio, atomic, db};

thread_local! {
    /// The registry the attributed tests run with, set by the backend test calling them.
    static UNDER_TEST: RefCell<Option<Databases>> = const { RefCell::new(None) };
    /// The backend of the registry under test.
    static KIND: Cell<Kind> = const { Cell::new(Kind::Sqlite) };
    /// Run on their own, a SQLite database of the thread's (made on a runtime of its own).
    static ALONE: RefCell<Option<(tokio::runtime::Runtime, TestDb<Sqlite>)>> =
        const { RefCell::new(None) };
    /// A sync SQLite alias for the mixed registry, and its file.
    static SYNC_ALIAS: RefCell<Option<(tempfile::TempDir, Database)>> = const { RefCell::new(None) };
    /// How many on_commit callbacks ran on this thread.
    static CALLBACKS_RUN: Cell<usize> = const { Cell::new(0) };
}

/// `setup` of the tests below: the caller's registry, else a SQLite one of the thread's.
fn under_test() -> Databases {
    if let Some(databases) = UNDER_TEST.with_borrow(Clone::clone) {
        return databases;
    }
    KIND.set(Kind::Sqlite);
    ALONE.with_borrow_mut(|alone| {
        let (_, db) = alone.get_or_insert_with(|| {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let db = runtime.block_on(TestDb::<Sqlite>::new(PoolKind::Deadpool, 4));
            (runtime, db)
        });
        db.databases.clone()
    })
}

fn under_test_with_requests() -> Databases {
    let databases = under_test();
    let default = databases.get("default").unwrap().clone();
    databases.add("default", default.atomic_requests(true))
}

/// `under_test()` plus a sync SQLite alias, "sync".
fn under_test_mixed() -> Databases {
    let sync = SYNC_ALIAS.with_borrow_mut(|slot| {
        let (_, database) = slot.get_or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            let url = dir.path().join("sync.db").display().to_string();
            let mut conn = SqliteConnection::establish(&url).unwrap();
            diesel::sql_query("CREATE TABLE notes (body TEXT NOT NULL)")
                .execute(&mut conn)
                .unwrap();
            let pool = Pool::builder()
                .max_size(2)
                .build(ConnectionManager::<SqliteConnection>::new(url))
                .unwrap();
            (dir, Database::new(pool))
        });
        database.clone()
    });
    under_test().add("sync", sync)
}

fn sync_notes() -> i64 {
    SYNC_ALIAS.with_borrow(|slot| {
        let (dir, _) = slot.as_ref().unwrap();
        let url = dir.path().join("sync.db").display().to_string();
        diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM notes")
            .get_result(&mut SqliteConnection::establish(&url).unwrap())
            .unwrap()
    })
}

/// Runs `$call` with the connection type of the backend under test as `C`.
macro_rules! on_backend {
    (|$c:ident| $call:expr) => {
        match KIND.get() {
            Kind::Sqlite => {
                type $c = Sqlite;
                $call
            }
            #[cfg(feature = "async-postgres")]
            Kind::Postgres => {
                type $c = diesel_async::AsyncPgConnection;
                $call
            }
            #[cfg(feature = "async-mysql")]
            Kind::Mysql => {
                type $c = diesel_async::AsyncMysqlConnection;
                $call
            }
            #[allow(unreachable_patterns)]
            other => unreachable!("{other:?} is not compiled in"),
        }
    };
}

async fn add(name: &str) -> Result<(), Error> {
    on_backend!(|C| common_aio::create_reporter::<C>(name, "").await)
}

async fn visible() -> Vec<String> {
    on_backend!(|C| common_aio::visible_reporters::<C>().await)
}

async fn select_one() -> Result<(), Error> {
    on_backend!(|C| common_aio::execute_ambient::<C>("SELECT 1").await)
}

#[atomic(durable = true)]
async fn durable_signup(name: &str) -> Result<(), Error> {
    add(name).await?;
    aio::transaction::on_commit(|| CALLBACKS_RUN.set(CALLBACKS_RUN.get() + 1))
}

// --- The attributed tests ---------------------------------------------------------------------

#[diesel_atomic::test(setup = under_test)]
async fn writes_in_a_test() {
    assert!(aio::transaction::in_atomic_block());
    add("ada").await.unwrap();
    assert_eq!(visible().await, ["ada"]);
}

const PANIC: &str = "the async test failed after its insert";

#[diesel_atomic::test(setup = under_test)]
#[should_panic(expected = "the async test failed after its insert")]
async fn panics_after_writing() {
    add("ada").await.unwrap();
    panic!("{PANIC}");
}

#[diesel_atomic::test(setup = under_test)]
async fn returns_a_result() -> Result<(), Error> {
    add("ada").await?;
    if visible().await == ["ada"] {
        return Ok(());
    }
    Err(Error::NotConfigured)
}

#[diesel_atomic::test(setup = under_test)]
async fn runs_durable_blocks_inside() -> Result<(), Error> {
    durable_signup("ada").await?;
    assert!(aio::transaction::in_atomic_block(), "still in the test's");
    assert_eq!(CALLBACKS_RUN.get(), 0, "nothing commits inside a test");
    Ok(())
}

#[diesel_atomic::test(setup = under_test)]
async fn captures_callbacks() {
    let (signed_up, callbacks) =
        aio::testing::capture_on_commit_callbacks(false, durable_signup("ada")).await;
    signed_up.unwrap();
    assert_eq!(callbacks.len(), 1);
    assert_eq!(CALLBACKS_RUN.get(), 0);
    callbacks.run().await;
    assert_eq!(CALLBACKS_RUN.get(), 1);
}

#[diesel_atomic::test(setup = under_test, transaction = false)]
async fn commits_without_a_transaction() -> Result<(), Error> {
    assert!(!aio::transaction::in_atomic_block());
    CALLBACKS_RUN.set(0);
    durable_signup("ada").await?;
    assert_eq!(CALLBACKS_RUN.get(), 1, "committed, so its callback ran");
    Ok(())
}

#[diesel_atomic::test(setup = under_test_with_requests)]
async fn sends_requests_inside() -> Result<(), Error> {
    add("ada").await?;
    aio::request(async {
        assert_eq!(visible().await, ["ada"], "the test's row");
        let nested = durable_signup("grace").await;
        assert!(
            matches!(nested, Err(Error::DurableNested { .. })),
            "{nested:?}"
        );
        add("grace").await?;
        aio::transaction::on_commit(|| CALLBACKS_RUN.set(CALLBACKS_RUN.get() + 1))?;
        Ok::<_, Error>(())
    })
    .await?;
    assert_eq!(
        CALLBACKS_RUN.get(),
        0,
        "the request's COMMIT was a savepoint's RELEASE"
    );
    let failed = aio::request(async {
        add("bob").await?;
        Err::<(), _>(Error::NotConfigured)
    })
    .await;
    assert!(matches!(failed, Err(Error::NotConfigured)), "{failed:?}");
    assert_eq!(
        visible().await,
        ["ada", "grace"],
        "the failed request rolled back to its savepoint, and only that"
    );
    assert!(aio::transaction::in_atomic_block());
    Ok(())
}

/// Requests sent through the tower layer from inside the test (`oneshot` on the app) run in
/// the test's transaction: the handler sees the test's row, the test sees the handler's, a
/// failed request rolls back to its savepoint only, and `rolls_back_layer_requests` finds
/// nothing committed.
#[cfg(feature = "tower")]
#[diesel_atomic::test(setup = under_test_with_requests)]
async fn sends_requests_through_the_layer() -> Result<(), Error> {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use tower::ServiceExt;

    add("ada").await?;
    let app = axum::Router::new()
        .route(
            "/signup",
            post(|| async {
                let seen = visible().await;
                match add("grace").await {
                    Ok(()) if seen == ["ada"] => StatusCode::CREATED,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                }
            }),
        )
        .route(
            "/fails",
            post(|| async {
                match add("bob").await {
                    Ok(()) => StatusCode::CONFLICT,
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
                }
            }),
        )
        .layer(diesel_atomic::tower::AtomicRequestsLayer::new());
    let post = |path: &str| Request::post(path).body(Body::empty()).unwrap();
    let created = app.clone().oneshot(post("/signup")).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED, "saw the test's row");
    assert_eq!(CALLBACKS_RUN.get(), 0);
    let failed = app.oneshot(post("/fails")).await.unwrap();
    assert_eq!(failed.status(), StatusCode::CONFLICT);
    assert_eq!(
        visible().await,
        ["ada", "grace"],
        "the handler's row is the test's; the failed request's is rolled back"
    );
    Ok(())
}

#[diesel_atomic::test(setup = under_test)]
async fn spawned_tasks_find_the_registry() {
    // Another task: not inside the test's transaction, but with its databases.
    let kind = KIND.get();
    let spawned = tokio::spawn(async move {
        KIND.set(kind);
        let in_block = aio::transaction::in_atomic_block();
        (in_block, select_one().await)
    });
    let (in_block, selected) = spawned.await.unwrap();
    assert!(!in_block);
    selected.unwrap();
}

#[diesel_atomic::test(setup = under_test_mixed)]
async fn covers_sync_aliases_too() {
    assert!(aio::transaction::in_atomic_block());
    assert!(db("sync").in_atomic_block(), "the sync test transaction");
    db("sync")
        .connection(|conn: &mut SqliteConnection| {
            diesel::sql_query("INSERT INTO notes VALUES ('kept?')").execute(conn)
        })
        .unwrap();
    add("ada").await.unwrap();
}

// --- What they left committed, per backend -----------------------------------------------------

/// A backend test's database, made and inspected on a runtime of the harness's own, while the
/// attributed test runs on the one it builds.
struct Harness<C: Backend> {
    db: Option<TestDb<C>>,
    runtime: tokio::runtime::Runtime,
}

impl<C: Backend> Harness<C> {
    fn new() -> Option<Harness<C>> {
        if let Some(why) = C::unavailable() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why} (CI=true: a missing server is a failure, not a skip)"
            );
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let db = runtime.block_on(TestDb::<C>::new(PoolKind::Deadpool, 4));
        Some(Harness {
            db: Some(db),
            runtime,
        })
    }

    /// Runs the attributed test `test` on this database.
    fn run<T>(&self, test: impl FnOnce() -> T) -> T {
        let databases = self.db.as_ref().unwrap().databases.clone();
        UNDER_TEST.with_borrow_mut(|slot| *slot = Some(databases));
        KIND.set(C::KIND);
        let outcome = panic::catch_unwind(AssertUnwindSafe(test));
        UNDER_TEST.with_borrow_mut(|slot| *slot = None);
        outcome.unwrap_or_else(|payload| panic::resume_unwind(payload))
    }

    fn committed(&self) -> Vec<String> {
        self.runtime.block_on(self.db.as_ref().unwrap().reporters())
    }
}

impl<C: Backend> Drop for Harness<C> {
    fn drop(&mut self) {
        let _runtime = self.runtime.enter();
        self.db.take();
    }
}

macro_rules! attr_tests {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $test() {
                super::$test::<crate::common_aio::Sqlite>();
            })*
        }
        #[cfg(feature = "async-postgres")]
        mod postgres {
            $(#[test]
            fn $test() {
                super::$test::<diesel_async::AsyncPgConnection>();
            })*
        }
        #[cfg(feature = "async-mysql")]
        mod mysql {
            $(#[test]
            fn $test() {
                super::$test::<diesel_async::AsyncMysqlConnection>();
            })*
        }
    };
}

fn rolls_back_its_rows<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    harness.run(writes_in_a_test);
    assert!(harness.committed().is_empty());
}

fn rolls_back_after_a_panic<C: Backend>() {
    common_aio::quiet_expected_panics(PANIC);
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| harness.run(panics_after_writing)));
    let payload = outcome.expect_err("the test panicked");
    assert_eq!(payload.downcast_ref::<String>().unwrap(), PANIC);
    assert!(harness.committed().is_empty());
}

fn rolls_back_a_test_that_returns_a_result<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    harness.run(returns_a_result).unwrap();
    assert!(harness.committed().is_empty());
}

fn rolls_back_durable_blocks<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    harness.run(runs_durable_blocks_inside).unwrap();
    assert!(harness.committed().is_empty());
}

fn rolls_back_captured_work<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    CALLBACKS_RUN.set(0);
    harness.run(captures_callbacks);
    assert!(harness.committed().is_empty());
}

fn commits_with_transaction_false<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    harness.run(commits_without_a_transaction).unwrap();
    assert_eq!(harness.committed(), ["ada"]);
}

fn rolls_back_requests<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    CALLBACKS_RUN.set(0);
    harness.run(sends_requests_inside).unwrap();
    assert!(harness.committed().is_empty());
}

fn rolls_back_layer_requests<C: Backend>() {
    #[cfg(feature = "tower")]
    {
        let Some(harness) = Harness::<C>::new() else {
            return;
        };
        harness.run(sends_requests_through_the_layer).unwrap();
        assert!(harness.committed().is_empty());
    }
}

fn enters_the_registry_on_its_threads<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    harness.run(spawned_tasks_find_the_registry);
}

fn rolls_back_sync_aliases_of_a_mixed_registry<C: Backend>() {
    let Some(harness) = Harness::<C>::new() else {
        return;
    };
    harness.run(covers_sync_aliases_too);
    assert_eq!(sync_notes(), 0);
    assert!(harness.committed().is_empty());
}

attr_tests!(
    rolls_back_its_rows,
    rolls_back_after_a_panic,
    rolls_back_a_test_that_returns_a_result,
    rolls_back_durable_blocks,
    rolls_back_captured_work,
    commits_with_transaction_false,
    rolls_back_requests,
    rolls_back_layer_requests,
    enters_the_registry_on_its_threads,
    rolls_back_sync_aliases_of_a_mixed_registry,
);
