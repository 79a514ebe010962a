use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic]
fn prepare<'a>(conn: &'a mut SqliteConnection) -> QueryResult<&'a mut SqliteConnection> {
    Ok(conn)
}

fn main() {}
