//! Async blocks on the real servers: the A-rules (docs/SEMANTICS.md) for tasks and
//! cancellation, and the Django rules that carry over to async code unchanged.
//!
//! - A2: a nested block cancelled by `tokio::time::timeout` makes its parent roll back and
//!   return `Error::Cancelled`; nothing commits.
//! - A3: sibling blocks under `tokio::join!` in one task take turns on the alias's one
//!   connection (no interleaving), and commit or roll back each on its own; a block inside an
//!   `aio::connection` closure on the same alias is `Error::ConnectionInUse`, never a hang.
//! - A1: a `tokio::spawn`ed block inside a block is an independent transaction on another
//!   connection, which does not see the parent's uncommitted row; the futures are `Send`.
//! - A4 and C1–C3: plain and `on_commit_async` callbacks run in registration order after the
//!   COMMIT (an async one sees the committed row from another session) and before the
//!   block's future resolves; never for a rolled-back block or savepoint.
//! - F2, E1, X2: `set_rollback(true)` rolls back without an error; a durable block inside a
//!   block is an error that leaves the outer block committing; a rolled-back savepoint keeps
//!   the outer work.
//!
//! Three backends, on deadpool (the pools' own behaviour under cancellation is
//! tests/aio_cancel.rs's subject).
#![cfg(feature = "async")]

mod common_aio;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common_aio::{
    Backend, Kind, PoolKind, TestDb, assert_clean, insert_ambient, visible_ambient, with_registry,
    within,
};
use diesel_atomic::Error;
use diesel_atomic::aio::{self, transaction, transaction::Atomic};
use tokio::task::yield_now;

aio_tests!(deadpool:
    timed_out_nested_block_cancels_the_outer_block,
    joined_sibling_blocks_take_turns,
    joined_sibling_block_failing_rolls_back_alone,
    block_inside_connection_closure_is_connection_in_use,
    spawned_block_is_an_independent_transaction,
    atomic_future_is_send,
    callbacks_run_in_order_after_commit,
    callbacks_never_run_for_a_rolled_back_block,
    set_rollback_rolls_back_without_error,
    durable_block_inside_a_block_is_an_error,
    rolled_back_savepoint_keeps_outer_work_and_drops_its_callbacks,
);

/// A log of callback runs, shared with callbacks on any thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Registers a plain on_commit callback that logs `entry`.
    fn on_commit(&self, entry: &'static str) -> Result<(), Error> {
        let log = self.clone();
        transaction::on_commit(move || log.push(entry))
    }
}

/// The pool's connections are all back and outside any transaction.
async fn assert_pool_clean<C: Backend>(db: &TestDb<C>) {
    let mut conn = db.pool.get().await;
    assert_clean(&mut *conn).await;
}

// Rule A2: a nested block's future dropped by a timeout.
async fn timed_out_nested_block_cancels_the_outer_block<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Log::default();
    let result: Result<(), Error> = transaction::atomic(async || {
        insert_ambient::<C>(1).await?;
        log.on_commit("outer")?;
        let timed_out = tokio::time::timeout(
            Duration::from_millis(100),
            transaction::atomic(async || {
                insert_ambient::<C>(2).await?;
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<(), Error>(())
            }),
        )
        .await;
        assert!(timed_out.is_err(), "the nested block outlived its timeout");
        Ok(())
    })
    .await;
    match result {
        Err(Error::Cancelled { alias }) => assert_eq!(alias, "default"),
        other => panic!("expected Error::Cancelled, got {other:?}"),
    }
    assert_eq!(db.committed().await, Vec::<i32>::new());
    assert!(log.get().is_empty(), "callbacks of cancelled work ran");
    assert!(!transaction::in_atomic_block());
    assert_pool_clean(&db).await;
}

/// A block that inserts `nums` one by one, yielding after each, so that a sibling would
/// interleave if it could.
async fn insert_yielding<C: Backend>(nums: [i32; 2]) -> Result<(), Error> {
    transaction::atomic(async || {
        for num in nums {
            insert_ambient::<C>(num).await?;
            yield_now().await;
        }
        Ok(())
    })
    .await
}

