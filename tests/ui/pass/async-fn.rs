//! `#[atomic] async fn` (feature `async`): the future is `Send`, so it runs under
//! `tokio::spawn` and as an axum handler.
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::SimpleAsyncConnection;
use diesel_atomic::{aio, atomic};

type Conn = SyncConnectionWrapper<SqliteConnection>;

#[atomic]
async fn signup() -> Result<(), diesel_atomic::Error> {
    aio::connection(async |conn: &mut Conn| conn.batch_execute("SELECT 1").await).await?;
    aio::transaction::on_commit(|| println!("welcome"))?;
    Ok(())
}

#[atomic(durable = true)]
async fn on_connection(conn: &mut Conn, name: &str) -> Result<usize, diesel_atomic::Error> {
    conn.batch_execute("SELECT 1").await?;
    Ok(name.len())
}

#[atomic(durable = true, retry = 3)]
async fn retried(conn: &mut Conn, name: &str) -> Result<usize, diesel_atomic::Error> {
    conn.batch_execute("SELECT 1").await?;
    Ok(name.len())
}

#[atomic(durable = true, retry = 3)]
async fn retried_ambient(id: i32) -> Result<i32, diesel_atomic::Error> {
    aio::connection(async |conn: &mut Conn| conn.batch_execute("SELECT 1").await).await?;
    Ok(id)
}

/// The whole block on a replica (its future is `Send` too).
#[atomic(durable = true, read_only = true, replica = true)]
async fn report() -> Result<(), diesel_atomic::Error> {
    aio::read(async |conn: &mut Conn| conn.batch_execute("SELECT 1").await).await?;
    Ok(())
}

struct AppError;

impl From<diesel_atomic::Error> for AppError {
    fn from(_: diesel_atomic::Error) -> Self {
        AppError
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

#[atomic]
async fn handler() -> Result<String, AppError> {
    Ok("created".to_owned())
}

fn main() {
    let _spawned = async {
        tokio::spawn(signup());
    };
    let _app: Router = Router::new().route("/signup", post(handler));
    let _ = on_connection;
    let _spawned_retry = async {
        tokio::spawn(retried_ambient(1));
    };
    let _ = retried;
    let _spawned_report = async {
        tokio::spawn(report());
    };
}
