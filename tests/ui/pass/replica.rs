//! `replica = true` in ambient mode, with the options it needs; `replica = false` anywhere.

use diesel::prelude::*;
use diesel_atomic::{atomic, Error};

#[atomic(durable = true, read_only = true, replica = true)]
fn report() -> Result<u8, Error> {
    Ok(1)
}

#[atomic(read_only = true, replica = true, isolation = "repeatable_read", using = "other")]
fn report_other() -> QueryResult<()> {
    Ok(())
}

#[atomic(replica = false)]
fn on_the_callers_connection(conn: &mut SqliteConnection) -> QueryResult<()> {
    let _ = conn;
    Ok(())
}

fn main() {
    // No registry: the block cannot check a connection out.
    assert!(matches!(report(), Err(Error::NotConfigured)));
    assert!(report_other().is_err());
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    on_the_callers_connection(&mut conn).unwrap();
}
