//! `impl Trait` arguments, including the connection itself.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::Sqlite;
use diesel_atomic::atomic;

#[atomic]
fn insert_all(
    conn: &mut SqliteConnection,
    names: impl IntoIterator<Item = &'static str>,
) -> QueryResult<usize> {
    conn.batch_execute("CREATE TABLE names (name TEXT NOT NULL)")?;
    let mut inserted = 0;
    for name in names {
        conn.batch_execute(&format!("INSERT INTO names (name) VALUES ('{name}')"))?;
        inserted += 1;
    }
    Ok(inserted)
}

#[atomic]
fn ping(conn: &mut (impl Connection<Backend = Sqlite> + 'static)) -> QueryResult<()> {
    conn.batch_execute("SELECT 1")
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    assert_eq!(insert_all(&mut conn, ["ada", "grace"]).unwrap(), 2);
    ping(&mut conn).unwrap();
}
