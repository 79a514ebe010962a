use diesel::prelude::*;
use diesel_atomic::atomic;

struct Prepared<'c> {
    conn: &'c mut SqliteConnection,
}

// The elided lifetime of the result is `conn`'s: the only borrowed parameter.
#[atomic]
fn prepare(conn: &mut SqliteConnection, retries: u32) -> QueryResult<Prepared<'_>> {
    let _ = retries;
    Ok(Prepared { conn })
}

fn main() {}
