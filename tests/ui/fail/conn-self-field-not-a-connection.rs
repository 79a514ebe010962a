use diesel::prelude::*;
use diesel_atomic::atomic;

struct Accounts {
    conn: SqliteConnection,
    name: String,
}

impl Accounts {
    #[atomic(conn = self.name)]
    fn rename(&mut self, name: &str) -> QueryResult<()> {
        name.clone_into(&mut self.name);
        let _ = &mut self.conn;
        Ok(())
    }
}

fn main() {}
