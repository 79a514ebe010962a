//! Per-request transactions for async views (`aio::request`, rules Q1–Q3 and A2), on the
//! real servers: a view's work on an `atomic_requests` alias is one transaction, begun at
//! its first use, committed when the view returns `Ok`, rolled back on `Err`, on a panic and
//! when the request's future is dropped (a client that went away); `#[non_atomic_requests]`
//! exempts an async view. The `port` module is tests/requests.rs (Django's
//! `TransactionsPerRequestTests` and ours), test by test, for async views.
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
    a_request_dropped_before_it_used_the_database_leaves_the_running_one_alone,
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

// A request takes its table at its first use of the runtime (A1). One dropped before that,
// wherever it is dropped, has nothing to abandon: its guard must not take the request that
// happens to be running there for its own (which would then neither commit nor roll back).
async fn a_request_dropped_before_it_used_the_database_leaves_the_running_one_alone<C: Backend>(
    pool: PoolKind,
) {
    let db = TestDb::<C>::new(pool, 1).await;
    let _registry = atomic_requests(&db);
    let mut waiting = Box::pin(aio::request(async {
        std::future::pending::<()>().await;
        Ok::<(), Error>(())
    }));
    assert!(futures_util::poll!(waiting.as_mut()).is_pending());
    aio::request(async {
        insert_ambient::<C>(1).await?;
        drop(waiting);
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(
        db.committed().await,
        [1],
        "the running request did not commit"
    );
    assert_clean(&mut *db.pool.get().await).await;
}

// --- The port of tests/requests.rs (Django's TransactionsPerRequestTests and ours) ----------

mod port {
    //! tests/requests.rs, test by test, for async views (`aio::request`).

    use super::common_aio::{
        Backend, PoolKind, TestDb, TestError, assert_pool_clean, catch_unwind, create_reporter,
        create_reporter_on, insert_reporter,
    };
    use diesel_atomic::aio::{self, transaction, transaction::Atomic};
    use diesel_atomic::{Databases, DatabasesGuard, Error, atomic, non_atomic_requests};

    /// Enters a registry over the test's databases with `atomic_requests` as given per alias.
    fn with_atomic_requests<C: Backend>(
        db: &TestDb<C>,
        default: bool,
        other: bool,
    ) -> DatabasesGuard {
        let (other_pool, _) = db.other.as_ref().expect("the test has the alias \"other\"");
        Databases::new()
            .add("default", db.pool.database().atomic_requests(default))
            .add("other", other_pool.database().atomic_requests(other))
            .enter()
    }

    async fn add<C: Backend>(name: &str) -> Result<(), TestError> {
        Ok(create_reporter::<C>(name, "").await?)
    }

    async fn add_to<C: Backend>(alias: &str, name: &str) -> Result<(), TestError> {
        Ok(create_reporter_on::<C>(alias, name, "").await?)
    }

    // --- Django's views (tests/handlers/views.py) -------------------------------------------

    async fn in_transaction() -> Result<bool, TestError> {
        Ok(transaction::in_atomic_block())
    }

    #[non_atomic_requests]
    async fn not_in_transaction() -> Result<bool, TestError> {
        Ok(transaction::in_atomic_block())
    }

    #[non_atomic_requests(using = "default")]
    async fn not_in_transaction_using_default() -> Result<bool, TestError> {
        Ok(transaction::in_atomic_block())
    }

    #[non_atomic_requests(using = "incorrect")]
    async fn not_in_transaction_using_text() -> Result<bool, TestError> {
        Ok(transaction::in_atomic_block())
    }

    // --- TransactionsPerRequestTests ---------------------------------------------------------

    pub(super) async fn test_no_transaction<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, false, false);
        assert_eq!(aio::request(in_transaction()).await, Ok(false));
    }

    pub(super) async fn test_auto_transaction<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        assert_eq!(aio::request(in_transaction()).await, Ok(true));
        assert!(!transaction::in_atomic_block(), "only the view is wrapped");
    }

    // Django's test_async_view has its counterpart here: every view is async.
    pub(super) async fn test_no_auto_transaction<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        assert_eq!(aio::request(not_in_transaction()).await, Ok(false));
        assert_eq!(
            aio::request(not_in_transaction_using_default()).await,
            Ok(false)
        );
        assert_eq!(
            aio::request(not_in_transaction_using_text()).await,
            Ok(true)
        );
    }

    // --- Commit, rollback, panic --------------------------------------------------------------

    pub(super) async fn a_view_that_returns_ok_commits_and_then_runs_its_callbacks<C: Backend>(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        let notified = super::common_aio::Notified::default();
        let notify = notified.clone();
        let result = aio::request(async {
            add::<C>("Tintin").await?;
            add::<C>("Haddock").await?;
            transaction::on_commit(move || notify.push(1))?;
            assert!(transaction::in_atomic_block());
            Ok::<_, TestError>("created")
        })
        .await;
        assert_eq!(result, Ok("created"));
        assert_eq!(notified.get(), [1]);
        assert_eq!(db.reporters_on("default").await, ["Haddock", "Tintin"]);
        assert_pool_clean(&db, 1).await;
    }

    pub(super) async fn a_view_that_returns_err_rolls_back_all_of_its_work<C: Backend>(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        let notified = super::common_aio::Notified::default();
        let notify = notified.clone();
        let result = aio::request(async {
            add::<C>("Tintin").await?;
            transaction::on_commit(move || notify.push(1))?;
            // A nested block that committed its savepoint is rolled back with the request.
            transaction::atomic(async || add::<C>("Haddock").await).await?;
            Err::<(), _>(TestError::Oops)
        })
        .await;
        assert_eq!(result, Err(TestError::Oops));
        assert!(notified.get().is_empty());
        assert!(db.reporters_on("default").await.is_empty());
        assert!(!transaction::in_atomic_block());
        assert_pool_clean(&db, 1).await;
    }

    pub(super) async fn a_view_that_panics_rolls_back_and_the_next_request_works<C: Backend>(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        let outcome = catch_unwind(aio::request(async {
            add::<C>("Tintin").await?;
            if transaction::in_atomic_block() {
                panic!("view failed");
            }
            Ok::<(), TestError>(())
        }))
        .await;
        let payload = outcome.expect_err("the panic resumes after the rollback");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"view failed"));
        assert!(db.reporters_on("default").await.is_empty());
        assert!(!transaction::in_atomic_block());

        aio::request(add::<C>("Calculus")).await.unwrap();
        assert_eq!(db.reporters_on("default").await, ["Calculus"]);
        assert_pool_clean(&db, 1).await;
    }

    /// Django's advice for views that turn an error into a response: `set_rollback(True)`.
    pub(super) async fn set_rollback_in_a_view_that_returns_ok_rolls_back_without_an_error<
        C: Backend,
    >(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        let result = aio::request(async {
            add::<C>("Tintin").await?;
            transaction::set_rollback(true)?;
            Ok::<_, TestError>("error page")
        })
        .await;
        assert_eq!(result, Ok("error page"));
        assert!(db.reporters_on("default").await.is_empty());
    }

    // --- What the view's own blocks become ----------------------------------------------------

    pub(super) async fn the_views_blocks_are_savepoints_of_the_request<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        aio::request(async {
            add::<C>("Tintin").await?;
            let failed = transaction::atomic(async || {
                add::<C>("Haddock").await?;
                Err::<(), _>(TestError::Oops)
            })
            .await;
            assert_eq!(failed, Err(TestError::Oops));
            let durable = Atomic::new()
                .durable(true)
                .run(async || Ok::<_, TestError>(()))
                .await;
            assert!(
                matches!(&durable, Err(TestError::Atomic(message)) if message.contains("durable")),
                "a durable block inside an atomic request is nested (Django raises too): \
                 {durable:?}"
            );
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        assert_eq!(db.reporters_on("default").await, ["Tintin"]);
    }

    #[atomic(durable = true)]
    async fn durable_add<C: Backend>(name: &str) -> Result<(), TestError> {
        add::<C>(name).await
    }

    /// An exempt view's blocks are outermost transactions: each commits at its own end, even
    /// when the view fails afterwards, and `durable = true` is allowed.
    #[non_atomic_requests]
    async fn bulk_import<C: Backend>(names: &[&str]) -> Result<(), TestError> {
        assert!(!transaction::in_atomic_block());
        for name in names {
            durable_add::<C>(name).await?;
            assert!(!transaction::in_atomic_block());
        }
        add::<C>("autocommitted").await?;
        Err(TestError::Oops)
    }

    pub(super) async fn an_exempt_view_runs_in_autocommit_mode<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        let result = aio::request(bulk_import::<C>(&["Tintin", "Haddock"])).await;
        assert_eq!(result, Err(TestError::Oops));
        assert_eq!(
            db.reporters_on("default").await,
            ["Haddock", "Tintin", "autocommitted"]
        );
        assert_pool_clean(&db, 1).await;
    }

    #[non_atomic_requests(using = "other")]
    async fn exempt_other_view<C: Backend>() -> Result<(bool, bool), TestError> {
        add_to::<C>("other", "autocommitted").await?;
        add::<C>("Tintin").await?;
        Ok((
            transaction::in_atomic_block(),
            aio::db("other").in_atomic_block(),
        ))
    }

    /// The exemption lasts while the exempt function runs, and covers only its alias.
    pub(super) async fn an_exemption_covers_its_alias_only<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, true);
        let result = aio::request(async {
            let seen = exempt_other_view::<C>().await?;
            Err::<(bool, bool), _>(TestError::Atomic(format!("{seen:?}")))
        })
        .await;
        assert_eq!(result, Err(TestError::Atomic("(true, false)".into())));
        assert!(
            db.reporters_on("default").await.is_empty(),
            "default rolled back"
        );
        assert_eq!(db.reporters_on("other").await, ["autocommitted"]);
    }

    #[non_atomic_requests]
    #[non_atomic_requests(using = "other")]
    async fn exempt_both_view<C: Backend>() -> Result<(), TestError> {
        add::<C>("Tintin").await?;
        add_to::<C>("other", "Haddock").await?;
        assert!(!transaction::in_atomic_block());
        assert!(!aio::db("other").in_atomic_block());
        Err(TestError::Oops)
    }

    /// Stacked attributes exempt several aliases.
    pub(super) async fn stacked_exemptions_cover_each_alias<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, true);
        assert_eq!(
            aio::request(exempt_both_view::<C>()).await,
            Err(TestError::Oops)
        );
        assert_eq!(db.reporters_on("default").await, ["Tintin"]);
        assert_eq!(db.reporters_on("other").await, ["Haddock"]);
    }

    // --- Several aliases (Q3) ----------------------------------------------------------------

    pub(super) async fn two_aliases_are_two_transactions_committed_in_registration_order<
        C: Backend,
    >(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, true);
        let other_url = db.url_of("other").to_owned();
        let seen = super::common_aio::Notified::default();
        let seen_in_callback = seen.clone();
        aio::request(async {
            add::<C>("Tintin").await?;
            add_to::<C>("other", "Haddock").await?;
            // "default" commits first; "other" has not committed when its callbacks run.
            transaction::on_commit_async(async move {
                let mut raw = C::establish(&other_url).await.expect("connect");
                let rows = raw.reporter_rows().await.expect("read");
                seen_in_callback.push(rows.len() as i32);
            })?;
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        assert_eq!(seen.get(), [0]);
        assert_eq!(db.reporters_on("default").await, ["Tintin"]);
        assert_eq!(db.reporters_on("other").await, ["Haddock"]);

        let failed = aio::request(async {
            add::<C>("Calculus").await?;
            add_to::<C>("other", "Nestor").await?;
            Err::<(), _>(TestError::Oops)
        })
        .await;
        assert_eq!(failed, Err(TestError::Oops));
        assert_eq!(db.reporters_on("default").await, ["Tintin"]);
        assert_eq!(db.reporters_on("other").await, ["Haddock"]);
        assert_pool_clean(&db, 1).await;
    }

    /// The request's transaction runs on the alias's pooled connection; a block on a
    /// connection of the view's own cannot join it, so it is refused rather than committed on
    /// its own. An exempt view may use one.
    pub(super) async fn an_explicit_connection_is_refused_in_an_atomic_request_and_fine_in_an_exempt_view<
        C: Backend,
    >(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, true);
        let mut own = C::establish(db.url_of("other")).await.expect("connect");
        aio::request(async {
            add::<C>("Tintin").await?;
            let refused = Atomic::new()
                .using("other")
                .run_on(&mut own, async |conn: &mut C| {
                    insert_reporter(conn, "Haddock", "").await?;
                    Ok::<_, TestError>(())
                })
                .await;
            assert!(
                matches!(&refused, Err(TestError::Atomic(message)) if message.contains("'other'")),
                "{refused:?}"
            );
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        assert_eq!(db.reporters_on("default").await, ["Tintin"]);
        assert!(db.reporters_on("other").await.is_empty());

        #[non_atomic_requests(using = "other")]
        async fn exempt<C: Backend>(own: &mut C) -> Result<(), TestError> {
            Atomic::new()
                .using("other")
                .run_on(own, async |conn: &mut C| {
                    insert_reporter(conn, "Haddock", "").await?;
                    Ok::<_, TestError>(())
                })
                .await
        }
        aio::request(exempt(&mut own)).await.unwrap();
        assert_eq!(db.reporters_on("other").await, ["Haddock"]);
    }

    /// Q3: no two-phase commit. "default" commits first; when its COMMIT fails (a deferred
    /// foreign key: SQLite and PostgreSQL), "other" is rolled back and the COMMIT's error is
    /// returned.
    pub(super) async fn a_failed_commit_rolls_back_the_aliases_after_it<C: Backend>(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        db.raw()
            .await
            .batch_execute(
                "CREATE TABLE parents (id INTEGER PRIMARY KEY);
                 CREATE TABLE children (
                     id INTEGER PRIMARY KEY,
                     parent_id INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
                 );",
            )
            .await
            .unwrap();
        let _registry = with_atomic_requests(&db, true, true);
        let notified = super::common_aio::Notified::default();
        let notify = notified.clone();
        let result = aio::request(async {
            add_to::<C>("other", "Haddock")
                .await
                .map_err(|_| Error::RequestNested)?;
            aio::connection(async |conn: &mut C| {
                conn.batch_execute("INSERT INTO children (id, parent_id) VALUES (1, 42)")
                    .await
                    .map_err(Error::from)
            })
            .await?;
            aio::db("other").on_commit(move || notify.push(1))?;
            Ok::<_, Error>(())
        })
        .await;
        assert!(
            matches!(
                &result,
                Err(Error::Database(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                    _
                )))
            ),
            "{result:?}"
        );
        assert!(
            db.reporters_on("other").await.is_empty(),
            "other rolled back"
        );
        assert!(notified.get().is_empty());
        assert!(!transaction::in_atomic_block());
        assert_pool_clean(&db, 1).await;
    }

    // --- Misuse ------------------------------------------------------------------------------

    pub(super) async fn request_inside_a_request_is_an_error<C: Backend>(pool: PoolKind) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, true, false);
        let result = aio::request(async {
            add::<C>("Tintin").await?;
            let inner = aio::request(async { Ok::<_, Error>(()) }).await;
            assert!(matches!(&inner, Err(Error::RequestNested)), "{inner:?}");
            Ok::<_, TestError>(())
        })
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(db.reporters_on("default").await, ["Tintin"]);
    }

    pub(super) async fn without_atomic_requests_the_view_runs_in_autocommit_mode<C: Backend>(
        pool: PoolKind,
    ) {
        let db = TestDb::<C>::with_other(pool, 1).await;
        let _registry = with_atomic_requests(&db, false, false);
        let result = aio::request(async {
            add::<C>("Tintin").await?;
            Err::<(), _>(TestError::Oops)
        })
        .await;
        assert_eq!(result, Err(TestError::Oops));
        assert_eq!(db.reporters_on("default").await, ["Tintin"]);
    }
}

