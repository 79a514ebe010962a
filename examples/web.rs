//! An axum service with per-request transactions (Django's `ATOMIC_REQUESTS`).
//!
//! ```sh
//! cargo run --example web --features axum
//! curl -s -X POST localhost:8000/signup -H 'content-type: application/json' -d '{"email":"ada@example.com"}'
//! ```
//!
//! Routes (the views are in `web/app.rs`):
//! - `POST /signup {"email": ...}`: one transaction per request on "default". A bad address
//!   (400) or a taken one (409) fails after the INSERTs, and the request's rollback takes them
//!   back. The welcome mail is queued with `on_commit`, so only committed users get one.
//! - `POST /import {"emails": [...]}`: `#[non_atomic_requests]`, one transaction per row; bad
//!   rows are skipped and reported, the good ones stay.
//! - `POST /notes {"body": ...}`: one transaction on the second alias, "other".
//! - `GET /users`, `GET /notes`.
//!
//! `PORT` sets the port (default 8000); `DATA_DIR` the directory of the SQLite files
//! (default: a new directory in the system's temp directory).

#[path = "web/app.rs"]
mod app;

use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 8000,
    };
    let dir = match std::env::var_os("DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("diesel-atomic-web-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;

    // Process-wide: the views run on tokio's blocking threads.
    app::open_databases(&dir)?.install()?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(
        "listening on http://{}, databases in {}",
        listener.local_addr()?,
        dir.display()
    );
    axum::serve(listener, app::router()).await?;
    Ok(())
}
