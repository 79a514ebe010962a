//! First checks of the async runtime on SQLite.
#![cfg(feature = "async")]

use diesel::SqliteConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use diesel_atomic::{Database, Databases, Error, aio};

type Conn = SyncConnectionWrapper<SqliteConnection>;

#[tokio::test(flavor = "multi_thread")]
async fn commits_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("db.sqlite").display().to_string();
    let manager = AsyncDieselConnectionManager::<Conn>::new(url.clone());
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let _g = Databases::new()
        .add("default", Database::new_async(pool))
        .enter();
    aio::connection(async |c: &mut Conn| c.batch_execute("CREATE TABLE t (id INTEGER)").await)
        .await
        .unwrap();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = ran.clone();
    aio::transaction::atomic(async || {
        aio::connection(async |c: &mut Conn| c.batch_execute("INSERT INTO t VALUES (1)").await)
            .await?;
        aio::transaction::on_commit(move || {
            r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })?;
        let inner: Result<(), Error> = aio::transaction::atomic(async || {
            aio::connection(async |c: &mut Conn| c.batch_execute("INSERT INTO t VALUES (2)").await)
                .await?;
            Err(Error::TransactionManagement("fail".into()))
        })
        .await;
        assert!(inner.is_err());
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(count(&url).await, 1);
}

async fn count(url: &str) -> i64 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = Conn::establish(url).await.unwrap();
    diesel::sql_query("SELECT COUNT(*) AS n FROM t")
        .load::<Count>(&mut conn)
        .await
        .unwrap()[0]
        .n
}

mod attribute {
    use super::*;
    use diesel_atomic::atomic;

    #[atomic]
    async fn insert_ambient(id: i32) -> Result<(), Error> {
        aio::connection(async |c: &mut Conn| {
            c.batch_execute(&format!("INSERT INTO t VALUES ({id})"))
                .await
        })
        .await?;
        Ok(())
    }

    #[atomic]
    async fn insert_explicit(conn: &mut Conn, id: i32) -> Result<(), Error> {
        conn.batch_execute(&format!("INSERT INTO t VALUES ({id})"))
            .await?;
        if id < 0 {
            return Err(Error::TransactionManagement("negative".into()));
        }
        Ok(())
    }

    struct Repo {
        conn: Conn,
    }