mod ported {
    use super::port::*;
    use crate::aio_tests;

    aio_tests!(deadpool:
        test_no_transaction,
        test_auto_transaction,
        test_no_auto_transaction,
        a_view_that_returns_ok_commits_and_then_runs_its_callbacks,
        a_view_that_returns_err_rolls_back_all_of_its_work,
        a_view_that_panics_rolls_back_and_the_next_request_works,
        set_rollback_in_a_view_that_returns_ok_rolls_back_without_an_error,
        the_views_blocks_are_savepoints_of_the_request,
        an_exempt_view_runs_in_autocommit_mode,
        an_exemption_covers_its_alias_only,
        stacked_exemptions_cover_each_alias,
        two_aliases_are_two_transactions_committed_in_registration_order,
        an_explicit_connection_is_refused_in_an_atomic_request_and_fine_in_an_exempt_view,
        request_inside_a_request_is_an_error,
        without_atomic_requests_the_view_runs_in_autocommit_mode,
    );

    mod deferred_constraints {
        use super::super::port::a_failed_commit_rolls_back_the_aliases_after_it;

        mod sqlite {
            crate::aio_tests!(@pools crate::common_aio::Sqlite, [] [deadpool]
                [a_failed_commit_rolls_back_the_aliases_after_it]);
        }
        #[cfg(feature = "async-postgres")]
        mod postgres {
            crate::aio_tests!(@pools diesel_async::AsyncPgConnection, [] [deadpool]
                [a_failed_commit_rolls_back_the_aliases_after_it]);
        }
    }
}
