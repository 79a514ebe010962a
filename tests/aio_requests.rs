//! Per-request transactions for async views (`aio::request`, rules Q1–Q3 and A2), on the
//! real servers: a view's work on an `atomic_requests` alias is one transaction, begun at
//! its first use, committed when the view returns `Ok`, rolled back on `Err`, on a panic and
//! when the request's future is dropped (a client that went away); `#[non_atomic_requests]`
//! exempts an async view.
#![cfg(feature = "async")]

mod common_aio;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common_aio::{Backend, PoolKind, TestDb, assert_clean, insert_ambient};
use diesel_atomic::aio::{self, transaction};
use diesel_atomic::{Databases, DatabasesGuard, Error, non_atomic_requests};

aio_tests!(deadpool:
    a_view_that_returns_ok_commits_and_runs_its_callbacks,
    a_view_that_returns_err_rolls_back_and_drops_its_callbacks,
    a_view_that_panics_rolls_back_and_the_panic_goes_on,
    a_dropped_request_never_commits_and_leaves_the_connection_clean,
    callbacks_registered_before_the_first_query_wait_for_the_commit,
    set_rollback_before_the_first_query_rolls_the_request_back,
    an_exempt_async_view_commits_its_own_blocks,
    a_request_inside_a_request_is_refused,
);

/// The test's pool as an `atomic_requests` alias, entered on this thread.
fn atomic_requests<C: Backend>(db: &TestDb<C>) -> DatabasesGuard {
    Databases::new()
        .add("default", db.pool.database().atomic_requests(true))
        .enter()
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<&'static str>>>);

impl Log {
    fn on_commit(&self, entry: &'static str) -> Result<(), Error> {
        let log = self.clone();
        transaction::on_commit(move || log.0.lock().unwrap().push(entry))
    }

    fn get(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().clone()
    }
}

async fn a_view_that_returns_ok_commits_and_runs_its_callbacks<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let log = Log::default();
    aio::request(async {
        assert!(transaction::in_atomic_block());
        insert_ambient::<C>(1).await?;
        log.on_commit("sent")?;
        // A block inside the view is a savepoint of the request's transaction.
        transaction::atomic(async || insert_ambient::<C>(2).await).await?;
        assert!(
            log.get().is_empty(),
            "a callback ran before the request's COMMIT"
        );
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.committed().await, [1, 2]);
    assert_eq!(log.get(), ["sent"]);
}

async fn a_view_that_returns_err_rolls_back_and_drops_its_callbacks<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let log = Log::default();
    let result = aio::request(async {
        insert_ambient::<C>(1).await?;
        log.on_commit("sent")?;
        Err::<(), Error>(Error::TransactionManagement("invalid form".into()))
    })
    .await;
    assert!(result.is_err());
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty());
    assert_clean(&mut *db.pool.get().await).await;
}

async fn a_view_that_panics_rolls_back_and_the_panic_goes_on<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let log = Log::default();
    let view = aio::request(async {
        insert_ambient::<C>(1).await?;
        log.on_commit("sent")?;
        if log.get().is_empty() {
            panic!("the view failed");
        }
        Ok::<(), Error>(())
    });
    let panicked = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(view)).await;
    assert!(
        panicked.is_err(),
        "the view's panic did not reach the caller"
    );
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty());
    assert_clean(&mut *db.pool.get().await).await;
}

// A2: the server drops the handler's future when the client goes away.
async fn a_dropped_request_never_commits_and_leaves_the_connection_clean<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let log = Log::default();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(100),
        aio::request(async {
            insert_ambient::<C>(1).await?;
            log.on_commit("sent")?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<(), Error>(())
        }),
    )
    .await;
    assert!(timed_out.is_err());
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty());
    // Pool of one: the next request gets a connection outside any transaction.
    assert_clean(&mut *db.pool.get().await).await;
    aio::request(async { insert_ambient::<C>(2).await })
        .await
        .unwrap();
    assert_eq!(db.committed().await, [2]);
}

// Q1: the transaction counts as open before the view's first query.
async fn callbacks_registered_before_the_first_query_wait_for_the_commit<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let log = Log::default();
    aio::request(async {
        log.on_commit("early")?;
        assert!(log.get().is_empty());
        insert_ambient::<C>(1).await?;
        log.on_commit("late")?;
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(log.get(), ["early", "late"]);
    // A view that never uses the database: its callbacks run when it returns `Ok`.
    let log = Log::default();
    aio::request(async {
        log.on_commit("no query")?;
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(log.get(), ["no query"]);
    assert_eq!(db.committed().await, [1]);
}

async fn set_rollback_before_the_first_query_rolls_the_request_back<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let log = Log::default();
    let value = aio::request(async {
        log.on_commit("sent")?;
        transaction::set_rollback(true)?;
        assert!(transaction::get_rollback()?);
        // F3, as inside any block marked for rollback: no queries until the flag is cleared.
        assert!(insert_ambient::<C>(1).await.is_err());
        Ok::<_, Error>(7)
    })
    .await
    .unwrap();
    assert_eq!(value, 7);
    assert!(db.committed().await.is_empty());
    assert!(log.get().is_empty());
}

#[non_atomic_requests]
async fn import<C: Backend>(fail_after: bool) -> Result<(), Error> {
    assert!(!transaction::in_atomic_block());
    transaction::atomic(async || insert_ambient::<C>(1).await).await?;
    if fail_after {
        return Err(Error::TransactionManagement(
            "the import failed after a block".into(),
        ));
    }
    Ok(())
}

// Q2: `#[non_atomic_requests]` on an async view.
async fn an_exempt_async_view_commits_its_own_blocks<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let result = aio::request(import::<C>(true)).await;
    assert!(result.is_err());
    assert_eq!(
        db.committed().await,
        [1],
        "the exempt view's block did not commit"
    );
}

async fn a_request_inside_a_request_is_refused<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let result = aio::request(async { aio::request(async { Ok::<(), Error>(()) }).await }).await;
    assert!(matches!(result, Err(Error::RequestNested)), "{result:?}");
}
