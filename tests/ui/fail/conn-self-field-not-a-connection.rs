use diesel::prelude::*;
use diesel_atomic::atomic;

struct Accounts {
    conn: SqliteConnection,
    opened: u32,
}

impl Accounts {
    #[atomic(conn = self.opened)]
    fn open(&mut self) -> QueryResult<()> {
        self.opened += 1;
        let _ = &mut self.conn;
        Ok(())
    }
}

fn main() {}
