//! Django's transaction model for diesel.
//!
//! `#[atomic]` makes a function all-or-nothing: its database work commits when it returns
//! `Ok`, and rolls back on `Err` or a panic. Nested blocks become savepoints, `on_commit` runs
//! work after the outermost commit, and several database aliases are independent.
//!
//! ```
//! use diesel::connection::SimpleConnection;
//! use diesel::prelude::*;
//! use diesel_atomic::atomic;
//!
//! #[atomic]
//! fn setup(conn: &mut SqliteConnection) -> QueryResult<()> {
//!     conn.batch_execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")?;
//!     conn.batch_execute("INSERT INTO users (name) VALUES ('ada')")
//! }
//!
//! let mut conn = SqliteConnection::establish(":memory:").unwrap();
//! setup(&mut conn)?;
//! # Ok::<(), diesel::result::Error>(())
//! ```
//!
//! See the README for ambient mode (a pooled connection per alias), `on_commit`, `using`,
//! the `transaction` module (Django's `django.db.transaction`) and `testing`.

pub use atomic_macros::atomic;
pub use atomic_runtime::*;
