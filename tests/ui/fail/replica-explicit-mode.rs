use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic(durable = true, read_only = true, replica = true)]
fn report(conn: &mut SqliteConnection) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

fn main() {}
