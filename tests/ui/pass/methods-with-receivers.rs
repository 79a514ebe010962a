//! Methods taking `self`, `&self` and `&mut self`, in an inherent and a trait impl.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

struct Accounts {
    opened: u32,
}

impl Accounts {
    #[atomic]
    fn open(&mut self, conn: &mut SqliteConnection) -> QueryResult<u32> {
        conn.batch_execute("SELECT 1")?;
        self.opened += 1;
        Ok(self.opened)
    }

    #[atomic]
    fn opened(&self, conn: &mut SqliteConnection) -> QueryResult<u32> {
        conn.batch_execute("SELECT 1")?;
        Ok(self.opened)
    }

    #[atomic]
    fn close(self, conn: &mut SqliteConnection) -> QueryResult<Self> {
        conn.batch_execute("SELECT 1")?;
        Ok(Accounts { opened: 0 })
    }
}

trait Repository {
    fn name(&self, conn: &mut SqliteConnection) -> QueryResult<String>;
}

impl Repository for Accounts {
    #[atomic]
    fn name(&self, conn: &mut SqliteConnection) -> QueryResult<String> {
        conn.batch_execute("SELECT 1")?;
        Ok(format!("accounts ({})", self.opened))
    }
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let mut accounts = Accounts { opened: 0 };
    assert_eq!(accounts.open(&mut conn).unwrap(), 1);
    assert_eq!(accounts.opened(&mut conn).unwrap(), 1);
    assert_eq!(accounts.name(&mut conn).unwrap(), "accounts (1)");
    assert_eq!(accounts.close(&mut conn).unwrap().opened, 0);
}
