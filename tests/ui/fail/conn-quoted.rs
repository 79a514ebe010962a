use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic(conn = "db")]
fn signup(db: &mut SqliteConnection) -> QueryResult<()> {
    let _ = db;
    Ok(())
}

fn main() {}
