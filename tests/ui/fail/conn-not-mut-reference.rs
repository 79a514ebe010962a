use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic]
fn count_users(conn: &SqliteConnection) -> QueryResult<i64> {
    let _ = conn;
    Ok(0)
}

fn main() {}
