use diesel::prelude::*;
use diesel_atomic::atomic;

struct Accounts {
    conn: SqliteConnection,
    name: String,
}

impl Accounts {
    #[atomic(conn = self.conn)]
    fn name(&mut self) -> QueryResult<&str> {
        let _ = &mut self.conn;
        Ok(&self.name)
    }
}

fn main() {}
