use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

/// Doc comments and other attributes stay on the function.
#[atomic]
#[allow(clippy::needless_question_mark)]
fn explicit(conn: &mut SqliteConnection) -> QueryResult<()> {
    Ok(conn.batch_execute("SELECT 1")?)
}

#[atomic(using = "other", savepoint = false)]
fn ambient(n: i32) -> Result<i32, diesel_atomic::Error> {
    Ok(n + 1)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    explicit(&mut conn).unwrap();
    let _ = ambient(1);
}
