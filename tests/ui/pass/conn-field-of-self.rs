//! `conn = self.conn`: a `&mut self` method whose receiver holds the connection (the
//! repository pattern) runs its block on that connection, whether the field owns it or holds
//! a `&mut` to it, at any depth; `conn = self` when the receiver is the connection. The body
//! uses `self` as it would without the attribute.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel_atomic::{atomic, transaction};

fn count(conn: &mut SqliteConnection) -> i64 {
    diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM t")
        .get_result(conn)
        .unwrap()
}

/// Owns its connection.
struct Repository {
    conn: SqliteConnection,
    inserted: Vec<i32>,
}

impl Repository {
    /// Inserts the ids; refuses (and so rolls back) an id above 100.
    #[atomic(conn = self.conn)]
    fn insert_all(&mut self, ids: &[i32]) -> QueryResult<usize> {
        assert!(transaction::in_atomic_block(), "the block is open");
        for &id in ids {
            self.conn
                .batch_execute(&format!("INSERT INTO t (id) VALUES ({id})"))?;
            let mut remember = || self.inserted.push(id);
            remember();
            if id > 100 {
                return Err(DieselError::RollbackTransaction);
            }
        }
        assert!(self.inserted.len() >= ids.len(), "{:?}", self.inserted);
        Ok(self.inserted.len())
    }

    /// `self: &mut Self` is `&mut self` spelt out; a nested `fn` has parameters of its own.
    #[atomic(conn = self.conn, durable = true, retry = 2)]
    fn describe(self: &mut Self, prefix: &str) -> QueryResult<String> {
        fn label(prefix: &str, rows: i64) -> String {
            format!("{prefix}: {rows} rows")
        }
        let rows = count(&mut self.conn);
        Ok(label(prefix, rows) + &format!(" ({} remembered)", self.inserted.len()))
    }
}

/// Holds a borrowed connection.
struct Borrowed<'a> {
    conn: &'a mut SqliteConnection,
}

impl Borrowed<'_> {
    #[atomic(conn = self.conn)]
    fn insert(&mut self, id: i32) -> QueryResult<()> {
        self.conn
            .batch_execute(&format!("INSERT INTO t (id) VALUES ({id})"))
    }
}

/// Holds the connection deeper down.
struct Service<'a> {
    store: Borrowed<'a>,
    calls: u32,
}

impl Service<'_> {
    #[atomic(conn = self.store.conn)]
    fn insert_then_fail(&mut self, id: i32) -> QueryResult<()> {
        self.calls += 1;
        // Calls an `#[atomic]` method of the field: a savepoint of this block.
        self.store.insert(id)?;
        Err(DieselError::RollbackTransaction)
    }
}

/// The receiver is the connection.
trait Counting {
    fn insert_and_count(&mut self, id: i32) -> QueryResult<i64>;
}

impl Counting for SqliteConnection {
    #[atomic(conn = self)]
    fn insert_and_count(&mut self, id: i32) -> QueryResult<i64> {
        self.batch_execute(&format!("INSERT INTO t (id) VALUES ({id})"))?;
        Ok(count(self))
    }
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    let mut repository = Repository {
        conn,
        inserted: Vec::new(),
    };

    assert_eq!(repository.insert_all(&[1, 2]).unwrap(), 2);
    assert_eq!(count(&mut repository.conn), 2);
    assert!(repository.insert_all(&[3, 101]).is_err());
    assert_eq!(
        count(&mut repository.conn),
        2,
        "the Err rolled back the rows written through self.conn"
    );
    assert_eq!(repository.inserted, [1, 2, 3, 101], "the body ran with `self`");
    assert_eq!(
        repository.describe("t").unwrap(),
        "t: 2 rows (4 remembered)"
    );
    assert!(!transaction::in_atomic_block());

    let mut conn = repository.conn;
    Borrowed { conn: &mut conn }.insert(10).unwrap();
    assert_eq!(count(&mut conn), 3);

    let mut service = Service {
        store: Borrowed { conn: &mut conn },
        calls: 0,
    };
    assert!(service.insert_then_fail(11).is_err());
    assert_eq!(service.calls, 1);
    assert_eq!(count(&mut conn), 3, "the nested block's row was rolled back too");

    assert_eq!(conn.insert_and_count(12).unwrap(), 4);
}
