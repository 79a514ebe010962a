mod common;

use common::*;
use diesel_atomic::{atomic, transaction};

#[atomic]
fn create_two() -> Result<(), TestError> {
    create_reporter("Tintin", "")?;
    create_reporter("Archibald", "Haddock")?;
    Ok(())
}

#[atomic]
fn create_then_fail<C: Backend>(conn: &mut C) -> Result<(), TestError> {
    insert_reporter(conn, "Haddock", "")?;
    Err(TestError::Oops)
}

fn ambient_block_commits_and_explicit_block_rolls_back<C: Backend>() {
    let db = setup::<C>();
    create_two().unwrap();
    assert_eq!(db.reporters("default"), ["Archibald", "Tintin"]);
    let mut conn = db.default.get().unwrap();
    assert_eq!(create_then_fail(&mut *conn), Err(TestError::Oops));
    assert_eq!(db.reporters("default"), ["Archibald", "Tintin"]);
    assert!(!transaction::in_atomic_block());
}

backend_tests!(ambient_block_commits_and_explicit_block_rolls_back);
