use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic]
fn count_users(connection: &mut SqliteConnection) -> QueryResult<i64> {
    let _ = connection;
    Ok(0)
}

fn main() {}
