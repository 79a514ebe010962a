use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

type DbConn = SqliteConnection;

#[atomic]
fn transfer((id, db): (i32, &mut DbConn)) -> QueryResult<()> {
    db.batch_execute(&format!("DELETE FROM accounts WHERE id = {id}"))
}

fn main() {}
