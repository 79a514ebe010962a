use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic(ambient = true, conn = db)]
fn transfer(db: &mut SqliteConnection) -> QueryResult<()> {
    let _ = db;
    Ok(())
}

fn main() {}
