//! `#[non_atomic_requests]`: bare, with an alias, stacked for two aliases, on methods, with
//! any return type, calling a separate `#[atomic]` function.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::{atomic, non_atomic_requests};

#[non_atomic_requests]
fn plain_view() -> String {
    "ok".to_owned()
}

#[non_atomic_requests(using = "other")]
fn other_view(n: i32) -> i32 {
    if n < 0 {
        return 0;
    }
    n + 1
}

/// Exempt on both aliases.
#[non_atomic_requests]
#[non_atomic_requests(using = "other")]
fn both_view() {}

#[atomic]
fn save(conn: &mut SqliteConnection) -> QueryResult<()> {
    conn.batch_execute("INSERT INTO t (id) VALUES (1)")
}

#[non_atomic_requests]
fn view_calling_atomic(conn: &mut SqliteConnection) -> QueryResult<()> {
    save(conn)
}

struct Views {
    hits: u32,
}

impl Views {
    #[non_atomic_requests]
    fn by_ref(&self) -> u32 {
        self.hits
    }

    #[non_atomic_requests]
    fn by_mut(&mut self) -> u32 {
        self.hits += 1;
        self.hits
    }

    #[non_atomic_requests]
    fn by_value(self) -> u32 {
        self.hits
    }
}

fn main() {
    assert_eq!(plain_view(), "ok");
    assert_eq!(other_view(1), 2);
    assert_eq!(other_view(-1), 0);
    both_view();
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    view_calling_atomic(&mut conn).unwrap();
    let mut views = Views { hits: 0 };
    assert_eq!(views.by_mut(), 1);
    assert_eq!(views.by_ref(), 1);
    assert_eq!(views.by_value(), 1);
}
