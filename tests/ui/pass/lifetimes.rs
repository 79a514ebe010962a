//! Named and elided lifetimes in arguments and return types.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic]
fn first_word<'a>(conn: &mut SqliteConnection, text: &'a str) -> QueryResult<&'a str> {
    conn.batch_execute("SELECT 1")?;
    Ok(text.split(' ').next().unwrap_or(text))
}

struct Named {
    name: String,
}

impl Named {
    #[atomic]
    fn name(&self, conn: &mut SqliteConnection) -> QueryResult<&str> {
        conn.batch_execute("SELECT 1")?;
        Ok(&self.name)
    }
}

#[atomic]
fn longest<'a, 'b: 'a>(
    conn: &mut SqliteConnection,
    a: &'a str,
    b: &'b str,
) -> QueryResult<&'a str> {
    conn.batch_execute("SELECT 1")?;
    Ok(if a.len() >= b.len() { a } else { b })
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    assert_eq!(first_word(&mut conn, "hello world").unwrap(), "hello");
    let named = Named { name: "ada".into() };
    assert_eq!(named.name(&mut conn).unwrap(), "ada");
    assert_eq!(longest(&mut conn, "ab", "abc").unwrap(), "abc");
}
