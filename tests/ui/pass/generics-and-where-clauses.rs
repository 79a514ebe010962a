//! Type parameters, bounds in both places, and const generics are kept.

use std::fmt::Display;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_atomic::atomic;

#[atomic]
fn insert_labelled<T: Display, const N: usize>(
    conn: &mut SqliteConnection,
    labels: [T; N],
) -> QueryResult<Vec<String>>
where
    T: Clone,
{
    conn.batch_execute("CREATE TABLE IF NOT EXISTS labels (name TEXT NOT NULL)")?;
    let mut names = Vec::new();
    for label in labels.iter().cloned() {
        let name = label.to_string();
        conn.batch_execute(&format!("INSERT INTO labels (name) VALUES ('{name}')"))?;
        names.push(name);
    }
    Ok(names)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let names = insert_labelled(&mut conn, [1, 2, 3]).unwrap();
    assert_eq!(names, ["1", "2", "3"]);
}
