//! An async axum service with per-request transactions (Django's `ATOMIC_REQUESTS`) on
//! diesel-async, under `diesel_atomic::tower::AtomicRequestsLayer`.
//!
//! ```sh
//! cargo run --example web_async --features tower
//! curl -s -X POST localhost:8000/signup -H 'content-type: application/json' -d '{"email":"ada@example.com"}'
//! ```
//!
//! Routes (the handlers are in `web_async/app.rs`):
//! - `POST /signup {"email": ...}`: one transaction per request on "default". A bad address
//!   (400) fails after the INSERT, and the request's rollback takes it back; a taken one is a
//!   409. The welcome mail is queued with `on_commit`, so only committed users get one.
//! - `POST /import {"emails": [...]}`: `#[non_atomic_requests]`, one transaction per row; bad
//!   rows are skipped and reported, the good ones stay.
//! - `POST /notes {"body": ...}`: one transaction on the second alias, "other".
//! - `GET /users`, `GET /notes`, and `GET /outbox`: the welcome mails sent.
//!
//! SQLite by default: `DATA_DIR` is the directory of the two files (default: a new directory
//! in the system's temp directory). `DATABASE_URL=postgres://...` serves both aliases from
//! that PostgreSQL database instead (`--features tower,async-postgres`), and
//! `DATABASE_URL=mysql://...` from MariaDB (`--features tower,async-mysql`). `PORT` sets the
//! port (default 8000).

#[path = "web_async/app.rs"]
mod app;

use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), app::BoxError> {
    tracing_subscriber::fmt().with_target(false).init();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 8000,
    };
    match std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        None => {
            let dir = match std::env::var_os("DATA_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => std::env::temp_dir()
                    .join(format!("diesel-atomic-web-async-{}", std::process::id())),
            };
            std::fs::create_dir_all(&dir)?;
            tracing::info!("SQLite databases in {}", dir.display());
            let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
            serve::<app::Sqlite>(&file("default.sqlite3"), &file("other.sqlite3"), port).await
        }
        // Both aliases on one server database: still two pools, and two transactions.
        #[cfg(feature = "async-postgres")]
        Some(url) if url.starts_with("postgres") => {
            serve::<diesel_async::AsyncPgConnection>(&url, &url, port).await
        }
        #[cfg(feature = "async-mysql")]
        Some(url) if url.starts_with("mysql") => {
            serve::<diesel_async::AsyncMysqlConnection>(&url, &url, port).await
        }
        Some(url) => Err(format!(
            "DATABASE_URL={url}: this build serves postgres:// with --features \
             tower,async-postgres and mysql:// with --features tower,async-mysql"
        )
        .into()),
    }
}

/// Serves the app on connections of type `C`.
async fn serve<C: app::Store>(
    default_url: &str,
    other_url: &str,
    port: u16,
) -> Result<(), app::BoxError> {
    let databases = app::open_databases::<C>(default_url, other_url, 8).await?;
    let app = app::app(app::routes::<C>(), databases, app::Outbox::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
