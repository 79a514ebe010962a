use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic(conn = databse)]
fn count_users(database: &mut SqliteConnection) -> QueryResult<i64> {
    let _ = database;
    Ok(0)
}

fn main() {}
