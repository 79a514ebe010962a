use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

struct Accounts {
    conn: SqliteConnection,
}

impl Accounts {
    // Does `self` hold the connection the body writes to? The macro cannot tell.
    #[atomic]
    fn transfer(&mut self) -> QueryResult<()> {
        self.conn
            .batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
    }
}

fn main() {}
