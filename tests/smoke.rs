mod common;

use common::*;
use diesel::SqliteConnection;
use diesel_atomic::{atomic, transaction};

#[atomic]
fn create_two() -> Result<(), TestError> {
    create_reporter("Tintin", "")?;
    create_reporter("Archibald", "Haddock")?;
    Ok(())
}

#[atomic]
fn create_then_fail(conn: &mut SqliteConnection) -> Result<(), TestError> {
    insert_reporter(conn, "Haddock", "")?;
    Err(TestError::Oops)
}

#[test]
fn ambient_block_commits_and_explicit_block_rolls_back() {
    let db = setup();
    create_two().unwrap();
    assert_eq!(db.reporters("default"), ["Archibald", "Tintin"]);
    let mut conn = db.default.get().unwrap();
    assert_eq!(create_then_fail(&mut conn), Err(TestError::Oops));
    assert_eq!(db.reporters("default"), ["Archibald", "Tintin"]);
    assert!(!transaction::in_atomic_block());
}
