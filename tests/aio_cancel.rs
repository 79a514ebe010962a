//! Rule A2 (docs/SEMANTICS.md): cancellation fails closed.
//!
//! The sweep: for k = 0, 1, 2, … a fresh atomic block future (INSERT, a nested block with a
//! savepoint that INSERTs again, an on_commit callback, `yield_now` between the steps) is
//! polled exactly k times, each poll after the future asked to be woken, and then dropped.
//! Every await point of the block (its BEGIN, SAVEPOINT, statements, RELEASE, COMMIT) is
//! therefore a drop point for some k, until k is large enough for the future to complete.
//! After each drop the test asks the server, never the runtime's bookkeeping:
//!
//! - the pool (size 1) hands out a connection outside any transaction, by the server's
//!   account and diesel's (a leaked connection would make the checkout time out);
//! - no session of the test database is left inside a transaction (PostgreSQL:
//!   `pg_stat_activity`; MariaDB: `innodb_trx`; SQLite: nobody holds the write lock);
//! - nothing of the dropped work is committed, and its callback never ran. The one
//!   exception is inherent: dropped while its COMMIT was on the wire (the body had finished),
//!   the transaction may have committed on the server, all or nothing, and the callback is
//!   lost (rule A4, at most once);
//! - once the future completes, both rows are committed and the callback ran once.
//!
//! Ambient mode (`aio::transaction::atomic`, `Atomic::run`) and explicit mode
//! (`Atomic::run_on` on a connection the test checked out of the pool). In explicit mode the
//! runtime cannot roll back the caller's connection from a destructor; the test shows that
//! the NEXT block on that same connection does not silently run as a savepoint of the stale
//! transaction: it either fails (`Error::StaleTransaction`, or diesel's broken transaction
//! manager) and the pool then discards the connection, or it runs as a real outermost
//! transaction whose row is committed.
//!
//! Three backends, deadpool and bb8.
#![cfg(feature = "async")]

mod common_aio;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use common_aio::{
    Backend, Kind, PATIENCE, PoolKind, TestDb, assert_clean, insert, insert_ambient, within,
};
use diesel_async::SimpleAsyncConnection;
use diesel_atomic::Error;
use diesel_atomic::aio::transaction::{self, Atomic};
use tokio::task::yield_now;

aio_tests!(
    ambient_block_dropped_at_every_await_point,
    explicit_block_dropped_at_every_await_point
);

/// The outer block's row and the nested block's row.
const OUTER: i32 = 1;
const INNER: i32 = 2;
/// The row of the block run on the caller's connection after a drop.
const NEXT: i32 = 3;
/// A block has a few dozen await points; a sweep that never completes is a hang.
const MAX_POLLS: usize = 1000;

/// What the dropped work did: callback runs, and whether its body got to the end.
#[derive(Clone, Default)]
struct Probe {
    callbacks: Arc<AtomicUsize>,
    body_done: Arc<AtomicBool>,
}

impl Probe {
    fn register_callback(&self) -> Result<(), Error> {
        let callbacks = self.callbacks.clone();
        transaction::on_commit(move || {
            callbacks.fetch_add(1, Ordering::SeqCst);
        })
    }

    fn callbacks(&self) -> usize {
        self.callbacks.load(Ordering::SeqCst)
    }

    fn body_done(&self) -> bool {
        self.body_done.load(Ordering::SeqCst)
    }
}

/// The ambient block: the default alias's connection, from the pool.
async fn ambient_work<C: Backend>(probe: Probe) -> Result<(), Error> {
    transaction::atomic(async || {
        yield_now().await;
        insert_ambient::<C>(OUTER).await?;
        yield_now().await;
        Atomic::new()
            .run(async || {
                yield_now().await;
                insert_ambient::<C>(INNER).await?;
                yield_now().await;
                Ok::<(), Error>(())
            })
            .await?;
        yield_now().await;
        probe.register_callback()?;
        yield_now().await;
        probe.body_done.store(true, Ordering::SeqCst);
        Ok(())
    })
    .await
}

/// The same block in explicit mode, on the caller's connection.
async fn explicit_work<C: Backend>(conn: &mut C, probe: Probe) -> Result<(), Error> {
    Atomic::new()
        .run_on(conn, async |conn: &mut C| {
            yield_now().await;
            insert(conn, OUTER).await?;
            yield_now().await;
            Atomic::new()
                .run_on(conn, async |conn: &mut C| {
                    yield_now().await;
                    insert(conn, INNER).await?;
                    yield_now().await;
                    Ok::<(), Error>(())
                })
                .await?;
            yield_now().await;
            probe.register_callback()?;
            yield_now().await;
            probe.body_done.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await
}

/// A waker that lets the sweep wait until the polled future asked to be polled again.
#[derive(Default)]
struct Signal(tokio::sync::Notify);

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
}

/// Polls `future` at most `polls` times, each poll but the first after the future woke its
/// waker, and drops it; returns its output if it completed.
async fn poll_times<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    // On the heap: the test's whole future lives on the test thread's stack.
    let mut future = Box::pin(future);
    let signal = Arc::new(Signal::default());
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    for poll in 0..polls {
        if poll > 0 {
            within(PATIENCE, "the block's wake-up", signal.0.notified()).await;
        }
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
    }
    None
}