// Rule A3: `join!`ed siblings share the alias's one connection, one block at a time.
async fn joined_sibling_blocks_take_turns<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    transaction::atomic(async || {
        let (first, second) = tokio::join!(
            insert_yielding::<C>([10, 11]),
            insert_yielding::<C>([20, 21])
        );
        first?;
        second?;
        assert_eq!(visible_ambient::<C>().await?, [10, 11, 20, 21]);
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    // In insertion order: the second sibling began after the first one had ended.
    assert_eq!(db.committed().await, [10, 11, 20, 21]);
    assert_pool_clean(&db).await;
}

// Rule A3 with X2: a failing sibling rolls back its savepoint only.
async fn joined_sibling_block_failing_rolls_back_alone<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Log::default();
    transaction::atomic(async || {
        let (ok, failed) = tokio::join!(
            transaction::atomic(async || {
                insert_ambient::<C>(10).await?;
                log.on_commit("ok")?;
                yield_now().await;
                insert_ambient::<C>(11).await?;
                Ok::<(), Error>(())
            }),
            transaction::atomic(async || {
                insert_ambient::<C>(20).await?;
                log.on_commit("failed")?;
                yield_now().await;
                Err::<(), _>(Error::TransactionManagement("oops".into()))
            })
        );
        ok?;
        assert!(failed.is_err());
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.committed().await, [10, 11]);
    assert_eq!(log.get(), ["ok"]);
}

// Rule A3: the alias's connection lent to a closure cannot be asked for again.
async fn block_inside_connection_closure_is_connection_in_use<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let nested = |label: &'static str| async move {
        let inner = transaction::atomic(async || insert_ambient::<C>(1).await).await;
        match inner {
            Err(Error::ConnectionInUse { alias }) => assert_eq!(alias, "default"),
            other => panic!("{label}: expected Error::ConnectionInUse, got {other:?}"),
        }
        Ok::<(), Error>(())
    };
    // In autocommit mode, and inside a block.
    within(
        Duration::from_secs(5),
        "a block inside aio::connection",
        aio::connection(async |_: &mut C| nested("autocommit").await),
    )
    .await
    .unwrap();
    within(
        Duration::from_secs(5),
        "a block inside aio::connection inside a block",
        transaction::atomic(async || {
            aio::connection(async |_: &mut C| nested("in a block").await).await
        }),
    )
    .await
    .unwrap();
    assert_eq!(db.committed().await, Vec::<i32>::new());
    assert_pool_clean(&db).await;
}