    impl Repo {
        #[atomic(conn = self.conn)]
        async fn insert(&mut self, id: i32) -> Result<(), Error> {
            self.conn
                .batch_execute(&format!("INSERT INTO t VALUES ({id})"))
                .await?;
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn async_fn_blocks_commit_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("db.sqlite").display().to_string();
        let manager = AsyncDieselConnectionManager::<Conn>::new(url.clone());
        let pool = Pool::builder(manager).max_size(2).build().unwrap();
        // A spawned task runs on a worker thread: it sees the installed registry (`enter` is
        // per thread).
        Databases::new()
            .add("default", Database::new_async(pool))
            .install()
            .unwrap();
        aio::connection(async |c: &mut Conn| c.batch_execute("CREATE TABLE t (id INTEGER)").await)
            .await
            .unwrap();
        // Send: the future of an #[atomic] async fn runs under tokio::spawn.
        tokio::spawn(insert_ambient(1)).await.unwrap().unwrap();
        let mut conn = Conn::establish(&url).await.unwrap();
        insert_explicit(&mut conn, 2).await.unwrap();
        assert!(insert_explicit(&mut conn, -3).await.is_err());
        let mut repo = Repo { conn };
        repo.insert(4).await.unwrap();
        assert_eq!(count(&url).await, 3);
    }
}

/// Blocks nested in `aio::connection` in blocks, polled on the test thread (2 MiB of stack,
/// as tokio's workers have): the futures must not overflow it, in debug builds too.
#[tokio::test(flavor = "multi_thread")]
async fn nested_blocks_fit_a_worker_stack() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("db.sqlite").display().to_string();
    let manager = AsyncDieselConnectionManager::<Conn>::new(url.clone());
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let _g = Databases::new()
        .add("default", Database::new_async(pool))
        .enter();
    aio::connection(async |c: &mut Conn| c.batch_execute("CREATE TABLE t (id INTEGER)").await)
        .await
        .unwrap();
    aio::transaction::atomic(async || {
        aio::connection(async |c: &mut Conn| {
            aio::transaction::Atomic::new()
                .run_on(c, async |c: &mut Conn| {
                    aio::transaction::Atomic::new()
                        .run_on(c, async |c: &mut Conn| {
                            c.batch_execute("INSERT INTO t VALUES (1)").await
                        })
                        .await
                })
                .await
        })
        .await?;
        aio::transaction::atomic(async || {
            aio::transaction::atomic(async || {
                aio::connection(async |c: &mut Conn| {
                    c.batch_execute("INSERT INTO t VALUES (2)").await
                })
                .await
            })
            .await
        })
        .await?;
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(count(&url).await, 2);
}

/// T1/T2 for async code: work inside a TestTransaction never commits, durable blocks are
/// allowed directly inside it, callbacks never run unless captured and executed.
#[tokio::test(flavor = "multi_thread")]
async fn test_transaction_rolls_back_and_captures_callbacks() {
    use aio::testing::{TestTransaction, capture_on_commit_callbacks};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("db.sqlite").display().to_string();
    let manager = AsyncDieselConnectionManager::<Conn>::new(url.clone());
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let _g = Databases::new()
        .add("default", Database::new_async(pool))
        .enter();
    aio::connection(async |c: &mut Conn| c.batch_execute("CREATE TABLE t (id INTEGER)").await)
        .await
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let test = TestTransaction::begin().await.unwrap();
    let counter = ran.clone();
    let ((), captured) = capture_on_commit_callbacks(false, async {
        aio::transaction::Atomic::new()
            .durable(true)
            .run(async || {
                aio::connection(async |c: &mut Conn| {
                    c.batch_execute("INSERT INTO t VALUES (1)").await
                })
                .await?;
                aio::transaction::on_commit(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                })
            })
            .await
            .unwrap();
    })
    .await;
    assert_eq!(captured.len(), 1);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "inside a test transaction nothing commits"
    );
    // The row is visible inside the test transaction.
    let inside = aio::connection(async |c: &mut Conn| {
        use diesel_async::RunQueryDsl;
        diesel::sql_query("SELECT id FROM t").execute(c).await
    })
    .await;
    assert!(inside.is_ok());
    captured.run().await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    test.rollback().await;
    assert_eq!(count(&url).await, 0);
}

/// A3: sibling `aio::connection` calls under `join!` inside a block take turns on the block's
/// connection (a sibling waits; only code inside a closure is refused).
#[tokio::test(flavor = "multi_thread")]
async fn joined_connection_calls_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("db.sqlite").display().to_string();
    let manager = AsyncDieselConnectionManager::<Conn>::new(url.clone());
    let pool = Pool::builder(manager).max_size(1).build().unwrap();
    let _g = Databases::new()
        .add("default", Database::new_async(pool))
        .enter();
    aio::connection(async |c: &mut Conn| c.batch_execute("CREATE TABLE t (id INTEGER)").await)
        .await
        .unwrap();
    let insert = async |id: i32| {
        aio::connection(async |c: &mut Conn| {
            c.batch_execute(&format!("INSERT INTO t VALUES ({id})"))
                .await?;
            tokio::task::yield_now().await;
            c.batch_execute(&format!("INSERT INTO t VALUES ({})", id + 1))
                .await
        })
        .await
    };
    aio::transaction::atomic(async || {
        let (a, b) = tokio::join!(insert(10), insert(20));
        a?;
        b?;
        // Inside a closure, the alias is in use: refused at once, never a wait.
        let inside = aio::connection(async |_: &mut Conn| {
            aio::connection(async |_: &mut Conn| Ok::<(), Error>(())).await
        })
        .await;
        assert!(
            matches!(inside, Err(Error::ConnectionInUse { .. })),
            "{inside:?}"
        );
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(count(&url).await, 4);
}