/// What the test database holds after the dropped (or completed) work, checked on a
/// connection of the pool; then emptied for the next round.
async fn check_dropped_work<C: Backend>(db: &TestDb<C>, probe: &Probe, completed: bool, k: usize) {
    let mut conn = db.pool.get().await;
    assert_clean(&mut *conn).await;
    db.assert_no_open_transaction_elsewhere(&mut conn).await;
    let committed = conn.nums().await.expect("read things");
    let committed: Vec<i32> = committed.into_iter().filter(|num| *num != NEXT).collect();
    if completed {
        assert_eq!(
            committed,
            [OUTER, INNER],
            "k = {k}: the completed block committed"
        );
        assert_eq!(probe.callbacks(), 1, "k = {k}: its callback ran once");
    } else {
        assert_eq!(
            probe.callbacks(),
            0,
            "k = {k}: a dropped block's callback never runs"
        );
        if probe.body_done() {
            // Dropped during the COMMIT: whatever the server did, it did atomically.
            assert!(
                committed.is_empty() || committed == [OUTER, INNER],
                "k = {k}: dropped during its COMMIT, the block committed part of its work: {committed:?}"
            );
        } else {
            assert!(
                committed.is_empty(),
                "k = {k}: a dropped block committed {committed:?}"
            );
        }
    }
    conn.batch_execute("DELETE FROM things")
        .await
        .expect("clean up");
}

/// Rounds k = 0, 1, 2, … of `round` until the block completes; returns that k.
async fn sweep<Round, Fut>(mut round: Round) -> usize
where
    Round: FnMut(usize) -> Fut,
    Fut: Future<Output = bool>,
{
    for k in 0..MAX_POLLS {
        if round(k).await {
            // BEGIN, two INSERTs, SAVEPOINT, RELEASE, COMMIT and six yields: fewer polls
            // would mean the sweep skipped the points it is about.
            assert!(k >= 6, "the block completed after only {k} polls");
            return k;
        }
    }
    panic!("the block did not complete within {MAX_POLLS} polls");
}

async fn ambient_block_dropped_at_every_await_point<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    sweep(async |k| {
        let probe = Probe::default();
        let output = poll_times(ambient_work::<C>(probe.clone()), k).await;
        if let Some(result) = &output {
            result
                .as_ref()
                .expect("the block, polled to the end, succeeds");
        }
        check_dropped_work(&db, &probe, output.is_some(), k).await;
        output.is_some()
    })
    .await;
}

async fn explicit_block_dropped_at_every_await_point<C: Backend>(pool: PoolKind) {
    let db = TestDb::<C>::new(pool, 1).await;
    let stale = std::cell::Cell::new(0);
    sweep(async |k| {
        let probe = Probe::default();
        let mut conn = db.pool.get().await;
        let session = conn.session_id().await.expect("session id");
        let output = poll_times(explicit_work::<C>(&mut conn, probe.clone()), k).await;
        if let Some(result) = &output {
            result
                .as_ref()
                .expect("the block, polled to the end, succeeds");
        }
        // The next block on the same connection: never a savepoint of a stale transaction.
        let next = Atomic::new()
            .run_on(&mut *conn, async |conn: &mut C| {
                insert(conn, NEXT).await?;
                Ok::<(), Error>(())
            })
            .await;
        let refused = match next {
            Ok(()) => {
                // It ran as an outermost transaction: committed, seen from another session.
                assert!(
                    db.committed().await.contains(&NEXT),
                    "k = {k}: the next block on the caller's connection returned Ok but its \
                     row is not committed (it ran inside the dropped block's transaction)"
                );
                assert_clean(&mut *conn).await;
                false
            }
            Err(Error::StaleTransaction { alias }) => {
                assert_eq!(alias, "default");
                stale.set(stale.get() + 1);
                true
            }
            Err(Error::Database(diesel::result::Error::BrokenTransactionManager)) => true,
            Err(other) => panic!("k = {k}: unexpected error from the next block: {other}"),
        };
        if refused {
            assert!(
                output.is_none(),
                "k = {k}: a completed block left its connection unusable"
            );
        }
        drop(conn);
        if refused && C::KIND != Kind::Sqlite {
            // The pool discarded the refused connection: the next checkout is a new session.
            let mut conn = db.pool.get().await;
            assert_ne!(
                conn.session_id().await.expect("session id"),
                session,
                "k = {k}: the pool handed out the connection left inside a stale transaction"
            );
        }
        check_dropped_work(&db, &probe, output.is_some(), k).await;
        output.is_some()
    })
    .await;
    // Dropped inside its body, the block left its transaction open on the caller's
    // connection: the sweep must have met that case, and refused the stale transaction.
    assert!(stale.get() > 0, "no round ended in Error::StaleTransaction");
}
