//! What `diesel_atomic::axum` logs when a request panics: the view's panic, or a plain
//! on_commit callback's after a COMMIT, with which aliases committed and which rolled back.
//! A binary of its own: the views run on tokio's blocking threads, so the log collector is
//! installed process-wide.

mod captured_logs;

use std::sync::Mutex;

use diesel::SqliteConnection;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_atomic::axum::{ViewError, run_view_in};
use diesel_atomic::{Database, Databases, Error, db, transaction};

const CALLBACK_PANIC: &str = "axum_logs: the welcome mail failed";
const VIEW_PANIC: &str = "axum_logs: the view failed";

/// Both tests install the same process-wide collector: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn databases() -> Databases {
    let pool = || {
        let pool = Pool::builder()
            .max_size(1)
            .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
            .unwrap();
        pool.get()
            .unwrap()
            .batch_execute("CREATE TABLE t (n INTEGER)")
            .unwrap();
        pool
    };
    Databases::new()
        .add("default", Database::new(pool()).atomic_requests(true))
        .add("other", Database::new(pool()).atomic_requests(true))
}

fn insert(alias: &str) -> Result<(), Error> {
    db(alias).connection(|conn: &mut SqliteConnection| {
        Ok(conn.batch_execute("INSERT INTO t VALUES (1)")?)
    })
}

fn serve<T: Send + 'static>(
    databases: &Databases,
    view: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> (Result<T, ViewError<Error>>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    captured_logs::capture_process_error_logs(|| runtime.block_on(run_view_in(databases, view)))
}

#[test]
fn the_log_line_names_a_callback_panic_after_the_commit() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (outcome, errors) = serve(&databases(), || {
        insert("default")?;
        transaction::on_commit(|| panic!("{CALLBACK_PANIC}"))?;
        insert("other")
    });
    assert!(
        matches!(outcome, Err(ViewError::Panicked { .. })),
        "{outcome:?}"
    );
    assert!(
        errors.iter().any(|message| message
            .contains("an on_commit callback panicked after the request committed on 'default'")),
        "{errors:?}"
    );
    assert!(
        !errors
            .iter()
            .any(|message| message.contains("the view panicked")),
        "{errors:?}"
    );
}

#[test]
fn the_log_line_names_a_view_panic() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (outcome, errors) = serve(&databases(), || -> Result<(), Error> {
        insert("default")?;
        panic!("{VIEW_PANIC}");
    });
    assert!(
        matches!(outcome, Err(ViewError::Panicked { .. })),
        "{outcome:?}"
    );
    assert!(
        errors.iter().any(|message| message
            .contains("the view panicked; its request transactions were rolled back")),
        "{errors:?}"
    );
}