// Rule A1: a spawned task has no state of its own yet; its block is a transaction of its own.
async fn spawned_block_is_an_independent_transaction<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 2).await;
    let databases = db.databases.clone();
    transaction::atomic(async || {
        insert_ambient::<C>(1).await?;
        let spawned = tokio::spawn(with_registry(
            databases.clone(),
            transaction::atomic(async || {
                assert!(transaction::in_atomic_block());
                let seen = visible_ambient::<C>().await?;
                // SQLite has one writer: the parent's open write transaction holds the lock
                // the child would wait for while the parent waits for the child.
                if C::KIND != Kind::Sqlite {
                    insert_ambient::<C>(2).await?;
                }
                Ok::<_, Error>(seen)
            }),
        ));
        let seen = spawned.await.expect("the spawned task")?;
        assert_eq!(
            seen,
            Vec::<i32>::new(),
            "the child saw the parent's uncommitted row"
        );
        // The child committed on its own, the parent is still open.
        let child_row = if C::KIND == Kind::Sqlite {
            vec![]
        } else {
            vec![2]
        };
        assert_eq!(db.committed().await, child_row);
        assert!(transaction::in_atomic_block());
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    let mut all = db.committed().await;
    all.sort();
    let expected = if C::KIND == Kind::Sqlite {
        vec![1]
    } else {
        vec![1, 2]
    };
    assert_eq!(all, expected);
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

// API.md §9: the futures are Send, so blocks run under tokio::spawn.
async fn atomic_future_is_send<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Log::default();
    let task_log = log.clone();
    let block = assert_send(transaction::atomic(async move || {
        insert_ambient::<C>(7).await?;
        task_log.on_commit("committed")?;
        Atomic::new()
            .run(async || insert_ambient::<C>(8).await)
            .await?;
        Ok::<(), Error>(())
    }));
    tokio::spawn(with_registry(db.databases.clone(), block))
        .await
        .expect("the spawned task")
        .unwrap();
    assert_eq!(db.committed().await, [7, 8]);
    assert_eq!(log.get(), ["committed"]);
}

// Rules C3 and A4: registration order over all levels, after the COMMIT, before the block's
// future resolves; async callbacks awaited there.
async fn callbacks_run_in_order_after_commit<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Log::default();
    let url = db.url.clone();
    transaction::atomic(async || {
        insert_ambient::<C>(1).await?;
        log.on_commit("plain 1")?;
        let (async_log, url) = (log.clone(), url.clone());
        transaction::on_commit_async(async move {
            // Awaits, so the callbacks after it wait for it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut conn = C::establish(&url).await.expect("connect");
            let committed = conn.nums().await.expect("read things");
            async_log.push(format!("async 2 sees {committed:?}"));
        })?;
        transaction::atomic(async || {
            log.on_commit("nested 3")?;
            Ok::<(), Error>(())
        })
        .await?;
        let async_log = log.clone();
        transaction::on_commit_async(async move { async_log.push("async 4") })?;
        log.on_commit("plain 5")?;
        yield_now().await;
        assert!(log.get().is_empty(), "a callback ran before the COMMIT");
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    // All ran before the block's future resolved, in registration order.
    assert_eq!(
        log.get(),
        [
            "plain 1",
            "async 2 sees [1]",
            "nested 3",
            "async 4",
            "plain 5"
        ]
    );
}

// Rules C2 and A4: a rolled-back transaction runs none of its callbacks, plain or async.
async fn callbacks_never_run_for_a_rolled_back_block<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Log::default();
    let result = transaction::atomic(async || {
        insert_ambient::<C>(1).await?;
        log.on_commit("plain")?;
        let async_log = log.clone();
        transaction::on_commit_async(async move { async_log.push("async") })?;
        Err::<(), _>(Error::TransactionManagement("oops".into()))
    })
    .await;
    assert!(matches!(result, Err(Error::TransactionManagement(_))));
    // And with the rollback flag (an Ok block).
    transaction::atomic(async || {
        insert_ambient::<C>(2).await?;
        let async_log = log.clone();
        transaction::on_commit_async(async move { async_log.push("async") })?;
        transaction::set_rollback(true)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(log.get().is_empty(), "callbacks of rolled-back work ran");
    assert_eq!(db.committed().await, Vec::<i32>::new());
    assert_pool_clean(&db).await;
}

// Rule F2 (Django: AtomicMiscTests / test_mark_for_rollback_on_error_in_transaction): the
// flag rolls back without an error, in an outermost block and in a savepoint.
async fn set_rollback_rolls_back_without_error<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let value = transaction::atomic(async || {
        insert_ambient::<C>(1).await?;
        transaction::set_rollback(true)?;
        assert!(transaction::get_rollback()?);
        Ok::<i32, Error>(42)
    })
    .await
    .unwrap();
    assert_eq!(value, 42, "a silent rollback returns the Ok value");
    assert_eq!(db.committed().await, Vec::<i32>::new());
    transaction::atomic(async || {
        insert_ambient::<C>(2).await?;
        transaction::atomic(async || {
            insert_ambient::<C>(3).await?;
            transaction::set_rollback(true)
        })
        .await?;
        assert!(!transaction::get_rollback()?);
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.committed().await, [2]);
    assert!(matches!(
        transaction::get_rollback(),
        Err(Error::NotInAtomicBlock { .. })
    ));
}

// Rule E1 (Django: DurableTests.test_nested_outer_durable / test_nested_inner_durable).
async fn durable_block_inside_a_block_is_an_error<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    transaction::atomic(async || {
        insert_ambient::<C>(1).await?;
        let nested = Atomic::new()
            .durable(true)
            .run(async || insert_ambient::<C>(2).await)
            .await;
        match nested {
            Err(Error::DurableNested { alias }) => assert_eq!(alias, "default"),
            other => panic!("expected Error::DurableNested, got {other:?}"),
        }
        // No SQL, no state change: the outer block is not marked for rollback.
        assert!(!transaction::get_rollback()?);
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.committed().await, [1]);
    // Outermost, a durable block is an ordinary transaction.
    Atomic::new()
        .durable(true)
        .run(async || insert_ambient::<C>(3).await)
        .await
        .unwrap();
    assert_eq!(db.committed().await, [1, 3]);
}

// Rules X2 and C2 (Django: AtomicTests.test_nested_commit_rollback,
// TestConnectionOnCommit.test_discards_hooks_from_rolled_back_savepoint).
async fn rolled_back_savepoint_keeps_outer_work_and_drops_its_callbacks<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let log = Log::default();
    transaction::atomic(async || {
        insert_ambient::<C>(1).await?;
        log.on_commit("outer before")?;
        let inner = transaction::atomic(async || {
            insert_ambient::<C>(2).await?;
            log.on_commit("inner")?;
            let async_log = log.clone();
            transaction::on_commit_async(async move { async_log.push("inner async") })?;
            Err::<(), _>(Error::TransactionManagement("oops".into()))
        })
        .await;
        assert!(inner.is_err());
        assert_eq!(visible_ambient::<C>().await?, [1]);
        log.on_commit("outer after")?;
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(db.committed().await, [1]);
    assert_eq!(log.get(), ["outer before", "outer after"]);
}
