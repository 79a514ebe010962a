use diesel::prelude::*;
use diesel_atomic::atomic;

struct Accounts {
    conn: SqliteConnection,
}

impl Accounts {
    #[atomic(conn = self.conn)]
    fn balance(&self) -> QueryResult<i64> {
        let _ = &self.conn;
        Ok(0)
    }
}

fn main() {}
