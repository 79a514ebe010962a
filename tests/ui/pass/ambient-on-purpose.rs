//! `ambient = true`: the block checks out the alias's connection even though a `&mut`
//! parameter or `&mut self` might have been a connection.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_atomic::{Database, Databases, Error, atomic, connection};

/// Not a connection, but the macro cannot know that from its name.
type Log = Vec<String>;

struct Importer {
    imported: u32,
}

impl Importer {
    #[atomic(ambient = true)]
    fn import(&mut self, log: &mut Log, id: i32) -> Result<(), Error> {
        connection(|conn: &mut SqliteConnection| {
            conn.batch_execute(&format!("INSERT INTO t (id) VALUES ({id})"))
                .map_err(Error::from)
        })?;
        self.imported += 1;
        log.push(format!("imported {id}"));
        Ok(())
    }
}

fn main() {
    let pool = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
        .unwrap();
    let _registry = Databases::new().add("default", Database::new(pool)).enter();
    connection(|conn: &mut SqliteConnection| {
        conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .map_err(Error::from)
    })
    .unwrap();

    let mut importer = Importer { imported: 0 };
    let mut log = Log::new();
    importer.import(&mut log, 1).unwrap();
    assert_eq!(importer.imported, 1);
    assert_eq!(log, ["imported 1"]);
}
